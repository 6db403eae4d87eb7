"""Transaction status across commit and rollback, and the common /commit, /tx and /api endpoints."""

from __future__ import annotations

from collections.abc import Callable

import orjson
import pytest

from ledger.kv import Tx
from ledger.service_ledger import ServiceLedger
from ledger.txid import TxID
from network.enclave.common_endpoints import TxStatus, add_common_endpoints, tx_status
from network.enclave.endpoints import Endpoints, Mode
from network.enclave.http import Request

pytestmark = pytest.mark.unit


def write(ledger: ServiceLedger) -> TxID:
    tx = ledger.begin()
    tx.put("public:x", b"k", b"%d" % ledger.last_seqno)
    txid = ledger.commit(tx)
    assert txid is not None
    return txid


def test_status_follows_commit_and_rollback(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    first = write(ledger)
    assert tx_status(ledger, first) is TxStatus.PENDING
    assert tx_status(ledger, TxID(first.view, first.seqno + 5)) is TxStatus.UNKNOWN
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    assert tx_status(ledger, first) is TxStatus.COMMITTED
    assert tx_status(ledger, TxID(first.view + 1, first.seqno)) is TxStatus.INVALID  # committed in another view
    lost = write(ledger)
    ledger.rollback(sig.seqno)  # an election dropped it
    ledger.set_view(lost.view + 1)
    replacement = write(ledger)
    assert replacement.seqno == lost.seqno and replacement.view == lost.view + 1
    # CCF (src/node/tx_status.h): seen in a later view, but no later view has committed yet
    assert tx_status(ledger, lost) is TxStatus.UNKNOWN
    assert tx_status(ledger, replacement) is TxStatus.PENDING
    never_held = TxID(lost.view, lost.seqno + 3)
    assert tx_status(ledger, never_held) is TxStatus.UNKNOWN
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    assert tx_status(ledger, lost) is TxStatus.INVALID  # its seqno committed in another view
    assert tx_status(ledger, never_held) is TxStatus.INVALID  # a later view committed: it can never commit
    assert tx_status(ledger, replacement) is TxStatus.COMMITTED


def test_commit_tx_and_api_endpoints(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    frontend = Endpoints("/node")
    add_common_endpoints(frontend, ledger, "node")

    def call(target: str) -> tuple[int, object]:
        def begin(mode: Mode) -> Tx:
            return ledger.read_tx()

        response = frontend.dispatch(Request("GET", target, {}, b""), begin, lambda ctx: None)
        return response.status, orjson.loads(response.body)

    assert call("/node/commit") == (200, {"transaction_id": "2.2"})
    assert call("/node/tx?transaction_id=2.2") == (200, {"status": "Committed", "transaction_id": "2.2"})
    assert call("/node/tx?transaction_id=2.99") == (200, {"status": "Unknown", "transaction_id": "2.99"})
    status, body = call("/node/tx?transaction_id=banana")
    assert status == 400 and body["error"]["code"] == "InvalidQueryParameterValue"  # type: ignore[index]
    status, body = call("/node/api")
    assert status == 200 and set(body["paths"]) == {"/node/commit", "/node/tx", "/node/api"}  # type: ignore[index]
