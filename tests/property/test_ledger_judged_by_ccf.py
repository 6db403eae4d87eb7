"""Random transaction sequences written through the whole commit path, judged by the `ccf` package's tools.

For each example: public and private writes and removes, application claims, signatures at random
intervals, a rekey, explicit chunk requests, small chunks. Then `read_ledger.py` must verify the
directory with the expected number of signatures, `ccf.ledger.Ledger(...).get_latest_public_state()`
must equal our public state, `verify_ledger_secrets_chain.py` must pass, our own auditor must pass
trusting only the service certificate, and replaying the files must rebuild the same store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import ccf.ledger
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.audit import audit_ledger
from ledger.files import LedgerFiles
from ledger.replay import recover
from ledger.secrets import opening_secret_record
from ledger.service_ledger import ServiceLedger
from ledger.tables import HISTORICAL_SECRETS, SINGLETON_KEY, dump_json
from tests.ccf_tools import assert_read_ledger_accepts, verify_secrets_chain

pytestmark = pytest.mark.property

MAPS = ["public:app.records", "public:app.other", "app.secrets", "app.more_secrets"]

write_op = st.tuples(st.just("put"), st.sampled_from(MAPS), st.integers(0, 12), st.binary(min_size=0, max_size=300))
remove_op = st.tuples(st.just("remove"), st.sampled_from(MAPS), st.integers(0, 12), st.just(b""))
tx_strategy = st.tuples(
    st.lists(st.one_of(write_op, write_op, remove_op), min_size=1, max_size=4),
    st.booleans(),  # set application claims
    st.sampled_from(["none", "none", "none", "signature", "chunk", "rekey"]),
)


def _fewer_examples() -> Any:
    # Each example runs two subprocesses; scale the profile's budget down.
    return settings(max_examples=max(4, settings.default.max_examples // 4))


def public_state(ledger: ServiceLedger) -> dict[str, dict[bytes, bytes]]:
    return {
        name: {k: v for k, (_, v) in entries.items()}
        for name, entries in ledger.store.snapshot().items()
        if name.startswith("public:")
    }


@_fewer_examples()
@given(txs=st.lists(tx_strategy, min_size=1, max_size=40), chunk_size=st.sampled_from([1500, 4000, 1 << 20]))
def test_random_ledgers_pass_read_ledger_public_state_and_secret_chain(
    new_service: Callable[..., ServiceLedger], txs: list[Any], chunk_size: int
) -> None:
    ledger = new_service(chunk_size=chunk_size)
    ledger.commit_writes(
        {HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(opening_secret_record(ledger.secrets.latest))}}
    )
    rekeyed = False
    for ops, claims, action in txs:
        tx = ledger.begin()
        for op, map_name, key, value in ops:
            if op == "put":
                tx.put(map_name, b"k%d" % key, value)
            else:
                tx.remove(map_name, b"k%d" % key)
        if claims:
            tx.set_claims_digest(hashlib.sha256(repr(ops).encode()).digest())
        ledger.commit(tx)
        if action == "signature":
            ledger.emit_signature()
        elif action == "chunk":
            ledger.request_chunk()
            ledger.emit_signature()
        elif action == "rekey" and not rekeyed:
            ledger.rekey()
            rekeyed = True
    if not rekeyed:
        ledger.rekey()
    ledger.request_chunk()  # the last signature ends a chunk, so every chunk is complete and committed
    last = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(last.seqno)
    assert ledger.files is not None
    ledger.files.close()
    directory = ledger.files.directory
    assert all(name.endswith(".committed") for name in ledger.files.chunk_names())

    signatures = len(ledger.signature_seqnos())
    assert_read_ledger_accepts(directory, signatures=signatures)

    theirs, seqno = ccf.ledger.Ledger([directory]).get_latest_public_state()
    assert seqno == last.seqno
    # ccf keeps a None for a key removed in the first transaction that touches its table: drop those.
    theirs_live = {name: {k: v for k, v in records.items() if v is not None} for name, records in theirs.items()}
    assert {name: records for name, records in theirs_live.items() if records} == public_state(ledger)

    chain = verify_secrets_chain(directory)
    assert chain.returncode == 0, chain.stdout[-2000:] + chain.stderr[-2000:]

    report = audit_ledger([directory], service_cert=ledger.service.cert, secrets=ledger.secrets)
    assert report.signatures == signatures
    assert report.last_seqno == last.seqno

    files, _ = LedgerFiles.open(directory)
    replayed = recover(files, secrets=ledger.secrets, node=ledger.node, service=ledger.service)
    assert replayed.store.snapshot() == ledger.store.snapshot()
    assert replayed.merkle.root() == ledger.merkle.root()
    files.close()
