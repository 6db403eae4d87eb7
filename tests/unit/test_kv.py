"""The versioned key-value store (`ledger.kv`): transactions, versions, conflicts, rollback, compaction."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import (
    ReadOnlyTransaction,
    RollbackBelowCommit,
    TransactionClosed,
    TransactionConflict,
    VersionUnavailable,
)
from ledger.kv import PACK_MAX, LastWrites, SnapshotRecords, SnapshotState, Store, is_public, last_write_history

pytestmark = pytest.mark.unit

M = "app.m"
OTHER = "app.other"


def commit_put(store: Store, map_name: str, key: bytes | str, value: bytes) -> int:
    tx = store.begin()
    tx.put(map_name, key, value)
    return tx.commit().seqno


def commit_remove(store: Store, map_name: str, key: bytes | str) -> int:
    tx = store.begin()
    tx.remove(map_name, key)
    return tx.commit().seqno


def read_at(store: Store, version: int, map_name: str, key: bytes | str) -> bytes | None:
    return store.read_tx(at=version).get(map_name, key)


# --- maps, basic reads and writes -----------------------------------------------------------------


def test_maps_named_public_prefix_are_public_and_others_private() -> None:
    assert is_public("public:ccf.gov.members.certs")
    assert is_public("public:")
    assert not is_public("ccf.internal.secret")
    assert not is_public("app.public:thing")
    assert not is_public("Public:x")


def test_get_of_missing_key_or_map_is_none_and_has_is_false() -> None:
    tx = Store().begin()
    assert tx.get(M, b"k") is None
    assert not tx.has(M, b"k")


def test_tx_reads_its_own_put_before_commit_and_store_sees_it_after() -> None:
    store = Store()
    tx = store.begin()
    tx.put(M, b"k", b"v")
    assert tx.get(M, b"k") == b"v"
    assert tx.has(M, b"k")
    assert store.read_tx().get(M, b"k") is None  # not visible before commit
    tx.commit()
    assert store.read_tx().get(M, b"k") == b"v"


def test_remove_hides_key_within_tx_and_after_commit() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v")
    tx = store.begin()
    tx.remove(M, b"k")
    assert tx.get(M, b"k") is None
    assert not tx.has(M, b"k")
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, b"k") is None
    assert not reader.has(M, b"k")
    assert reader.keys(M) == []


def test_clear_removes_every_key_of_the_map_only() -> None:
    store = Store()
    tx = store.begin()
    for i in range(5):
        tx.put(M, f"k{i}", b"v")
    tx.put(OTHER, b"keep", b"v")
    tx.commit()
    tx = store.begin()
    tx.clear(M)
    assert tx.size(M) == 0
    tx.commit()
    reader = store.read_tx()
    assert reader.size(M) == 0
    assert list(reader.items(M)) == []
    assert reader.get(OTHER, b"keep") == b"v"


def test_items_are_ordered_by_key_and_merge_uncommitted_writes() -> None:
    store = Store()
    tx = store.begin()
    for k in (b"d", b"b", b"a"):
        tx.put(M, k, b"old-" + k)
    tx.commit()
    tx = store.begin()
    tx.put(M, b"c", b"new-c")  # new key
    tx.put(M, b"a", b"new-a")  # overwrite
    tx.remove(M, b"d")  # removal
    assert list(tx.items(M)) == [(b"a", b"new-a"), (b"b", b"old-b"), (b"c", b"new-c")]
    assert tx.keys(M) == [b"a", b"b", b"c"]
    assert tx.size(M) == 3
    # the committed state is unchanged until commit
    assert list(store.read_tx().items(M)) == [(b"a", b"old-a"), (b"b", b"old-b"), (b"d", b"old-d")]


def test_str_keys_are_utf8_encoded_bytes() -> None:
    store = Store()
    tx = store.begin()
    tx.put(M, "clé", b"v")
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, "clé".encode()) == b"v"
    assert reader.get(M, "clé") == b"v"
    assert reader.keys(M) == ["clé".encode()]


@pytest.mark.parametrize("value", ["text", 5, None, [1], {"a": 1}])
def test_put_of_non_bytes_value_raises_type_error(value: Any) -> None:
    tx = Store().begin()
    with pytest.raises(TypeError):
        tx.put(M, b"k", value)
    assert tx.get(M, b"k") is None


def test_put_accepts_bytearray_and_memoryview_and_stores_bytes() -> None:
    store = Store()
    tx = store.begin()
    tx.put(M, b"a", bytearray(b"xy"))
    tx.put(M, b"b", memoryview(b"zw"))
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, b"a") == b"xy"
    assert type(reader.get(M, b"a")) is bytes
    assert reader.get(M, b"b") == b"zw"
    assert type(reader.get(M, b"b")) is bytes


def test_put_json_stores_sorted_compact_json_and_get_json_parses_it() -> None:
    store = Store()
    tx = store.begin()
    tx.put_json(M, "j", {"b": 1, "a": [1, 2], "c": {"z": None, "y": "s"}})
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, "j") == b'{"a":[1,2],"b":1,"c":{"y":"s","z":null}}'
    assert reader.get_json(M, "j") == {"a": [1, 2], "b": 1, "c": {"y": "s", "z": None}}
    assert reader.get_json(M, "missing") is None


def test_put_str_and_get_str_round_trip_utf8() -> None:
    store = Store()
    tx = store.begin()
    tx.put_str(M, "s", "héllo")
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, "s") == "héllo".encode()
    assert reader.get_str(M, "s") == "héllo"
    assert reader.get_str(M, "missing") is None


@pytest.mark.parametrize("value", [0, 1, -1, 2**63 - 1, -(2**63), 123456789])
def test_put_int_and_get_int_round_trip_as_8_byte_little_endian_signed(value: int) -> None:
    store = Store()
    tx = store.begin()
    tx.put_int(M, "i", value)
    tx.commit()
    reader = store.read_tx()
    assert reader.get(M, "i") == value.to_bytes(8, "little", signed=True)
    assert reader.get_int(M, "i") == value
    assert reader.get_int(M, "missing") is None


# --- versions and views -------------------------------------------------------------------------------


def test_committed_write_tx_gets_next_seqno_and_current_view() -> None:
    store = Store()
    assert store.version == 0
    store.set_view(2)
    tx = store.begin()
    tx.put(M, b"k", b"1")
    result = tx.commit()
    assert (result.seqno, result.view) == (1, 2)
    assert result.writes == {M: {b"k": b"1"}}
    assert store.version == 1
    store.set_view(5)
    tx = store.begin()
    tx.remove(M, b"k")
    result = tx.commit()
    assert (result.seqno, result.view) == (2, 5)
    assert result.writes == {M: {b"k": None}}
    assert store.version == 2


def test_view_can_stay_or_advance_but_not_go_back() -> None:
    store = Store()
    store.set_view(3)
    store.set_view(3)
    assert store.view == 3
    with pytest.raises(ValueError):
        store.set_view(2)
    assert store.view == 3


def test_read_tx_at_version_reads_state_as_of_that_version() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    commit_put(store, M, b"k", b"v2")  # 2
    commit_remove(store, M, b"k")  # 3
    commit_put(store, M, b"k", b"v4")  # 4
    assert read_at(store, 0, M, b"k") is None
    assert read_at(store, 1, M, b"k") == b"v1"
    assert read_at(store, 2, M, b"k") == b"v2"
    assert read_at(store, 3, M, b"k") is None
    assert read_at(store, 4, M, b"k") == b"v4"
    assert store.read_tx().get(M, b"k") == b"v4"
    assert [k for k, _ in store.read_tx(at=3).items(M)] == []
    assert store.read_tx(at=2).get_version(M, b"k") == 2


def test_read_tx_ahead_of_store_raises_version_unavailable() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v")
    with pytest.raises(VersionUnavailable):
        store.read_tx(at=2)


def test_read_tx_below_compaction_point_raises_version_unavailable() -> None:
    store = Store()
    for i in range(4):
        commit_put(store, M, b"k", bytes([i]))
    store.compact(3)
    with pytest.raises(VersionUnavailable):
        store.read_tx(at=2)
    assert read_at(store, 3, M, b"k") == bytes([2])


# --- transaction lifecycle -------------------------------------------------------------------------------


def test_read_only_tx_rejects_put_remove_and_commit() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v")
    reader = store.read_tx()
    with pytest.raises(ReadOnlyTransaction):
        reader.put(M, b"k", b"x")
    with pytest.raises(ReadOnlyTransaction):
        reader.remove(M, b"k")
    with pytest.raises(ReadOnlyTransaction):
        reader.commit()
    assert store.version == 1
    assert store.read_tx().get(M, b"k") == b"v"


def test_committing_twice_raises_transaction_closed_and_adds_no_version() -> None:
    store = Store()
    tx = store.begin()
    tx.put(M, b"k", b"v")
    tx.commit()
    with pytest.raises(TransactionClosed):
        tx.commit()
    with pytest.raises(TransactionClosed):
        tx.put(M, b"k", b"again")
    assert store.version == 1


def test_abandoned_tx_cannot_commit() -> None:
    store = Store()
    tx = store.begin()
    tx.put(M, b"k", b"v")
    tx.abandon()
    with pytest.raises(TransactionClosed):
        tx.commit()
    assert store.version == 0
    assert store.read_tx().get(M, b"k") is None


# --- optimistic concurrency ------------------------------------------------------------------------------


def test_read_key_written_by_later_commit_conflicts_with_details() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    a = store.begin()
    assert a.get(M, b"k") == b"v1"
    a.put(M, b"other", b"x")
    commit_put(store, M, b"k", b"v2")  # 2
    with pytest.raises(TransactionConflict) as info:
        a.commit()
    err = info.value
    assert err.map_name == M
    assert err.key == b"k"
    assert err.read_version == 1
    assert err.changed_at == 2
    assert store.version == 2
    assert store.read_tx().get(M, b"other") is None


def test_read_key_removed_by_later_commit_conflicts() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")
    a = store.begin()
    a.get(M, b"k")
    a.put(M, b"x", b"y")
    commit_remove(store, M, b"k")
    with pytest.raises(TransactionConflict):
        a.commit()


def test_read_of_absent_key_conflicts_when_later_commit_creates_it() -> None:
    store = Store()
    a = store.begin()
    assert not a.has(M, b"k")
    a.put(M, b"x", b"y")
    commit_put(store, M, b"k", b"v")
    with pytest.raises(TransactionConflict):
        a.commit()


def test_blind_writes_never_conflict() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")
    a = store.begin()
    a.put(M, b"k", b"from-a")
    a.remove(M, b"j")
    commit_put(store, M, b"k", b"from-b")
    commit_put(store, M, b"j", b"from-b")
    result = a.commit()
    assert result.seqno == 4
    assert store.read_tx().get(M, b"k") == b"from-a"
    assert store.read_tx().get(M, b"j") is None


def test_reading_own_write_does_not_record_a_read() -> None:
    store = Store()
    a = store.begin()
    a.put(M, b"k", b"a")
    assert a.get(M, b"k") == b"a"
    commit_put(store, M, b"k", b"b")
    a.commit()  # the only "read" was served from a's own write set
    assert store.read_tx().get(M, b"k") == b"a"


def test_reading_a_different_key_does_not_conflict() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v")
    commit_put(store, M, b"j", b"v")
    a = store.begin()
    a.get(M, b"j")
    a.get(OTHER, b"k")
    a.put(M, b"out", b"x")
    commit_put(store, M, b"k", b"v2")
    assert a.commit().seqno == 4


@pytest.mark.parametrize("how", ["items", "keys", "size", "clear"])
def test_iterating_or_sizing_a_map_changed_by_later_commit_conflicts(how: str) -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")
    tx = store.begin()
    if how == "items":
        list(tx.items(M))
    elif how == "keys":
        tx.keys(M)
    elif how == "size":
        tx.size(M)
    else:
        tx.clear(M)
    tx.put(OTHER, b"x", b"y")
    commit_put(store, M, b"unrelated-new-key", b"2")
    with pytest.raises(TransactionConflict) as info:
        tx.commit()
    assert info.value.map_name == M
    assert info.value.key is None
    assert info.value.read_version == 1
    assert info.value.changed_at == 2


def test_iterating_a_map_does_not_conflict_with_commits_to_other_maps() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")
    tx = store.begin()
    tx.size(M)
    tx.put(M, b"b", b"2")
    commit_put(store, OTHER, b"z", b"2")
    assert tx.commit().seqno == 3


def test_read_key_removed_and_compacted_since_read_still_conflicts() -> None:
    # The store's guarantee: a key read is checked against every commit after the read version.
    # Compacting the removal must not make the removal invisible to that check.
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    a = store.begin()
    assert a.get(M, b"k") == b"v1"
    a.put(M, b"derived", b"from-v1")
    commit_remove(store, M, b"k")  # 2
    store.compact(2)
    with pytest.raises(TransactionConflict):
        a.commit()


def test_read_of_absent_key_does_not_conflict_with_other_keys_written_and_compacted_since() -> None:
    # Only a compacted removal can hide a change to a key that has no history left: writes of other keys of the
    # same map (a log that only grows) leave a reader of an absent key free to commit.
    store = Store()
    commit_put(store, M, b"a", b"1")  # 1
    tx = store.begin()
    assert tx.get(M, b"new") is None
    tx.put(M, b"new", b"x")
    commit_put(store, M, b"b", b"2")  # 2
    commit_put(store, M, b"c", b"3")  # 3
    store.compact(3)
    assert tx.commit().seqno == 4


def test_read_of_absent_key_conflicts_once_a_removal_in_the_map_was_compacted_since() -> None:
    store = Store()
    commit_put(store, M, b"gone", b"1")  # 1
    tx = store.begin()
    assert tx.get(M, b"other") is None
    commit_remove(store, M, b"gone")  # 2: its history is dropped at compaction
    store.compact(2)
    with pytest.raises(TransactionConflict):
        tx.commit()


def test_refresh_moves_the_read_version_to_the_latest_and_keeps_buffered_writes() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")  # 1
    tx = store.begin()
    assert tx.get(M, b"a") == b"1"
    tx.put(M, b"mine", b"m")
    commit_put(store, M, b"b", b"2")  # 2
    assert tx.read_version == 1
    tx.refresh()
    assert tx.read_version == 2 and tx.get(M, b"b") == b"2" and tx.get(M, b"mine") == b"m"
    commit_put(store, OTHER, b"z", b"3")  # 3: another map, nothing read: no conflict
    assert tx.commit().seqno == 4
    assert store.read_tx().get(M, b"mine") == b"m"


def test_refresh_refuses_a_transaction_whose_reads_changed_since() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")  # 1
    tx = store.begin()
    assert tx.get(M, b"a") == b"1"
    commit_put(store, M, b"a", b"2")  # 2
    with pytest.raises(TransactionConflict):
        tx.refresh()
    closed = store.begin()
    closed.abandon()
    with pytest.raises(TransactionClosed):
        closed.refresh()


def test_open_tx_whose_read_version_was_compacted_never_reads_a_wrong_value() -> None:
    # A transaction reads a consistent state at its read version: after compaction past that version it
    # must either refuse to read (VersionUnavailable) or return the value as of its read version.
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    a = store.begin()  # read version 1
    commit_put(store, M, b"k", b"v2")  # 2
    commit_put(store, M, b"k", b"v3")  # 3
    store.compact(3)
    try:
        value = a.get(M, b"k")
    except VersionUnavailable:
        return
    assert value == b"v1"


# --- rollback -------------------------------------------------------------------------------------------------


def test_rollback_undoes_later_versions_restoring_values_and_removed_keys() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    commit_put(store, M, b"gone", b"g")  # 2
    commit_put(store, M, b"k", b"v3")  # 3
    commit_remove(store, M, b"gone")  # 4
    commit_put(store, OTHER, b"new", b"n")  # 5
    store.rollback(2)
    assert store.version == 2
    reader = store.read_tx()
    assert reader.get(M, b"k") == b"v1"
    assert reader.get(M, b"gone") == b"g"
    assert reader.get(OTHER, b"new") is None
    assert reader.size(OTHER) == 0
    with pytest.raises(VersionUnavailable):
        store.read_tx(at=3)
    with pytest.raises(VersionUnavailable):
        store.write_set(3)
    # the next commit reuses the rolled-back seqno
    assert commit_put(store, M, b"k", b"v3b") == 3
    assert store.read_tx().get(M, b"k") == b"v3b"
    assert read_at(store, 2, M, b"k") == b"v1"


def test_rollback_to_current_or_later_version_changes_nothing() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")
    commit_put(store, M, b"k", b"v2")
    store.rollback(2)
    store.rollback(7)
    assert store.version == 2
    assert store.read_tx().get(M, b"k") == b"v2"


def test_rollback_below_compacted_version_raises() -> None:
    store = Store()
    for i in range(4):
        commit_put(store, M, b"k", bytes([i]))
    store.compact(3)
    assert store.compacted_version == 3
    with pytest.raises(RollbackBelowCommit):
        store.rollback(2)
    assert store.version == 4
    store.rollback(3)  # down to the compaction point is allowed
    assert store.version == 3
    assert store.read_tx().get(M, b"k") == bytes([2])


def test_map_iterated_after_rollback_is_not_conflicted_by_rolled_back_versions() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")  # 1
    commit_put(store, OTHER, b"x", b"2")  # 2
    commit_put(store, M, b"b", b"3")  # 3, rolled back below
    store.rollback(2)
    tx = store.begin()  # read version 2
    assert tx.size(M) == 1
    tx.put(M, b"c", b"x")
    commit_put(store, OTHER, b"y", b"3")  # 3 again, another map
    assert tx.commit().seqno == 4


def test_tx_conflicting_on_rolled_back_write_is_judged_against_new_history() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    a = store.begin()
    a.get(M, b"k")
    a.put(M, b"x", b"y")
    commit_put(store, M, b"unrelated", b"u")  # 2
    commit_put(store, M, b"k", b"v3")  # 3, rolled back below
    store.rollback(2)
    assert a.commit().seqno == 3


# --- compaction and hooks --------------------------------------------------------------------------------------


def test_compact_keeps_reads_at_or_above_point_and_refuses_older() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v1")  # 1
    commit_put(store, M, b"j", b"j2")  # 2
    commit_remove(store, M, b"k")  # 3
    commit_put(store, M, b"k", b"v4")  # 4
    commit_put(store, M, b"j", b"j5")  # 5
    store.compact(3)
    assert store.compacted_version == 3
    assert read_at(store, 3, M, b"k") is None
    assert read_at(store, 3, M, b"j") == b"j2"
    assert read_at(store, 4, M, b"k") == b"v4"
    assert read_at(store, 4, M, b"j") == b"j2"
    assert read_at(store, 5, M, b"j") == b"j5"
    for old in (0, 1, 2):
        with pytest.raises(VersionUnavailable):
            store.read_tx(at=old)
    with pytest.raises(VersionUnavailable):
        store.snapshot(2)


def test_compact_beyond_store_version_raises_and_backwards_is_a_no_op() -> None:
    store = Store()
    commit_put(store, M, b"k", b"v")
    commit_put(store, M, b"k", b"w")
    with pytest.raises(VersionUnavailable):
        store.compact(3)
    store.compact(2)
    store.compact(1)
    assert store.compacted_version == 2


def test_global_hooks_fire_once_per_compacted_version_in_order_with_changes() -> None:
    store = Store()
    calls: list[tuple[int, dict[bytes, bytes | None]]] = []
    other_calls: list[int] = []
    store.add_global_hook(M, lambda v, ch: calls.append((v, dict(ch))))
    store.add_global_hook(OTHER, lambda v, ch: other_calls.append(v))
    commit_put(store, M, b"a", b"1")  # 1
    commit_put(store, OTHER, b"x", b"1")  # 2
    commit_remove(store, M, b"a")  # 3
    commit_put(store, M, b"b", b"4")  # 4
    assert calls == []  # not on commit
    store.compact(2)
    assert calls == [(1, {b"a": b"1"})]
    assert other_calls == [2]
    store.compact(2)  # again: nothing new
    store.compact(4)
    assert calls == [(1, {b"a": b"1"}), (3, {b"a": None}), (4, {b"b": b"4"})]
    assert other_calls == [2]


def test_local_hooks_fire_on_every_commit_of_their_map_only() -> None:
    store = Store()
    calls: list[tuple[int, dict[bytes, bytes | None]]] = []
    store.add_local_hook(M, lambda v, ch: calls.append((v, dict(ch))))
    commit_put(store, M, b"a", b"1")  # 1
    commit_put(store, OTHER, b"x", b"1")  # 2
    tx = store.begin()
    tx.put(M, b"b", b"3")
    tx.remove(M, b"a")
    tx.put(OTHER, b"y", b"3")
    tx.commit()  # 3
    assert calls == [(1, {b"a": b"1"}), (3, {b"b": b"3", b"a": None})]
    store.apply_writes(4, 0, {M: {b"c": b"4"}})
    assert calls[-1] == (4, {b"c": b"4"})


def test_write_set_is_retained_until_compaction() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")
    tx = store.begin()
    tx.put(OTHER, b"x", b"2")
    tx.remove(M, b"a")
    tx.commit()
    assert store.write_set(1) == {M: {b"a": b"1"}}
    assert store.write_set(2) == {OTHER: {b"x": b"2"}, M: {b"a": None}}
    with pytest.raises(VersionUnavailable):
        store.write_set(3)
    store.compact(1)
    with pytest.raises(VersionUnavailable):
        store.write_set(1)
    assert store.write_set(2) == {OTHER: {b"x": b"2"}, M: {b"a": None}}


# --- snapshots ---------------------------------------------------------------------------------------------------


def test_snapshot_is_live_state_with_versions_and_without_removed_keys() -> None:
    store = Store()
    commit_put(store, M, b"a", b"1")  # 1
    commit_put(store, M, b"b", b"2")  # 2
    commit_remove(store, M, b"a")  # 3
    commit_put(store, OTHER, b"x", b"4")  # 4
    commit_remove(store, OTHER, b"x")  # 5
    assert store.snapshot(2) == {M: {b"a": (1, b"1"), b"b": (2, b"2")}}
    assert store.snapshot(4) == {M: {b"b": (2, b"2")}, OTHER: {b"x": (4, b"4")}}
    assert store.snapshot() == {M: {b"b": (2, b"2")}}
    with pytest.raises(VersionUnavailable):
        store.snapshot(6)


def test_store_from_snapshot_reproduces_reads_and_continues_numbering() -> None:
    store = Store()
    store.set_view(2)
    commit_put(store, M, b"a", b"1")  # 1
    commit_put(store, M, b"b", b"2")  # 2
    commit_remove(store, M, b"a")  # 3
    commit_put(store, OTHER, b"x", b"4")  # 4
    state = store.snapshot(4)
    copy = Store.from_snapshot(state, 4, 2)
    assert copy.version == 4
    assert copy.view == 2
    assert copy.compacted_version == 4
    original, restored = store.read_tx(at=4), copy.read_tx()
    for map_name in (M, OTHER, "absent"):
        assert list(restored.items(map_name)) == list(original.items(map_name))
        for key in (b"a", b"b", b"x"):
            assert restored.get(map_name, key) == original.get(map_name, key)
            assert restored.get_version(map_name, key) == original.get_version(map_name, key)
    assert copy.snapshot() == state
    with pytest.raises(VersionUnavailable):
        copy.read_tx(at=3)
    assert commit_put(copy, M, b"c", b"5") == 5


def test_loaded_histories_read_as_the_state_they_describe_and_keep_the_hooks() -> None:
    """A bulk replay hands the store each key's last write, as the store keeps histories; the store reads them,
    detects conflicts with them, keeps its hooks, and refuses a map said to be written after the version."""
    store = Store()
    seen: list[int] = []
    store.add_local_hook(M, lambda version, changes: seen.append(version))
    store.load_histories(LastWrites({M: {b"a": [(3, b"v")], b"b": [(2, b"w")], b"gone": [(3, None)]},
                                     OTHER: {b"x": [(4, b"y")]}, "public:emptied": {b"e": [(1, None)]}},
                                    {M: 3, OTHER: 4, "public:emptied": 1}, {M, "public:emptied"}), 4, 2)
    assert (store.version, store.view, store.compacted_version) == (4, 2, 4)
    tx = store.read_tx()
    assert tx.get(M, b"a") == b"v" and tx.get_version(M, b"b") == 2 and tx.get(OTHER, b"x") == b"y"
    assert store.snapshot() == {M: {b"a": (3, b"v"), b"b": (2, b"w")}, OTHER: {b"x": (4, b"y")}}
    assert store.read_tx().keys(M) == [b"a", b"b"] and store.read_tx().map_version("public:emptied") == 0
    assert b"gone" not in store._maps[M].keys and "public:emptied" not in store._maps  # removals dropped
    stale = store.begin()
    stale.get(M, b"a")
    stale.put(M, b"c", b"z")
    assert commit_put(store, M, b"a", b"new") == 5 and seen == [5]
    with pytest.raises(TransactionConflict):
        stale.commit()
    with pytest.raises(ValueError, match="last written at 5"):
        Store().load_histories(LastWrites({M: {b"a": [(5, b"v")]}}, {M: 5}), 4, 0)
    with pytest.raises(ValueError, match="last written at None"):
        Store().load_histories(LastWrites({M: {b"a": [(3, b"v")]}}), 4, 0)


def test_from_snapshot_rejects_entries_newer_than_snapshot_version() -> None:
    with pytest.raises(ValueError):
        Store.from_snapshot({M: {b"a": (5, b"v")}}, 4, 0)


def test_conflict_detection_works_on_a_store_built_from_a_snapshot() -> None:
    copy = Store.from_snapshot({M: {b"a": (3, b"v")}}, 4, 1)
    a = copy.begin()
    a.get(M, b"a")
    a.put(M, b"b", b"x")
    commit_put(copy, M, b"a", b"w")
    with pytest.raises(TransactionConflict):
        a.commit()


# --- property: random histories against a dict-of-dicts model -----------------------------------------------------

MAPS = ["public:p", "priv"]
KEYS = [b"a", b"b"]

Model = dict[str, dict[bytes, bytes]]

# small values are packed with their version once compacted, large ones are kept as they are: both kinds
write_strategy = st.tuples(
    st.sampled_from(["put", "put", "remove"]), st.sampled_from(MAPS), st.sampled_from(KEYS),
    st.one_of(st.binary(max_size=3), st.builds(lambda b: b * (PACK_MAX + 1), st.binary(min_size=1, max_size=1))),
)
tx_step = st.tuples(
    st.just("tx"), st.lists(write_strategy, min_size=1, max_size=4), st.sampled_from([True, True, True, False])
)
rollback_step = st.tuples(st.just("rollback"), st.integers(0, 1000), st.just(False))
compact_step = st.tuples(st.just("compact"), st.integers(0, 1000), st.just(False))
# mostly transactions (committed or abandoned), with occasional rollbacks and compactions
step_strategy = st.integers(0, 7).flatmap(
    lambda i: rollback_step if i == 0 else compact_step if i <= 2 else tx_step
)
steps_strategy = st.lists(step_strategy, min_size=1, max_size=40)


def assert_store_matches(store: Store, version: int, expected: Model, written_at: Model | None = None) -> None:
    tx = store.read_tx(at=version)
    for map_name in MAPS:
        want = expected.get(map_name, {})
        assert dict(tx.items(map_name)) == want, (version, map_name)
        assert tx.size(map_name) == len(want)
        for key in KEYS:
            assert tx.get(map_name, key) == want.get(key), (version, map_name, key)
        if written_at is not None:
            versions = {k: int(v) for k, v in written_at.get(map_name, {}).items() if k in want}
            assert tx.committed_versions(map_name) == versions, (version, map_name)
            for key in KEYS:
                assert tx.get_version(map_name, key) == versions.get(key, 0), (version, map_name, key)


def records_as_state(records: SnapshotRecords) -> SnapshotState:
    """`Store.snapshot_records` read back as `Store.snapshot` gives it, checking the records' own invariants."""
    state: SnapshotState = {}
    for name, map_records in records.items():
        assert set(map_records.unpacked) <= set(map_records.held)
        entries: dict[bytes, tuple[int, bytes]] = {}
        for k, history in map_records.held.items():
            record = history if isinstance(history, bytes) else map_records.unpacked.get(k)
            if record is not None:
                entries[k] = (int.from_bytes(record[:8], "little"), record[8:])
        assert entries and len(entries) == map_records.live
        state[name] = entries
    return state


