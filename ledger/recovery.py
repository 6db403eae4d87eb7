"""Disaster recovery, the ledger's part: a new service rebuilt from a lost service's ledger files.

A recovering node holds none of its predecessor's ledger secrets. It:
- gathers the previous service's chunk files (from read-only directories too) into its own ledger directory
  (`gather_previous_ledger`), so that afterwards one directory holds the whole history;
- picks the latest committed snapshot that the files continue and whose receipt verifies against the previous
  service certificate (`choose_snapshot`);
- replays the public part of the ledger (`replay_public`; on every core for a large ledger, see
  `ledger.parallel_replay`), verifying every signature against the Merkle tree
  rebuilt from the entries and the previous service's identities, and stops at the last signature made under
  the previous service identity (what follows it, a torn tail or an abandoned earlier recovery, is dropped and
  reported; damage inside a committed chunk is refused with the file and seqno);
- once the members' shares have unwrapped the latest secret and the chain gave the others, decrypts the private
  part (`PrivateReplay`, in bounded steps so a node keeps serving meanwhile) and hands its state to the store.

Guarantees: nothing here reads sealed state; nothing private is applied from an entry whose GCM tag and commit
evidence do not verify under the recovered secrets. Not here: shares (governance), the node's lifecycle.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from loguru import logger

from ledger import cose
from ledger.audit_scan import check_private_entry
from ledger.entry import decode_entry, decrypt_private, parse_public_header
from ledger.errors import (
    CorruptedCommittedChunk,
    EntryFormatError,
    LedgerSecretError,
    ReceiptError,
    RecoveryError,
    SnapshotError,
)
from ledger.files import LedgerFiles
from ledger.framing import frame_entry
from ledger.genesis import GenesisNode
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, load_cert
from ledger.kv import LastWrites, Tx, WriteSet
from ledger.parallel_replay import replay_public_in_parallel
from ledger.receipts import verify_json_receipt
from ledger.replay import recover
from ledger.secrets import LedgerSecret, LedgerSecrets, unwrap_secret_chain
from ledger.service_ledger import ServiceLedger, SignatureRecord
from ledger.snapshot_files import parse_snapshot_name
from ledger.snapshots import read_snapshot_maps, summarise_snapshot
from ledger.tables import (
    HISTORICAL_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SINGLETON_KEY,
    SNAPSHOT_EVIDENCE,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
    dump_json,
)


def choose_snapshot(snapshot_dirs: list[str], files: LedgerFiles,
                    previous_service_cert: x509.Certificate) -> tuple[str, bytes] | None:
    """The latest committed snapshot the files continue (they hold the entry after it) whose receipt verifies
    against the previous service certificate; snapshots that do not are skipped with a warning."""
    candidates: list[tuple[int, str]] = []
    for directory in snapshot_dirs:
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            parsed = parse_snapshot_name(name)
            if parsed is not None and parsed[2] and files.first_seqno <= parsed[0] + 1 <= files.last_seqno:
                candidates.append((parsed[0], os.path.join(directory, name)))
    for _seqno, path in sorted(candidates, reverse=True):
        with open(path, "rb") as f:
            data = f.read()
        try:
            summary = summarise_snapshot(data, digest=False)
            if summary.receipt is None:
                raise SnapshotError("no receipt")
            verify_json_receipt(summary.receipt, previous_service_cert)
        except (SnapshotError, ReceiptError, ValueError) as e:
            logger.warning(f"{os.path.basename(path)}: not used for the recovery ({e})")
            continue
        return os.path.basename(path), data
    return None


@dataclass
class PublicRecovery:
    """What the public replay found: the ledger (public state, committed to its last signature) and a report."""

    ledger: ServiceLedger
    dropped_after: int | None  # seqno after which entries were dropped, if any were
    previous_service_info: dict[str, Any]  # as the previous service left it
    previous_service_info_seqno: int  # the seqno that wrote it
    warnings: list[str] = field(default_factory=list)


def replay_public(files: LedgerFiles, *, node: NodeIdentity, service: ServiceIdentity,
                  previous_service_cert: x509.Certificate, snapshot: bytes | None = None,
                  **kwargs: Any) -> PublicRecovery:
    """Replay the public part of `files` (after `snapshot` if given) into a ledger that will write as `node` of
    `service`, truncated to the last signature made under `previous_service_cert` and committed to it."""
    secrets = LedgerSecrets([])
    if snapshot is not None:
        ledger = ServiceLedger.from_snapshot(snapshot, secrets=secrets, node=node, service=service, files=None,
                                             **kwargs)
    else:
        ledger = ServiceLedger(node=node, service=service, secrets=secrets, files=None, **kwargs)
    # the service certificate in force from each seqno on, with the status written with it (the store keeps no
    # history below its commit point)
    certs: list[tuple[int, str, str]] = []
    state = ledger.read_tx()
    if isinstance(info := state.get_json(SERVICE_INFO, SINGLETON_KEY), dict):
        certs.append((state.get_version(SERVICE_INFO, SINGLETON_KEY), str(info.get("cert", "")).strip(),
                      str(info.get("status", ""))))

    def service_info_written(version: int, changes: dict[bytes, bytes | None]) -> None:
        raw = changes.get(SINGLETON_KEY)
        if raw is not None:
            record = orjson.loads(raw)
            certs.append((version, str(record.get("cert", "")).strip(), str(record.get("status", ""))))

    ledger.store.add_local_hook(SERVICE_INFO, service_info_written)
    # (version written, snapshot seqno, the SHA-256 that evidence transaction committed), in ledger order
    evidence: list[tuple[int, int, str]] = []

    def evidence_written(version: int, changes: dict[bytes, bytes | None]) -> None:
        raw = changes.get(SINGLETON_KEY)
        if raw is not None:
            record = orjson.loads(raw)
            evidence.append((version, int(record.get("version", 0)), str(record.get("hash", ""))))

    ledger.store.add_local_hook(SNAPSHOT_EVIDENCE, evidence_written)
    try:
        # in parallel up to the last committed chunk ending with a signature (if it can), then the rest in order
        if snapshot is None:
            replay_public_in_parallel(files, ledger)
        ledger = recover(files, secrets=secrets, node=node, service=service, base=ledger, **kwargs)
    except CorruptedCommittedChunk as e:
        raise RecoveryError(f"the previous ledger does not verify: {e}") from None
    previous_pem = cert_pem(previous_service_cert).strip()

    def cert_at(seqno: int) -> str:
        return next((pem for version, pem, _ in reversed(certs) if version <= seqno), "")

    # The last signature that vouches for the ledger in the previous service's name: made while its certificate
    # was the service's, and either the service's own (COSE, verified with that certificate's key) or by a node
    # whose certificate it issued (as a receipt is). One by any other key (say, of a node that whoever wrote the
    # files declared trusted in entries of their own) vouches for nothing: what follows the last that does is
    # dropped or set aside as any unsigned tail is.
    last = next((s for s in reversed(ledger.signature_seqnos())
                 if cert_at(s) == previous_pem and _vouches(ledger.signature(s), previous_service_cert)), None)
    if last is None:
        raise RecoveryError("no signature made under the previous service identity was found in the ledger "
                            "(wrong previous_service_identity_file, or an empty ledger)")
    if snapshot is not None:
        # The snapshot's receipt proves its evidence transaction; the evidence must hold this snapshot's digest,
        # else its state (read without a secret to check its GCM tag) could be anything. Only evidence the
        # previous service signed counts: what follows its last signature is dropped, and anyone can write it.
        summary = summarise_snapshot(snapshot)
        digests = {digest for version, seqno, digest in evidence if seqno == summary.seqno and version <= last}
        if digests != {summary.digest.hex()}:
            raise RecoveryError(f"the snapshot at seqno {summary.seqno} does not match the digest its evidence "
                                "transaction committed in the ledger (or the ledger holds no evidence for it)")
    dropped = None
    warnings: list[str] = []
    if ledger.last_seqno > last:
        dropped = last
        message = (f"dropped {ledger.last_seqno - last} entries after seqno {last}, the last signature of the "
                   "previous service")
        warnings.append(message)
        logger.warning(message)
    # Everything up to the last signature was signed, and so is taken as committed by the recovered service
    # (CCF truncates a recovered ledger to its last signature the same way).
    if ledger.committed_seqno > last:
        # Committed entries of another service follow: an abandoned recovery attempt (CCF keeps those in
        # `.recovery` files until the service opens). They are set aside and the replay starts again without them.
        # A later service that opened is no abandoned attempt: its history is the ledger's, and the identity to
        # give is its own.
        opened = next((pem for version, pem, status in certs
                       if version > last and status == "Open" and pem != previous_pem), None)
        if opened is not None:
            raise RecoveryError(f"the ledger goes on after seqno {last} (the last signature of the given previous "
                                "identity) with a later service that opened: recover that service, with its "
                                f"certificate as the previous service identity:\n{opened}")
        set_aside = files.discard_after(last)
        logger.warning(f"entries after seqno {last} belong to another service (an abandoned recovery?); chunks "
                       f"{', '.join(set_aside)} copied to {files.directory}/unused before they were cut")
        again = replay_public(files, node=node, service=service, previous_service_cert=previous_service_cert,
                              snapshot=snapshot, **kwargs)
        again.warnings.insert(0, f"entries after seqno {last} set aside (another service's)")
        again.dropped_after = last
        return again
    _truncate_to(ledger, files, last)
    ledger.commit_to(last)
    state = ledger.read_tx()
    info = state.get_json(SERVICE_INFO, SINGLETON_KEY)
    return PublicRecovery(ledger, dropped, dict(info), state.get_version(SERVICE_INFO, SINGLETON_KEY), warnings)


def _vouches(record: SignatureRecord, service_cert: x509.Certificate) -> bool:
    """The signature transaction is the service's (its COSE signature verifies over the signed root with
    `service_cert`'s key) or its node's certificate was issued by `service_cert`. Both are checked against
    `service_cert` itself, never against a certificate the ledger names."""
    if record.cose:
        key = service_cert.public_key()
        try:
            if isinstance(key, ec.EllipticCurvePublicKey):
                cose.decode(record.cose).verify(key, record.primary.root)
                return True
        except cose.CoseError:
            pass
    try:
        load_cert(record.primary.cert.encode()).verify_directly_issued_by(service_cert)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):  # whatever the files' author made
        return False
    return True


def recovery_create_writes(state: Tx, service: ServiceIdentity, node: GenesisNode, create_txid: str) -> WriteSet:
    """The first transaction of a recovered service (CCF's `create` in recovery): service info with the new
    certificate, status Recovering and one more recovery; the previous certificate recorded; the previous
    service's nodes retired; this node Trusted with its certificate endorsed by the new service."""
    if node.identity.endorsed is None:
        raise RecoveryError("the recovering node needs its certificate endorsed by the new service")
    previous = state.get_json(SERVICE_INFO, SINGLETON_KEY)
    if not isinstance(previous, dict) or previous.get("status") != "Open":
        status = previous.get("status") if isinstance(previous, dict) else None
        before = state.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY)
        unfinished = status in ("Recovering", "WaitingForRecoveryShares") and isinstance(before, str)
        hint = (" It was itself an unfinished recovery: recover the service before it, whose certificate the "
                f"ledger records as its previous identity:\n{before}") if unfinished else ""
        raise RecoveryError(f"the previous service never opened (status {status}): no recovery shares hold its "
                            f"ledger secret.{hint}")
    info: dict[str, Any] = {
        "cert": cert_pem(service.cert),
        "current_service_create_txid": create_txid,
        "previous_service_identity_version": state.get_version(SERVICE_INFO, SINGLETON_KEY),
        "recovery_count": int(previous.get("recovery_count") or 0) + 1,
        "status": "Recovering",
    }
    if previous.get("service_data") is not None:
        info["service_data"] = previous["service_data"]
    nodes: dict[bytes, bytes | None] = {}
    for key, raw in state.items(NODES_INFO):
        old = orjson.loads(raw)
        if old.get("status") != "Retired":
            nodes[key] = dump_json({**old, "status": "Retired"})
    node_id = node.identity.node_id.encode()
    nodes[node_id] = dump_json(node.info("Trusted"))
    writes: WriteSet = {
        SERVICE_INFO: {SINGLETON_KEY: dump_json(info)},
        PREVIOUS_SERVICE_IDENTITY: {SINGLETON_KEY: dump_json(str(previous["cert"]))},
        NODES_INFO: nodes,
        NODES_ENDORSED_CERTS: {node_id: cert_pem(node.identity.endorsed).encode()},
    }
    if state.get(VIRTUAL_MEASUREMENTS, node.quote.measurement) is None:
        writes[VIRTUAL_MEASUREMENTS] = {node.quote.measurement.encode(): dump_json("AllowedToJoin")}
    if state.get(VIRTUAL_HOST_DATA, node.quote.host_data) is None:
        writes[VIRTUAL_HOST_DATA] = {node.quote.host_data.encode(): dump_json("")}
    return writes


