"""The JavaScript generic app on an in-process node (issue 14): bundles installed with `set_js_app` answer as CCF's
JS generic app answers. Bundles here are written inline, in the shape `ccf-build-bundle` produces, so these tests
need no npm; the bundles built with npm and `@microsoft/ccf-app` are exercised in test_js_bundles.py."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from app.js_generic import app as js_app
from ledger.tables import SINGLETON_KEY
from tests.network.node_harness import Node
from tests.network.test_auth import EC_KEY, jwk_of, token

ENDPOINTS = """
import { ccf } from "./lib/global.js";
import * as kv from "./lib/kv.js";
const records = kv.map("records");
const enc = (s) => ccf.strToBuf(String(s));
const dec = (b) => ccf.bufToStr(b);

export function put(request) {
  const body = request.body.json();
  const previous = records.get(enc(body.id));
  records.set(enc(body.id), enc(body.msg));
  if (body.claim) ccf.rpc.setClaimsDigest(ccf.crypto.digest("SHA-256", enc(body.msg)));
  return { statusCode: 201, body: { previous: previous === undefined ? null : dec(previous) } };
}
export function get(request) {
  const value = records.get(enc(request.params.id));
  if (value === undefined) return { statusCode: 404, body: { error: { code: "ResourceNotFound", message: "nope" } } };
  const version = records.getVersionOfPreviousWrite(enc(request.params.id));
  return { body: dec(value), headers: { "X-Version": String(version) } };
}
export function all(request) {
  const out = {};
  records.forEach((v, k) => { out[dec(k)] = dec(v); });
  return { body: { size: records.size, records: out } };
}
export function clear(request) { records.clear(); return { body: records.size }; }
export function failed_write(request) {
  records.set(enc("lost"), enc("x"));
  if (request.query === "apply") ccf.rpc.setApplyWrites(true);
  return { statusCode: 409, body: "conflict" };
}
export function whoami(request) { return { body: request.caller }; }
export function echo(request) {
  return { body: { method: request.method, path: request.path, url: request.url, route: request.route,
    query: request.query, params: request.params, hostname: request.hostname, text: request.body.text(),
    bytes: Array.from(new Uint8Array(request.body.arrayBuffer())), header: request.headers["x-test"] } };
}
export function raw(request) { return { body: new Uint8Array([0, 255, 7]).buffer }; }
export function nothing(request) { return { statusCode: 204 }; }
export function not_object(request) { return "hello"; }
export function returns_undefined(request) {}
export function throws(request) { records.set(enc("t"), enc("x")); throw new Error("test error: 42"); }
export function loops(request) { records.set(enc("l"), enc("x")); while (true) {} }
export function hogs(request) { const a = []; while (true) a.push(new Array(100000).fill(7)); }
export function recurses(request) { return recurses(request) + 1; }
export function write_gov(request) {
  ccf.kv["public:ccf.gov.members.info"].set(enc("x"), enc("y"));
  return { body: 1 };
}
export function write_readonly(request) { records.set(enc("r"), enc("x")); return { body: 1 }; }
export function read_internal(request) { return { body: ccf.kv["ccf.internal.secret"].size }; }
export function read_gov(request) { return { body: ccf.kv["public:ccf.gov.service.info"].size }; }
export function now(request) {
  const before = Date.now();
  ccf.enableUntrustedDateTime(true);
  return { body: { before, after: Date.now() } };
}
export function consensus(request) {
  const last = ccf.consensus.getLastCommittedTxId();
  return { body: { last, status: ccf.consensus.getStatusForTxId(last.view, last.seqno),
    view: ccf.consensus.getViewForSeqno(last.seqno), unknown: ccf.consensus.getStatusForTxId(last.view, 100000) } };
}
export function history(request) {
  const state = ccf.historicalState;
  const value = state.kv["records"].get(enc(request.params.id));
  return { body: { txid: state.transactionId, value: value === undefined ? null : dec(value),
    has_proof: Array.isArray(state.receipt.proof) } };
}
export function random_keys(request) {
  const a = ccf.crypto.generateAesKey(256), b = ccf.crypto.generateAesKey(256);
  records.set(enc("k"), a);
  records.get(enc("never-written"));  // a read the host must load: this handler runs more than once
  return { body: { same: dec(a) === dec(b), len: a.byteLength } };
}
"""
LIB_GLOBAL = "export const ccf = globalThis.ccf;\n"
LIB_KV = """import { ccf } from "./global.js";
export function map(name) { return ccf.kv[name]; }
"""


def endpoint(function: str, mode: str = "readwrite", policies: list[Any] | None = None,
             **extra: Any) -> dict[str, Any]:
    return {"js_module": "endpoints.js", "js_function": function, "mode": mode, "forwarding_required": "sometimes",
            "authn_policies": ["user_cert"] if policies is None else policies, "openapi": {}, **extra}


BUNDLE = {
    "metadata": {"endpoints": {
        "/records": {"post": endpoint("put"), "get": endpoint("all", "readonly"),
                     "delete": endpoint("clear")},
        "/records/{id}": {"get": endpoint("get", "readonly", openapi={"summary": "one record"})},
        "/failed_write": {"post": endpoint("failed_write")},
        "/whoami": {"get": endpoint("whoami", "readonly", ["user_cert", "member_cert", "no_auth"])},
        "/both": {"get": endpoint("whoami", "readonly", [{"all_of": ["user_cert", "jwt"]}])},
        "/jwt": {"get": endpoint("whoami", "readonly", ["jwt"])},
        "/anyone": {"get": endpoint("whoami", "readonly", [])},
        "/echo/{a}/{b}": {"post": endpoint("echo", "readonly", ["no_auth"])},
        "/raw": {"get": endpoint("raw", "readonly", openapi_hidden=True)},
        "/nothing": {"get": endpoint("nothing", "readonly")},
        "/not_object": {"get": endpoint("not_object", "readonly")},
        "/undefined": {"get": endpoint("returns_undefined", "readonly")},
        "/throws": {"post": endpoint("throws")},
        "/loops": {"post": endpoint("loops")},
        "/hogs": {"post": endpoint("hogs")},
        "/recurses": {"post": endpoint("recurses")},
        "/write_gov": {"post": endpoint("write_gov")},
        "/write_readonly": {"post": endpoint("write_readonly", "readonly")},
        "/read_internal": {"get": endpoint("read_internal", "readonly")},
        "/read_gov": {"get": endpoint("read_gov", "readonly")},
        "/now": {"get": endpoint("now", "readonly")},
        "/consensus": {"get": endpoint("consensus", "readonly")},
        "/history/{id}": {"get": endpoint("history", "historical")},
        "/random_keys": {"post": endpoint("random_keys")},
    }},
    "modules": [{"name": "endpoints.js", "module": ENDPOINTS}, {"name": "lib/global.js", "module": LIB_GLOBAL},
                {"name": "lib/kv.js", "module": LIB_KV}],
}


def deploy(node: Node, bundle: dict[str, Any]) -> dict[str, Any]:
    return node.pass_proposal([{"name": "set_js_app", "args": {"bundle": bundle}}])


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    n = Node(str(tmp_path_factory.mktemp("js-generic")), application=js_app)
    n.open_service()
    assert deploy(n, BUNDLE)["proposalState"] == "Accepted"
    return n


def body(response: Any) -> Any:
    return orjson.loads(response.body)


def error(response: Any) -> tuple[int, str, str]:
    e = body(response)["error"]
    return response.status, e["code"], e["message"]


def test_writes_commit_as_one_transaction_and_reads_see_them(node: Node) -> None:
    first = node.user_call("POST", "/app/records", {"id": "a", "msg": "one"})
    assert (first.status, body(first)) == (201, {"previous": None})
    txid = dict(first.headers)["x-ms-ccf-transaction-id"]
    second = node.user_call("POST", "/app/records", {"id": "a", "msg": "two"})
    assert body(second) == {"previous": "one"}  # a read of an entry the first run did not have: run again
    read = node.user_call("GET", "/app/records/a")
    assert (read.status, read.body, dict(read.headers)["content-type"]) == (200, b"two", "text/plain")
    later = int(dict(second.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    assert dict(read.headers)["x-version"] == str(later) and later > int(txid.split(".")[1])
    assert node.ledger.read_tx().get("records", b"a") == b"two"


def test_forEach_size_and_clear_see_the_transaction_own_writes(node: Node) -> None:
    node.user_call("POST", "/app/records", {"id": "b", "msg": "bee"})
    listed = body(node.user_call("GET", "/app/records"))
    assert listed["records"]["b"] == "bee" and listed["size"] == len(listed["records"])
    cleared = node.user_call("DELETE", "/app/records")
    assert body(cleared) == 0
    assert body(node.user_call("GET", "/app/records")) == {"size": 0, "records": {}}


def test_an_error_status_commits_nothing_unless_the_handler_applies_its_writes(node: Node) -> None:
    refused = node.user_call("POST", "/app/failed_write")
    assert (refused.status, refused.body) == (409, b"conflict")
    assert "x-ms-ccf-transaction-id" not in dict(refused.headers)
    assert node.ledger.read_tx().get("records", b"lost") is None
    applied = node.user_call("POST", "/app/failed_write?apply")
    assert applied.status == 409 and "x-ms-ccf-transaction-id" in dict(applied.headers)
    assert node.ledger.read_tx().get("records", b"lost") == b"x"


def test_the_claims_digest_set_by_the_handler_is_the_transaction_s(node: Node) -> None:
    answer = node.user_call("POST", "/app/records", {"id": "c", "msg": "claimed", "claim": True})
    seqno = int(dict(answer.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    node.enclave.sign()
    receipt = node.ledger.receipt(seqno)
    assert receipt["leaf_components"]["claims_digest"] == hashlib.sha256(b"claimed").hexdigest()


def test_the_request_object_has_ccf_s_fields(node: Node) -> None:
    answer = node.call("POST", "/app/echo/x%20y/2?q=1&r", b"\xc3\xa9t\xc3\xa9",
                       headers={"x-test": "yes", "host": "example:8000"})
    assert body(answer) == {"method": "POST", "path": "/app/echo/x%20y/2", "url": "/app/echo/x%20y/2?q=1&r",
                            "route": "/app/echo/{a}/{b}", "query": "q=1&r", "params": {"a": "x y", "b": "2"},
                            "hostname": "example:8000", "text": "été", "bytes": [0xc3, 0xa9, 0x74, 0xc3, 0xa9],
                            "header": "yes"}


def test_a_body_that_is_not_utf8_keeps_its_bytes(node: Node) -> None:
    """Such a body crosses as latin-1 (a UTF-8 one as its text): arrayBuffer() gives the bytes sent either way, and
    text() decodes them as CCF does, each bad byte a U+FFFD."""
    sent = b"a\xff\x00\xc3(z"
    answer = body(node.call("POST", "/app/echo/a/b", sent))
    assert answer["bytes"] == list(sent)
    assert answer["text"] == "a\ufffd\x00\ufffd(z"


def test_responses_are_converted_as_ccf_converts_them(node: Node) -> None:
    raw = node.user_call("GET", "/app/raw")
    assert (raw.status, raw.body, dict(raw.headers)["content-type"]) == (200, b"\x00\xff\x07",
                                                                        "application/octet-stream")
    nothing = node.user_call("GET", "/app/nothing")
    assert (nothing.status, nothing.body) == (204, b"") and "content-type" not in dict(nothing.headers)
    for path in ("/app/not_object", "/app/undefined"):
        assert error(node.user_call("GET", path)) == (500, "InternalError", "Invalid endpoint function return "
                                                                            "value (not an object).")


def test_the_caller_object_matches_the_policy_that_passed(node: Node) -> None:
    user = body(node.user_call("GET", "/app/whoami"))
    assert user["policy"] == "user_cert" and user["id"] == node.user.id
    assert user["cert"] == node.user.pem and user["data"] is None
    member = body(node.call("GET", "/app/whoami", cert=node.member_der))
    assert member["policy"] == "member_cert" and member["id"] == node.member.id
    assert body(node.call("GET", "/app/whoami")) == {"policy": "no_auth"}
    assert node.call("GET", "/app/anyone").body == b"null"  # no policies: no caller
    denied = node.call("GET", "/app/records/a")
    assert denied.status == 401 and body(denied)["error"]["code"] == "InvalidAuthenticationInfo"


def test_jwt_and_all_of_callers_carry_the_token(node: Node) -> None:
    issuer = "https://issuer.example"
    proposal = node.pass_proposal([{"name": "set_jwt_issuer", "args": {
        "issuer": issuer, "jwks": {"keys": [jwk_of(EC_KEY, "k1")]}}}])
    assert proposal["proposalState"] == "Accepted", proposal
    jwt = token(EC_KEY, "k1", {"sub": "alice", "iss": issuer, "exp": time.time() + 60})
    caller = body(node.call("GET", "/app/jwt", headers={"authorization": f"Bearer {jwt}"}))
    assert caller["policy"] == "jwt" and caller["jwt"]["keyIssuer"] == issuer
    assert caller["jwt"]["payload"]["sub"] == "alice" and caller["jwt"]["header"]["kid"] == "k1"
    both = body(node.call("GET", "/app/both", cert=node.user_der, headers={"authorization": f"Bearer {jwt}"}))
    assert both["policy"] == ["user_cert", "jwt"]
    assert both["user_cert"]["id"] == node.user.id and both["jwt"]["jwt"]["payload"]["sub"] == "alice"
    assert node.call("GET", "/app/both", cert=node.user_der).status == 401


def test_a_handler_that_throws_is_500_and_commits_nothing(node: Node) -> None:
    assert error(node.user_call("POST", "/app/throws")) == (500, "InternalError", "Exception thrown while executing.")
    assert node.ledger.read_tx().get("records", b"t") is None


def test_exception_details_are_returned_when_the_runtime_options_say_so(node: Node) -> None:
    options = {"max_heap_bytes": 100 * 1024 * 1024, "max_stack_bytes": 1024 * 1024, "max_execution_time_ms": 1000,
               "return_exception_details": True}
    assert node.pass_proposal([{"name": "set_js_runtime_options", "args": options}])["proposalState"] == "Accepted"
    try:
        details = body(node.user_call("POST", "/app/throws"))["error"]["details"]
        assert details[0]["code"] == "JSException" and details[0]["message"] == "Error: test error: 42"
        assert "throws" in details[0]["trace"]
    finally:
        del options["return_exception_details"]
        node.pass_proposal([{"name": "set_js_runtime_options", "args": options}])
    assert "details" not in body(node.user_call("POST", "/app/throws"))["error"]


def test_limits_stop_a_handler_with_ccf_s_error_and_the_node_goes_on_serving(node: Node) -> None:
    options = {"max_heap_bytes": 20 * 1024 * 1024, "max_stack_bytes": 256 * 1024, "max_execution_time_ms": 200}
    assert node.pass_proposal([{"name": "set_js_runtime_options", "args": options}])["proposalState"] == "Accepted"
    began = time.monotonic()
    assert error(node.user_call("POST", "/app/loops")) == (500, "InternalError", "Operation took too long to "
                                                                                "complete.")
    assert time.monotonic() - began < 2  # the option, not the default, bounded it
    assert error(node.user_call("POST", "/app/hogs"))[:2] == (500, "InternalError")
    assert error(node.user_call("POST", "/app/recurses"))[:2] == (500, "InternalError")
    assert node.ledger.read_tx().get("records", b"l") is None
    assert node.user_call("POST", "/app/records", {"id": "after", "msg": "still serving"}).status == 201
    assert node.user_call("GET", "/app/records/after").body == b"still serving"


def test_maps_are_guarded_as_ccf_guards_them_for_applications(node: Node) -> None:
    for path in ("/app/write_gov", "/app/write_readonly"):
        status, code, message = error(node.user_call("POST", path))
        assert (status, code) == (500, "InternalError")
    assert node.ledger.read_tx().get("public:ccf.gov.members.info", b"x") is None
    assert node.ledger.read_tx().get("records", b"r") is None
    assert error(node.user_call("GET", "/app/read_internal"))[:2] == (500, "InternalError")
    assert node.user_call("GET", "/app/read_gov").body == b"1"  # governance maps are readable


def test_time_is_the_epoch_until_the_app_asks_for_untrusted_time(node: Node) -> None:
    times = body(node.user_call("GET", "/app/now"))
    assert times["before"] == 0 and abs(times["after"] / 1000 - time.time()) < 60
    assert body(node.user_call("GET", "/app/now"))["before"] == 0  # each request starts with it off


def test_consensus_reports_the_node_s_commit_point(node: Node) -> None:
    node.enclave.sign()
    answer = body(node.user_call("GET", "/app/consensus"))
    assert answer["last"]["seqno"] == node.ledger.committed_seqno and answer["status"] == "Committed"
    assert answer["view"] == answer["last"]["view"] and answer["unknown"] == "Unknown"


def test_historical_endpoints_see_the_transaction_named_in_the_header(node: Node) -> None:
    write = node.user_call("POST", "/app/records", {"id": "h", "msg": "then"})
    txid = dict(write.headers)["x-ms-ccf-transaction-id"]
    node.user_call("POST", "/app/records", {"id": "h", "msg": "now"})
    node.enclave.sign()
    missing = node.user_call("GET", "/app/history/h")
    assert (missing.status, body(missing)["error"]["code"]) == (400, "MissingRequiredHeader")
    answer = node.user_call("GET", "/app/history/h", headers={"x-ms-ccf-transaction-id": txid})
    if answer.status == 202:  # fetched from the ledger files on the host's next turn
        node.host.run_scheduled()
        answer = node.user_call("GET", "/app/history/h", headers={"x-ms-ccf-transaction-id": txid})
    assert body(answer) == {"txid": txid, "value": "then", "has_proof": True}
    pending = node.user_call("GET", "/app/history/h", headers={"x-ms-ccf-transaction-id": "2.99999"})
    assert pending.status == 404


def test_host_answers_are_the_same_in_every_run_of_a_request(node: Node) -> None:
    answer = body(node.user_call("POST", "/app/random_keys"))
    assert answer == {"same": False, "len": 32}  # two calls, two keys, though the handler ran twice
    stored = node.ledger.read_tx().get("records", b"k")
    assert stored is not None and len(stored) == 32


def test_the_api_document_lists_the_bundle_s_endpoints_with_their_openapi(node: Node) -> None:
    paths = body(node.user_call("GET", "/app/api"))["paths"]
    assert paths["/app/records/{id}"]["get"]["summary"] == "one record"
    assert "post" in paths["/app/records"] and "/app/raw" not in paths  # openapi_hidden
    assert "/app/commit" in paths


def test_unknown_paths_and_methods_are_404_and_405(node: Node) -> None:
    assert error(node.user_call("GET", "/app/nowhere"))[:2] == (404, "ResourceNotFound")
    assert error(node.user_call("PUT", "/app/records"))[:2] == (405, "UnsupportedHttpVerb")


def test_set_js_app_checks_the_bundle_as_ccf_does(tmp_path: Path) -> None:
    n = Node(str(tmp_path), application=js_app)
    n.open_service()
    bad_mode = {"metadata": {"endpoints": {"/x": {"get": endpoint("put", "sideways")}}},
                "modules": BUNDLE["modules"]}
    missing_module = {"metadata": {"endpoints": {"/x": {"get": {**endpoint("put"), "js_module": "nope.js"}}}},
                      "modules": BUNDLE["modules"]}
    no_policies = {"metadata": {"endpoints": {"/x": {"get": {k: v for k, v in endpoint("put").items()
                                                             if k != "authn_policies"}}}},
                   "modules": BUNDLE["modules"]}
    for bundle, message in ((bad_mode, 'bundle.metadata.endpoints["/x"]["get"].mode must be one of'),
                            (missing_module, "module 'nope.js' not found in bundle"),
                            (no_policies, 'bundle.metadata.endpoints["/x"]["get"].authn_policies must be an array'),
                            ({"modules": []}, "bundle.metadata must be an object")):
        proposal = n.gov("/members/proposals:create", n.signer.proposal([{"name": "set_js_app",
                                                                           "args": {"bundle": bundle}}]))
        assert proposal.status == 400 and message in body(proposal)["error"]["message"], proposal.body
    assert n.user_call("GET", "/app/x").status == 404  # nothing was installed


def test_remove_js_app_takes_the_endpoints_away(tmp_path: Path) -> None:
    n = Node(str(tmp_path), application=js_app)
    n.open_service()
    assert deploy(n, BUNDLE)["proposalState"] == "Accepted"
    assert n.user_call("POST", "/app/records", {"id": 1, "msg": "x"}).status == 201
    tx = n.ledger.read_tx()
    assert tx.get("public:ccf.gov.modules", b"/endpoints.js") == ENDPOINTS.encode()
    assert orjson.loads(tx.get("public:ccf.gov.endpoints", b"GET /records/{id}") or b"{}")["js_module"] == \
        "/endpoints.js"
    assert tx.get_json("public:ccf.gov.interpreter.flush", SINGLETON_KEY) is True
    assert n.pass_proposal([{"name": "remove_js_app", "args": {}}])["proposalState"] == "Accepted"
    assert n.user_call("POST", "/app/records", {"id": 1, "msg": "x"}).status == 404
    assert n.pass_proposal([{"name": "refresh_js_app_bytecode_cache"}])["proposalState"] == "Accepted"


def test_a_new_bundle_replaces_the_modules_at_the_next_request(tmp_path: Path) -> None:
    n = Node(str(tmp_path), application=js_app)
    n.open_service()
    assert deploy(n, BUNDLE)["proposalState"] == "Accepted"
    assert n.user_call("GET", "/app/nothing").status == 204
    changed = {**BUNDLE, "modules": [{"name": "endpoints.js", "module": ENDPOINTS.replace(
        "return { statusCode: 204 };", "return { statusCode: 299 };")}] + BUNDLE["modules"][1:]}
    assert deploy(n, changed)["proposalState"] == "Accepted"
    assert n.user_call("GET", "/app/nothing").status == 299


def test_a_module_that_imports_nothing_in_the_bundle_fails_at_its_first_request(tmp_path: Path) -> None:
    n = Node(str(tmp_path), application=js_app)
    n.open_service()
    broken = {"metadata": {"endpoints": {"/x": {"get": endpoint("f", "readonly")}}},
              "modules": [{"name": "endpoints.js", "module": 'import { g } from "./missing.js";\n'
                                                             "export function f() { return { body: g() }; }\n"}]}
    assert deploy(n, broken)["proposalState"] == "Accepted"
    assert error(n.user_call("GET", "/app/x")) == (500, "InternalError", "Exception thrown while executing.")
