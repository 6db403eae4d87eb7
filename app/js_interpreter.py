"""One deployed JavaScript bundle, ready to run its handlers in QuickJS against a transaction.

An `Interpreter` holds a QuickJS context with the app prelude (`js/app_prelude.js`) and the bundle's modules
linked (`app.js_modules`); each module is evaluated once per interpreter, when first required, so module-level
state lives as long as the interpreter (CCF's `interpreter_reuse`; CCF's default is a fresh interpreter per
request). `run` calls one exported function with CCF's request object and returns its response and writes.

QuickJS refuses calls into Python while a time limit is set, and the limits must hold, so the handler reads the
KV through what the host passed in: a run that reads an entry the host did not pass, or calls the host (crypto,
historical state, consensus), records the need and completes with what it has; the host loads the entries,
answers the calls and runs the handler again. Execution is deterministic (time, randomness and host answers are
fixed per request), so each run takes the path of the one before up to the new answers. The final run's writes
and response are the request's; earlier runs leave nothing behind but module state.

Guarantees: the time limit covers every run of a request together; a run that exceeds the time, heap or stack
limits fails (`JsTimeout`, `JsOutOfMemory`, `JsStackOverflow`) and the interpreter is replaced before the next
request, since the failure may have left its modules half-updated; a handler that throws fails with
`JsHandlerFailed` (its message and stack kept for the log); nothing the handler wrote reaches the transaction
unless `run` returns. Writes to governance or internal maps, and every write from a read-only endpoint, are
refused here as well as in the prelude, because the app's code shares the prelude's scope.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import orjson
import quickjs

from app.js_modules import link
from governance.js_runtime import JSLimits, answer_host_call, js_source
from ledger.kv import Tx

MAX_RUNS = 256  # loads and host answers of one request: each is a run
TIMEOUT_REASON = "Operation took too long to complete."

HostCall = Callable[..., Any]


class JsError(Exception):
    """A handler did not complete."""

    def __init__(self, reason: str, trace: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.trace = trace


class JsHandlerFailed(JsError):
    """The handler threw (or returned something that is not a response)."""


class JsTimeout(JsError):
    """The handler ran past the time limit."""


class JsOutOfMemory(JsError):
    """The handler exhausted the heap limit."""


class JsStackOverflow(JsError):
    """The handler exhausted the stack limit."""


class JsInvalidReturn(JsError):
    """The handler returned something that is not a response object (CCF's "Invalid endpoint function return
    value" errors)."""


class JsAccessDenied(JsError):
    """The handler wrote, or asked to read, a map it may not."""


@dataclass(frozen=True)
class JsRequest:
    """CCF's request object, as the handler sees it (`body` as bytes; `caller` the policy's identity)."""

    method: str
    url: str
    path: str
    route: str
    query: str
    hostname: str | None
    headers: Mapping[str, str]
    params: Mapping[str, str]
    body: bytes
    caller: Mapping[str, Any] | None


@dataclass(frozen=True)
class JsResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class JsOutcome:
    response: JsResponse
    writes: dict[str, dict[bytes, bytes | None]]
    cleared: tuple[str, ...]
    claims_digest: bytes | None
    apply_writes: bool
    logs: tuple[str, ...] = ()
    runs: int = 1


@dataclass
class RunContext:
    """What one request's runs may read: its transaction, the node's answers, the historical state."""

    tx: Tx
    writable: bool
    host_calls: Mapping[str, HostCall]
    committed: tuple[int, int] = (0, 0)  # (view, seqno) of the last committed transaction
    historical: dict[str, Any] | None = None  # {transactionId, receipt, writes} of a historical endpoint
    extra: dict[str, Any] = field(default_factory=dict)


_CONTENT_TYPES = {"json": "application/json", "text": "text/plain", "bytes": "application/octet-stream"}


def _prelude() -> str:
    return (js_source("bytes.js") + js_source("crypto.js") +
            resources.files("app").joinpath("js/app_prelude.js").read_text(encoding="utf-8"))


_PRELUDE = _prelude()


def readable(map_name: str) -> bool:
    """Application code reads every map but the node's private internal ones."""
    return not map_name.startswith("ccf.")


def writable(map_name: str) -> bool:
    """Application code writes its own maps only: never governance or internal ones."""
    return not (map_name.startswith("public:ccf.") or map_name.startswith("ccf."))


def latin1_entries(items: Mapping[bytes, bytes | None]) -> dict[str, str | None]:
    return {k.decode("latin-1"): None if v is None else v.decode("latin-1") for k, v in items.items()}


class Interpreter:
    """A bundle's modules, linked once, run under `limits`."""

    def __init__(self, modules: Mapping[str, str], limits: JSLimits | None = None) -> None:
        self.modules = dict(modules)
        self.script = link(modules)
        self.limits = limits or JSLimits()
        self._context: Any = None
        self._entry: dict[str, Any] = {}
        self.requests_served = 0

    def _fresh(self) -> Any:
        ctx = quickjs.Context()
        ctx.set_memory_limit(self.limits.max_heap_bytes)
        ctx.set_max_stack_size(self.limits.max_stack_bytes)
        ctx.eval(_PRELUDE)
        ctx.eval(self.script)
        return ctx

    def _function(self) -> None:
        if self._context is None:
            self._context = self._fresh()
            self._entry = {name: self._context.get(name) for name in (BEGIN_RUN, RUN, BEGIN_RUN_WITH)}

    def discard(self) -> None:
        """Drop the context: the next request gets a fresh one (and evaluates the modules again)."""
        self._context = None
        self._entry = {}

    def run(self, module: str, function: str, request: JsRequest, mode: str, context: RunContext) -> JsOutcome:
        deadline = time.monotonic() + self.limits.max_execution_time_ms / 1000
        env, *rest = begin_request(module, function, request, mode, context)
        text = self.call(BEGIN_RUN, (orjson.dumps(env).decode(), *rest), deadline)
        for runs in range(1, MAX_RUNS + 1):
            step = next_step(text, context, runs)
            if isinstance(step, JsOutcome):
                self.requests_served += 1
                return step
            text = self.call(RUN, (orjson.dumps(step).decode(),), deadline)
        raise JsHandlerFailed(f"the handler asked for more than {MAX_RUNS} loads and host calls")

    def call(self, function: str, arguments: tuple[str | None, ...], deadline: float) -> str:
        """One call into the prelude (`BEGIN_RUN`, `RUN`, `BEGIN_RUN_WITH`) under what is left of the request's
        time; the outcome's JSON text."""
        self._function()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.discard()
            raise JsTimeout(TIMEOUT_REASON)
        self._context.set_time_limit(remaining)
        try:
            return str(self._entry[function](*arguments))
        except quickjs.StackOverflow as e:
            self.discard()
            raise JsStackOverflow(_first_line(e), str(e)) from None
        except quickjs.JSException as e:
            self.discard()
            text = str(e)
            if "interrupted" in text:
                raise JsTimeout(TIMEOUT_REASON, text) from None
            if "out of memory" in text:
                raise JsOutOfMemory(_first_line(e), text) from None
            raise JsHandlerFailed(_first_line(e), text) from None
        finally:
            if self._context is not None:
                self._context.set_time_limit(-1)


def _load(tx: Tx, map_name: str, key: str | None, loaded: dict[str, dict[str, str | None]],
          versions: dict[str, dict[str, int]], full: dict[str, bool]) -> None:
    if not readable(map_name):
        raise JsAccessDenied(f"Cannot read from map {map_name}: this table is inaccessible to application code")
    if key is None:
        loaded[map_name] = {k.decode("latin-1"): v.decode("latin-1") for k, v in tx.items(map_name)}
        versions[map_name] = {k.decode("latin-1"): v for k, v in tx.committed_versions(map_name).items()}
        full[map_name] = True
        return
    raw = key.encode("latin-1")
    value = tx.get(map_name, raw)
    loaded.setdefault(map_name, {})[key] = None if value is None else value.decode("latin-1")
    versions.setdefault(map_name, {})[key] = tx.get_version(map_name, raw) if value is not None else 0


def _outcome(outcome: dict[str, Any], may_write: bool, runs: int) -> JsOutcome:
    writes: dict[str, dict[bytes, bytes | None]] = {}
    cleared = tuple(outcome.get("cleared", ()))
    for map_name in (*outcome["writes"], *cleared):
        if not may_write:
            raise JsAccessDenied(f"Cannot write to map {map_name}: this table is read-only in the current "
                                 "(read-only) execution context")
        if not writable(map_name):
            raise JsAccessDenied(f"Cannot write to map {map_name}: this table is read-only for application "
                                 "code")
    for map_name, changes in outcome["writes"].items():
        writes[map_name] = {k.encode("latin-1"): None if v is None else v.encode("latin-1")
                            for k, v in changes.items()}
    response = outcome["response"]
    headers = dict(response["headers"])
    if response["kind"] != "none":
        headers.setdefault("content-type", _CONTENT_TYPES[response["kind"]])
    body = response["body"].encode("latin-1" if response["kind"] == "bytes" else "utf-8")
    claims = outcome.get("claims")
    return JsOutcome(JsResponse(int(response["status"]), tuple(headers.items()), body), writes, cleared,
                     None if claims is None else claims.encode("latin-1"), bool(outcome.get("applyWrites")),
                     tuple(outcome.get("logs", ())), runs)


def _all_absent(loaded: Mapping[str, Mapping[str, str | None]]) -> bool:
    """Whether every entry loaded is absent (and every map loaded whole is empty)."""
    return all(value is None for entries in loaded.values() for value in entries.values())


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


# Math.random's seed per request: Math.random is not a source of secrets (ccf.crypto is), so a fast generator
# seeded once from the OS does, rather than a system call per request
_SEEDS = random.Random(os.urandom(16))
BEGIN_RUN, RUN, BEGIN_RUN_WITH = "__ccfBeginRun", "__ccfRun", "__ccfBeginRunWith"


def begin_request(module: str, function: str, request: JsRequest, mode: str,
                  context: RunContext) -> tuple[dict[str, Any], str | None, str | None, str | None]:
    """`BEGIN_RUN`'s arguments, the first still to be made JSON: what stays the same in every run of the request
    (its time and randomness fixed)."""
    body_text: str | None
    body_latin1: str | None = None
    try:
        body_text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        body_text, body_latin1 = None, request.body.decode("latin-1")
    headers, params = request.headers, request.params
    # The body and the caller's certificate cross as arguments of their own: QuickJS parses JSON at about 60
    # instructions a character, and takes a string argument as it is.
    caller, caller_cert = request.caller, None
    if caller is not None and caller.get("cert") is not None:
        caller_cert = caller["cert"]
        caller = {**caller, "cert": None}  # the prelude puts it back, in its place
    begin = {
        "module": module, "function": function, "mode": mode,
        "request": {"method": request.method, "url": request.url, "path": request.path, "route": request.route,
                    "query": request.query, "hostname": request.hostname,
                    "headers": headers if type(headers) is dict else dict(headers),
                    "params": params if type(params) is dict else dict(params), "caller": caller},
        "seed": _SEEDS.getrandbits(32) or 1, "now_ms": int(time.time() * 1000),
        "committed": {"view": context.committed[0], "seqno": context.committed[1]},
        "historical": context.historical,
    }
    if context.extra:
        begin.update(context.extra)
    return begin, body_text, body_latin1, caller_cert


def next_step(text: str | bytes, context: RunContext, runs: int) -> JsOutcome | dict[str, Any]:
    """What a run's outcome calls for: the request's `JsOutcome` (or its error raised), or the delta of entries
    loaded and host calls answered for the next run."""
    outcome: dict[str, Any] = orjson.loads(text)
    missing, calls = outcome.get("missing", ()), outcome.get("requests", ())
    if missing or calls:
        delta: dict[str, Any] = {"loaded": {}, "versions": {}, "full": {}, "answers": {}}
        for map_name, key in missing:
            _load(context.tx, map_name, key, delta["loaded"], delta["versions"], delta["full"])
        for call in calls:
            delta["answers"][call["key"]] = answer_host_call(context.host_calls, call["name"], call["args"])
        # A run that missed entries took them as absent. If they are, it saw exactly the state it would have seen
        # with them loaded, and its execution is deterministic: it is the request's run.
        if calls or not _all_absent(delta["loaded"]):
            return delta
    if outcome.get("invalidReturn") is not None:
        raise JsInvalidReturn(outcome["invalidReturn"])
    if not outcome["ok"]:
        raise JsHandlerFailed(outcome["error"], outcome.get("trace"))
    return _outcome(outcome, context.writable, runs)


def merge_delta(into: dict[str, Any], delta: Mapping[str, Any]) -> None:
    """Add a run's delta to what the runs before it were given (as the prelude's `__ccfRun` does)."""
    for part in ("loaded", "versions"):
        for map_name, entries in delta[part].items():
            into.setdefault(part, {}).setdefault(map_name, {}).update(entries)
    for part in ("full", "answers"):
        into.setdefault(part, {}).update(delta[part])


def apply_outcome(tx: Tx, outcome: JsOutcome) -> None:
    """Put a run's writes into the transaction (maps cleared first, as the handler did)."""
    for map_name in outcome.cleared:
        tx.clear(map_name)
    for map_name, changes in outcome.writes.items():
        for key, value in changes.items():
            if value is None:
                tx.remove(map_name, key)
            else:
                tx.put(map_name, key, value)
