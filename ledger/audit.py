"""Offline audit of a ledger directory: what an auditor runs, trusting only the service certificate.

`audit_ledger` checks what `read_ledger.py` checks, faster and with errors that say where:
- chunk files are contiguous, positions tables match the entries, every entry is well framed and its
  public domain names the same seqno as its IV (`ledger.audit_scan`);
- the Merkle tree rebuilt from the entries (leaf = H(H(entry) || commit evidence digest || claims))
  has, at every signature transaction, the root the signature claims; the node signature verifies with
  the signing node's endorsed certificate, which the service identity in force endorses; the node is not
  Pending; the COSE signature verifies with the key of the service identity in force;
- service status transitions follow CCF's rules;
- with `secrets`, every entry's GCM tag verifies, its private maps parse, its commit evidence is the one
  the secret derives, and every rekey record (and the record a recovered service writes to continue its
  predecessor's chain) wraps the previous secret under the next one, so damage is pinned to the exact seqno
  and the secrets are shown to be this ledger's.

Service identities and disaster recoveries. A ledger is cut into epochs, one per service identity: the first
service's from seqno 1, then one per recovery, from the recovery transaction that set the new certificate in
`public:ccf.gov.service.info` to the entry before the next one. A change of certificate is accepted only as a
recovery: in the same transaction `public:ccf.gov.service.previous_service_identity` names exactly the
certificate in force before, status `Recovering` from a service that had opened, `recovery_count` one more,
`previous_service_identity_version` the seqno of the previous service info, `current_service_create_txid` its
own txid, and it follows a signature of the previous service (a recovering node starts right after the last
one). Signatures verify with the identity in force at their seqno: node certificates endorsed by it, COSE
signatures by its key (old nodes signing after a recovery are refused).

Trust (`service_cert`, the NEWEST service certificate): the newest epoch covered by a signature must hold
exactly that certificate; an earlier certificate is trusted because the recovery after it names it as the
previous identity and that recovery transaction is covered by signatures of the epoch it opens, which are
trusted in turn, back to seqno 1. This is computed in one pass: every epoch is verified against the
certificate the ledger claims for it, and at the end the chain of claims is accepted only if it leads from
the given certificate back through every recorded previous identity; since each epoch was verified with
exactly the certificate that ends up trusted, that is the same verdict as first collecting the chain and then
verifying (a two-pass audit), without reading the ledger twice. A ledger whose newest identity is not the
given certificate fails, naming where the later identity starts; with `prefix`, an older certificate is
accepted and only the epochs up to its own are audited (what follows, from the next recovery on, is reported
as not audited). The epochs are in `AuditReport.epochs`.

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
from ledger.identity import cert_id, spki_der
from ledger.kv import WriteSet
from ledger.merkle import MerkleRoots
from ledger.secrets import LedgerSecrets, decrypt_previous_secret, latest_secret_start
from ledger.signatures import parse_primary_signature, verify_signature_transaction
from ledger.tables import (
    COSE_SIGNATURES,
    HISTORICAL_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
    TREE,
)

__all__ = ["AlteredEntry", "AuditReport", "Epoch", "Progress", "audit_ledger", "ledger_chunk_paths"]

_ALLOWED_TRANSITIONS = {
    "Opening": {"Open", "WaitingForRecoveryShares"},
    "Recovering": {"WaitingForRecoveryShares"},
    "WaitingForRecoveryShares": {"Open"},
    "Open": {"Recovering"},
}
# what a service may be in when it is recovered (it opened: there are recovery shares to recover it with)
_RECOVERABLE = frozenset({"Open", "Recovering", "WaitingForRecoveryShares"})
# the public maps the auditor reads; every other entry only contributes its leaf
AUDIT_TABLES = frozenset({NODES_INFO, SERVICE_INFO, PREVIOUS_SERVICE_IDENTITY, NODES_ENDORSED_CERTS, SIGNATURES,
                          COSE_SIGNATURES, TREE, HISTORICAL_SECRETS})
_TREE_HEAD = struct.Struct(">QQ")

# How the auditor came to trust an epoch's certificate (`Epoch.trust`)
TRUST_GIVEN = "given"  # the certificate given (--service-cert)
TRUST_NAMED = "named_by_next_recovery"  # named as previous identity by the (trusted) recovery after it
TRUST_NOT_CHECKED = "not_checked"  # no certificate was given
TRUST_NOT_SIGNED = "not_signed_yet"  # a recovery no signature covers yet: nothing in the ledger vouches for it

# progress(bytes scanned so far, total bytes, last seqno folded in)
Progress = Callable[[int, int, int], None]


def short_fingerprint(fingerprint: str) -> str:
    return fingerprint[:16] + "…"


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
class Epoch:
    """The part of the ledger under one service identity. The first is the first service's (from its genesis
    at seqno 1); each later one was opened by a recovery transaction at `first_seqno`, which set a new
    certificate and named the previous one (`previous_cert_fingerprint`)."""

    index: int
    first_seqno: int  # the transaction that set this identity: the genesis, or the recovery transaction
    last_seqno: int  # the last seqno under it in what was audited
    first_txid: str  # view.seqno of that transaction
    cert_fingerprint: str  # hex SHA-256 of the certificate's DER (openssl x509 -fingerprint -sha256)
    previous_cert_fingerprint: str | None  # the certificate the recovery named as previous (None: the first)
    recovery_count: int  # as the service info of `first_seqno` says
    signatures: int  # signatures verified under this identity
    last_verified_txid: str  # the last of them, "0.0" if none
    trust: str  # TRUST_GIVEN, TRUST_NAMED, TRUST_NOT_CHECKED or TRUST_NOT_SIGNED

    @property
    def is_recovery(self) -> bool:
        return self.previous_cert_fingerprint is not None

    def describe(self) -> str:
        head = (f"recovery {self.recovery_count} at {self.first_txid}" if self.is_recovery
                else f"first service identity at {self.first_txid}")
        trust = {
            TRUST_GIVEN: "the trusted certificate",
            TRUST_NAMED: "trusted as the previous identity named by the recovery after it",
            TRUST_NOT_CHECKED: "not checked",
            TRUST_NOT_SIGNED: "no signature covers this recovery yet",
        }.get(self.trust, self.trust)
        return (f"{head}: seqnos {self.first_seqno}..{self.last_seqno}, certificate sha256 "
                f"{short_fingerprint(self.cert_fingerprint)}, {self.signatures} signature"
                f"{'s' if self.signatures != 1 else ''}; {trust}")


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
    epochs: tuple[Epoch, ...] = ()  # one per service identity, oldest first
    not_audited_from: int | None = None  # with `prefix`: the recovery after the given identity, not audited

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def recoveries(self) -> list[Epoch]:
        return [e for e in self.epochs if e.is_recovery]

    def describe(self) -> list[str]:
        """What was verified, for people (a few lines)."""
        last_signed = int(self.last_verified_txid.split(".")[1])
        lines = [
            f"{self.chunks} chunk{'s' if self.chunks != 1 else ''} ({self.bytes:,} bytes), {self.transactions:,} "
            f"transactions (seqnos {self.first_seqno}..{self.last_seqno}), {self.signatures:,} signatures verified, "
            f"the last one {self.last_verified_txid}",
        ]
        recoveries = len(self.recoveries)
        if recoveries == 0:
            lines.append("service identity: " + (
                "the trusted certificate" if self.service_cert_checked
                else "not checked against a trusted certificate (give --service-cert)"))
        else:
            count = f"{len(self.epochs)} ({recoveries} recover{'ies' if recoveries != 1 else 'y'})"
            if not self.service_cert_checked:
                lines.append(f"service identities: {count}, not checked against a trusted certificate "
                             "(give the newest with --service-cert)")
            elif self.not_audited_from is not None:
                lines.append(f"service identities: {count}: the last audited is the trusted certificate, each one "
                             "before it named as previous identity by the recovery after it")
            else:
                lines.append(f"service identities: {count}: the newest is the trusted certificate, each one before "
                             "it named as previous identity by the recovery after it")
            lines.extend(f"  {e.describe()}" for e in self.epochs)
        lines.append("private domains: " + (f"decrypted and checked with {self.ledger_secrets} ledger secret"
                                            f"{'s' if self.ledger_secrets != 1 else ''}" if self.ledger_secrets
                                            else "not checked (give --secrets)"))
        if self.not_audited_from is not None:
            lines.append(f"not audited (--prefix): seqnos from {self.not_audited_from} on, under a later service "
                         f"identity (the recovery at seqno {self.not_audited_from}) that the given certificate "
                         "cannot vouch for")
        if self.last_seqno > last_signed:
            lines.append(f"not covered by any signature yet: seqnos {last_signed + 1}..{self.last_seqno}")
        return lines


@dataclass
class _EpochState:
    index: int
    cert: x509.Certificate
    key: ec.EllipticCurvePublicKey
    first_seqno: int
    first_txid: str
    file: str | None
    offset: int | None
    fingerprint: str
    previous_fingerprint: str | None
    recovery_count: int
    signatures: int = 0
    last_verified: str = "0.0"

    def done(self, last_seqno: int, trust: str) -> Epoch:
        return Epoch(self.index, self.first_seqno, last_seqno, self.first_txid, self.fingerprint,
                     self.previous_fingerprint, self.recovery_count, self.signatures, self.last_verified, trust)


class _EndOfPrefix(Exception):
    """The entry that starts the identity after the given one (with `prefix`): the audit stops before it."""


def _int_field(info: dict[str, Any], name: str) -> int | None:
    value = info.get(name)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Auditor:
    def __init__(self, service_cert: x509.Certificate | None, secrets: LedgerSecrets | None,
                 chunk_paths: list[str], prefix: bool = False) -> None:
        self.trusted = service_cert
        self.prefix = prefix and service_cert is not None
        self.secrets = secrets
        self.chunk_paths = chunk_paths
        self.merkle = MerkleRoots()
        self.node_keys: dict[str, ec.EllipticCurvePublicKey] = {}
        self.node_certs: dict[str, x509.Certificate] = {}
        self.node_spki: dict[str, bytes] = {}
        self.node_endorsed_in: dict[str, int] = {}  # the epoch whose identity was checked to endorse the node
        self.node_status: dict[str, str] = {}
        self.service_status: str | None = None
        self.service_info_seqno = 0  # where the service info in force was written
        self.recovery_count = 0  # as the service info in force says
        self.epochs: list[_EpochState] = []
        self.signatures = 0
        self.transactions = 0
        self.last_verified = "0.0"
        self.last_signature = 0
        self.expected_seqno: int | None = None
        self.stopped_at: int | None = None  # with `prefix`: the first seqno not audited
        self.location: tuple[str | None, int | None] = (None, None)

    @property
    def epoch(self) -> _EpochState | None:
        return self.epochs[-1] if self.epochs else None

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
            self.location = (scan.file, kept.offset)
            try:
                self.tables(kept.tables, seqno, kept.view)
            except _EndOfPrefix:
                self.transactions += kept.index
                self.expected_seqno = self.stopped_at = seqno
                return
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

    def tables(self, tables: WriteSet, seqno: int, view: int) -> None:
        if self.prefix and SERVICE_INFO in tables:
            self.check_end_of_prefix(tables[SERVICE_INFO].get(SINGLETON_KEY))
        for node_id_b, info in tables.get(NODES_INFO, {}).items():
            node_id = node_id_b.decode()
            if info is None:
                self.node_status.pop(node_id, None)
            else:
                self.node_status[node_id] = str(orjson.loads(info)["status"])
        previous_identity = tables.get(PREVIOUS_SERVICE_IDENTITY, {}).get(SINGLETON_KEY)
        if SERVICE_INFO in tables:
            self.service_info(tables[SERVICE_INFO].get(SINGLETON_KEY), previous_identity, seqno, view)
        elif PREVIOUS_SERVICE_IDENTITY in tables:
            raise VerificationError(f"{PREVIOUS_SERVICE_IDENTITY} is written outside a recovery (the transaction "
                                    "sets no new service identity)")
        for node_id_b, pem in tables.get(NODES_ENDORSED_CERTS, {}).items():
            self.node_cert(node_id_b.decode(), pem)
        if self.secrets is not None and HISTORICAL_SECRETS in tables:
            self.secret_record(tables[HISTORICAL_SECRETS].get(SINGLETON_KEY), seqno)
        if SIGNATURES in tables:
            self.signature(tables[SIGNATURES].get(SINGLETON_KEY), tables.get(COSE_SIGNATURES, {}).get(SINGLETON_KEY),
                           tables.get(TREE, {}).get(SINGLETON_KEY), seqno)

    def check_end_of_prefix(self, raw: bytes | None) -> None:
        """With `prefix`: a new identity after the given one ends the part the given certificate vouches for."""
        epoch = self.epoch
        if raw is None or epoch is None or epoch.cert != self.trusted:
            return
        if x509.load_pem_x509_certificate(orjson.loads(raw)["cert"].encode()) != epoch.cert:
            raise _EndOfPrefix

    def service_info(self, raw: bytes | None, previous_identity: bytes | None, seqno: int, view: int) -> None:
        if raw is None:
            if previous_identity is not None:
                raise VerificationError(f"{PREVIOUS_SERVICE_IDENTITY} is written outside a recovery (the "
                                        "transaction removes the service info)")
            return  # as before: a removal changes nothing the auditor checks
        info = orjson.loads(raw)
        status = info["status"]
        cert = x509.load_pem_x509_certificate(info["cert"].encode())
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError("service key is not EC")
        count = _int_field(info, "recovery_count") or 0
        epoch = self.epoch
        if epoch is not None and cert != epoch.cert:
            self.recovery(info, cert, previous_identity, seqno, view, epoch)
            self.epochs.append(_EpochState(len(self.epochs), cert, key, seqno, f"{view}.{seqno}", *self.location,
                                           cert_id(cert), epoch.fingerprint, count))
        else:
            if previous_identity is not None:
                raise VerificationError(f"{PREVIOUS_SERVICE_IDENTITY} is written outside a recovery (" + (
                    "the service certificate does not change)" if epoch is not None
                    else "with the ledger's first service identity, which has no previous one here)"))
            prev = self.service_status
            if status != "Opening" and prev is not None and prev != status \
                    and status not in _ALLOWED_TRANSITIONS.get(prev, set()):
                raise VerificationError(f"service status cannot go from {prev} to {status}")
            if epoch is None:
                self.epochs.append(_EpochState(0, cert, key, seqno, f"{view}.{seqno}", *self.location,
                                               cert_id(cert), None, count))
        self.service_status = status
        self.service_info_seqno = seqno
        self.recovery_count = count

    def recovery(self, info: dict[str, Any], cert: x509.Certificate, previous_identity: bytes | None, seqno: int,
                 view: int, epoch: _EpochState) -> None:
        """The transaction at `seqno` sets a new service identity: it must be a recovery of the one in force."""
        if previous_identity is None:
            raise VerificationError(f"the service identity changes at seqno {seqno} without a recovery: the "
                                    f"transaction records no previous service identity ({PREVIOUS_SERVICE_IDENTITY})")
        named_pem = orjson.loads(previous_identity)
        if not isinstance(named_pem, str):
            raise VerificationError(f"{PREVIOUS_SERVICE_IDENTITY} is not a PEM string")
        named = x509.load_pem_x509_certificate(named_pem.encode())
        where = f"the recovery at seqno {seqno}"
        if named != epoch.cert:
            raise VerificationError(
                f"{where} names as previous service identity a certificate (sha256 {cert_id(named)}) that is not "
                f"the service identity in force before it (sha256 {epoch.fingerprint}, set at seqno "
                f"{epoch.first_seqno})")
        if info["status"] != "Recovering":
            raise VerificationError(f"{where} sets the service status {info['status']}, not Recovering")
        if self.service_status not in _RECOVERABLE:
            raise VerificationError(f"{where} recovers a service that never opened (status {self.service_status})")
        count = _int_field(info, "recovery_count")
        if count != self.recovery_count + 1:
            raise VerificationError(f"{where} sets recovery_count {info.get('recovery_count')!r}, expected "
                                    f"{self.recovery_count + 1}")
        version = _int_field(info, "previous_service_identity_version")
        if version != self.service_info_seqno:
            raise VerificationError(
                f"{where} names previous_service_identity_version {info.get('previous_service_identity_version')!r}, "
                f"but the previous service info was written at seqno {self.service_info_seqno}")
        create = info.get("current_service_create_txid")
        if create != f"{view}.{seqno}":
            raise VerificationError(f"{where} names current_service_create_txid {create!r}, not its own "
                                    f"transaction id {view}.{seqno}")
        if self.last_signature != seqno - 1:
            raise VerificationError(
                f"{where} does not follow a signature of the previous service identity (its last signature is at "
                f"seqno {self.last_signature}): a recovering node starts right after that signature")

    def node_cert(self, node_id: str, pem: bytes | None) -> None:
        if pem is None:
            for table in (self.node_keys, self.node_certs, self.node_spki, self.node_endorsed_in):
                table.pop(node_id, None)
            return
        cert = x509.load_pem_x509_certificate(pem)
        key = cert.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise VerificationError(f"node {node_id} key is not EC")
        epoch = self.epoch
        if epoch is not None and not self.endorses(epoch, cert):
            raise VerificationError(f"node {node_id} certificate is not endorsed by the service (the identity set "
                                    f"at seqno {epoch.first_seqno}, sha256 {short_fingerprint(epoch.fingerprint)})")
        self.node_keys[node_id] = key
        self.node_certs[node_id] = cert
        self.node_spki[node_id] = spki_der(key)
        self.node_endorsed_in[node_id] = epoch.index if epoch is not None else -1

    @staticmethod
    def endorses(epoch: _EpochState, cert: x509.Certificate) -> bool:
        try:
            cert.verify_directly_issued_by(epoch.cert)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True

    def secret_record(self, raw: bytes | None, seqno: int) -> None:
        """A rekey at `seqno` wraps the secret in force under the one that starts at seqno + 1; the record a
        recovered service writes once it has its predecessor's secrets wraps the predecessor's latest under its
        own, which starts at `next_version` (its first seqno)."""
        assert self.secrets is not None
        record = orjson.loads(raw) if raw is not None else None
        if not isinstance(record, dict) or "previous_ledger_secret" not in record:
            return  # the record written at opening names no secret
        start = latest_secret_start(record, seqno)
        new = self.secrets.for_seqno(start)
        if new.start != start:
            raise VerificationError(f"the ledger rekeys at {seqno} but no given ledger secret starts at {start}")
        try:
            previous = decrypt_previous_secret(record, new)
            current = self.secrets.for_seqno(start - 1)
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
        epoch = self.epoch
        if epoch is not None and self.node_endorsed_in.get(primary.node) != epoch.index:
            if not self.endorses(epoch, self.node_certs[primary.node]):
                raise VerificationError(
                    f"signing node {primary.node} is not endorsed by the service identity in force (set at seqno "
                    f"{epoch.first_seqno}, sha256 {short_fingerprint(epoch.fingerprint)})")
            self.node_endorsed_in[primary.node] = epoch.index
        root = self.merkle.root()
        try:
            verify_signature_transaction(
                primary, cose_value, seqno=seqno, expected_root=root, node_key=key,
                service_key=epoch.key if epoch is not None else None,
                covering=f"transactions {self.last_signature + 1}..{seqno - 1}")
        except VerificationError as e:
            located = self.locate_altered_entry(seqno, tree, e.reason) if primary.root != root else None
            raise (located or VerificationError(e.reason)) from None
        self.last_verified = f"{primary.view}.{primary.seqno}"
        self.last_signature = seqno
        if epoch is not None:
            epoch.signatures += 1
            epoch.last_verified = self.last_verified

    def establish_trust(self, last_seqno: int) -> tuple[Epoch, ...]:
        """The epochs, each with how its certificate came to be trusted; raises `VerificationError` when the
        given certificate does not head the chain of identities the ledger records."""
        epochs = self.epochs
        # the newest epoch that a signature covers (every earlier one ends with a signature: see `recovery`)
        top = len(epochs) - 1
        if len(epochs) > 1 and epochs[-1].signatures == 0:
            top -= 1
        trust = [TRUST_NOT_CHECKED] * len(epochs)
        if top < len(epochs) - 1:
            trust[-1] = TRUST_NOT_SIGNED
        if self.trusted is not None:
            if not epochs:
                raise VerificationError("the ledger records no service identity (public:ccf.gov.service.info) to "
                                        "check against the given certificate")
            given = next((e.index for e in epochs if e.cert == self.trusted), None)
            newest = epochs[top]
            if given is None:
                others = f"; nor is any of the {top} identities before it" if top > 0 else ""
                raise VerificationError(
                    f"service certificate in the ledger is not the trusted one: the newest service identity (sha256 "
                    f"{newest.fingerprint}) is not the given certificate (sha256 {cert_id(self.trusted)}){others}",
                    file=newest.file, offset=newest.offset, seqno=newest.first_seqno)
            if given > top:
                unsigned = epochs[given]
                raise VerificationError(
                    f"the given certificate is the service identity set by the recovery at seqno "
                    f"{unsigned.first_seqno}, which no signature covers yet: nothing in the ledger vouches for it or "
                    f"for the identity before it (sha256 {newest.fingerprint}); audit with that one and --prefix",
                    file=unsigned.file, offset=unsigned.offset, seqno=unsigned.first_seqno)
            if given < top:
                after = epochs[given + 1]
                later = top - given
                raise VerificationError(
                    f"the newest service identity in the ledger is not the trusted one: the given certificate is the "
                    f"identity of seqnos {epochs[given].first_seqno}..{after.first_seqno - 1}, before the recovery at "
                    f"seqno {after.first_seqno}; the ledger goes on under {later} later identit"
                    f"{'ies' if later != 1 else 'y'}, the newest (sha256 {newest.fingerprint}) set at seqno "
                    f"{newest.first_seqno}: audit with the newest service certificate, or add --prefix to audit only "
                    f"seqnos up to {after.first_seqno - 1}",
                    file=after.file, offset=after.offset, seqno=after.first_seqno)
            trust[given] = TRUST_GIVEN
            for k in range(given):
                trust[k] = TRUST_NAMED
        ends = [e.first_seqno - 1 for e in epochs[1:]] + [last_seqno]
        return tuple(e.done(end, t) for e, end, t in zip(epochs, ends, trust, strict=True))

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
    prefix: bool = False,
) -> AuditReport:
    """Verify the ledger chunks under `paths` (parts of one ledger); raise `VerificationError` naming the
    first damage (file, offset, seqno). `service_cert` is the newest service certificate; with `prefix` it may
    be an older one, and only the part of the ledger up to its identity's end is audited. `progress` is called
    after each chunk."""
    chunk_paths = ledger_chunk_paths(paths, committed_only)
    sizes = [os.path.getsize(p) for p in chunk_paths]
    total = sum(sizes)
    auditor = _Auditor(service_cert, secrets, chunk_paths, prefix)
    raw: RawSecrets | None = tuple((s.start, s.raw) for s in secrets.all()) if secrets is not None else None
    done = 0
    chunks = 0
    scans = scan_chunks(chunk_paths, raw, AUDIT_TABLES, workers)
    try:
        for size, (path, scan) in zip(sizes, scans, strict=True):
            name = os.path.basename(path)
            if isinstance(scan, tuple):
                raise VerificationError(scan[0], file=name, offset=scan[1], seqno=scan[2])
            auditor.apply(scan)
            if auditor.stopped_at is None or auditor.stopped_at > scan.start:
                chunks += 1
                done += size
            if progress is not None:
                progress(total if auditor.stopped_at is not None else done, total,
                         (auditor.expected_seqno or 1) - 1)
            if auditor.stopped_at is not None:
                break
    finally:
        scans.close()  # with --prefix, the chunks after the given identity are not waited for
    last = (auditor.expected_seqno or 1) - 1
    epochs = auditor.establish_trust(last)
    return AuditReport(chunks, auditor.transactions, auditor.signatures, last, auditor.last_verified,
                       first_seqno=chunk_range(chunk_paths[0])[0], bytes=done,
                       service_cert_checked=service_cert is not None,
                       ledger_secrets=len(secrets) if secrets is not None else 0,
                       epochs=epochs, not_audited_from=auditor.stopped_at)
