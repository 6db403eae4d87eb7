"""The enclave as the host sees it: `EnclaveRuntime` implements `boundary.EnclaveCalls` (docs/architecture.md).

It starts the node (`startup`), then owns everything that needs the node's keys or plaintext: the `Enclave`
core (KV, frontends, consensus, signatures), the client sessions (TLS and HTTP, `rpc_sessions`), the
node-to-node channels (TLS and frames, `channels`) and the requests a backup forwards to the primary. The
host gives it connection bytes and ticks; it gives the host TLS records, sealed secrets, ledger entries
(through the ledger files handed over at start) and snapshots.

The runtime schedules its own work on the event loop it runs on (the answers to forwarded requests, a
joiner's retries); it opens no socket and no file except through the host, apart from the virtual
platform's sealing key (`sealing`).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from loguru import logger

from ledger.errors import LedgerError
from ledger.files import LedgerFiles
from ledger.identity import cert_pem, key_pem
from network.boundary import NODE_TO_NODE, OUTGOING_CONNECTIONS, RPC_INTERFACE, EnclaveStart, HostCalls
from network.consensus.raft import HardState
from network.enclave import startup
from network.enclave.channels import Channels
from network.enclave.enclave import Enclave, sole_voter
from network.enclave.endpoints import Endpoints
from network.enclave.http import ANSWER_LATER, HttpConnection, Pending, Request, Response, SessionMetrics
from network.enclave.outbound import OutboundCalls
from network.enclave.replication import sync_in_place
from network.enclave.rpc_sessions import RpcSessions
from network.enclave.tls import node_to_node_contexts, server_context
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse

FORWARD_TIMEOUT = 10.0  # seconds a backup waits for the primary's answer to a forwarded request


def load_app(spec: str) -> Endpoints:
    module_name, _, attr = spec.partition(":")
    try:
        app = getattr(importlib.import_module(module_name), attr or "app")
    except (ImportError, AttributeError) as e:
        raise startup.StartError(f"cannot load application {spec!r}: {e}") from None
    if not isinstance(app, Endpoints) or app.prefix != "/app":
        raise startup.StartError(f"{spec!r} is not an Endpoints('/app') application")
    return app


class EnclaveRuntime:
    def __init__(self, host: HostCalls, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.host = host
        self.clock = clock
        self._timer_failed = False
        self.enclave: Enclave | None = None
        self.metrics = SessionMetrics()
        self._start: EnclaveStart | None = None
        self._conn_ids = itertools.count(OUTGOING_CONNECTIONS)
        self.outbound = OutboundCalls(host, self._new_conn)
        self.sessions: RpcSessions | None = None
        self.channels: Channels | None = None
        self._forwarding: dict[int, asyncio.Future[Response]] = {}
        self._forward_ids = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._peers: dict[str, str] = {}  # the other nodes, kept until the channels exist
        self._turn_end_scheduled = False
        self._sync_thread: ThreadPoolExecutor | None = None  # the primary's syncs of its signatures
        # syncs the thread finished, with what to call on the loop (appended there, taken here: deque is thread-safe)
        self._finished_syncs: deque[tuple[Callable[[BaseException | None], None], BaseException | None]] = deque()
        self._stopping = False

    def _new_conn(self) -> int:
        return next(self._conn_ids)

    # --- EnclaveCalls ----------------------------------------------------------------------------------

    def start(self, start: EnclaveStart, ledger: LedgerFiles) -> None:
        self._start = start
        task = asyncio.get_running_loop().create_task(self._run_start(start, ledger))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def tick(self) -> None:
        if self.enclave is None or self._timer_failed:
            return
        if self.channels is not None:
            self.channels.tick()
        try:
            self.enclave.tick()
        except Exception as e:
            # A node whose timer work fails (a signature, the opening of a recovered service) would go on
            # answering without heartbeats, elections or signatures: it stops instead, saying why, and the
            # others elect a primary without it.
            logger.exception("the enclave's timer work failed")
            self._timer_failed = True  # once: the node is stopping
            self.host.failed(f"the enclave's timer work failed: {e!r}")

    def connection_opened(self, conn: int, interface: str, peer: str) -> None:
        if self.outbound.owns(conn):
            self.outbound.opened(conn)
        elif self.channels is not None and (interface == NODE_TO_NODE or self.channels.owns(conn)):
            self.channels.opened(conn)
        elif interface == RPC_INTERFACE and self.sessions is not None:
            self.sessions.opened(conn, peer)
        else:
            self.host.close(conn)

    def received(self, conn: int, data: bytes) -> None:
        if self._finished_syncs:
            self._hand_back_syncs()
        if self.sessions is not None and self.sessions.owns(conn):
            self.sessions.received(conn, data)
            self._end_turn_soon()
        elif self.channels is not None and self.channels.owns(conn):
            self.channels.received(conn, data)
            self._end_turn_soon()
        elif self.outbound.owns(conn):
            self.outbound.received(conn, data)

    def _end_turn_soon(self) -> None:
        """Once per turn of the loop, after the input that is ready now has been handled: group commit."""
        if not self._turn_end_scheduled and self.enclave is not None:
            self._turn_end_scheduled = True
            asyncio.get_running_loop().call_soon(self._turn_ended)

    def _turn_ended(self) -> None:
        self._turn_end_scheduled = False
        if self.enclave is not None:
            self.enclave.turn_ended()
        if self.channels is not None:
            self.channels.flush()  # what the turn sent (a signature's AppendEntries among it) goes out now

    def connection_closed(self, conn: int) -> None:
        if self.sessions is not None and self.sessions.owns(conn):
            self.sessions.closed(conn)
        elif self.channels is not None and self.channels.owns(conn):
            self.channels.closed(conn)
        elif self.outbound.owns(conn):
            self.outbound.closed(conn)

    def stop(self) -> None:
        self._stopping = True
        if self._sync_thread is not None:
            self._sync_thread.shutdown(wait=True)  # a sync in flight finishes; its answer is not waited for
        for task in list(self._tasks):
            task.cancel()
        if self.enclave is not None:
            self.enclave.app.close()
        if self.sessions is not None:
            self.sessions.close_all()
        if self.channels is not None:
            self.channels.close()
        enclave = self.enclave
        if enclave is not None:
            enclave.stop_snapshots()
            try:
                enclave.sign()
                enclave.ledger.flush()
            except LedgerError as e:  # a disk that refuses writes (the reason the node may be stopping)
                logger.error(f"stopping without a last signature: {e}")
        self.host.stopped()

    # --- start -------------------------------------------------------------------------------------------

    async def _run_start(self, start: EnclaveStart, files: LedgerFiles) -> None:
        try:
            held = await self._hold(start, files)
            startup.tune_collector()
            self._serve(start, held)
        except startup.StartError as e:
            self.host.start_failed(str(e))
            return
        except Exception as e:  # a start that fails for a reason not foreseen still ends the start
            logger.exception("the enclave failed to start")
            self.host.start_failed(f"{type(e).__name__}: {e}")
            return
        assert self.enclave is not None
        self.host.started(self.enclave.node_id, self.enclave.ledger.service.pem)

    async def _hold(self, start: EnclaveStart, files: LedgerFiles) -> startup.Held:
        if start.sealed is not None:
            with startup.loading():
                return startup.resume(start, files, self.host)
        if start.recover is not None:
            with startup.loading():
                return startup.recover_service(start, files, self.host)
        if start.join is not None:
            return await startup.join(start, files, self.host, self.outbound)
        if start.new is not None:
            return startup.new_service(start, files, self.host)
        raise startup.StartError("the node holds no sealed secrets and was asked neither to start, join nor "
                                 "recover a service")

    def _serve(self, start: EnclaveStart, held: startup.Held) -> None:
        app = load_app(start.app)
        ledger, keys = held.ledger, held.keys
        ledger.commit_snapshot = self.host.commit_snapshot  # the snapshot files are the host's
        ledger.retained_records = start.settings.retained_records
        self._peers = dict(held.peers)
        quote = startup.quote_for(keys.identity, start)
        self.enclave = enclave = Enclave(
            ledger, keys, quote, app, self, start.settings,
            raft=held.raft or sole_voter(ledger, config=startup.consensus_config(start)),
            recovery_snapshot=held.recovery_snapshot)
        assert keys.identity.endorsed is not None
        certificate, key = cert_pem(keys.identity.endorsed), key_pem(keys.identity.key)
        n2n_server, n2n_client = node_to_node_contexts(certificate, key, ledger.service.pem)
        source_host = start.node_to_node_address.rpartition(":")[0]
        self.channels = Channels(enclave.node_id, n2n_server, n2n_client, enclave.receive, self.host,
                                 self._new_conn, self.clock, source_host=source_host,
                                 queue_limit=start.settings.node_to_node_queue_limit,
                                 defer=self.schedule)
        self.set_peers(self._peers)
        rpc_context = server_context(certificate, key)

        enclave.may_defer = True

        async def handle(request: Request) -> Response:
            response = enclave.handle(request)
            if isinstance(response, Pending):
                return await response.wait()
            return await self._forward(request) if response is ANSWER_LATER else response

        self.sessions = RpcSessions(rpc_context, self.host,
                                    lambda: HttpConnection(handle, start.http, self.metrics, enclave.handle),
                                    start.http, self.metrics)

    # --- what the Enclave core asks of its host (enclave.HostServices) -------------------------------------

    def read_entries(self, start: int, end: int) -> list[bytes]:
        assert self.enclave is not None and self.enclave.ledger.files is not None
        return self.enclave.ledger.files.read_range(start, end)

    def schedule(self, fn: Callable[[], None]) -> None:
        asyncio.get_running_loop().call_soon(fn)

    def secrets_changed(self) -> None:
        assert self.enclave is not None and self._start is not None
        startup.seal(self.enclave.keys, self.enclave.ledger, self._start, self.host)

    def session_metrics(self) -> dict[str, Any]:
        assert self._start is not None
        limits = self._start.http
        opened = len(self.sessions.sessions) if self.sessions is not None else 0
        return {"active": self.metrics.active, "peak": self.metrics.peak,
                "interfaces": {RPC_INTERFACE: {
                    "active": self.metrics.active, "peak": self.metrics.peak, "open_connections": opened,
                    "soft_cap": limits.max_open_sessions_soft, "hard_cap": limits.max_open_sessions_hard,
                    "errors": dict(self.metrics.errors), "refused": dict(self.metrics.refused_sessions),
                    "max_body_bytes": limits.max_body_bytes, "max_header_bytes": limits.max_header_bytes}}}

    def send(self, envelope: Envelope) -> None:
        if self.channels is not None:
            self.channels.send(envelope)

    def send_now(self) -> None:
        if self.channels is not None:
            self.channels.flush()

    def sync_off_loop(self, work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        """One thread syncs, so syncs finish in the order they began (`os.fsync` lets the loop run meanwhile).
        Once the node is stopping, the sync runs here and now.

        A finished sync is handed back at the first of: the next input the loop gives the enclave (`received`),
        or a callback the sync thread schedules. Under load a turn of the loop takes milliseconds, and the
        primary's commit waits for this hand-off, so it is not left to wait for the turn's end (nor for the two
        turns an asyncio future's done-callback takes)."""
        if self._stopping:
            sync_in_place(work, done)
            return
        if self._sync_thread is None:
            self._sync_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-sync")
        loop = asyncio.get_running_loop()
        finished = self._finished_syncs

        def run() -> None:  # on the sync thread
            try:
                work()
                error: BaseException | None = None
            except BaseException as e:  # noqa: BLE001 - handed to `done`, which stops the node
                error = e
            finished.append((done, error))
            with contextlib.suppress(RuntimeError):  # a closed loop: the node stopped, nothing waits for this
                loop.call_soon_threadsafe(self._hand_back_syncs)

        self._sync_thread.submit(run)

    def _hand_back_syncs(self) -> None:
        """Give the enclave the syncs that finished, in the order they finished (which is the order they began)."""
        finished = self._finished_syncs
        while finished:
            done, error = finished.popleft()
            try:
                done(error)
            except Exception as e:  # noqa: BLE001 - as a failing tick does: the node stops, never half-applies
                logger.exception("handling what waited for the ledger's sync failed")
                self.host.failed(f"replication: {e}")
                return
            self._end_turn_soon()  # what waited for the sync may commit: group commit then signs what gathered

    def persist_consensus(self, state: HardState) -> None:
        self.host.persist_consensus(state.term, state.voted_for)

    def failed(self, reason: str) -> None:
        self.host.failed(reason)

    def set_peers(self, peers: dict[str, str]) -> None:
        self._peers = dict(peers)
        if self.channels is None:
            return  # applied once the channels exist
        for node_id in set(self.channels.peers) - set(peers):
            self.channels.remove_peer(node_id)
        for node_id, address in peers.items():
            self.channels.set_peer(node_id, address)

    def forwarded(self, response: ForwardedResponse) -> None:
        future = self._forwarding.pop(response.id, None)
        if future is not None and not future.done():
            future.set_result(Response(response.status, response.body, response.headers))

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        return self.host.latest_snapshot()

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        self.host.run_snapshot(serialise, done)

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        self.host.run_in_workers(jobs, done, result_bytes)

    # --- forwarding ------------------------------------------------------------------------------------------

    async def _forward(self, request: Request) -> Response:
        """Send a request to the primary with the caller's certificate and relay its answer."""
        enclave = self.enclave
        assert enclave is not None
        primary = enclave.primary_id()
        if primary is None or self.channels is None:
            return Response.error(503, "PrimaryNotFound", "No primary is known to this node")
        if primary == enclave.node_id:  # this node became primary meanwhile: answer here
            if request.session is not None:
                request.session.clear()
            response = enclave.handle(request)
            return await response.wait() if isinstance(response, Pending) else response
        self._forward_ids += 1
        ident = self._forward_ids
        future: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._forwarding[ident] = future
        headers = tuple((k, v) for k, v in request.headers.items())
        sent = self.channels.send(Envelope(ForwardedRequest(enclave.node_id, primary, ident, request.method,
                                                            request.target, headers, request.body,
                                                            request.peer_cert)))
        # the future is awaited as it is, with its own timer: `asyncio.wait_for` would take two more turns of this
        # busy loop between the primary's answer and the client's
        timeout = asyncio.get_running_loop().call_later(FORWARD_TIMEOUT, _time_out, future)
        try:
            if not sent:
                raise TimeoutError
            return await future
        except TimeoutError:
            return Response.error(503, "TransactionReplicationFailed",
                                  "The primary did not answer the forwarded request in time")
        finally:
            timeout.cancel()
            self._forwarding.pop(ident, None)


def _time_out(future: asyncio.Future[Response]) -> None:
    """A forwarded request's answer is overdue (`FORWARD_TIMEOUT`)."""
    if not future.done():
        future.set_exception(TimeoutError())
