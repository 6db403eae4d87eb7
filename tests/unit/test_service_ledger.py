"""The commit path as a whole: genesis, txids, conflicts, chunking, rollback, commit, rekey."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.audit import audit_ledger
from ledger.errors import LedgerError, RollbackBelowCommit, TransactionConflict
from ledger.framing import FLAG_FORCE_CHUNK_AFTER
from ledger.genesis import GENESIS_SEQNO, GENESIS_VIEW
from ledger.identity import PartyIdentity, cert_pem
from ledger.kv import Store
from ledger.merkle import MerkleHistory
from ledger.receipts import verify_json_receipt
from ledger.service_ledger import ServiceLedger
from ledger.tables import (
    CONSTITUTION,
    MEMBERS_INFO,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_INFO,
    SINGLETON_KEY,
)
from ledger.txid import TxID
from tests.ccf_tools import assert_read_ledger_accepts

pytestmark = pytest.mark.unit


def test_genesis_writes_service_members_node_and_constitution(
    new_service: Callable[..., ServiceLedger], member: PartyIdentity
) -> None:
    ledger = new_service(with_files=False)
    assert ledger.txid(GENESIS_SEQNO) == TxID(GENESIS_VIEW, 1)
    assert str(ledger.txid(2)) == "2.2" and ledger.is_signature(2) and ledger.committed_seqno == 2
    tx = ledger.read_tx()  # genesis state (the signature at 2 touched none of these maps)
    info = tx.get_json(SERVICE_INFO, SINGLETON_KEY)
    assert info["status"] == "Opening" and info["cert"] == ledger.service.pem
    assert info["current_service_create_txid"] == "2.1"
    node_id = ledger.node.node_id
    node_info = tx.get_json(NODES_INFO, node_id)
    assert node_info["status"] == "Trusted" and "cert" not in node_info
    assert node_info["quote_info"]["format"] == "Insecure_Virtual"
    # CCF's NodeInfoNetwork requires both interfaces
    assert node_info["node_to_node_interface"]["bind_address"] == "127.0.0.1:8001"
    assert node_info["rpc_interfaces"]["primary_rpc_interface"]["published_address"] == "127.0.0.1:8000"
    assert tx.get(NODES_ENDORSED_CERTS, node_id) == cert_pem(ledger.node.cert).encode()
    assert tx.get_json(MEMBERS_INFO, member.id) == {"member_data": {"name": "member0"}, "status": "Accepted"}
    assert "validate" in tx.get_json(CONSTITUTION, SINGLETON_KEY)


def test_txids_are_contiguous_and_carry_the_current_view(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    ids = []
    for view in (2, 2, 3, 5):
        ledger.set_view(view)
        tx = ledger.begin()
        tx.put("m", b"k", b"%d" % view)
        ids.append(ledger.commit(tx))
    assert ids == [TxID(2, 3), TxID(2, 4), TxID(3, 5), TxID(5, 6)]
    assert TxID.parse("5.6") == ids[-1]
    with pytest.raises(ValueError):
        TxID.parse("5-6")


def test_a_stale_read_fails_to_commit_and_changes_nothing(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    setup = ledger.begin()
    setup.put_int("public:counter", "c", 0)
    ledger.commit(setup)
    a, b = ledger.begin(), ledger.begin()
    a.put_int("public:counter", "c", (a.get_int("public:counter", "c") or 0) + 1)
    b.put_int("public:counter", "c", (b.get_int("public:counter", "c") or 0) + 1)
    ledger.commit(a)
    before = (ledger.last_seqno, ledger.merkle.size)
    with pytest.raises(TransactionConflict):
        ledger.commit(b)
    assert (ledger.last_seqno, ledger.merkle.size) == before
    retry = ledger.begin()
    retry.put_int("public:counter", "c", (retry.get_int("public:counter", "c") or 0) + 1)
    ledger.commit(retry)
    assert ledger.read_tx().get_int("public:counter", "c") == 2


def test_chunks_end_only_at_signatures_past_the_chunk_size(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(chunk_size=3000)
    for i in range(12):
        tx = ledger.begin()
        tx.put("public:m", b"%d" % i, b"x" * 500)
        ledger.commit(tx)
    assert ledger.files is not None
    assert [n for n in ledger.files.chunk_names() if "-" in n and n.startswith("ledger_3")] == []
    sig = ledger.emit_signature()
    assert ledger.files.read(sig.seqno)[1] & FLAG_FORCE_CHUNK_AFTER
    assert f"ledger_3-{sig.seqno}" in ledger.files.chunk_names()
    small = ledger.begin()
    small.put("public:m", b"small", b"x")
    ledger.commit(small)
    sig2 = ledger.emit_signature()
    assert not ledger.files.read(sig2.seqno)[1] & FLAG_FORCE_CHUNK_AFTER


def test_rollback_drops_the_uncommitted_suffix_everywhere(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(chunk_size=2000)
    for i in range(5):
        tx = ledger.begin()
        tx.put("app.private", b"k", b"v%d" % i)
        ledger.commit(tx)
    kept = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(kept.seqno)
    root_at_commit = ledger.merkle.root()
    for i in range(6):
        tx = ledger.begin()
        tx.put("app.private", b"k", b"doomed%d" % i)
        tx.put("public:p", b"k%d" % i, b"x" * 600)
        ledger.commit(tx)
        if i == 2:
            ledger.rekey()
            ledger.emit_signature()
    with pytest.raises(RollbackBelowCommit):
        ledger.rollback(kept.seqno - 1)
    ledger.rollback(kept.seqno)
    assert ledger.last_seqno == kept.seqno and ledger.merkle.root() == root_at_commit
    assert ledger.read_tx().get("app.private", b"k") == b"v4"
    assert ledger.signature_seqnos()[-1] == kept.seqno
    assert len(ledger.secrets) == 1
    assert ledger.files is not None and ledger.files.last_seqno == kept.seqno
    # the ledger goes on from there and stays valid
    tx = ledger.begin()
    tx.put("app.private", b"k", b"after rollback")
    after = ledger.commit(tx)
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    assert_read_ledger_accepts(ledger.files.directory, signatures=len(ledger.signature_seqnos()))
    verify_json_receipt(ledger.receipt(after.seqno), ledger.service.cert)


@pytest.mark.property
@given(data=st.data())
def test_random_rollbacks_leave_a_ledger_equal_to_one_written_without_them(
    new_service: Callable[..., ServiceLedger], data: st.DataObject
) -> None:
    """Writing A, then B, rolling B back and writing C gives the same state and Merkle root as A then C."""
    ops = st.lists(st.tuples(st.sampled_from(["public:a", "b"]), st.integers(0, 5), st.binary(max_size=40)),
                   min_size=1, max_size=3)
    a = data.draw(st.lists(ops, max_size=8), label="A")
    b = data.draw(st.lists(ops, min_size=1, max_size=8), label="B")
    c = data.draw(st.lists(ops, max_size=8), label="C")
    sign_b = data.draw(st.booleans(), label="sign inside B")

    def apply(ledger: ServiceLedger, txs: list[list[tuple[str, int, bytes]]]) -> None:
        for writes in txs:
            tx = ledger.begin()
            for name, key, value in writes:
                tx.put(name, b"%d" % key, value)
            ledger.commit(tx)

    first = new_service(with_files=False)
    # an identical twin of `first` (same state, tree and secrets) that never sees B
    second = ServiceLedger(node=first.node, service=first.service, secrets=first.secrets, files=None,
                           store=Store.from_snapshot(first.store.snapshot(2), 2, GENESIS_VIEW),
                           merkle=MerkleHistory.deserialise(first.merkle.serialise()))
    for ledger in (first, second):
        apply(ledger, a)
    mark = first.last_seqno
    apply(first, b)
    if sign_b:
        first.emit_signature()
    first.rollback(mark)
    for ledger in (first, second):
        apply(ledger, c)
    assert first.store.snapshot() == second.store.snapshot()
    assert first.merkle.root() == second.merkle.root()


def test_commit_cannot_pass_the_end_and_receipts_need_commit(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    with pytest.raises(LedgerError):
        ledger.commit_to(ledger.last_seqno + 1)


def test_rekey_switches_secret_after_the_rekey_transaction(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service()
    before = ledger.secrets.latest
    rekey = ledger.rekey()
    assert ledger.secrets.for_seqno(rekey.seqno) is before
    assert ledger.secrets.for_seqno(rekey.seqno + 1).start == rekey.seqno + 1
    record = json.loads(ledger.read_tx().get("public:ccf.internal.historical_encrypted_ledger_secret",
                                             SINGLETON_KEY) or b"{}")
    assert record["previous_ledger_secret"]["version"] == before.start
    tx = ledger.begin()
    tx.put("private", b"k", b"under the new key")
    ledger.commit(tx)
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    report = audit_ledger([ledger.files.directory], secrets=ledger.secrets)  # type: ignore[union-attr]
    assert report.last_seqno == sig.seqno
