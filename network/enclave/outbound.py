"""HTTPS requests the enclave makes itself (a joining node asking the service to let it in, and fetching its
snapshot), over a connection the host opens and relays: TLS and HTTP stay in the enclave, so the node's key,
the join answer (which carries the service key and ledger secrets) and the snapshot stay encrypted on the host.

One request per connection (`connection: close`); the answer is complete when its body is.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field

import httptools

from network.boundary import HostCalls
from network.enclave.tls_session import TlsSession


class OutboundError(Exception):
    """The connection failed, or closed before the whole answer arrived."""


@dataclass(frozen=True)
class OutboundAnswer:
    status: int
    headers: dict[str, str]
    body: bytes


@dataclass
class _Call:
    request: bytes
    session: TlsSession
    future: asyncio.Future[OutboundAnswer]
    parser: httptools.HttpResponseParser | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: list[bytes] = field(default_factory=list)
    sent: bool = False

    # httptools callbacks
    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        assert self.parser is not None
        if not self.future.done():
            self.future.set_result(OutboundAnswer(self.parser.get_status_code(), self.headers, b"".join(self.body)))


class OutboundCalls:
    def __init__(self, host: HostCalls, new_conn: Callable[[], int]) -> None:
        self.host = host
        self.new_conn = new_conn
        self.calls: dict[int, _Call] = {}

    async def call(self, address: str, context: ssl.SSLContext, method: str, path: str,
                   body: bytes = b"", content_type: str = "application/json") -> OutboundAnswer:
        conn = self.new_conn()
        head = [f"{method} {path} HTTP/1.1", f"host: {address}", "connection: close",
                f"content-length: {len(body)}"]
        if body:
            head.append(f"content-type: {content_type}")
        request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        future: asyncio.Future[OutboundAnswer] = asyncio.get_running_loop().create_future()
        call = _Call(request, TlsSession(context, server_side=False, send=lambda data: self.host.send(conn, data)),
                     future)
        call.parser = httptools.HttpResponseParser(call)
        self.calls[conn] = call
        self.host.connect(conn, address, None)
        try:
            return await future
        finally:
            if self.calls.pop(conn, None) is not None:
                self.host.close(conn)

    def owns(self, conn: int) -> bool:
        return conn in self.calls

    def opened(self, conn: int) -> None:
        call = self.calls.get(conn)
        if call is not None:
            call.session.start()

    def received(self, conn: int, data: bytes) -> None:
        call = self.calls.get(conn)
        if call is None or call.future.done():
            return
        try:
            plaintext = call.session.feed(data)
            if call.session.established and not call.sent:
                call.sent = True
                call.session.write(call.request)
            if plaintext:
                assert call.parser is not None
                call.parser.feed_data(plaintext)
        except (ssl.SSLError, httptools.HttpParserError) as e:
            call.future.set_exception(OutboundError(f"{type(e).__name__}: {e}"))

    def closed(self, conn: int) -> None:
        call = self.calls.pop(conn, None)
        if call is not None and not call.future.done():
            call.future.set_exception(OutboundError("the connection closed before the answer was complete"))
