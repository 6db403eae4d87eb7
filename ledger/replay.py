"""Rebuilding a node's ledger state from its own ledger files, verifying everything it reads.

`recover` replays every entry of a `LedgerFiles` through a fresh `ServiceLedger`: each entry's GCM tag
(which authenticates the public domain too), its commit evidence, and at every signature transaction
the signed root against the rebuilt Merkle tree, the signer's trust and endorsed certificate, and the
service's COSE signature. Damage inside the committed part raises `CorruptedCommittedChunk` naming the
file and seqno; damage after it cuts the ledger there with a warning (that suffix was never agreed).
Commit is taken from the file names only up to the last verified signature they cover.

Not here: fetching the ledger secrets (a restarting node has them sealed; a recovering service gets them
from recovery shares, which is governance's business).
"""

from __future__ import annotations

import binascii
import dataclasses
import enum
import os
from collections.abc import Callable
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from loguru import logger

from ledger import cose
from ledger.entry import DecodedEntry, decode_entry
from ledger.errors import CorruptedCommittedChunk, EntryFormatError, LedgerSecretError, VerificationError
from ledger.files import LedgerFiles
from ledger.framing import MAX_VIEW
from ledger.identity import NodeIdentity, ServiceIdentity, cert_key
from ledger.kv import WriteSet
from ledger.secrets import LedgerSecrets, secrets_for_node
from ledger.service_ledger import ServiceLedger, SignatureRecord
from ledger.signatures import parse_primary_signature, verify_signature_transaction
from ledger.tables import (
    COSE_SIGNATURES,
    NODE_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
    TREE,
)

_BATCH = 1000
_PARSE_ERRORS = (KeyError, ValueError, TypeError, AttributeError, binascii.Error, orjson.JSONDecodeError,
                 x509.InvalidVersion, UnsupportedAlgorithm, cose.CoseError)


def recover(
    files: LedgerFiles, *, secrets: LedgerSecrets, node: NodeIdentity, service: ServiceIdentity,
    base: ServiceLedger | None = None, **kwargs: Any
) -> ServiceLedger:
    """A `ServiceLedger` holding everything in `files` that verifies, writing to `files` from then on. With
    `base` (a ledger loaded from the snapshot the files continue), replay starts after it."""
    ledger = base or ServiceLedger(node=node, service=service, secrets=secrets, files=None, **kwargs)
    last = files.last_seqno
    seqno = ledger.last_seqno + 1
    while seqno <= last:
        batch_end = min(last, seqno + _BATCH - 1, files.chunk_end_of(seqno))  # one chunk, one file name
        file = os.path.basename(files.chunk_file_of(seqno))
        for raw in files.read_range(seqno, batch_end):
            try:
                _replay_entry(ledger, raw, seqno, file)
            except (EntryFormatError, VerificationError) as e:
                if seqno <= files.committed_seqno:
                    raise CorruptedCommittedChunk(f"cannot replay committed entry: {e.reason}", file=file,
                                                  seqno=seqno) from e
                logger.warning(f"{file}: dropping uncommitted suffix from seqno {seqno}: {e}")
                files.truncate(seqno - 1)
                last = seqno - 1
                break
            seqno += 1
    finish_replay(ledger, files)
    return ledger


def finish_replay(ledger: ServiceLedger, files: LedgerFiles) -> None:
    """The ledger writes to `files` from now on; commit is what the file names say, up to the last verified
    signature they cover."""
    ledger.files = files
    verified = [s for s in ledger.signature_seqnos() if s <= files.committed_seqno]
    ledger.commit_to(verified[-1] if verified else 0)


def _replay_entry(ledger: ServiceLedger, raw: bytes, seqno: int, file: str) -> None:
    """Verify one stored entry against the ledger rebuilt so far, then apply it.

    Raises `EntryFormatError` or `VerificationError` (never a parsing exception) if it does not hold.
    """
    decoded, signature = _verify_entry(ledger, raw, seqno, file)
    ledger.append_replayed(raw, decoded, signature)


class SecretsTaken(enum.Flag):
    """What the secrets record of a replicated entry gave this node."""

    NONE = 0
    LATER = enum.auto()  # the next ledger secret (a rekey, or a recovered service's own)
    EARLIER = enum.auto()  # a predecessor's secrets, handed to the nodes of the service that recovered it


def receive_entry(ledger: ServiceLedger, raw: bytes, seqno: int, *, node_id: str,
                  encryption_key: rsa.RSAPrivateKey) -> SecretsTaken:
    """Hold an entry the primary replicated: verified as a stored entry is at replay (GCM tag, commit
    evidence, signatures against the tree rebuilt so far), then appended to the files and applied. A rekey
    that encrypts the next ledger secret to this node switches to it. Returns what the entry gave this node
    (NONE if its secrets did not change; otherwise the node must re-seal them). Raises `EntryFormatError` /
    `VerificationError` and holds nothing if the entry does not verify."""
    decoded, signature = _verify_entry(ledger, raw, seqno, "<replicated>")
    if ledger.files is not None:
        ledger.files.append(raw)
    ledger.append_replayed(raw, decoded, signature)
    record = decoded.writes.get(NODE_SECRETS, {}).get(SINGLETON_KEY)
    if record is None:
        return SecretsTaken.NONE
    try:
        given = secrets_for_node(orjson.loads(record), node_id, encryption_key)
    except (orjson.JSONDecodeError, LedgerSecretError, AttributeError) as e:
        raise VerificationError(f"rekey record cannot be used: {e}", seqno=seqno) from None
    held = ledger.secrets.all()
    first = held[0].start if held else None
    # earlier secrets: a recovered service handing its predecessor's secrets to its nodes
    earlier = [s for s in given if first is not None and s.start < first]
    later = [s for s in given if s.start > ledger.secrets.latest.start]
    if earlier:
        ledger.secrets.restore_earlier(earlier)
    for secret in later:
        ledger.secrets.add(secret)
    return (SecretsTaken.EARLIER if earlier else SecretsTaken.NONE) | (SecretsTaken.LATER if later else
                                                                        SecretsTaken.NONE)


