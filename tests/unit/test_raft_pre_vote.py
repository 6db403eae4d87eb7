"""Pre-vote in the consensus core: a question about the next term binds no one and moves no term, a voter that
hears from a primary does not answer it, and only a majority's yes starts a real election."""

from __future__ import annotations

import pytest

from network.consensus.raft import (
    AppendEntries,
    ConsensusConfig,
    EntryMeta,
    HardState,
    Raft,
    RequestVote,
    RequestVoteResponse,
    Role,
)

pytestmark = pytest.mark.unit

VOTERS = ("a", "b", "c")
CONFIG = ConsensusConfig(election_ticks=10)


def _node(node_id: str, *, term: int = 3, log: tuple[EntryMeta, ...] = (EntryMeta(1, 3, True),)) -> Raft:
    return Raft(node_id, VOTERS, lambda lo, hi: lo, config=CONFIG, hard_state=HardState(term, None), log=log)


def _time_out(node: Raft) -> list[object]:
    for _ in range(CONFIG.election_ticks):
        node.tick()
    return list(node.ready().messages)


def test_a_timed_out_node_asks_for_the_next_term_without_raising_its_own() -> None:
    a = _node("a")
    sent = _time_out(a)
    assert a.role is Role.PRE_CANDIDATE and a.term == 3 and a.voted_for is None
    assert sent == [RequestVote(4, "a", "b", 1, 3, pre_vote=True), RequestVote(4, "a", "c", 1, 3, pre_vote=True)]


def test_a_yes_binds_no_one_and_a_majority_of_yes_starts_the_real_election() -> None:
    a, b = _node("a"), _node("b")
    question = _time_out(a)[0]
    assert isinstance(question, RequestVote)
    b.step(question)
    ready = b.ready()
    assert ready.messages == (RequestVoteResponse(4, "b", "a", True, pre_vote=True),)
    assert ready.hard_state is None and b.term == 3 and b.voted_for is None  # nothing recorded
    a.step(ready.messages[0])
    assert a.role is Role.CANDIDATE and a.term == 4 and a.voted_for == "a"
    assert [m.pre_vote for m in a.ready().messages if isinstance(m, RequestVote)] == [False, False]


def test_a_voter_that_hears_from_a_primary_does_not_answer() -> None:
    b = _node("b")
    b.step(AppendEntries(3, "c", "b", 1, 3, (), 1))  # the primary of term 3
    b.ready()
    b.step(RequestVote(4, "a", "b", 1, 3, pre_vote=True))
    assert b.ready().messages == () and b.term == 3


def test_a_stale_log_gets_a_no() -> None:
    b = _node("b", log=(EntryMeta(1, 3, True), EntryMeta(2, 3, True)))
    b.step(RequestVote(4, "a", "b", 1, 3, pre_vote=True))
    assert b.ready().messages == (RequestVoteResponse(3, "b", "a", False, pre_vote=True),)


def test_a_no_from_a_newer_term_turns_the_asker_into_a_backup_of_that_term() -> None:
    a = _node("a")
    _time_out(a)
    a.step(RequestVoteResponse(7, "b", "a", False, pre_vote=True))
    assert a.role is Role.FOLLOWER and a.term == 7


def test_a_late_yes_from_an_earlier_question_is_not_counted() -> None:
    a = _node("a")
    _time_out(a)
    a.step(RequestVoteResponse(3, "b", "a", True, pre_vote=True))  # a yes for term 3, not the asked 4
    assert a.role is Role.PRE_CANDIDATE and a.term == 3


def test_a_leadership_transfer_skips_the_question() -> None:
    a = _node("a")
    a.campaign()
    assert a.role is Role.CANDIDATE and a.term == 4
