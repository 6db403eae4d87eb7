"""Recovery shares (as CCF's src/node/share_manager.h): dealt while the service runs, taken back in during a
disaster recovery.

The latest ledger secret is wrapped (AES-256-GCM, zero IV, under a fresh wrapping key); the wrapping key is
Shamir-split with threshold `recovery_threshold` among the active recovery participants (members with an
encryption key and the `Participant` role, the default), and each active recovery owner (role `Owner`) gets the
whole wrapping key (the share at index zero); each share is encrypted to the member's RSA key (OAEP, SHA-256);
all of it goes to `public:ccf.internal.recovery_shares`. Any `threshold` participants, or one owner, can then
rebuild the wrapping key and unwrap the secret. As in CCF, shares are dealt only if there is at least one active
recovery member, the threshold is at most the number of participants, and at most 1 when there are only owners.

During a recovery each member submits its decrypted share (`submit_share`); at the threshold, or at an owner's
full key, the node calls `recover_latest_secret`. A combination that does not unwrap the secret (a wrong share that
passed the format checks) raises `RecoverySharesError`: the secret is authenticated (AES-GCM), so a wrong key is
never used.
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
from governance.shamir import SHARE_SIZE, SharingError, combine, full_share, full_share_secret, is_full_share, split
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


def active_recovery_members(tx: Tx, role: str = "Participant") -> dict[str, rsa.RSAPublicKey]:
    """The encryption keys of the Active members with an encryption key and recovery role `role` (`Participant`,
    the default role of a member with a key, or `Owner`)."""
    members: dict[str, rsa.RSAPublicKey] = {}
    for key, pem in tx.items(MEMBERS_ENCRYPTION_KEYS):
        member_id = key.decode()
        info = tx.get_json(MEMBERS_INFO, member_id)
        if not isinstance(info, dict) or info.get("status") != "Active":
            continue
        if info.get("recovery_role", "Participant") != role:
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
    participants = active_recovery_members(tx)
    owners = active_recovery_members(tx, "Owner")
    threshold = recovery_threshold(tx)
    if not participants and not owners:
        raise RecoverySharesError("There should be at least one active recovery member to issue recovery shares")
    if participants and len(participants) < threshold:
        raise RecoverySharesError(
            f"cannot deal shares: {len(participants)} active recovery member(s) for a threshold of {threshold}")
    if not participants and threshold > 1:
        raise RecoverySharesError(f"Recovery threshold {threshold} cannot be greater than 1 when the consortium "
                                  f"consists of only active recovery owner members ({len(owners)})")
    wrapping_key = os.urandom(32)
    sealed = AESGCM(wrapping_key).encrypt(_ZERO_IV, latest_ledger_secret, None)
    wrapped = sealed[-16:] + _ZERO_IV + sealed[:-16]
    ordered = sorted(participants)
    shares = dict(zip(ordered, split(wrapping_key, threshold, len(ordered)), strict=True)) if ordered else {}
    keys = {**participants, **owners}
    if owners:
        shares.update(dict.fromkeys(owners, full_share(wrapping_key)))
    record: dict[str, Any] = {
        "encrypted_shares": {mid: base64.b64encode(keys[mid].encrypt(shares[mid], _OAEP)).decode()
                             for mid in sorted(shares)},
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
    """Rebuild the wrapping key from decrypted shares (an owner's full key alone is enough, as in CCF) and unwrap
    the ledger secret."""
    full = next((share for share in shares if is_full_share(share)), None)
    key = full_share_secret(full, 32) if full is not None else combine(shares, 32)
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
    if len(share) != SHARE_SIZE:
        raise InvalidRequest(f"A recovery share is {SHARE_SIZE} bytes (an index, 0 for an owner's full key, then "
                             f"the value); got {len(share)} bytes", code="InvalidInput")
    return share


def submit_share(tx: Tx, member_id: str, share: bytes) -> tuple[int, int, bool]:
    """Record `member_id`'s decrypted share; returns (shares submitted, threshold, whether it is a full key). Only
    a member the current recovery shares were dealt to may submit, once."""
    record = tx.get_json(RECOVERY_SHARES, SINGLETON_KEY)
    dealt = record.get("encrypted_shares", {}) if isinstance(record, dict) else {}
    if member_id not in dealt:
        raise AuthorizationFailed(f"Member {member_id} holds no recovery share of this service")
    if tx.get(SUBMITTED_SHARES, member_id) is not None:
        raise InvalidRequest(f"Member {member_id} has already submitted its recovery share", code="InvalidInput")
    full_key = is_full_share(share)
    info = tx.get_json(MEMBERS_INFO, member_id)
    if full_key and (not isinstance(info, dict) or info.get("recovery_role") != "Owner"):
        # Only an owner was dealt the whole key: anyone else's index-zero share is malformed, refused before it
        # could make the combination fail and clear the shares the other members submitted. (A member whose role
        # changed since the shares were dealt is Accepted again, and may not submit, until it acks: then the
        # shares are dealt again, for its new role.)
        raise InvalidRequest(f"Member {member_id} is not a recovery owner: its share's index is from 1 to 255",
                             code="InvalidInput")
    tx.put(SUBMITTED_SHARES, member_id, share)
    return tx.size(SUBMITTED_SHARES), recovery_threshold(tx), full_key


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
