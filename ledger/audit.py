"""Offline audit of a ledger directory: what an auditor runs, trusting only the service certificate.

`audit_ledger` checks what `read_ledger.py` checks, faster and with errors that say where:
- chunk files are contiguous, positions tables match the entries, every entry is well framed and its
  public domain names the same seqno as its IV;
- the Merkle tree rebuilt from the entries (leaf = H(H(entry) || commit evidence digest || claims))
  has, at every signature transaction, the root the signature claims; the node signature verifies with
  the signing node's endorsed certificate; the node is not Pending; the COSE signature verifies with the
  service certificate in force;
- service status transitions follow CCF's rules; with `service_cert`, the service identity in the
  ledger must be that certificate and every node certificate must be endorsed by it;
- with `secrets`, every entry's GCM tag is checked too, so damage is pinned to the exact seqno.

It never trusts a node's say-so about itself: certificates come from `nodes.endorsed_certificates`.
Raises `VerificationError` (with `seqno` and `file`) on the first failure.
"""

from __future__ import annotations

import contextlib
import hashlib
import multiprocessing as mp
import os
import struct
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.entry import (
    ENTRY_FORMAT_V1,
    TYPE_WITH_CLAIMS,
    TYPE_WITH_COMMIT_EVIDENCE,
    TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS,
    decrypt_private,
    frame_entry,
    parse_maps,
)
from ledger.errors import EntryFormatError, LedgerFileError, LedgerSecretError, VerificationError
from ledger.files import FILE_HEADER_SIZE, parse_chunk_name
from ledger.identity import spki_der
from ledger.kv import WriteSet
from ledger.merkle import MerkleRoots
from ledger.secrets import LedgerSecrets
from ledger.signatures import parse_primary_signature, verify_signature_transaction
from ledger.tables import (
    COSE_SIGNATURES,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
)

_ALLOWED_TRANSITIONS = {
    "Opening": {"Open", "WaitingForRecoveryShares"},
    "Recovering": {"WaitingForRecoveryShares"},
    "WaitingForRecoveryShares": {"Open"},
    "Open": {"Recovering"},
}
_HEAD = struct.Struct("<Q")
# header word, (GCM tag), IV seqno, IV view, public size, entry type, public seqno [, claims, commit evidence]
_FRAME = struct.Struct("<Q16xQIQBQ")
_FRAME4 = struct.Struct("<Q16xQIQBQ32s32s")
_sha256 = hashlib.sha256


@dataclass(frozen=True)
class AuditReport:
    chunks: int
    transactions: int
    signatures: int
    last_seqno: int
    last_verified_txid: str  # view.seqno of the last verified signature, "0.0" if none


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
    ordered = sorted(files.values(), key=lambda f: _range(f)[0])
    for a, b in zip(ordered, ordered[1:], strict=False):
        (_, end_a), (start_b, _) = _range(a), _range(b)
        if end_a is None:
            raise VerificationError(f"open chunk {os.path.basename(a)} is followed by {os.path.basename(b)}")
        if end_a + 1 != start_b:
            raise VerificationError(f"chunks {os.path.basename(a)} and {os.path.basename(b)} are not contiguous",
                                    seqno=end_a + 1)
    return ordered


def _range(path: str) -> tuple[int, int | None]:
    parsed = parse_chunk_name(os.path.basename(path))
    assert parsed is not None
    return parsed[0], parsed[1]


# A run of Merkle leaves summarised as aligned perfect subtrees: [(height k, subtree hash)], in order.
Blocks = list[tuple[int, bytes]]


@dataclass(frozen=True)
class ChunkScan:
    """What one chunk contributes to the audit, computed without any state from other chunks.

    `tables` holds the public maps of the entries that have any, by index in the chunk; `segments[i]`
    summarises the leaves between consecutive such entries (segment 0: leaves before the first one,
    segment i: from table entry i-1 to the next), so that the auditor sees the root before each of
    them. Summaries rather than leaves: the pool workers do the Merkle hashing too.
    """

    file: str
    start: int
    count: int
    tables: list[tuple[int, WriteSet]]
    segments: list[Blocks]


def _perfect_root(leaves: list[bytes]) -> bytes:
    level = leaves
    while len(level) > 1:
        level = [_sha256(level[i] + level[i + 1]).digest() for i in range(0, len(level), 2)]
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


