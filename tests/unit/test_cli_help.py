"""What a newcomer reads first: every command line tool's --help describes its commands and options, a module
that is not a command says so, and offline mistakes get one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from governance.member_client import action, transition_node_to_trusted
from scripts import sandbox

pytestmark = pytest.mark.unit
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def run(script: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / script), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def options_without_help(help_text: str) -> list[str]:
    """Options listed in an argparse --help whose line carries no description."""
    section = help_text.split("options:", 1)[1]
    lines = section.splitlines()[1:]
    bare = []
    for i, line in enumerate(lines):
        match = re.match(r"^  (-[-\w]+(?:[ ,][^ ]+)*)\s*$", line)
        continues = i + 1 < len(lines) and lines[i + 1].startswith(" " * 8) and lines[i + 1].strip()
        if match and not continues:
            bare.append(match.group(1))
    return bare


def test_sandbox_help_describes_the_service_and_every_option() -> None:
    out = run("sandbox.py", "--help").stdout
    assert "Run a service in virtual mode" in out and "one-node" not in out.split("\n\n")[1]
    for option in ("--workspace", "--port", "--nodes", "--clean", "--recover", "--exit-when-open"):
        assert re.search(rf"{option}\b.*\S", out), option
    assert options_without_help(out) == [], out


def test_member_help_describes_every_command_and_every_propose_option() -> None:
    out = run("member.py", "--help").stdout
    for command in ("propose", "vote", "withdraw", "state-digest", "ack", "show", "list", "recovery-share"):
        assert re.search(rf"^    {command}\s+\w", out, re.M), f"{command} has no description:\n{out}"
    assert options_without_help(out) == [], out
    for command in ("propose", "vote", "withdraw", "ack", "show", "recovery-share"):
        sub = run("member.py", command, "--help")
        assert sub.returncode == 0, sub.stderr
        assert options_without_help(sub.stdout) == [], sub.stdout
    assert "--trust-node NODE_ID" in run("member.py", "propose", "--help").stdout


def test_bench_etcd_is_a_module_and_says_so() -> None:
    proc = run("bench_etcd.py", "--help")
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and "scripts/bench.py" in proc.stderr


def test_offline_votes_need_the_full_proposal_id(tmp_path: Path) -> None:
    from ledger.identity import PartyIdentity, key_pem

    member = PartyIdentity.create("m")
    (tmp_path / "k.pem").write_text(key_pem(member.key))
    (tmp_path / "c.pem").write_text(member.pem)
    proc = run("member.py", "--cert", str(tmp_path / "c.pem"), "--key", str(tmp_path / "k.pem"), "vote", "7ea51127",
               "--approve")
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: 7ea51127 is not a full proposal id") and proc.stderr.count("\n") == 1


def test_actions_without_arguments_carry_no_args_as_ccf_wants() -> None:
    assert action("trigger_ledger_rekey") == {"name": "trigger_ledger_rekey"}
    assert action("remove_user", user_id="ab") == {"name": "remove_user", "args": {"user_id": "ab"}}
    trusted = transition_node_to_trusted("ab" * 32)
    assert trusted["args"]["node_id"] == "ab" * 32 and re.fullmatch(r"\d{12}Z", trusted["args"]["valid_from"])


def test_the_sandbox_refuses_a_node_with_a_ledger_but_no_sealed_secrets(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    ledger = tmp_path / "sandbox_0" / "ledger"
    ledger.mkdir(parents=True)
    (ledger / "ledger_1-10.committed").write_bytes(b"\0" * 8)
    code = sandbox.main(["--workspace", str(tmp_path), "--port", "1"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1
    assert "no sealed secrets" in err and "RECOVER=1" in err and "CLEAN=1" in err