@pytest.mark.property
@given(steps=steps_strategy, probes=st.lists(st.integers(0, 1000), max_size=5))
def test_random_histories_match_dict_model_at_latest_and_retained_versions(
    steps: list[tuple[str, Any, bool]], probes: list[int]
) -> None:
    store = Store()
    states: list[Model] = [{}]  # states[v] = model state at version v
    written: list[Model] = [{}]  # written[v][map][key] = the version (as bytes of its digits) that last wrote key
    compacted = 0

    def retained(n: int) -> int:
        # map a raw draw onto a readable version in [compacted, store.version]
        return compacted + n % (store.version - compacted + 1)

    for step, arg, commit in steps:
        if step == "tx":
            tx = store.begin()
            new = {m: dict(kv) for m, kv in states[-1].items()}
            new_written = {m: dict(kv) for m, kv in written[-1].items()}
            for op, map_name, key, value in arg:
                new_written.setdefault(map_name, {})[key] = str(len(states)).encode()
                if op == "put":
                    tx.put(map_name, key, value)
                    new.setdefault(map_name, {})[key] = value
                else:
                    tx.remove(map_name, key)
                    new.setdefault(map_name, {}).pop(key, None)
            if not commit:
                tx.abandon()
                continue
            result = tx.commit()  # the only writer: never conflicts
            states.append(new)
            written.append(new_written)
            assert result.seqno == len(states) - 1 == store.version
        elif step == "rollback":
            target = retained(arg)
            store.rollback(target)
            del states[target + 1 :], written[target + 1 :]
            assert store.version == target
        else:
            target = retained(arg)
            store.compact(target)
            compacted = max(compacted, target)
            assert store.compacted_version == compacted
        assert_store_matches(store, store.version, states[store.version], written[store.version])

    assert store.version == len(states) - 1
    for n in probes:
        v = retained(n)
        assert_store_matches(store, v, states[v], written[v])
        snap = store.snapshot(v)
        assert {m: {k: val for k, (_, val) in kv.items()} for m, kv in snap.items()} == {
            m: kv for m, kv in states[v].items() if kv
        }
        assert records_as_state(store.snapshot_records(v)) == snap
    for v in range(compacted):
        with pytest.raises(VersionUnavailable):
            store.read_tx(at=v)


