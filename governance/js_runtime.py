"""Running governance JavaScript (constitutions and ballots) in QuickJS, deterministically and bounded.

A call runs one exported function of an ES module in a fresh QuickJS context with the `ccf` globals of
`js/bytes.js`, `js/crypto.js` and `js/prelude.js`. QuickJS refuses Python callbacks while a time limit is set, so
the KV is not read through callbacks: the host passes a snapshot of the maps the code reads, as hex, and collects
its writes. Maps are loaded on demand by running the call again with every map the previous run asked for (execution
is deterministic: `Date.now` is fixed and `Math.random` seeded from the call), so the code sees exactly the
transaction's state and the host reads only what it needs.

Guarantees: time, heap and stack limits (never below CCF's defaults) apply to every run; exceeding the
time limit fails with CCF's "Operation took too long to complete."; a JS exception becomes `JSCallFailed`
with the reason and trace; writes happen only through `writable` calls and come back as a write set for
the caller to apply to its transaction (nothing is written if the call fails).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import quickjs

from governance.errors import GovernanceError
from governance.js_crypto import CRYPTO_CALLS
from governance.js_host import DEFAULT_HOST_CALLS, HostCall, HostCallError
from ledger.kv import Tx, WriteSet

TIMEOUT_REASON = "Operation took too long to complete."
_MAX_RELOADS = 256  # map loads and host-call answers: each one is a re-run
_EXPORT = re.compile(r"^\s*export\s+(?:async\s+)?(?:function\*?|const|let|var|class)\s+([A-Za-z_$][\w$]*)", re.M)
_EXPORT_LIST = re.compile(r"^\s*export\s*\{([^}]*)\}\s*;?", re.M)


@dataclass(frozen=True)
class JSLimits:
    """CCF's defaults for governance code (100 MiB heap, 1 MiB stack, 5000 ms);
    `public:ccf.gov.js_runtime_options` may raise them, never lower them."""

    max_heap_bytes: int = 100 * 1024 * 1024
    max_stack_bytes: int = 1024 * 1024
    max_execution_time_ms: int = 5000

    def at_least_defaults(self) -> JSLimits:
        d = JSLimits()
        return JSLimits(max(self.max_heap_bytes, d.max_heap_bytes), max(self.max_stack_bytes, d.max_stack_bytes),
                        max(self.max_execution_time_ms, d.max_execution_time_ms))


class JSCallFailed(GovernanceError):
    """The JavaScript threw, timed out or ran out of memory or stack."""

    def __init__(self, reason: str, trace: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.trace = trace


@dataclass(frozen=True)
class Effect:
    """A node effect the code asked for (`ccf.node.*`), for the node to carry out after commit."""

    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class JSCallResult:
    value: Any
    writes: WriteSet
    effects: tuple[Effect, ...] = ()


def js_source(name: str) -> str:
    """A JavaScript file of this package's `js/` directory."""
    return resources.files("governance").joinpath(f"js/{name}").read_text(encoding="utf-8")


def _prelude() -> str:
    return js_source("bytes.js") + js_source("crypto.js") + js_source("prelude.js")


_PRELUDE = _prelude()


_IDENTIFIER = re.compile(r"^[A-Za-z_$][\w$]*$")
_REGEX_AFTER = set("(,=:[!&|?{};+-*%<>~^") | {""}
_REGEX_AFTER_WORDS = {"return", "typeof", "instanceof", "in", "of", "new", "delete", "void", "throw", "case", "do",
                      "else", "yield", "await"}