def _verify_entry(ledger: ServiceLedger, raw: bytes, seqno: int,
                  file: str) -> tuple[DecodedEntry, SignatureRecord | None]:
    # A recovering service holds no secret for its predecessor's ledger until the members' shares are in: that
    # part is read public-only. Its private domain stays encrypted, unchecked here; the Merkle tree covers
    # the whole entry, so the next signature still vouches for every byte of it.
    private = ledger.secrets.covers(seqno)
    decoded = decode_entry(raw, ledger.secrets if private else None, file=file)
    if decoded.seqno != seqno:
        raise EntryFormatError(f"entry holds seqno {decoded.seqno}", file=file, seqno=seqno)
    if decoded.view < ledger.view or decoded.view > MAX_VIEW:
        raise VerificationError(f"view {decoded.view} goes back from {ledger.view}", file=file, seqno=seqno)
    ce = decoded.commit_evidence_digest or b""
    if private and ce != ledger.secrets.for_seqno(seqno).commit_evidence_digest(decoded.view, seqno):
        raise VerificationError("commit evidence digest does not match the ledger secret", file=file, seqno=seqno)
    signature = None
    if SIGNATURES in decoded.writes:
        state = ledger.read_tx()
        signature = verify_signature_writes(state.get, ledger.merkle.root(), seqno, decoded.writes, file=file)
    return decoded, signature


StateLookup = Callable[[str, bytes], bytes | None]  # (map, key) -> the value in the state rebuilt so far


def verify_signature_writes(lookup: StateLookup, root: bytes, seqno: int, writes: WriteSet, *,
                            file: str | None = None) -> SignatureRecord:
    """As the auditor checks a signature transaction, with the signer's trust and certificate and the service
    certificate taken from the state rebuilt so far (`lookup`), against the root of the entries before it.
    Raises `VerificationError` (never a parsing exception) if it does not hold."""
    try:
        return _verify_signature_writes(lookup, root, seqno, writes)
    except _PARSE_ERRORS as e:
        raise VerificationError(f"malformed signature transaction: {e!r}", file=file, seqno=seqno) from None


# What a signature transaction may write (CCF's deserialisation refuses any other content, src/kv/deserialise.h)
SIGNATURE_MAPS = frozenset({SIGNATURES, COSE_SIGNATURES, TREE})


def _verify_signature_writes(lookup: StateLookup, root: bytes, seqno: int, writes: WriteSet) -> SignatureRecord:
    if not SIGNATURE_MAPS.issuperset(writes):
        raise VerificationError(f"signature transaction also writes {', '.join(sorted(set(writes) - SIGNATURE_MAPS))}",
                                seqno=seqno)
    raw_sig = writes[SIGNATURES].get(SINGLETON_KEY)
    if raw_sig is None or len(writes[SIGNATURES]) != 1:  # the map holds one value, never removed
        raise VerificationError("signature transaction writes no signature, or writes the map otherwise", seqno=seqno)
    primary = parse_primary_signature(raw_sig, seqno)
    raw_info = lookup(NODES_INFO, primary.node.encode())
    info = orjson.loads(raw_info) if raw_info is not None else None
    if not isinstance(info, dict) or info.get("status") not in ("Trusted", "Retired"):
        raise VerificationError(f"signing node {primary.node} is not trusted", seqno=seqno)
    cert_pem = lookup(NODES_ENDORSED_CERTS, primary.node.encode())
    if cert_pem is None:
        raise VerificationError(f"signing node {primary.node} has no endorsed certificate", seqno=seqno)
    node_cert, node_spki = cert_key(cert_pem)
    node_key = node_cert.public_key()
    raw_service = lookup(SERVICE_INFO, SINGLETON_KEY)
    service_info = orjson.loads(raw_service) if raw_service is not None else None
    service_key = cert_key(str(service_info["cert"]).encode())[0].public_key() if service_info else None
    if not isinstance(node_key, ec.EllipticCurvePublicKey) or not isinstance(
            service_key, ec.EllipticCurvePublicKey | None):
        raise VerificationError("node and service keys must be EC", seqno=seqno)
    cose_bytes = verify_signature_transaction(
        primary, writes.get(COSE_SIGNATURES, {}).get(SINGLETON_KEY), seqno=seqno,
        expected_root=root, node_key=node_key, service_key=service_key, node_spki=node_spki)
    return SignatureRecord(dataclasses.replace(primary, cert=cert_pem.decode()), cose_bytes)
