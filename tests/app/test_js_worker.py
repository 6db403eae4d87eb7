"""JavaScript handlers run in the bundle's worker process (`app.js_worker`), as a node runs them: the node's loop
goes on while QuickJS works, answers come back `Pending`, each transaction commits when its answer is taken, and a
client session's requests take effect in the order sent, whatever order their runs finish in."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from app.js_generic import app as js_app
from app.js_worker import JsWorker
from network.consensus.raft import Role
from network.enclave.http import Pending, Request, Response
from tests.app.test_js_generic import LIB_GLOBAL, deploy, endpoint
from tests.network.node_harness import Node

pytestmark = pytest.mark.unit

MODULE = """
const enc = (s) => ccf.strToBuf(String(s));
const dec = (b) => ccf.bufToStr(b);
const cells = ccf.kv["cells"];
export function read_then_put(request) {  // reads the cell first: a second run once the cell exists
  const before = cells.get(enc("cell"));
  cells.set(enc("cell"), enc(request.body.text()));
  return { body: { before: before === undefined ? null : dec(before) } };
}
export function put(request) {  // a blind write: one run
  cells.set(enc("cell"), enc(request.body.text()));
  return { body: "put" };
}
export function get(request) {
  const value = cells.get(enc("cell"));
  return { body: value === undefined ? null : dec(value) };
}
export function spin(request) { cells.set(enc("cell"), enc("spun")); for (;;) {} }
export function version(request) { return { body: "%s" }; }
"""


def bundle(version: str) -> dict[str, Any]:
    return {"metadata": {"endpoints": {
        "/read_then_put": {"post": endpoint("read_then_put")},
        "/put": {"post": endpoint("put")},
        "/cell": {"get": endpoint("get", "readonly")},
        "/spin": {"post": endpoint("spin")},
        "/version": {"get": endpoint("version", "readonly")},
    }}, "modules": [{"name": "endpoints.js", "module": MODULE % version}, {"name": "lib/global.js",
                                                                          "module": LIB_GLOBAL}]}


@pytest.fixture()
def node(tmp_path: Any) -> Node:
    n = Node(str(tmp_path), application=js_app)
    n.open_service()
    assert deploy(n, bundle("one"))["proposalState"] == "Accepted"
    n.enclave.may_defer = True
    return n


def send(node: Node, method: str, path: str, body: bytes = b"", session: dict[str, object] | None = None) -> Response:
    return node.enclave.handle(Request(method, f"/app{path}", {}, body, node.user_der, session))


async def answer(response: Response) -> Response:
    assert isinstance(response, Pending), response
    return await asyncio.wait_for(response.wait(), 20)


def worker_of(node: Node) -> JsWorker:
    worker = node.enclave.app._worker  # type: ignore[attr-defined]
    assert isinstance(worker, JsWorker)
    return worker


def test_deferred_handlers_answer_and_commit_as_in_process(node: Node) -> None:
    async def scenario() -> list[Response]:
        first = await answer(send(node, "POST", "/read_then_put", b"a"))
        second = await answer(send(node, "POST", "/read_then_put", b"b"))  # two runs: the cell exists now
        read = await answer(send(node, "GET", "/cell"))
        return [first, second, read]

    first, second, read = asyncio.run(scenario())
    assert orjson.loads(first.body) == {"before": None} and orjson.loads(second.body) == {"before": "a"}
    assert read.body == b"b" and node.ledger.read_tx().get("cells", b"cell") == b"b"
    assert "x-ms-ccf-transaction-id" in dict(second.headers)


def test_a_session_s_requests_take_effect_in_the_order_sent_though_their_runs_finish_out_of_order(node: Node) -> None:
    async def scenario() -> tuple[list[Response], bytes | None]:
        await answer(send(node, "POST", "/put", b"initial"))
        session: dict[str, object] = {}
        # Both are in the worker at once; the first needs a second run (the cell exists), the blind write does not,
        # so its run finishes first: it must still commit second.
        first = send(node, "POST", "/read_then_put", b"first", session)
        second = node.enclave.handle(Request("POST", "/app/put", {}, b"second", node.user_der, session,
                                             after_pending=True))
        answers = [await answer(first), await answer(second)]
        return answers, node.ledger.read_tx().get("cells", b"cell")

    (first, second), stored = asyncio.run(scenario())
    assert orjson.loads(first.body) == {"before": "initial"} and second.body == b"put"
    first_seqno = int(dict(first.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    second_seqno = int(dict(second.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    assert first_seqno < second_seqno and stored == b"second"


def test_a_handler_past_its_time_limit_commits_nothing_and_the_worker_serves_on(node: Node) -> None:
    async def scenario() -> tuple[Response, Response]:
        spun = await answer(send(node, "POST", "/spin"))
        return spun, await answer(send(node, "GET", "/version"))

    spun, after = asyncio.run(scenario())
    assert spun.status == 500 and orjson.loads(spun.body)["error"]["message"] == "Operation took too long to complete."
    assert node.ledger.read_tx().get("cells", b"cell") is None and after.body == b"one"


def test_a_worker_that_dies_fails_what_it_held_and_the_next_request_starts_another(node: Node) -> None:
    async def scenario() -> tuple[Response, Response]:
        await answer(send(node, "GET", "/version"))
        worker = worker_of(node)
        held = send(node, "POST", "/spin")
        await asyncio.sleep(0.2)
        assert worker._process is not None
        worker._process.kill()
        died = await answer(held)
        return died, await answer(send(node, "GET", "/version"))

    died, after = asyncio.run(scenario())
    assert died.status == 500 and after.status == 200 and after.body == b"one"
    assert node.ledger.read_tx().get("cells", b"cell") is None


def test_a_new_bundle_gets_a_new_worker_once_the_old_one_has_answered(node: Node) -> None:
    async def scenario() -> tuple[Response, Response, bool]:
        before = await answer(send(node, "GET", "/version"))
        old = worker_of(node)
        node.enclave.may_defer = False  # governance is answered in process
        assert deploy(node, bundle("two"))["proposalState"] == "Accepted"
        node.enclave.may_defer = True
        after = await answer(send(node, "GET", "/version"))
        return before, after, worker_of(node) is not old and old._process is None

    before, after, replaced = asyncio.run(scenario())
    assert (before.body, after.body, replaced) == (b"one", b"two", True)


def test_a_handler_stopped_after_compaction_passed_its_read_version_fails_alone(node: Node) -> None:
    # The spinning handler's transaction is compacted past while it runs; its failure (500) must not stall or shift
    # the answers of the requests queued behind it in the worker.
    async def scenario() -> list[Response]:
        await answer(send(node, "GET", "/version"))
        spinning = send(node, "POST", "/spin")
        behind = send(node, "GET", "/cell")
        node.ledger.commit_writes({"other": {b"k": b"v"}})
        node.enclave._count(1)
        node.enclave.sign()  # one node: the signature commits, and the store compacts past the spinning read
        assert node.ledger.store.compacted_version > 0
        answers = [await answer(spinning), await answer(behind)]
        put = await answer(send(node, "POST", "/put", b"after"))
        return [*answers, put, await answer(send(node, "GET", "/cell"))]

    spun, behind, put, read = asyncio.run(scenario())
    assert spun.status == 500 and behind.status == 200 and behind.body == b"null"
    assert (put.body, read.body) == (b"put", b"after") and node.enclave._deferred_in_flight == 0


def test_a_request_whose_client_is_gone_still_commits_and_is_counted_answered(node: Node) -> None:
    async def scenario() -> None:
        await answer(send(node, "GET", "/version"))
        pending = send(node, "POST", "/put", b"orphan")
        assert isinstance(pending, Pending)
        waiter = asyncio.get_running_loop().create_task(pending.wait())  # the connection's task
        await asyncio.sleep(0)
        waiter.cancel()  # the client went away
        await asyncio.wait_for(pending.future, 20)

    asyncio.run(scenario())
    assert node.ledger.read_tx().get("cells", b"cell") == b"orphan" and node.enclave._deferred_in_flight == 0


def test_a_deferred_write_is_not_committed_by_a_node_that_stopped_being_primary_meanwhile(node: Node) -> None:
    async def scenario() -> Response:
        await answer(send(node, "GET", "/version"))
        pending = send(node, "POST", "/put", b"late")
        node.enclave.replicator.raft.role = Role.FOLLOWER  # stands for a higher term arriving meanwhile
        return await answer(pending)

    refused = asyncio.run(scenario())
    assert refused.status == 503 and orjson.loads(refused.body)["error"]["code"] == "TransactionReplicationFailed"
    assert "x-ms-ccf-transaction-id" not in dict(refused.headers)
    assert node.ledger.read_tx().get("cells", b"cell") is None
