"""Run the `ccf` package's own tools (the judges) on what our code wrote."""

from __future__ import annotations

import os
import subprocess
import sys

BIN = os.path.dirname(sys.executable)


def run_tool(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `tool` (a script installed by the `ccf` package) with this interpreter."""
    return subprocess.run(
        [sys.executable, os.path.join(BIN, tool), *args], capture_output=True, text=True, timeout=timeout
    )


def read_ledger(path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool("read_ledger.py", path, *extra)


def assert_read_ledger_accepts(path: str, *extra: str, signatures: int | None = None) -> str:
    proc = read_ledger(path, "-q", *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Ledger verification complete" in out, out[-3000:]
    if signatures is not None:
        assert f"Found {signatures} signatures" in out, out[-3000:]
    return out


def verify_secrets_chain(path: str) -> subprocess.CompletedProcess[str]:
    return run_tool("verify_ledger_secrets_chain.py", path)
