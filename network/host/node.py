"""The host (untrusted) part of a node: sockets, files, timers, signals and processes, around an enclave
(docs/architecture.md).

`NodeHost` implements `boundary.HostCalls` and drives an enclave through `boundary.EnclaveCalls` only; it
never holds a key or plaintext private data:
- it reads the configuration and the files it names (member certificates, constitution, previous service
  certificate) and hands their contents to the enclave with `start`; for a disaster recovery it first
  gathers the lost ledger's chunks into the node's ledger directory;
- it owns the ledger files (entries arrive with their private part encrypted) and the snapshot files, stores
  the sealed secrets blob (`sealed_secrets.bin`) and the consensus term and vote (`consensus.json`);
- once the enclave has started, it writes the service certificate, listens on the RPC and node-to-node
  addresses and relays each connection's bytes, which are TLS records: TLS terminates in the enclave;
- it ticks the enclave's timer, forks the processes that serialise snapshots (in-process), writes `<data_dir>/node.json`
  once it listens, and stops cleanly on SIGTERM or SIGINT (stops listening, lets the enclave sign what is
  pending, flushes and closes its files).
"""

from __future__ import annotations

import asyncio
import os
import resource
import signal
from typing import cast

import orjson
from loguru import logger

from governance.constitution import default_constitution
from ledger.errors import LedgerError
from ledger.files import LedgerFiles
from ledger.gather import gather_previous_ledger
from ledger.snapshot_files import commit_snapshot_file, latest_committed_snapshot, parse_snapshot_name, write_file
from network.boundary import (
    NODE_TO_NODE,
    OUTGOING,
    RPC_INTERFACE,
    SEALED_FILE,
    EnclaveCalls,
    EnclaveStart,
    GenesisMember,
    JoinService,
    NewService,
    RecoverService,
)
from network.forking import Forks, RunsForks
from network.host.config import NodeConfig, StartConfig

READY_FILE = "node.json"
CONSENSUS_FILE = "consensus.json"  # the term and vote (Raft's persistent state)
FD_RESERVE = 64  # file descriptors kept for files, the enclave's process and forks, and the listeners
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
STOP_TIMEOUT = 30.0  # seconds the host waits for the enclave to sign and flush when the node stops


class NodeStartError(Exception):
    """The node cannot start as configured (the message says why)."""


class NodeFailed(Exception):
    """The enclave stopped the node: it could not go on without diverging from the service (the message says
    why)."""


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise NodeStartError(f"cannot read {path}: {e.strerror}") from None


def _read_bytes(path: str) -> bytes | None:
    if not os.path.exists(path):
        return None
    with open(path, "rb") as f:
        return f.read()