def test_transaction_open_across_a_rollback_that_dropped_what_it_read_conflicts() -> None:
    store = Store()
    for i in range(3):
        commit_put(store, M, b"k", b"%d" % (i + 1))  # versions 1..3
    stale = store.begin()  # reads at 3
    assert stale.get(M, b"k") == b"3"
    stale.put(M, b"other", b"x")
    store.rollback(1)
    commit_put(store, M, b"k", b"new2")
    commit_put(store, M, b"k", b"new3")  # the store is at version 3 again, with other contents
    with pytest.raises(TransactionConflict):
        store.commit(stale)
    fresh = store.begin()
    fresh.put(M, b"other", b"y")
    assert store.commit(fresh).seqno == 4


def test_transaction_begun_below_a_rollback_point_is_unaffected_by_it() -> None:
    store = Store()
    commit_put(store, M, b"k", b"1")
    early = store.begin()  # reads at 1
    assert early.get(M, b"k") == b"1"
    commit_put(store, OTHER, b"x", b"2")
    store.rollback(1)  # drops version 2 only: what `early` read is intact
    early.put(M, b"k", b"early")
    assert store.commit(early).seqno == 2


def test_a_raising_global_hook_leaves_the_store_compacted_and_consistent() -> None:
    store = Store()
    seen: list[int] = []

    def hook(version: int, changes: dict[bytes, bytes | None]) -> None:
        seen.append(version)
        raise RuntimeError("hook failed")

    store.add_global_hook(M, hook)
    commit_put(store, M, b"k", b"1")
    commit_put(store, M, b"k", b"2")
    with pytest.raises(RuntimeError):
        store.compact(2)
    assert store.compacted_version == 2 and seen == [1]
    store.compact(2)  # nothing left to do, no KeyError
    assert store.read_tx().get(M, b"k") == b"2"
    commit_put(store, M, b"k", b"3")
    assert store.version == 3


