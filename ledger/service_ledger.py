"""The enclave side of the ledger: the commit path from a KV transaction to a signed, chunked ledger.

`ServiceLedger` owns the store, the ledger secrets, the Merkle history and the node and service keys,
and drives the host's `LedgerFiles`. For each committed transaction it serialises a CCF entry (private
maps encrypted), derives the commit evidence, appends the Merkle leaf and hands the bytes to the host.
It emits signature transactions, rekeys, chunks (the FORCE_CHUNK_AFTER flag on a signature once the
chunk size is passed), takes snapshots with their evidence, advances commit, rolls back uncommitted
suffixes, and issues receipts for committed transactions.

Guarantees: seqnos are contiguous; the Merkle leaf of seqno s is the digest of entry s; a signature at
s signs the root of leaves 0..s-1; receipts are only issued for committed transactions covered by a
signature. `append_replayed` takes back entries that `ledger.replay` verified from the files.

Not here: consensus (who may commit), time (`clock` is injected), networking.
"""

from __future__ import annotations

import hashlib
import os
import time
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ledger import snapshot_files, snapshots
from ledger.endorsements import endorsement_chain
from ledger.entry import DecodedEntry, serialise_entry
from ledger.errors import (
    LedgerError,
    LedgerFileError,
    ReceiptNotAvailable,
    RollbackBelowCommit,
    SnapshotError,
)
from ledger.files import LedgerFiles
from ledger.framing import FLAG_FORCE_CHUNK_AFTER, FLAG_FORCE_CHUNK_BEFORE, MAX_VIEW
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, endorse, load_cert
from ledger.kv import ZERO_CLAIMS, CommitResult, LastWrites, Store, Tx, WriteSet, last_write
from ledger.merkle import MerkleHistory, PathStep
from ledger.receipts import cose_receipt, json_receipt, json_receipt_for_signature
from ledger.record_proofs import SignatureEntry
from ledger.secrets import LedgerSecret, LedgerSecrets, node_secrets_record, rekey_secret_record
from ledger.signatures import PrimarySignature, signature_writes
from ledger.tables import (
    HISTORICAL_SECRETS,
    NODE_SECRETS,
    NODES_INFO,
    PREVIOUS_IDENTITY_ENDORSEMENT,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SINGLETON_KEY,
    SNAPSHOT_EVIDENCE,
    TREE,
    dump_json,
)
from ledger.txid import TxID

DEFAULT_CHUNK_SIZE = 5 * 1000 * 1000


def _ski(cert: x509.Certificate) -> bytes:
    return cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest


def _aki(cert: x509.Certificate) -> bytes | None:
    try:
        return cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except x509.ExtensionNotFound:
        return None

_sha256 = hashlib.sha256


def _trusted_node_keys(state: Tx) -> dict[str, rsa.RSAPublicKey]:
    keys: dict[str, rsa.RSAPublicKey] = {}
    for node_id, raw in state.items(NODES_INFO):
        info = orjson.loads(raw)
        pem = info.get("encryption_pub_key")
        if info.get("status") != "Trusted" or not isinstance(pem, str):
            continue
        key = serialization.load_pem_public_key(pem.encode())
        if isinstance(key, rsa.RSAPublicKey):
            keys[node_id.decode()] = key
    return keys


@dataclass(frozen=True, slots=True)
class SignatureRecord:
    primary: PrimarySignature
    cose: bytes


