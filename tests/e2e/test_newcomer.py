"""The newcomer's path: the README followed in its order, in a copy of the repository, from a plain shell.

The copy holds the repository's files (what git tracks or would track) and the set-up the README asks for
(`.venv`, linked, as `make` left it); the shell (`sh`) has no virtual environment activated and no PYTHONPATH.
The test runs the README's `make sandbox` lines (Ctrl-C stops each, as in a terminal: SIGINT to the whole
process group), every command the sandbox prints, as printed, and the README's other shell blocks while the
sandbox they are written for runs. The only change made to any command is the port: 8000 becomes a free one.
Each step's output is checked, and the nodes' logs must hold no traceback once they are stopped. The README's
Python examples are run by `test_client.py`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.harness import free_sandbox_port

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]
STEP_TIMEOUT = 300

# README `make` lines that this test does not run, and why
NOT_RUN = {
    "make test": "this suite is what it runs",
    "make test-slow": "the slow suite has its own target and takes far longer than this suite may",
    "make lint": "the linters are run by the project's CI next to make test, not inside it",
    "make bench": "a benchmark measures; it checks nothing this test could assert",
    "make chaos": "a chaos run takes minutes; tests/e2e/test_chaos.py runs a short one",
}


def _copy_repository(dest: Path) -> None:
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)  # modification times kept: make sees the venv as up to date
    # a repository of its own, everything committed: what the newcomer's commands leave must not show in git status
    who = ["-c", "user.name=newcomer", "-c", "user.email=newcomer@localhost"]
    for command in (["git", "init", "-q"], ["git", "add", "-A"], ["git", *who, "commit", "-qm", "copy"]):
        subprocess.run(command, cwd=dest, check=True, capture_output=True)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    with open(dest / ".git" / "info" / "exclude", "a") as f:
        f.write("/.venv\n")  # a link here; in a clone it is the directory .gitignore names


def _plain_shell_env() -> dict[str, str]:
    venv_bin = str(ROOT / ".venv" / "bin")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    return env


def readme_shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def commands_of(block: str) -> str:
    """A README block as a script: its comment lines (what the output looks like) left out."""
    return "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#")) + "\n"


def printed_commands(output: str) -> str:
    """The commands the sandbox printed: the two-space indented lines after "Commands to try"."""
    _, _, section = output.partition("Commands to try")
    assert section, f"the sandbox printed no commands:\n{output}"
    lines = [line[2:] for line in section.splitlines()[1:] if line.startswith("  ")]
    return "\n".join(lines) + "\n"


class Newcomer:
    """A person at a terminal in the copied repository."""

    def __init__(self, repo: Path, port: int) -> None:
        self.repo = repo
        self.port = port
        self.env = _plain_shell_env()
        self.transcript: list[str] = []

    def ported(self, text: str) -> str:
        return re.sub(r"127\.0\.0\.1:800([0-2])", lambda m: f"127.0.0.1:{self.port + int(m.group(1))}", text)

    def shell(self, script: str, what: str) -> str:
        """Run `script` with `sh -e` (the first failing command fails it); its output (stdout and stderr)."""
        proc = subprocess.run(["sh", "-e", "-x", "-c", script], cwd=self.repo, env=self.env, capture_output=True,
                              text=True, timeout=STEP_TIMEOUT, check=False)
        out = proc.stdout + proc.stderr
        self.transcript.append(f"--- {what} (exit {proc.returncode})\n{out}")
        assert proc.returncode == 0, f"{what} failed (exit {proc.returncode}):\n{out[-4000:]}"
        return out

    @contextlib.contextmanager
    def sandbox(self, make_line: str) -> Iterator[str]:
        """Run a README `make sandbox ...` line until it says it runs; yields what it printed; Ctrl-C at the end."""
        command = f"{make_line} SANDBOX_ARGS='--port {self.port}'"
        process = subprocess.Popen(["sh", "-c", command], cwd=self.repo, env=self.env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[str] = []
        running = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                lines.append(line)
                if line.startswith("Running until Ctrl-C."):
                    running.set()
            running.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        running.wait(STEP_TIMEOUT)
        try:
            assert process.poll() is None, f"{make_line} ended early:\n{''.join(lines)[-4000:]}"
            yield "".join(lines)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole process group
            code = process.wait(timeout=120)
            reader.join(timeout=10)
            output = "".join(lines)
            self.transcript.append(f"--- {make_line} (exit {code})\n{output}")
        # make itself ends as an interrupted command does (the shell reports 130); the sandbox reports its nodes
        stopped = re.search(r"nodes stopped \(exits \[([-\d, ]*)\]\)", output)
        assert stopped, f"{make_line} did not report its nodes stopped on Ctrl-C (exit {code}):\n{output[-4000:]}"
        assert {int(c) for c in stopped.group(1).split(",")} == {0}, f"a node did not exit 0 on Ctrl-C: {output}"
        assert "Traceback" not in output, output[-4000:]
        self.assert_no_traceback_in_node_logs()

    def assert_no_traceback_in_node_logs(self) -> None:
        for err in (self.repo / "workspace").glob("sandbox_*/err"):
            text = err.read_text(errors="replace")
            assert "Traceback" not in text, f"{err} holds a traceback:\n{text[-4000:]}"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("e2e-newcomer")
    print(f"\n[e2e] newcomer's copy of the repository (kept, with its workspace and logs): {dest}", flush=True)
    _copy_repository(dest)
    up_to_date = subprocess.run(["make", "-q", "venv"], cwd=dest, capture_output=True, check=False)
    if up_to_date.returncode != 0:
        pytest.fail("the virtual environment was not installed by `make` for this pyproject.toml: run `make venv` "
                    "first (the README's set-up), or make would reinstall it from the copy")
    return dest


@pytest.mark.enclave_process_pass
def test_the_readme_and_the_sandbox_work_as_shown(repo: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = readme_shell_blocks(readme)
    make_block, sandbox_block, audit_block, member_block = blocks  # the README's order
    make_lines = [line.split("#")[0].strip() for line in make_block.splitlines() if line.startswith("make ")]
    sandbox_lines = [line for line in make_lines if line.startswith("make sandbox")]
    assert sorted(set(make_lines) - set(sandbox_lines)) == sorted(NOT_RUN), make_lines
    assert sandbox_lines == ["make sandbox", "make sandbox NODES=3", "make sandbox RECOVER=1"], sandbox_lines
    you = Newcomer(repo, free_sandbox_port())
    try:
        # a new one-node service; what it prints, then the README's own example
        with you.sandbox("make sandbox") as printed:
            assert re.search(rf"Started a new service: Open in view \d+, 1 node, primary "
                             rf"https://127.0.0.1:{you.port}\n", printed), printed
            out = you.shell(printed_commands(printed), "the commands printed by make sandbox")
            for expected in ('{"msg":"hello"}', '"status":"Committed"', "receipt OK (JSON)",
                             "matches the expected one", "Accepted (1 ballots)", '"proposalState":"Open"',
                             "workspace/sandbox_0/ledger: verified"):
                assert expected in out, f"{expected!r} not in:\n{out[-4000:]}"
            out = you.shell(commands_of(you.ported(sandbox_block)), "the README's sandbox block")
            assert "receipt OK (JSON)" in out and "matches the expected one" in out, out[-3000:]

        # grown to three nodes: the joiners are trusted by member0 through governance
        with you.sandbox("make sandbox NODES=3") as printed:
            assert printed.count("joined the open service; member0 trusted it") == 2, printed
            assert "Resumed the service created at" in printed and ", 3 nodes, primary https://" in printed, printed
            for i in range(3):
                assert f"https://127.0.0.1:{you.port + i}" in printed, printed
            out = you.shell(printed_commands(printed), "the commands printed by make sandbox NODES=3")
            assert "identical: the 3 ledgers hold byte-identical entries" in out, out[-3000:]
            out = you.shell(commands_of(you.ported(audit_block)), "the README's audit block")
            for expected in ("workspace/sandbox_0/ledger: verified", '"ok":true', "receipt OK",
                             "identical: the 3 ledgers"):
                assert expected in out, f"{expected!r} not in:\n{out[-4000:]}"
            assert (repo / "workspace" / "report.html").stat().st_size > 0
            out = you.shell(commands_of(you.ported(member_block)), "the README's member block")
            assert re.search(r"proposal [0-9a-f]{64} Accepted \(1 ballots\)", out), out[-3000:]

        # `make sandbox` on the three-node workspace resumes all three (one alone could not commit)
        with you.sandbox("make sandbox") as printed:
            assert "resuming all of them" in printed and ", 3 nodes, primary https://" in printed, printed
            out = you.shell(printed_commands(printed), "the commands printed by make sandbox (three-node workspace)")
            assert '"status":"Committed"' in out and "matches the expected one" in out, out[-3000:]

        # disaster recovery of the stopped service into a new node
        with you.sandbox("make sandbox RECOVER=1") as printed:
            assert "Recovered the lost service into a new one" in printed, printed
            out = you.shell(printed_commands(printed), "the commands printed by make sandbox RECOVER=1")
            assert '"status":"Committed"' in out and "matches the expected one" in out, out[-3000:]
    finally:
        (repo / "workspace" / "transcript.txt").write_text("\n".join(you.transcript))
    # what the commands wrote went under workspace/, which git ignores: the repository is as it was
    status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=repo, capture_output=True,
                            text=True, check=True).stdout
    assert status == "", f"the newcomer's commands left files git would see:\n{status}"


def test_every_shell_block_of_the_readme_is_run_here() -> None:
    """A new block must be given its place in the newcomer's path above, not silently left out."""
    assert len(readme_shell_blocks((ROOT / "README.md").read_text())) == 4


def test_printed_commands_are_found_in_what_the_sandbox_prints() -> None:
    text = "Service ...\nCommands to try, from /x, as printed (any shell):\n\nWrite:\n  C=a\n  curl b \\\n    -d c\n"
    assert printed_commands(text) == "C=a\ncurl b \\\n  -d c\n"
    assert commands_of("C=a\n#   output\ncurl x\n") == "C=a\ncurl x\n"


def test_a_port_change_is_the_only_change(tmp_path: Path) -> None:
    you = Newcomer(tmp_path, 41000)
    assert you.ported("https://127.0.0.1:8000/a 127.0.0.1:8002 :8000") == \
        "https://127.0.0.1:41000/a 127.0.0.1:41002 :8000"