def code_only(source: str) -> str:
    """The source with comments, string, template and regex literals blanked to spaces (newlines kept), so
    that text inside them can never be mistaken for an `export` statement."""
    out = list(source)
    i, n = 0, len(source)
    templates: list[int] = []  # brace depth at which each open template literal's `${` started
    depth = 0
    last = ""  # the last significant character or word outside literals, to tell a regex from a division

    def blank(start: int, end: int) -> None:
        for k in range(start, min(end, n)):
            if out[k] != "\n":
                out[k] = " "

    def skip_template(j: int) -> int:
        """From inside a template literal at j, to just past its end or its next `${`."""
        while j < n:
            c = source[j]
            if c == "\\":
                j += 2
            elif c == "`":
                return j + 1
            elif c == "$" and source.startswith("${", j):
                templates.append(depth)
                return j + 2
            else:
                j += 1
        return n

    while i < n:
        c = source[i]
        if source.startswith("//", i):
            end = source.find("\n", i)
            end = n if end < 0 else end
            blank(i, end)
            i = end
        elif source.startswith("/*", i):
            end = source.find("*/", i + 2)
            end = n if end < 0 else end + 2
            blank(i, end)
            i = end
        elif c in "'\"":
            j = i + 1
            while j < n and source[j] != c and source[j] != "\n":
                j += 2 if source[j] == "\\" else 1
            blank(i, j + 1)
            i = j + 1
            last = "x"
        elif c == "`":
            end = skip_template(i + 1)
            blank(i, end)
            i = end
            last = "x"
        elif c == "}" and templates and templates[-1] == depth:
            templates.pop()
            end = skip_template(i + 1)
            blank(i, end)
            i = end
            last = "x"
        elif c == "/" and (last in _REGEX_AFTER or last in _REGEX_AFTER_WORDS):
            j = i + 1
            in_class = False
            while j < n and source[j] != "\n":
                if source[j] == "\\":
                    j += 2
                    continue
                if source[j] == "[":
                    in_class = True
                elif source[j] == "]":
                    in_class = False
                elif source[j] == "/" and not in_class:
                    break
                j += 1
            blank(i, j + 1)
            i = j + 1
            last = "x"
        else:
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
            if c.isalnum() or c in "_$":
                j = i
                while j < n and (source[j].isalnum() or source[j] in "_$"):
                    j += 1
                last = source[i:j]
                i = j
                continue
            if not c.isspace():
                last = c
            i += 1
    return "".join(out)


def module_with_exports(source: str) -> str:
    """The module, plus a line publishing its exports on `globalThis.__exports` (QuickJS's
    `Context.module` does not return them). Exports are read from the code only (not comments or
    literals); each published name must be an identifier, and is published only if it is a function."""
    code = code_only(source)
    names: dict[str, str] = {name: name for name in _EXPORT.findall(code)}
    for group in _EXPORT_LIST.findall(code):
        for item in group.split(","):
            parts = item.strip().split()
            if len(parts) == 1 and _IDENTIFIER.match(parts[0]):
                names[parts[0]] = parts[0]
            elif len(parts) == 3 and parts[1] == "as" and _IDENTIFIER.match(parts[0]) and _IDENTIFIER.match(parts[2]):
                names[parts[2]] = parts[0]
    table = ", ".join(f'{json.dumps(public)}: (typeof {local} === "function" ? {local} : undefined)'
                      for public, local in names.items())
    return f"{source}\nglobalThis.__exports = {{{table}}};\n"


def _map_snapshot(tx: Tx, name: str) -> dict[str, str]:
    if not name.startswith("public:"):  # the prelude refuses private maps before asking; never hand one over
        raise JSCallFailed(f"{name} is inaccessible to governance code")
    return {k.hex(): v.hex() for k, v in tx.items(name)}


def _map_versions(tx: Tx, name: str) -> dict[str, int]:
    return {k.hex(): v for k, v in tx.committed_versions(name).items()}


