"""scripts/instructions_per_write.py: the instruction count of a logging write, by valgrind, for the Python and the
JavaScript logging apps (the measure docs/js_apps.md reports, steadier than timings on a shared machine)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "instructions_per_write.py"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=900)


@pytest.mark.unit
def test_runs_that_cannot_be_subtracted_are_refused_in_one_line() -> None:
    proc = run("py", "--few", "10", "--many", "10")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "instructions_per_write: --many must be above --few"


@pytest.mark.unit
def test_a_machine_without_valgrind_is_told_so_in_one_line(tmp_path: Path) -> None:
    """Only valgrind counts instructions: without it on PATH the script says so rather than failing later."""
    proc = subprocess.run([sys.executable, str(SCRIPT), "py"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": str(tmp_path)})
    assert (proc.returncode, proc.stderr.strip()) == (2, "instructions_per_write: valgrind is not installed")


@pytest.mark.slow
def test_a_python_logging_write_is_counted() -> None:
    """The slow suite needs valgrind (this machine's env lists it); a missing one fails here, named."""
    assert shutil.which("valgrind") is not None, "valgrind is needed to count instructions"
    proc = run("py", "--few", "20", "--many", "220")
    assert proc.returncode == 0, proc.stderr
    match = re.fullmatch(r"py: (-?\d+) instructions per write \(20 writes: (\d+), 220 writes: (\d+)\)\n", proc.stdout)
    assert match is not None, proc.stdout
    # 200 writes of about 240k instructions each: well clear of the run-to-run wobble of a few million
    assert 100_000 < int(match.group(1)) < 1_000_000
