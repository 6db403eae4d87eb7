"""Hosts that relay connections in memory, for testing the enclave's connection handling without sockets.

`MemoryNet` holds listeners by address; a `MemoryHost` implements the connection calls of
`network.boundary.HostCalls` and delivers everything through the net's queue, which `pump()` runs in order,
so a test decides exactly when bytes arrive (and can take a listener down).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol

from network.boundary import NODE_TO_NODE, OUTGOING


class ConnectionHandler(Protocol):
    def connection_opened(self, conn: int, interface: str, peer: str) -> None: ...

    def received(self, conn: int, data: bytes) -> None: ...

    def connection_closed(self, conn: int) -> None: ...


class MemoryNet:
    def __init__(self) -> None:
        self.listeners: dict[str, MemoryHost] = {}
        self.queue: deque[Callable[[], None]] = deque()
        self.bytes_sent = 0

    def pump(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.queue:
                return
            self.queue.popleft()()
        raise AssertionError("the connections never went quiet")


class MemoryHost:
    def __init__(self, net: MemoryNet, address: str | None = None) -> None:
        self.net = net
        self.handler: ConnectionHandler | None = None
        self.links: dict[int, tuple[MemoryHost, int]] = {}
        self._accepted = 0
        self.sent: list[bytes] = []  # every byte this host was asked to send, in order
        if address is not None:
            net.listeners[address] = self

    def _deliver(self, fn: Callable[[ConnectionHandler], None]) -> None:
        self.net.queue.append(lambda: fn(self.handler) if self.handler is not None else None)

    # --- HostCalls (connections) ---------------------------------------------------------------------

    def connect(self, conn: int, address: str, local_host: str | None) -> None:
        server = self.net.listeners.get(address)
        if server is None:
            self._deliver(lambda h: h.connection_closed(conn))
            return
        server._accepted += 1
        accepted = server._accepted
        self.links[conn] = (server, accepted)
        server.links[accepted] = (self, conn)
        server._deliver(lambda h: h.connection_opened(accepted, NODE_TO_NODE, "memory"))
        self._deliver(lambda h: h.connection_opened(conn, OUTGOING, address))

    def send(self, conn: int, data: bytes) -> None:
        self.sent.append(data)
        self.net.bytes_sent += len(data)
        other = self.links.get(conn)
        if other is not None:
            host, other_conn = other
            host._deliver(lambda h: h.received(other_conn, data))

    def close(self, conn: int) -> None:
        other = self.links.pop(conn, None)
        if other is None:
            return
        host, other_conn = other
        host.links.pop(other_conn, None)
        host._deliver(lambda h: h.connection_closed(other_conn))
        self._deliver(lambda h: h.connection_closed(conn))

    def go_down(self, address: str) -> None:
        """Stop listening and drop every connection (the node is gone)."""
        self.net.listeners.pop(address, None)
        for conn in list(self.links):
            self.close(conn)
