"""The logging app's current-state endpoints, through the endpoint framework on a real service ledger."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from app.logging import app
from ledger.identity import PartyIdentity
from ledger.kv import Tx
from ledger.receipts import verify_json_receipt
from ledger.service_ledger import ServiceLedger
from ledger.tables import USERS_CERTS
from network.enclave.endpoints import EndpointContext, Mode
from network.enclave.http import Request, Response
from tests.ccf_tools import assert_read_ledger_accepts

pytestmark = pytest.mark.unit

USER = PartyIdentity.create("user0")
USER_DER = USER.cert.public_bytes(serialization.Encoding.DER)


class Service:
    def __init__(self, ledger: ServiceLedger) -> None:
        self.ledger = ledger
        ledger.commit_writes({USERS_CERTS: {USER.id.encode(): USER.pem.encode()}})

    def begin(self, mode: Mode) -> Tx:
        return self.ledger.read_tx() if mode is Mode.READONLY else self.ledger.begin()

    def finish(self, ctx: EndpointContext) -> str | None:
        tx = ctx.tx
        if ctx.mode is Mode.READONLY:
            return str(self.ledger.txid(tx.read_version))
        txid = self.ledger.commit(tx)
        return None if txid is None else str(txid)

    def call(self, method: str, target: str, body: object = None) -> Response:
        raw = b"" if body is None else orjson.dumps(body)
        return app.dispatch(Request(method, target, {}, raw, USER_DER), self.begin, self.finish)


@pytest.fixture
def service(new_service: Callable[..., ServiceLedger]) -> Service:
    return Service(new_service())


def test_private_and_public_records(service: Service) -> None:
    for kind in ("private", "public"):
        assert orjson.loads(service.call("POST", f"/app/log/{kind}", {"id": 42, "msg": f"{kind} hello"}).body) is True
        assert orjson.loads(service.call("GET", f"/app/log/{kind}?id=42").body) == {"msg": f"{kind} hello"}
        assert orjson.loads(service.call("GET", f"/app/log/{kind}/count").body) == 1
        missing = service.call("GET", f"/app/log/{kind}?id=7")
        assert missing.status == 400 and orjson.loads(missing.body)["error"]["code"] == "ResourceNotFound"
        assert orjson.loads(service.call("DELETE", f"/app/log/{kind}?id=42").body) is True
        assert orjson.loads(service.call("DELETE", f"/app/log/{kind}?id=42").body) is False
        service.call("POST", f"/app/log/{kind}", {"id": 1, "msg": "a"})
        service.call("POST", f"/app/log/{kind}", {"id": 2, "msg": "b"})
        assert orjson.loads(service.call("DELETE", f"/app/log/{kind}/all").body) is True
        assert orjson.loads(service.call("GET", f"/app/log/{kind}/count").body) == 0


def test_bad_requests(service: Service) -> None:
    for body in ({"id": 1, "msg": ""}, {"id": -1, "msg": "x"}, {"msg": "no id"}, [1, 2]):
        response = service.call("POST", "/app/log/private", body)
        assert response.status == 400 and orjson.loads(response.body)["error"]["code"] == "InvalidInput"
    bad_query = service.call("GET", "/app/log/private?id=abc")
    assert orjson.loads(bad_query.body)["error"]["code"] == "InvalidQueryParameterValue"


def test_record_claim_binds_the_message_into_the_receipt_and_the_ledger_stays_valid(service: Service) -> None:
    response = service.call("POST", "/app/log/public", {"id": 5, "msg": "claimed", "record_claim": True})
    seqno = int(dict(response.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    ledger = service.ledger
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    verified = verify_json_receipt(ledger.receipt(seqno), ledger.service.cert,
                                   expected_claims_digest=hashlib.sha256(b"claimed").digest())
    assert verified.seqno == seqno
    assert_read_ledger_accepts(ledger.files.directory)  # type: ignore[union-attr]


@pytest.mark.parametrize("target", ["/app/log/private?id=18446744073709551616", "/app/log/private?id=%C2%B2",
                                    "/app/log/public?id=-1"])
def test_ids_beyond_64_bits_or_not_ascii_digits_are_400(service: Service, target: str) -> None:
    response = service.call("GET", target)
    assert response.status == 400, response.body
    assert orjson.loads(response.body)["error"]["code"] == "InvalidQueryParameterValue"


@pytest.mark.parametrize("record_id", [2**64, True, -3, "7"])
def test_a_body_id_must_be_an_unsigned_64_bit_integer(service: Service, record_id: object) -> None:
    raw = b'{"id": 18446744073709551616, "msg": "x"}' if record_id == 2**64 else \
        orjson.dumps({"id": record_id, "msg": "x"})
    response = app.dispatch(Request("POST", "/app/log/private", {}, raw, USER_DER), service.begin, service.finish)
    assert response.status == 400, response.body
    assert orjson.loads(response.body)["error"]["code"] == "InvalidInput"
