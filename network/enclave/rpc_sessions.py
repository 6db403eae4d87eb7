"""Client sessions on the RPC interface: TLS and HTTP terminated in the enclave, over bytes the host relays.

For each connection the host accepts, a `TlsSession` (server side, the node's service-endorsed certificate,
any client certificate accepted) decrypts what the host hands in, and an `HttpConnection` parses requests
from the plaintext and answers them in order; answers are encrypted before they go back to the host. The
session looks like an asyncio transport to the `HttpConnection`, so the HTTP guarantees of `http` hold as
they are: keep-alive, pipelining, limits, idle timeout.

A handshake that fails, or a record that does not decrypt, closes the connection; nothing reaches HTTP. So
does a handshake that has not finished `tls_handshake_timeout` seconds after the connection opened.

Session caps (CCF's): with `max_open_sessions_hard` sessions open, a new connection is closed at once, before
any handshake; with `max_open_sessions_soft` open, a new session completes its handshake, is answered 503
`SessionCapExhausted` and closed. Both are counted in `/node/metrics`.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable
from typing import Any

from network.boundary import HostCalls, HttpLimits
from network.enclave.http import HttpConnection, Response, SessionMetrics, encode_response
from network.enclave.tls_session import TlsSession

SESSION_CAP_EXHAUSTED = Response.error(503, "SessionCapExhausted",
                                       "Service is currently busy and cannot accept new sessions")


class RpcSession:
    """One client connection; also the transport its `HttpConnection` writes to."""

    def __init__(self, conn: int, context: ssl.SSLContext, host: HostCalls, protocol: HttpConnection,
                 peer: str, *, refuse: Response | None = None, handshake_timeout: float | None = None,
                 on_handshake_timeout: Callable[[], None] = lambda: None) -> None:
        self.conn = conn
        self.host = host
        self.peer = peer
        self.tls = TlsSession(context, server_side=True, send=lambda data: host.send(conn, data))
        self.protocol = protocol
        self.refuse = refuse  # answered at once after the handshake, then the session closes
        self._made = False
        self._closing = False
        self._on_handshake_timeout = on_handshake_timeout
        self._handshake_timer = asyncio.get_running_loop().call_later(handshake_timeout, self._handshake_expired) \
            if handshake_timeout is not None else None

    def _handshake_expired(self) -> None:
        self._handshake_timer = None
        if not self.tls.established and not self._closing:
            self._on_handshake_timeout()
            self.close()

    def received(self, data: bytes) -> None:
        if self._closing:
            return
        try:
            plaintext = self.tls.feed(data)
        except ssl.SSLError:
            self.close()
            return
        if self.tls.established and not self._made:
            self._made = True
            if self._handshake_timer is not None:
                self._handshake_timer.cancel()
                self._handshake_timer = None
            if self.refuse is not None:
                self.tls.write(encode_response(self.refuse, keep_alive=False))
                self.close()
                return
            self.protocol.connection_made(self)  # type: ignore[arg-type]
        if plaintext:
            self.protocol.data_received(plaintext)
        if self.tls.closed_by_peer:
            self.close()

    def lost(self) -> None:
        """The host says the connection is gone."""
        self._closing = True
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
        if self._made and self.refuse is None:
            self.protocol.connection_lost(None)

    # --- the transport the HttpConnection sees ------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._closing:
            self.tls.write(data)

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self.tls.close()
            self.host.close(self.conn)

    def is_closing(self) -> bool:
        return self._closing

    def pause_reading(self) -> None:
        self.host.pause_reading(self.conn)

    def resume_reading(self) -> None:
        self.host.resume_reading(self.conn)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "ssl_object":
            return self.tls.ssl_object
        if name == "peername":
            host, _, port = self.peer.rpartition(":")
            return (host, int(port)) if port.isdigit() else default
        return default


class RpcSessions:
    """The client sessions of one node, by connection id."""

    def __init__(self, context: ssl.SSLContext, host: HostCalls, new_protocol: Callable[[], HttpConnection],
                 limits: HttpLimits, metrics: SessionMetrics) -> None:
        self.context = context
        self.host = host
        self.new_protocol = new_protocol
        self.limits = limits
        self.metrics = metrics
        self.sessions: dict[int, RpcSession] = {}

    def opened(self, conn: int, peer: str) -> None:
        open_now = len(self.sessions)
        if open_now >= self.limits.max_open_sessions_hard:
            self.metrics.refused_sessions["hard_cap"] += 1
            self.host.close(conn)
            return
        refuse = None
        if open_now >= self.limits.max_open_sessions_soft:
            self.metrics.refused_sessions["soft_cap"] += 1
            refuse = SESSION_CAP_EXHAUSTED

        def timed_out() -> None:
            self.metrics.refused_sessions["tls_handshake_timeout"] += 1

        self.sessions[conn] = RpcSession(conn, self.context, self.host, self.new_protocol(), peer, refuse=refuse,
                                         handshake_timeout=self.limits.tls_handshake_timeout,
                                         on_handshake_timeout=timed_out)

    def received(self, conn: int, data: bytes) -> None:
        session = self.sessions.get(conn)
        if session is not None:
            session.received(data)

    def closed(self, conn: int) -> None:
        session = self.sessions.pop(conn, None)
        if session is not None:
            session.lost()

    def owns(self, conn: int) -> bool:
        return conn in self.sessions

    def close_all(self) -> None:
        for session in list(self.sessions.values()):
            session.close()
