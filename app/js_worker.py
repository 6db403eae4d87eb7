"""A bundle's interpreter in a worker process of its own, so JavaScript runs on another core than the node's loop.

The node's event loop parses requests, authenticates, loads KV entries and commits; QuickJS, which is most of
a JavaScript request's work, runs here in a child process (started with this module as `__main__`). It is on the
enclave's side of the trust boundary, like the node's event loop: it is the enclave's second thread of work, and
the host never sees what crosses between them. A thread would not do: QuickJS releases the GIL while it runs, but
every return to Python waits for the loop's thread to give the GIL up (up to 5 ms while the loop is busy).

`JsWorker.start` is `Interpreter.run` split in two: the same prelude calls and outcome, but the handler's runs go
to the child while the loop goes on, and each answer is taken when it comes back. Requests are sent as they
come (the calls of one turn of the loop in one write) and the child answers them in order; because other
requests run between the runs of one request, a later run is begun afresh with everything loaded and answered
so far (`BEGIN_RUN_WITH`) rather than continued. A run reads the KV only when its answer is taken, at the
latest version (`Tx.refresh`), and `done` commits in that same call, so these transactions do not conflict with
each other. A client session's requests may all be in the child at once, but they complete in the order sent.
The time limit covers every run of a request together, measured from its first run's start in the child (the
monotonic clock is the machine's, shared by both processes).

Guarantees: a JS failure is raised as the same `JsError` class, reason and trace as in process; the child's
context is replaced after a failure, as `Interpreter.call` does; a child that dies (killed, crashed) fails the
requests it held with `JsWorkerDied` (a `JsError`), and the next request starts a new child; `close` ends the
child (so does the end of the node's process: the child exits when its input closes).
Not guaranteed: module state is per process, so it starts afresh in each child (as CCF's default, a fresh
interpreter per request, never keeps it at all).
"""

from __future__ import annotations

import asyncio
import collections
import os
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import orjson
from loguru import logger

from app.js_interpreter import (
    BEGIN_RUN,
    BEGIN_RUN_WITH,
    MAX_RUNS,
    Interpreter,
    JsAccessDenied,
    JsError,
    JsHandlerFailed,
    JsInvalidReturn,
    JsOutcome,
    JsOutOfMemory,
    JsRequest,
    JsStackOverflow,
    JsTimeout,
    RunContext,
    begin_request,
    merge_delta,
    next_step,
)
from governance.js_runtime import JSLimits

_LENGTH = struct.Struct(">I")
_DEADLINE = struct.Struct("<d")
_ERRORS: dict[str, type[JsError]] = {cls.__name__: cls for cls in (
    JsError, JsHandlerFailed, JsTimeout, JsOutOfMemory, JsStackOverflow, JsInvalidReturn, JsAccessDenied)}
SESSION_KEY = "js_worker.runs"  # where a client session keeps its runs, in its `Request.session`

Done = Callable[[JsOutcome | None, BaseException | None], None]


class JsWorkerDied(JsError):
    """The worker process ended before it answered."""


def _frame(payload: bytes) -> bytes:
    return _LENGTH.pack(len(payload)) + payload


class _SessionRuns:
    """The runs of one client session, in request order. Each may be started at once, but a run completes (reads
    the KV and commits) only after those before it, so that a session's requests take effect in the order sent."""

    __slots__ = ("runs", "replacing")

    def __init__(self) -> None:
        self.runs: collections.deque[JsRun] = collections.deque()
        self.replacing: JsRun | None = None  # a run completing: a run of the same request started now replaces it

    def add(self, run: JsRun) -> None:
        if self.replacing is not None and self.replacing in self.runs:
            self.runs[self.runs.index(self.replacing)] = run  # the request runs again, in its place
            self.replacing = None
        else:
            self.runs.append(run)

    def is_next(self, run: JsRun) -> bool:
        return self.runs[0] is run

    def completed(self, run: JsRun) -> None:
        self.replacing = None
        if run in self.runs:
            self.runs.remove(run)
        if self.runs and self.runs[0].parked:
            self.runs[0].resume()