def _truncate_to(ledger: ServiceLedger, files: LedgerFiles, seqno: int) -> None:
    if ledger.last_seqno > seqno:
        ledger.rollback(seqno)
    if files.last_seqno > seqno:
        files.truncate(seqno)


def secret_records(ledger: ServiceLedger, files: LedgerFiles) -> list[tuple[int, dict[str, Any]]]:
    """Every record of `public:ccf.internal.historical_encrypted_ledger_secret` up to the ledger's state, as
    (seqno written, record), oldest first: the latest from the state, the earlier ones by following
    `previous_secret_stored_version` back through the files (public parts only)."""
    state = ledger.read_tx()
    record = state.get_json(HISTORICAL_SECRETS, SINGLETON_KEY)
    if not isinstance(record, dict):
        return []
    seqno = state.get_version(HISTORICAL_SECRETS, SINGLETON_KEY)
    records = [(seqno, record)]
    while True:
        previous = record.get("previous_ledger_secret", {}).get("previous_secret_stored_version")
        if not isinstance(previous, int):
            break
        if not files.first_seqno <= previous <= files.last_seqno:
            logger.warning(f"the ledger secret record at seqno {previous} is not in the ledger files; secrets "
                           "older than it cannot be recovered")
            break
        decoded = decode_entry(files.read(previous), None)
        raw = decoded.writes.get(HISTORICAL_SECRETS, {}).get(SINGLETON_KEY)
        if raw is None:
            raise RecoveryError(f"seqno {previous} holds no ledger secret record, yet a later record names it")
        seqno, record = previous, orjson.loads(raw)
        records.append((seqno, record))
    records.reverse()
    return records


