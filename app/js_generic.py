"""CCF's JavaScript generic application: `/app` serves the bundle that governance installed with `set_js_app`.

Loaded by a node as `app.js_generic:app`. The endpoints are read from `public:ccf.gov.endpoints` (key
`"<METHOD> <path>"`, value the bundle's endpoint metadata with `js_module` made absolute), the modules from
`public:ccf.gov.modules` (key `"/" + name`), the limits from `public:ccf.gov.js_runtime_options`; a change to any
of them takes effect at the next request. Paths are templates (`/log/{id}`: `request.params.id`).

For each request: the endpoint's `authn_policies` authenticate the caller (`user_cert`, `member_cert`, `any_cert`,
`jwt`, `user_cose_sign1`, `no_auth`, and `{"all_of": [...]}`), the handler runs in the bundle's interpreter
(`app.js_interpreter`) on one transaction, and its KV writes commit as that transaction, unless the response is
an error (status 400 or more) and the handler did not call `ccf.rpc.setApplyWrites(true)`. `mode` is
`readwrite`, `readonly` (every write refused) or `historical` (`ccf.historicalState` is the transaction named by
the `x-ms-ccf-transaction-id` header: 400 without it, 404 unless committed, 202 while the node fetches it).
`forwarding_required` is honoured as CCF does on a backup: writes go to the primary, reads stay.

Errors, as CCF answers them: a handler that throws, or returns something that is not a response, is 500
`InternalError` "Exception thrown while executing." (with the exception and its stack when
`return_exception_details` is set in the runtime options); one that runs past `max_execution_time_ms` is 500
`InternalError` "Operation took too long to complete."; past the heap or stack limit, 500 `InternalError` with
QuickJS's reason. Nothing is committed for any of them, and the node goes on serving. A request for a path no
endpoint serves is 404 `ResourceNotFound` (405 `UnsupportedHttpVerb` for a known path and another method).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from loguru import logger

from app.js_interpreter import (
    Interpreter,
    JsAccessDenied,
    JsError,
    JsInvalidReturn,
    JsOutcome,
    JsRequest,
    JsTimeout,
    RunContext,
    apply_outcome,
    latin1_entries,
)
from app.js_modules import ModuleLinkError
from app.js_worker import JsWorker
from governance.js_crypto import CRYPTO_CALLS
from governance.js_runtime import JSLimits
from governance.proposals import JS_RUNTIME_OPTIONS, runtime_options
from ledger.kv import Tx
from ledger.tables import MEMBERS_CERTS, MEMBERS_INFO, SINGLETON_KEY, USERS_CERTS, USERS_INFO
from ledger.txid import TxID
from network.enclave.auth import (
    AllOf,
    AnyCert,
    AuthPolicy,
    Caller,
    JwtAuth,
    MemberCert,
    NoAuth,
    UserCert,
    UserCoseSign1,
)
from network.enclave.common_endpoints import tx_status
from network.enclave.endpoints import (
    Deferred,
    Endpoint,
    EndpointContext,
    EndpointError,
    Endpoints,
    Mode,
    compile_template,
)
from network.enclave.historical import HistoricalPending, historical_queries, requested_txid
from network.enclave.http import Response

MODULES = "public:ccf.gov.modules"
ENDPOINTS = "public:ccf.gov.endpoints"
# CCF's defaults for application code (src/js/core/runtime.h): 100 MiB heap, 1 MiB stack, 1 s per request
APP_LIMITS = JSLimits(max_heap_bytes=100 * 1024 * 1024, max_stack_bytes=1024 * 1024, max_execution_time_ms=1000)
EXCEPTION_MESSAGE = "Exception thrown while executing."
IDENTITIES_KEPT = 1024  # callers whose `request.caller` is kept between requests

_POLICIES: dict[str, Callable[[], AuthPolicy]] = {
    "user_cert": UserCert, "member_cert": MemberCert, "any_cert": AnyCert, "no_auth": NoAuth, "jwt": JwtAuth,
    "user_cose_sign1": UserCoseSign1,
}
_MODES = {"readwrite": Mode.READWRITE, "readonly": Mode.READONLY, "historical": Mode.HISTORICAL}


class HandlerException(EndpointError):
    """500 `InternalError` "Exception thrown while executing.", with CCF's `JSException` details when the
    runtime options ask for them."""

    def __init__(self, details: list[dict[str, str]]) -> None:
        super().__init__(500, "InternalError", EXCEPTION_MESSAGE)
        self.details = details

    def response(self) -> Response:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details:
            error["details"] = self.details
        return Response(500, orjson.dumps({"error": error}), (("content-type", "application/json"),))


class UnknownPolicy(Exception):
    """An endpoint names an authentication policy this node does not have."""


def policy(spec: Any) -> AuthPolicy:
    """An `authn_policies` entry: a policy name, or `{"all_of": [names]}`."""
    if isinstance(spec, dict) and isinstance(spec.get("all_of"), list):
        return AllOf(tuple(policy(part) for part in spec["all_of"]))
    make = _POLICIES.get(spec) if isinstance(spec, str) else None
    if make is None:
        raise UnknownPolicy(f"Unknown authentication policy: {spec!r}")
    return make()


@dataclass(frozen=True)
class JsEndpointInfo:
    """One endpoint's metadata, as `set_js_app` stored it."""

    method: str
    path: str
    js_module: str
    js_function: str
    mode: Mode
    forwarding_required: str
    policies: tuple[AuthPolicy, ...]
    openapi: dict[str, Any] | None
    authenticated: bool  # whether the endpoint names any policy (without one the caller is null)


