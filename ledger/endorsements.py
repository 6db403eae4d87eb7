"""COSE endorsements of service identities across disaster recoveries, in CCF's format.

Each time a service opens it writes `public:ccf.internal.previous_service_identity_endorsement` (CCF:
`InternalTablesAccess::endorse_previous_identity`): a tagged COSE_Sign1 signed by the service key whose payload
is the DER SubjectPublicKeyInfo of the key it endorses, with protected headers `alg`, CWT claims `{iat}` and
`"ccf.v1": {"epoch.start.txid", "epoch.end.txid"?}` (CCF's `cddl/ccf-cose-endorsement-service-identity.cddl`).
A new service endorses its own key (no end); a recovered service endorses its predecessor's key for the
predecessor's epoch, from the predecessor's first transaction to its last.

`endorsement_chain` gives, for a transaction, the endorsements leading from the current service key back to the
key in force when it was committed (newest first, empty in the current epoch); `verify_endorsement_chain` walks
it and returns the key a COSE receipt of that transaction verifies with. Guarantees: a chain is only accepted if
every endorsement verifies with the key before it and its epoch covers the transaction.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key

from ledger import cose
from ledger.errors import LedgerError
from ledger.identity import ServiceIdentity, spki_der
from ledger.kv import Tx
from ledger.tables import PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY

CCF_HEADER = "ccf.v1"
EPOCH_BEGIN = "epoch.start.txid"
EPOCH_END = "epoch.end.txid"
CWT_IAT = 6


class EndorsementError(LedgerError):
    """An endorsement chain does not lead from the trusted key to the transaction's epoch."""


def _txid(text: str) -> tuple[int, int]:
    view, _, seqno = text.partition(".")
    return int(view), int(seqno)


def endorsement_record(service: ServiceIdentity, endorsed_key_der: bytes, begin: str, end: str | None,
                       previous_version: int | None, iat: int) -> dict[str, Any]:
    epoch: dict[str, str] = {EPOCH_BEGIN: begin}
    if end is not None:
        epoch[EPOCH_END] = end
    signed = cose.sign1(service.key, {cose.HDR_CWT: {CWT_IAT: iat}, CCF_HEADER: epoch}, endorsed_key_der)
    record: dict[str, Any] = {
        "endorsement": base64.b64encode(signed).decode(),
        "endorsing_key": base64.b64encode(spki_der(service.key.public_key())).decode(),
        "endorsement_epoch_begin": begin,
    }
    if end is not None:
        record["endorsement_epoch_end"] = end
    if previous_version is not None:
        record["previous_version"] = previous_version
    return record


def write_opening_endorsement(tx: Tx, service: ServiceIdentity, create_txid: str, iat: int, *,
                              previous_key_der: bytes | None = None, previous_begin: str | None = None,
                              previous_end: str | None = None) -> None:
    """At an opening: a new service endorses itself; a recovered one (`previous_end` given) its predecessor's key
    for the predecessor's epoch (from the predecessor's own endorsement when there is one)."""
    previous = tx.get_json(PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY)
    version = tx.get_version(PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY) or None
    if previous_end is None:
        record = endorsement_record(service, spki_der(service.key.public_key()), create_txid, None, version, iat)
    else:
        if isinstance(previous, dict):
            previous_key_der = base64.b64decode(previous["endorsing_key"])
            if "endorsement_epoch_end" in previous:  # the predecessor was itself recovered: its epoch began after
                view, seqno = _txid(str(previous["endorsement_epoch_end"]))
                previous_begin = f"{view + 2}.{seqno + 1}"
            else:
                previous_begin = str(previous["endorsement_epoch_begin"])
        if previous_key_der is None or previous_begin is None:
            raise EndorsementError("the previous service identity's key and first transaction are needed")
        record = endorsement_record(service, previous_key_der, previous_begin, previous_end, version, iat)
    tx.put_json(PREVIOUS_IDENTITY_ENDORSEMENT, SINGLETON_KEY, record)


@dataclass(frozen=True)
class Endorsement:
    cose: bytes
    begin: tuple[int, int]
    end: tuple[int, int] | None

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> Endorsement:
        end = record.get("endorsement_epoch_end")
        return cls(base64.b64decode(record["endorsement"]), _txid(str(record["endorsement_epoch_begin"])),
                   _txid(str(end)) if end is not None else None)


def endorsement_chain(records: list[dict[str, Any]], seqno: int) -> list[bytes]:
    """The endorsements (newest first) from the current key back to the epoch of `seqno`, from every record of the
    endorsement table in ledger order. Empty if `seqno` is in the current service's epoch."""
    endorsements = [Endorsement.from_record(r) for r in records]
    recovered = [e for e in endorsements if e.end is not None]
    chain: list[bytes] = []
    for endorsement in reversed(recovered):
        assert endorsement.end is not None
        if seqno > endorsement.end[1]:
            break
        chain.append(endorsement.cose)
        if seqno >= endorsement.begin[1]:
            return chain
    return chain


def verify_endorsement_chain(trusted: ec.EllipticCurvePublicKey, chain: list[bytes],
                             seqno: int) -> ec.EllipticCurvePublicKey:
    """Walk `chain` from the trusted (current) service key; return the key in force at `seqno`."""
    key = trusted
    for i, raw in enumerate(chain):
        try:
            message = cose.decode(raw)
            message.verify(key)
        except cose.CoseError as e:
            raise EndorsementError(f"endorsement {i} does not verify with the key before it: {e}") from None
        epoch = message.protected.get(CCF_HEADER)
        if not isinstance(epoch, dict) or not isinstance(epoch.get(EPOCH_BEGIN), str):
            raise EndorsementError(f"endorsement {i} names no epoch")
        begin = _txid(epoch[EPOCH_BEGIN])[1]
        end = _txid(epoch[EPOCH_END])[1] if isinstance(epoch.get(EPOCH_END), str) else None
        if end is None:
            raise EndorsementError(f"endorsement {i} endorses a current key, not a previous one")
        endorsed = load_der_public_key(message.payload or b"")
        if not isinstance(endorsed, ec.EllipticCurvePublicKey):
            raise EndorsementError(f"endorsement {i} endorses a key that is not EC")
        key = endorsed
        if i == len(chain) - 1 and not begin <= seqno <= end:
            raise EndorsementError(f"seqno {seqno} is outside the endorsed epoch {begin}..{end}")
    return key
