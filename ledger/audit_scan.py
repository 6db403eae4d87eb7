"""Scanning ledger chunk files for the offline auditor: framing, leaves, and the public maps it needs.

Guarantees of `scan_chunk` (pure: bytes in, `ChunkScan` out, no state from other chunks, so that pool
workers can scan chunks in parallel):
- every entry is well framed (format version, sizes inside the file, public domain inside the entry), its IV
  and its public domain name the expected seqno (the chunk's first seqno, then consecutive), its public maps
  parse; the positions table of a completed chunk matches the entries and the count in the file name;
- the Merkle leaf of every entry is computed as CCF computes it (H(H(entry) || commit evidence digest ||
  claims) for entry type 4) and summarised as aligned perfect subtrees between the entries whose public maps
  the caller asked for (`keep`), so that the caller sees the root before each of those entries;
- with the ledger secrets, every entry's GCM tag verifies (it authenticates the public domain too), its
  private maps parse, and its commit evidence digest is the one the secret derives for (view, seqno).
Every failure raises `EntryFormatError` or `LedgerFileError` naming the file, the entry's offset and seqno.

`ledger_chunk_paths` finds the chunk files of a ledger and checks that they are contiguous.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
import struct
from array import array
from collections.abc import Generator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from ledger.entry import (
    TYPE_WITH_CLAIMS,
    TYPE_WITH_COMMIT_EVIDENCE,
    TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS,
    decrypt_private,
    parse_maps,
)
from ledger.errors import EntryFormatError, LedgerFileError, LedgerSecretError, VerificationError
from ledger.files import FILE_HEADER_SIZE, parse_chunk_name
from ledger.framing import ENTRY_FORMAT_V1, MAX_VIEW, SNAPSHOT_IV_BIT, EntryFrame
from ledger.kv import LastWrites, WriteSet
from ledger.secrets import LedgerSecret, LedgerSecrets

_HEAD = struct.Struct("<Q")
# header word, (GCM tag), IV seqno, IV view, public size, entry type, public seqno [, claims, commit evidence]
_FRAME = struct.Struct("<Q16xQIQBQ")
_FRAME4 = struct.Struct("<Q16xQIQBQ32s32s")
_sha256 = hashlib.sha256
_ZERO_CLAIMS = bytes(32)

# A run of Merkle leaves summarised as aligned perfect subtrees: [(height k, subtree hash)], in order.
Blocks = list[tuple[int, bytes]]
# Ledger secrets as plain data (start seqno, 32 raw bytes), which pickles to pool workers.
RawSecrets = tuple[tuple[int, bytes], ...]


def chunk_range(path: str) -> tuple[int, int | None]:
    """(first seqno, last seqno or None for an open chunk) from a chunk file's name."""
    parsed = parse_chunk_name(os.path.basename(path))
    if parsed is None:
        raise LedgerFileError("not a ledger chunk file name", file=os.path.basename(path))
    return parsed[0], parsed[1]


def ledger_chunk_paths(paths: list[str], committed_only: bool = True) -> list[str]:
    """Chunk files in `paths` (directories or files), sorted and checked to be contiguous."""
    files: dict[str, str] = {}
    for p in paths:
        if not os.path.exists(p):
            raise VerificationError(f"{p} does not exist")
        names = [os.path.join(p, n) for n in os.listdir(p)] if os.path.isdir(p) else [p]
        for path in names:
            parsed = parse_chunk_name(os.path.basename(path))
            if parsed is None or (committed_only and not parsed[2]):
                continue
            files.setdefault(os.path.basename(path), path)
    if not files:
        kind = "committed ledger chunks" if committed_only else "ledger chunks"
        raise VerificationError(f"no {kind} in {', '.join(paths)}")
    ordered = sorted(files.values(), key=lambda f: chunk_range(f)[0])
    for a, b in zip(ordered, ordered[1:], strict=False):
        (_, end_a), (start_b, _) = chunk_range(a), chunk_range(b)
        if end_a is None:
            raise VerificationError(f"open chunk {os.path.basename(a)} is followed by {os.path.basename(b)}",
                                    file=os.path.basename(b), seqno=start_b)
        if end_a + 1 != start_b:
            raise VerificationError(f"chunks {os.path.basename(a)} and {os.path.basename(b)} are not contiguous",
                                    file=os.path.basename(b), seqno=end_a + 1)
    return ordered