class JsRun:
    """One request's runs in the worker: each answer is taken on the loop (entries loaded, host calls answered, at
    the latest version), until the outcome, which `done` gets at once (so the transaction commits in that call)."""

    __slots__ = ("worker", "begin", "context", "done", "order", "runs", "given", "deadline", "text", "parked")

    def __init__(self, worker: JsWorker, begin: tuple[dict[str, Any], str | None, str | None, str | None],
                 context: RunContext, done: Done, order: _SessionRuns | None) -> None:
        self.worker = worker
        self.begin = begin
        self.context = context
        self.done = done
        self.order = order
        self.runs = 1
        self.given: dict[str, Any] = {}
        self.deadline: float | None = None
        self.text: bytes = b""
        self.parked = False  # answered, waiting for the session's runs before it to complete
        if order is not None:
            order.add(self)

    def answered(self, answer: bytes) -> None:
        """The child's answer: `o`, the deadline (8 bytes) and the outcome's JSON, or `e` and the error's."""
        if answer[:1] != b"o":
            kind, reason, trace = orjson.loads(answer[1:])
            self._complete(None, _ERRORS.get(kind, JsHandlerFailed)(reason, trace))
            return
        (self.deadline,) = _DEADLINE.unpack_from(answer, 1)
        self.text = answer[1 + _DEADLINE.size:]
        if self.order is not None and not self.order.is_next(self):
            self.parked = True
            return
        self._take()

    def resume(self) -> None:
        self.parked = False
        self._take()

    def _take(self) -> None:
        try:
            # Other transactions committed while the run waited its turn: what the request read so far must still
            # hold (or it runs again), and what it loads now is read at the latest version; its commit follows in
            # this same call, so it cannot conflict.
            if self.runs == 1 or not self.context.tx.readonly:
                self.context.tx.refresh()  # a read-only request keeps the state its loads were read at
            step = next_step(self.text, self.context, self.runs)
        except Exception as e:  # a JsError, or a conflict (the request runs again), or a bug: dispatch decides
            self._complete(None, e)
            return
        if isinstance(step, JsOutcome):
            self._complete(step, None)
            return
        merge_delta(self.given, step)
        self.runs += 1
        if self.runs > MAX_RUNS:
            self._complete(None, JsHandlerFailed(f"the handler asked for more than {MAX_RUNS} loads and host calls"))
            return
        self.worker.send(BEGIN_RUN_WITH, self.begin, self.given, self.deadline, self)

    def _complete(self, outcome: JsOutcome | None, error: BaseException | None) -> None:
        order = self.order
        if order is None:
            self.done(outcome, error)
            return
        order.replacing = self
        try:
            self.done(outcome, error)
        finally:
            order.completed(self)


def _deliver(run: JsRun, answer: bytes) -> None:
    """Hand a run its answer; a failure there is that run's alone (the answers after it still go to theirs)."""
    try:
        run.answered(answer)
    except Exception as e:
        logger.opt(exception=e).error("a JavaScript run's answer could not be taken")


