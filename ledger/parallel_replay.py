"""The public replay of a large ledger on every core: chunks decoded in worker processes, merged in order here.

`replay_public_in_parallel(files, ledger)` gives the same ledger as `ledger.replay.recover` does for a ledger read
without any ledger secret (a recovering service's predecessor), up to the end of its last committed chunk that ends
with a signature (the caller replays the rest sequentially), when every entry of `files` verifies:
- workers decode each chunk (the auditor's scanner: the same framing, seqno and map checks) and return, per chunk, the
  entries' Merkle leaves and the tree's nodes within the chunk, write-set digests, sizes, claims, views and chunk
  flags, the public state the chunk leaves (each key's last write, as the KV store keeps it), and, in order, the
  writes to the maps a signature check reads (nodes, their certificates, service info, signatures, snapshot
  evidence, endorsements);
- this process checks seqnos and views, verifies every signature (`verify_signature_writes`, as the sequential
  replay does) against the root of the leaves before it and the state those ordered writes build, and only then
  takes the chunk.

Guarantees: it returns False, having changed nothing, at the first entry that does not decode or verify, or for a
ledger too small to be worth processes; the caller then replays sequentially, which names the file, offset and
seqno. Not here: snapshots (the caller replays what follows one itself).

`private_replay_jobs` and `merge_private` do the same for the private replay once the secrets are back: one job a
chunk, each entry checked to be the one the public replay verified (its write-set digest), then its GCM tag and
commit evidence by the auditor's scanner, the private state merged in ledger order. Where to run the jobs is the
caller's business (the node's host runs them in worker processes).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from array import array
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from loguru import logger

from ledger.audit_scan import RawSecrets, scan_chunk, secrets_from_raw
from ledger.errors import EntryFormatError, LedgerFileError, MerkleError, VerificationError
from ledger.files import LedgerFiles
from ledger.framing import MAX_VIEW
from ledger.kv import LastWrites, WriteSet
from ledger.merkle import inner_nodes
from ledger.replay import verify_signature_writes
from ledger.secrets import LedgerSecrets
from ledger.service_ledger import ServiceLedger, SignatureRecord
from ledger.tables import (
    COSE_SIGNATURES,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    PREVIOUS_IDENTITY_ENDORSEMENT,
    SERVICE_INFO,
    SIGNATURES,
    SNAPSHOT_EVIDENCE,
)

# The maps whose writes are needed one transaction at a time: to check signatures, and for what the ledger and a
# recovery track (service identities, snapshot evidence, identity endorsements).
ORDERED_MAPS = frozenset({NODES_INFO, NODES_ENDORSED_CERTS, SERVICE_INFO, SIGNATURES, COSE_SIGNATURES,
                          SNAPSHOT_EVIDENCE, PREVIOUS_IDENTITY_ENDORSEMENT})
MIN_ENTRIES = 20_000  # below this, processes cost more than they save


@dataclass
class ChunkFacts:
    start: int
    count: int = 0
    leaves: bytes = b""
    inner: list[bytes] = field(default_factory=list)  # the Merkle nodes within the chunk (`inner_nodes`)
    wsd: bytearray = field(default_factory=bytearray)
    sizes: array[int] = field(default_factory=lambda: array("Q"))
    claims: dict[int, bytes] = field(default_factory=dict)
    views: list[tuple[int, int]] = field(default_factory=list)  # (seqno, view) where the view changes
    flags: list[tuple[int, int]] = field(default_factory=list)  # (seqno, flags) of flagged entries
    state: LastWrites = field(default_factory=LastWrites)  # each public key's last write in the chunk
    ordered: list[tuple[int, WriteSet]] = field(default_factory=list)
    error: str | None = None  # why the chunk could not be decoded whole (the caller falls back)


def _decode_chunk(path: str, start: int, end: int) -> ChunkFacts:
    """Decode every entry of one chunk file (in a worker process), with the auditor's scanner: framing, seqnos,
    leaves and public maps checked as it checks them; and hash the Merkle nodes within the chunk. Pure but for
    reading the file."""
    facts = ChunkFacts(start)
    file = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            scan = scan_chunk(f.read(), file, start, end, keep=ORDERED_MAPS, records=True,
                              public_state=facts.state, summaries=False)
    except (EntryFormatError, LedgerFileError) as e:
        facts.error = str(e)
        facts.state = LastWrites()
        return facts
    records = scan.records
    assert records is not None
    facts.count = scan.count
    facts.leaves = bytes(records.leaves)
    facts.inner = inner_nodes(facts.leaves, start)
    facts.wsd, facts.sizes = records.wsd, records.sizes
    facts.claims, facts.views, facts.flags = records.claims, records.views, records.flags
    # every map a signature transaction writes is named (what else it writes is refused, as the sequential replay
    # refuses it), the changes only of those the checks read (not the tree)
    facts.ordered = [(start + entry.index,
                      {name: changes if name in ORDERED_MAPS else {} for name, changes in entry.tables.items()}
                      if SIGNATURES in entry.tables else
                      {name: changes for name, changes in entry.tables.items() if name in ORDERED_MAPS})
                     for entry in scan.kept]
    return facts


def _chunks(files: LedgerFiles, workers: int) -> Iterator[ChunkFacts]:
    """The committed chunks decoded (what follows them may be cut, and is replayed sequentially)."""
    spans = [(path, start, last) for path, start, last, complete in files.chunk_spans()
             if complete and start <= last <= files.committed_seqno]
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) as pool:
        yield from pool.map(_decode_chunk, *zip(*spans, strict=True)) if spans else iter(())


def replay_public_in_parallel(files: LedgerFiles, ledger: ServiceLedger, *, workers: int | None = None,
                              min_entries: int = MIN_ENTRIES) -> bool:
    """Replay the entries of `files` into `ledger` (empty, holding no secret), public parts only, up to the end of
    the last committed chunk that ends with a signature; the caller replays what follows (uncommitted chunks, an
    unsigned tail) sequentially, which may drop it. False (and `ledger` unchanged) if anything does not decode or
    verify, if no committed chunk ends with a signature, or if the ledger is small: replay sequentially then.

    The store takes the state whole, compacted at its last entry, so that entry must be a signature the recovery
    can never roll back below: the end of a committed chunk holding a signature is one."""
    workers = workers or os.cpu_count() or 1
    if workers < 2 or files.committed_seqno < max(min_entries, 1) or len(ledger.secrets) or ledger.last_seqno != 0:
        return False
    governance: dict[str, dict[bytes, bytes | None]] = {}
    signatures: dict[int, SignatureRecord] = {}
    decoded: list[tuple[ChunkFacts, int, int]] = []  # each chunk verified, the tree's size and the view after it
    # The chunks taken: up to the last (committed) one that ends with a signature; their state merged in order.
    taken_count, state = 0, LastWrites()
    expected, view = 1, ledger.view  # files starting after a snapshot fail the first check: not for this path
    merkle = ledger.merkle
    merkle_size = merkle.size

    def lookup(table: str, key: bytes) -> bytes | None:
        return governance.get(table, {}).get(key)

    try:
        for facts in _chunks(files, workers):
            if facts.error is not None or facts.start != expected or facts.count == 0:
                raise VerificationError(facts.error or f"chunk at {facts.start}, expected {expected}")
            for seqno, chunk_view in facts.views:
                if chunk_view < view or chunk_view > MAX_VIEW:
                    raise VerificationError(f"view {chunk_view} goes back from {view}", seqno=seqno)
                view = chunk_view
            merkle.extend_hashed(facts.leaves, facts.inner)
            for seqno, writes in facts.ordered:
                if SIGNATURES in writes:  # it signs the root of the tree before it
                    signatures[seqno] = verify_signature_writes(lookup, merkle.root(seqno), seqno, writes)
                for name, changes in writes.items():
                    governance.setdefault(name, {}).update(changes)
            expected += facts.count
            decoded.append((facts, merkle.size, view))
            if expected - 1 in signatures:
                # Taken whatever follows (it ends with a signature): merged now, while the workers decode what
                # follows, rather than all at the end, when they are done.
                for earlier, _, _ in decoded[taken_count:]:
                    state.merge(earlier.state)
                    earlier.state = LastWrites()  # merged: not held twice
                taken_count = len(decoded)
    except (VerificationError, EntryFormatError, MerkleError) as e:
        merkle.truncate(merkle_size)
        logger.info(f"parallel replay stopped ({e}); replaying sequentially")
        return False
    if taken_count == 0:
        merkle.truncate(merkle_size)
        logger.info("parallel replay: no committed chunk ends with a signature; replaying sequentially")
        return False
    taken = [facts for facts, _, _ in decoded[:taken_count]]
    last = taken[-1].start + taken[-1].count - 1
    merkle.truncate(decoded[taken_count - 1][1])
    ledger.adopt_replayed(taken, {s: r for s, r in signatures.items() if s <= last}, state,
                          decoded[taken_count - 1][2])
    return True


# --- the private replay (a recovered service's predecessor, once its secrets are back) ----------------------


def _decrypt_chunk(path: str, start: int, end: int, raw_secrets: RawSecrets, verified_digests: bytes) -> LastWrites:
    """Every entry of one complete chunk decrypted and checked with the auditor's scanner: the entry the public
    replay verified (its write-set digest, from `verified_digests`), its GCM tag and commit evidence; the private
    state it leaves. Raises `EntryFormatError` / `LedgerFileError` naming the damage."""
    state = LastWrites()
    with open(path, "rb") as f:
        scan_chunk(f.read(), os.path.basename(path), start, end, secrets_from_raw(raw_secrets), keep=frozenset(),
                   private_state=state, check_public_maps=False,  # the public replay checked those
                   summaries=False, verified_digests=verified_digests)
    return state


@dataclass(frozen=True)
class PrivateReplayJob:
    """The private replay of one complete chunk (`_decrypt_chunk`), to run in a worker process. `result_bytes`
    bounds the size of its result pickled: the private state of a chunk's entries holds each written key and
    value once, with a version, where the chunk holds each write with its framing, lengths and headers; the
    file's size plus a margin covers it (a caller moving results through fixed slots checks it anyway)."""

    path: str
    start: int
    end: int
    raw_secrets: RawSecrets
    verified_digests: bytes
    result_bytes: int

    def __call__(self) -> LastWrites:
        return _decrypt_chunk(self.path, self.start, self.end, self.raw_secrets, self.verified_digests)


