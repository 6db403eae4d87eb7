"""Ledger secrets (`ledger.secrets`): commit evidence derivation, secret selection, rekey records."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import LedgerSecretError
from ledger.secrets import (
    SECRET_SIZE,
    LedgerSecret,
    LedgerSecrets,
    commit_evidence_digest,
    decrypt_previous_secret,
    opening_secret_record,
    rekey_secret_record,
)

pytestmark = pytest.mark.unit

RAW = bytes(range(32))
RAW2 = bytes(range(100, 132))
RAW3 = bytes(range(200, 232))


def reference_nonce(raw: bytes, view: int, seqno: int) -> bytes:
    commit_secret = hmac.digest(raw, b"Commit S", "sha256")
    return hmac.digest(commit_secret, f"{view}.{seqno}".encode(), "sha256")


def reference_evidence(raw: bytes, view: int, seqno: int) -> str:
    return f"ce:{view}.{seqno}:{reference_nonce(raw, view, seqno).hex()}"


# --- one secret --------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_create_rejects_raw_secret_that_is_not_32_bytes(size: int) -> None:
    with pytest.raises(LedgerSecretError):
        LedgerSecret.create(1, bytes(size))


def test_create_keeps_start_and_raw_and_random_secrets_differ() -> None:
    secret = LedgerSecret.create(7, RAW)
    assert secret.start == 7
    assert secret.raw == RAW
    a, b = LedgerSecret.create(1), LedgerSecret.create(1)
    assert len(a.raw) == len(b.raw) == SECRET_SIZE
    assert a.raw != b.raw


def test_commit_secret_is_hmac_of_commit_s_label() -> None:
    assert LedgerSecret.create(1, RAW).commit_secret == hmac.digest(RAW, b"Commit S", "sha256")


@pytest.mark.parametrize(("view", "seqno"), [(1, 1), (2, 10), (0, 0), (17, 123456789), (3, 2**40)])
def test_commit_nonce_evidence_and_digest_match_reference_derivation(view: int, seqno: int) -> None:
    secret = LedgerSecret.create(1, RAW)
    evidence = reference_evidence(RAW, view, seqno)
    assert secret.commit_nonce(view, seqno) == reference_nonce(RAW, view, seqno)
    assert secret.commit_evidence(view, seqno) == evidence
    assert secret.commit_evidence_digest(view, seqno) == hashlib.sha256(evidence.encode()).digest()
    assert commit_evidence_digest(evidence) == hashlib.sha256(evidence.encode()).digest()


def test_commit_nonce_is_stable_across_repeated_calls_and_differs_per_txid() -> None:
    secret = LedgerSecret.create(1, RAW)
    first = secret.commit_nonce(2, 5)
    for _ in range(3):
        assert secret.commit_nonce(2, 5) == first
    assert secret.commit_nonce(2, 6) != first
    assert secret.commit_nonce(3, 5) != first
    assert LedgerSecret.create(1, RAW2).commit_nonce(2, 5) != first


@pytest.mark.property
@given(raw=st.binary(min_size=32, max_size=32), view=st.integers(0, 2**63), seqno=st.integers(0, 2**63))
def test_commit_evidence_matches_reference_for_any_secret_and_txid(raw: bytes, view: int, seqno: int) -> None:
    secret = LedgerSecret.create(1, raw)
    evidence = reference_evidence(raw, view, seqno)
    assert secret.commit_evidence(view, seqno) == evidence
    assert secret.commit_evidence_digest(view, seqno) == hashlib.sha256(evidence.encode()).digest()


# --- the ordered set of secrets ----------------------------------------------------------------------------


def test_for_seqno_picks_secret_with_largest_start_at_or_below_seqno() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(10, RAW2), LedgerSecret.create(1, RAW)])  # unsorted input
    secrets.add(LedgerSecret.create(25, RAW3))
    assert [s.start for s in secrets.all()] == [1, 10, 25]
    assert secrets.for_seqno(1).raw == RAW
    assert secrets.for_seqno(9).raw == RAW
    assert secrets.for_seqno(10).raw == RAW2
    assert secrets.for_seqno(24).raw == RAW2
    assert secrets.for_seqno(25).raw == RAW3
    assert secrets.for_seqno(10**9).raw == RAW3
    assert secrets.latest.raw == RAW3
    assert len(secrets) == 3


def test_for_seqno_before_first_secret_raises() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(5, RAW)])
    with pytest.raises(LedgerSecretError):
        secrets.for_seqno(4)
    with pytest.raises(LedgerSecretError):
        LedgerSecrets().for_seqno(1)
    with pytest.raises(LedgerSecretError):
        _ = LedgerSecrets().latest


def test_rekey_at_r_keeps_old_secret_for_r_and_new_from_r_plus_one() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1, RAW)])
    new = secrets.rekey(8, RAW2)
    assert new.start == 9
    assert new.raw == RAW2
    assert secrets.for_seqno(8).raw == RAW
    assert secrets.for_seqno(9).raw == RAW2
    assert secrets.latest is new
    random_new = secrets.rekey(20)
    assert random_new.start == 21
    assert secrets.for_seqno(21) is random_new
    assert secrets.for_seqno(20).raw == RAW2


@pytest.mark.parametrize("start", [5, 4, 1])
def test_add_with_non_increasing_start_raises_and_leaves_set_unchanged(start: int) -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1, RAW), LedgerSecret.create(5, RAW2)])
    with pytest.raises(LedgerSecretError):
        secrets.add(LedgerSecret.create(start, RAW3))
    assert [s.start for s in secrets.all()] == [1, 5]
    assert secrets.for_seqno(100).raw == RAW2


def test_rekey_at_same_seqno_twice_raises() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1, RAW)])
    secrets.rekey(4, RAW2)
    with pytest.raises(LedgerSecretError):
        secrets.rekey(4, RAW3)
    assert len(secrets) == 2


def test_rollback_drops_secrets_from_rolled_back_rekeys_only() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1, RAW)])
    secrets.rekey(5, RAW2)  # start 6
    secrets.rekey(9, RAW3)  # start 10
    secrets.rollback(9)  # the rekey tx at 9 survives: its secret stays
    assert [s.start for s in secrets.all()] == [1, 6, 10]
    secrets.rollback(8)  # rekey at 9 rolled back
    assert [s.start for s in secrets.all()] == [1, 6]
    assert secrets.for_seqno(10).raw == RAW2
    secrets.rekey(12, RAW3)  # a later rekey can add again
    assert [s.start for s in secrets.all()] == [1, 6, 13]


def test_rollback_never_drops_the_first_secret() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(10, RAW)])
    secrets.rekey(12, RAW2)
    secrets.rollback(0)
    assert [s.start for s in secrets.all()] == [10]
    assert secrets.latest.raw == RAW


def test_fresh_has_one_random_secret_at_start() -> None:
    secrets = LedgerSecrets.fresh(3)
    assert len(secrets) == 1
    assert secrets.latest.start == 3
    assert len(secrets.latest.raw) == SECRET_SIZE


# --- the historical secret records -------------------------------------------------------------------------------


def test_opening_secret_record_names_current_start_as_next_version() -> None:
    assert opening_secret_record(LedgerSecret.create(1, RAW)) == {"next_version": 1}
    assert opening_secret_record(LedgerSecret.create(42, RAW)) == {"next_version": 42}


def test_rekey_record_round_trips_previous_secret_under_new_secret() -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, 3)
    entry = record["previous_ledger_secret"]
    assert entry["version"] == 1
    assert entry["previous_secret_stored_version"] == 3
    assert RAW not in base64.b64decode(entry["encrypted_data"])  # encrypted, not in clear
    recovered = decrypt_previous_secret(record, new)
    assert recovered.start == 1
    assert recovered.raw == RAW
    assert recovered == previous
    assert recovered.commit_evidence(2, 5) == previous.commit_evidence(2, 5)


def test_rekey_record_without_previous_record_seqno_omits_it_and_still_decrypts() -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, None)
    assert "previous_secret_stored_version" not in record["previous_ledger_secret"]
    assert decrypt_previous_secret(record, new).raw == RAW


def test_rekey_record_layout_is_tag_then_iv_then_ciphertext() -> None:
    # CCF's layout, which verify_ledger_secrets_chain.py and our own reader both assume.
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    data = base64.b64decode(rekey_secret_record(previous, new, 1)["previous_ledger_secret"]["encrypted_data"])
    assert len(data) == 16 + 12 + SECRET_SIZE
    tag, iv, ct = data[:16], data[16:28], data[28:]
    assert AESGCM(RAW2).decrypt(iv, ct + tag, None) == RAW


def test_rekey_records_use_fresh_ivs() -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    a = rekey_secret_record(previous, new, 1)["previous_ledger_secret"]["encrypted_data"]
    b = rekey_secret_record(previous, new, 1)["previous_ledger_secret"]["encrypted_data"]
    assert a != b


def test_decrypt_with_wrong_new_secret_raises() -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, 3)
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(record, LedgerSecret.create(9, RAW3))
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(record, previous)


def _with_data(record: dict[str, Any], data: bytes) -> dict[str, Any]:
    out = copy.deepcopy(record)
    out["previous_ledger_secret"]["encrypted_data"] = base64.b64encode(data).decode()
    return out


@pytest.mark.parametrize("position", [0, 15, 16, 27, 28, 59])
def test_decrypt_of_record_with_a_flipped_byte_raises(position: int) -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, 3)
    data = bytearray(base64.b64decode(record["previous_ledger_secret"]["encrypted_data"]))
    data[position] ^= 0x01
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(_with_data(record, bytes(data)), new)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.clear(),
        lambda r: r["previous_ledger_secret"].pop("encrypted_data"),
        lambda r: r["previous_ledger_secret"].pop("version"),
        lambda r: r["previous_ledger_secret"].__setitem__("encrypted_data", "not base64 !!"),
        lambda r: r["previous_ledger_secret"].__setitem__("encrypted_data", 12),
        lambda r: r["previous_ledger_secret"].__setitem__("version", "one"),
        lambda r: r.__setitem__("previous_ledger_secret", "a string"),
        lambda r: r.__setitem__("previous_ledger_secret", None),
    ],
    ids=["empty", "no-data", "no-version", "bad-base64", "data-not-str", "version-not-int", "entry-str", "entry-none"],
)
def test_decrypt_of_malformed_record_raises_ledger_secret_error(mutate: Any) -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, 3)
    mutate(record)
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(record, new)


@pytest.mark.parametrize("length", [0, 10, 16, 20, 27, 28, 40, 59])
def test_decrypt_of_truncated_record_raises_ledger_secret_error(length: int) -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = rekey_secret_record(previous, new, 3)
    data = base64.b64decode(record["previous_ledger_secret"]["encrypted_data"])
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(_with_data(record, data[:length]), new)


@pytest.mark.property
@given(data=st.binary(max_size=100))
def test_decrypt_of_arbitrary_encrypted_data_raises_only_ledger_secret_error(data: bytes) -> None:
    previous, new = LedgerSecret.create(1, RAW), LedgerSecret.create(9, RAW2)
    record = _with_data(rekey_secret_record(previous, new, 3), data)
    with pytest.raises(LedgerSecretError):
        decrypt_previous_secret(record, new)


def test_chain_of_rekey_records_recovers_every_secret_from_the_latest() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1, RAW)])
    records = []
    for rekey_at in (4, 9, 15):
        previous = secrets.latest
        new = secrets.rekey(rekey_at)
        records.append(rekey_secret_record(previous, new, None))
    current = secrets.latest
    recovered = [current]
    for record in reversed(records):
        current = decrypt_previous_secret(record, current)
        recovered.append(current)
    assert list(reversed(recovered)) == secrets.all()