def scan_chunk(buf: bytes, file: str, start: int, end: int | None, secrets: LedgerSecrets | None = None) -> ChunkScan:
    """Check the framing of every entry of a chunk file's bytes and compute its leaves. Pure.

    Raises `EntryFormatError` or `LedgerFileError` naming the file, offset and seqno of the damage.
    """
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
    tables: dict[int, WriteSet] = {}
    sha = _sha256
    unpack_frame4 = _FRAME4.unpack_from
    view = memoryview(buf)
    pos = FILE_HEADER_SIZE
    expected = start
    found: list[int] = []
    while pos < stop:
        found.append(pos)
        if pos + _FRAME4.size <= stop:
            # One unpack reads the framing and, for type 4 (all CCF writes now), the claims and commit
            # evidence digests too.
            word, seqno, _view_word, public_size, entry_type, pub_seqno, claims, ce = unpack_frame4(buf, pos)
        elif pos + 53 <= stop:
            word, seqno, _view_word, public_size, entry_type, pub_seqno = _FRAME.unpack_from(buf, pos)
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
        if entry_type == TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS and ce:
            # the public header holds claims then commit evidence; the leaf takes them the other way round
            leaves.append(sha(wsd + ce + claims).digest())
            q = pos + 125
        else:
            q = pos + 53
            if entry_type in (TYPE_WITH_CLAIMS, TYPE_WITH_COMMIT_EVIDENCE):
                leaves.append(sha(wsd + buf[q : q + 32]).digest())
                q += 40
            elif entry_type == 0:
                leaves.append(wsd)
                q += 8
            else:
                raise EntryFormatError(f"unexpected entry type {entry_type}", file=file, offset=pos, seqno=seqno)
        if q > pend:
            raise EntryFormatError("public domain too short", file=file, offset=pos, seqno=seqno)
        if secrets is not None:
            try:
                secret = secrets.for_seqno(seqno)
            except LedgerSecretError as e:
                raise EntryFormatError(str(e), file=file, offset=pos, seqno=seqno) from None
            decrypt_private(frame_entry(buf, pos, file=file), secret, file=file)
        if q < pend:
            tables[len(leaves) - 1] = parse_maps(buf, q, pend, seqno=seqno, file=file, offset=pos)
        expected = seqno + 1
        pos = entry_end
    if positions is not None and found != positions:
        bad = next((i for i, (a, b) in enumerate(zip(found, positions, strict=False)) if a != b),
                   min(len(found), len(positions)))
        raise EntryFormatError("positions table does not match the entries", file=file,
                               offset=found[bad] if bad < len(found) else None, seqno=start + bad)
    cuts = sorted(tables)
    bounds = [0, *cuts, len(leaves)]
    segments = [summarise_leaves(leaves[a:b], start + a) for a, b in zip(bounds, bounds[1:], strict=False)]
    return ChunkScan(file, start, len(leaves), [(i, tables[i]) for i in cuts], segments)


def _scan_file(path: str) -> ChunkScan | tuple[str, int | None]:
    """Pool worker (no secrets: AESGCM objects do not pickle)."""
    return _scan_path(path, None)


