"""The enclave in its own process: `python -m network.enclave.process --fd N`, started by the host.

The host hands over one end of a socket pair. Each host call (`boundary.EnclaveCalls`) arrives as a frame
and runs on this process's event loop; each call the enclave makes of its host (`boundary.HostCalls`, and
the ledger files' methods) leaves as a frame. One-way calls are written and forgotten; for the calls that
answer (`boundary.ANSWERED`) the enclave waits for the answer, keeping any host call that arrives meanwhile
for its next turn, so that the enclave is never re-entered in the middle of its work.

What the enclave does in this process that the host would do in-process: it forks its own snapshot and
replay workers (`network.forking`), which write snapshot files directly, and reads the virtual sealing key.
Frames that are not declared calls end the process: the host is the only peer, and a host that sends
anything else is not one to serve.
"""

from __future__ import annotations

import argparse
import asyncio
import select
import signal
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

from loguru import logger

from ledger.errors import LedgerFileError
from ledger.files import LedgerFiles
from network.boundary import (
    ANSWER,
    ASK,
    CALL,
    ENCLAVE_CALLS,
    EnclaveStart,
    decode_frames,
    encode_call,
)
from network.enclave.runtime import EnclaveRuntime
from network.forking import Forks, RunsForks
from network.logs import configure_logging

_FROM_HOST = frozenset(ENCLAVE_CALLS)
# Bytes taken from the host per turn of the loop: what one turn can make of them (answers, entries) stays small
READ_SIZE = 64 * 1024


class HostLink(RunsForks):
    """`boundary.HostCalls` over the socket, and the loop that feeds host calls to the runtime."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.kept: deque[tuple[str, list[Any]]] = deque()
        self.runtime: EnclaveRuntime | None = None
        self.forks: Forks | None = None
        self.closed: asyncio.Future[None] | None = None
        self._asks = 0
        self._out: list[bytes] = []
        self._flush_scheduled = False

    # --- frames ------------------------------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        """Write all of `data`, waiting while the host's side is full (the socket is non-blocking: the event
        loop watches it). The host never blocks on its writes, so it always reads in the end."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view):]
            except BlockingIOError:
                select.select([], [self.sock], [])

    def _recv(self) -> bytes:
        while True:
            try:
                return self.sock.recv(1 << 20)
            except BlockingIOError:
                select.select([self.sock], [], [])

    def _call(self, name: str, *args: Any) -> None:
        """One-way: kept with the others of this turn of the loop and written in one go at its end."""
        self._out.append(encode_call(CALL, 0, name, args))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            self._write(data)

    def ask(self, name: str, *args: Any) -> Any:
        self._asks += 1
        ident = self._asks
        self._out.append(encode_call(ASK, ident, name, args))  # after the one-way calls before it, in order
        self._flush()
        while True:
            data = self._recv()
            if not data:
                raise ConnectionError("the host closed the boundary")
            self.buffer += data
            answer = None
            for kind, frame_id, frame_name, frame_args in decode_frames(self.buffer, _FROM_HOST):
                if kind == ANSWER and frame_id == ident:
                    answer = frame_args
                else:
                    self.kept.append((frame_name, frame_args))
            if self.kept:
                asyncio.get_running_loop().call_soon(self._run_kept)
            if answer is not None:
                outcome, value = answer
                if outcome != "ok":
                    raise LedgerFileError(str(value))
                return value

    def readable(self) -> None:
        try:
            data = self.sock.recv(READ_SIZE)
        except BlockingIOError:
            return
        if not data:
            if self.closed is not None and not self.closed.done():
                self.closed.set_result(None)
            return
        self.buffer += data
        for kind, _ident, name, args in decode_frames(self.buffer, _FROM_HOST):
            if kind != ANSWER:
                self.kept.append((name, args))
        self._run_kept()

    def _run_kept(self) -> None:
        runtime = self.runtime
        assert runtime is not None
        while self.kept:
            name, args = self.kept.popleft()
            if name == "start":
                (start,) = args
                if not isinstance(start, EnclaveStart):
                    raise TypeError("start takes an EnclaveStart")
                self.forks = Forks(asyncio.get_running_loop(), start.snapshot_dir)
                runtime.start(start, RemoteLedgerFiles(self))
            else:
                getattr(runtime, name)(*args)

    # --- HostCalls -----------------------------------------------------------------------------------------

    def started(self, node_id: str, service_certificate_pem: str) -> None:
        self._call("started", node_id, service_certificate_pem)

    def start_failed(self, message: str) -> None:
        self._call("start_failed", message)

    def stopped(self) -> None:
        if self.forks is not None:
            self.forks.abandon()  # an unfinished snapshot is killed and its partial file removed, as the host does
        self._call("stopped")

    def failed(self, reason: str) -> None:
        self._call("failed", reason)

    def send(self, conn: int, data: bytes) -> None:
        self._call("send", conn, data)

    def close(self, conn: int) -> None:
        self._call("close", conn)

    def connect(self, conn: int, address: str, local_host: str | None) -> None:
        self._call("connect", conn, address, local_host)

    def pause_reading(self, conn: int) -> None:
        self._call("pause_reading", conn)

    def resume_reading(self, conn: int) -> None:
        self._call("resume_reading", conn)

    def store_sealed(self, blob: bytes) -> None:
        self._call("store_sealed", blob)

    def persist_consensus(self, term: int, voted_for: str | None) -> None:
        self._call("persist_consensus", term, voted_for)

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        found = self.ask("latest_snapshot")
        return (str(found[0]), bytes(found[1])) if found else None

    def snapshot_at(self, seqno: int) -> bytes | None:
        found = self.ask("snapshot_at", seqno)
        return bytes(found) if found is not None else None

    def store_snapshot(self, name: str, data: bytes) -> None:
        self._call("store_snapshot", name, data)

    def commit_snapshot(self, seqno: int, evidence_seqno: int, receipt_json: bytes) -> None:
        self._call("commit_snapshot", seqno, evidence_seqno, receipt_json)