# --- compacted state: small values packed with their version ---------------------------------------------------


def _committed(store: Store, writes: dict[bytes, bytes]) -> int:
    tx = store.begin()
    for k, v in writes.items():
        tx.put("records", k, v)
    result = tx.commit()
    assert result is not None
    return result.seqno


def test_compacted_records_cost_far_less_memory_than_their_histories() -> None:
    """1M committed records must fit a node's memory: once compacted, a small record is one object (its version
    packed with its value) besides its key, not a list of (version, value) tuples. 20 000 distinct records of 64
    bytes were about 350 B each before packing, 205 B after; the bound leaves room for allocator slack, not for
    another object."""
    import gc
    import tracemalloc

    store = Store()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        _committed(store, {i.to_bytes(8, "little"): i.to_bytes(8, "little") * 8})
    store.compact(store.version)
    gc.collect()
    per_record = (tracemalloc.get_traced_memory()[0] - before) / 20_000
    tracemalloc.stop()
    assert per_record < 240, per_record
    tx = store.read_tx()
    assert tx.get("records", (19_999).to_bytes(8, "little")) == (19_999).to_bytes(8, "little") * 8
    assert tx.get_version("records", (19_999).to_bytes(8, "little")) == store.version


def test_a_packed_record_written_again_conflicts_rolls_back_and_reads_as_before() -> None:
    store = Store()
    first = _committed(store, {b"k": b"small", b"big": b"B" * (PACK_MAX + 1)})
    store.compact(first)
    reader = store.begin()
    assert reader.get("records", b"k") == b"small" and reader.get_version("records", b"k") == first
    assert reader.get("records", b"big") == b"B" * (PACK_MAX + 1)
    reader.put("records", b"other", b"x")
    second = _committed(store, {b"k": b"again"})
    with pytest.raises(TransactionConflict):
        reader.commit()
    assert store.read_tx().get("records", b"k") == b"again"
    store.rollback(first)  # the packed version survives the write over it being undone
    tx = store.read_tx()
    assert (tx.get("records", b"k"), tx.get_version("records", b"k")) == (b"small", first)
    assert second == first + 1 and store.version == first
    assert dict(tx.items("records")) == {b"big": b"B" * (PACK_MAX + 1), b"k": b"small"}


