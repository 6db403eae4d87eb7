"""The client's receipt verification for auditors: JSON and COSE receipts, claims, and a change of service
identity followed through service endorsements."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest

from ledger.identity import ServiceIdentity, endorse
from ledger.service_ledger import ServiceLedger
from network.client.service import ReceiptInvalid, verify_receipt

pytestmark = pytest.mark.unit


def _committed_write(ledger: ServiceLedger, msg: bytes) -> int:
    tx = ledger.begin()
    tx.put("public:records", b"k", msg)
    tx.set_claims_digest(hashlib.sha256(msg).digest())
    txid = ledger.commit(tx)
    assert txid is not None
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    return txid.seqno


def test_json_and_cose_receipts_verify_with_their_claims_and_fail_otherwise(
        new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    seqno = _committed_write(ledger, b"hello")
    for receipt in (ledger.receipt(seqno), ledger.cose_receipt(seqno)):
        proof = verify_receipt(receipt, ledger.service.cert, claims_of=b"hello")
        assert proof.claims_digest == hashlib.sha256(b"hello").digest()
        with pytest.raises(ReceiptInvalid, match="Claims"):
            verify_receipt(receipt, ledger.service.cert, claims_of=b"goodbye")
        with pytest.raises(ReceiptInvalid):
            verify_receipt(receipt, ServiceIdentity.create().cert)
    assert verify_receipt(ledger.receipt(seqno), ledger.service.cert).seqno == seqno


def test_receipts_from_before_an_identity_change_verify_against_the_new_identity(
        new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    seqno = _committed_write(ledger, b"before")
    old = ledger.service
    new = ServiceIdentity.create()
    ledger.service = new
    ledger.add_service_endorsement(endorse(new.key, new.cert, old.key.public_key(), "CCF Service", ca=True))
    receipt = ledger.receipt(seqno)
    assert verify_receipt(receipt, new.cert, claims_of=b"before").seqno == seqno
    with pytest.raises(ReceiptInvalid, match="Endorsement"):
        verify_receipt({k: v for k, v in receipt.items() if k != "service_endorsements"}, new.cert)
