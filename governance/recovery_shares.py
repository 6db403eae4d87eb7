"""Dealing recovery shares (as CCF's src/node/share_manager.h); recovering with them is later work.

The latest ledger secret is wrapped (AES-256-GCM, zero IV, under a fresh wrapping key); the wrapping key is
Shamir-split with threshold `recovery_threshold` among the active recovery members (those with an
encryption key and a `Participant` role, the default); each share is encrypted to the member's RSA key
(OAEP, SHA-256); all of it goes to `public:ccf.internal.recovery_shares`. Any `threshold` members can then
rebuild the wrapping key and unwrap the secret.
"""

from __future__ import annotations

import base64
import os
from typing import Any

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from governance.errors import GovernanceError, NotFound
from governance.shamir import combine, split
from ledger.kv import Tx
from ledger.tables import MEMBERS_ENCRYPTION_KEYS, MEMBERS_INFO, SERVICE_CONFIG, SINGLETON_KEY

RECOVERY_SHARES = "public:ccf.internal.recovery_shares"
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