def _write_file(path: str, data: bytes, *, durable: bool = False, mode: int = 0o644) -> None:
    """Replace `path` atomically (write, optionally fsync, rename)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        dir_fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _new_service(start: StartConfig) -> NewService:
    members = []
    for m in start.members:
        data = orjson.loads(_read(m.data_json_file)) if m.data_json_file else None
        enc = _read(m.encryption_public_key_file) if m.encryption_public_key_file else None
        members.append(GenesisMember(_read(m.certificate_file), enc, data))
    if start.constitution_files:
        constitution = "\n".join(_read(f) for f in start.constitution_files)
    else:
        try:
            constitution = default_constitution(start.constitution)
        except ValueError as e:
            raise NodeStartError(f"start.constitution: {e}") from None
    return NewService(tuple(members), constitution, dict(start.service_configuration))


class _Relay(asyncio.Protocol):
    """One TCP connection: its bytes go to the enclave as they are, and the enclave's bytes go out."""

    def __init__(self, host: NodeHost, conn: int, interface: str) -> None:
        self.host = host
        self.conn = conn
        self.interface = interface
        self.transport: asyncio.Transport | None = None
        # Reading stops while the enclave asks (too many requests parsed ahead of their answers) or while the
        # answers waiting to be sent pass the transport's high-water mark (a client that does not read): the
        # node then holds a bounded amount for each connection, whatever the client does.
        self.paused_by_enclave = False
        self.paused_by_writes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=self.host.config.http.max_unsent_bytes)
        self.host.connections[self.conn] = self
        peer = transport.get_extra_info("peername")
        self.host.enclave.connection_opened(self.conn, self.interface,
                                            f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "")

    def data_received(self, data: bytes) -> None:
        self.host.send_at_turn_end()  # scheduled ahead of the enclave's own end of turn: see `NodeHost.send`
        self.host.enclave.received(self.conn, data)

    def pause_writing(self) -> None:
        self.paused_by_writes = True
        self.apply_pause()

    def resume_writing(self) -> None:
        self.paused_by_writes = False
        self.apply_pause()

    def apply_pause(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if self.paused_by_enclave or self.paused_by_writes or self.host.enclave_busy:
            transport.pause_reading()
        else:
            transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.host.connections.pop(self.conn, None) is not None:
            self.host.enclave.connection_closed(self.conn)


class _CloseAtOnce(asyncio.Protocol):
    """A connection accepted while the file descriptors are nearly all taken: closed before anything is read."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.close()


def connection_limit() -> int:
    """How many connections the host keeps open: the process's descriptor limit, less a reserve for the ledger
    and snapshot files, the enclave's socket pair and forks, and the listeners."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(16, soft - FD_RESERVE) if soft != resource.RLIM_INFINITY else 1 << 20


class NodeHost(RunsForks):
    """Owns files, listening sockets, connections and timers; drives the enclave through the boundary."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.loop: asyncio.AbstractEventLoop | None = None
        self._enclave: EnclaveCalls | None = None
        self.stopping = asyncio.Event()
        self.address = config.rpc_address
        self.files: LedgerFiles | None = None
        self.connections: dict[int, _Relay] = {}  # open, by id
        self._unsent: dict[_Relay, list[bytes]] = {}  # sent this turn, written together at its end
        self._send_scheduled = False
        self._sent_this_turn = False  # a write went out at once in this turn's reads
        self._accepted = 0
        self._connecting: dict[int, asyncio.Task[None]] = {}
        self._started: asyncio.Future[tuple[str, str]] | None = None
        self.forks: Forks | None = None
        self.enclave_busy = False
        self.connection_limit = connection_limit()
        self._descriptors_warned = False
        self._stopped: asyncio.Future[None] | None = None
        self.failure: str | None = None  # why the enclave stopped the node, if it did

    def set_enclave_busy(self, busy: bool) -> None:
        """An enclave in its own process has not taken what was sent to it yet: read no connection meanwhile."""
        self.enclave_busy = busy
        for relay in list(self.connections.values()):
            relay.apply_pause()

    def attach(self, enclave: EnclaveCalls) -> None:
        self._enclave = enclave

    @property
    def enclave(self) -> EnclaveCalls:
        assert self._enclave is not None, "NodeHost.attach(enclave) first"
        return self._enclave

    # --- HostCalls: start ---------------------------------------------------------------------------

    def started(self, node_id: str, service_certificate_pem: str) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_result((node_id, service_certificate_pem))

    def start_failed(self, message: str) -> None:
        if self._started is not None and not self._started.done():
            self._started.set_exception(NodeStartError(message))

    def stopped(self) -> None:
        if self._stopped is not None and not self._stopped.done():
            self._stopped.set_result(None)

    def failed(self, reason: str) -> None:
        logger.error(f"the enclave stops this node: {reason}")
        self.failure = reason
        self.stopping.set()

    # --- HostCalls: connections -----------------------------------------------------------------------

    def send(self, conn: int, data: bytes) -> None:
        """Written after the reads of this turn of the loop, with whatever else they sent to the connection, or at
        once when sent outside them.

        A write to a connection's idle socket is a system call that wakes the process at the other end; one client
        process waiting on many connections (a load generator, a gateway) is then woken, and the node preempted,
        once for each answer. The first write of a turn goes at once (alone, as one client's answer is, it gains
        nothing by waiting); the others that the turn's reads make are written together after them, and wake it
        once more (the figures are in docs/network.md). That write is scheduled as soon as data arrives
        (`_Relay.data_received`), ahead of the enclave's own end of turn (signing, replicating), so those answers
        do not wait for that work. What is sent once that write has run (the end of turn's messages to other
        nodes, which the channels gather already, a pipelined batch of answers, an answer that was waited for)
        goes at once rather than after the next turn's reads. `close` writes what waits for its connection first."""
        relay = self.connections.get(conn)
        if relay is None or relay.transport is None:
            return
        if self._send_scheduled and self._sent_this_turn:  # gathered until the turn's reads are handled
            unsent = self._unsent.get(relay)
            if unsent is None:
                self._unsent[relay] = [data]
            else:
                unsent.append(data)
            return
        # outside a turn's reads, or the turn's first write (alone, as one client's answer is, it gains nothing by
        # waiting): at once
        if self._send_scheduled:
            self._sent_this_turn = True
        relay.transport.write(data)

    def send_at_turn_end(self) -> None:
        """Gather what is sent from now on, to be written once this turn's reads are handled (scheduled now)."""
        if not self._send_scheduled:
            self._send_scheduled = True
            self._sent_this_turn = False
            assert self.loop is not None
            self.loop.call_soon(self._send_unsent)

    def _send_unsent(self) -> None:
        self._send_scheduled = False
        unsent, self._unsent = self._unsent, {}
        for relay, parts in unsent.items():
            self._write(relay, parts)

    @staticmethod
    def _write(relay: _Relay, parts: list[bytes]) -> None:
        transport = relay.transport
        if transport is not None and not transport.is_closing():
            transport.write(parts[0] if len(parts) == 1 else b"".join(parts))

    def close(self, conn: int) -> None:
        relay = self.connections.get(conn)
        if relay is not None and (unsent := self._unsent.pop(relay, None)) is not None:
            self._write(relay, unsent)  # what was sent goes out first
        if relay is not None and relay.transport is not None:
            relay.transport.close()  # what was written goes out first; connection_lost then tells the enclave
            return
        pending = self._connecting.pop(conn, None)
        if pending is not None:
            pending.cancel()

    def connect(self, conn: int, address: str, local_host: str | None) -> None:
        assert self.loop is not None
        host, _, port = address.rpartition(":")
        loop = self.loop

        async def open_connection() -> None:
            try:
                await loop.create_connection(lambda: _Relay(self, conn, OUTGOING), host, int(port),
                                             local_addr=(local_host, 0) if local_host else None)
            except (OSError, ValueError):
                self.enclave.connection_closed(conn)
            finally:
                self._connecting.pop(conn, None)

        self._connecting[conn] = loop.create_task(open_connection())

    def pause_reading(self, conn: int) -> None:
        self._set_paused(conn, True)

    def resume_reading(self, conn: int) -> None:
        self._set_paused(conn, False)

    def _set_paused(self, conn: int, paused: bool) -> None:
        relay = self.connections.get(conn)
        if relay is not None:
            relay.paused_by_enclave = paused
            relay.apply_pause()

    # --- HostCalls: durable state -----------------------------------------------------------------------

    def store_sealed(self, blob: bytes) -> None:
        _write_file(os.path.join(self.config.data_dir, SEALED_FILE), blob, durable=True, mode=0o600)

    def persist_consensus(self, term: int, voted_for: str | None) -> None:
        _write_file(os.path.join(self.config.data_dir, CONSENSUS_FILE),
                    orjson.dumps({"term": term, "voted_for": voted_for}), durable=True)

    def _read_consensus(self) -> tuple[int, str | None] | None:
        data = _read_bytes(os.path.join(self.config.data_dir, CONSENSUS_FILE))
        if data is None:
            return None
        obj = orjson.loads(data)
        return int(obj["term"]), obj.get("voted_for")

    # --- HostCalls: snapshots and worker processes -------------------------------------------------------

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        path = latest_committed_snapshot(self.config.snapshot_dir)
        if path is None:
            return None
        with open(path, "rb") as f:
            return os.path.basename(path), f.read()

    def snapshot_at(self, seqno: int) -> bytes | None:
        for name in os.listdir(self.config.snapshot_dir):
            parsed = parse_snapshot_name(name)
            if parsed is not None and parsed[0] == seqno and parsed[2]:
                with open(os.path.join(self.config.snapshot_dir, name), "rb") as f:
                    return f.read()
        return None

    def store_snapshot(self, name: str, data: bytes) -> None:
        if parse_snapshot_name(name) is None:
            raise ValueError(f"{name!r} is not a snapshot file name")
        write_file(os.path.join(self.config.snapshot_dir, name), data)

    def commit_snapshot(self, seqno: int, evidence_seqno: int, receipt_json: bytes) -> None:
        commit_snapshot_file(self.config.snapshot_dir, seqno, evidence_seqno, receipt_json)

    # --- start ---------------------------------------------------------------------------------------------

    def _enclave_start(self) -> EnclaveStart:
        config = self.config
        _, port = config.host_port
        sealed = _read_bytes(os.path.join(config.data_dir, SEALED_FILE))
        new = join = recover = None
        if sealed is None and config.recover is not None:
            if port == 0:
                raise NodeStartError("a recovering service needs a fixed rpc_address port (it is in the ledger)")
            recover = RecoverService(_read(config.recover.previous_service_identity_file),
                                     (config.snapshot_dir, *config.recover.previous_snapshot_dirs),
                                     config.recover.start_from_snapshot)
        elif sealed is None and config.join_target is not None:
            join = JoinService(config.join_target.removeprefix("https://").rstrip("/"),
                               _read(config.service_certificate_file))
        elif sealed is None:
            if config.start is None:
                raise NodeStartError(f"{config.data_dir} holds no node and the configuration has no 'start' "
                                     "section")
            if port == 0:
                raise NodeStartError("a new service needs a fixed rpc_address port (it is written in genesis)")
            new = _new_service(config.start)
        return EnclaveStart(
            data_dir=config.data_dir, rpc_address=config.rpc_address, node_to_node_address=config.n2n_address,
            published_node_to_node_address=config.node_to_node_published_address,
            snapshot_dir=config.snapshot_dir, host_data=config.host_data, app=config.app,
            settings=config.enclave, http=config.http,
            election_ticks=max(2, config.election_timeout_ms // config.tick_ms),
            heartbeat_ticks=max(1, config.heartbeat_ms // config.tick_ms), chunk_size=config.chunk_size,
            sealed=sealed, consensus=self._read_consensus(), new=new, join=join, recover=recover)

    def _open_ledger(self, start: EnclaveStart) -> LedgerFiles:
        config = self.config
        try:
            if start.recover is not None:
                assert config.recover is not None
                copied = gather_previous_ledger(list(config.recover.previous_ledger_dirs), config.ledger_dir)
                logger.info(f"recovery: {len(copied)} chunk(s) of the previous ledger gathered")
            # a recovery's replay reads every entry of the gathered chunks, checking them as it goes
            files, report = LedgerFiles.open(config.ledger_dir, fsync=config.fsync,
                                             defer_committed_tables=start.recover is not None)
        except LedgerError as e:
            raise NodeStartError(f"cannot {'recover' if start.recover else 'open the ledger'}: {e}") from None
        for warning in report.warnings:
            logger.warning(f"ledger: {warning}")
        return files

    async def _listen(self, address: str, interface: str) -> asyncio.Server:
        assert self.loop is not None
        host, _, port = address.rpartition(":")

        def accept() -> asyncio.Protocol:
            if len(self.connections) >= self.connection_limit:
                if not self._descriptors_warned:
                    logger.warning(f"{len(self.connections)} connections open: the process's file descriptors "
                                   f"(limit {self.connection_limit + FD_RESERVE}) are nearly all taken; new "
                                   "connections are closed at once until some close")
                    self._descriptors_warned = True
                return _CloseAtOnce()
            if self._descriptors_warned and len(self.connections) < self.connection_limit * 0.9:
                self._descriptors_warned = False  # the next saturation is logged again, once
            self._accepted += 1
            return _Relay(self, self._accepted, interface)

        try:
            return await self.loop.create_server(accept, host, int(port))
        except OSError as e:
            raise NodeStartError(f"cannot listen on {address}: {e.strerror or e}") from None

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        config = self.config
        self.forks = Forks(self.loop, config.snapshot_dir)
        os.makedirs(config.data_dir, exist_ok=True)
        os.makedirs(config.snapshot_dir, exist_ok=True)
        for name in os.listdir(config.snapshot_dir):  # left by a node that was killed while snapshotting
            if name.startswith(".snapshot-") and name.endswith(".partial"):
                os.unlink(os.path.join(config.snapshot_dir, name))
        start = self._enclave_start()
        self.files = self._open_ledger(start)
        self._started = self.loop.create_future()
        self.enclave.start(start, self.files)
        node_id, service_pem = await self._started
        _write_file(config.service_certificate_file, service_pem.encode())
        n2n = await self._listen(config.n2n_address, NODE_TO_NODE)
        rpc = await self._listen(config.rpc_address, RPC_INTERFACE)
        bound = rpc.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        for sig in STOP_SIGNALS:
            self.loop.add_signal_handler(sig, self._stop_signalled)
        _write_file(os.path.join(config.data_dir, READY_FILE), orjson.dumps(
            {"rpc_address": self.address, "node_id": node_id, "pid": os.getpid(),
             "service_certificate_file": config.service_certificate_file}))
        logger.info(f"node {node_id[:16]}... listening on https://{self.address}")
        ticker = asyncio.create_task(self._tick())
        try:
            await self.stopping.wait()
        finally:
            logger.info("stopping")
            ticker.cancel()
            for server in (rpc, n2n):
                server.close()
            self.forks.abandon()  # an unfinished snapshot is abandoned
            self._stopped = self.loop.create_future()
            self.enclave.stop()
            try:
                await asyncio.wait_for(self._stopped, STOP_TIMEOUT)
            except TimeoutError:
                logger.error(f"the enclave did not stop within {STOP_TIMEOUT:.0f} s")
            close = getattr(self.enclave, "aclose", None)  # an enclave in its own process: end it
            if close is not None:
                await close()
            self._send_unsent()
            for relay in list(self.connections.values()):
                if relay.transport is not None:
                    relay.transport.abort()
            for task in list(self._connecting.values()):
                task.cancel()
            self.files.close()
            ready = os.path.join(config.data_dir, READY_FILE)
            if os.path.exists(ready):
                os.unlink(ready)
            logger.info("stopped")
        if self.failure is not None:
            raise NodeFailed(self.failure)

    def _stop_signalled(self) -> None:
        """The first SIGTERM or SIGINT begins the orderly stop; later ones are ignored. A terminal's Ctrl-C reaches
        every process of its group (a sandbox forwards it too), and once the loop has closed Python's default
        handler would raise KeyboardInterrupt in the middle of the shutdown."""
        assert self.loop is not None
        for sig in STOP_SIGNALS:
            self.loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_IGN)
        self.stopping.set()

    async def _tick(self) -> None:
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            self.enclave.tick()