@dataclass(frozen=True)
class KeptEntry:
    """An entry that wrote one of the maps the caller asked for: its index in the chunk, offset, public maps,
    and the view its header names (with its seqno, the transaction id)."""

    index: int
    offset: int
    tables: WriteSet
    view: int = 0


@dataclass(frozen=True)
class ChunkScan:
    """What one chunk contributes to the audit, computed without any state from other chunks.

    `kept` holds the entries that wrote any map of `keep`; `segments[i]` summarises the leaves between
    consecutive such entries (segment 0: leaves before the first one, segment i: from kept entry i-1 to the
    next), so that the auditor sees the root before each of them. Summaries rather than leaves: the pool
    workers do the Merkle hashing too. `leaves` and `offsets` (every entry's) only when asked for.
    """

    file: str
    start: int
    count: int
    size: int
    kept: list[KeptEntry]
    segments: list[Blocks]
    leaves: list[bytes] | None = None
    offsets: list[int] | None = None
    records: EntryRecords | None = None


@dataclass
class EntryRecords:
    """What a replay keeps of each entry (only when asked for): Merkle leaves and write-set digests back to back,
    sizes, the claims digests that are not zeros, the seqnos where the view changes, and the flagged entries.
    A chunk's records are a few flat objects rather than an object or two per entry: a worker builds and pickles
    them for less, and they stay in its cache (two workers on two cores spent a third more per chunk with lists)."""

    leaves: bytearray = field(default_factory=bytearray)
    wsd: bytearray = field(default_factory=bytearray)
    sizes: array[int] = field(default_factory=lambda: array("Q"))
    claims: dict[int, bytes] = field(default_factory=dict)
    views: list[tuple[int, int]] = field(default_factory=list)
    flags: list[tuple[int, int]] = field(default_factory=list)


def _perfect_root(leaves: list[bytes]) -> bytes:
    sha = _sha256
    level = leaves
    while len(level) > 1:
        level = [sha(a + b).digest() for a, b in zip(level[::2], level[1::2], strict=True)]
    return level[0]


def summarise_leaves(leaves: list[bytes], position: int) -> Blocks:
    """Split leaves at tree positions [position, position + len) into maximal aligned perfect subtrees."""
    blocks: Blocks = []
    i = 0
    n = len(leaves)
    while i < n:
        align = (position & -position).bit_length() - 1 if position else 62
        k = min(align, (n - i).bit_length() - 1)
        size = 1 << k
        blocks.append((k, leaves[i] if k == 0 else _perfect_root(leaves[i : i + size])))
        i += size
        position += size
    return blocks


def check_private_entry(frame: EntryFrame, entry_type: int, ce: bytes, secrets: LedgerSecrets,
                        file: str) -> WriteSet | None:
    """GCM tag, private maps and commit evidence of the entry `frame`, under the secret in force; the private
    maps it holds (None if none)."""
    pos, seqno = frame.start, frame.seqno
    try:
        secret: LedgerSecret = secrets.for_seqno(seqno)
    except LedgerSecretError as e:
        raise EntryFormatError(str(e), file=file, offset=pos, seqno=seqno) from None
    plain = decrypt_private(frame, secret, file=file)
    tables = parse_maps(plain, 0, len(plain), seqno=seqno, file=file, offset=pos, public=False) if plain else None
    if entry_type == TYPE_WITH_COMMIT_EVIDENCE:
        ce = bytes(frame.buf[pos + 53 : pos + 85])
    if entry_type in (TYPE_WITH_COMMIT_EVIDENCE, TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS) \
            and ce != secret.commit_evidence_digest(frame.view, seqno):
        raise EntryFormatError("commit evidence digest is not the one the ledger secret derives",
                               file=file, offset=pos, seqno=seqno)
    return tables


