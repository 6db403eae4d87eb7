"""The one interface between a node's host (untrusted) and its enclave (trusted); see docs/architecture.md.

Like an Open Enclave `.edl` file, or the typed messages of CCF's host/enclave ringbuffer, this module lists
every call that crosses the boundary, and nothing else crosses:

- `EnclaveCalls`: what the host asks of the enclave ("ecalls"): start, a timer tick, the bytes of a
  connection (client or node-to-node, still TLS-encrypted), a connection opened or closed, stop.
- `HostCalls`: what the enclave asks of the host ("ocalls"): send or close a connection's (encrypted) bytes,
  open an outgoing connection, pause reading one, store the sealed secrets (an encrypted blob), persist the
  consensus term and vote, say that it started, and keep snapshot files.
- the ledger chunk files (`ledger.files.LedgerFiles`, handed over at start): entries are appended and read
  back as bytes whose private part the enclave encrypted.

Arguments are plain values (bytes, str, int, bool, None, tuples and frozen dataclasses of them), so each call
is a message that can cross a pipe. What the host gets is by construction ciphertext or public: TLS
terminates inside the enclave, so a client's request and its answer reach the host only as TLS records; the
node's keys and the ledger secrets never leave the enclave except sealed. `tests/network/test_boundary.py`
checks this at run time.

The enclave can run in its own process (`pyccf-node --enclave-process`): each call is then a frame on a
socket pair (`encode_call` / `decode_call`: CBOR, only the calls and types declared here are accepted, so a
host cannot make the enclave run anything else). Two calls carry code rather than data and so exist only
in-process: `run_snapshot` and `run_in_workers` (the enclave's own processes, forked from wherever the
enclave runs); in the separate process the enclave forks itself for them.
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import cbor2

from ledger.files import LedgerFiles

RPC_INTERFACE = "primary_rpc_interface"  # clients (CCF's name for the node's RPC interface)
NODE_TO_NODE = "node_to_node"  # other nodes of the service
OUTGOING = "outgoing"  # a connection the enclave asked the host to open
# CCF's names for node_certificate.curve_id (the enclave maps them to curves: ledger.identity.IDENTITY_CURVES; the host
# only checks the configuration names one)
IDENTITY_CURVE_IDS = ("Secp256R1", "Secp384R1")
DEFAULT_IDENTITY_CURVE_ID = "Secp256R1"


@dataclass(frozen=True)
class SignaturePolicy:
    """When the primary signs: after `every_tx` transactions, or `every_ms` after the first unsigned one; and, with
    `group_commit`, as soon as the enclave has handled what the host gave it in one turn of its loop while none of
    its signatures is waiting for a majority (what arrives while one waits is signed together once it commits)."""

    every_tx: int = 5000
    every_ms: int = 20
    group_commit: bool = True


@dataclass(frozen=True)
class EnclaveSettings:
    signatures: SignaturePolicy = field(default_factory=SignaturePolicy)
    # 0: only when governance asks (trigger_snapshot); otherwise at the first signature this many transactions after
    # the last snapshot, once the rest after it has passed (`enclave.SNAPSHOT_REST_FACTOR`)
    snapshot_every_tx: int = 10_000
    # CCF's consensus.max_uncommitted_tx_count: past it, /app and /gov answer 503 TooManyPendingTransactions
    max_uncommitted_tx: int = 10_000
    # messages waiting for a node-to-node channel (per peer) before new ones are dropped (consensus tolerates loss)
    node_to_node_queue_limit: int = 10_000
    # committed transactions whose Merkle nodes, digests and signature records stay in memory (older ones' receipts
    # and historical reads are checked against the trees their signatures stored in the ledger files)
    retained_records: int = 65_536
    # CCF's node_certificate.curve_id: the curve of the key a new node generates, and of the service identity it
    # creates when it starts or recovers a service (ledger.identity.IDENTITY_CURVES)
    identity_curve: str = DEFAULT_IDENTITY_CURVE_ID


@dataclass(frozen=True)
class HttpLimits:
    """The limits of the RPC interface (the configuration's `http` section; CCF's names where CCF has them)."""

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    idle_timeout: float = 60.0  # seconds a connection may sit with no request in progress
    max_pipelined: int = 64  # requests parsed ahead of their answers before reading pauses
    max_unsent_bytes: int = 256 * 1024  # a connection's answers waiting to be sent before the host stops reading it
    # CCF's max_open_sessions_soft / _hard: past the soft cap a new session is answered 503 SessionCapExhausted
    # and closed; past the hard cap it is closed before its TLS handshake completes
    max_open_sessions_soft: int = 1000
    max_open_sessions_hard: int = 1010
    tls_handshake_timeout: float = 10.0  # seconds from the connection to the end of the TLS handshake
    request_timeout: float = 30.0  # seconds from a request's first byte to its last (headers and body)


@dataclass(frozen=True)
class GenesisMember:
    certificate_pem: str
    encryption_public_key_pem: str | None = None
    member_data: Any = None


@dataclass(frozen=True)
class NewService:
    """Start a new service: its first members, constitution and configuration (read by the host from files)."""

    members: tuple[GenesisMember, ...]
    constitution: str
    service_configuration: dict[str, Any]


@dataclass(frozen=True)
class JoinService:
    """Join a running service through the node at `target` ("host:port"), whose certificate is checked
    against `service_certificate_pem`."""

    target: str
    service_certificate_pem: str


@dataclass(frozen=True)
class RecoverService:
    """Start a new service from a lost one's ledger (gathered by the host into this node's ledger files)."""

    previous_service_certificate_pem: str
    snapshot_dirs: tuple[str, ...]
    start_from_snapshot: bool = False


@dataclass(frozen=True)
class EnclaveStart:
    """Everything the enclave is given at start. `sealed` is what a previous run stored with `store_sealed`
    (then the node resumes its service); otherwise exactly one of `new`, `join`, `recover` says what to do."""

    data_dir: str  # where the virtual platform keeps its sealing key (a TEE derives it from the CPU)
    rpc_address: str
    node_to_node_address: str
    published_node_to_node_address: str | None
    snapshot_dir: str
    host_data: str
    app: str  # "module:attribute" of the application's endpoints
    settings: EnclaveSettings
    http: HttpLimits
    election_ticks: int
    heartbeat_ticks: int
    chunk_size: int
    sealed: bytes | None = None
    consensus: tuple[int, str | None] | None = None  # the persisted (term, voted_for)
    new: NewService | None = None
    join: JoinService | None = None
    recover: RecoverService | None = None


class EnclaveCalls(Protocol):
    """Host -> enclave."""

    def start(self, start: EnclaveStart, ledger: LedgerFiles) -> None:
        """Start (possibly over several turns of the loop: a join waits for the service); the enclave answers
        with `HostCalls.started` or `HostCalls.start_failed`."""

    def tick(self) -> None:
        """The host's timer (every `tick_ms`): signatures, consensus heartbeats and elections keep time by it."""

    def connection_opened(self, conn: int, interface: str, peer: str) -> None:
        """A connection was accepted on `interface`, or an outgoing one the enclave asked for is open."""

    def received(self, conn: int, data: bytes) -> None:
        """Bytes read from a connection (TLS records)."""

    def connection_closed(self, conn: int) -> None:
        """The connection is gone (closed by the peer, failed, or never opened)."""

    def stop(self) -> None:
        """The node stops: sign what is pending and flush; no new snapshot is started. Answered by
        `HostCalls.stopped`."""


