"""Which batches the consensus core asks its shell to make durable (`Ready.sync`): those holding a signature,
and rollbacks. Entries between signatures may be written lazily, since nothing commits except at a
signature (the scenario `follower_loses_unsynced_entries.txt` shows a primary recovering from their loss)."""

from __future__ import annotations

import pytest

from network.consensus.raft import AppendEntries, ConsensusConfig, EntryMeta, HardState, Raft

pytestmark = pytest.mark.unit


def _follower(log: tuple[EntryMeta, ...] = (EntryMeta(1, 2, True),)) -> Raft:
    return Raft("b", ("a", "b", "c"), lambda lo, hi: lo, config=ConsensusConfig(), hard_state=HardState(2, None),
                log=log)


def test_a_batch_without_a_signature_is_written_not_synced_and_still_acknowledged() -> None:
    b = _follower()
    b.step(AppendEntries(2, "a", "b", 1, 2, (EntryMeta(2, 2), EntryMeta(3, 2)), 1))
    ready = b.ready()
    assert [e.index for e in ready.entries] == [2, 3] and not ready.sync
    assert ready.messages[0].success and ready.messages[0].last_index == 3  # type: ignore[union-attr]


def test_a_batch_holding_a_signature_is_synced_before_its_acknowledgement() -> None:
    b = _follower()
    b.step(AppendEntries(2, "a", "b", 1, 2, (EntryMeta(2, 2), EntryMeta(3, 2, True)), 1))
    assert b.ready().sync


def test_a_rollback_is_synced() -> None:
    b = _follower((EntryMeta(1, 2, True), EntryMeta(2, 2), EntryMeta(3, 2)))
    b.step(AppendEntries(3, "c", "b", 1, 2, (EntryMeta(2, 3),), 1))  # a new primary replaces 2..3
    ready = b.ready()
    assert ready.rollback_to == 1 and ready.sync


def test_a_primary_syncs_its_own_signatures_only() -> None:
    a = Raft("a", ("a",), lambda lo, hi: lo, hard_state=HardState(1, None))
    a.campaign()
    a.ready()
    a.propose()
    assert not a.ready().sync
    a.propose(signature=True)
    ready = a.ready()
    assert ready.sync and ready.commit == 2
