"""`pyccf-member` against a running service, as people use it from a terminal: shortened proposal ids, `--quiet`
for scripts, what `show` says of a proposal CCF has removed, and a wrong `--service-cert` (also in the client)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ledger.identity import ServiceIdentity
from network.client.service import Client, ClientError, ServiceCertificateMismatch
from tests.e2e.harness import Sandbox

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def member(sandbox: Sandbox, *args: str, service_cert: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "member.py"), "--cert", sandbox.common_file("member0_cert.pem"),
         "--key", sandbox.common_file("member0_privk.pem"), "--url", sandbox.url,
         "--service-cert", service_cert or sandbox.service_cert_path, *args],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)}, check=False)


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_proposal_is_named_by_a_unique_prefix_even_with_the_dots_of_a_shortened_display(sandbox: Sandbox) -> None:
    proposed = member(sandbox, "propose", "--trigger", "trigger_ledger_chunk", "--quiet")
    assert proposed.returncode == 0, proposed.stderr
    proposal_id = proposed.stdout.strip()
    assert len(proposal_id) == 64 and int(proposal_id, 16) >= 0, proposed.stdout
    shown = member(sandbox, "show", proposal_id[:10] + "...", "--quiet")
    assert shown.stdout.strip() == "Open", shown
    voted = member(sandbox, "vote", proposal_id[:8], "--approve")
    assert voted.stdout.strip() == f"proposal {proposal_id} Accepted (1 ballots)", voted


def test_unknown_and_removed_proposals_say_why(sandbox: Sandbox) -> None:
    first = member(sandbox, "propose", "--trigger", "trigger_ledger_chunk", "-q").stdout.strip()
    assert member(sandbox, "vote", first, "--approve").returncode == 0
    second = member(sandbox, "propose", "--trigger", "trigger_ledger_chunk", "-q").stdout.strip()
    assert member(sandbox, "vote", second, "--approve").returncode == 0
    # as in CCF, the first completed proposal was removed when the second completed
    line = one_error_line(member(sandbox, "show", first))
    assert "ProposalNotFound" in line and "removed once a later proposal completes" in line
    line = one_error_line(member(sandbox, "show", "ffffffffff"))
    assert "no proposal id starts with ffffffffff" in line


def test_a_wrong_service_certificate_is_named_with_its_option(sandbox: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "other_service_cert.pem"
    other.write_text(ServiceIdentity.create().pem)
    line = one_error_line(member(sandbox, "list", service_cert=str(other)))
    assert f"does not verify against the service certificate {other}" in line and "--service-cert" in line


def test_the_client_raises_service_certificate_mismatch_before_sending(sandbox: Sandbox, tmp_path: Path) -> None:
    other = tmp_path / "other_service_cert.pem"
    other.write_text(ServiceIdentity.create().pem)
    d = os.path.dirname(sandbox.service_cert_path)
    user = Client(sandbox.url, str(other), cert=f"{d}/user0_cert.pem", key=f"{d}/user0_privk.pem")
    for attempt in (lambda: user.get("/app/commit"), lambda: user.write("/app/log/private", {"id": 1, "msg": "x"})):
        with pytest.raises(ServiceCertificateMismatch, match="not verify against the service certificate"):
            attempt()
    assert issubclass(ServiceCertificateMismatch, ClientError)