def _info(key: bytes, raw: bytes) -> JsEndpointInfo | None:
    method, _, path = key.decode().partition(" ")
    try:
        data = orjson.loads(raw)
        policies = tuple(policy(p) for p in data.get("authn_policies", []))
        mode = _MODES[data.get("mode", "readwrite")]
    except (orjson.JSONDecodeError, UnknownPolicy, KeyError, AttributeError) as e:
        logger.warning(f"JS endpoint {key.decode()!r} is not served: {e}")
        return None
    hidden = bool(data.get("openapi_hidden"))
    openapi = data.get("openapi") if isinstance(data.get("openapi"), dict) else {}
    return JsEndpointInfo(method.upper(), path, str(data.get("js_module", "")), str(data.get("js_function", "")),
                          mode, str(data.get("forwarding_required", "sometimes")), policies or (NoAuth(),),
                          None if hidden else openapi, bool(policies))


def caller_identity(caller: Caller, tx: Tx) -> dict[str, Any]:
    """CCF's `request.caller` for the policy that authenticated the request."""
    if caller.kind == "all_of":
        out: dict[str, Any] = {"policy": [part.policy for part in caller.parts]}
        for part in caller.parts:
            out[part.policy] = caller_identity(part, tx)
        return out
    identity: dict[str, Any] = {"policy": caller.policy}
    if caller.kind == "jwt":
        issuer, payload, *rest = caller.claims
        identity["jwt"] = {"keyIssuer": issuer, "header": rest[0] if rest else {}, "payload": payload}
        return identity
    if caller.kind in ("user", "member") and caller.id is not None:
        certs, infos, data_key = ((USERS_CERTS, USERS_INFO, "user_data") if caller.kind == "user" else
                                  (MEMBERS_CERTS, MEMBERS_INFO, "member_data"))
        cert = tx.get(certs, caller.id)
        info = tx.get_json(infos, caller.id)
        identity["id"] = caller.id
        identity["data"] = info.get(data_key) if isinstance(info, dict) else None
        if cert is not None:
            identity["cert"] = cert.decode()
    elif caller.kind == "node" and caller.id is not None:
        identity["id"] = caller.id
    if caller.policy == "user_cose_sign1" and caller.claims:
        identity["cose"] = {"content": bytes(caller.claims[0]).decode("latin-1")}
    return identity