def scan_chunk(buf: bytes, file: str, start: int, end: int | None, secrets: LedgerSecrets | None = None, *,
               keep: frozenset[str] | None = None, keep_leaves: bool = False, records: bool = False,
               private_state: LastWrites | None = None, public_state: LastWrites | None = None,
               check_public_maps: bool = True, summaries: bool = True,
               verified_digests: bytes | None = None) -> ChunkScan:
    """Check the framing of every entry of a chunk file's bytes and compute its leaves. Pure.

    `keep`: the public maps the caller needs (None: every entry's public maps). `records`: also each entry's
    `EntryRecords`. `private_state` (with `secrets`): filled with each private key's last write, as the KV store
    keeps it (`LastWrites`: a recovering node's private replay); `public_state` the same for the public maps (its
    public replay). `check_public_maps=False` skips parsing the
    public maps (a private replay after a public one that checked them). `summaries=False` leaves `segments` empty
    (a caller that hashes the tree itself; without `keep_leaves` no leaf is hashed then). `verified_digests`: the
    write-set digests, back to back, of entries verified before (a private replay after the public one): each
    entry must be, byte for byte, the one verified. Raises `EntryFormatError` or `LedgerFileError` naming the
    file, offset and seqno of the damage.
    """
    if records and (keep_leaves or summaries):
        raise ValueError("records hold the leaves: not with keep_leaves or summaries")
    if len(buf) < FILE_HEADER_SIZE:
        raise LedgerFileError("file shorter than its header", file=file, seqno=start)
    (table,) = _HEAD.unpack_from(buf, 0)
    positions = None
    stop = len(buf)
    if end is not None or table:
        if table < FILE_HEADER_SIZE or table > len(buf) or (len(buf) - table) % 4:
            raise LedgerFileError(f"bad positions table offset {table}", file=file, seqno=start)
        count = (len(buf) - table) // 4
        if end is not None and count != end - start + 1:
            raise LedgerFileError(f"positions table holds {count} entries, the name says {end - start + 1}",
                                  file=file, seqno=start)
        positions = list(struct.unpack_from(f"<{count}I", buf, table))
        stop = table
    leaves: list[bytes] = []
    kept: list[KeptEntry] = []
    sha = _sha256
    unpack_frame4 = _FRAME4.unpack_from
    kept_records = EntryRecords() if records else None
    add_leaf = leaves.append if kept_records is None else kept_records.leaves.extend
    type4 = TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS
    view = memoryview(buf)
    pos = FILE_HEADER_SIZE
    expected = start
    found: list[int] = []
    add_found = found.append
    frame4_size = _FRAME4.size
    last_view = -1
    want_leaves = keep_leaves or summaries or records
    while pos < stop:
        add_found(pos)
        if pos + frame4_size <= stop:
            # One unpack reads the framing and, for type 4 (all CCF writes now), the claims and commit
            # evidence digests too.
            word, seqno, view_word, public_size, entry_type, pub_seqno, claims, ce = unpack_frame4(buf, pos)
        elif pos + 53 <= stop:
            word, seqno, view_word, public_size, entry_type, pub_seqno = _FRAME.unpack_from(buf, pos)
            claims = ce = b""
        else:
            raise EntryFormatError("truncated entry", file=file, offset=pos, seqno=expected)
        entry_end = pos + 8 + (word >> 16)
        pend = pos + 44 + public_size
        if word & 0xFF != ENTRY_FORMAT_V1 or entry_end > stop or pend > entry_end or public_size < 17:
            raise EntryFormatError("malformed entry framing", file=file, offset=pos, seqno=expected)
        if seqno != expected or pub_seqno != seqno:
            raise EntryFormatError(f"entry holds seqno {seqno} (public domain: {pub_seqno})", file=file, offset=pos,
                                   seqno=expected)
        wsd = sha(view[pos:entry_end]).digest()
        if verified_digests is not None:
            at = 32 * (seqno - start)
            if verified_digests[at: at + 32] != wsd:
                raise EntryFormatError("entry is not the one the public replay verified", file=file, offset=pos,
                                       seqno=seqno)
        if kept_records is not None:
            kept_records.wsd += wsd
            kept_records.sizes.append(entry_end - pos)
            if claims and claims != _ZERO_CLAIMS:
                kept_records.claims[seqno] = claims
            if view_word & MAX_VIEW != last_view:
                last_view = view_word & MAX_VIEW
                kept_records.views.append((seqno, last_view))
            if (word >> 8) & 0xFF:
                kept_records.flags.append((seqno, (word >> 8) & 0xFF))
        if entry_type == type4 and ce:
            # the public header holds claims then commit evidence; the leaf takes them the other way round
            if want_leaves:
                add_leaf(sha(wsd + ce + claims).digest())
            q = pos + 125
        else:
            q = pos + 53
            if entry_type in (TYPE_WITH_CLAIMS, TYPE_WITH_COMMIT_EVIDENCE):
                if want_leaves:
                    add_leaf(sha(wsd + buf[q : q + 32]).digest())
                q += 40
            elif entry_type == 0:
                if want_leaves:
                    add_leaf(wsd)
                q += 8
            else:
                raise EntryFormatError(f"unexpected entry type {entry_type}", file=file, offset=pos, seqno=seqno)
        if q > pend:
            raise EntryFormatError("public domain too short", file=file, offset=pos, seqno=seqno)
        if secrets is not None:
            # framed here already: the frame is built from what the loop read
            frame = EntryFrame(buf, pos, entry_end, (word >> 8) & 0xFF, seqno, view_word & MAX_VIEW,
                               bool(view_word & SNAPSHOT_IV_BIT), pos + 44, pend)
            private_tables = check_private_entry(frame, entry_type, ce, secrets, file)
            if private_tables and private_state is not None:
                private_state.note(private_tables, seqno)
        if q < pend and check_public_maps:
            tables = parse_maps(buf, q, pend, seqno=seqno, file=file, offset=pos, public=True)
            if public_state is not None:
                public_state.note(tables, seqno)
            if keep is None or not keep.isdisjoint(tables):
                kept.append(KeptEntry(seqno - start, pos, tables, view_word & MAX_VIEW))
        expected = seqno + 1
        pos = entry_end
    if positions is not None and found != positions:
        bad = next((i for i, (a, b) in enumerate(zip(found, positions, strict=False)) if a != b),
                   min(len(found), len(positions)))
        raise EntryFormatError("positions table does not match the entries", file=file,
                               offset=found[bad] if bad < len(found) else None, seqno=start + bad)
    segments: list[Blocks] = []
    if summaries:
        bounds = [0, *(k.index for k in kept), len(leaves)]
        segments = [summarise_leaves(leaves[a:b], start + a) for a, b in zip(bounds, bounds[1:], strict=False)]
    return ChunkScan(file, start, expected - start, len(buf), kept, segments,
                     leaves if keep_leaves else None, found if keep_leaves else None, kept_records)