class HostCalls(Protocol):
    """Enclave -> host."""

    def started(self, node_id: str, service_certificate_pem: str) -> None:
        """The enclave holds its service: the host writes the service certificate and starts listening."""

    def start_failed(self, message: str) -> None: ...

    def stopped(self) -> None:
        """The enclave has signed what was pending and flushed (the answer to `EnclaveCalls.stop`)."""

    def failed(self, reason: str) -> None:
        """The enclave cannot go on without its state diverging from the service's (a replicated entry it cannot
        take): the host stops the node, which exits non-zero; restarted, it replays its ledger and rejoins."""

    def send(self, conn: int, data: bytes) -> None:
        """Write TLS records to a connection."""

    def close(self, conn: int) -> None: ...

    def connect(self, conn: int, address: str, local_host: str | None) -> None:
        """Open an outgoing connection to host:port (from `local_host` if given), known as `conn` (an id the
        enclave picks, from `OUTGOING_CONNECTIONS` up); answered by `connection_opened` or
        `connection_closed`."""

    def pause_reading(self, conn: int) -> None: ...

    def resume_reading(self, conn: int) -> None: ...

    def store_sealed(self, blob: bytes) -> None:
        """Keep the sealed secrets durably (given back in `EnclaveStart.sealed`)."""

    def persist_consensus(self, term: int, voted_for: str | None) -> None:
        """Make the term and vote durable before anything that depends on them is sent (Raft §5.1)."""

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        """The newest committed snapshot file (name, bytes)."""

    def snapshot_at(self, seqno: int) -> bytes | None:
        """The committed snapshot at `seqno`, if the host has it."""

    def store_snapshot(self, name: str, data: bytes) -> None:
        """Keep a committed snapshot received from the service (a joining node restarts from it)."""

    def commit_snapshot(self, seqno: int, evidence_seqno: int, receipt_json: bytes) -> None:
        """The evidence of the snapshot at `seqno` is committed: append its receipt to the snapshot file and mark
        the file committed."""

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        """In-process only: run `serialise` in a forked process on the state as it is now, and later call
        `done(sha256 hex or None on failure, place)`, where `place(path)` puts the snapshot bytes at `path`."""

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        """In-process only: run `jobs` in forked worker processes, then call `done` with their results in order,
        or the first error. `result_bytes`: a bound on each job's pickled result, if known (it then travels
        through memory shared with the workers)."""


