"""The endpoint framework application authors use: decorated Python handlers over one KV transaction.

```
app = Endpoints("/app")

@app.endpoint("POST", "/log/private", mode=Mode.READWRITE, auth=(UserCert(),))
def record(ctx: EndpointContext) -> object:
    body = ctx.json()
    ctx.tx.put_json("records", str(body["id"]), body["msg"])
    return {"ok": True}
```

Guarantees: routes are method plus path template (`{name}` segments); an unknown path is 404
`ResourceNotFound`, a known path with another method 405 `UnsupportedHttpVerb`; authentication runs the
endpoint's policies (401 with CCF's details); a handler returns a `Response`, or any JSON value (200); a
handler raising `EndpointError` gets that status and CCF error body; a bad JSON body is 400 `InvalidInput`;
`dispatch` commits read-write transactions through the caller's `finish` and puts the transaction id in
`x-ms-ccf-transaction-id`. `openapi()` describes the registrations.
"""

from __future__ import annotations

import asyncio
import enum
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import orjson

from ledger.errors import TransactionConflict, VersionUnavailable
from ledger.kv import Tx
from network.enclave.auth import AuthenticationFailed, AuthPolicy, Caller, NoAuth, authenticate
from network.enclave.http import ANSWER_LATER, Pending, Request, Response, internal_error

TXID_HEADER = "x-ms-ccf-transaction-id"


class Mode(enum.Enum):
    READONLY = "readonly"
    READWRITE = "readwrite"
    HISTORICAL = "historical"


