"""The endpoint framework: routing, authentication, JSON, typed errors, transaction ids, OpenAPI."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from cryptography.hazmat.primitives import serialization

from ledger.errors import TransactionConflict
from ledger.identity import PartyIdentity
from ledger.kv import Store, Tx
from ledger.tables import USERS_CERTS
from network.enclave.auth import UserCert
from network.enclave.endpoints import (
    MAX_ATTEMPTS,
    TXID_HEADER,
    Deferred,
    EndpointContext,
    EndpointError,
    Endpoints,
    Mode,
)
from network.enclave.http import ANSWER_LATER, Pending, Request, Response

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


# --- handlers that defer (their work goes on off the loop) -----------------------------------------------------

deferring = Endpoints("/app")
WAITING: list[tuple[Deferred, EndpointContext]] = []


@deferring.endpoint("POST", "/count", mode=Mode.READWRITE, defers=True)
def count(ctx: EndpointContext) -> object:
    """Increment a counter, finishing later (as the JavaScript app does in its worker)."""
    value = (ctx.tx.get_int("counters", "c") or 0) + 1
    ctx.tx.put_int("counters", "c", value)
    if not ctx.may_defer:
        return {"value": value}
    deferred = Deferred()
    WAITING.append((deferred, ctx))
    return deferred


@deferring.endpoint("GET", "/now", mode=Mode.READONLY)
def now(ctx: EndpointContext) -> object:
    return {"value": ctx.tx.get_int("counters", "c")}


def deferred_call(node: Node, method: str, target: str, after_pending: bool = False) -> Response:
    return deferring.dispatch(Request(method, target, {}, b"", None, after_pending=after_pending), node.begin,
                              node.finish, may_defer=True)


async def answer_of(response: Response) -> Response:
    assert isinstance(response, Pending)
    return await response.wait()


def test_a_deferred_handler_commits_when_resolved_and_runs_again_after_a_conflict() -> None:
    async def scenario() -> tuple[Response, int]:
        node = Node()
        WAITING.clear()
        pending = deferred_call(node, "POST", "/app/count")
        assert isinstance(pending, Pending) and not pending.future.done() and len(WAITING) == 1
        meanwhile = node.store.begin()  # another transaction commits what the first one read
        meanwhile.put_int("counters", "c", 10)
        node.store.commit(meanwhile)
        first, ctx = WAITING.pop()
        first.resolve({"value": ctx.tx.get_int("counters", "c")})  # its commit conflicts: it runs again
        assert not pending.future.done() and len(WAITING) == 1
        again, ctx = WAITING.pop()
        again.resolve({"value": ctx.tx.get_int("counters", "c")})
        return await answer_of(pending), node.store.read_tx().get_int("counters", "c") or 0

    response, stored = asyncio.run(scenario())
    assert response.status == 200 and orjson.loads(response.body) == {"value": 11} and stored == 11
    assert dict(response.headers)[TXID_HEADER] == "0.3"


def test_a_deferred_handler_that_keeps_conflicting_is_refused_as_ccf_does_and_errors_commit_nothing() -> None:
    async def scenario() -> tuple[Response, Response, int]:
        node = Node()
        WAITING.clear()
        pending = deferred_call(node, "POST", "/app/count")
        attempts = 0
        while WAITING:
            deferred, _ = WAITING.pop()
            attempts += 1
            deferred.fail(TransactionConflict("counters", b"c", 1, 2))
        busy = await answer_of(pending)
        assert attempts == MAX_ATTEMPTS
        failing = deferred_call(node, "POST", "/app/count")
        WAITING.pop()[0].fail(EndpointError(400, "InvalidInput", "no"))
        return busy, await answer_of(failing), node.store.version

    busy, failed, version = asyncio.run(scenario())
    assert busy.status == 503 and dict(busy.headers)["retry-after"] == "3"
    assert orjson.loads(busy.body)["error"] == {
        "code": "TransactionCommitAttemptsExceedLimit",
        "message": f"Transaction continued to conflict after {MAX_ATTEMPTS} attempts. Retry later."}
    assert failed.status == 400 and orjson.loads(failed.body)["error"]["code"] == "InvalidInput"
    assert version == 1  # neither wrote anything


def test_behind_pending_answers_only_deferring_handlers_start_and_without_a_loop_handlers_answer_at_once() -> None:
    async def scenario() -> tuple[Response, Response]:
        node = Node()
        WAITING.clear()
        later = deferred_call(node, "GET", "/app/now", after_pending=True)
        started = deferred_call(node, "POST", "/app/count", after_pending=True)
        WAITING.pop()[0].resolve({"value": 1})
        return later, await answer_of(started)

    later, started = asyncio.run(scenario())
    assert later is ANSWER_LATER and started.status == 200
    direct = deferring.dispatch(Request("POST", "/app/count", {}, b"", None), Node().begin, Node().finish)
    assert direct.status == 200 and orjson.loads(direct.body) == {"value": 1}


def test_routes_are_tried_in_registration_order_whether_or_not_their_paths_have_parameters() -> None:
    routes = Endpoints("/r")
    routes.endpoint("GET", "/x/{id}")(lambda ctx: {"by": "template", "id": ctx.params["id"]})
    routes.endpoint("GET", "/x/static")(lambda ctx: {"by": "static, shadowed"})
    routes.endpoint("GET", "/y/static")(lambda ctx: {"by": "static"})
    routes.endpoint("GET", "/y/{id}")(lambda ctx: {"by": "template", "id": ctx.params["id"]})
    node = Node()

    def get(path: str) -> object:
        return orjson.loads(routes.dispatch(Request("GET", path, {}, b"", None), node.begin, node.finish).body)

    assert get("/r/x/static") == {"by": "template", "id": "static"}
    assert get("/r/y/static") == {"by": "static"}
    assert get("/r/y/other") == {"by": "template", "id": "other"}
    routes.endpoint("GET", "/z")(lambda ctx: {"by": "added later"})
    assert get("/r/z") == {"by": "added later"}
