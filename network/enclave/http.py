"""HTTP/1.1 server connections on asyncio, parsed with `httptools` (the node's frontends sit on this).

Guarantees, per connection:
- keep-alive, and pipelining with answers written in request order (requests are handled one at a time);
- limits: headers beyond `max_header_bytes` get 431, a body beyond `max_body_bytes` gets 413, a request that
  does not parse gets 400; each of these closes the connection after the answer;
- an idle connection (no request in progress) is closed after `idle_timeout` seconds; a request whose
  headers and body do not all arrive within `request_timeout` seconds of its first byte gets 408 and the
  connection is closed;
- errors use CCF's body `{"error": {"code", "message"}}`; a handler's exception is logged and answered 500;
- answers to HEAD carry no body;
- with TLS, the client's certificate (if it sent one) is handed to the handler as DER bytes.

Not here: routing, authentication and TLS configuration (the frontends and the node's TLS setup).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import cast

import httptools
import orjson
from loguru import logger

from network.boundary import HttpLimits


@dataclass(frozen=True)
class Request:
    method: str
    target: str  # the request target as sent (path and query)
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    body: bytes
    peer_cert: bytes | None = None  # the client's TLS certificate (DER), if it presented one
    session: dict[str, object] | None = field(default=None, compare=False)  # per connection, for the handler
    # Requests before it in the session are still being answered (each `Pending`): the handler may start it only
    # if it answers `Pending` too (and completes it after them); otherwise it answers ANSWER_LATER, to run later.
    after_pending: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, value: object, headers: tuple[tuple[str, str], ...] = ()) -> Response:
        return cls(status, orjson.dumps(value), (("content-type", "application/json"), *headers))

    @classmethod
    def error(cls, status: int, code: str, message: str) -> Response:
        return cls.json(status, {"error": {"code": code, "message": message}})


Handler = Callable[[Request], Awaitable[Response]]
SyncHandler = Callable[[Request], Response]
# A sync handler returns this to have the request answered by the async handler instead, in order.
ANSWER_LATER = Response(0)


@dataclass(frozen=True)
class Pending(Response):
    """A response still being made off the event loop (a handler running in a worker): `future` gives it.

    Handlers return it through the sync path too; the connection then answers it in order, after the requests
    before it and before those after it."""

    future: asyncio.Future[Response] = field(default=None, compare=False)  # type: ignore[arg-type]

    @classmethod
    def ready(cls, response: Response) -> Pending:
        """A response already made, to be sent in its turn."""
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        future.set_result(response)
        return cls(0, future=future)

    async def wait(self) -> Response:
        """The response; a waiter cancelled (its client gone) leaves the response to be made all the same."""
        if self.future.done():
            return self.future.result()
        return await asyncio.shield(self.future)

    def then(self, done: Callable[[Response], None]) -> None:
        """Call `done` with the response once it is ready (on the event loop)."""
        self.future.add_done_callback(lambda future: done(future.result()))


def internal_error(request: Request, error: Exception) -> Response:
    """CCF's 500 for a bug of the node's own while answering `request` (logged with its trace)."""
    logger.opt(exception=error).error(
        f"unhandled error answering {request.method} {request.target.split('?', 1)[0]}")
    return Response.error(500, "InternalError", f"Unhandled error: {type(error).__name__}")


def encode_response(response: Response, keep_alive: bool, head: bool = False) -> bytes:
    """The response's bytes; an answer to HEAD has no body (its content-length is the body's)."""
    try:
        reason = HTTPStatus(response.status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {response.status} {reason}"]
    names = set()
    for name, value in response.headers:
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    lines.append(f"content-length: {len(response.body)}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head else response.body)


class _Reject(Exception):
    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class SessionMetrics:
    """Open connections now and at most, and requests refused by the parser or the limits (`/node/metrics`)."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.errors = {"parsing": 0, "request_payload_too_large": 0, "request_header_too_large": 0}  # CCF's
        # sessions refused at the caps, or closed because their TLS handshake or a request did not end in time
        self.refused_sessions = {"soft_cap": 0, "hard_cap": 0, "tls_handshake_timeout": 0, "request_timeout": 0}

    def opened(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def closed(self) -> None:
        self.active -= 1

    def refused(self, status: int) -> None:
        if status == 408:
            self.refused_sessions["request_timeout"] += 1
            return
        key = {413: "request_payload_too_large", 431: "request_header_too_large"}.get(status, "parsing")
        self.errors[key] += 1


class HttpConnection(asyncio.Protocol):
    """One client connection: parse, queue, answer in order."""

    def __init__(self, handler: Handler, limits: HttpLimits, metrics: SessionMetrics | None = None,
                 sync_handler: SyncHandler | None = None) -> None:
        self.handler = handler
        # A handler that answers at once is called while parsing; the answers to everything one read held
        # go out in a single write (one TLS record, one send) instead of one task switch and write each.
        self.sync_handler = sync_handler
        self.out: list[bytes] = []
        self.close_after_out = False
        self.flush_scheduled = False
        # Requests queued or being answered, and how many of those are not `Pending` (handled in turn by the
        # task): while all are `Pending`, a new request may still be started at once (`Request.after_pending`).
        self.unanswered = 0
        self.plain_unanswered = 0
        self.session: dict[str, object] = {}
        self.limits = limits
        self.metrics = metrics or SessionMetrics()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.peer_cert: bytes | None = None
        # requests with their keep-alive flag, in order; a Response is a final answer (then close)
        self.queue: asyncio.Queue[tuple[Request, bool, Pending | None] | Response] = asyncio.Queue()
        self.worker: asyncio.Task[None] | None = None
        # The idle timer is armed once and not moved for each request (a timer made and cancelled per request cost
        # several percent of a busy node's time): when it fires, it closes the connection if it has been idle for
        # `idle_timeout` since `idle_since`, or waits the rest. `idle_since` is None while a request is in progress.
        self.idle: asyncio.TimerHandle | None = None
        self.idle_since: float | None = None
        self.loop: asyncio.AbstractEventLoop | None = None  # the connection's, once made
        # A request must end `request_timeout` after the read that began it; the timer is armed only for one
        # still incomplete once that read is parsed (most requests begin and end in one read: no timer at all).
        self.in_request = False
        self.request_timer: asyncio.TimerHandle | None = None
        self.closing = False
        self._reset_message()

    def _reset_message(self) -> None:
        self.url = b""
        self.headers: dict[str, str] = {}
        self.header_bytes = 0
        self.body: list[bytes] = []
        self.body_bytes = 0
        self.last_field = b""

    # --- asyncio.Protocol --------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it
        self.transport = cast(asyncio.Transport, transport)
        self.loop = asyncio.get_running_loop()
        self.metrics.opened()
        ssl_object = transport.get_extra_info("ssl_object")
        if isinstance(ssl_object, ssl.SSLObject):
            self.peer_cert = ssl_object.getpeercert(binary_form=True)
        self.worker = asyncio.get_running_loop().create_task(self._answer_in_order())
        self._arm_idle_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.metrics.closed()
        self.closing = True
        if self.idle is not None:
            self.idle.cancel()
        if self.request_timer is not None:
            self.request_timer.cancel()
        if self.worker is not None:
            self.worker.cancel()

    def data_received(self, data: bytes) -> None:
        if self.closing:
            return
        self.idle_since = None
        try:
            self.parser.feed_data(data)
        except _Reject as e:
            self._fail(e.response)
        except httptools.HttpParserCallbackError as e:
            # httptools wraps what a callback raised: a limit we enforce, or (never expected) a bug here
            cause = e.__context__
            self._fail(cause.response if isinstance(cause, _Reject) else
                       Response.error(500, "InternalError", "Request parsing failed"))
        except httptools.HttpParserUpgrade:
            self._fail(Response.error(400, "InvalidInput", "Protocol upgrades are not supported"))
        except httptools.HttpParserError as e:
            self._fail(Response.error(400, "InvalidInput", f"Malformed HTTP request: {e}"))
        finally:
            self._flush_out()  # before any rejection queued above: answers stay in request order
        if self.in_request and self.request_timer is None and not self.closing:
            self.request_timer = asyncio.get_running_loop().call_later(self.limits.request_timeout,
                                                                       self._on_request_timeout)
        if self.queue.qsize() >= self.limits.max_pipelined and self.transport is not None:
            self.transport.pause_reading()

    # --- httptools callbacks -----------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self.in_request = True

    def on_url(self, url: bytes) -> None:
        self.url += url
        self._count_header_bytes(len(url))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_header_bytes(len(name) + len(value))
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        self.headers[key] = f"{self.headers[key]}, {text}" if key in self.headers else text

    def _count_header_bytes(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_header_bytes:
            raise _Reject(Response.error(431, "RequestHeaderTooLarge",
                                         f"Request headers are larger than {self.limits.max_header_bytes} bytes"))

    def on_headers_complete(self) -> None:
        length = self.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.limits.max_body_bytes:
            raise _Reject(Response.error(413, "RequestBodyTooLarge",
                                         f"Request body is larger than {self.limits.max_body_bytes} bytes"))

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)
        if self.body_bytes > self.limits.max_body_bytes:
            raise _Reject(Response.error(413, "RequestBodyTooLarge",
                                         f"Request body is larger than {self.limits.max_body_bytes} bytes"))
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.in_request = False
        if self.request_timer is not None:
            self.request_timer.cancel()
            self.request_timer = None
        if self.close_after_out:
            return  # a request after one that asked to close the connection: ignored
        method = self.parser.get_method().decode("ascii", "replace")
        ahead = self.unanswered > 0
        request = Request(method, self.url.decode("latin-1"), self.headers, b"".join(self.body), self.peer_cert,
                          self.session, ahead)
        keep_alive = bool(self.parser.should_keep_alive())
        self._reset_message()
        if self.sync_handler is not None and self.plain_unanswered == 0:
            try:
                response = self.sync_handler(request)
            except Exception as e:  # the handler's bug must not kill the connection silently
                response = internal_error(request, e)
            if response is ANSWER_LATER and ahead:
                request = replace(request, after_pending=False)  # it runs in its turn, after those before it
            elif response is not ANSWER_LATER:
                if not ahead and not isinstance(response, Pending):
                    self.out.append(encode_response(response, keep_alive, head=method == "HEAD"))
                    self.close_after_out = not keep_alive
                    return
                self._enqueue((request, keep_alive, response if isinstance(response, Pending) else
                               Pending.ready(response)))
                return
        elif ahead:
            request = replace(request, after_pending=False)
        self._enqueue((request, keep_alive, None))

    def _enqueue(self, item: tuple[Request, bool, Pending | None] | Response) -> None:
        self.unanswered += 1
        if not isinstance(item, tuple) or item[2] is None:
            self.plain_unanswered += 1
        self.queue.put_nowait(item)

    def _flush_soon(self) -> None:
        """Flush once the answers ready in this turn of the loop are all in `out` (one write for them all)."""
        if not self.flush_scheduled:
            self.flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self.flush_scheduled = False
        if self.transport is not None and not self.transport.is_closing():
            self._flush_out()

    def _flush_out(self) -> None:
        if not self.out or self.transport is None:
            return
        self.transport.write(b"".join(self.out))
        self.out.clear()
        if self.close_after_out:
            self.closing = True
            self.transport.close()
        elif self.unanswered == 0 and not self.in_request:  # (a request begun in the same read is not idle)
            self._arm_idle_timer()

    # --- answering ---------------------------------------------------------------------------------

    async def _answer_in_order(self) -> None:
        while True:
            item = await self.queue.get()
            if self.transport is None or self.transport.is_closing():
                return
            if isinstance(item, Response):
                self.out.append(encode_response(item, keep_alive=False))
                self.close_after_out = True
                self._flush_out()
                return
            request, keep_alive, pending = item
            try:
                response = await (self.handler(request) if pending is None else pending.wait())
            except Exception as e:  # the handler's bug must not kill the connection silently
                response = internal_error(request, e)
            self.unanswered -= 1
            if pending is None:
                self.plain_unanswered -= 1
            if self.transport.is_closing():
                return
            self.out.append(encode_response(response, keep_alive, head=request.method == "HEAD"))
            if not keep_alive:
                self.close_after_out = True
                self._flush_out()
                return
            if self.unanswered == 0:
                self._flush_out()
            else:
                self._flush_soon()
            if self.queue.qsize() < self.limits.max_pipelined:
                self.transport.resume_reading()

    def _fail(self, response: Response) -> None:
        """Answer after the requests already queued (in order), then close."""
        self.metrics.refused(response.status)
        self.closing = True
        if self.transport is not None:
            self.transport.pause_reading()
        self._enqueue(response)

    def _on_request_timeout(self) -> None:
        """A request started and did not end in time (slow headers or body): 408, then close."""
        self.request_timer = None
        if not self.closing:
            self._fail(Response.error(408, "RequestTimeout",
                                      f"The request was not received within {self.limits.request_timeout:g} s"))

    def _arm_idle_timer(self) -> None:
        """The connection is idle from now: closed `idle_timeout` from now unless a request comes first."""
        loop = self.loop
        assert loop is not None, "armed once the connection is made"
        self.idle_since = loop.time()
        if self.idle is None:
            self.idle = loop.call_later(self.limits.idle_timeout, self._on_idle)

    def _on_idle(self) -> None:
        self.idle = None
        if self.transport is None or self.closing or self.idle_since is None or self.unanswered:
            return  # busy: the timer is armed again when the connection next becomes idle
        loop = self.loop
        assert loop is not None
        rest = self.idle_since + self.limits.idle_timeout - loop.time()
        if rest > 0:  # a request came and was answered since the timer was armed
            self.idle = loop.call_later(rest, self._on_idle)
        else:
            self.transport.close()


async def serve(handler: Handler, host: str, port: int, *, ssl_context: ssl.SSLContext | None = None,
                limits: HttpLimits | None = None, metrics: SessionMetrics | None = None,
                sync_handler: SyncHandler | None = None) -> asyncio.Server:
    """Listen on host:port; `port` 0 picks a free port (see `server.sockets[0].getsockname()`)."""
    chosen = limits or HttpLimits()
    shared = metrics or SessionMetrics()
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: HttpConnection(handler, chosen, shared, sync_handler), host, port,
                                    ssl=ssl_context)

