"""Offline audit of a ledger directory: what an auditor runs, trusting only the service certificate.

`audit_ledger` checks what `read_ledger.py` checks, faster and with errors that say where:
- chunk files are contiguous, positions tables match the entries, every entry is well framed and its
  public domain names the same seqno as its IV (`ledger.audit_scan`);
- the Merkle tree rebuilt from the entries (leaf = H(H(entry) || commit evidence digest || claims))
  has, at every signature transaction, the root the signature claims; the node signature verifies with
  the signing node's endorsed certificate; the node is not Pending; the COSE signature verifies with the
  service certificate in force;
- service status transitions follow CCF's rules; with `service_cert`, the service identity in the
  ledger must be that certificate and every node certificate must be endorsed by it;
- with `secrets`, every entry's GCM tag verifies, its private maps parse, its commit evidence is the one
  the secret derives, and every rekey record wraps the previous secret under the next one, so damage is
  pinned to the exact seqno and the secrets are shown to be this ledger's.

It never trusts a node's say-so about itself: certificates come from `nodes.endorsed_certificates`.
Raises `VerificationError` (with `file`, `offset` and `seqno` when known: where the failed check is) on the
first failure. When a signed root no longer matches, that is the signature transaction; the auditor then
compares the leaves it rebuilt with those the signature transaction recorded (`public:ccf.internal.tree`)
and raises `AlteredEntry`, which also names the first entry that differs (`altered_file`, `altered_offset`,
`altered_seqno`): a flipped byte is found at its own seqno even without the secrets. That comparison only
locates the damage; the verdict rests on the signed root.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.audit_scan import (
    ChunkScan,
    RawSecrets,
    chunk_range,
    ledger_chunk_paths,
    scan_chunks,
    scan_path,
)
from ledger.errors import LedgerSecretError, VerificationError
from ledger.identity import spki_der
from ledger.kv import WriteSet
from ledger.merkle import MerkleRoots
from ledger.secrets import LedgerSecrets, decrypt_previous_secret
from ledger.signatures import parse_primary_signature, verify_signature_transaction
from ledger.tables import (
    COSE_SIGNATURES,
    HISTORICAL_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
    TREE,
)

__all__ = ["AlteredEntry", "AuditReport", "Progress", "audit_ledger", "ledger_chunk_paths"]

_ALLOWED_TRANSITIONS = {
    "Opening": {"Open", "WaitingForRecoveryShares"},
    "Recovering": {"WaitingForRecoveryShares"},
    "WaitingForRecoveryShares": {"Open"},
    "Open": {"Recovering"},
}
# the public maps the auditor reads; every other entry only contributes its leaf
AUDIT_TABLES = frozenset({NODES_INFO, SERVICE_INFO, NODES_ENDORSED_CERTS, SIGNATURES, COSE_SIGNATURES, TREE,
                          HISTORICAL_SECRETS})
_TREE_HEAD = struct.Struct(">QQ")

# progress(bytes scanned so far, total bytes, last seqno folded in)
Progress = Callable[[int, int, int], None]


class AlteredEntry(VerificationError):
    """A signed root does not match because an entry was altered: `file`/`offset`/`seqno` locate the signature
    transaction whose check failed, `altered_*` the first entry whose leaf differs from the recorded one."""

    def __init__(self, message: str, *, altered_file: str, altered_offset: int, altered_seqno: int,
                 file: str | None = None, offset: int | None = None, seqno: int | None = None) -> None:
        super().__init__(message, file=file, offset=offset, seqno=seqno)
        self.altered_file = altered_file
        self.altered_offset = altered_offset
        self.altered_seqno = altered_seqno

    def at(self, file: str, offset: int, seqno: int) -> AlteredEntry:
        return AlteredEntry(self.reason, altered_file=self.altered_file, altered_offset=self.altered_offset,
                            altered_seqno=self.altered_seqno, file=file, offset=offset, seqno=seqno)


@dataclass(frozen=True)
class AuditReport:
    chunks: int
    transactions: int
    signatures: int
    last_seqno: int
    last_verified_txid: str  # view.seqno of the last verified signature, "0.0" if none
    first_seqno: int = 1
    bytes: int = 0
    service_cert_checked: bool = False
    ledger_secrets: int = 0  # how many secrets the private domains were checked with (0: not checked)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> list[str]:
        """What was verified, for people (a few lines)."""
        last_signed = int(self.last_verified_txid.split(".")[1])
        lines = [
            f"{self.chunks} chunk{'s' if self.chunks != 1 else ''} ({self.bytes:,} bytes), {self.transactions:,} "
            f"transactions (seqnos {self.first_seqno}..{self.last_seqno}), {self.signatures:,} signatures verified, "
            f"the last one {self.last_verified_txid}",
            "service identity: " + ("the trusted certificate" if self.service_cert_checked
                                    else "not checked against a trusted certificate (give --service-cert)"),
            "private domains: " + (f"decrypted and checked with {self.ledger_secrets} ledger secret"
                                   f"{'s' if self.ledger_secrets != 1 else ''}" if self.ledger_secrets
                                   else "not checked (give --secrets)"),
        ]
        if self.last_seqno > last_signed:
            lines.append(f"not covered by any signature yet: seqnos {last_signed + 1}..{self.last_seqno}")
        return lines


class _Auditor:
    def __init__(self, service_cert: x509.Certificate | None, secrets: LedgerSecrets | None,
                 chunk_paths: list[str]) -> None:
        self.trusted = service_cert
        self.secrets = secrets
        self.chunk_paths = chunk_paths
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
            raise VerificationError(f"Merkle tree holds {self.merkle.size} leaves at chunk start {scan.start}: "
                                    "the ledger does not start at seqno 1", file=scan.file, seqno=scan.start)
        add = self.merkle.append_subtree
        for k, h in scan.segments[0]:
            add(k, h)
        for kept, blocks in zip(scan.kept, scan.segments[1:], strict=True):
            seqno = scan.start + kept.index
            try:
                self.tables(kept.tables, seqno)
            except AlteredEntry as e:
                raise e.at(scan.file, kept.offset, seqno) from None
            except VerificationError as e:
                raise VerificationError(e.reason, file=scan.file, offset=kept.offset, seqno=seqno) from None
            except (KeyError, ValueError, TypeError, AttributeError, x509.InvalidVersion, LedgerSecretError) as e:
                raise VerificationError(f"malformed service table: {e!r}", file=scan.file, offset=kept.offset,
                                        seqno=seqno) from e
            for k, h in blocks:
                add(k, h)
        self.transactions += scan.count
        self.expected_seqno = scan.start + scan.count

    def tables(self, tables: WriteSet, seqno: int) -> None:
        for node_id_b, info in tables.get(NODES_INFO, {}).items():
            node_id = node_id_b.decode()
            if info is None:
                self.node_status.pop(node_id, None)
            else:
                self.node_status[node_id] = str(orjson.loads(info)["status"])
        if SERVICE_INFO in tables:
            self.service_info(tables[SERVICE_INFO].get(SINGLETON_KEY))
        for node_id_b, pem in tables.get(NODES_ENDORSED_CERTS, {}).items():
            self.node_cert(node_id_b.decode(), pem)
        if self.secrets is not None and HISTORICAL_SECRETS in tables:
            self.secret_record(tables[HISTORICAL_SECRETS].get(SINGLETON_KEY), seqno)
        if SIGNATURES in tables:
            self.signature(tables[SIGNATURES].get(SINGLETON_KEY), tables.get(COSE_SIGNATURES, {}).get(SINGLETON_KEY),
                           tables.get(TREE, {}).get(SINGLETON_KEY), seqno)

    def service_info(self, raw: bytes | None) -> None:
        if raw is None:
            return
        info = orjson.loads(raw)
        status = info["status"]
        prev = self.service_status
        if status != "Opening" and prev is not None and prev != status \
                and status not in _ALLOWED_TRANSITIONS.get(prev, set()):
            raise VerificationError(f"service status cannot go from {prev} to {status}")
        self.service_status = status
        cert = x509.load_pem_x509_certificate(info["cert"].encode())
        if self.trusted is not None and cert != self.trusted:
            raise VerificationError("service certificate in the ledger is not the trusted one")
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError("service key is not EC")
        self.service_key = key

    def node_cert(self, node_id: str, pem: bytes | None) -> None:
        if pem is None:
            self.node_keys.pop(node_id, None)
            return
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError(f"node {node_id} key is not EC")
        if self.trusted is not None:
            try:
                cert.verify_directly_issued_by(self.trusted)
            except (ValueError, TypeError, InvalidSignature):
                raise VerificationError(f"node {node_id} certificate is not endorsed by the service") from None
        self.node_keys[node_id] = key
        self.node_spki[node_id] = spki_der(key)

    def secret_record(self, raw: bytes | None, seqno: int) -> None:
        """A rekey at `seqno` wraps the secret in force under the one that starts at seqno + 1."""
        assert self.secrets is not None
        record = orjson.loads(raw) if raw is not None else None
        if not isinstance(record, dict) or "previous_ledger_secret" not in record:
            return  # the record written at opening names no secret
        new = self.secrets.for_seqno(seqno + 1)
        if new.start != seqno + 1:
            raise VerificationError(f"the ledger rekeys at {seqno} but no given ledger secret starts at {seqno + 1}")
        try:
            previous = decrypt_previous_secret(record, new)
            current = self.secrets.for_seqno(seqno)
        except LedgerSecretError as e:
            raise VerificationError(f"rekey record: {e}") from None
        if (previous.start, previous.raw) != (current.start, current.raw):
            raise VerificationError("the rekey record wraps another secret than the one given for the previous range")

    def signature(self, raw: bytes | None, cose_value: bytes | None, tree: bytes | None, seqno: int) -> None:
        if raw is None:
            return
        self.signatures += 1
        primary = parse_primary_signature(raw, seqno)
        key = self.node_keys.get(primary.node)
        if key is None:
            raise VerificationError(f"signing node {primary.node} has no endorsed certificate")
        if self.node_status.get(primary.node) in (None, "Pending"):
            raise VerificationError(f"signing node {primary.node} is not trusted")
        root = self.merkle.root()
        try:
            verify_signature_transaction(
                primary, cose_value, seqno=seqno, expected_root=root, node_key=key,
                service_key=self.service_key, covering=f"transactions {self.last_signature + 1}..{seqno - 1}")
        except VerificationError as e:
            located = self.locate_altered_entry(seqno, tree, e.reason) if primary.root != root else None
            raise (located or VerificationError(e.reason)) from None
        self.last_verified = f"{primary.view}.{primary.seqno}"
        self.last_signature = seqno

    def locate_altered_entry(self, seqno: int, tree: bytes | None, reason: str) -> AlteredEntry | None:
        """The first entry whose rebuilt leaf differs from the leaf the signature at `seqno` recorded."""
        if tree is None or len(tree) < _TREE_HEAD.size:
            return None
        count, first = _TREE_HEAD.unpack_from(tree)
        if first + count != seqno or len(tree) < _TREE_HEAD.size + 32 * count:
            return None
        for path in self.chunk_paths:
            start, end = chunk_range(path)
            if (end is not None and end < first) or start >= seqno:
                continue
            scan = scan_path(path, keep=frozenset(), keep_leaves=True)
            if isinstance(scan, tuple) or scan.leaves is None or scan.offsets is None:
                return None
            for i, leaf in enumerate(scan.leaves):
                s = scan.start + i
                if first <= s < seqno:
                    at = _TREE_HEAD.size + 32 * (s - first)
                    if leaf != tree[at : at + 32]:
                        return AlteredEntry(
                            f"{reason}; the first entry that differs from the leaves recorded with this signature is "
                            f"seqno {s} at offset {scan.offsets[i]} of {scan.file}",
                            altered_file=scan.file, altered_offset=scan.offsets[i], altered_seqno=s)
        return None


def audit_ledger(
    paths: list[str],
    *,
    committed_only: bool = True,
    service_cert: x509.Certificate | None = None,
    secrets: LedgerSecrets | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Verify the ledger chunks under `paths` (parts of one ledger); raise `VerificationError` naming the
    first damage (file, offset, seqno). `progress` is called after each chunk."""
    chunk_paths = ledger_chunk_paths(paths, committed_only)
    sizes = [os.path.getsize(p) for p in chunk_paths]
    total = sum(sizes)
    auditor = _Auditor(service_cert, secrets, chunk_paths)
    raw: RawSecrets | None = tuple((s.start, s.raw) for s in secrets.all()) if secrets is not None else None
    done = 0
    for size, (path, scan) in zip(sizes, scan_chunks(chunk_paths, raw, AUDIT_TABLES, workers), strict=True):
        name = os.path.basename(path)
        if isinstance(scan, tuple):
            raise VerificationError(scan[0], file=name, offset=scan[1], seqno=scan[2])
        auditor.apply(scan)
        done += size
        if progress is not None:
            progress(done, total, (auditor.expected_seqno or 1) - 1)
    last = (auditor.expected_seqno or 1) - 1
    return AuditReport(len(chunk_paths), auditor.transactions, auditor.signatures, last, auditor.last_verified,
                       first_seqno=chunk_range(chunk_paths[0])[0], bytes=total,
                       service_cert_checked=service_cert is not None,
                       ledger_secrets=len(secrets) if secrets is not None else 0)
