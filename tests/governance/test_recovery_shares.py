"""Dealing recovery shares to active recovery members, and unwrapping the secret with a threshold of them (or with
one recovery owner's full key)."""

from __future__ import annotations

import base64
import itertools
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.errors import InvalidRequest, NotFound
from governance.recovery_shares import (
    RECOVERY_SHARES,
    SUBMITTED_SHARES,
    RecoverySharesError,
    deal_shares,
    decrypt_share,
    encrypted_share,
    parse_share,
    recover_latest_secret,
    submit_share,
    unwrap_ledger_secret,
)
from governance.shamir import SHARE_SIZE, SharingError, is_full_share
from ledger.kv import Store
from ledger.tables import MEMBERS_ENCRYPTION_KEYS, MEMBERS_INFO, SERVICE_CONFIG, SINGLETON_KEY

pytestmark = pytest.mark.unit

_KEYS = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]


def service(threshold: int, statuses: list[str], roles: list[str] | None = None) -> Store:
    """Members m0.. with encryption keys, the statuses given and the recovery roles given (default Participant)."""
    store = Store()
    tx = store.begin()
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {"recovery_threshold": threshold})
    for i, status in enumerate(statuses):
        pem = _KEYS[i].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        tx.put(MEMBERS_ENCRYPTION_KEYS, f"m{i}", pem)
        info = {"status": status} if roles is None else {"status": status, "recovery_role": roles[i]}
        tx.put_json(MEMBERS_INFO, f"m{i}", info)
    store.commit(tx)
    return store


def test_any_threshold_of_active_recovery_members_unwraps_the_secret() -> None:
    store = service(2, ["Active", "Active", "Active", "Accepted"])
    secret = os.urandom(32)
    tx = store.begin()
    record = deal_shares(tx, secret)
    store.commit(tx)
    assert sorted(record["encrypted_shares"]) == ["m0", "m1", "m2"]  # m3 is not active
    assert store.read_tx().get_json(RECOVERY_SHARES, SINGLETON_KEY) == record
    shares = {m: decrypt_share(encrypted_share(store.read_tx(), m)["encryptedShare"], _KEYS[int(m[1])])
              for m in record["encrypted_shares"]}
    for pair in itertools.combinations(shares.values(), 2):
        assert unwrap_ledger_secret(record, list(pair)) == secret
    with pytest.raises((RecoverySharesError, SharingError)):
        unwrap_ledger_secret(record, [shares["m0"]])
    with pytest.raises(NotFound):
        encrypted_share(store.read_tx(), "m3")


def test_shares_cannot_be_dealt_to_fewer_members_than_the_threshold() -> None:
    store = service(3, ["Active", "Active", "Accepted"])
    with pytest.raises(RecoverySharesError, match="2 active recovery member"):
        deal_shares(store.begin(), os.urandom(32))


def _decrypted(record: dict[str, object], member_id: str) -> bytes:
    shares = record["encrypted_shares"]
    assert isinstance(shares, dict)
    return decrypt_share(shares[member_id], _KEYS[int(member_id[1])])


def test_a_recovery_owner_holds_the_whole_wrapping_key_and_recovers_alone() -> None:
    store = service(2, ["Active"] * 4, ["Participant", "Participant", "Participant", "Owner"])
    secret = os.urandom(32)
    tx = store.begin()
    record = deal_shares(tx, secret)
    store.commit(tx)
    assert sorted(record["encrypted_shares"]) == ["m0", "m1", "m2", "m3"]
    owner = _decrypted(record, "m3")
    assert is_full_share(owner) and not any(is_full_share(_decrypted(record, m)) for m in ("m0", "m1", "m2"))
    assert unwrap_ledger_secret(record, [owner]) == secret
    assert unwrap_ledger_secret(record, [_decrypted(record, "m0"), owner]) == secret
    assert unwrap_ledger_secret(record, [_decrypted(record, "m0"), _decrypted(record, "m2")]) == secret
    # submitted as a member's request would: the owner's key is reported as such and is enough
    tx = store.begin()
    assert submit_share(tx, "m3", parse_share({"share": base64.b64encode(owner).decode()})) == (1, 2, True)
    assert recover_latest_secret(tx) == secret


def test_a_forged_full_key_never_unwraps_the_secret_and_only_an_owner_may_submit_one() -> None:
    store = service(1, ["Active", "Active"], ["Participant", "Owner"])
    tx = store.begin()
    record = deal_shares(tx, os.urandom(32))
    store.commit(tx)
    forged = parse_share({"share": base64.b64encode(bytes([0]) + os.urandom(32).rjust(SHARE_SIZE - 1, b"\0")).decode()})
    tx = store.begin()
    # a participant was dealt a part of the key: an index-zero share from it is malformed, and nothing is recorded
    with pytest.raises(InvalidRequest, match="not a recovery owner"):
        submit_share(tx, "m0", forged)
    assert tx.size(SUBMITTED_SHARES) == 0
    # the owner's, forged: it passes the format checks, and the authenticated unwrap refuses it
    assert submit_share(tx, "m1", forged) == (1, 1, True)
    with pytest.raises(RecoverySharesError, match="do not unwrap"):
        recover_latest_secret(tx)
    assert unwrap_ledger_secret(record, [_decrypted(record, "m1")])  # the real one does


def test_owners_alone_take_a_threshold_of_one_only() -> None:
    store = service(1, ["Active", "Active"], ["Owner", "Owner"])
    secret = os.urandom(32)
    record = deal_shares(store.begin(), secret)
    assert all(unwrap_ledger_secret(record, [_decrypted(record, m)]) == secret for m in ("m0", "m1"))
    with pytest.raises(RecoverySharesError, match="cannot be greater than 1 when the consortium consists of only"):
        deal_shares(service(2, ["Active", "Active"], ["Owner", "Owner"]).begin(), secret)


def test_no_share_is_dealt_without_an_active_recovery_member() -> None:
    with pytest.raises(RecoverySharesError, match="at least one active recovery member"):
        deal_shares(service(1, ["Accepted"], ["Owner"]).begin(), os.urandom(32))
    with pytest.raises(RecoverySharesError, match="at least one active recovery member"):
        deal_shares(service(1, ["Active"], ["NonParticipant"]).begin(), os.urandom(32))
