"""Recovery shares (as CCF's src/node/share_manager.h): dealt while the service runs, taken back in during a
disaster recovery.

The latest ledger secret is wrapped (AES-256-GCM, zero IV, under a fresh wrapping key); the wrapping key is
Shamir-split with threshold `recovery_threshold` among the active recovery members (those with an
encryption key and a `Participant` role, the default); each share is encrypted to the member's RSA key
(OAEP, SHA-256); all of it goes to `public:ccf.internal.recovery_shares`. Any `threshold` members can then
rebuild the wrapping key and unwrap the secret.

During a recovery each member submits its decrypted share (`submit_share`); at the threshold the node calls
`recover_latest_secret`. A combination that does not unwrap the secret (a wrong share that passed the format
checks) raises `RecoverySharesError`: the secret is authenticated (AES-GCM), so a wrong key is never used.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from governance.errors import AuthorizationFailed, GovernanceError, InvalidRequest, NotFound
from governance.shamir import MAX_SHARES, SHARE_SIZE, SharingError, combine, split
from ledger.kv import Tx
from ledger.tables import MEMBERS_ENCRYPTION_KEYS, MEMBERS_INFO, SERVICE_CONFIG, SINGLETON_KEY

RECOVERY_SHARES = "public:ccf.internal.recovery_shares"
# Shares submitted during a recovery, until the threshold is reached. A private map: encrypted in the ledger
# under the recovering service's own ledger secret (CCF encrypts them with it too), never readable from files.
SUBMITTED_SHARES = "ccf.internal.submitted_shares"
_ZERO_IV = bytes(12)
_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


class RecoverySharesError(GovernanceError):
    """Shares cannot be dealt (too few recovery members) or a share/secret cannot be used."""


def active_recovery_members(tx: Tx) -> dict[str, rsa.RSAPublicKey]:
    members: dict[str, rsa.RSAPublicKey] = {}
    for key, pem in tx.items(MEMBERS_ENCRYPTION_KEYS):
        member_id = key.decode()
        info = tx.get_json(MEMBERS_INFO, member_id)
        if not isinstance(info, dict) or info.get("status") != "Active":
            continue
        if info.get("recovery_role", "Participant") != "Participant":
            continue
        try:
            public_key = serialization.load_pem_public_key(pem)
        except (ValueError, UnsupportedAlgorithm):
            raise RecoverySharesError(f"member {member_id}'s encryption key is not a PEM public key") from None
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise RecoverySharesError(f"member {member_id}'s encryption key is not RSA")
        members[member_id] = public_key
    return members


def recovery_threshold(tx: Tx) -> int:
    config = tx.get_json(SERVICE_CONFIG, SINGLETON_KEY)
    threshold = config.get("recovery_threshold") if isinstance(config, dict) else None
    return int(threshold) if isinstance(threshold, int) else 1


def deal_shares(tx: Tx, latest_ledger_secret: bytes, previous_record_seqno: int | None = None) -> dict[str, Any]:
    """Write fresh recovery shares for `latest_ledger_secret`; returns the record written."""
    members = active_recovery_members(tx)
    threshold = recovery_threshold(tx)
    if len(members) < threshold:
        raise RecoverySharesError(
            f"cannot deal shares: {len(members)} active recovery member(s) for a threshold of {threshold}")
    wrapping_key = os.urandom(32)
    sealed = AESGCM(wrapping_key).encrypt(_ZERO_IV, latest_ledger_secret, None)
    wrapped = sealed[-16:] + _ZERO_IV + sealed[:-16]
    ordered = sorted(members)
    shares = split(wrapping_key, threshold, len(ordered))
    record: dict[str, Any] = {
        "encrypted_shares": {mid: base64.b64encode(members[mid].encrypt(share, _OAEP)).decode()
                             for mid, share in zip(ordered, shares, strict=True)},
        "wrapped_latest_ledger_secret": base64.b64encode(wrapped).decode(),
    }
    if previous_record_seqno is not None:
        record["previous_secret_stored_version"] = previous_record_seqno
    tx.put_json(RECOVERY_SHARES, SINGLETON_KEY, record)
    return record


def encrypted_share(tx: Tx, member_id: str) -> dict[str, str]:
    """What `GET /gov/recovery/encrypted-shares/{memberId}` serves."""
    record = tx.get_json(RECOVERY_SHARES, SINGLETON_KEY)
    share = record.get("encrypted_shares", {}).get(member_id) if isinstance(record, dict) else None
    if share is None:
        raise NotFound(f"Recovery share not found for member {member_id}.")
    return {"encryptedShare": share, "memberId": member_id}


def decrypt_share(encrypted_b64: str, member_key: rsa.RSAPrivateKey) -> bytes:
    """What a member does with its share before submitting it."""
    return member_key.decrypt(base64.b64decode(encrypted_b64), _OAEP)


def unwrap_ledger_secret(record: dict[str, Any], shares: list[bytes]) -> bytes:
    """Rebuild the wrapping key from decrypted shares and unwrap the ledger secret."""
    key = combine(shares, 32)
    wrapped = base64.b64decode(record["wrapped_latest_ledger_secret"])
    tag, ct = wrapped[:16], wrapped[28:]
    try:
        return AESGCM(key).decrypt(_ZERO_IV, ct + tag, None)
    except InvalidTag:
        raise RecoverySharesError("the shares do not unwrap the ledger secret") from None


def parse_share(body: Any) -> bytes:
    """The share of a `recovery_share` request's payload `{"share": base64}`; `InvalidRequest` otherwise."""
    share_b64 = body.get("share") if isinstance(body, dict) else None
    if not isinstance(share_b64, str):
        raise InvalidRequest('A recovery share is submitted as {"share": "<base64>"}', code="InvalidInput")
    try:
        share = base64.b64decode(share_b64, validate=True)
    except ValueError:
        raise InvalidRequest("The recovery share is not valid base64", code="InvalidInput") from None
    if len(share) != SHARE_SIZE or not 1 <= share[0] <= MAX_SHARES:
        raise InvalidRequest(f"A recovery share is {SHARE_SIZE} bytes with an index from 1 to {MAX_SHARES}; "
                             f"got {len(share)} bytes", code="InvalidInput")
    return share


