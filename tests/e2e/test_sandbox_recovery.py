"""`make sandbox RECOVER=1` (issue 10): the sandbox script recovers its own stopped service into new nodes, from
the lost nodes' ledgers alone, carrying out member0's part and printing each step."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from network.client.connection import ServiceClient
from tests.e2e.harness import free_port, write_committed

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _sandbox(workspace: Path, port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "sandbox.py"), "--workspace", str(workspace),
                           "--port", str(port), "--exit-when-open", *extra], capture_output=True, text=True,
                          timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def _pids(out: str) -> list[int]:
    match = re.search(r"node pids ([\d ]+)", out)
    assert match, out[-2000:]
    return [int(p) for p in match.group(1).split()]


def _kill(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def test_the_sandbox_recovers_its_lost_service_with_member0s_share(tmp_path_factory: pytest.TempPathFactory) -> None:
    workspace = tmp_path_factory.mktemp("e2e-sandbox-recovery")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    port = free_port()
    first = _sandbox(workspace, port)
    assert first.returncode == 0, first.stderr[-2000:]
    pids = _pids(first.stdout)
    common = workspace / "sandbox_common"
    user = dict(cert=str(common / "user0_cert.pem"), key=str(common / "user0_privk.pem"), timeout=10)
    client = ServiceClient(f"https://127.0.0.1:{port}", str(common / "service_cert.pem"), **user)
    write_committed(client, 5, "written before the disaster")
    old_cert = (common / "service_cert.pem").read_text()
    # the disaster: the node is killed and its sealed state lost; only ledger/ and snapshots/ remain
    _kill(pids)
    for name in ("sealed_secrets.bin", "sealing.key"):
        os.unlink(workspace / "sandbox_0" / name)
    second = _sandbox(workspace, port, "--recover")
    try:
        assert second.returncode == 0, second.stderr[-2000:] + second.stdout[-2000:]
        steps = [line for line in second.stdout.splitlines() if line.startswith("recovery:")]
        assert any("WaitingForRecoveryShares" in s for s in steps), steps
        assert any("1/1 recovery shares successfully submitted" in s for s in steps), steps
        assert any("Open again" in s for s in steps), steps
        assert (common / "previous_service_cert.pem").read_text() == old_cert
        new_cert = (common / "service_cert.pem").read_text()
        assert new_cert != old_cert
        assert [p.name for p in workspace.iterdir() if p.name.startswith("lost-")]
        recovered = ServiceClient(f"https://127.0.0.1:{port}", str(common / "service_cert.pem"), **user)
        assert recovered.json_ok("GET", "/app/log/private?id=5")["msg"] == "written before the disaster"
        assert recovered.json_ok("GET", "/node/service/previous_identity")["previous_service_identity"].strip() \
            == old_cert.strip()
    finally:
        if second.returncode == 0:
            _kill(_pids(second.stdout))