# The file in a node's data directory where the host keeps the sealed blob (an offline auditor holding the
# virtual platform's sealing key can read the ledger secrets from it: `sealing.unseal_data_dir`).
SEALED_FILE = "sealed_secrets.bin"

# Connection ids: the host numbers the connections it accepts from 1; the enclave numbers the ones it opens
# from here, so that both can name a connection without asking the other.
OUTGOING_CONNECTIONS = 1 << 48

ENCLAVE_CALLS = ("start", "tick", "connection_opened", "received", "connection_closed", "stop")
HOST_CALLS = ("started", "start_failed", "stopped", "failed", "send", "close", "connect", "pause_reading",
              "resume_reading", "store_sealed", "persist_consensus", "latest_snapshot", "snapshot_at", "store_snapshot",
              "commit_snapshot", "run_snapshot", "run_in_workers")
# The ledger files' methods the enclave calls when it runs in its own process (`ledger.files.LedgerFiles`).
FILE_CALLS = ("files.append", "files.flush", "files.commit", "files.truncate", "files.read", "files.read_range",
              "files.chunk_end_of", "files.chunk_file_of", "files.chunk_spans", "files.discard_after",
              "files.start_after", "files.state")
# Calls whose caller waits for the answer (every other call is one-way).
# (`files.append` and `files.commit` are one-way: a failed write makes the next answered call fail.)
ANSWERED = frozenset(("latest_snapshot", "snapshot_at", "files.flush", "files.read", "files.read_range",
                      "files.chunk_end_of", "files.chunk_file_of", "files.chunk_spans", "files.discard_after",
                      "files.start_after", "files.state", "files.truncate"))


# --- the boundary as frames, for an enclave in its own process ---------------------------------------------

class BoundaryError(Exception):
    """A frame that is not a declared call with declared argument types."""


_FRAME = struct.Struct(">I")
MAX_FRAME = 256 * 1024 * 1024
_TYPES = {cls.__name__: cls for cls in (SignaturePolicy, EnclaveSettings, HttpLimits, GenesisMember, NewService,
                                        JoinService, RecoverService, EnclaveStart)}
CALL, ASK, ANSWER = 0, 1, 2  # frame kinds: one-way call, call waiting for its answer, the answer


def _to_wire(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"$t": type(value).__name__,
                **{f.name: _to_wire(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    if isinstance(value, tuple | list):
        return [_to_wire(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_wire(v) for k, v in value.items()}
    return value


def _from_wire(value: Any) -> Any:
    if isinstance(value, dict):
        if "$t" in value:
            cls = _TYPES.get(value["$t"])
            if cls is None:
                raise BoundaryError(f"undeclared type {value['$t']!r}")
            fields = {k: _from_wire(v) for k, v in value.items() if k != "$t"}
            fields = {k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}
            try:
                return cls(**fields)
            except TypeError as e:
                raise BoundaryError(f"bad {cls.__name__}: {e}") from None
        return {k: _from_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_wire(v) for v in value]
    return value


def encode_call(kind: int, ident: int, name: str, args: tuple[Any, ...]) -> bytes:
    body = cbor2.dumps([kind, ident, name, _to_wire(args)])
    return _FRAME.pack(len(body)) + body


def decode_frames(buffer: bytearray, allowed: frozenset[str]) -> list[tuple[int, int, str, list[Any]]]:
    """Take every complete frame off the front of `buffer`: (kind, id, call name, arguments). Answers carry
    the name "" and one argument."""
    frames = []
    pos = 0
    while len(buffer) - pos >= 4:
        (length,) = _FRAME.unpack_from(buffer, pos)
        if length > MAX_FRAME:
            raise BoundaryError(f"a frame of {length} bytes")
        if len(buffer) - pos - 4 < length:
            break
        try:
            kind, ident, name, args = cbor2.loads(bytes(buffer[pos + 4:pos + 4 + length]))
        except Exception as e:  # cbor2 raises several types on garbage; all mean the same here
            raise BoundaryError(f"not a call: {e}") from None
        pos += 4 + length
        if kind not in (CALL, ASK, ANSWER) or not isinstance(args, list) or not isinstance(name, str) or \
                not isinstance(ident, int) or (kind != ANSWER and name not in allowed):
            raise BoundaryError(f"undeclared call {name!r}")
        frames.append((kind, ident, name, _from_wire(args)))
    del buffer[:pos]
    return frames
