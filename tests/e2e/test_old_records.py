"""A node that keeps few transactions' records in memory (`ledger.retained_records`) serves the receipts and
historical reads of older ones from its ledger files: the same receipts as before, judged by the ccf package, and
refused once the file holding the entry is altered (the proof of reading the files). `make test` runs it in both
passes, so also with the enclave in its own process, reading the host's files across the boundary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import ccf.cose
import pytest

from ledger.identity import load_cert
from network.client.service import ServiceClient
from tests.ccf_tools import ccf_check_json_receipt
from tests.e2e.conftest import SandboxFactory
from tests.e2e.harness import Sandbox

pytestmark = pytest.mark.e2e

RETAINED = 4
MESSAGE = "a public record written before the others"


def _until_served(call: Any, timeout: float = 20.0) -> Any:
    """Retry while the node answers 202 (a historical fetch in progress)."""
    deadline = time.monotonic() + timeout
    while True:
        answer = call()
        if answer.status != 202 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


def _historical(user: ServiceClient, txid: str) -> Any:
    return _until_served(lambda: user.call("GET", "/app/log/public/historical?id=1",
                                           headers={"x-ms-ccf-transaction-id": txid}))


def _cose_receipt(user: ServiceClient, txid: str) -> Any:
    return _until_served(lambda: user.call("GET", "/app/log/public/cose_receipt",
                                           headers={"x-ms-ccf-transaction-id": txid}))


def test_old_transactions_are_proven_from_the_ledger_files(sandbox_factory: SandboxFactory) -> None:
    sandbox: Sandbox = sandbox_factory(ledger={"retained_records": RETAINED})
    sandbox.start()
    sandbox.open()
    user = sandbox.client()
    written = user.call("POST", "/app/log/public", {"id": 1, "msg": MESSAGE})
    assert written.status == 200 and written.txid is not None
    txid = written.txid
    sandbox.wait_for_commit(txid, user, frontend="/app")
    json_before = sandbox.receipt(user, txid)
    cose_before = _cose_receipt(user, txid).body

    last = txid
    for i in range(12 * RETAINED):  # at this load each write is signed on its own: far past the records kept
        answer = user.call("POST", "/app/log/private", {"id": 100 + i, "msg": f"later {i}"})
        assert answer.status == 200 and answer.txid is not None
        last = answer.txid
    sandbox.wait_for_commit(last, user, frontend="/app")

    service_cert = load_cert(Path(sandbox.service_cert_path).read_bytes())
    assert sandbox.receipt(user, txid) == json_before
    ccf_check_json_receipt(json_before, service_cert)
    assert _cose_receipt(user, txid).body == cose_before
    ccf.cose.verify_receipt(cose_before, service_cert.public_key(), bytes(32))
    historical = _historical(user, txid)
    assert historical.status == 200 and historical.json()["msg"] == MESSAGE

    # the proof now rests on the files: the entry altered there is refused, and served again once restored
    chunk = next(p for p in Path(sandbox.ledger_dir).iterdir() if MESSAGE.encode() in p.read_bytes())
    original = chunk.read_bytes()
    chunk.write_bytes(original.replace(MESSAGE.encode(), MESSAGE.upper().encode()))
    try:
        refused = user.call("GET", f"/app/receipt?transaction_id={txid}")
        assert refused.status == 500 and b"not the transaction this node recorded" in refused.body, refused
    finally:
        chunk.write_bytes(original)
    assert sandbox.receipt(user, txid) == json_before
