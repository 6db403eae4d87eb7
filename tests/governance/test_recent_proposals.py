"""Replay protection for proposals and proposal ids, as CCF computes them."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governance.errors import InvalidCreatedAt, ProposalCreatedTooLongAgo, ProposalReplay
from governance.recent_proposals import proposal_id, record_proposal_submission
from governance.tables import COSE_RECENT_PROPOSALS
from ledger.kv import Store
from ledger.tables import SERVICE_CONFIG, SINGLETON_KEY

pytestmark = pytest.mark.unit


def submit(store: Store, created_at: int, signature: bytes, pid: str) -> None:
    tx = store.begin()
    record_proposal_submission(tx, created_at, signature, pid)
    store.commit(tx)


def keys(store: Store) -> list[str]:
    return [k.decode() for k in store.read_tx().keys(COSE_RECENT_PROPOSALS)]


def test_proposal_id_binds_the_root_at_read_and_the_signature() -> None:
    root, sig = b"\x01" * 32, b"signature bytes"
    assert proposal_id(root, sig) == hashlib.sha256(root + hashlib.sha256(sig).digest()).hexdigest()
    assert proposal_id(b"\x02" * 32, sig) != proposal_id(root, sig)


def test_a_replayed_proposal_is_refused_naming_the_first_one() -> None:
    store = Store()
    submit(store, 1000, b"sig-a", "p1")
    assert keys(store) == [f"{1000:010d}:{hashlib.sha256(b'sig-a').hexdigest()}"]
    with pytest.raises(ProposalReplay, match="already exists as proposal p1") as info:
        submit(store, 1000, b"sig-a", "p2")
    assert info.value.code == "ProposalReplay"
    submit(store, 1000, b"sig-b", "p2")  # same second, different signature: a different proposal


def test_created_at_older_than_the_median_kept_is_too_old() -> None:
    store = Store()
    for i, ts in enumerate((100, 200, 300, 400, 500)):
        submit(store, ts, b"sig%d" % i, f"p{i}")
    with pytest.raises(ProposalCreatedTooLongAgo, match="greater than 0000000300"):
        submit(store, 299, b"late", "late")
    submit(store, 300, b"on time", "ok")  # the median itself is not too old


def test_created_at_beyond_ten_digits_is_invalid() -> None:
    with pytest.raises(InvalidCreatedAt):
        submit(Store(), 10_000_000_000, b"sig", "p")


def test_the_window_keeps_the_newest_entries_of_the_configured_size() -> None:
    store = Store()
    tx = store.begin()
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {"recent_cose_proposals_window_size": 3})
    store.commit(tx)
    for ts in range(10, 20):
        submit(store, ts, b"s%d" % ts, f"p{ts}")
        assert len(keys(store)) <= 3
    assert [k.split(":")[0] for k in keys(store)] == ["0000000017", "0000000018", "0000000019"]


@pytest.mark.property
@given(st.lists(st.tuples(st.integers(0, 50), st.binary(min_size=1, max_size=3)), max_size=40))
def test_the_table_never_exceeds_the_default_window_and_never_accepts_a_kept_key_twice(
    submissions: list[tuple[int, bytes]]
) -> None:
    store = Store()
    accepted: set[tuple[int, bytes]] = set()
    for n, (ts, sig) in enumerate(submissions):
        try:
            submit(store, ts, sig, f"p{n}")
        except ProposalReplay:
            assert (ts, sig) in accepted
            continue
        except ProposalCreatedTooLongAgo:
            continue
        assert (ts, sig) not in accepted  # fewer than 100 submissions: nothing was pruned
        accepted.add((ts, sig))
        assert len(keys(store)) <= 100
