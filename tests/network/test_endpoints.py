"""The endpoint framework: routing, authentication, JSON, typed errors, transaction ids, OpenAPI."""

from __future__ import annotations

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from ledger.identity import PartyIdentity
from ledger.kv import Store, Tx
from ledger.tables import USERS_CERTS
from network.enclave.auth import UserCert
from network.enclave.endpoints import TXID_HEADER, EndpointContext, EndpointError, Endpoints, Mode
from network.enclave.http import Request, Response

pytestmark = pytest.mark.unit

USER = PartyIdentity.create("user")
USER_DER = USER.cert.public_bytes(serialization.Encoding.DER)

app = Endpoints("/app")


@app.endpoint("POST", "/log/private", mode=Mode.READWRITE, auth=(UserCert(),))
def record(ctx: EndpointContext) -> object:
    """Record a private message."""
    body = ctx.json()
    if not isinstance(body, dict) or "id" not in body:
        raise EndpointError(400, "InvalidInput", "id is required")
    ctx.tx.put_json("records", str(body["id"]), body.get("msg"))
    return {"recorded": body["id"], "by": ctx.caller.id}


@app.endpoint("GET", "/log/private/{id}", auth=(UserCert(),))
def read(ctx: EndpointContext) -> object:
    value = ctx.tx.get_json("records", ctx.params["id"])
    if value is None:
        raise EndpointError(404, "ResourceNotFound", f"No such record: {ctx.params['id']}.")
    return {"msg": value, "query": ctx.query}


@app.endpoint("GET", "/custom")
def custom(ctx: EndpointContext) -> Response:
    return Response(202, b"later", (("retry-after", "3"),))


class Node:
    """Stands in for the node: a store, transactions per request, commit giving a txid."""

    def __init__(self) -> None:
        self.store = Store()
        tx = self.store.begin()
        tx.put(USERS_CERTS, USER.id, USER.pem.encode())
        self.store.commit(tx)

    def begin(self, mode: Mode) -> Tx:
        return self.store.read_tx() if mode is Mode.READONLY else self.store.begin()

    def finish(self, ctx: EndpointContext) -> str | None:
        tx = ctx.tx
        if ctx.mode is Mode.READONLY:
            return f"2.{tx.read_version}"
        result = self.store.commit(tx)
        return None if result is None else f"{result.view}.{result.seqno}"

    def call(self, method: str, target: str, body: object = None, cert: bytes | None = USER_DER) -> Response:
        raw = b"" if body is None else (body if isinstance(body, bytes) else orjson.dumps(body))
        return app.dispatch(Request(method, target, {}, raw, cert), self.begin, self.finish)


def test_a_write_then_a_read_with_transaction_ids() -> None:
    node = Node()
    written = node.call("POST", "/app/log/private", {"id": 7, "msg": "hello"})
    assert written.status == 200 and orjson.loads(written.body) == {"recorded": 7, "by": USER.id}
    assert dict(written.headers)[TXID_HEADER] == "0.2"
    got = node.call("GET", "/app/log/private/7?verbose=1")
    assert orjson.loads(got.body) == {"msg": "hello", "query": {"verbose": ["1"]}}
    assert dict(got.headers)[TXID_HEADER] == "2.2"


def test_routing_errors_authentication_and_bad_bodies_get_ccf_errors() -> None:
    node = Node()
    cases = [
        (node.call("GET", "/app/nowhere"), 404, "ResourceNotFound"),
        (node.call("DELETE", "/app/log/private"), 405, "UnsupportedHttpVerb"),
        (node.call("GET", "/app/log/private/1", cert=None), 401, "InvalidAuthenticationInfo"),
        (node.call("POST", "/app/log/private", b"{not json"), 400, "InvalidInput"),
        (node.call("POST", "/app/log/private", {"msg": "no id"}), 400, "InvalidInput"),
        (node.call("GET", "/app/log/private/404"), 404, "ResourceNotFound"),
    ]
    for response, status, code in cases:
        assert response.status == status
        assert orjson.loads(response.body)["error"]["code"] == code
        assert TXID_HEADER not in dict(response.headers)
    assert node.store.version == 1  # nothing was written by any of them


def test_handlers_may_return_their_own_responses() -> None:
    response = Node().call("GET", "/app/custom", cert=None)
    assert response.status == 202 and response.body == b"later" and dict(response.headers)["retry-after"] == "3"


def test_registrations_describe_themselves_in_openapi_and_duplicates_are_refused() -> None:
    doc = app.openapi("logging app")
    assert set(doc["paths"]) == {"/app/log/private", "/app/log/private/{id}", "/app/custom"}
    post = doc["paths"]["/app/log/private"]["post"]
    assert post["summary"] == "Record a private message." and post["x-ccf-auth"] == ["user_cert"]
    assert doc["paths"]["/app/log/private/{id}"]["get"]["parameters"][0]["name"] == "id"
    with pytest.raises(ValueError, match="twice"):
        app.endpoint("POST", "/log/private")(record)
    with pytest.raises(ValueError, match="at least one"):
        app.endpoint("GET", "/x", auth=())
