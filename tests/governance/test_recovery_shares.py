"""Dealing recovery shares to active recovery members, and unwrapping the secret with a threshold of them."""

from __future__ import annotations

import itertools
import os

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.errors import NotFound
from governance.recovery_shares import (
    RECOVERY_SHARES,
    RecoverySharesError,
    deal_shares,
    decrypt_share,
    encrypted_share,
    unwrap_ledger_secret,
)
from governance.shamir import SharingError
from ledger.kv import Store
from ledger.tables import MEMBERS_ENCRYPTION_KEYS, MEMBERS_INFO, SERVICE_CONFIG, SINGLETON_KEY

pytestmark = pytest.mark.unit

_KEYS = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(4)]


def service(threshold: int, statuses: list[str]) -> Store:
    store = Store()
    tx = store.begin()
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {"recovery_threshold": threshold})
    for i, status in enumerate(statuses):
        pem = _KEYS[i].public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        tx.put(MEMBERS_ENCRYPTION_KEYS, f"m{i}", pem)
        tx.put_json(MEMBERS_INFO, f"m{i}", {"status": status})
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