def submit_share(tx: Tx, member_id: str, share: bytes) -> tuple[int, int]:
    """Record `member_id`'s decrypted share; returns (shares submitted, threshold). Only a member the current
    recovery shares were dealt to may submit, once."""
    record = tx.get_json(RECOVERY_SHARES, SINGLETON_KEY)
    dealt = record.get("encrypted_shares", {}) if isinstance(record, dict) else {}
    if member_id not in dealt:
        raise AuthorizationFailed(f"Member {member_id} holds no recovery share of this service")
    if tx.get(SUBMITTED_SHARES, member_id) is not None:
        raise InvalidRequest(f"Member {member_id} has already submitted its recovery share", code="InvalidInput")
    tx.put(SUBMITTED_SHARES, member_id, share)
    return tx.size(SUBMITTED_SHARES), recovery_threshold(tx)


def submitted_shares(tx: Tx) -> list[bytes]:
    return [share for _, share in tx.items(SUBMITTED_SHARES)]


def clear_submitted_shares(tx: Tx) -> None:
    for key in tx.keys(SUBMITTED_SHARES):
        tx.remove(SUBMITTED_SHARES, key)


def recover_latest_secret(tx: Tx) -> bytes:
    """Combine the submitted shares and unwrap the previous service's latest ledger secret with them.
    Raises `RecoverySharesError` if they do not (wrong shares that passed the format checks)."""
    record = tx.get_json(RECOVERY_SHARES, SINGLETON_KEY)
    if not isinstance(record, dict) or "wrapped_latest_ledger_secret" not in record:
        raise RecoverySharesError("the ledger holds no wrapped ledger secret to recover")
    try:
        return unwrap_ledger_secret(record, submitted_shares(tx))
    except SharingError as e:
        raise RecoverySharesError(f"the submitted shares cannot be combined: {e.message}") from None