class EndpointError(Exception):
    """Raised by handlers (or the framework) to answer with CCF's error body."""

    def __init__(self, status: int, code: str, message: str, headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers

    def response(self) -> Response:
        error = Response.error(self.status, self.code, self.message)
        return Response(error.status, error.body, (*error.headers, *self.headers))


@dataclass
class EndpointContext:
    request: Request
    tx: Tx
    caller: Caller
    params: dict[str, str]
    query: dict[str, list[str]]
    mode: Mode = Mode.READONLY
    node: Any = None  # what the node lends handlers (historical queries, receipts); None outside a node
    may_defer: bool = False  # whether the handler may return a `Deferred` (the node awaits it on its loop)
    claims_digest: bytes | None = None
    effects: list[Any] = field(default_factory=list)  # for the node to carry out once the tx commits
    # an error answer whose writes are still committed (CCF's set_apply_writes: e.g. clearing wrong recovery shares)
    commit_on_error: bool = False

    def json(self) -> Any:
        try:
            return orjson.loads(self.request.body)
        except orjson.JSONDecodeError as e:
            raise EndpointError(400, "InvalidInput", f"Request body is not valid JSON: {e}") from None

    def set_claims_digest(self, digest: bytes) -> None:
        self.tx.set_claims_digest(digest)
        self.claims_digest = digest


HandlerFn = Callable[[EndpointContext], Any]
# CCF's limit on the runs of a transaction that keeps conflicting (src/node/rpc/frontend.h), then 503
MAX_ATTEMPTS = 30


class Deferred:
    """What a handler returns when `ctx.may_defer` and its work goes on off the event loop. The handler's side
    calls `resolve` with what the handler would have returned, or `fail` with what it would have raised; the
    dispatcher's continuation runs at once, on the loop, in that same call (so a transaction completed this way
    commits before anything else runs)."""

    __slots__ = ("_then",)

    def __init__(self) -> None:
        self._then: Callable[[Any, BaseException | None], None] | None = None

    def then(self, continuation: Callable[[Any, BaseException | None], None]) -> None:
        self._then = continuation

    def resolve(self, result: Any) -> None:
        self._complete(result, None)

    def fail(self, error: BaseException) -> None:
        self._complete(None, error)

    def _complete(self, result: Any, error: BaseException | None) -> None:
        assert self._then is not None, "a Deferred completes once, after dispatch took it"
        then, self._then = self._then, None
        then(result, error)


@dataclass(frozen=True)
class Endpoint:
    method: str
    template: str
    handler: HandlerFn
    mode: Mode
    auth: tuple[AuthPolicy, ...]
    pattern: re.Pattern[str] = field(compare=False)
    summary: str = ""
    # an OpenAPI operation object merged into the generated one (a JS app's `openapi`); None: hidden from /api
    openapi: dict[str, Any] | None = field(default_factory=dict, compare=False)
    # CCF's forwarding_required: on a backup, "sometimes" forwards writes only, "always" every request, "never" none
    forwarding: str = "sometimes"
    # whether the handler answers with a `Deferred` when it may (then it may be started while requests before it
    # in the same session are still running: see `Request.after_pending`)
    defers: bool = False


def _settle(answer: asyncio.Future[Response], response: Response, answered: Callable[[], None] | None) -> None:
    try:
        if not answer.done():
            answer.set_result(response)
    finally:
        if answered is not None:
            answered()


_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


def compile_template(template: str) -> re.Pattern[str]:
    """`{name}` matches one path segment; inside a segment (`{proposalId}:withdraw`) it stops at ':'."""
    parts = []
    for segment in template.strip("/").split("/"):
        whole = _PARAM.fullmatch(segment)
        if whole:
            parts.append(f"(?P<{whole.group(1)}>[^/]+)")
            continue
        pieces, last = [], 0
        for m in _PARAM.finditer(segment):
            pieces += [re.escape(segment[last:m.start()]), f"(?P<{m.group(1)}>[^/:]+)"]
            last = m.end()
        parts.append("".join(pieces) + re.escape(segment[last:]))
    return re.compile("^/" + "/".join(parts) + "$")


def _exact_paths(candidates: list[Endpoint]) -> dict[tuple[str, str], Endpoint]:
    """The endpoints whose path has no parameters, by method and path: those a request's path names exactly and
    no endpoint tried before them matches (so looking them up finds what trying them in order would)."""
    exact: dict[tuple[str, str], Endpoint] = {}
    for i, endpoint in enumerate(candidates):
        path = endpoint.template
        if "{" in path or not endpoint.pattern.match(path) or (endpoint.method, path) in exact:
            continue
        if not any(e.method == endpoint.method and e.pattern.match(path) for e in candidates[:i]):
            exact[(endpoint.method, path)] = endpoint
    return exact


class Endpoints:
    def __init__(self, prefix: str) -> None:
        self.prefix = prefix.rstrip("/")
        self.registered: list[Endpoint] = []
        # (candidates, their count, {(method, path): endpoint}) for the paths without parameters
        self._exact: tuple[list[Endpoint], int, dict[tuple[str, str], Endpoint]] | None = None

    def copy(self) -> Endpoints:
        """A frontend with the same registrations, to which a node may add its own (e.g. `/app/commit`)."""
        clone = Endpoints(self.prefix)
        clone.registered = list(self.registered)
        return clone

    def endpoint(self, method: str, template: str, *, mode: Mode = Mode.READONLY,
                 auth: tuple[AuthPolicy, ...] = (NoAuth(),), defers: bool = False) -> Callable[[HandlerFn], HandlerFn]:
        if not auth:
            raise ValueError("an endpoint needs at least one authentication policy (NoAuth() for anonymous)")

        def register(fn: HandlerFn) -> HandlerFn:
            full = self.prefix + "/" + template.strip("/")
            if any(e.method == method.upper() and e.template == full for e in self.registered):
                raise ValueError(f"{method} {full} is registered twice")
            summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
            self.registered.append(Endpoint(method.upper(), full, fn, mode, auth, compile_template(full), summary,
                                            defers=defers))
            return fn

        return register

    def attach(self, read_tx: Callable[[], Tx], map_version: Callable[[str], int]) -> None:
        """The node lends the frontend a view of its current state, and the version of each map's latest write
        (an app whose routes live in the KV, such as the JavaScript generic app, reads them there and rereads
        them when their map changes); a frontend of registered handlers needs none."""

    def close(self) -> None:
        """The node stops: end what the frontend runs besides (a JavaScript app's worker process)."""

    def candidates(self) -> list[Endpoint]:
        """The endpoints a request may be routed to, in the order they are tried."""
        return self.registered

    def match(self, method: str, path: str) -> tuple[Endpoint, dict[str, str]]:
        candidates = self.candidates()
        exact = self._exact
        if exact is None or exact[0] is not candidates or exact[1] != len(candidates):
            exact = self._exact = (candidates, len(candidates), _exact_paths(candidates))
        hit = exact[2].get((method, path))
        if hit is not None:
            return hit, {}
        for endpoint in candidates:  # the method first: a string comparison is cheaper than a match
            if endpoint.method == method and (m := endpoint.pattern.match(path)) is not None:
                return endpoint, {k: unquote(v) for k, v in m.groupdict().items()}
        allowed = [endpoint.method for endpoint in candidates if endpoint.pattern.match(path)]
        if allowed:
            raise EndpointError(405, "UnsupportedHttpVerb", f"Allowed methods for '{path}' are: {', '.join(allowed)}")
        raise EndpointError(404, "ResourceNotFound", f"Unknown path: {path}.")

    def dispatch(self, request: Request, begin: Callable[[Mode], Tx],
                 finish: Callable[[EndpointContext], str | None], node: Any = None, *, may_defer: bool = False,
                 answered: Callable[[], None] | None = None, attempt: int = 1) -> Response:
        """Route, authenticate, run the handler on a transaction from `begin`, and let `finish` commit
        it (returning the txid for the header; it may raise EndpointError). Errors become CCF error
        responses; a failed request's transaction is never committed, unless its handler set `commit_on_error`.

        With `may_defer`, a handler may return a `Deferred` (its work goes on off the event loop); the answer is
        then a `Pending` response, completed on the loop. Such a transaction may meet others committed meanwhile:
        if it conflicts with one (or its read version was compacted away), it runs again from the start, as CCF
        does, up to `MAX_ATTEMPTS` times. `answered` is called once a `Pending` answer is ready."""
        url = urlsplit(request.target)
        try:
            endpoint, params = self.match(request.method, url.path)
            if request.after_pending and not (may_defer and endpoint.defers):
                return ANSWER_LATER  # it runs once the session's requests before it are answered
            tx = begin(endpoint.mode)
            try:
                caller = authenticate(endpoint.auth, request, tx)
            except AuthenticationFailed as e:
                body = {"error": {"code": e.code, "message": str(e), "details": e.details()}}
                return Response(401, orjson.dumps(body), (("content-type", "application/json"),
                                                          ("www-authenticate", 'Bearer realm="ccf"')))
            ctx = EndpointContext(request, tx, caller, params, parse_qs(url.query), endpoint.mode, node, may_defer)
            result = endpoint.handler(ctx)
            if isinstance(result, Deferred):
                answer: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
                result.then(lambda value, error: self._deferred_done(
                    value, error, ctx, answer, answered, finish,
                    lambda: self.dispatch(request, begin, finish, node, may_defer=True, attempt=attempt + 1),
                    attempt))
                return Pending(0, future=answer)
            return self._respond(result, ctx, finish)
        except EndpointError as e:
            return e.response()

    @staticmethod
    def _respond(result: Any, ctx: EndpointContext, finish: Callable[[EndpointContext], str | None]) -> Response:
        response = result if isinstance(result, Response) else Response.json(200, result)
        txid = finish(ctx) if response.status < 400 or ctx.commit_on_error else None
        if txid is not None:
            response = Response(response.status, response.body, (*response.headers, (TXID_HEADER, txid)))
        return response

    def _deferred_done(self, value: Any, error: BaseException | None, ctx: EndpointContext,
                       answer: asyncio.Future[Response], answered: Callable[[], None] | None,
                       finish: Callable[[EndpointContext], str | None], again: Callable[[], Response],
                       attempt: int) -> None:
        """A deferred handler completed: commit its transaction and answer, or run the request again."""
        try:
            if error is not None:
                raise error
            response = self._respond(value, ctx, finish)
        except EndpointError as e:
            response = e.response()
        except (TransactionConflict, VersionUnavailable):
            ctx.tx.abandon()
            if attempt >= MAX_ATTEMPTS:
                busy = Response.error(503, "TransactionCommitAttemptsExceedLimit",
                                      f"Transaction continued to conflict after {attempt} attempts. Retry later.")
                response = Response(busy.status, busy.body, (*busy.headers, ("retry-after", "3")))
            else:
                try:
                    response = again()
                except Exception as e:  # a bug of the node's: the client gets CCF's 500, the loop goes on
                    response = internal_error(ctx.request, e)
                if isinstance(response, Pending):
                    response.then(lambda final: _settle(answer, final, answered))
                    return
        except Exception as e:  # the handler's bug: the client gets CCF's 500, the loop goes on
            response = internal_error(ctx.request, e)
        _settle(answer, response, answered)

    def openapi(self, title: str, version: str = "1.0.0") -> dict[str, Any]:
        """An OpenAPI 3.0 document of the endpoints requests may reach (each endpoint's own `openapi` members
        override the generated ones)."""
        paths: dict[str, dict[str, Any]] = {}
        for e in self.candidates():
            if e.openapi is None:
                continue
            params = re.findall(r"\{([A-Za-z_][A-Za-z0-9_]*)\}", e.template)
            paths.setdefault(e.template, {})[e.method.lower()] = {
                "summary": e.summary,
                "x-ccf-mode": e.mode.value,
                "x-ccf-auth": [p.name for p in e.auth],
                "parameters": [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                               for p in params],
                "responses": {"200": {"description": "Default response"}},
                **e.openapi,
            }
        return {"openapi": "3.0.0", "info": {"title": title, "version": version}, "paths": paths}
