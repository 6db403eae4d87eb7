"""The enclave (trusted) core of a node, see docs/architecture.md: keys, ledger secrets, the KV, the frontends.

`Enclave.handle(request)` routes a parsed request to `/app`, `/gov` or `/node`, runs the handler on one KV
transaction and commits it through the `ServiceLedger`. It decides what the host never may: it holds the
node and service keys and the ledger secrets, encrypts private maps before the host sees entry bytes, and
emits signature transactions (every `every_tx` transactions, or at the host's tick once `every_ms` passed
with unsigned transactions). With one node the node is the majority, so once a signature is durable
(flushed by the host) commit advances to it; replication will put consensus at that point.

Governance effects: opening the service and (re)dealing recovery shares are written inside the proposal's
own transaction, so they commit or fail with it; a rekey, a chunk and a snapshot are carried out just
after it commits. Whenever the ledger secrets change the host is asked to re-seal them.

Guarantees: a failed request commits nothing; `/app` answers 404 `FrontendNotOpen` until the service is
Open; every successful response carries `x-ms-ccf-transaction-id` (a read names the last transaction it
observed). Not here: sockets, files, timers (the host's), consensus across nodes.
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import orjson
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from loguru import logger

from governance.errors import GovernanceError
from governance.js_runtime import Effect
from governance.proposals import NodeServices, js_limits
from governance.recovery_shares import RecoverySharesError, clear_submitted_shares, deal_shares
from ledger.bootstrap import NodeKeys
from ledger.endorsements import write_opening_endorsement
from ledger.errors import LedgerError, LedgerFileError, TransactionConflict, VersionUnavailable
from ledger.genesis import VirtualQuote
from ledger.identity import cert_pem, endorse, key_id, self_signed_cert
from ledger.kv import Tx
from ledger.replay import SecretsTaken
from ledger.secrets import opening_secret_record
from ledger.service_ledger import ServiceLedger
from ledger.tables import (
    HISTORICAL_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SINGLETON_KEY,
    dump_json,
)
from ledger.txid import TxID
from network.boundary import EnclaveSettings
from network.consensus.raft import ConsensusConfig, HardState, Raft
from network.enclave.common_endpoints import add_common_endpoints
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints, Mode
from network.enclave.gov_frontend import build_gov_frontend
from network.enclave.historical import HistoricalQueries, ReceiptSource, add_receipt_endpoint
from network.enclave.http import ANSWER_LATER, Pending, Request, Response
from network.enclave.join import JoinRefused, JoinRequest, network_info, node_key_of, record_join
from network.enclave.node_frontend import build_node_frontend
from network.enclave.recovery import NodeRecovery, Phase, follows_recovery, recovering_status
from network.enclave.replication import ReplicationError, Replicator, ledger_entry_meta
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse

IN_TX_EFFECTS = ("transition_service_to_open", "trigger_recovery_shares_refresh")
FORWARDED = "forwarded"  # session flag: this session's requests go to the primary
FORWARDED_IN = "forwarded_in"  # a request another node forwarded here


class HostServices(Protocol):
    """What the enclave asks of its host: bytes and scheduling only."""

    def read_entries(self, start: int, end: int) -> list[bytes]: ...

    def schedule(self, fn: Callable[[], None]) -> None: ...

    def secrets_changed(self) -> None: ...

    def session_metrics(self) -> dict[str, Any]: ...

    def send(self, envelope: Envelope) -> None:
        """Queue a consensus message for another node."""

    def send_now(self) -> None:
        """Write the messages queued so far to their peers now, rather than at the end of the loop's turn."""

    def sync_off_loop(self, work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        """Run `work` (a blocking sync of the ledger files) away from the loop; then call `done` on the loop with
        what it raised, or None. A host that cannot calls both at once."""

    def persist_consensus(self, state: HardState) -> None:
        """Make the term and vote durable before anything that depends on them is sent."""

    def set_peers(self, peers: dict[str, str]) -> None:
        """The other trusted nodes and their node-to-node addresses."""

    def forwarded(self, response: ForwardedResponse) -> None:
        """The primary's answer to a request this node forwarded."""

    def failed(self, reason: str) -> None:
        """This node cannot go on (its state would diverge from the service's): stop it."""

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        """The newest committed snapshot file (name, bytes), if there is one."""

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        """Run `serialise` (now, on the state as it is) and later call `done(sha256 hex or None on failure,
        place)`, where `place(path)` puts the snapshot bytes at `path`."""

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        """Run `jobs` (pure computations on what this process holds now) in other processes, then call `done` on
        the node's loop with their results in order, or the first error. `result_bytes`: a bound on each job's
        pickled result, if known."""


def trusted_nodes(ledger: ServiceLedger) -> dict[str, str | None]:
    """The trusted nodes of the latest state this node holds (consensus voters), with the node-to-node address
    each publishes. Like CCF, and Raft §6, a configuration counts from the state held, not only once
    committed: a node restarting with an old commit point must still know it is one of several."""
    trusted: dict[str, str | None] = {}
    for key, raw in ledger.read_tx().items(NODES_INFO):
        info = orjson.loads(raw)
        if info.get("status") == "Trusted":
            address = info.get("node_to_node_interface", {}).get("published_address")
            trusted[key.decode()] = str(address) if address else None
    return trusted


def sole_voter(ledger: ServiceLedger, term: int | None = None, config: ConsensusConfig | None = None) -> Raft:
    """The consensus core of a service's only node, leading in the ledger's view from its commit point."""
    node_id = ledger.node.node_id
    commit = ledger.committed_seqno
    meta = ledger_entry_meta(ledger)
    raft = Raft(node_id, [node_id], random.Random().randrange, config=config,
                hard_state=HardState(term if term is not None else ledger.view, node_id),
                log=[meta(s) for s in range(commit + 1, ledger.last_seqno + 1)], commit=commit,
                first_index=commit + 1, base_term=(ledger.view_of(commit) or 0) if commit else 0, older=meta)
    raft.assume_leadership()
    return raft


def _identity_arg(value: Any) -> str:
    """A certificate passed by the constitution to a node effect (hex of the PEM's bytes), as text."""
    if not isinstance(value, str):
        return ""
    try:
        return bytes.fromhex(value).decode().strip()
    except (ValueError, UnicodeDecodeError):
        return ""


def _parse_valid_from(text: str) -> dt.datetime:
    """ASN.1 UTCTime (YYMMDDhhmmssZ, what the constitution checks), GeneralizedTime, or ISO UTC. Chosen by
    length: strptime would read a 12-digit UTCTime as a GeneralizedTime of the year 26xx."""
    patterns = {13: "%y%m%d%H%M%SZ", 15: "%Y%m%d%H%M%SZ", 20: "%Y-%m-%dT%H:%M:%SZ"}
    pattern = patterns.get(len(text))
    if pattern is not None:
        try:
            return dt.datetime.strptime(text, pattern).replace(tzinfo=dt.UTC)
        except ValueError:
            pass
    raise ValueError(f"valid_from {text!r} is not an ASN.1 or ISO UTC time")


def _check_rekey_allowed(tx: Tx) -> None:
    """As CCF (`rekey_ledger` in src/node/node_state.h): only an Open service is rekeyed. While a service recovers,
    the shares being submitted are stored under the secret the recovery started with, and the predecessor's
    secrets can only be looked up in the ledger once all of them are restored."""
    info = tx.get_json(SERVICE_INFO, SINGLETON_KEY)
    if not isinstance(info, dict) or info.get("status") != "Open":
        raise GovernanceError("Cannot rekey ledger while the service is not open")


# Unsigned entries a primary replicates at a turn's end without waiting to sign them. Each batch costs a message
# and its answer: fewer than this many wait for the next one, or for the signature (measured in docs/network.md).
EAGER_REPLICATION_MIN = 16

# A snapshot serialises the whole state, so its cost grows with the state while `snapshot_every_tx` stays fixed: at
# a million keys one took about a second of a forked process's CPU, and snapshots every 10 000 transactions would
# run back to back on a core of their own. So an automatic snapshot also waits, after the previous one finished,
# this many times as long as that one took: snapshots then take at most a quarter of the time, whatever the state.
SNAPSHOT_REST_FACTOR = 3.0


class Enclave:
    def __init__(self, ledger: ServiceLedger, keys: NodeKeys, quote: VirtualQuote, app: Endpoints,
                 host: HostServices, settings: EnclaveSettings | None = None, *,
                 clock: Callable[[], float] = time.monotonic, raft: Raft | None = None,
                 recovery_snapshot: bytes | None = None) -> None:
        self.ledger = ledger
        self.keys = keys
        self._quote = quote
        self.host = host
        self.settings = settings or EnclaveSettings()
        # whether handlers may work off the event loop (`Deferred`): a node's runtime awaits the `Pending` answers
        self.may_defer = False
        self._turn_end_asked = False
        self._deferred_in_flight = 0  # requests answered `Pending` and not answered yet
        self.clock = clock
        self.startup_seqno = ledger.last_seqno
        self.historical = HistoricalQueries(ledger, host.read_entries, host.schedule, clock=clock)
        receipts = ReceiptSource(ledger, self.historical)
        self.app = app.copy()
        self.app.attach(lambda: self.ledger.read_tx(), lambda name: self.ledger.store.map_version(name))
        add_common_endpoints(self.app, ledger, "CCF Application API")
        self.gov = build_gov_frontend(ledger)
        self.node = build_node_frontend(ledger)
        for frontend in (self.app, self.gov, self.node):
            add_receipt_endpoint(frontend, receipts)
        self._frontends = {"/app": self.app, "/gov": self.gov, "/node": self.node}
        self._add_join_endpoint()
        self._add_node_removal_endpoint()
        self._add_snapshot_endpoint()
        self._after_commit: list[Callable[[], None]] = []  # what a request's handler asks for once it commits
        self._unsigned = ledger.last_seqno - ledger.last_signature_seqno
        self._first_unsigned_at: float | None = self.clock() if self._unsigned else None
        self._last_snapshot = ledger.last_signature_seqno
        self._snapshot_running = False
        self._snapshot_started_at = 0.0
        self._next_snapshot_at = 0.0  # no automatic snapshot before this (`SNAPSHOT_REST_FACTOR`)
        self._stopping = False  # set by the host when it stops: no new snapshot is started
        self._failed = False  # set when replication could not follow consensus: the node is stopping
        self._service_open = self._read_service_open()
        self._recovery_snapshot = recovery_snapshot
        self.recovery: NodeRecovery | None = None
        self._refresh_service_open()
        # Consensus decides commit: a new service's node is its sole voter and leads at once.
        self.replicator = Replicator(ledger, raft or sole_voter(ledger), keys.encryption_key, host.send,
                                     host.persist_consensus, self._secrets_changed, send_now=host.send_now,
                                     sync_off_loop=host.sync_off_loop,
                                     sync_failed=lambda e: self._fail(f"replication: {e}"))
        self.replicator.process()
        ledger.store.add_global_hook(NODES_INFO, lambda version, changes: self._membership_changed())
        # on a backup the service opens through replicated state, not through a local request
        ledger.store.add_global_hook(SERVICE_INFO, lambda version, changes: self._refresh_service_open())
        self._membership_changed()

    # --- what the frontends see (GovNode, NodeStatus) ---------------------------------------------------

    @property
    def node_id(self) -> str:
        return self.ledger.node.node_id

    @property
    def node_state(self) -> str:
        return self.recovery.phase.value if self.recovery is not None else "PartOfNetwork"

    @property
    def quote(self) -> VirtualQuote:
        return self._quote

    @property
    def self_signed_certificate(self) -> str:
        return cert_pem(self.ledger.node.self_signed)

    def primary_id(self) -> str | None:
        return self.replicator.raft.leader

    def frontend_open(self, prefix: str) -> bool:
        return self._app_open() if prefix == "/app" else True

    def _app_open(self) -> bool:
        """The service is Open and this node holds the whole state (after a recovery: its private replay done)."""
        return self._service_open and (self.recovery is None or self.recovery.phase is Phase.DONE)

    def session_metrics(self) -> dict[str, Any]:
        return self.host.session_metrics()

    def js_metrics(self) -> dict[str, Any]:
        limits = js_limits(self.ledger.read_tx())
        return {"max_heap_size": limits.max_heap_bytes, "max_stack_size": limits.max_stack_bytes,
                "max_execution_time": limits.max_execution_time_ms, "max_cached_interpreters": 0,
                "bytecode_size": 0, "bytecode_used": False}

    def root_at(self, version: int) -> bytes:
        return self.ledger.merkle.root(version + 1)

    def node_services(self) -> NodeServices:
        service = self.ledger.service

        def endorsed_certificate(csr_pem: str, valid_from: str, days: int) -> str:
            csr = x509.load_pem_x509_csr(csr_pem.encode())
            key = csr.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                raise ValueError("a node key must be an EC key")
            return cert_pem(endorse(service.key, service.cert, key, "CCF Node", now=_parse_valid_from(valid_from),
                                    days=int(days)))

        def network_certificate(valid_from: str, days: int) -> str:
            return cert_pem(self_signed_cert(service.key, "CCF Service", ca=True, now=_parse_valid_from(valid_from),
                                             days=int(days)))

        return NodeServices(values={"latest_ledger_secret_seqno": self.ledger.secrets.latest.start},
                            calls={"generateEndorsedCertificate": endorsed_certificate,
                                   "generateNetworkCertificate": network_certificate})

    # --- disaster recovery ---------------------------------------------------------------------------------

    def _ensure_recovery(self, *, secrets_just_replicated: bool = False,
                         predecessor_secrets_arrived: bool = False) -> None:
        """Follow a recovery of the service this node belongs to (from the state held, or once it arrives)."""
        if self.recovery is None and follows_recovery(self.ledger,
                                                      predecessor_secrets_arrived=predecessor_secrets_arrived):
            self.recovery = NodeRecovery(self.ledger, self.host.schedule, self.host.secrets_changed,
                                         self._recovery_snapshot, self.host.run_in_workers,
                                         secrets_just_replicated=secrets_just_replicated)

    def _secrets_changed(self, taken: SecretsTaken) -> None:
        """A replicated entry changed the secrets this node holds (a rekey, or a recovered service handing its
        predecessor's secrets to its nodes)."""
        self.host.secrets_changed()
        self._ensure_recovery(secrets_just_replicated=True,
                              predecessor_secrets_arrived=SecretsTaken.EARLIER in taken)
        if self.recovery is not None:
            self.recovery.secrets_arrived()

    def private_recovery_begun(self) -> bool:
        return self.recovery is not None and not self.recovery.wants_shares()

    def recovery_shares_complete(self, tx: Tx) -> None:
        self._ensure_recovery()
        if self.recovery is None:
            raise RecoverySharesError("this service is not recovering")
        secrets = self.recovery.shares_complete(tx)
        self._after_commit.append(functools.partial(self.recovery.take_secrets, secrets))

    def _open_recovered_service(self) -> None:
        """The primary holds the whole state of its predecessor: open the recovered service."""
        assert self.recovery is not None
        tx = self.ledger.begin()
        self.recovery.open_writes(tx)
        self.ledger.request_chunk()  # the recovery's own chunk ends at the next signature, then is committed
        if self.ledger.commit(tx) is not None:
            self._count(1)
            self._refresh_service_open()
            logger.info("recovered service opened")

    # --- requests -------------------------------------------------------------------------------------

    def handle(self, request: Request) -> Response:
        path = request.target.split("?", 1)[0]
        prefix = path[: path.find("/", 1)] if path.count("/") > 1 else path
        frontend = self._frontends.get(prefix)
        if frontend is None:
            return Response.error(404, "ResourceNotFound", f"Unknown path: {path}.")
        if frontend is self.app and not self._app_open():
            return Response.error(404, "FrontendNotOpen", "Frontend is not open.")
        if frontend is not self.node and \
                self.ledger.last_seqno - self.ledger.committed_seqno >= self.settings.max_uncommitted_tx:
            # backpressure while a majority does not keep up (the /node frontend is exempt, as in CCF)
            return Response.error(503, "TooManyPendingTransactions",
                                  f"{self.ledger.last_seqno - self.ledger.committed_seqno} transactions are "
                                  "waiting to be committed; try again later")
        if request.session is not None and self._must_forward(frontend, request):
            if request.session.get(FORWARDED_IN):
                return Response.error(503, "RequestAlreadyForwarded",
                                      "This node is not the primary any more; send the request again")
            request.session[FORWARDED] = True
            return ANSWER_LATER  # the host forwards it to the primary and relays the answer
        response = frontend.dispatch(request, functools.partial(self._begin, request.target), self._finish,
                                     node=self, may_defer=self.may_defer,
                                     answered=self._deferred_answered)
        if isinstance(response, Pending):
            self._deferred_in_flight += 1
        return response

    def _deferred_answered(self) -> None:
        """A deferred request was answered (its transaction committed): end a turn once those answered together
        are all in, so that one signature covers them (group commit, as for requests handled in one turn)."""
        self._deferred_in_flight -= 1
        if not self._turn_end_asked:
            self._turn_end_asked = True
            self.host.schedule(self._deferred_turn_ended)

    def _deferred_turn_ended(self) -> None:
        self._turn_end_asked = False
        self.turn_ended()

    @property
    def is_primary(self) -> bool:
        return self.replicator.is_primary

    def _begin(self, target: str, mode: Mode) -> Tx:
        if mode is not Mode.READWRITE:
            return self.ledger.read_tx()
        self._after_commit = []
        if not self.is_primary:
            # Writes happen on the primary; until backups forward them, they send the client there.
            address = self._rpc_address(self.primary_id())
            if address is None:
                raise EndpointError(503, "PrimaryNotFound", "No primary is known to this node")
            raise EndpointError(308, "NodeCannotHandleRequest", "Writes are served by the primary",
                                (("location", f"https://{address}{target}"),))
        return self.ledger.begin()

    def _rpc_address(self, node_id: str | None) -> str | None:
        info = self.ledger.read_tx().get_json(NODES_INFO, node_id) if node_id else None
        if not isinstance(info, dict):
            return None
        interface = info.get("rpc_interfaces", {}).get("primary_rpc_interface", {})
        address = interface.get("published_address")
        return str(address) if address else None

    # --- membership (from committed governance state) -------------------------------------------------

    def _membership_changed(self) -> None:
        """Voters are the trusted nodes of the state held (see `trusted_nodes`); the others are peers."""
        trusted = trusted_nodes(self.ledger)
        voters = set(trusted)
        peers = {node_id: address for node_id, address in trusted.items() if node_id != self.node_id and address}
        if not voters:
            return  # a joiner that has not caught up yet: it keeps the peers it was given
        if voters != set(self.replicator.raft.voters):
            self.replicator.raft.set_voters(voters)
        self.host.set_peers(peers)
        if self.is_primary and self.ledger.committed_seqno:
            retired = [key.decode() for key, raw in self.ledger.read_tx(self.ledger.committed_seqno).items(NODES_INFO)
                       if (info := orjson.loads(raw)).get("status") == "Retired" and not info.get("retired_committed")]
            if retired:  # not from inside the commit that told us: on the host's next turn
                self.host.schedule(lambda: self._mark_retired_committed(retired))

    def _mark_retired_committed(self, node_ids: list[str]) -> None:
        """CCF's retired_committed: a node's retirement is committed, so it can be removed from the network."""
        if not self.is_primary:
            return
        tx = self.ledger.begin()
        for node_id in node_ids:
            info = tx.get_json(NODES_INFO, node_id)
            if isinstance(info, dict) and info.get("status") == "Retired" and not info.get("retired_committed"):
                tx.put_json(NODES_INFO, node_id, {**info, "retired_committed": True})
        if self.ledger.commit(tx) is not None:
            self._count(1)

    def receive(self, envelope: Envelope) -> None:
        """A message from another node: consensus, or a request a backup forwards, or its answer."""
        m = envelope.message
        if isinstance(m, ForwardedRequest):
            request = Request(m.method, m.target, dict(m.headers), m.body, m.peer_cert, {FORWARDED_IN: True})
            response = self.handle(request)
            if isinstance(response, Pending):
                response.then(functools.partial(self._answer_forwarded, m))
            else:
                self._answer_forwarded(m, response)
        elif isinstance(m, ForwardedResponse):
            self.host.forwarded(m)
        elif not self._failed:
            try:
                self.replicator.receive(envelope)
            except (ReplicationError, LedgerError) as e:
                # consensus took the message but the ledger could not follow: going on would serve a state that
                # differs from the service's, so the node stops (restarted, it replays its ledger and rejoins)
                self._fail(f"replication: {e}")

    def _answer_forwarded(self, request: ForwardedRequest, response: Response) -> None:
        self.host.send(Envelope(ForwardedResponse(self.node_id, request.sender, request.id, response.status,
                                                  response.headers, response.body)))

    def _ledger_unwritable(self, e: LedgerFileError) -> None:
        """The disk refused a ledger write (full, read-only, failing): stop rather than go on unable to keep
        writes (CCF's host aborts on a failed ledger write)."""
        self._fail(f"the ledger cannot be written: {e}")

    def _fail(self, reason: str) -> None:
        """Stop this node, once: it cannot go on without diverging from the service or losing writes."""
        if not self._failed:
            self._failed = True
            self.host.failed(reason)

    def _must_forward(self, frontend: Endpoints, request: Request) -> bool:
        """On a backup: writes go to the primary, and so does everything after them in the same session
        (CCF's session consistency: a client reads its own writes), but for the node frontend's reads, which
        are about this node (its quote, its commit point: CCF never forwards them)."""
        if self.is_primary:
            return False
        if request.session is not None and request.session.get(FORWARDED) and frontend is not self.node:
            return True
        try:
            endpoint, _ = frontend.match(request.method, request.target.split("?", 1)[0])
        except EndpointError:
            return False  # answered here: 404 or 405
        if endpoint.forwarding != "sometimes":
            return endpoint.forwarding == "always"
        return endpoint.mode is Mode.READWRITE

    def _add_snapshot_endpoint(self) -> None:
        @self.node.endpoint("GET", "/snapshot")
        def snapshot(ctx: EndpointContext) -> object:
            """The latest committed snapshot, for a trusted node to start from (its node certificate over TLS)."""
            try:
                node_id = key_id(node_key_of(ctx.request.peer_cert))
            except JoinRefused as e:
                raise EndpointError(401, e.code, e.message) from None
            info = ctx.tx.get_json(NODES_INFO, node_id)
            if not isinstance(info, dict) or info.get("status") != "Trusted":
                raise EndpointError(403, "AuthorizationFailed", "Only a trusted node may fetch a snapshot")
            # a recovering service's snapshots would be its predecessor's, read public-only here: none is handed out
            found = self.host.latest_snapshot() if self.recovery is None else None
            if found is None:
                raise EndpointError(404, "ResourceNotFound", "This node has no committed snapshot")
            name, data = found
            return Response(200, data, (("content-type", "application/octet-stream"), ("x-ccf-snapshot-name", name)))

    def _add_node_removal_endpoint(self) -> None:
        @self.node.endpoint("DELETE", "/network/nodes/{node_id}", mode=Mode.READWRITE)
        def remove(ctx: EndpointContext) -> object:
            """Remove a node whose retirement is committed."""
            node_id = ctx.params["node_id"]
            info = ctx.tx.get_json(NODES_INFO, node_id)
            if not isinstance(info, dict):
                raise EndpointError(404, "ResourceNotFound", f"Node {node_id} does not exist")
            if info.get("status") != "Retired" or not info.get("retired_committed"):
                raise EndpointError(400, "NodeNotRetiredCommitted", f"Node {node_id} is not retired and committed")
            ctx.tx.remove(NODES_INFO, node_id)
            ctx.tx.remove(NODES_ENDORSED_CERTS, node_id)
            return True

    def _add_join_endpoint(self) -> None:
        @self.node.endpoint("POST", "/join", mode=Mode.READWRITE)
        def join(ctx: EndpointContext) -> object:
            """A node asks to join the service (its self-signed certificate over TLS, its quote)."""
            try:
                request = JoinRequest.parse(ctx.json())
                status, node_id = record_join(ctx.tx, request, node_key_of(ctx.request.peer_cert),
                                              self.ledger.service, self.ledger.secrets.latest.start)
            except JoinRefused as e:
                raise EndpointError(401 if e.code == "InvalidAuthenticationInfo" else 400, e.code, e.message) \
                    from None
            answer: dict[str, Any] = {"node_status": status, "node_id": node_id}
            if self.ledger.committed_seqno:
                info = network_info(self.ledger.read_tx(self.ledger.committed_seqno), node_id, self.ledger.service,
                                    self.ledger.secrets)
                if info is not None:
                    answer["network_info"] = info
            return answer

    def _finish(self, ctx: EndpointContext) -> str | None:
        if ctx.mode is not Mode.READWRITE:
            return str(self.ledger.txid(ctx.tx.read_version))
        if ctx.may_defer and not self.is_primary:
            # a deferred transaction outlived this node's primacy: it must not commit on a backup
            ctx.tx.abandon()
            raise EndpointError(503, "TransactionReplicationFailed",
                                "This node stopped being the primary before the transaction committed; send it again")
        effects: list[Effect] = list(ctx.effects)
        after, self._after_commit = self._after_commit, []
        try:
            for effect in effects:
                if effect.name in IN_TX_EFFECTS:
                    self._in_tx_effect(ctx.tx, effect)
                elif effect.name == "trigger_ledger_rekey":
                    _check_rekey_allowed(ctx.tx)
            txid = self.ledger.commit(ctx.tx)
        except GovernanceError as e:
            raise EndpointError(500, "InternalError", f"Failed to apply(): {e.message}") from None
        except LedgerFileError as e:  # the transaction was rolled back; the node stops
            self._ledger_unwritable(e)
            raise EndpointError(500, "InternalError", f"Transaction could not be written to the ledger: {e}") \
                from None
        except LedgerError as e:
            if ctx.may_defer and isinstance(e, TransactionConflict | VersionUnavailable):
                raise  # a deferred request runs again (Endpoints.dispatch)
            raise EndpointError(500, "InternalError", f"Transaction could not be committed: {e}") from None
        for callback in after:
            callback()
        if txid is None:
            return str(self.ledger.txid(ctx.tx.read_version))
        self._count(1)
        if effects:
            self._service_open = self._read_service_open()
            for effect in effects:
                if effect.name not in IN_TX_EFFECTS:
                    self._post_commit_effect(effect)
        elif ctx.request.target.startswith("/gov/"):
            self._service_open = self._read_service_open()
        return str(txid)

    def _refresh_service_open(self) -> None:
        self._service_open = self._read_service_open()
        self._ensure_recovery()
        if self._service_open and self.recovery is None and len(self.ledger.service_certs) > 1:
            self.ledger.endorse_previous_identities()

    def _read_service_open(self) -> bool:
        info = self.ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
        return isinstance(info, dict) and info.get("status") == "Open"

    # --- governance effects -----------------------------------------------------------------------------

    def _in_tx_effect(self, tx: Tx, effect: Effect) -> None:
        if effect.name == "transition_service_to_open":
            info = dict(tx.get_json(SERVICE_INFO, SINGLETON_KEY) or {})
            if info.get("status") in ("WaitingForRecoveryShares", "Open"):
                return  # as CCF: nothing more to do, whatever the arguments (the proposal is idempotent)
            if _identity_arg(effect.args.get("next_identity")) != str(info.get("cert", "")).strip():
                raise GovernanceError("Service identity mismatch: next_service_identity is not this service's")
            if info.get("status") == "Recovering":
                previous = tx.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY)
                if _identity_arg(effect.args.get("previous_identity")) != str(previous or "").strip():
                    raise GovernanceError("Previous service identity does not match")
                info["status"] = "WaitingForRecoveryShares"
                tx.put_json(SERVICE_INFO, SINGLETON_KEY, info)
                clear_submitted_shares(tx)
                logger.info("recovering service waits for recovery shares")
                return
            info["status"] = "Open"
            info["previous_service_identity_version"] = tx.get_version(SERVICE_INFO, SINGLETON_KEY)  # as CCF's open
            tx.put_json(SERVICE_INFO, SINGLETON_KEY, info)
            write_opening_endorsement(tx, self.ledger.service, str(info.get("current_service_create_txid", "2.1")),
                                      int(self.ledger.clock()))
            if tx.get(HISTORICAL_SECRETS, SINGLETON_KEY) is None:
                tx.put(HISTORICAL_SECRETS, SINGLETON_KEY, dump_json(opening_secret_record(self.ledger.secrets.latest)))
            deal_shares(tx, self.ledger.secrets.latest.raw)
            logger.info("service opened")
        elif effect.name == "trigger_recovery_shares_refresh":
            info = tx.get_json(SERVICE_INFO, SINGLETON_KEY)
            if isinstance(info, dict) and info.get("status") == "Open":
                deal_shares(tx, self.ledger.secrets.latest.raw)

    def _post_commit_effect(self, effect: Effect) -> None:
        if effect.name == "trigger_ledger_rekey":
            self.rekey()
        elif effect.name == "trigger_ledger_chunk":
            self.ledger.request_chunk()
        elif effect.name == "trigger_snapshot":
            self.snapshot()
        elif effect.name == "refresh_app_bytecode_cache":
            pass  # no bytecode cache here: a JS app's interpreter is rebuilt whenever its modules change
        else:
            logger.warning(f"governance asked for an unknown node effect {effect.name!r}; ignored")

    def rekey(self) -> TxID | None:
        """A new ledger secret for later writes; shares are dealt again for it once the service is Open."""
        # (a node still reading its predecessor's private ledger once the service is Open may rekey: the opening
        # continued the secret chain already)
        if recovering_status(self.ledger) is not None:
            logger.warning("a rekey is not carried out while the service recovers (the secret chain must end at "
                           "the recovered service's first secret); propose it again once the service is Open")
            return None
        txid = self.ledger.rekey()
        self._count(1)
        self.host.secrets_changed()
        if self._service_open:
            tx = self.ledger.begin()
            deal_shares(tx, self.ledger.secrets.latest.raw, previous_record_seqno=txid.seqno)
            if self.ledger.commit(tx) is not None:
                self._count(1)
        logger.info(f"ledger rekeyed at {txid}")
        return txid

    def snapshot(self) -> None:
        if self.ledger.snapshot_dir is None:
            logger.warning("snapshot asked for, but this node has no snapshot directory")
            return
        self.sign()
        self._start_snapshot()

    def _start_snapshot(self) -> None:
        """Have the host serialise the state at the signature just made (a forked process, so the node keeps
        serving); the evidence transaction is committed once the snapshot's digest is known."""
        if self._snapshot_running or self._stopping or self.recovery is not None:
            return  # no snapshot of a recovering service: it would miss its predecessor's private state
        seqno, serialise = self.ledger.snapshot_job()
        self._last_snapshot = seqno
        self._snapshot_running = True
        self._snapshot_started_at = self.clock()
        self.host.run_snapshot(serialise, functools.partial(self._snapshot_made, seqno))

    def stop_snapshots(self) -> None:
        """The node is stopping: start no snapshot any more (one would outlive the process)."""
        self._stopping = True

    def _snapshot_made(self, seqno: int, digest: str | None, place: Callable[[str], None]) -> None:
        self._snapshot_running = False
        now = self.clock()
        self._next_snapshot_at = now + SNAPSHOT_REST_FACTOR * max(0.0, now - self._snapshot_started_at)
        if digest is None:
            logger.warning(f"the snapshot at seqno {seqno} could not be made; the next one will be tried")
            return
        evidence = self.ledger.record_snapshot(seqno, digest, place)
        self._count(1)
        logger.info(f"snapshot at seqno {seqno} (evidence {evidence})")

    # --- signatures and commit ----------------------------------------------------------------------------

    def _count(self, n: int) -> None:
        if self._unsigned == 0:
            self._first_unsigned_at = self.clock()
        self._unsigned += n
        if self._unsigned >= self.settings.signatures.every_tx and not self.replicator.syncing:
            self.sign()

    def tick(self) -> None:
        """Called by the host every few milliseconds: sign if unsigned transactions waited long enough, and
        let consensus keep time (heartbeats, elections)."""
        if self._failed:
            return
        try:
            # (not while the last signature's sync runs off the loop: its commit decides the next one, as in
            # group commit, rather than signatures piling up behind a slow disk)
            if self.is_primary and self._unsigned and self._first_unsigned_at is not None and \
                    not self.replicator.syncing and \
                    (self.clock() - self._first_unsigned_at) * 1000 >= self.settings.signatures.every_ms:
                self.sign()
            self.replicator.tick()
        except LedgerFileError as e:
            self._ledger_unwritable(e)
            return
        recovery = self.recovery
        if recovery is not None:
            if self.is_primary and recovery.ready_to_open():
                self._open_recovered_service()
            elif recovery.phase is Phase.DONE and self._service_open:
                self.ledger.endorse_previous_identities()
                self.recovery = None  # the recovery is over for this node
                if self.is_primary and self.ledger.snapshot_dir is not None:
                    self.snapshot()  # as CCF at the opening: a disaster soon after starts from here

    def turn_ended(self) -> None:
        """The runtime has handled a turn's worth of input (requests, acknowledgements). Group commit: sign now
        if nothing signed is still waiting for a majority. At light load a write is signed at once instead of
        waiting for `every_ms`; under load, transactions gather while a signature replicates, so each signature
        covers more of them (the batch grows with the load, and so does the time between signatures)."""
        if self._failed or not (self._unsigned and self.is_primary):
            return
        try:
            if self.settings.signatures.group_commit and not self._deferred_in_flight and \
                    self.ledger.last_signature_seqno <= self.ledger.committed_seqno:
                self.sign()
            elif self.replicator.unproposed() >= EAGER_REPLICATION_MIN:
                # Not signing at this turn's end (a signature is still waiting for a majority, more commits are
                # on their way, or group commit is off and `every_ms` decides). Replicate what gathered now, so
                # that the backups have handled it by the time the signature arrives: a signature's round trip
                # then carries little more than the signature itself.
                self.replicator.sync()
        except LedgerFileError as e:
            self._ledger_unwritable(e)

    def sign(self) -> TxID | None:
        """Emit a signature over everything so far, make it durable, and commit up to it."""
        if self._unsigned == 0 or not self.is_primary:
            return None
        txid = self.ledger.emit_signature()
        self._unsigned = 0
        self._first_unsigned_at = None
        self.replicator.sync()  # consensus: flush, replicate, commit once a majority holds the signature
        interval = self.settings.snapshot_every_tx
        if interval and self.ledger.snapshot_dir is not None and txid.seqno - self._last_snapshot >= interval and \
                self.clock() >= self._next_snapshot_at:
            self._start_snapshot()
        return txid