class JsGenericApp(Endpoints):
    """`/app`: the node's own endpoints (`/commit`, `/tx`, `/receipt`, `/api`), then the installed bundle's."""

    def __init__(self) -> None:
        super().__init__("/app")
        self._read_tx: Callable[[], Tx] | None = None
        self._map_version: Callable[[str], int] = lambda name: 0
        self._candidates: list[Endpoint] = []
        # the version of the endpoints map the routes were read at, and how many endpoints were registered then
        self._routes_version = (-1, 0)
        self._interpreter_key: tuple[int, int] | None = None
        self._interpreter: Interpreter | None = None
        self._identities: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._worker: JsWorker | None = None
        self._worker_of: Interpreter | None = None

    def copy(self) -> JsGenericApp:
        clone = JsGenericApp()
        clone.registered = list(self.registered)
        return clone

    def attach(self, read_tx: Callable[[], Tx], map_version: Callable[[str], int]) -> None:
        self._read_tx, self._map_version = read_tx, map_version

    def candidates(self) -> list[Endpoint]:
        if self._read_tx is None:
            return self.registered
        version = (self._map_version(ENDPOINTS), len(self.registered))
        if version != self._routes_version or version[0] == 0:
            self._candidates = self.registered + self._read_routes(self._read_tx())
            self._routes_version = version
        return self._candidates

    def _read_routes(self, tx: Tx) -> list[Endpoint]:
        routes = []
        for key, value in tx.items(ENDPOINTS):
            info = _info(key, value)
            if info is not None:
                template = self.prefix + "/" + info.path.strip("/")
                routes.append(Endpoint(info.method, template, self._handler(info), info.mode, info.policies,
                                       compile_template(template), f"{info.js_module}:{info.js_function}",
                                       info.openapi, info.forwarding_required, defers=True))
        return routes

    def _identity(self, caller: Caller, tx: Tx) -> dict[str, Any]:
        """`caller_identity`, kept per certificate caller until the users' or members' tables change or the store
        rolls back (the transaction still records that it read them, so a change before its commit makes it run
        again)."""
        if caller.kind not in ("user", "member") or caller.policy == "user_cose_sign1":
            return caller_identity(caller, tx)
        certs, infos = (USERS_CERTS, USERS_INFO) if caller.kind == "user" else (MEMBERS_CERTS, MEMBERS_INFO)
        key = (caller.policy, caller.kind, caller.id, tx.map_version(certs), tx.map_version(infos), tx.rollbacks_seen)
        identity = self._identities.get(key)
        if identity is None:
            if len(self._identities) >= IDENTITIES_KEPT:
                self._identities.clear()
            identity = self._identities[key] = caller_identity(caller, tx)
        return identity

    def _interpreter_for(self, tx: Tx) -> Interpreter:
        """The interpreter of the installed modules and runtime options (a new one whenever either changes)."""
        key = (tx.map_version(MODULES), tx.map_version(JS_RUNTIME_OPTIONS))
        if self._interpreter is None or key != self._interpreter_key or key[0] == 0:
            try:
                interpreter = Interpreter({k.decode(): v.decode() for k, v in tx.items(MODULES)},
                                          runtime_options(tx, APP_LIMITS))
            except ModuleLinkError as e:
                raise EndpointError(500, "InternalError", f"The application's modules cannot be loaded: {e}") \
                    from None
            self._interpreter, self._interpreter_key = interpreter, key
        return self._interpreter

    def _handler(self, info: JsEndpointInfo) -> Callable[[EndpointContext], Any]:
        def handle(ctx: EndpointContext) -> Response | Deferred:
            return self._run(info, ctx)

        return handle

    def _run(self, info: JsEndpointInfo, ctx: EndpointContext) -> Response | Deferred:
        interpreter = self._interpreter_for(ctx.tx)
        target = ctx.request.target
        if target.startswith("/"):  # origin form, as clients send it: cheaper than urlsplit
            path, _, query = target.partition("#")[0].partition("?")
        else:
            url = urlsplit(target)
            path, query = url.path, url.query
        caller = (None if not info.authenticated else self._identity(ctx.caller, ctx.tx)
                  if ctx.caller.kind != "anonymous" else {"policy": "no_auth"})
        headers = ctx.request.headers
        request = JsRequest(ctx.request.method, path + "?" + query if query else path, path, "/app" + info.path, query,
                            headers.get("host"), headers if type(headers) is dict else dict(headers),
                            ctx.params, ctx.request.body, caller)
        node = ctx.node
        historical = None
        if info.mode is Mode.HISTORICAL:
            queries = historical_queries(ctx)
            txid = requested_txid(ctx)
            entry = queries.entry(txid)  # 404 unless committed, 202 while fetched
            historical = {"transactionId": str(txid), "receipt": queries.receipt(txid),
                          "writes": {name: latin1_entries(changes) for name, changes in entry.writes.items()}}
        committed = (0, 0)
        if node is not None:
            committed_txid = node.ledger.txid(node.ledger.committed_seqno)
            committed = (committed_txid.view, committed_txid.seqno)
        run_context = RunContext(ctx.tx, info.mode is Mode.READWRITE, _HostCalls(ctx), committed, historical)
        if ctx.may_defer:  # QuickJS runs in the bundle's worker process, on the other core
            deferred = Deferred()

            def done(outcome: JsOutcome | None, error: BaseException | None) -> None:
                answer: Response | None = None
                try:
                    if isinstance(error, JsError):  # the options are read afresh: the request's own read version
                        error = self._failure(error, self._read_tx() if self._read_tx else ctx.tx)  # may be gone
                    elif error is None:
                        assert outcome is not None
                        answer = self._answer(outcome, ctx)
                except Exception as e:
                    error = e
                if error is not None:
                    deferred.fail(error)
                else:
                    deferred.resolve(answer)

            self._worker_for(interpreter).start(info.js_module, info.js_function, request, info.mode.value,
                                                run_context, done, ctx.request.session)
            return deferred
        try:
            outcome = interpreter.run(info.js_module, info.js_function, request, info.mode.value, run_context)
        except JsError as e:
            raise self._failure(e, ctx.tx) from None
        return self._answer(outcome, ctx)

    @staticmethod
    def _answer(outcome: JsOutcome, ctx: EndpointContext) -> Response:
        for line in outcome.logs:
            logger.info(f"[js] {line}")
        apply_outcome(ctx.tx, outcome)
        if outcome.claims_digest is not None:
            ctx.set_claims_digest(outcome.claims_digest)
        ctx.commit_on_error = outcome.apply_writes
        return Response(outcome.response.status, outcome.response.body, outcome.response.headers)

    def close(self) -> None:
        if self._worker is not None:
            self._worker.close()
            self._worker = None

    def _worker_for(self, interpreter: Interpreter) -> JsWorker:
        """The worker process of the current interpreter's bundle (the previous bundle's worker is ended)."""
        if self._worker is None or self._worker_of is not interpreter:
            if self._worker is not None:
                self._worker.retire()
            self._worker = JsWorker(interpreter.modules, interpreter.limits)
            self._worker_of = interpreter
        return self._worker

    @staticmethod
    def _failure(e: JsError, tx: Tx) -> EndpointError:
        """CCF's answer to a handler that did not complete (the node logs the exception unless told not to)."""
        options = tx.get_json(JS_RUNTIME_OPTIONS, SINGLETON_KEY)
        options = options if isinstance(options, dict) else {}
        if isinstance(e, JsTimeout | JsInvalidReturn | JsAccessDenied):
            return EndpointError(500, "InternalError", e.reason)
        if options.get("log_exception_details") is not False:
            logger.info(f"JS handler failed: {e.reason}\n{e.trace or ''}")
        details = ([{"code": "JSException", "message": e.reason, "trace": e.trace or ""}]
                   if options.get("return_exception_details") is True else [])
        return HandlerException(details)