def call_export(
    source: str,
    function: str,
    args: list[Any],
    tx: Tx,
    *,
    writable: bool = False,
    limits: JSLimits | None = None,
    host: dict[str, Any] | None = None,
    host_calls: Mapping[str, HostCall] | None = None,
    crypto: bool = True,
) -> JSCallResult:
    """Run `function(*args)` exported by the module `source` against the state `tx` sees.

    `host` holds values the node provides to `ccf.network.*` (e.g. `latest_ledger_secret_seqno`);
    `host_calls` adds to (or overrides) the host calls of `governance.js_host` (e.g. the node's
    `generateEndorsedCertificate`). `crypto=False` withholds `ccf.crypto` (CCF offers it only to validate
    and apply, not to ballots and resolve).
    """
    calls = {**CRYPTO_CALLS, **DEFAULT_HOST_CALLS, **(host_calls or {})}
    answers: dict[str, dict[str, Any]] = {}
    limits = (limits or JSLimits()).at_least_defaults()
    module = module_with_exports(source)
    loaded: dict[str, dict[str, str]] = {}
    versions: dict[str, dict[str, int]] = {}
    arguments = json.dumps(args)
    call = f"JSON.stringify(__call(__exports, {json.dumps(function)}, {arguments}))"
    # Math.random's seed: a function of the call, so every re-run (and every node) draws the same numbers.
    seed = int.from_bytes(hashlib.sha256(f"{function}:{arguments}".encode()).digest()[:4], "big") or 1
    # One time budget for the whole call: module evaluation, the function, and every re-run share it.
    deadline = time.monotonic() + limits.max_execution_time_ms / 1000
    for _ in range(_MAX_RELOADS):
        ctx = quickjs.Context()
        ctx.set_memory_limit(limits.max_heap_bytes)
        ctx.set_max_stack_size(limits.max_stack_bytes)
        ctx.eval(_PRELUDE)
        ctx.eval(f"__kv.maps = {json.dumps(loaded)}; __kv.versions = {json.dumps(versions)}; "
                 f"__kv.writable = {json.dumps(writable)}; __kv.crypto = {json.dumps(crypto)}; "
                 f"__host = {json.dumps(host or {})}; __answers = {json.dumps(answers)}; __seed = {seed};")
        outcome: Any = None
        failure: JSCallFailed | None = None
        try:
            _set_remaining(ctx, deadline)
            ctx.module(module)
            _set_remaining(ctx, deadline)
            outcome = json.loads(ctx.eval(call))
        except quickjs.StackOverflow as e:
            failure = JSCallFailed(f"RangeError: {_first_line(e)}", str(e))
        except quickjs.JSException as e:
            text = str(e)
            reason = TIMEOUT_REASON if "interrupted" in text else _first_line(e)
            failure = JSCallFailed(reason, text)
        except _OutOfTime:
            failure = JSCallFailed(TIMEOUT_REASON)
        ctx.set_time_limit(-1)
        if failure is not None and failure.reason == TIMEOUT_REASON:
            raise failure  # out of budget: no re-run, whatever it asked for
        missing = json.loads(ctx.eval("JSON.stringify(__kv.missing)"))
        requests = json.loads(ctx.eval("JSON.stringify(__requests)"))
        if missing or requests:  # run again with what it asked for: the path so far may have depended on it
            for name in missing:
                loaded[name] = _map_snapshot(tx, name)
                versions[name] = _map_versions(tx, name)
            for request in requests:
                answers[request["key"]] = answer_host_call(calls, request["name"], request["args"])
            continue
        if failure is not None:
            raise failure
        if not outcome["ok"]:
            raise JSCallFailed(outcome["error"], outcome["trace"])
        writes = _write_set(json.loads(ctx.eval("JSON.stringify(__kv.writes)")))
        effects = tuple(Effect(e["name"], e["args"]) for e in json.loads(ctx.eval("JSON.stringify(__effects)")))
        return JSCallResult(outcome.get("result"), writes, effects)
    raise JSCallFailed(f"the code asked for more than {_MAX_RELOADS} maps and host calls")


class _OutOfTime(Exception):
    pass


def _set_remaining(ctx: Any, deadline: float) -> None:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise _OutOfTime
    ctx.set_time_limit(remaining)


def answer_host_call(calls: Mapping[str, HostCall], name: str, args: list[Any]) -> dict[str, Any]:
    """A host call's answer for the JavaScript: `{"value"}`, or `{"error"}` with the message it throws."""
    call = calls.get(name)
    if call is None:
        return {"error": f"{name} is not available here"}
    try:
        return {"value": call(*args)}
    except HostCallError as e:
        return {"error": f"{name}: {e}"}
    except (TypeError, ValueError, LookupError) as e:
        return {"error": f"{name}: bad arguments: {e}"}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _write_set(raw: dict[str, dict[str, str | None]]) -> WriteSet:
    return {name: {bytes.fromhex(k): None if v is None else bytes.fromhex(v) for k, v in changes.items()}
            for name, changes in raw.items()}


def apply_writes(tx: Tx, writes: WriteSet) -> None:
    """Apply a JS call's write set to the transaction."""
    for name, changes in writes.items():
        for key, value in changes.items():
            if value is None:
                tx.remove(name, key)
            else:
                tx.put(name, key, value)