RESULT_MARGIN = 1 << 16


def private_replay_jobs(files: LedgerFiles, secrets: LedgerSecrets, verified_digests: Callable[[int, int], bytes],
                        start: int, end: int, min_entries: int = MIN_ENTRIES) -> list[PrivateReplayJob] | None:
    """Jobs (one a chunk, to run in worker processes) decrypting entries `start`..`end` of `files`, each checked to
    be the entry the public replay verified (`verified_digests(first, last)`: `ServiceLedger.write_set_digests`),
    or None if the range is small or does not consist of whole complete chunks (the caller then replays in
    steps)."""
    if end - start + 1 < max(min_entries, 1):
        return None
    raw: RawSecrets = tuple((s.start, s.raw) for s in secrets.all())
    jobs: list[PrivateReplayJob] = []
    expected = start
    for path, first, last, complete in files.chunk_spans():
        if last < start or first > end:
            continue
        if not complete or first != expected or last > end:
            return None
        jobs.append(PrivateReplayJob(path, first, last, raw, verified_digests(first, last),
                                     os.path.getsize(path) + RESULT_MARGIN))
        expected = last + 1
    return jobs if expected == end + 1 else None


def merge_private(results: list[LastWrites]) -> LastWrites:
    """The chunks' private states, in ledger order: later writes win."""
    merged = LastWrites()
    for state in results:
        merged.merge(state)
    return merged
