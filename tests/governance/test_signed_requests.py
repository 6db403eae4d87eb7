"""Governance requests as CCF checks them, with envelopes made by the `ccf` package's `ccf_cose_sign1`."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import given
from hypothesis import strategies as st

from governance.errors import AuthenticationFailed
from governance.requests import MessageType, SignedRequest, record_request, verify_request
from governance.tables import COSE_HISTORY
from ledger import cose
from ledger.identity import PartyIdentity, key_pem
from ledger.kv import Store
from ledger.tables import MEMBERS_CERTS, MEMBERS_INFO

pytestmark = pytest.mark.unit

CREATED_AT = "2026-11-28T12:00:00+00:00"
CREATED_AT_TS = int(dt.datetime.fromisoformat(CREATED_AT).timestamp())
PROPOSAL = b'{"actions": [{"name": "set_recovery_threshold", "args": {"recovery_threshold": 1}}]}'


def members_store(*members: tuple[PartyIdentity, str]) -> Store:
    store = Store()
    tx = store.begin()
    for identity, status in members:
        tx.put(MEMBERS_CERTS, identity.id, identity.pem.encode())
        tx.put_json(MEMBERS_INFO, identity.id, {"status": status})
    store.commit(tx)
    return store


def ccf_cose_sign1(tmp: Path, identity: PartyIdentity, content: bytes, msg_type: str,
                   proposal_id: str | None = None) -> bytes:
    """Run the ccf package's CLI, exactly as a member would."""
    (tmp / "key.pem").write_text(key_pem(identity.key))
    (tmp / "cert.pem").write_text(identity.pem)
    (tmp / "content").write_bytes(content)
    cmd = [sys.executable, os.path.join(os.path.dirname(sys.executable), "ccf_cose_sign1"),
           "--content", str(tmp / "content"), "--signing-cert", str(tmp / "cert.pem"),
           "--signing-key", str(tmp / "key.pem"), "--ccf-gov-msg-type", msg_type,
           "--ccf-gov-msg-created_at", CREATED_AT]
    if proposal_id is not None:
        cmd += ["--ccf-gov-msg-proposal_id", proposal_id]
    proc = subprocess.run(cmd, capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return proc.stdout


def sign(identity: PartyIdentity, payload: bytes | None, headers: dict[Any, Any], *, detached: bool = False) -> bytes:
    protected = {cose.HDR_KID: identity.id.encode(), **headers}
    return cose.sign1(identity.key, protected, payload or b"", detached=detached)


@pytest.fixture(scope="module")
def alice() -> PartyIdentity:
    return PartyIdentity.create("alice")


@pytest.fixture(scope="module")
def bob() -> PartyIdentity:
    return PartyIdentity.create("bob")


def test_proposal_ballot_and_withdrawal_made_by_ccf_cose_sign1_are_accepted(tmp_path: Path,
                                                                            alice: PartyIdentity) -> None:
    tx = members_store((alice, "Active")).read_tx()
    proposal = verify_request(tx, ccf_cose_sign1(tmp_path, alice, PROPOSAL, "proposal"), MessageType.PROPOSAL,
                              require_active=True)
    assert (proposal.member_id, proposal.payload, proposal.created_at) == (alice.id, PROPOSAL, CREATED_AT_TS)
    assert proposal.proposal_id is None
    ballot_body = b'{"ballot": "export function vote (proposal, proposerId) { return true }"}'
    ballot = verify_request(tx, ccf_cose_sign1(tmp_path, alice, ballot_body, "ballot", "ab12"),
                            MessageType.BALLOT, require_active=True)
    assert ballot.proposal_id == "ab12" and ballot.payload == ballot_body
    withdrawal = verify_request(tx, ccf_cose_sign1(tmp_path, alice, b"", "withdrawal", "ab12"),
                                MessageType.WITHDRAWAL, require_active=True)
    assert withdrawal.msg_type is MessageType.WITHDRAWAL and withdrawal.payload == b""


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=["P-256", "P-384", "P-521"])
def test_each_allowed_curve_is_accepted_from_the_cli(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    member = PartyIdentity.create("m", curve=curve)
    tx = members_store((member, "Active")).read_tx()
    request = verify_request(tx, ccf_cose_sign1(tmp_path, member, PROPOSAL, "proposal"), MessageType.PROPOSAL,
                             require_active=True)
    assert request.member_id == member.id


def test_a_tampered_payload_is_refused(tmp_path: Path, alice: PartyIdentity) -> None:
    tx = members_store((alice, "Active")).read_tx()
    envelope = ccf_cose_sign1(tmp_path, alice, PROPOSAL, "proposal")
    tampered = envelope.replace(b"recovery_threshold\": 1", b"recovery_threshold\": 9")
    assert tampered != envelope
    with pytest.raises(AuthenticationFailed, match="Signature verification failed"):
        verify_request(tx, tampered, MessageType.PROPOSAL, require_active=True)


def test_unknown_signer_wrong_kid_and_inactive_member_are_refused(tmp_path: Path, alice: PartyIdentity,
                                                                  bob: PartyIdentity) -> None:
    tx = members_store((alice, "Active"), (bob, "Accepted")).read_tx()
    stranger = PartyIdentity.create("stranger")
    with pytest.raises(AuthenticationFailed, match="not a known member"):
        verify_request(tx, ccf_cose_sign1(tmp_path, stranger, PROPOSAL, "proposal"), MessageType.PROPOSAL,
                       require_active=True)
    # alice signs, but names bob as the signer
    forged = sign(alice, PROPOSAL, {cose.HDR_KID: bob.id.encode(), "ccf.gov.msg.type": "proposal",
                                    "ccf.gov.msg.created_at": 1})
    with pytest.raises(AuthenticationFailed, match="Signature verification failed"):
        verify_request(tx, forged, MessageType.PROPOSAL, require_active=False)
    bobs = ccf_cose_sign1(tmp_path, bob, PROPOSAL, "proposal")
    with pytest.raises(AuthenticationFailed, match="not an active member"):
        verify_request(tx, bobs, MessageType.PROPOSAL, require_active=True)
    # acks and state digests come from members who are not active yet
    ack = ccf_cose_sign1(tmp_path, bob, b'{"stateDigest": "00"}', "ack")
    assert verify_request(tx, ack, MessageType.ACK, require_active=False).member_id == bob.id


def test_wrong_message_type_and_missing_headers_are_refused(tmp_path: Path, alice: PartyIdentity) -> None:
    tx = members_store((alice, "Active")).read_tx()
    ballot = ccf_cose_sign1(tmp_path, alice, b"{}", "ballot", "ab12")
    with pytest.raises(AuthenticationFailed, match="expected ccf.gov.msg.type to be 'proposal'"):
        verify_request(tx, ballot, MessageType.PROPOSAL, require_active=True)
    no_proposal_id = sign(alice, b"{}", {"ccf.gov.msg.type": "ballot", "ccf.gov.msg.created_at": 5})
    with pytest.raises(AuthenticationFailed, match="proposal_id"):
        verify_request(tx, no_proposal_id, MessageType.BALLOT, require_active=True)
    for created_at in (None, -1, "yesterday", True):
        headers: dict[Any, Any] = {"ccf.gov.msg.type": "proposal"}
        if created_at is not None:
            headers["ccf.gov.msg.created_at"] = created_at
        with pytest.raises(AuthenticationFailed, match="created_at"):
            verify_request(tx, sign(alice, PROPOSAL, headers), MessageType.PROPOSAL, require_active=True)


def test_unsupported_algorithms_untagged_and_detached_envelopes_are_refused(alice: PartyIdentity) -> None:
    tx = members_store((alice, "Active")).read_tx()
    good = sign(alice, PROPOSAL, {"ccf.gov.msg.type": "proposal", "ccf.gov.msg.created_at": 5})
    tag = cbor2.loads(good)
    phdr = cbor2.loads(tag.value[0])
    for alg in (-37, -257, -8, "ES384"):  # PS256, RS256, EdDSA, a string
        phdr[cose.HDR_ALG] = alg
        blob = cbor2.dumps(cbor2.CBORTag(18, [cbor2.dumps(phdr), {}, PROPOSAL, tag.value[3]]))
        with pytest.raises(AuthenticationFailed, match="Unsupported algorithm"):
            verify_request(tx, blob, MessageType.PROPOSAL, require_active=True)
    with pytest.raises(AuthenticationFailed, match="decode"):
        verify_request(tx, cbor2.dumps(tag.value), MessageType.PROPOSAL, require_active=True)
    detached = sign(alice, PROPOSAL, {"ccf.gov.msg.type": "proposal", "ccf.gov.msg.created_at": 5}, detached=True)
    with pytest.raises(AuthenticationFailed, match="attached"):
        verify_request(tx, detached, MessageType.PROPOSAL, require_active=True)
    for junk in (b"", b"\xff", b"not cbor at all", cbor2.dumps({"a": 1})):
        with pytest.raises(AuthenticationFailed):
            verify_request(tx, junk, MessageType.PROPOSAL, require_active=True)


def test_accepted_requests_are_kept_in_cose_history(tmp_path: Path, alice: PartyIdentity) -> None:
    store = members_store((alice, "Active"))
    envelope = ccf_cose_sign1(tmp_path, alice, PROPOSAL, "proposal")
    tx = store.begin()
    record_request(tx, verify_request(tx, envelope, MessageType.PROPOSAL, require_active=True))
    store.commit(tx)
    assert store.read_tx().get(COSE_HISTORY, alice.id) == envelope


_GOOD: dict[str, Any] = {}


@pytest.mark.property
@given(data=st.data())
def test_single_bit_flips_are_refused_or_change_nothing(alice: PartyIdentity, data: st.DataObject) -> None:
    if not _GOOD:
        _GOOD["store"] = members_store((alice, "Active"))
        _GOOD["envelope"] = sign(alice, PROPOSAL, {"ccf.gov.msg.type": "proposal", "ccf.gov.msg.created_at": 5})
    tx = _GOOD["store"].read_tx()
    original: SignedRequest = verify_request(tx, _GOOD["envelope"], MessageType.PROPOSAL, require_active=True)
    blob = bytearray(_GOOD["envelope"])
    bit = data.draw(st.integers(0, len(blob) * 8 - 1))
    blob[bit // 8] ^= 1 << (bit % 8)
    try:
        request = verify_request(tx, bytes(blob), MessageType.PROPOSAL, require_active=True)
    except AuthenticationFailed:
        return
    assert (request.member_id, request.payload, request.created_at) == (
        original.member_id, original.payload, original.created_at)
