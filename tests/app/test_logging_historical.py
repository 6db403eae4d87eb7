"""The logging app's historical endpoints, on a real Enclave with ledger files (CCF's logging sample)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import ccf.cose
import pytest

import app.logging as logging_app
from ledger.receipts import verify_cose_receipt, verify_json_receipt
from ledger.txid import TxID
from tests.app.harness import AppNode, body, error_code
from tests.ccf_tools import ccf_check_json_receipt

pytestmark = pytest.mark.unit


@pytest.fixture
def node(tmp_path: Path) -> AppNode:
    return AppNode(str(tmp_path))


@pytest.fixture
def queued(tmp_path: Path) -> AppNode:
    """A node whose host runs fetches only when the test says so."""
    return AppNode(str(tmp_path), immediate=False)


# --- /log/{private,public}/historical ------------------------------------------------------------------------


@pytest.mark.parametrize("scope", ["private", "public"])
def test_202_while_fetching_then_200(queued: AppNode, scope: str) -> None:
    txid = queued.write(scope, 1, f"{scope} first")
    queued.write(scope, 1, f"{scope} second")
    queued.sign()
    pending = queued.get(f"/app/log/{scope}/historical?id=1", txid)
    headers = dict(pending.headers)
    assert pending.status == 202 and headers["retry-after"] == "3" and headers["content-type"] == "text/plain"
    assert pending.body == f"Historical transaction {txid} is not currently available.".encode()
    assert queued.get(f"/app/log/{scope}/historical?id=1", txid).status == 202  # still fetching: no second read
    assert queued.host.run_scheduled() == 1
    done = queued.get(f"/app/log/{scope}/historical?id=1", txid)
    assert done.status == 200 and body(done) == {"msg": f"{scope} first"}  # as of txid, not the current value
    assert queued.get(f"/app/log/{scope}/historical?id=1", txid).status == 200  # cached now
    assert queued.host.reads == [(txid.seqno, txid.seqno)]


def test_served_at_once_when_the_host_reads_synchronously(node: AppNode) -> None:
    txid = node.write("public", 3, "hello")
    node.sign()
    response = node.get("/app/log/public/historical?id=3", txid)
    assert response.status == 200 and body(response) == {"msg": "hello"}


def test_private_messages_are_decrypted_from_encrypted_files(node: AppNode) -> None:
    secret = "a private message that never reaches the disk in clear"
    txid = node.write("private", 9, secret)
    node.sign()
    on_disk = b"".join(p.read_bytes() for p in Path(node.files.directory).iterdir())
    assert secret.encode() not in on_disk
    node.historical.clear_cache()
    assert body(node.get("/app/log/private/historical?id=9", txid)) == {"msg": secret}


def test_204_when_that_transaction_did_not_write_the_key(node: AppNode) -> None:
    wrote_1 = node.write("private", 1, "one")
    removed_1 = node.delete("private", 1)
    node.sign()
    for target, txid in (("/app/log/private/historical?id=2", wrote_1),  # another key
                         ("/app/log/public/historical?id=1", wrote_1),  # the other table
                         ("/app/log/private/historical?id=1", removed_1)):  # a removal
        response = node.get(target, txid)
        assert response.status == 204 and response.body == b"", target
    assert node.get("/app/log/private/historical_receipt?id=1", removed_1).status == 204


def test_404_for_pending_unknown_and_invalid_transactions(node: AppNode) -> None:
    node.sign()
    pending = node.write("public", 1, "not signed yet")
    unknown = TxID(pending.view, pending.seqno + 10)
    for txid in (pending, unknown):
        response = node.get("/app/log/public/historical?id=1", txid)
        assert response.status == 404 and error_code(response) == "TransactionPendingOrUnknown"
        assert dict(response.headers)["cache-control"] == "no-cache"
    node.sign()
    invalid = node.get("/app/log/public/historical?id=1", TxID(pending.view - 1, pending.seqno))
    assert invalid.status == 404 and error_code(invalid) == "TransactionInvalid"
    assert node.get("/app/log/public/historical?id=1", pending).status == 200  # committed now


def test_400_for_a_missing_or_malformed_header_or_id(node: AppNode) -> None:
    txid = node.write("public", 1, "x")
    node.sign()
    missing = node.get("/app/log/public/historical?id=1")
    assert missing.status == 400 and error_code(missing) == "MissingRequiredHeader"
    for bad in ("2", "a.b", "2.", "-1.3", ""):
        response = node.get("/app/log/public/historical?id=1", bad)
        assert response.status == 400 and error_code(response) == "InvalidHeaderValue", bad
    no_id = node.get("/app/log/public/historical", txid)
    assert no_id.status == 400 and error_code(no_id) == "InvalidQueryParameterValue"


def test_historical_endpoints_need_a_registered_user(node: AppNode) -> None:
    txid = node.write("public", 1, "x")
    node.sign()
    response = node.call("GET", "/app/log/public/historical?id=1", txid=txid, headers={})
    assert response.status == 200
    node.user_der = b""  # no client certificate
    assert node.get("/app/log/public/historical?id=1", txid).status == 401


# --- receipts ------------------------------------------------------------------------------------------------


def test_private_historical_receipt_verifies(node: AppNode) -> None:
    txid = node.write("private", 4, "with receipt")
    node.sign()
    response = node.get("/app/log/private/historical_receipt?id=4", txid)
    assert response.status == 200
    out = body(response)
    assert out["msg"] == "with receipt"
    receipt = out["receipt"]
    assert receipt["leaf_components"]["claims_digest"] == bytes(32).hex()
    service_cert = node.ledger.service.cert
    ccf_check_json_receipt(receipt, service_cert)
    verified = verify_json_receipt(receipt, service_cert)
    assert (verified.view, verified.seqno) == tuple(txid)


def test_public_historical_receipt_leaves_the_claims_digest_to_the_verifier(node: AppNode) -> None:
    msg = "claimed message"
    txid = node.write("public", 5, msg, record_claim=True)
    node.sign()
    out = body(node.get("/app/log/public/historical_receipt?id=5", txid))
    assert out["msg"] == msg
    receipt: dict[str, Any] = out["receipt"]
    assert "claims_digest" not in receipt["leaf_components"]
    service_cert = node.ledger.service.cert
    with pytest.raises(Exception, match="signature"):  # the leaf needs the claims digest back
        verify_json_receipt(receipt, service_cert)
    claims = hashlib.sha256(out["msg"].encode()).digest()
    receipt["leaf_components"]["claims_digest"] = claims.hex()
    ccf_check_json_receipt(receipt, service_cert)
    assert verify_json_receipt(receipt, service_cert, expected_claims_digest=claims).seqno == txid.seqno


def test_cose_receipt_is_cbor_and_verifies_with_the_ccf_package(node: AppNode) -> None:
    plain = node.write("public", 1, "no claim")
    claimed = node.write("public", 2, "claim", record_claim=True)
    sig = node.sign()
    service_cert = node.ledger.service.cert
    for txid, claims in ((plain, bytes(32)), (claimed, hashlib.sha256(b"claim").digest())):
        response = node.get("/app/log/public/cose_receipt", txid)
        assert response.status == 200 and dict(response.headers)["content-type"] == "application/cbor"
        ccf.cose.verify_receipt(response.body, service_cert.public_key(), claims)
        assert verify_cose_receipt(response.body, service_cert, expected_claims_digest=claims).seqno == txid.seqno
    signature = node.get("/app/log/public/cose_receipt", sig)
    assert signature.status == 404 and error_code(signature) == "ResourceNotFound"
    assert error_code(node.get("/app/log/public/cose_receipt")) == "MissingRequiredHeader"


# --- ranges --------------------------------------------------------------------------------------------------


def _follow(node: AppNode, target: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Every entry of a range query, following @nextLink; and the links followed."""
    entries: list[dict[str, Any]] = []
    links = []
    link: str | None = target
    while link is not None:
        response = node.get(link)
        if response.status == 202:
            assert dict(response.headers)["retry-after"] == "3"
            assert node.host.run_scheduled() >= 1
            continue
        assert response.status == 200, response.body
        page = body(response)
        entries += page["entries"]
        link = page.get("@nextLink")
        if link is not None:
            links.append(link)
    return entries, links