class PrivateReplay:
    """Decrypt the private part of the previous service's ledger, `step` by `step`, once its secrets are back.

    Starts from the snapshot the public replay started from (its private domain), then every entry after it up
    to `end`. Each entry is checked to be the one the public replay verified (`verified_digests(first, last)`:
    its `ServiceLedger.write_set_digests`; the files are the host's and could have changed since), and its GCM
    tag and commit evidence against the recovered secrets; a failure is
    a `RecoveryError` (wrong secrets, or a damaged entry) and nothing is handed over. `state()` gives, per
    private map, each key's last value and the seqno that wrote it."""

    def __init__(self, files: LedgerFiles, secrets: LedgerSecrets, start: int, end: int,
                 snapshot: bytes | None = None, *,
                 verified_digests: Callable[[int, int], bytes] | None = None) -> None:
        self._files = files
        self._verified_digests = verified_digests
        self._secrets = secrets
        self._next = start
        self._end = end
        self._state = LastWrites()
        self._snapshot = snapshot  # read at the first steps, then dropped
        self._snapshot_batches: Iterator[int] | None = None

    @property
    def done(self) -> bool:
        return self._snapshot is None and self._next > self._end

    @property
    def progress(self) -> tuple[int, int]:
        """(last seqno decrypted, last seqno to decrypt)."""
        return self._next - 1, self._end

    def _snapshot_batches_of(self, data: bytes, batch: int) -> Iterator[int]:
        """The snapshot's private entries read into the state, `batch` at a time; its private part is decrypted
        (GCM tag checked) at the first step, not when the replay is set up (inside the request that brought the
        secrets)."""
        frame = frame_entry(data, 0)  # the snapshot's seqno is its IV's
        plain = decrypt_private(frame, self._secrets.for_seqno(frame.seqno))
        yield from read_snapshot_maps(plain, 0, len(plain), self._state, public=False, batch=batch)

    def step(self, budget: int = 2000) -> None:
        if self._snapshot is not None:
            if self._snapshot_batches is None:
                self._snapshot_batches = self._snapshot_batches_of(self._snapshot, max(budget, 1))
            try:
                read = next(self._snapshot_batches, None)
            except (SnapshotError, EntryFormatError, LedgerSecretError) as e:
                raise RecoveryError(f"the snapshot's private part cannot be read with the recovered secrets: {e}") \
                    from None
            if read is not None:
                return
            self._snapshot = self._snapshot_batches = None  # all read: the ledger's entries after it follow
        end = min(self._end, self._next + budget - 1)
        seqno = self._next
        while seqno <= end:  # chunk by chunk: the file name is looked up once per chunk
            file = os.path.basename(self._files.chunk_file_of(seqno))
            last = min(end, self._files.chunk_end_of(seqno))
            digests = self._verified_digests(seqno, last) if self._verified_digests else None
            for i, raw in enumerate(self._files.read_range(seqno, last)):
                if digests is not None and hashlib.sha256(raw).digest() != digests[32 * i: 32 * i + 32]:
                    raise RecoveryError(f"private replay failed at seqno {seqno} ({file}): entry is not the one "
                                        "the public replay verified")
                self._apply(seqno, raw, file)
                seqno += 1
        self._next = end + 1

    def _apply(self, seqno: int, raw: bytes, file: str) -> None:
        try:  # as the auditor checks a private domain: GCM tag (it covers the public part too), commit evidence
            frame = frame_entry(raw, 0, file=file)
            if frame.seqno != seqno:
                raise EntryFormatError(f"entry holds seqno {frame.seqno}", file=file, seqno=seqno)
            header = parse_public_header(frame, file=file)
            writes = check_private_entry(frame, header.entry_type, header.commit_evidence_digest or b"",
                                         self._secrets, file)
        except EntryFormatError as e:
            raise RecoveryError(f"private replay failed at seqno {seqno} ({file}): {e}") from None
        if writes:
            self._state.note(writes, seqno)

    def state(self) -> LastWrites:
        if not self.done:
            raise RecoveryError("the private replay is not finished")
        return self._state


def restore_secrets(ledger: ServiceLedger, files: LedgerFiles, latest_raw: bytes) -> list[LedgerSecret]:
    """The previous service's secrets, from its latest (unwrapped by the shares) and the chain of records."""
    return unwrap_secret_chain(secret_records(ledger, files), latest_raw)
