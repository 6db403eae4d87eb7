"""The node process: the host part (sockets, files, timers, signals) around an `Enclave`.

`python -m network.host.node --config node.json` starts a node in virtual mode:
- on an empty data directory, as the first node of a new service: it makes the service and node identities,
  writes genesis and its signature (members, constitution, configuration, its own virtual quote), seals its
  secrets, and writes the service certificate to `service_certificate_file`;
- with a `recover` section and no sealed node, it starts a new service from a lost one's ledger (disaster
  recovery: a new service identity, the previous ledger's public part replayed; members then open it and
  submit their recovery shares);
- on a data directory that holds a sealed node, it resumes that service: unseals, replays and verifies its
  ledger files, drops any unsigned suffix, and continues in a new view with a signature.
It then serves HTTPS on `rpc_address` (TLS with its service-endorsed certificate, any client certificate
accepted at the TLS layer), signs on a timer, writes `<data_dir>/node.json` once it listens, and stops cleanly
on SIGTERM or SIGINT: it stops listening, signs what is pending, flushes and closes its files.

The host part owns the listening socket and the ledger and snapshot files; what it writes is entry bytes
(private maps already encrypted by the enclave) and sealed secrets.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import hashlib
import importlib
import multiprocessing
import os
import random
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from loguru import logger

from governance.constitution import default_constitution
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.errors import LedgerError, RecoveryError
from ledger.files import LedgerFiles
from ledger.framing import FLAG_FORCE_CHUNK_BEFORE
from ledger.gather import gather_previous_ledger
from ledger.genesis import GenesisMember, GenesisNode, NodeNetwork, ServiceConfig, VirtualQuote
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, hash_for_key, key_pem, load_cert, load_key
from ledger.recovery import choose_snapshot, recovery_create_writes, replay_public
from ledger.replay import recover
from ledger.secrets import LedgerSecret, LedgerSecrets
from ledger.service_ledger import ServiceLedger
from ledger.snapshot_files import latest_committed_snapshot, parse_snapshot_name, write_file
from network.client.connection import ServiceClient
from network.consensus.raft import ConsensusConfig, HardState, Raft
from network.enclave import sealing
from network.enclave.attestation import code_measurement, host_data, make_quote
from network.enclave.channels import Channels, tls_contexts
from network.enclave.enclave import Enclave, sole_voter, trusted_nodes
from network.enclave.endpoints import Endpoints
from network.enclave.http import ANSWER_LATER, Request, Response, SessionMetrics, serve
from network.enclave.join import JoinRequest
from network.enclave.replication import ledger_entry_meta
from network.enclave.tls import server_context
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse
from network.host.config import ConfigError, NodeConfig, StartConfig, load_config

READY_FILE = "node.json"
CONSENSUS_FILE = "consensus.json"  # the term and vote (Raft's persistent state)
FORWARD_TIMEOUT = 10.0  # seconds a backup waits for the primary's answer to a forwarded request


class NodeStartError(Exception):
    """The node cannot start as configured (the message says why)."""


def configure_logging(fmt: str, level: str) -> None:
    logger.remove()
    # diagnose=False: loguru would otherwise print the values of local variables in logged tracebacks,
    # and those hold requests' bodies (private records) and key material
    if fmt == "json":
        logger.add(sys.stderr, level=level, serialize=True, diagnose=False)
    else:
        logger.add(sys.stderr, level=level, diagnose=False,
                   format="{time:YYYY-MM-DD HH:mm:ss.SSS} {level: <7} {name}: {message}")


def load_app(spec: str) -> Endpoints:
    module_name, _, attr = spec.partition(":")
    try:
        app = getattr(importlib.import_module(module_name), attr or "app")
    except (ImportError, AttributeError) as e:
        raise NodeStartError(f"cannot load application {spec!r}: {e}") from None
    if not isinstance(app, Endpoints) or app.prefix != "/app":
        raise NodeStartError(f"{spec!r} is not an Endpoints('/app') application")
    return app


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise NodeStartError(f"cannot read {path}: {e.strerror}") from None


def _genesis_members(start: StartConfig) -> list[GenesisMember]:
    members = []
    for m in start.members:
        data = orjson.loads(_read(m.data_json_file)) if m.data_json_file else None
        enc = _read(m.encryption_public_key_file) if m.encryption_public_key_file else None
        members.append(GenesisMember(_read(m.certificate_file), data, enc))
    return members


def _constitution(start: StartConfig) -> str:
    if start.constitution_files:
        return "\n".join(_read(f) for f in start.constitution_files)
    try:
        return default_constitution(start.constitution)
    except ValueError as e:
        raise NodeStartError(f"start.constitution: {e}") from None


def _write_file(path: str, text: str, *, durable: bool = False) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


class NodeHost:
    """The host part: owns files, the listening socket, the timers; drives the enclave."""

    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        self.metrics = SessionMetrics()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.enclave: Enclave | None = None
        self.stopping = asyncio.Event()
        self.address = config.rpc_address
        tick = config.tick_ms
        self.consensus_config = ConsensusConfig(election_ticks=max(2, config.election_timeout_ms // tick),
                                                heartbeat_ticks=max(1, config.heartbeat_ms // tick))
        self._snapshot_child: tuple[int, str] | None = None
        self.channels: Channels | None = None
        self._peers: dict[str, str] = {}
        self._forwarding: dict[int, asyncio.Future[Response]] = {}
        self._worker_task: asyncio.Task[None] | None = None
        self._forward_ids = 0

    # --- HostServices -----------------------------------------------------------------------------

    def read_entries(self, start: int, end: int) -> list[bytes]:
        assert self.enclave is not None and self.enclave.ledger.files is not None
        return self.enclave.ledger.files.read_range(start, end)

    def schedule(self, fn: Callable[[], None]) -> None:
        assert self.loop is not None
        self.loop.call_soon(fn)

    def secrets_changed(self) -> None:
        assert self.enclave is not None
        self._seal(self.enclave.keys, self.enclave.ledger)

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        """Serialise in a forked process (copy-on-write: the child sees the state as of now while this
        process goes on serving), which writes a temporary file and sends back its SHA-256."""
        assert self.loop is not None
        loop = self.loop
        partial = os.path.join(self.config.snapshot_dir, f".snapshot-{os.getpid()}.partial")
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no logging; only serialise, write, report, exit
            code = 1
            try:
                _die_with_parent()
                if os.getppid() != parent:  # the node died before the line above took effect
                    os._exit(1)
                os.close(read_end)
                data = serialise()
                write_file(partial, data)
                os.write(write_end, hashlib.sha256(data).hexdigest().encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self._snapshot_child = (pid, partial)

        def finished() -> None:
            loop.remove_reader(read_end)
            digest = os.read(read_end, 64).decode() or None
            os.close(read_end)
            os.waitpid(pid, 0)
            self._snapshot_child = None
            if digest is None and os.path.exists(partial):
                os.unlink(partial)
            done(digest, lambda path: os.replace(partial, path))

        loop.add_reader(read_end, finished)

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None]) -> None:
        """Forked worker processes (one a core) run the enclave's jobs; `done` gets their results on this loop."""
        assert self.loop is not None
        loop = self.loop
        _WORKER_JOBS[:] = jobs  # the forked workers inherit the jobs: only their indices cross the pipe
        pool = ProcessPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1)),
                                   mp_context=multiprocessing.get_context("fork"))
        futures = [asyncio.wrap_future(pool.submit(_run_worker_job, i), loop=loop) for i in range(len(jobs))]

        async def collect() -> None:
            results: list[Any] | BaseException
            try:
                results = list(await asyncio.gather(*futures))
            except Exception as e:  # the first failure, passed on as it is
                results = e
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
                _WORKER_JOBS.clear()
            done(results)

        self._worker_task = loop.create_task(collect())

    def send(self, envelope: Envelope) -> None:
        if self.channels is not None:
            self.channels.send(envelope)

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        path = latest_committed_snapshot(self.config.snapshot_dir)
        if path is None:
            return None
        with open(path, "rb") as f:
            return os.path.basename(path), f.read()

    def forwarded(self, response: ForwardedResponse) -> None:
        future = self._forwarding.pop(response.id, None)
        if future is not None and not future.done():
            future.set_result(Response(response.status, response.body, response.headers))

    async def _forward(self, request: Request) -> Response:
        """Send a request to the primary with the caller's certificate and relay its answer."""
        assert self.enclave is not None and self.loop is not None
        primary = self.enclave.primary_id()
        if primary is None or self.channels is None:
            return Response.error(503, "PrimaryNotFound", "No primary is known to this node")
        if primary == self.enclave.node_id:  # this node became primary meanwhile: answer here
            if request.session is not None:
                request.session.clear()
            return self.enclave.handle(request)
        self._forward_ids += 1
        ident = self._forward_ids
        future: asyncio.Future[Response] = self.loop.create_future()
        self._forwarding[ident] = future
        headers = tuple((k, v) for k, v in request.headers.items())
        sent = self.channels.send(Envelope(ForwardedRequest(self.enclave.node_id, primary, ident, request.method,
                                                            request.target, headers, request.body,
                                                            request.peer_cert)))
        try:
            if not sent:
                raise TimeoutError
            return await asyncio.wait_for(future, FORWARD_TIMEOUT)
        except TimeoutError:
            return Response.error(503, "TransactionReplicationFailed",
                                  "The primary did not answer the forwarded request in time")
        finally:
            self._forwarding.pop(ident, None)

    def set_peers(self, peers: dict[str, str]) -> None:
        self._peers = dict(peers)
        if self.channels is None:
            return  # applied once the channels exist
        for node_id in set(self.channels.peers) - set(peers):
            self.channels.remove_peer(node_id)
        for node_id, address in peers.items():
            self.channels.set_peer(node_id, address)

    def persist_consensus(self, state: HardState) -> None:
        _write_file(os.path.join(self.config.data_dir, CONSENSUS_FILE),
                    orjson.dumps({"term": state.term, "voted_for": state.voted_for}).decode(), durable=True)

    def _read_consensus(self) -> HardState | None:
        path = os.path.join(self.config.data_dir, CONSENSUS_FILE)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as f:
            obj = orjson.loads(f.read())
        return HardState(int(obj["term"]), obj.get("voted_for"))

    def session_metrics(self) -> dict[str, Any]:
        limits = self.config.http
        return {"active": self.metrics.active, "peak": self.metrics.peak,
                "interfaces": {"primary_rpc_interface": {
                    "active": self.metrics.active, "peak": self.metrics.peak,
                    "soft_cap": 1000, "hard_cap": 1010, "errors": dict(self.metrics.errors),
                    "max_body_bytes": limits.max_body_bytes, "max_header_bytes": limits.max_header_bytes}}}

    # --- start -------------------------------------------------------------------------------------

    def _seal(self, keys: NodeKeys, ledger: ServiceLedger) -> None:
        sealing.seal(self.config.data_dir, sealing.SealedState(keys, ledger.service, ledger.secrets))

    def _quote(self, identity: NodeIdentity) -> VirtualQuote:
        return make_quote(identity.key.public_key(), code_measurement(), host_data(self.config.host_data.encode()))

    def _start_new(self, address: str) -> tuple[ServiceLedger, NodeKeys]:
        start = self.config.start
        if start is None:
            raise NodeStartError(f"{self.config.data_dir} holds no node and the configuration has no 'start' section")
        members = _genesis_members(start)
        constitution = _constitution(start)
        service = ServiceIdentity.create()
        identity = NodeIdentity.create().endorsed_by(service)
        keys = NodeKeys(identity, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        recovery_members = sum(1 for m in members if m.encryption_public_key_pem)
        sc = start.service_configuration
        try:
            service_config = ServiceConfig(recovery_threshold=int(sc.get("recovery_threshold",
                                                                          max(recovery_members, 1))),
                                           **{k: v for k, v in sc.items() if k != "recovery_threshold"})
        except TypeError as e:
            raise NodeStartError(f"start.service_configuration: {e}") from None
        host, port = address.rsplit(":", 1)
        ledger = start_new_service(
            self.config.ledger_dir, members, constitution, self._quote(identity), service=service, node=keys,
            config=service_config, network=NodeNetwork(address, self.config.n2n_address,
                                published_node_to_node_address=self.config.node_to_node_published_address),
            chunk_size=self.config.chunk_size, fsync=self.config.fsync, snapshot_dir=self.config.snapshot_dir)
        self._seal(keys, ledger)
        logger.info(f"started a new service; node {identity.node_id[:16]}..., genesis at 2.1")
        return ledger, keys

    def _start_recovery(self) -> tuple[ServiceLedger, NodeKeys, Raft, bytes | None]:
        """Disaster recovery: a new service identity and node key, the previous ledger gathered into this node's
        ledger directory and its public part replayed (verified) up to the previous service's last signature."""
        recover = self.config.recover
        assert recover is not None
        previous_cert = load_cert(_read(recover.previous_service_identity_file))
        try:
            began = time.perf_counter()
            copied = gather_previous_ledger(list(recover.previous_ledger_dirs), self.config.ledger_dir)
            files, report = LedgerFiles.open(self.config.ledger_dir, fsync=self.config.fsync)
            gathered = time.perf_counter()
            for warning in report.warnings:
                logger.warning(f"recovery: {warning}")
            if files.last_seqno == 0:
                raise RecoveryError(f"no ledger to recover: {self.config.ledger_dir} and "
                                    f"{list(recover.previous_ledger_dirs)} hold no chunk")
            # With the whole ledger at hand it is replayed from the start, so the node holds every Merkle leaf and
            # serves receipts and historical queries of every transaction; a snapshot is used when the ledger files
            # start after one, or when the configuration asks for it (a faster start).
            found = None
            if files.first_seqno > 1 or recover.start_from_snapshot:
                found = choose_snapshot([self.config.snapshot_dir, *recover.previous_snapshot_dirs], files,
                                        previous_cert)
            service = ServiceIdentity.create()
            identity = NodeIdentity.create().endorsed_by(service)
            keys = NodeKeys(identity, rsa.generate_private_key(public_exponent=65537, key_size=2048))
            logger.info(f"recovery: replaying the public ledger ({len(copied)} chunk(s) gathered"
                        + (f", from snapshot {found[0]}" if found else "") + ")")
            public = replay_public(files, node=identity, service=service, previous_service_cert=previous_cert,
                                   snapshot=found[1] if found else None, chunk_size=self.config.chunk_size,
                                   snapshot_dir=self.config.snapshot_dir)
        except LedgerError as e:
            raise NodeStartError(f"cannot recover: {e}") from None
        ledger = public.ledger
        replayed = time.perf_counter()
        logger.info(f"recovery: {len(copied)} chunk(s) gathered and opened in {gathered - began:.2f} s; public "
                    f"replay to seqno {ledger.last_seqno} in {replayed - gathered:.2f} s")
        ledger.secrets.add(LedgerSecret.create(ledger.last_seqno + 1))  # the recovered service's own secret
        # The create transaction and its signature, in the view after next (as CCF), durable and committed
        # (this node is the recovered service's only voter), before anything else is served.
        ledger.set_view(ledger.view + 2)
        seqno = ledger.last_seqno + 1
        network = NodeNetwork(self.config.rpc_address, self.config.n2n_address,
                              published_node_to_node_address=self.config.node_to_node_published_address)
        node = GenesisNode(keys.identity, self._quote(identity), keys.encryption_public_pem, network)
        try:
            # the previous service's chunks end where it ended (CCF starts the recovered service in a new chunk)
            ledger.commit_writes(recovery_create_writes(ledger.read_tx(), service, node, f"{ledger.view}.{seqno}"),
                                 flags=FLAG_FORCE_CHUNK_BEFORE)
        except RecoveryError as e:
            raise NodeStartError(f"cannot recover: {e}") from None
        ledger.emit_signature()
        ledger.flush()
        ledger.commit_to(ledger.last_seqno)
        self._seal(keys, ledger)  # only now: a node killed before this recovers again from the same files
        raft = self._sole_candidate(ledger, ledger.view)
        logger.info(f"recovery: public ledger verified up to {ledger.txid(seqno - 1)}; the recovered service "
                    f"was created at {ledger.txid(seqno)}, Recovering: members open it, then submit their shares")
        return ledger, keys, raft, found[1] if found else None

    def _sole_candidate(self, ledger: ServiceLedger, term: int) -> Raft:
        """The consensus core of a service's only node, everything it holds committed, standing for election
        from `term` (Raft §5.2): it wins the next term alone and, as a new primary, signs in it at once."""
        node_id = ledger.node.node_id
        raft = Raft(node_id, [node_id], random.Random().randrange, config=self.consensus_config,
                    hard_state=HardState(term, node_id), commit=ledger.last_seqno,
                    first_index=ledger.last_seqno + 1, base_term=ledger.view, older=ledger_entry_meta(ledger))
        raft.campaign(transfer=False)
        return raft

    def _resume(self) -> tuple[ServiceLedger, NodeKeys, Raft]:
        try:
            sealed = sealing.unseal(self.config.data_dir)
        except sealing.SealingError as e:
            raise NodeStartError(str(e)) from None
        files, report = LedgerFiles.open(self.config.ledger_dir, fsync=self.config.fsync)
        base = None
        if files.first_seqno > 1:  # this node started from a snapshot: load it, then replay what follows
            snapshot = self._snapshot_at(files.first_seqno - 1)
            base = ServiceLedger.from_snapshot(snapshot, secrets=sealed.secrets, node=sealed.node.identity,
                                               service=sealed.service, files=None,
                                               chunk_size=self.config.chunk_size,
                                               snapshot_dir=self.config.snapshot_dir)
        ledger = recover(files, secrets=sealed.secrets, node=sealed.node.identity, service=sealed.service,
                         base=base, chunk_size=self.config.chunk_size, snapshot_dir=self.config.snapshot_dir)
        last_signed = ledger.last_signature_seqno
        if last_signed == 0:
            raise NodeStartError(f"{self.config.ledger_dir} holds no signed transaction to resume from")
        # One node is the whole majority: every durable signature is committed. What follows the last
        # signature was never committed and is dropped; the node then stands for election (Raft §5.2): it
        # wins a new term alone, and as a new primary signs in that view at once, so the dropped seqnos can
        # be told apart from the ones reused.
        persisted = self._read_consensus()
        meta = ledger_entry_meta(ledger)
        node_id = ledger.node.node_id
        voters = set(trusted_nodes(ledger))
        if voters != {node_id}:
            # one of several nodes: consensus decides, from what this node holds (Raft §5.2-5.3)
            commit = ledger.committed_seqno
            state = HardState(max(persisted.term if persisted else 0, ledger.view),
                              persisted.voted_for if persisted else None)
            raft = Raft(node_id, voters, random.Random().randrange, config=self.consensus_config, hard_state=state,
                        log=[meta(s) for s in range(commit + 1, ledger.last_seqno + 1)], commit=commit,
                        first_index=commit + 1, base_term=ledger.view_of(commit) or 0, older=meta)
            logger.info(f"rejoining the network after {ledger.txid(ledger.last_seqno)}")
            return ledger, sealed.node, raft
        ledger.commit_to(last_signed)
        ledger.rollback(last_signed)
        term = max(persisted.term if persisted else 0, ledger.view)
        raft = self._sole_candidate(ledger, term)
        logger.info(f"resuming the service after {ledger.txid(last_signed)} in view {raft.term}; replayed "
                    f"{report.last_seqno} entries")
        return ledger, sealed.node, raft

    async def _join(self) -> tuple[ServiceLedger, NodeKeys, Raft]:
        """Ask the service to let this node in, until it is trusted and has the network's secrets."""
        assert self.config.join_target is not None
        identity = NodeIdentity.create()
        keys = NodeKeys(identity, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        csr = (x509.CertificateSigningRequestBuilder()
               .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CCF Node")]))
               .sign(identity.key, hash_for_key(identity.key)))
        request = JoinRequest(NodeNetwork(self.config.rpc_address, self.config.n2n_address,
                                          published_node_to_node_address=self.config.node_to_node_published_address
                                          ).to_json(),
                              dict(self._quote(identity).quote_info()), keys.encryption_public_pem,
                              csr.public_bytes(serialization.Encoding.PEM).decode())
        info = await self._ask_to_join(identity, request)
        service = ServiceIdentity(load_key(info["service_key"]), load_cert(info["service_certificate"]))
        node = NodeIdentity(identity.key, identity.self_signed, load_cert(info["endorsed_certificate"]))
        secrets = LedgerSecrets([LedgerSecret.create(int(start), base64.b64decode(raw))
                                 for start, raw in info["ledger_secrets"]])
        files, report = LedgerFiles.open(self.config.ledger_dir, fsync=self.config.fsync)
        if report.last_seqno:
            raise NodeStartError(f"{self.config.ledger_dir} already holds a ledger: a joining node starts empty")
        snapshot = self._fetch_snapshot(identity)
        if snapshot is not None:  # start from the service's latest committed snapshot, then the ledger after it
            name, data = snapshot
            ledger = ServiceLedger.from_snapshot(data, secrets=secrets, node=node, service=service, files=None,
                                                 chunk_size=self.config.chunk_size,
                                                 snapshot_dir=self.config.snapshot_dir)
            files.start_after(ledger.last_seqno)
            ledger.files = files
            write_file(os.path.join(self.config.snapshot_dir, name), data)  # to restart from, as well
            logger.info(f"starting from the snapshot at seqno {ledger.last_seqno}")
        else:
            ledger = ServiceLedger(node=node, service=service, secrets=secrets, files=files,
                                   chunk_size=self.config.chunk_size, snapshot_dir=self.config.snapshot_dir)
        keys = NodeKeys(node, keys.encryption_key)
        self._seal(keys, ledger)
        self._peers = {str(k): str(v) for k, v in info.get("nodes", {}).items()}
        start = ledger.last_seqno  # 0, or the snapshot's seqno (committed state)
        raft = Raft(node.node_id, [], random.Random().randrange, config=self.consensus_config, commit=start,
                    first_index=start + 1, base_term=(ledger.view_of(start) or 0) if start else 0,
                    older=ledger_entry_meta(ledger))
        logger.info(f"joined the service as {node.node_id[:16]}...; catching up from the primary")
        return ledger, keys, raft

    def _fetch_snapshot(self, identity: NodeIdentity) -> tuple[str, bytes] | None:
        """The service's latest committed snapshot (None if it has none yet)."""
        target = self.config.join_target
        assert target is not None
        with self._identity_files(identity) as (cert_path, key_path):
            client = ServiceClient(target, self.config.service_certificate_file, cert=cert_path, key=key_path)
            try:
                answer = client.call("GET", "/node/snapshot")
            finally:
                client.close()
        if answer.status == 404:
            return None
        if answer.status != 200 or "x-ccf-snapshot-name" not in answer.headers:
            raise NodeStartError(f"{target} did not give its snapshot: {answer.status} {answer.body[:200]!r}")
        return os.path.basename(answer.headers["x-ccf-snapshot-name"]), answer.body

    @contextlib.contextmanager
    def _identity_files(self, identity: NodeIdentity) -> Iterator[tuple[str, str]]:
        """The node's self-signed certificate and key in a private temporary directory (ssl reads files)."""
        with tempfile.TemporaryDirectory() as private:
            cert_path, key_path = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
            with open(cert_path, "w") as f:
                f.write(cert_pem(identity.self_signed))
            with os.fdopen(os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(key_pem(identity.key))
            yield cert_path, key_path

    async def _ask_to_join(self, identity: NodeIdentity, request: JoinRequest) -> dict[str, Any]:
        target = self.config.join_target
        assert target is not None
        with self._identity_files(identity) as (cert_path, key_path):
            while True:
                client = ServiceClient(target, self.config.service_certificate_file, cert=cert_path, key=key_path)
                try:
                    answer = client.call("POST", "/node/join", request.to_json())
                except OSError as e:
                    logger.info(f"cannot reach {target} yet ({e}); trying again")
                    answer = None
                finally:
                    client.close()
                if answer is not None and answer.status == 308 and "location" in answer.headers:
                    target = answer.headers["location"].removesuffix("/node/join")
                    continue
                if answer is not None and answer.status == 200:
                    body = answer.json()
                    if "network_info" in body:
                        return dict(body["network_info"])
                    logger.info(f"joining as {body['node_status']}; waiting to be trusted")
                elif answer is not None:
                    raise NodeStartError(f"{target} refused the join: {answer.status} "
                                         f"{answer.body.decode(errors='replace')[:300]}")
                await asyncio.sleep(0.2)

    def _snapshot_at(self, seqno: int) -> bytes:
        for name in os.listdir(self.config.snapshot_dir):
            parsed = parse_snapshot_name(name)
            if parsed is not None and parsed[0] == seqno and parsed[2]:
                with open(os.path.join(self.config.snapshot_dir, name), "rb") as f:
                    return f.read()
        raise NodeStartError(f"the ledger starts after seqno {seqno} but no committed snapshot at {seqno} is in "
                             f"{self.config.snapshot_dir}")

    def _tls(self, identity: NodeIdentity) -> Any:
        assert identity.endorsed is not None
        # ssl loads keys from files only: a private temporary file, removed at once
        fd, key_path = tempfile.mkstemp(dir=self.config.data_dir, prefix=".tls-")
        cert_path = key_path + ".crt"
        try:
            with os.fdopen(fd, "w") as f:
                f.write(key_pem(identity.key))
            with open(cert_path, "w") as f:
                f.write(cert_pem(identity.endorsed))
            return server_context(cert_path, key_path)
        finally:
            for p in (key_path, cert_path):
                if os.path.exists(p):
                    os.unlink(p)

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        os.makedirs(self.config.data_dir, exist_ok=True)
        os.makedirs(self.config.snapshot_dir, exist_ok=True)
        for name in os.listdir(self.config.snapshot_dir):  # left by a node that was killed while snapshotting
            if name.startswith(".snapshot-") and name.endswith(".partial"):
                os.unlink(os.path.join(self.config.snapshot_dir, name))
        host, port = self.config.host_port
        raft: Raft | None = None
        recovery_snapshot: bytes | None = None
        if sealing.is_sealed(self.config.data_dir):
            with _loading():
                ledger, keys, raft = self._resume()
        elif self.config.recover is not None:
            if port == 0:
                raise NodeStartError("a recovering service needs a fixed rpc_address port (it is in the ledger)")
            with _loading():
                ledger, keys, raft, recovery_snapshot = self._start_recovery()
        elif self.config.join_target is not None:
            ledger, keys, raft = await self._join()
        else:
            if port == 0:
                raise NodeStartError("a new service needs a fixed rpc_address port (it is written in genesis)")
            ledger, keys = self._start_new(self.config.rpc_address)
        _write_file(self.config.service_certificate_file, ledger.service.pem)
        app = load_app(self.config.app)
        quote = self._quote(keys.identity)
        self.enclave = enclave = Enclave(ledger, keys, quote, app, self, self.config.enclave,
                                         raft=raft or sole_voter(ledger, config=self.consensus_config),
                                         recovery_snapshot=recovery_snapshot)

        assert keys.identity.endorsed is not None
        server_ctx, client_ctx = tls_contexts(cert_pem(keys.identity.endorsed), key_pem(keys.identity.key),
                                              ledger.service.pem)
        n2n_host, _, n2n_port = self.config.n2n_address.rpartition(":")
        self.channels = Channels(enclave.node_id, server_ctx, client_ctx, enclave.receive, source_host=n2n_host)
        try:
            await self.channels.listen(n2n_host, int(n2n_port))
        except OSError as e:
            raise NodeStartError(f"cannot listen on {self.config.n2n_address}: {e.strerror or e}") from None
        self.set_peers(self._peers)

        async def handle(request: Request) -> Response:
            response = enclave.handle(request)
            return await self._forward(request) if response is ANSWER_LATER else response

        try:
            server = await serve(handle, host, port, ssl_context=self._tls(keys.identity),
                                 limits=self.config.http, metrics=self.metrics, sync_handler=enclave.handle)
        except OSError as e:
            raise NodeStartError(f"cannot listen on {self.config.rpc_address}: {e.strerror or e}") from None
        bound = server.sockets[0].getsockname()
        self.address = f"{bound[0]}:{bound[1]}"
        for sig in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(sig, self.stopping.set)
        _write_file(os.path.join(self.config.data_dir, READY_FILE), orjson.dumps(
            {"rpc_address": self.address, "node_id": enclave.node_id, "pid": os.getpid(),
             "service_certificate_file": self.config.service_certificate_file}).decode())
        logger.info(f"node {enclave.node_id[:16]}... listening on https://{self.address}")
        ticker = asyncio.create_task(self._tick())
        try:
            await self.stopping.wait()
        finally:
            logger.info("stopping")
            ticker.cancel()
            server.close()
            await server.wait_closed()
            if self.channels is not None:
                await self.channels.close()
            enclave.stop_snapshots()
            if self._snapshot_child is not None:  # an unfinished snapshot is abandoned
                pid, partial = self._snapshot_child
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                if os.path.exists(partial):
                    os.unlink(partial)
            enclave.sign()
            ledger.flush()
            if ledger.files is not None:
                ledger.files.close()
            ready = os.path.join(self.config.data_dir, READY_FILE)
            if os.path.exists(ready):
                os.unlink(ready)
            logger.info("stopped")

    async def _tick(self) -> None:
        assert self.enclave is not None
        interval = self.config.tick_ms / 1000
        while True:
            await asyncio.sleep(interval)
            try:
                self.enclave.tick()
            except Exception:  # a failing signature must be seen, and must not stop the timer silently
                logger.exception("signature failed")
                raise


@contextlib.contextmanager
def _loading() -> Iterator[None]:
    """Replaying a ledger builds millions of long-lived objects and no cycles: the cyclic collector is paused
    meanwhile (about 12% of a replay's time), and what was built is then moved out of its sight for good
    (`gc.freeze`), so that later collections do not walk the whole state again and again."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


_WORKER_JOBS: list[Callable[[], Any]] = []


def _run_worker_job(index: int) -> Any:
    """In a worker forked by `run_in_workers`: run the job it inherited."""
    _die_with_parent()
    return _WORKER_JOBS[index]()


def _die_with_parent() -> None:
    """Linux: a snapshot child is killed with its node (PR_SET_PDEATHSIG), never left writing alone."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


def _use_uvloop() -> None:
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m network.host.node", description="Run a node in virtual mode.")
    parser.add_argument("--config", required=True, help="the node's JSON configuration")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure_logging(config.log.format, config.log.level)
    _use_uvloop()
    try:
        asyncio.run(NodeHost(config).run())
    except (NodeStartError, ConfigError) as e:
        logger.error(str(e))
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