def test_snapshots_and_loaded_histories_of_small_and_large_values_read_back_with_their_versions() -> None:
    store = Store()
    v1 = _committed(store, {b"small": b"s", b"large": b"L" * (PACK_MAX + 1)})
    v2 = _committed(store, {b"small": b"s2"})
    store.compact(v2)
    copy = Store.from_snapshot(store.snapshot(), v2, 1)
    loaded = Store()
    last = LastWrites()
    last.note({"records": {b"large": b"L" * (PACK_MAX + 1)}}, v1)
    last.note({"records": {b"small": b"s2"}}, v2)
    loaded.load_histories(last, v2, 1)
    for s in (store, copy, loaded):
        tx = s.read_tx()
        assert tx.committed_versions("records") == {b"small": v2, b"large": v1}
        assert (tx.get("records", b"small"), tx.get("records", b"large")) == (b"s2", b"L" * (PACK_MAX + 1))


def test_last_writes_keep_each_key_s_last_write_and_merge_later_runs_over_earlier_ones() -> None:
    first, second = LastWrites(), LastWrites()
    first.note({M: {b"a": b"1", b"b": b"1"}, OTHER: {b"x": b"L" * (PACK_MAX + 1), b"edge": b"E" * PACK_MAX}}, 3)
    first.note({M: {b"a": b"2"}}, 4)
    second.note({M: {b"b": None, b"c": b"5"}}, 7)
    second.note({OTHER: {b"z": b"an older write"}}, 2)
    second.note({OTHER: {b"y": b"a later one"}}, 6)
    assert first.maps[M][b"a"] == last_write_history(4, b"2")  # packed: version and value in one object
    assert first.maps[OTHER][b"x"] == [(3, b"L" * (PACK_MAX + 1))]  # too large to pack
    edge = first.maps[OTHER][b"edge"]  # the largest value packed
    assert edge == last_write_history(3, b"E" * PACK_MAX) == (3).to_bytes(8, "little") + b"E" * PACK_MAX
    assert (first.newest, first.removals) == ({M: 4, OTHER: 3}, set())
    first.merge(second)
    assert first.maps[M] == {b"a": last_write_history(4, b"2"), b"b": [(7, None)], b"c": last_write_history(7, b"5")}
    assert (first.newest, first.removals) == ({M: 7, OTHER: 6}, {M})
    assert first.live(M) == {b"a": last_write_history(4, b"2"), b"c": last_write_history(7, b"5")}
    assert first.live(OTHER) is first.maps[OTHER]  # no removal: the dictionary itself


def test_restored_state_is_taken_whole_for_a_map_the_store_does_not_hold_and_merged_under_one_it_does() -> None:
    store = Store()
    commit_put(store, "public:x", b"k", b"v")  # 1
    commit_put(store, OTHER, b"later", b"kept")  # 2: the store's own write, after the restored ones
    store.compact(2)
    restored = LastWrites()
    restored.note({M: {b"a": b"restored"},
                   OTHER: {b"earlier": b"restored too", b"later": b"older than the store's"}}, 1)
    store.restore_earlier_state(restored, 2)
    tx = store.read_tx()
    assert store._maps[M].keys is restored.maps[M]  # taken, not copied
    assert dict(tx.items(OTHER)) == {b"earlier": b"restored too", b"later": b"kept"}
    assert (tx.get_version(OTHER, b"later"), tx.map_version(M), tx.map_version(OTHER)) == (2, 1, 2)
    with pytest.raises(ValueError, match="not below 2"):
        store.restore_earlier_state(LastWrites({M: {b"b": last_write_history(2, b"v")}}, {M: 2}), 2)
