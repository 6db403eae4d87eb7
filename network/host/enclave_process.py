"""The host's side of an enclave that runs in its own process (`pyccf-node --enclave-process`).

`EnclaveProcess` implements `boundary.EnclaveCalls` by writing each call as a frame to the enclave's process
(`python -m network.enclave.process`, started here with one end of a socket pair), and serves the enclave's
calls (`boundary.HostCalls` and the ledger files' methods) as frames arrive, answering those that wait for
an answer. The host only ever writes without blocking (its transport buffers), so the enclave, which may
block for an answer, can always be read.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from typing import TYPE_CHECKING, Any

from loguru import logger

from ledger.errors import LedgerError
from ledger.files import LedgerFiles
from network.boundary import (
    ANSWER,
    ASK,
    CALL,
    FILE_CALLS,
    HOST_CALLS,
    BoundaryError,
    EnclaveStart,
    decode_frames,
    encode_call,
)

if TYPE_CHECKING:
    from network.host.node import NodeHost

# run_snapshot and run_in_workers carry code: the enclave's process forks for them itself, they never cross
_FROM_ENCLAVE = (frozenset(HOST_CALLS) - {"run_snapshot", "run_in_workers"}) | frozenset(FILE_CALLS)
ENCLAVE_BUFFER_HIGH = 1024 * 1024  # bytes waiting for the enclave's process before the host stops reading


class _Link(asyncio.Protocol):
    def __init__(self, owner: EnclaveProcess) -> None:
        self.owner = owner
        self.buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        try:
            frames = decode_frames(self.buffer, _FROM_ENCLAVE)
        except BoundaryError as e:
            logger.error(f"the enclave process sent an undeclared frame ({e}); stopping")
            self.owner.failed()
            return
        for kind, ident, name, args in frames:
            self.owner.serve(kind, ident, name, args)

    def connection_lost(self, exc: Exception | None) -> None:
        self.owner.failed()

    # Backpressure: while the enclave has not taken what was sent to it, the host reads no connection.
    def pause_writing(self) -> None:
        self.owner.host.set_enclave_busy(True)

    def resume_writing(self) -> None:
        self.owner.host.set_enclave_busy(False)


class EnclaveProcess:
    def __init__(self, host: NodeHost, log_format: str = "text", log_level: str = "INFO") -> None:
        self.host = host
        self.files: LedgerFiles | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.transport: asyncio.Transport | None = None
        self._out: list[bytes] = []  # calls not written yet
        self._flush_scheduled = False
        self._log = (log_format, log_level)
        self._done = False

    def _launch(self) -> None:
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "network.enclave.process", "--fd", str(theirs.fileno()),
             "--log-format", self._log[0], "--log-level", self._log[1]], pass_fds=(theirs.fileno(),))
        theirs.close()

        async def connect() -> None:
            transport, _ = await loop.connect_accepted_socket(lambda: _Link(self), mine)
            transport.set_write_buffer_limits(high=ENCLAVE_BUFFER_HIGH)
            self.transport = transport
            self._flush()

        loop.create_task(connect())

    def _send(self, name: str, *args: Any) -> None:
        """Kept with the other calls of this turn of the loop and written in one go at its end."""
        self._out.append(encode_call(CALL, 0, name, args))
        if self.transport is not None and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self.transport is not None and self._out:
            self.transport.write(b"".join(self._out))
            self._out.clear()

    # --- EnclaveCalls --------------------------------------------------------------------------------------

    def start(self, start: EnclaveStart, ledger: LedgerFiles) -> None:
        self.files = ledger
        self._launch()
        self._send("start", start)

    def tick(self) -> None:
        self._send("tick")

    def connection_opened(self, conn: int, interface: str, peer: str) -> None:
        self._send("connection_opened", conn, interface, peer)

    def received(self, conn: int, data: bytes) -> None:
        self._send("received", conn, data)

    def connection_closed(self, conn: int) -> None:
        self._send("connection_closed", conn)

    def stop(self) -> None:
        self._send("stop")

    # --- the enclave's calls -------------------------------------------------------------------------------

    def serve(self, kind: int, ident: int, name: str, args: list[Any]) -> None:
        try:
            if name.startswith("files."):
                value = self._files_call(name.removeprefix("files."), args)
            else:
                value = getattr(self.host, name)(*args)
            answer: list[Any] = ["ok", value]
        except (LedgerError, OSError, ValueError) as e:
            if kind != ASK:
                logger.error(f"{name} failed in the host: {e}")
            answer = ["error", str(e)]
        if kind == ASK and self.transport is not None:
            self._flush()  # calls made before the answer go before it
            self.transport.write(encode_call(ANSWER, ident, "", tuple(answer)))

    def _files_call(self, method: str, args: list[Any]) -> Any:
        files = self.files
        assert files is not None
        if method == "state":
            return [files.first_seqno, files.last_seqno, files.committed_seqno, files.directory]
        value = getattr(files, method)(*args)
        return [list(span) for span in value] if method == "chunk_spans" else value

    def failed(self) -> None:
        """The enclave's process is gone, or broke the protocol: the node stops."""
        if self._done:
            return
        self._done = True
        self.host.start_failed("the enclave process ended")
        self.host.stopped()
        self.host.stopping.set()

    async def aclose(self) -> None:
        """After `stopped`: close the socket pair, which ends the enclave's process; wait for it to exit."""
        self._done = True
        if self.transport is not None:
            self.transport.close()
        process = self.process
        if process is None:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(None, process.wait, 10)
        except subprocess.TimeoutExpired:
            logger.warning("the enclave process did not exit; killing it")
            process.kill()
            process.wait()

