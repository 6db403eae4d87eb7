"""Governance of a running service by its member, over HTTPS: requests signed by the `ccf` package's own
`ccf_cose_sign1` CLI add a user, and a ledger rekey leaves writes working and recovery shares that unwrap the
new ledger secret."""

from __future__ import annotations

import datetime as dt
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import ccf.ledger
import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.member_client import action
from governance.recovery_shares import RECOVERY_SHARES, decrypt_share, unwrap_ledger_secret
from ledger.identity import PartyIdentity, key_pem
from network.enclave import sealing
from tests.e2e.harness import API_VERSION, Sandbox, error_code

pytestmark = pytest.mark.e2e

COSE_SIGN1 = os.path.join(os.path.dirname(sys.executable), "ccf_cose_sign1")
APPROVE = "export function vote (proposal, proposerId) { return true }"


def ccf_cose_sign1(sandbox: Sandbox, content: Path, msg_type: str, *extra: str) -> bytes:
    """A governance request signed by member0 with the `ccf` package's CLI (its stdout is the COSE_Sign1)."""
    created_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    proc = subprocess.run(
        [COSE_SIGN1, "--ccf-gov-msg-type", msg_type, "--ccf-gov-msg-created_at", created_at,
         "--signing-key", sandbox.common_file("member0_privk.pem"),
         "--signing-cert", sandbox.common_file("member0_cert.pem"), "--content", str(content), *extra],
        capture_output=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    assert proc.stdout[:1] == b"\xd2", "a tagged COSE_Sign1 (CBOR tag 18)"
    return proc.stdout


def test_a_proposal_and_ballot_signed_by_ccf_cose_sign1_add_a_user(sandbox: Sandbox) -> None:
    work = sandbox.workspace / "cli"
    work.mkdir()
    newcomer = PartyIdentity.create("user1")
    (work / "user1_cert.pem").write_text(newcomer.pem)
    (work / "user1_privk.pem").write_text(key_pem(newcomer.key))
    user1 = sandbox.client(cert=str(work / "user1_cert.pem"), key=str(work / "user1_privk.pem"))
    refused = user1.call("POST", "/app/log/private", {"id": 1, "msg": "not yet"})
    assert refused.status == 401 and error_code(refused) == "InvalidAuthenticationInfo", refused

    member_id = sandbox.member_signer().member_id
    proposal_json = work / "p.json"
    proposal_json.write_bytes(orjson.dumps({"actions": [{"name": "set_user", "args": {"cert": newcomer.pem}}]}))
    signed_proposal = ccf_cose_sign1(sandbox, proposal_json, "proposal")
    http = sandbox.client(None)  # a plain HTTPS client: the signature is the member's credential
    created = http.call("POST", f"/gov/members/proposals:create?{API_VERSION}", signed_proposal,
                        content_type="application/cose")
    assert created.status == 200, created
    proposal = created.json()
    assert proposal["proposerId"] == member_id
    assert proposal["proposalState"] == "Open"  # "majority" of one member: member0 must vote
    proposal_id = proposal["proposalId"]
    assert created.txid is not None

    replay = http.call("POST", f"/gov/members/proposals:create?{API_VERSION}", signed_proposal,
                       content_type="application/cose")
    assert replay.status == 400 and error_code(replay) == "ProposalReplay", replay

    ballot_json = work / "ballot.json"
    ballot_json.write_bytes(orjson.dumps({"ballot": APPROVE}))
    signed_ballot = ccf_cose_sign1(sandbox, ballot_json, "ballot", "--ccf-gov-msg-proposal_id", proposal_id)
    voted = http.call("POST", f"/gov/members/proposals/{proposal_id}/ballots/{member_id}:submit?{API_VERSION}",
                      signed_ballot, content_type="application/cose")
    assert voted.status == 200, voted
    assert voted.json()["proposalState"] == "Accepted", voted.json()
    assert voted.json()["finalVotes"] == {member_id: True}
    assert voted.txid is not None
    sandbox.wait_for_commit(voted.txid)

    assert http.json_ok("GET", f"/gov/members/proposals/{proposal_id}?{API_VERSION}")["proposalState"] == "Accepted"
    ballot = http.call("GET", f"/gov/members/proposals/{proposal_id}/ballots/{member_id}?{API_VERSION}")
    assert ballot.status == 200 and ballot.body.decode() == APPROVE, ballot
    registered = http.json_ok("GET", f"/gov/service/users/{newcomer.id}?{API_VERSION}")
    assert registered["certificate"] == newcomer.pem

    msg = f"written by user1 {secrets.token_hex(4)}"
    written = user1.call("POST", "/app/log/private", {"id": 1, "msg": msg})
    assert written.status == 200 and written.txid is not None, written
    assert user1.json_ok("GET", "/app/log/private?id=1") == {"msg": msg}
    sandbox.wait_for_commit(written.txid)


def _sealed_secrets(sandbox: Sandbox) -> list[tuple[int, bytes]]:
    state = sealing.unseal_data_dir(str(sandbox.node_dir))
    return [(s.start, s.raw) for s in state.secrets.all()]


def _latest_recovery_record(ledger_dir: str) -> dict[str, Any]:
    """The last `public:ccf.internal.recovery_shares` record in the node's ledger files, read by `ccf.ledger`."""
    record = None
    for tx in ccf.ledger.Ledger([ledger_dir], committed_only=False).transactions():
        tables = tx.get_public_domain().get_tables()
        for value in tables.get(RECOVERY_SHARES, {}).values():
            if value is not None:
                record = orjson.loads(value)
    assert isinstance(record, dict), "no recovery shares in the ledger"
    return record


def test_a_ledger_rekey_keeps_writes_working_and_the_recovery_share_unwraps_the_new_secret(
        sandbox: Sandbox) -> None:
    user = sandbox.client("user0")
    member = sandbox.member()
    before_msg = f"before the rekey {secrets.token_hex(4)}"
    before = user.call("POST", "/app/log/private", {"id": 10, "msg": before_msg})
    assert before.status == 200 and before.txid is not None, before
    sandbox.wait_for_commit(before.txid)
    secrets_before = _sealed_secrets(sandbox)
    share_before = member.client.json_ok("GET", f"/gov/recovery/encrypted-shares/{member.member_id}?{API_VERSION}")

    proposal = member.propose([action("trigger_ledger_rekey")])
    assert proposal["proposalState"] == "Open"
    accepted = member.vote(proposal["proposalId"])
    assert accepted["proposalState"] == "Accepted", accepted

    after_msg = f"after the rekey {secrets.token_hex(4)}"
    after = user.call("POST", "/app/log/private", {"id": 11, "msg": after_msg})
    assert after.status == 200 and after.txid is not None, after
    sandbox.wait_for_commit(after.txid, user, frontend="/app")
    assert user.json_ok("GET", "/app/log/private?id=10") == {"msg": before_msg}
    assert user.json_ok("GET", "/app/log/private?id=11") == {"msg": after_msg}

    # the node sealed a new ledger secret, in force from the rekey on
    secrets_after = _sealed_secrets(sandbox)
    assert secrets_after[:-1] == secrets_before and len(secrets_after) == len(secrets_before) + 1
    new_start, new_secret = secrets_after[-1]
    assert new_start > int(before.txid.split(".")[1])

    # member0's share was dealt again, and it unwraps the new secret from the record in the ledger
    share = member.client.json_ok("GET", f"/gov/recovery/encrypted-shares/{member.member_id}?{API_VERSION}")
    assert share["memberId"] == member.member_id
    assert share["encryptedShare"] != share_before["encryptedShare"]
    with open(sandbox.common_file("member0_enc_privk.pem"), "rb") as f:
        encryption_key = serialization.load_pem_private_key(f.read(), None)
    assert isinstance(encryption_key, rsa.RSAPrivateKey)
    decrypted = decrypt_share(share["encryptedShare"], encryption_key)
    record = _latest_recovery_record(sandbox.ledger_dir)
    assert record["encrypted_shares"][member.member_id] == share["encryptedShare"]
    assert unwrap_ledger_secret(record, [decrypted]) == new_secret


def _member_cli(sandbox: Sandbox, *args: str) -> subprocess.CompletedProcess[str]:
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts",
                          "member.py")
    return subprocess.run(
        [sys.executable, script, "--cert", sandbox.common_file("member0_cert.pem"),
         "--key", sandbox.common_file("member0_privk.pem"), "--url", sandbox.url,
         "--service-cert", sandbox.service_cert_path, *args],
        capture_output=True, text=True, timeout=120, check=False)