class _Auditor:
    def __init__(self, service_cert: x509.Certificate | None, secrets: LedgerSecrets | None) -> None:
        self.trusted = service_cert
        self.secrets = secrets
        self.merkle = MerkleRoots()
        self.node_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.node_spki: dict[str, bytes] = {}
        self.node_status: dict[str, str] = {}
        self.service_status: str | None = None
        self.service_key: ec.EllipticCurvePublicKey | None = None
        self.signatures = 0
        self.transactions = 0
        self.last_verified = "0.0"
        self.last_signature = 0
        self.expected_seqno: int | None = None

    def apply(self, scan: ChunkScan) -> None:
        """Fold a scanned chunk into the running state: tables first, then each leaf (in order)."""
        if self.expected_seqno is not None and scan.start != self.expected_seqno:
            raise VerificationError(f"chunk starts at {scan.start}, expected {self.expected_seqno}",
                                    file=scan.file, seqno=self.expected_seqno)
        if self.merkle.size != scan.start:
            raise VerificationError(f"Merkle tree holds {self.merkle.size} leaves at chunk start {scan.start}",
                                    file=scan.file, seqno=scan.start)
        add = self.merkle.append_subtree
        for k, h in scan.segments[0]:
            add(k, h)
        for (index, tables), blocks in zip(scan.tables, scan.segments[1:], strict=True):
            self.tables(tables, scan.start + index, scan.file)
            for k, h in blocks:
                add(k, h)
        self.transactions += scan.count
        self.expected_seqno = scan.start + scan.count

    def tables(self, tables: dict[str, dict[bytes, bytes | None]], seqno: int, file: str) -> None:
        for node_id_b, info in tables.get(NODES_INFO, {}).items():
            node_id = node_id_b.decode()
            if info is None:
                self.node_status.pop(node_id, None)
            else:
                self.node_status[node_id] = str(orjson.loads(info)["status"])
        if SERVICE_INFO in tables:
            self.service_info(tables[SERVICE_INFO].get(SINGLETON_KEY), seqno, file)
        for node_id_b, pem in tables.get(NODES_ENDORSED_CERTS, {}).items():
            self.node_cert(node_id_b.decode(), pem, seqno, file)
        if SIGNATURES in tables:
            self.signature(tables[SIGNATURES].get(SINGLETON_KEY), tables.get(COSE_SIGNATURES, {}).get(SINGLETON_KEY),
                           seqno, file)

    def service_info(self, raw: bytes | None, seqno: int, file: str) -> None:
        if raw is None:
            return
        info = orjson.loads(raw)
        status = info["status"]
        prev = self.service_status
        if status != "Opening" and prev is not None and prev != status \
                and status not in _ALLOWED_TRANSITIONS.get(prev, set()):
            raise VerificationError(f"service status cannot go from {prev} to {status}", seqno=seqno, file=file)
        self.service_status = status
        cert = x509.load_pem_x509_certificate(info["cert"].encode())
        if self.trusted is not None and cert != self.trusted:
            raise VerificationError("service certificate in the ledger is not the trusted one", seqno=seqno,
                                    file=file)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError("service key is not EC", seqno=seqno, file=file)
        self.service_key = key

    def node_cert(self, node_id: str, pem: bytes | None, seqno: int, file: str) -> None:
        if pem is None:
            self.node_keys.pop(node_id, None)
            return
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError(f"node {node_id} key is not EC", seqno=seqno, file=file)
        if self.trusted is not None:
            try:
                cert.verify_directly_issued_by(self.trusted)
            except (ValueError, TypeError, InvalidSignature):
                raise VerificationError(f"node {node_id} certificate is not endorsed by the service",
                                        seqno=seqno, file=file) from None
        self.node_keys[node_id] = key
        self.node_spki[node_id] = spki_der(key)

    def signature(self, raw: bytes | None, cose_value: bytes | None, seqno: int, file: str) -> None:
        if raw is None:
            return
        self.signatures += 1
        try:
            primary = parse_primary_signature(raw, seqno)
            key = self.node_keys.get(primary.node)
            if key is None:
                raise VerificationError(f"signing node {primary.node} has no endorsed certificate", seqno=seqno)
            if self.node_status.get(primary.node) in (None, "Pending"):
                raise VerificationError(f"signing node {primary.node} is not trusted", seqno=seqno)
            verify_signature_transaction(
                primary, cose_value, seqno=seqno, expected_root=self.merkle.root(), node_key=key,
                service_key=self.service_key, covering=f"transactions {self.last_signature + 1}..{seqno - 1}")
        except VerificationError as e:
            raise VerificationError(e.reason, seqno=seqno, file=file) from None
        self.last_verified = f"{primary.view}.{primary.seqno}"
        self.last_signature = seqno


def audit_ledger(
    paths: list[str],
    *,
    committed_only: bool = True,
    service_cert: x509.Certificate | None = None,
    secrets: LedgerSecrets | None = None,
    workers: int | None = None,
) -> AuditReport:
    """Verify the ledger chunks under `paths`; raise `VerificationError` naming the first damage."""
    chunk_paths = ledger_chunk_paths(paths, committed_only)
    auditor = _Auditor(service_cert, secrets)
    if workers is None:
        workers = os.cpu_count() or 1
    parallel = secrets is None and workers > 1 and len(chunk_paths) > 1
    with ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("fork")) if parallel \
            else contextlib.nullcontext() as pool:
        scans: Iterator[ChunkScan | tuple[str, int | None]] = (
            pool.map(_scan_file, chunk_paths) if pool is not None
            else (_scan_path(p, secrets) for p in chunk_paths))
        for path, scan in zip(chunk_paths, scans, strict=True):
            name = os.path.basename(path)
            if isinstance(scan, tuple):
                raise VerificationError(scan[0], seqno=scan[1], file=name)
            try:
                auditor.apply(scan)
            except EntryFormatError as e:
                raise VerificationError(str(e), seqno=e.seqno, file=name) from e
            except (KeyError, ValueError, TypeError, AttributeError, x509.InvalidVersion) as e:
                raise VerificationError(f"malformed service table: {e!r}", seqno=auditor.expected_seqno,
                                        file=name) from e
    last = (auditor.expected_seqno or 1) - 1
    return AuditReport(len(chunk_paths), auditor.transactions, auditor.signatures, last, auditor.last_verified)


def _scan_path(path: str, secrets: LedgerSecrets | None) -> ChunkScan | tuple[str, int | None]:
    """Scan one chunk file; failures come back as (message, seqno), since exceptions with keyword
    fields do not survive pickling from a pool worker."""
    start, end = _range(path)
    name = os.path.basename(path)
    try:
        with open(path, "rb") as f:
            return scan_chunk(f.read(), name, start, end, secrets)
    except (EntryFormatError, LedgerFileError) as e:
        return (str(e), e.seqno)