class RemoteLedgerFiles(LedgerFiles):
    """The host's ledger files, seen from the enclave's process: appends and commits are one-way frames, the
    rest are answered. Only the methods the enclave uses are served; the seqnos are mirrored here, and so are the
    entries not yet committed (up to `RECENT_BYTES` of them), which a primary replicates as it writes them:
    reading those back needs no round trip to the host. Committed entries are read from the host's files (and
    verified by whoever reads them), as a lagging backup or a historical query needs them."""

    RECENT_BYTES = 4 << 20

    def __init__(self, link: HostLink) -> None:  # not LedgerFiles.__init__: nothing is opened here
        self._link = link
        self._recent: deque[bytes] = deque()  # the entries up to `_last`, newest last
        self._recent_bytes = 0
        self._refresh()

    def _refresh(self) -> None:
        first, last, committed, directory = self._link.ask("files.state")
        self._first, self._last, self._committed, self.directory = int(first), int(last), int(committed), directory

    @property
    def first_seqno(self) -> int:
        return self._first

    @property
    def last_seqno(self) -> int:
        return self._last

    @property
    def committed_seqno(self) -> int:
        return self._committed

    def append(self, entry: bytes) -> int:
        self._link._call("files.append", entry)
        self._last += 1
        if self._first == 0:
            self._first = self._last
        self._recent.append(entry)
        self._recent_bytes += len(entry)
        while self._recent_bytes > self.RECENT_BYTES and len(self._recent) > 1:
            self._recent_bytes -= len(self._recent.popleft())
        return self._last

    def flush(self) -> None:
        self._link.ask("files.flush")

    def flush_in_background(self) -> Callable[[], None] | None:
        self.flush()  # the host's files sync on the host's thread: the answer means durable
        return None

    def commit(self, seqno: int) -> None:
        self._link._call("files.commit", seqno)
        self._committed = max(self._committed, min(seqno, self._last))
        while self._recent and self._last - len(self._recent) + 1 <= self._committed:
            self._recent_bytes -= len(self._recent.popleft())

    def truncate(self, seqno: int) -> None:
        self._link.ask("files.truncate", seqno)
        self._forget_recent()
        self._refresh()

    def _forget_recent(self) -> None:
        self._recent.clear()
        self._recent_bytes = 0

    def read(self, seqno: int) -> bytes:
        return bytes(self._link.ask("files.read", seqno))

    def read_range(self, start: int, end: int) -> list[bytes]:
        first_recent = self._last - len(self._recent) + 1
        if self._recent and first_recent <= start <= end <= self._last:
            return [self._recent[s - first_recent] for s in range(start, end + 1)]
        return [bytes(e) for e in self._link.ask("files.read_range", start, end)]

    def chunk_end_of(self, seqno: int) -> int:
        return int(self._link.ask("files.chunk_end_of", seqno))

    def chunk_file_of(self, seqno: int) -> str:
        return str(self._link.ask("files.chunk_file_of", seqno))

    def chunk_spans(self) -> list[tuple[str, int, int, bool]]:
        return [(str(p), int(s), int(e), bool(c)) for p, s, e, c in self._link.ask("files.chunk_spans")]

    def discard_after(self, seqno: int) -> list[str]:
        names = [str(n) for n in self._link.ask("files.discard_after", seqno)]
        self._forget_recent()
        self._refresh()
        return names

    def start_after(self, seqno: int) -> None:
        self._link.ask("files.start_after", seqno)
        self._forget_recent()
        self._refresh()

    def close(self) -> None:
        """The host closes its files."""


async def serve(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    link = HostLink(sock)
    link.runtime = EnclaveRuntime(link)
    link.closed = loop.create_future()
    loop.add_reader(sock.fileno(), link.readable)
    await link.closed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m network.enclave.process",
                                     description="The enclave of a node, in its own process (started by the host).")
    parser.add_argument("--fd", type=int, required=True, help="the enclave's end of the host's socket pair")
    parser.add_argument("--log-format", default="text", choices=("text", "json"))
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    configure_logging(args.log_format, args.log_level)
    # The host alone ends this process (it asks the enclave to sign and flush, then closes the link; a host that
    # dies closes it too). A terminal's Ctrl-C, or a SIGTERM to the process group, reaches this process as well:
    # obeying it would kill the enclave in the middle of the host's orderly stop.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    sock.setblocking(False)
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:
        pass
    try:
        asyncio.run(serve(sock))
    except ConnectionError as e:
        logger.info(f"enclave process: {e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
