"""`bench.py`'s writer connections: a write holds its place in the window until it is answered, or, with
`--until-committed`, until the commit poller has seen it committed (a synchronous client's pace)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench  # noqa: E402

pytestmark = pytest.mark.unit


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return False


def answer(seqno: int) -> bytes:
    return (f"HTTP/1.1 200 OK\r\nx-ms-ccf-transaction-id: 2.{seqno}\r\ncontent-length: 0\r\n\r\n").encode()


def connection(window: int, until_committed: bool) -> tuple[bench.Load, bench.WriterConnection, Transport]:
    load = bench.Load(b"POST %d\r\n", None, 0)
    writer = bench.WriterConnection(load, window, until_committed)
    transport = Transport()
    writer.transport = transport  # type: ignore[assignment]
    writer.fill()
    return load, writer, transport


def test_an_answer_frees_the_window_at_once_by_default() -> None:
    _, writer, transport = connection(1, until_committed=False)
    assert transport.written == [b"POST 0\r\n"]
    writer.data_received(answer(5))
    assert transport.written == [b"POST 0\r\n", b"POST 1\r\n"]


def test_with_until_committed_the_next_write_waits_for_the_commit_of_the_last() -> None:
    load, writer, transport = connection(1, until_committed=True)
    writer.data_received(answer(5))
    assert transport.written == [b"POST 0\r\n"]  # answered, not yet committed
    load.committed_up_to(4)
    assert transport.written == [b"POST 0\r\n"]
    load.committed_up_to(5)
    assert transport.written == [b"POST 0\r\n", b"POST 1\r\n"]
    assert list(load.seqnos) == [5] and load.ok == 1


def test_with_until_committed_each_commit_frees_the_places_of_the_writes_it_covers() -> None:
    load, writer, transport = connection(3, until_committed=True)
    assert len(transport.written) == 1 and transport.written[0].count(b"POST") == 3
    writer.data_received(answer(7) + answer(8) + answer(9))
    load.committed_up_to(8)  # two of the three are committed: two more are sent
    assert transport.written[1] == b"POST 3\r\nPOST 4\r\n"
    load.committed_up_to(20)
    assert transport.written[2] == b"POST 5\r\n"
    assert load.awaiting_commit == [] and writer.held == 0 and len(writer.pending) == 3


def test_each_answered_write_is_recorded_with_the_node_it_was_written_to() -> None:
    load = bench.Load(b"POST %d\r\n", None, 0)
    to_primary = bench.WriterConnection(load, 1, node=0)
    to_backup = bench.WriterConnection(load, 1, node=2)
    for writer in (to_primary, to_backup):
        writer.transport = Transport()  # type: ignore[assignment]
        writer.fill()
    to_backup.data_received(answer(7))
    to_primary.data_received(answer(8))
    assert list(load.seqnos) == [7, 8] and list(load.node) == [2, 0]