def test_the_members_script_proposes_votes_shows_lists_and_withdraws_over_https(sandbox: Sandbox) -> None:
    proposed = _member_cli(sandbox, "--json", "propose", "--trigger", "trigger_ledger_chunk")
    assert proposed.returncode == 0, proposed.stderr
    proposal = orjson.loads(proposed.stdout)
    assert proposal["proposalState"] == "Open"
    pid = proposal["proposalId"]
    shown = _member_cli(sandbox, "show", pid)
    assert shown.returncode == 0 and shown.stdout.strip() == f"proposal {pid} Open (0 ballots)"
    listed = _member_cli(sandbox, "list", "--json")
    assert pid in [p["proposalId"] for p in orjson.loads(listed.stdout)["value"]]
    voted = _member_cli(sandbox, "vote", pid, "--approve")
    assert voted.returncode == 0 and f"proposal {pid} Accepted" in voted.stdout
    again = _member_cli(sandbox, "vote", pid, "--approve")  # no ballot on a proposal that left Open
    assert again.returncode == 1 and "400 ProposalNotOpen" in again.stderr
    closed = _member_cli(sandbox, "withdraw", pid)
    assert closed.returncode == 1 and "ProposalNotOpen" in closed.stderr
    # a second proposal, withdrawn by its proposer (which also drops the completed first one, as CCF does)
    second = orjson.loads(_member_cli(sandbox, "--json", "propose", "--trigger", "trigger_ledger_chunk").stdout)
    withdrawn = _member_cli(sandbox, "withdraw", second["proposalId"])
    assert withdrawn.returncode == 0 and "Withdrawn" in withdrawn.stdout
    # refusals: one line, CCF's code, exit 1
    unknown = _member_cli(sandbox, "vote", "ab" * 32, "--reject")
    assert unknown.returncode == 1
    assert unknown.stderr.strip().splitlines() == [unknown.stderr.strip()]
    assert "404 ProposalNotFound" in unknown.stderr
    bad = _member_cli(sandbox, "propose", "--actions", "/nonexistent.json")
    assert bad.returncode == 1 and bad.stderr.startswith("error: ")
