"""Per-link network faults between real nodes: one TCP proxy in front of each node's node-to-node port, and
each node on its own loopback address (127.0.0.2, .3, ...), so a proxy knows which node a connection comes
from and can cut chosen links (one way or both) or slow them down while the others keep working. Used by the
e2e partition tests and the chaos runs.

A link (source host, node host) is the connections the source opens to that node's proxy; cutting it closes
them and refuses new ones until healed; slowing it delays every chunk of bytes on them, both ways."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LinkProxies:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.cut: set[tuple[str, str]] = set()  # (source host, proxied node host)
        self.delays: dict[tuple[str, str], float] = {}  # seconds added to each chunk of bytes on a link
        self.open: list[tuple[str, str, asyncio.StreamWriter, asyncio.StreamWriter]] = []
        self.servers: list[asyncio.Server] = []

    def _run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=10)

    def add(self, listen: str, target: str) -> None:
        """Proxy `listen` (host:port, the address the others use) to `target` (where the node binds)."""
        host, _, port = listen.rpartition(":")
        to_host, _, to_port = target.rpartition(":")

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            source = writer.get_extra_info("peername")[0]
            if (source, host) in self.cut:
                writer.close()
                return
            try:
                up_reader, up_writer = await asyncio.open_connection(to_host, int(to_port))
            except OSError:
                writer.close()
                return
            self.open.append((source, host, writer, up_writer))
            delay = lambda: self.delays.get((source, host), 0.0)  # noqa: E731 - read at each chunk
            await asyncio.gather(_pipe(reader, up_writer, delay), _pipe(up_reader, writer, delay))

        async def start() -> None:
            self.servers.append(await asyncio.start_server(serve, host, int(port)))

        self._run(start())

    def cut_links(self, pairs: set[tuple[str, str]]) -> None:
        """Drop every connection from source host to node host, now and until healed."""
        async def apply() -> None:
            self.cut |= pairs
            for source, host, a, b in list(self.open):
                if (source, host) in pairs:
                    a.close()
                    b.close()
        self._run(apply())

    def slow_links(self, pairs: set[tuple[str, str]], seconds: float) -> None:
        """Delay every chunk of bytes on these links by `seconds`, until healed."""
        async def apply() -> None:
            for pair in pairs:
                self.delays[pair] = seconds
        self._run(apply())

    def heal(self) -> None:
        async def apply() -> None:
            self.cut.clear()
            self.delays.clear()
        self._run(apply())

    def close(self) -> None:
        async def stop() -> None:
            for server in self.servers:
                server.close()
            for _, _, a, b in self.open:
                a.close()
                b.close()
        self._run(stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: Callable[[], float]) -> None:
    with contextlib.suppress(OSError, asyncio.IncompleteReadError, ConnectionError):
        while data := await reader.read(65536):
            if (seconds := delay()) > 0:
                await asyncio.sleep(seconds)
            if writer.is_closing():  # the link was cut while this chunk was read or delayed: writing to the
                break  # closed transport raised out of asyncio's own error path (its socket and loop were gone)
            writer.write(data)
            await writer.drain()
    writer.close()
