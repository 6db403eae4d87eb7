"""The member side: envelopes laid out as ccf_cose_sign1 lays them out, accepted by governance; the CLI."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import cbor2
import orjson
import pytest

from governance.constitution import default_constitution
from governance.member_client import APPROVE_BALLOT, REJECT_BALLOT, MemberSigner, set_user
from governance.proposals import ballot, submit_ballot
from governance.requests import MessageType, verify_request
from ledger.identity import PartyIdentity, key_pem
from ledger.tables import USERS_CERTS
from tests.governance.harness import Gov

pytestmark = pytest.mark.unit

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
WHEN = "2026-11-28T12:00:00+00:00"


def files(tmp: Path, identity: PartyIdentity) -> tuple[str, str]:
    (tmp / "cert.pem").write_text(identity.pem)
    (tmp / "key.pem").write_text(key_pem(identity.key))
    return str(tmp / "cert.pem"), str(tmp / "key.pem")


def protected_header_bytes(envelope: bytes) -> bytes:
    return bytes(cbor2.loads(envelope).value[0])


@pytest.mark.parametrize(("msg_type", "proposal_id"), [("proposal", None), ("ballot", "ab12"), ("withdrawal", "ab12"),
                                                       ("ack", None), ("state_digest", None)])
def test_our_protected_header_is_byte_for_byte_the_one_ccf_cose_sign1_writes(tmp_path: Path, msg_type: str,
                                                                             proposal_id: str | None) -> None:
    member = PartyIdentity.create("m")
    cert, key = files(tmp_path, member)
    (tmp_path / "content").write_bytes(b"{}")
    cmd = [sys.executable, os.path.join(os.path.dirname(sys.executable), "ccf_cose_sign1"), "--content",
           str(tmp_path / "content"), "--signing-cert", cert, "--signing-key", key, "--ccf-gov-msg-type", msg_type,
           "--ccf-gov-msg-created_at", WHEN]
    if proposal_id:
        cmd += ["--ccf-gov-msg-proposal_id", proposal_id]
    theirs = subprocess.run(cmd, capture_output=True, check=True, timeout=60).stdout
    ours = MemberSigner(member.key, member.cert).sign(
        MessageType(msg_type), b"{}", created_at=int(dt.datetime.fromisoformat(WHEN).timestamp()),
        proposal_id=proposal_id)
    assert protected_header_bytes(ours) == protected_header_bytes(theirs)
    assert cbor2.loads(ours).value[2] == cbor2.loads(theirs).value[2] == b"{}"


def test_signed_requests_drive_governance() -> None:
    gov = Gov(default_constitution())
    a, b, c = (MemberSigner(m.key, m.cert) for m in gov.members)
    user = PartyIdentity.create("user")
    pid = gov.propose_envelope(a.proposal([set_user(user.cert)])).proposal_id

    def vote(signer: MemberSigner, ballot_js: str) -> dict[str, object]:
        return gov._run(lambda tx: submit_ballot(
            tx, verify_request(tx, signer.ballot(pid, ballot_js), MessageType.BALLOT, require_active=True), pid,
            signer.member_id)).proposal

    assert vote(b, REJECT_BALLOT)["proposalState"] == "Open"
    assert ballot(gov.store.read_tx(), pid, b.member_id) == REJECT_BALLOT
    vote(a, APPROVE_BALLOT)
    assert vote(c, APPROVE_BALLOT)["proposalState"] == "Accepted"
    assert gov.store.read_tx().get(USERS_CERTS, user.id) == user.pem.encode()


def test_cli_writes_a_signed_proposal_and_refuses_bad_input(tmp_path: Path) -> None:
    member = PartyIdentity.create("cli member")
    cert, key = files(tmp_path, member)
    user = PartyIdentity.create("user")
    (tmp_path / "user.pem").write_text(user.pem)
    out = tmp_path / "proposal.cose"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "member.py"), "--cert", cert, "--key", key, "--json",
                           "--out", str(out), "--created-at", WHEN, "propose",
                           "--set-user", str(tmp_path / "user.pem")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    summary = orjson.loads(proc.stderr)
    assert summary["actions"] == ["set_user"] and summary["member_id"] == member.id
    gov = Gov(members=[member])
    tx = gov.store.read_tx()
    request = verify_request(tx, out.read_bytes(), MessageType.PROPOSAL, require_active=True)
    assert orjson.loads(request.payload)["actions"][0]["args"]["cert"] == user.pem
    assert request.created_at == int(dt.datetime.fromisoformat(WHEN).timestamp())

    bad = subprocess.run([sys.executable, str(SCRIPTS / "member.py"), "--cert", cert, "--key", key, "propose",
                          "--actions", str(tmp_path / "missing.json")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 1 and bad.stderr.startswith("error: ") and len(bad.stderr.strip().splitlines()) == 1
    other = PartyIdentity.create("other")
    (tmp_path / "other_key.pem").write_text(key_pem(other.key))
    mismatch = subprocess.run([sys.executable, str(SCRIPTS / "member.py"), "--cert", cert, "--key",
                               str(tmp_path / "other_key.pem"), "withdraw", "ab12"], capture_output=True, text=True,
                              timeout=60)
    assert mismatch.returncode == 1 and "does not match" in mismatch.stderr