@pytest.mark.parametrize("scope", ["public", "private"])
def test_range_pages_with_next_link(queued: AppNode, scope: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(logging_app, "RANGE_PAGE", 4)
    expected = []
    for i in range(12):
        txid = queued.write(scope, 7, f"m{i}")
        expected.append({"seqno": txid.seqno, "id": 7, "msg": f"m{i}"})
        queued.write(scope, 8, f"other {i}")
        if i == 5:
            queued.delete(scope, 7)  # a removal is not an entry
    queued.sign()
    target = f"/app/log/{scope}/historical/range?id=7"
    entries, links = _follow(queued, target)
    assert entries == expected
    first, last = expected[0]["seqno"], expected[-1]["seqno"]  # defaults: the id's first and last writes
    assert links[0] == f"/app/log/{scope}/historical/range?from_seqno={first + 5}&to_seqno={last}&id=7"
    assert len(links) == -(-(last - first + 1) // 5) - 1  # pages of RANGE_PAGE + 1 seqnos, as CCF's
    # the next page was prefetched while the previous one was answered: only the first page waited
    assert len(queued.host.reads) == len(links) + 1
    explicit, _ = _follow(queued, f"/app/log/{scope}/historical/range?id=7&from_seqno=1&to_seqno={last}")
    assert explicit == expected


def test_range_of_a_key_never_written_is_empty(node: AppNode) -> None:
    node.sign()
    assert body(node.get("/app/log/public/historical/range?id=99")) == {"entries": []}


def test_range_of_a_key_written_once_and_of_a_deleted_key(node: AppNode) -> None:
    once = node.write("public", 1, "only")
    node.sign()
    assert body(node.get("/app/log/public/historical/range?id=1")) == {
        "entries": [{"seqno": once.seqno, "id": 1, "msg": "only"}]}
    node.delete("public", 1)
    node.sign()  # deleted now: the range runs to the commit point
    assert body(node.get("/app/log/public/historical/range?id=1"))["entries"] == [
        {"seqno": once.seqno, "id": 1, "msg": "only"}]


def test_range_bounds_are_checked(node: AppNode) -> None:
    node.write("public", 1, "a")
    sig = node.sign()
    unsigned = node.write("public", 1, "b")
    not_committed = node.get(f"/app/log/public/historical/range?id=1&from_seqno=1&to_seqno={unsigned.seqno}")
    assert not_committed.status == 400 and error_code(not_committed) == "InvalidInput"
    assert b"Only committed transactions can be queried" in not_committed.body
    default_to = node.get("/app/log/public/historical/range?id=1")  # the last write is not committed yet
    assert default_to.status == 400 and error_code(default_to) == "InvalidInput"
    backwards = node.get(f"/app/log/public/historical/range?id=1&from_seqno={sig.seqno}&to_seqno=2")
    assert backwards.status == 400 and body(backwards)["error"]["message"] == \
        f"Invalid range: Starts at {sig.seqno} but ends at 2"
    for query in ("id=1&from_seqno=x", "id=1&to_seqno=-1", "id=abc", "from_seqno=1"):
        response = node.get(f"/app/log/public/historical/range?{query}")
        assert response.status == 400 and error_code(response) == "InvalidQueryParameterValue", query
    future = node.get("/app/log/public/historical/range?id=1&from_seqno=1&to_seqno=1000")
    assert future.status == 400 and b"is Unknown" in future.body


def test_sparse_private_query(queued: AppNode) -> None:
    a = queued.write("private", 3, "a")
    other = queued.write("private", 4, "b")
    c = queued.write("private", 3, "c")
    queued.sign()
    target = f"/app/log/private/historical/sparse?id=3&seqnos={c.seqno},{other.seqno},{a.seqno},{a.seqno}"
    pending = queued.get(target)
    assert pending.status == 202
    queued.host.run_scheduled()
    assert body(queued.get(target)) == {"entries": [{"seqno": a.seqno, "id": 3, "msg": "a"},
                                                    {"seqno": c.seqno, "id": 3, "msg": "c"}]}
    for bad in ("seqnos=1,x", "seqnos=", "id=3"):
        response = queued.get(f"/app/log/private/historical/sparse?id=3&{bad}")
        assert response.status == 400 and error_code(response) == "InvalidQueryParameterValue", bad
    uncommitted = queued.write("private", 3, "d")
    response = queued.get(f"/app/log/private/historical/sparse?id=3&seqnos={a.seqno},{uncommitted.seqno}")
    assert response.status == 400 and error_code(response) == "InvalidInput"


def test_first_write_version_is_recorded_by_the_next_write(node: AppNode) -> None:
    first = node.write("public", 6, "one")
    node.write("public", 6, "two")
    node.write("public", 6, "three")
    tx = node.ledger.read_tx()
    assert tx.get("public:first_write_version", (6).to_bytes(8, "little")) == first.seqno.to_bytes(8, "little")
    node.write("private", 6, "p1")
    node.delete("private", 6)
    assert node.ledger.read_tx().get("first_write_version", (6).to_bytes(8, "little")) is not None