class JsWorker:
    """One bundle's modules, run under `limits` in a child process (started at the first request)."""

    def __init__(self, modules: Mapping[str, str], limits: JSLimits) -> None:
        self.modules = dict(modules)
        self.limits = limits
        self._process: subprocess.Popen[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiting: collections.deque[JsRun] = collections.deque()  # sent, in order, not answered yet
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._writer_armed = False
        self._in = bytearray()
        self._retired = False

    def start(self, module: str, function: str, request: JsRequest, mode: str, context: RunContext, done: Done,
              session: dict[str, object] | None) -> None:
        """Run the handler; `done(outcome, None)` or `done(None, error)` is called on the loop once it completes
        (after the runs of the session's earlier requests)."""
        order: _SessionRuns | None = None
        if session is not None:
            kept = session.get(SESSION_KEY)
            order = kept if isinstance(kept, _SessionRuns) else _SessionRuns()
            session[SESSION_KEY] = order
        run = JsRun(self, begin_request(module, function, request, mode, context), context, done, order)
        try:
            self.send(BEGIN_RUN, run.begin, None, None, run)
        except BaseException:
            if order is not None:
                order.completed(run)  # it will never complete: the session's next requests must not wait for it
            raise

    def send(self, function: str, begin: tuple[dict[str, Any], str | None, str | None, str | None],
             given: dict[str, Any] | None, deadline: float | None, run: JsRun) -> None:
        """Queue a call for the child: the request's environment and what its earlier runs were given travel as
        JSON values, made text by the child (off the loop)."""
        if self._process is None or self._loop is not asyncio.get_running_loop():
            self._ended()  # none yet, or one serving a loop that is gone (another asyncio.run): start afresh
            self._spawn()
        assert self._loop is not None
        frame = _frame(orjson.dumps([function, *begin, given, deadline]))  # first: a run waits only once sent
        self._waiting.append(run)
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _spawn(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        process = subprocess.Popen([sys.executable, "-m", "app.js_worker"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        os.set_blocking(process.stdin.fileno(), False)
        os.set_blocking(process.stdout.fileno(), False)
        loop.add_reader(process.stdout.fileno(), self._readable)
        self._process = process
        limits = self.limits
        self._out.insert(0, _frame(orjson.dumps({"modules": self.modules, "limits": [
            limits.max_heap_bytes, limits.max_stack_bytes, limits.max_execution_time_ms]})))

    def _flush(self) -> None:
        """Write what is queued for the child: one write for all the calls of a turn of the loop."""
        self._flush_scheduled = False
        process = self._process
        if process is None or not self._out or self._writer_armed:
            return
        assert process.stdin is not None and self._loop is not None
        data = b"".join(self._out)
        self._out.clear()
        try:
            written = os.write(process.stdin.fileno(), data)
        except BlockingIOError:
            written = 0
        except OSError:
            self._ended()
            return
        if written < len(data):  # the pipe is full: the rest goes when the child has read some
            self._out.append(data[written:])
            self._writer_armed = True
            self._loop.add_writer(process.stdin.fileno(), self._writable)

    def _writable(self) -> None:
        assert self._process is not None and self._process.stdin is not None and self._loop is not None
        self._loop.remove_writer(self._process.stdin.fileno())
        self._writer_armed = False
        self._flush()

    def _readable(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        try:
            data = os.read(self._process.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._ended()
            return
        buffer = self._in
        buffer += data
        answers = []
        offset = 0
        while len(buffer) - offset >= 4:
            (length,) = _LENGTH.unpack_from(buffer, offset)
            if len(buffer) - offset - 4 < length:
                break
            answers.append(bytes(buffer[offset + 4: offset + 4 + length]))
            offset += 4 + length
        del buffer[:offset]
        for answer in answers:
            _deliver(self._waiting.popleft(), answer)
        if self._retired and not self._waiting:
            self.close()

    def _ended(self) -> None:
        """The child is gone: its runs fail, and the next request starts another."""
        waiting, self._waiting = self._waiting, collections.deque()
        self.close()
        for run in waiting:
            _deliver(run, b"e" + orjson.dumps(["JsWorkerDied", "The JavaScript worker process ended", None]))

    def retire(self) -> None:
        """End the child once it has answered what it holds (its bundle was replaced)."""
        self._retired = True
        if not self._waiting:
            self.close()

    def close(self) -> None:
        """End the child now."""
        process, self._process = self._process, None
        if process is None:
            return
        assert process.stdin is not None and process.stdout is not None and self._loop is not None
        self._loop.remove_reader(process.stdout.fileno())
        if self._writer_armed:
            self._loop.remove_writer(process.stdin.fileno())
            self._writer_armed = False
        self._out.clear()
        self._in.clear()
        process.stdin.close()
        process.stdout.close()
        process.kill()
        process.wait()


def _read_exactly(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    return data if data is not None and len(data) == size else None


def _read_frame(stream: BinaryIO) -> Any:
    head = _read_exactly(stream, 4)
    if head is None:
        return None
    payload = _read_exactly(stream, _LENGTH.unpack(head)[0])
    return None if payload is None else orjson.loads(payload)


def serve(source: BinaryIO, sink: BinaryIO) -> None:
    """The child: the bundle from the first frame, then one answer per call until its input closes."""
    setup = _read_frame(source)
    if setup is None:
        return
    heap, stack, time_ms = setup["limits"]
    interpreter = Interpreter(setup["modules"], JSLimits(max_heap_bytes=heap, max_stack_bytes=stack,
                                                         max_execution_time_ms=time_ms))
    while (request := _read_frame(source)) is not None:
        function, env, body_text, body_latin1, caller_cert, given, deadline = request
        if deadline is None:
            deadline = time.monotonic() + time_ms / 1000
        arguments: tuple[str | None, ...] = (orjson.dumps(env).decode(), body_text, body_latin1, caller_cert)
        if given is not None:
            arguments += (orjson.dumps(given).decode(),)
        try:
            answer = b"o" + _DEADLINE.pack(deadline) + interpreter.call(function, arguments, deadline).encode()
        except JsError as e:
            answer = b"e" + orjson.dumps([type(e).__name__, e.reason, e.trace])
        sink.write(_frame(answer))
        sink.flush()


if __name__ == "__main__":
    serve(sys.stdin.buffer, sys.stdout.buffer)
