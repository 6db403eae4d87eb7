"""The host writes what the enclave sends at the end of the loop's turn: together per connection, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from network.host.config import parse_config
from network.host.node import NodeHost, _Relay

pytestmark = pytest.mark.unit


class _Transport:
    def __init__(self, log: list[tuple[str, int, bytes]], conn: int) -> None:
        self.log, self.conn, self.closing = log, conn, False

    def write(self, data: bytes) -> None:
        self.log.append(("write", self.conn, data))

    def close(self) -> None:
        self.closing = True
        self.log.append(("close", self.conn, b""))

    def is_closing(self) -> bool:
        return self.closing


class _Enclave:
    """Answers each input at once, as the in-process enclave does, and schedules its own end of turn."""

    def __init__(self, host: NodeHost, log: list[tuple[str, int, bytes]]) -> None:
        self.host, self.log = host, log

    def received(self, conn: int, data: bytes) -> None:
        assert self.host.loop is not None
        self.host.loop.call_soon(lambda: self.log.append(("turn ended", conn, b"")))
        self.host.send(conn, b"answer to " + data)


Log = list[tuple[str, int, bytes]]


def _run(tmp_path: Path, steps: Callable[[NodeHost, dict[int, _Transport], Log], Awaitable[None]]) -> Log:
    """`steps` on a host with connections 1 and 2 (fake transports) and an enclave that answers at once, inside a
    running loop; then what was written, closed and ended, in order."""
    async def scenario() -> Log:
        log: Log = []
        host = NodeHost(parse_config({"data_dir": "node", "service_certificate_file": "cert.pem"}, str(tmp_path)))
        host.loop = asyncio.get_running_loop()
        transports = {}
        for conn in (1, 2):
            relay = _Relay(host, conn, "rpc")
            transports[conn] = relay.transport = _Transport(log, conn)  # type: ignore[assignment]
            host.connections[conn] = relay
        host.attach(_Enclave(host, log))  # type: ignore[arg-type]
        await steps(host, transports, log)
        await asyncio.sleep(0)
        return log

    return asyncio.run(scenario())


def test_a_turn_s_first_write_goes_at_once_the_rest_after_its_reads_together_per_connection_then_at_once(
        tmp_path: Path) -> None:
    async def steps(host: NodeHost, transports: dict[int, _Transport], log: Log) -> None:
        host.send_at_turn_end()  # as data arriving does
        host.send(1, b"a")  # the first: at once (one client's answer waits for nothing)
        assert log == [("write", 1, b"a")]
        host.send(2, b"x")
        host.send(1, b"b")
        host.send(1, b"c")
        host.send(3, b"to no connection")
        assert log == [("write", 1, b"a")]  # the others wait for the turn's reads to be handled
        await asyncio.sleep(0)
        assert log == [("write", 1, b"a"), ("write", 2, b"x"), ("write", 1, b"bc")]
        host.send(2, b"y")  # after them (the enclave's end of turn, say): at once
        assert log[-1] == ("write", 2, b"y")
        host.send_at_turn_end()  # the next turn's first write goes at once again
        host.send(2, b"z")
        assert log[-1] == ("write", 2, b"z")

    assert _run(tmp_path, steps) == [("write", 1, b"a"), ("write", 2, b"x"), ("write", 1, b"bc"),
                                      ("write", 2, b"y"), ("write", 2, b"z")]


def test_a_close_writes_what_waits_for_its_connection_first_and_a_closing_connection_gets_nothing(
        tmp_path: Path) -> None:
    async def steps(host: NodeHost, transports: dict[int, _Transport], log: Log) -> None:
        host.send_at_turn_end()
        host.send(2, b"the turn's first write")
        host.send(1, b"last words")
        host.send(2, b"for a connection closing meanwhile")
        transports[2].closing = True
        host.close(1)
        assert log == [("write", 2, b"the turn's first write"), ("write", 1, b"last words"), ("close", 1, b"")]

    assert _run(tmp_path, steps) == [("write", 2, b"the turn's first write"), ("write", 1, b"last words"),
                                      ("close", 1, b"")]


def test_answers_to_a_turn_s_reads_go_out_before_the_enclave_s_end_of_turn_work(tmp_path: Path) -> None:
    async def steps(host: NodeHost, transports: dict[int, _Transport], log: Log) -> None:
        host.connections[1].data_received(b"r1")
        host.connections[2].data_received(b"r2")

    assert _run(tmp_path, steps) == [("write", 1, b"answer to r1"), ("write", 2, b"answer to r2"),
                                      ("turn ended", 1, b""), ("turn ended", 2, b"")]