class _HostCalls(Mapping[str, Callable[..., Any]]):
    """The host calls of one request: `ccf.crypto`, and those that read the node (consensus status, historical
    state), made only when the handler asks for one."""

    _NODE_CALLS = ("getStatusForTxId", "getViewForSeqno", "getStateRange", "dropCachedStates")

    def __init__(self, ctx: EndpointContext) -> None:
        self.ctx = ctx

    def __getitem__(self, name: str) -> Callable[..., Any]:
        if name in CRYPTO_CALLS:
            return CRYPTO_CALLS[name]
        if name in self._NODE_CALLS and self.ctx.node is not None:
            return getattr(self, f"_{name}")  # type: ignore[no-any-return]
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter((*CRYPTO_CALLS, *self._NODE_CALLS))

    def __len__(self) -> int:
        return len(CRYPTO_CALLS) + len(self._NODE_CALLS)

    def _getStatusForTxId(self, view: Any, seqno: Any) -> str:  # noqa: N802 - named as the JS call
        if int(view) < 0 or int(seqno) < 0:
            raise ValueError("Invalid view or seqno: cannot be negative")
        return tx_status(self.ctx.node.ledger, TxID(int(view), int(seqno))).value

    def _getViewForSeqno(self, seqno: Any) -> int | None:  # noqa: N802
        view = self.ctx.node.ledger.view_of(int(seqno))
        return None if view is None else int(view)

    def _getStateRange(self, handle: Any, start: Any, end: Any, expiry: Any) -> list[dict[str, Any]] | None:  # noqa: N802
        if min(int(handle), int(start), int(end), int(expiry)) < 0:
            raise ValueError("Invalid handle, seqno or expiry: cannot be negative")
        queries = historical_queries(self.ctx)
        try:
            entries = queries.entries(int(start), int(end))
        except HistoricalPending:
            return None
        except EndpointError as e:
            raise ValueError(e.message) from None
        return [{"transactionId": str(entry.txid), "receipt": queries.receipt(entry.txid),
                 "writes": {name: latin1_entries(changes) for name, changes in entry.writes.items()}}
                for entry in entries]

    def _dropCachedStates(self, handle: Any) -> bool:  # noqa: N802
        return True


app = JsGenericApp()