_secrets_cache: dict[RawSecrets, LedgerSecrets] = {}


def secrets_from_raw(raw: RawSecrets | None) -> LedgerSecrets | None:
    """The `LedgerSecrets` of plain (start, bytes) pairs, built once per process."""
    if raw is None:
        return None
    secrets = _secrets_cache.get(raw)
    if secrets is None:
        secrets = _secrets_cache[raw] = LedgerSecrets([LedgerSecret.create(s, b) for s, b in raw])
    return secrets


def scan_path(path: str, secrets: RawSecrets | None = None, keep: frozenset[str] | None = None,
              keep_leaves: bool = False) -> ChunkScan | tuple[str, int | None, int | None]:
    """Scan one chunk file (a pool worker). Failures come back as (reason, offset, seqno), since exceptions
    with keyword fields do not survive pickling from a pool worker; the caller knows the file."""
    start, end = chunk_range(path)
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            return scan_chunk(f.read(), name, start, end, secrets_from_raw(secrets), keep=keep,
                              keep_leaves=keep_leaves)
    except (EntryFormatError, LedgerFileError) as e:
        return (e.reason, e.offset, e.seqno)
    except OSError as e:
        return (f"cannot read: {e.strerror or e}", None, start)


def scan_chunks(chunk_paths: list[str], secrets: RawSecrets | None = None, keep: frozenset[str] | None = None,
                workers: int | None = None
                ) -> Generator[tuple[str, ChunkScan | tuple[str, int | None, int | None]], None, None]:
    """(path, scan_path result) for each chunk in order, scanned by a pool of `workers` forked processes
    (default: one per core; in this process when 1 or for a single chunk)."""
    if workers is None:
        workers = os.cpu_count() or 1
    n = len(chunk_paths)
    if workers <= 1 or n <= 1:
        for p in chunk_paths:
            yield p, scan_path(p, secrets, keep)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, n), mp_context=mp.get_context("fork"))
    try:
        yield from zip(chunk_paths, pool.map(scan_path, chunk_paths, [secrets] * n, [keep] * n), strict=True)
    finally:  # on the first failure, do not wait for the chunks after it
        pool.shutdown(wait=True, cancel_futures=True)