class ServiceLedger:
    """Commit path, signatures, chunking, snapshots, rollback and receipts for one node."""

    # Committed transactions whose Merkle nodes and write-set digests stay in memory (at least; they are dropped
    # in batches of as many). Older ones' receipts are rebuilt from the ledger files (`ledger.record_proofs`).
    retained_records = 65_536

    def __init__(
        self,
        *,
        node: NodeIdentity,
        service: ServiceIdentity,
        secrets: LedgerSecrets,
        files: LedgerFiles | None,
        store: Store | None = None,
        merkle: MerkleHistory | None = None,
        view: int = 2,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        clock: Callable[[], float] = time.time,
        snapshot_dir: str | None = None,
        view_history: list[int] | None = None,
    ) -> None:
        self.node = node
        self.service = service
        self.secrets = secrets
        self.files = files
        self.store = store if store is not None else Store()
        self.store.set_view(max(view, self.store.view))
        self.merkle = merkle if merkle is not None else MerkleHistory()
        self.chunk_size = chunk_size
        self.clock = clock
        self.snapshot_dir = snapshot_dir
        # (snapshot seqno, evidence seqno, evidence receipt JSON): append the receipt to the snapshot file and
        # mark it committed; a node's enclave hands this to its host, which owns the files
        self.commit_snapshot: Callable[[int, int, bytes], None] = self._commit_snapshot_file
        first = self.store.version + 1
        if self.merkle.size != first:
            raise LedgerError(f"Merkle history has {self.merkle.size} leaves, store is at {self.store.version}")
        self._first = first  # seqno of the first transaction with a local record
        # CCF's view history: entry v-1 is the first seqno of view v (from a snapshot, or built as we go)
        self._view_starts: list[int] = list(view_history or [])
        self._failure: BaseException | None = None  # a failed write to the files stops this ledger
        # Per transaction since _first, packed (about 45 bytes each rather than 200 as Python objects):
        # write-set digests back to back, entry sizes, and the claims digests that are not all zeros.
        self._wsd = bytearray()
        self._wsd_first = first  # seqno of the first digest in _wsd (older ones were dropped with their tree)
        self._sizes = array("Q")
        self._claims: dict[int, bytes] = {}
        self._signatures: dict[int, SignatureRecord] = {}  # those of the retained records (older: in the files)
        self._sig_seqnos = array("Q")  # every signature's seqno, ascending
        # ...and the write-set digest of each (32 bytes a signature, kept after the records are dropped): it pins
        # the signature entry read back from the host's files, and with it the signed root and the stored tree
        self._sig_digests = bytearray()
        # ...and the certificate each record names (8 B a signature: one string per node certificate, shared).
        # A replayed record names the signer's endorsed certificate when it was replayed, which can differ from
        # the one in the entry once governance re-endorsed the node; a receipt stays the one served before.
        self._sig_certs: list[str] = []
        self._certs: dict[str, str] = {}
        self._records_held = False  # set while a recovery still needs its predecessor's digests
        self._read_back: SignatureEntry | None = None  # the last signature entry read back (reads come in runs)
        self._bytes_since_chunk = 0
        self._chunk_ends: list[int] = []  # seqnos of the signatures that ended a chunk
        self._chunk_requested = False
        self._requested_chunk_ends: set[int] = set()  # chunk ends asked for by request_chunk()
        self._committed = self.store.version
        self._pending_snapshots: list[tuple[int, int]] = []
        # Certificates by which a later service identity endorses an earlier one, by the earlier key's SKI
        # (after a disaster recovery), and the chains they give each node certificate, cached.
        self._identity_endorsements: dict[bytes, x509.Certificate] = {}
        self._chains: dict[str, list[str]] = {}
        # Every service certificate this ledger has held, oldest first (disaster recoveries change it)
        self.service_certs: list[str] = []
        state = self.store.read_tx()
        previous = state.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY)
        for pem in (previous, (state.get_json(SERVICE_INFO, SINGLETON_KEY) or {}).get("cert")):
            self._note_service_cert(pem)
        self.store.add_local_hook(SERVICE_INFO, self._service_info_written)
        # every record of the COSE endorsement table, in ledger order (for COSE receipts across recoveries)
        self._endorsements: list[tuple[int, dict[str, Any]]] = []
        if isinstance(latest := state.get_json(PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY), dict):
            self._endorsements.append((state.get_version(PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY), latest))
        self.store.add_local_hook(PREVIOUS_IDENTITY_ENDORSEMENT, self._endorsement_written)

    # --- state -------------------------------------------------------------------------------------

    @property
    def last_seqno(self) -> int:
        return self.store.version

    @property
    def view(self) -> int:
        return self.store.view

    @property
    def committed_seqno(self) -> int:
        return self._committed

    @property
    def last_signature_seqno(self) -> int:
        return self._sig_seqnos[-1] if self._sig_seqnos else 0

    def set_view(self, view: int) -> None:
        if view > MAX_VIEW:
            raise ValueError(f"view {view} does not fit in 31 bits (CCF's IV)")
        self.store.set_view(view)

    def txid(self, seqno: int) -> TxID:
        view = self.view_of(seqno)
        if view is None:
            raise LedgerError(f"seqno {seqno} is not in this ledger (last {self.store.version})")
        return TxID(view, seqno)

    def view_of(self, seqno: int) -> int | None:
        """The view seqno was committed in (None if the ledger does not hold it)."""
        if not 1 <= seqno <= self.store.version:
            return None
        return bisect_right(self._view_starts, seqno)

    def is_signature(self, seqno: int) -> bool:
        if seqno >= self._wsd_first:  # a retained record: its signature record is held (the replication's hot path)
            return seqno in self._signatures
        i = bisect_left(self._sig_seqnos, seqno)
        return i < len(self._sig_seqnos) and self._sig_seqnos[i] == seqno

    def signature_seqnos(self) -> list[int]:
        return list(self._sig_seqnos)

    def begin(self) -> Tx:
        return self.store.begin()

    def read_tx(self, at: int | None = None) -> Tx:
        return self.store.read_tx(at)

    # --- the commit path ---------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LedgerError(f"this ledger stopped after a failed write to its files: {self._failure}")

    def commit(self, tx: Tx) -> TxID | None:
        """Commit a read-write transaction through the whole path; `TransactionConflict` if stale.

        All or nothing: if the entry cannot be serialised or handed to the host, the store is rolled
        back to before it and the error raised. A transaction that wrote nothing gets no txid (None).
        """
        self._check_usable()
        result = self.store.commit(tx)
        if result is None:
            return None
        self._record_or_undo(result, 0)
        return TxID(result.view, result.seqno)

    def commit_writes(self, writes: WriteSet, claims_digest: bytes = ZERO_CLAIMS, flags: int = 0) -> TxID:
        """Commit a write set built by the node itself (genesis, signatures, governance effects)."""
        self._check_usable()
        if len(claims_digest) != 32:
            raise ValueError("a claims digest is 32 bytes")
        seqno = self.store.version + 1
        view = self.store.view
        self.store.apply_writes(seqno, view, writes)
        self._record_or_undo(CommitResult(seqno, view, writes, claims_digest), flags)
        return TxID(view, seqno)

    def _record_or_undo(self, result: CommitResult, flags: int) -> None:
        try:
            self._record(result, flags)
        except BaseException as e:
            self.store.rollback(result.seqno - 1)
            if isinstance(e, LedgerFileError):
                self._failure = e
            raise

    def _record(self, result: CommitResult, flags: int) -> None:
        """Serialise, hand to the host, then extend the tree and the records (which cannot fail)."""
        seqno, view, writes, claims = result
        secret = self.secrets.latest
        if seqno < secret.start:
            secret = self.secrets.for_seqno(seqno)
        ce_digest = secret.commit_evidence_digest(view, seqno)
        entry = serialise_entry(seqno, view, writes, claims, ce_digest, secret, flags)
        if self.files is not None:
            self.files.append(entry)
        self._remember(seqno, view, _sha256(entry).digest(), ce_digest, claims, len(entry), flags)

    def _remember(self, seqno: int, view: int, wsd: bytes, ce_digest: bytes, claims: bytes, size: int,
                  flags: int) -> None:
        """Extend the Merkle tree and the per-transaction records with the entry just held at `seqno`."""
        self.merkle.append(_sha256(wsd + ce_digest + claims).digest())
        starts = self._view_starts
        while len(starts) < view:
            starts.append(seqno)
        self._wsd += wsd
        if claims != ZERO_CLAIMS:
            self._claims[seqno] = claims
        self._sizes.append(size)
        if flags:
            self._note_chunk_ends(seqno, flags)
            self._count_bytes_since_chunk()
        else:
            self._bytes_since_chunk += size

    def _note_chunk_ends(self, seqno: int, flags: int) -> None:
        """The chunk ends an entry's flags make: just before it, after it, or both."""
        if flags & FLAG_FORCE_CHUNK_BEFORE and seqno > self._first:  # the files ended a chunk just before it
            self._chunk_ends.append(seqno - 1)
        if flags & FLAG_FORCE_CHUNK_AFTER:
            self._chunk_ends.append(seqno)

    def _count_bytes_since_chunk(self) -> None:
        """The bytes of the entries since the last chunk end (what decides when the next chunk ends)."""
        chunk_start = max(self._chunk_ends[-1] + 1 if self._chunk_ends else 0, self._first)
        self._bytes_since_chunk = sum(self._sizes[chunk_start - self._first :])

    def request_chunk(self) -> None:
        """End the current chunk at the next signature (governance's trigger_ledger_chunk)."""
        self._chunk_requested = True

    def emit_signature(self) -> TxID:
        """Sign the root of everything so far: a signature transaction at the next seqno."""
        seqno = self.store.version + 1
        view = self.store.view
        root = self.merkle.root()
        tree_from = self._sig_seqnos[-1] if self._sig_seqnos else self.merkle.first_retained
        tree_from = max(tree_from, self.merkle.first_retained)
        writes, primary, cose_sig = signature_writes(
            self.node, self.service, view, seqno, root, self.merkle.serialise(seqno, tree_from), int(self.clock())
        )
        requested = self._chunk_requested
        flags = FLAG_FORCE_CHUNK_AFTER if requested or self._bytes_since_chunk >= self.chunk_size else 0
        txid = self.commit_writes(writes, flags=flags)
        if requested:
            self._chunk_requested = False
            self._requested_chunk_ends.add(seqno)
        self._add_signature(seqno, SignatureRecord(primary, cose_sig))
        return txid

    def rekey(self, raw: bytes | None = None) -> TxID:
        """Write the rekey transaction and switch secrets after it: the previous secret wrapped by the new
        (for historical reads), and the new secret encrypted to every trusted node (for backups)."""
        seqno = self.store.version + 1
        new = LedgerSecret.create(seqno + 1, raw)
        state = self.store.read_tx()
        # the previous write of this table, found in the store (so rollbacks and snapshots keep it right)
        previous = state.get_version(HISTORICAL_SECRETS, SINGLETON_KEY) or None
        record = rekey_secret_record(self.secrets.latest, new, previous)
        writes: WriteSet = {HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(record)}}
        nodes = _trusted_node_keys(state)
        if nodes:
            writes[NODE_SECRETS] = {SINGLETON_KEY: dump_json(node_secrets_record(nodes, new))}
        txid = self.commit_writes(writes)
        self.secrets.add(new)
        return txid

    def flush(self) -> None:
        """Make everything appended durable (the host fsyncs)."""
        if self.files is not None:
            self.files.flush()

    def flush_in_background(self) -> Callable[[], None] | None:
        """`flush` in two steps (`LedgerFiles.flush_in_background`): the function returned makes what was appended
        until now durable, and may run on another thread; None if nothing needs it."""
        return self.files.flush_in_background() if self.files is not None else None

    def background_flush_failed(self, error: BaseException) -> LedgerError:
        """The function `flush_in_background` returned (so there are files) raised `error`: they stop taking
        writes."""
        assert self.files is not None
        return self.files.background_flush_failed(error)

    # --- commit and rollback -----------------------------------------------------------------------

    def commit_to(self, seqno: int) -> None:
        """Everything up to `seqno` is committed: rename chunks, compact the store, finish snapshots."""
        if seqno <= self._committed:
            return
        if seqno > self.store.version:
            raise LedgerError(f"cannot commit {seqno}: the ledger ends at {self.store.version}")
        if self.files is not None:
            self.files.commit(seqno)
        self._committed = seqno
        self._finish_snapshots()
        self._drop_old_records()
        self.store.compact(seqno)  # last: its global hooks are the caller's code

    def hold_records(self) -> None:
        """Keep every record until `release_records`: a recovering service replays its predecessor's private part
        against the write-set digests its public replay verified (`write_set_digests`), after the secrets are
        back and while new transactions commit."""
        self._records_held = True

    def release_records(self) -> None:
        self._records_held = False

    def _drop_old_records(self) -> None:
        """Forget the tree nodes, write-set digests and signature records of all but the last `retained_records`
        committed transactions: about 100 bytes each (and 700 a signature), which would otherwise grow with the
        ledger. Only with files to read back from, never while records are held, and never while the
        predecessor's secrets of a recovery are still missing (its transactions cannot be read back yet)."""
        target = self._committed - self.retained_records
        if self.files is None or self._records_held or target - self._wsd_first < self.retained_records or \
                not self.secrets.covers(self._first):
            return
        self.merkle.flush_to(target)
        del self._wsd[: 32 * (target - self._wsd_first)]
        sigs = self._sig_seqnos
        for sig in sigs[bisect_left(sigs, self._wsd_first): bisect_left(sigs, target)]:
            self._signatures.pop(sig, None)
        self._wsd_first = target

    def _add_signature(self, seqno: int, record: SignatureRecord) -> None:
        """Note the signature transaction just appended at `seqno` (its write-set digest is the last one)."""
        self._signatures[seqno] = record
        self._sig_seqnos.append(seqno)
        self._sig_digests += self._wsd[-32:]
        self._sig_certs.append(self._shared_cert(record.primary.cert))

    def _shared_cert(self, pem: str) -> str:
        return self._certs.setdefault(pem, pem)

    def _digest_of(self, seqno: int) -> bytes:
        i = seqno - self._wsd_first
        return bytes(self._wsd[32 * i: 32 * i + 32])

    def _signature_entry(self, seqno: int) -> SignatureEntry:
        """The signature transaction at `seqno` (one of `_sig_seqnos`) read back from the files, checked against
        the digest this node kept when it verified it."""
        if self._read_back is not None and self._read_back.seqno == seqno:
            return self._read_back
        i = bisect_left(self._sig_seqnos, seqno)
        read = SignatureEntry.read(self._read_entry(seqno), seqno, bytes(self._sig_digests[32 * i: 32 * i + 32]))
        self._read_back = replace(read, primary=replace(read.primary, cert=self._sig_certs[i]))
        return self._read_back

    def _read_entry(self, seqno: int) -> bytes:
        """The entry at `seqno` as the host's files hold it (records are only dropped with files to read)."""
        assert self.files is not None
        entries = self.files.read_range(seqno, seqno)
        if len(entries) != 1:
            raise LedgerError(f"the host returned {len(entries)} entries for seqno {seqno}")
        return entries[0]

    def signature(self, seqno: int) -> SignatureRecord:
        """The signature transaction at `seqno` (one of `_sig_seqnos`): held, or read back from the files."""
        record = self._signatures.get(seqno)
        if record is not None:
            return record
        read = self._signature_entry(seqno)
        return SignatureRecord(read.primary, read.cose)

    def leaf(self, seqno: int) -> bytes:
        """The Merkle leaf this node recorded for the transaction at `seqno`: held, or for an older one, from the
        tree the first committed signature after it stored (`LedgerError` if neither holds it)."""
        if seqno >= self.merkle.first_retained:  # (a snapshot's tree holds leaves from before the ledger's first)
            return self.merkle.leaf(seqno)
        if seqno < self._first:
            raise LedgerError(f"seqno {seqno} is before this ledger's first record ({self._first})")
        return self._signature_entry(self._covering_signature(seqno)).leaf(seqno)

    def rollback(self, seqno: int) -> None:
        """Drop every transaction after `seqno` (an uncommitted suffix)."""
        if seqno < self._committed:
            raise RollbackBelowCommit(f"cannot roll back to {seqno}: committed up to {self._committed}")
        if seqno >= self.store.version:
            return
        self.store.rollback(seqno)
        self._endorsements = [(v, r) for v, r in self._endorsements if v <= seqno]
        self.merkle.truncate(seqno + 1)
        if self.files is not None:
            self.files.truncate(seqno)
        self.secrets.rollback(seqno)
        keep = seqno - self._first + 1
        del self._wsd[(seqno - self._wsd_first + 1) * 32:], self._sizes[keep:]
        for dropped in [s for s in self._claims if s > seqno]:
            del self._claims[dropped]
        while self._view_starts and self._view_starts[-1] > seqno:
            self._view_starts.pop()
        while self._sig_seqnos and self._sig_seqnos[-1] > seqno:
            self._signatures.pop(self._sig_seqnos.pop(), None)
        del self._sig_digests[32 * len(self._sig_seqnos):], self._sig_certs[len(self._sig_seqnos):]
        self._read_back = None
        self._pending_snapshots = [(s, e) for s, e in self._pending_snapshots if e <= seqno]
        while self._chunk_ends and self._chunk_ends[-1] > seqno:
            end = self._chunk_ends.pop()
            if end in self._requested_chunk_ends:  # the request is still to be honoured
                self._requested_chunk_ends.discard(end)
                self._chunk_requested = True
        self._count_bytes_since_chunk()

    def restore_previous_service(self, secrets: list[LedgerSecret],
                                 private_state: LastWrites) -> None:
        """A recovered service has its predecessor's ledger secrets and private state back (decrypted from the
        files by `ledger.recovery.PrivateReplay`); both apply below the recovered service's first secret."""
        first = self.secrets.all()[0].start if len(self.secrets) else self.last_seqno + 1
        self.secrets.restore_earlier(secrets)
        self.store.restore_earlier_state(private_state, first)

    # --- receipts ----------------------------------------------------------------------------------

    def add_service_endorsement(self, endorsement: x509.Certificate) -> None:
        """Record that a later service identity endorses an earlier one (`endorsement` is issued by the
        later key for the earlier key). Receipts signed by nodes of the earlier identity then carry
        `service_endorsements` leading to the current service certificate."""
        self._identity_endorsements[_ski(endorsement)] = endorsement
        self._chains.clear()

    def _service_info_written(self, version: int, changes: dict[bytes, bytes | None]) -> None:
        raw = changes.get(SINGLETON_KEY)
        if raw is not None:
            self._note_service_cert(orjson.loads(raw).get("cert"))

    def _endorsement_written(self, version: int, changes: dict[bytes, bytes | None]) -> None:
        raw = changes.get(SINGLETON_KEY)
        if raw is not None:
            self._endorsements.append((version, orjson.loads(raw)))

    def cose_endorsements(self, seqno: int) -> list[bytes]:
        """The COSE endorsements leading from the current service key to the one in force at `seqno`."""
        return endorsement_chain([record for _, record in self._endorsements], seqno)

    def _note_service_cert(self, pem: Any) -> None:
        if isinstance(pem, str) and pem.strip() and pem.strip() not in self.service_certs:
            self.service_certs.append(pem.strip())

    def endorse_previous_identities(self) -> None:
        """Endorse, with the current service key, every earlier service identity this ledger has held (CCF's
        service endorsements after a recovery: the earlier public key and subject, issued by the current key,
        CA), so receipts signed under them verify against the current service certificate alone."""
        current = cert_pem(self.service.cert).strip()
        for pem in self.service_certs:
            if pem == current:
                continue
            old = load_cert(pem)
            if _ski(old) in self._identity_endorsements:
                continue
            key = old.public_key()
            if not isinstance(key, ec.EllipticCurvePublicKey):
                continue
            self.add_service_endorsement(endorse(self.service.key, self.service.cert, key, "CCF Service", ca=True))

    def _service_endorsements(self, node_cert_pem: str) -> list[str]:
        chain = self._chains.get(node_cert_pem)
        if chain is None:
            chain = []
            current = _ski(self.service.cert)
            cert = load_cert(node_cert_pem)
            for _ in range(len(self._identity_endorsements)):
                issuer = _aki(cert)
                if issuer is None or issuer == current or issuer not in self._identity_endorsements:
                    break
                cert = self._identity_endorsements[issuer]
                chain.append(cert_pem(cert))
            self._chains[node_cert_pem] = chain
        return chain

    def write_set_digests(self, start: int, end: int) -> bytes:
        """The write-set digests (SHA-256 of each entry as stored) of seqnos `start`..`end`, back to back: what a
        later reader of the same files checks to know it reads the entries this ledger verified."""
        if start < self._wsd_first or end > self.store.version or start > end:
            raise LedgerError(f"no records of seqnos {start}..{end} (held: {self._wsd_first}..{self.store.version})")
        return bytes(self._wsd[32 * (start - self._wsd_first): 32 * (end - self._wsd_first + 1)])

    def _proof(self, seqno: int, sig_seqno: int, claims: bytes) -> tuple[bytes, list[PathStep]]:
        """The write-set digest of `seqno` and its path to the root signed at `sig_seqno`: from memory, or for a
        transaction whose records were dropped, from the ledger files."""
        if seqno >= self._wsd_first:
            return self._digest_of(seqno), self.merkle.path(seqno, sig_seqno)
        entry = self._read_entry(seqno)
        ce_digest = self.secrets.for_seqno(seqno).commit_evidence_digest(self.txid(seqno).view, seqno)
        return self._signature_entry(sig_seqno).proof(entry, seqno, ce_digest, claims)

    def commit_evidence(self, seqno: int) -> str:
        return self.secrets.for_seqno(seqno).commit_evidence(self.txid(seqno).view, seqno)

    def _covering_signature(self, seqno: int) -> int:
        """The first signature after `seqno`; it must be committed (a receipt never rests on a root
        that a rollback could still take away)."""
        i = bisect_right(self._sig_seqnos, seqno)
        if i == len(self._sig_seqnos) or self._sig_seqnos[i] > self._committed:
            raise ReceiptNotAvailable(f"no committed signature covers seqno {seqno} yet")
        return self._sig_seqnos[i]

    def _check_receiptable(self, seqno: int) -> None:
        if seqno < self._first or seqno > self.store.version:
            raise ReceiptNotAvailable(f"seqno {seqno} is not held by this ledger")
        if seqno > self._committed:
            raise ReceiptNotAvailable(f"seqno {seqno} is not committed (commit is at {self._committed})")
        if not self.secrets.covers(seqno):
            raise ReceiptNotAvailable(f"seqno {seqno} belongs to a previous service whose recovery is not finished")

    def receipt(self, seqno: int) -> dict[str, Any]:
        """CCF's JSON receipt (describe_receipt_v1) for a committed transaction."""
        self._check_receiptable(seqno)
        if self.is_signature(seqno):
            record = self.signature(seqno)
            return json_receipt_for_signature(record.primary, self._service_endorsements(record.primary.cert))
        sig_seqno = self._covering_signature(seqno)
        primary = self.signature(sig_seqno).primary
        claims = self._claims.get(seqno, ZERO_CLAIMS)
        write_set_digest, path = self._proof(seqno, sig_seqno, claims)
        return json_receipt(
            write_set_digest=write_set_digest,
            commit_evidence=self.commit_evidence(seqno),
            claims_digest=claims,
            path=path,
            signature=primary,
            service_endorsements=self._service_endorsements(primary.cert),
        )

    def cose_receipt(self, seqno: int) -> bytes:
        """A COSE receipt (vds 2) signed by the service key, for a committed transaction."""
        self._check_receiptable(seqno)
        sig_seqno = self._covering_signature(seqno)
        claims = self._claims.get(seqno, ZERO_CLAIMS)
        write_set_digest, path = self._proof(seqno, sig_seqno, claims)
        return cose_receipt(
            self.signature(sig_seqno).cose,
            write_set_digest=write_set_digest,
            commit_evidence=self.commit_evidence(seqno),
            claims_digest=claims,
            path=path,
        )

    # --- snapshots ---------------------------------------------------------------------------------

    def _view_history(self, seqno: int) -> list[int]:
        """Entry v-1 = first seqno of view v, for views 1..view(seqno) (CCF's ViewHistory)."""
        return self._view_starts[: bisect_right(self._view_starts, seqno)]

    def snapshot(self) -> tuple[int, int]:
        """Snapshot the state at the latest signature and commit its evidence transaction.

        The file is written uncommitted; it becomes `.committed` (with the evidence's receipt appended)
        once a signature after the evidence is committed. Returns (snapshot seqno, evidence seqno).
        """
        seqno, serialise = self.snapshot_job()
        data = serialise()
        evidence = self.record_snapshot(seqno, hashlib.sha256(data).hexdigest(),
                                        lambda path: snapshot_files.write_file(path, data))
        return seqno, evidence

    def snapshot_job(self) -> tuple[int, Callable[[], bytes]]:
        """The latest signature's seqno and a function serialising the state at it. Call the function before
        the next transaction commits (or in a process forked now, as the node does to keep serving)."""
        if self.snapshot_dir is None:
            raise SnapshotError("this ledger has no snapshot directory")
        if not self._sig_seqnos:
            raise SnapshotError("no signature yet to snapshot at")
        seqno = self._sig_seqnos[-1]
        if self.store.version != seqno:
            raise SnapshotError(f"the state has moved past the signature at {seqno}: snapshot right after signing")
        view, leaf, history = self.txid(seqno).view, self.merkle.leaf(seqno), self._view_history(seqno)
        secret = self.secrets.for_seqno(seqno)
        return seqno, lambda: snapshots.serialise_snapshot(self.store.snapshot_records(seqno), seqno, view, leaf,
                                                           history, secret)

    def record_snapshot(self, seqno: int, digest_hex: str, place: Callable[[str], None]) -> int:
        """Commit the evidence of the snapshot at `seqno` (its SHA-256) and have `place` put the snapshot at
        its uncommitted file path. Returns the evidence's seqno."""
        assert self.snapshot_dir is not None
        evidence = {"hash": digest_hex, "version": seqno}
        ev = self.commit_writes({SNAPSHOT_EVIDENCE: {SINGLETON_KEY: dump_json(evidence)}})
        os.makedirs(self.snapshot_dir, exist_ok=True)
        place(os.path.join(self.snapshot_dir, snapshot_files.snapshot_file_name(seqno, ev.seqno, False)))
        self._pending_snapshots.append((seqno, ev.seqno))
        self._finish_snapshots()
        return ev.seqno

    def _finish_snapshots(self) -> None:
        still: list[tuple[int, int]] = []
        for seqno, ev in self._pending_snapshots:
            try:
                if ev > self._committed:
                    raise ReceiptNotAvailable("evidence not committed")
                receipt = self.receipt(ev)
            except ReceiptNotAvailable:
                still.append((seqno, ev))
                continue
            self.commit_snapshot(seqno, ev, orjson.dumps(receipt))
        self._pending_snapshots = still

    def _commit_snapshot_file(self, seqno: int, evidence_seqno: int, receipt_json: bytes) -> None:
        assert self.snapshot_dir is not None
        snapshot_files.commit_snapshot_file(self.snapshot_dir, seqno, evidence_seqno, receipt_json)

    @classmethod
    def from_snapshot(
        cls, data: bytes, *, secrets: LedgerSecrets, node: NodeIdentity, service: ServiceIdentity,
        files: LedgerFiles | None, **kwargs: Any,
    ) -> ServiceLedger:
        """A ledger resuming from a snapshot: the store at its seqno and the Merkle tree it recorded."""
        loaded = snapshots.load_snapshot(data, secrets)
        tree = loaded.state.maps.get(TREE, {}).get(SINGLETON_KEY)
        if tree is None:
            raise SnapshotError("snapshot holds no Merkle tree")
        merkle = MerkleHistory.deserialise(last_write(tree)[1] or b"")
        if merkle.size != loaded.seqno:
            raise SnapshotError(f"snapshot tree has {merkle.size} leaves, expected {loaded.seqno}")
        merkle.append(loaded.hash_at_snapshot)
        store = Store()
        try:
            store.load_histories(loaded.state, loaded.seqno, loaded.view)
        except ValueError as e:  # a record written after the snapshot's own seqno
            raise SnapshotError(str(e)) from None
        ledger = cls(node=node, service=service, secrets=secrets, files=files, store=store, merkle=merkle,
                     view=loaded.view, view_history=loaded.view_history, **kwargs)
        return ledger

    # --- replay (driven by ledger.replay) -------------------------------------------------------------

    def adopt_replayed(self, chunks: list[Any], signatures: dict[int, SignatureRecord], state: LastWrites,
                       view: int) -> None:
        """Take in bulk what `ledger.parallel_replay` decoded and verified (it extended the Merkle tree itself): the
        per-transaction records of every chunk, the signatures, and the state the entries leave."""
        if self.store.version != 0 or not chunks:
            raise LedgerError("a bulk replay starts from an empty ledger")
        for facts in chunks:
            self._wsd += facts.wsd
            self._sizes.extend(facts.sizes)
            self._claims.update(facts.claims)
            for seqno, v in facts.views:
                while len(self._view_starts) < v:
                    self._view_starts.append(seqno)
            for seqno, flags in facts.flags:
                self._note_chunk_ends(seqno, flags)
        last = chunks[-1].start + chunks[-1].count - 1
        self._signatures.update(signatures)
        self._sig_seqnos = array("Q", sorted(signatures))
        self._sig_digests = bytearray(b"".join(self._digest_of(s) for s in self._sig_seqnos))
        self._sig_certs = [self._shared_cert(signatures[s].primary.cert) for s in self._sig_seqnos]
        self._count_bytes_since_chunk()
        self.store.load_histories(state, last, view)
        for facts in chunks:  # what the hooks of this ledger (and of its caller) follow, in order
            for seqno, writes in facts.ordered:
                self.store.fire_local_hooks(seqno, writes)

    def append_replayed(self, raw: bytes, decoded: DecodedEntry, signature: SignatureRecord | None) -> None:
        """Apply an entry read back from the files and already verified by `ledger.replay`."""
        seqno, view = decoded.seqno, decoded.view
        self.store.set_view(view)
        self.store.apply_writes(seqno, view, decoded.writes)
        self._remember(seqno, view, decoded.write_set_digest, decoded.commit_evidence_digest or b"",
                       decoded.claims_digest or ZERO_CLAIMS, len(raw), decoded.flags)
        if signature is not None:
            self._add_signature(seqno, signature)
