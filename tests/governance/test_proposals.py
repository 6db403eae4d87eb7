"""The proposal lifecycle under constitutions written in CCF's documented style."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from governance.errors import (
    AuthorizationFailed,
    ConstitutionFailure,
    InvalidResourceName,
    ProposalFailedToValidate,
    ProposalNotFound,
    ProposalNotOpen,
    ProposalReplay,
    VoteAlreadyExists,
    VoteNotFound,
)
from governance.proposals import (
    actions,
    ballot,
    list_proposals,
    proposal_view,
)
from governance.tables import COSE_HISTORY, PROPOSALS, PROPOSALS_INFO
from ledger import cose
from tests.governance.constitutions import BAD_STATUS, REJECTING, THROWING, VALIDATE_THROWS
from tests.governance.harness import APPROVE, GREETINGS, REJECT, Gov

pytestmark = pytest.mark.unit


def greet(text: Any) -> dict[str, Any]:
    return {"actions": [{"name": "set_greeting", "args": {"greeting": text}}]}


def test_a_majority_of_active_members_accepts_and_apply_runs_in_the_same_transaction() -> None:
    gov = Gov()
    a, b, c = gov.members
    created = gov.propose(a, greet("hello"))
    assert created.proposal == {"ballotCount": 0, "proposalId": created.proposal_id, "proposalState": "Open",
                                "proposerId": a.id}
    assert gov.vote(a, created.proposal_id).proposal["proposalState"] == "Open"
    assert gov.greeting() is None
    accepted = gov.vote(b, created.proposal_id)
    assert accepted.proposal["proposalState"] == "Accepted"
    assert accepted.proposal["finalVotes"] == {a.id: True, b.id: True}
    assert accepted.proposal["ballotCount"] == 2
    assert gov.greeting() == "hello"
    assert gov.store.read_tx().get_str(GREETINGS, "by_proposal") == created.proposal_id
    with pytest.raises(ProposalNotOpen):
        gov.vote(c, created.proposal_id)


def test_the_proposal_id_binds_the_state_read_and_the_signature() -> None:
    gov = Gov()
    created = gov.propose(gov.members[0], greet("x"))
    tx = gov.store.read_tx()
    envelope = tx.get(COSE_HISTORY, gov.members[0].id)
    assert envelope is not None
    signature = cose.decode(envelope).signature
    root = hashlib.sha256(b"root at %d" % (tx.read_version - 1)).digest()
    assert created.proposal_id == hashlib.sha256(root + hashlib.sha256(signature).digest()).hexdigest()
    assert actions(tx, created.proposal_id) == orjson.dumps(greet("x"))


def test_validation_refuses_bad_arguments_with_a_precise_message_and_records_nothing() -> None:
    gov = Gov()
    before = gov.store.version
    with pytest.raises(ProposalFailedToValidate, match="greeting must be of type string but is of type number"):
        gov.propose(gov.members[0], greet(42))
    with pytest.raises(ProposalFailedToValidate, match="no_such_action: no such action"):
        gov.propose(gov.members[0], {"actions": [{"name": "no_such_action", "args": {}}]})
    assert gov.store.version == before


def test_a_ballot_may_read_the_kv_and_a_throwing_ballot_is_a_vote_failure() -> None:
    gov = Gov()
    a, b, c = gov.members
    created = gov.propose(a, greet("kv"))
    reads_kv = orjson.dumps({"ballot": 'export function vote (proposal, proposerId) { '
                                       'return ccf.kv["public:ccf.gov.members.info"].has(ccf.strToBuf(proposerId)) }'}
                            ).decode()
    gov.vote(b, created.proposal_id, reads_kv)
    throws = '{"ballot": "export function vote () { throw new Error(\\"cannot decide\\") }"}'
    gov.vote(c, created.proposal_id, throws)
    done = gov.vote(a, created.proposal_id)
    assert done.proposal["proposalState"] == "Accepted"
    assert done.proposal["finalVotes"] == {a.id: True, b.id: True}
    assert done.proposal["voteFailures"][c.id]["reason"] == "Error: cannot decide"
    assert ballot(gov.store.read_tx(), created.proposal_id, b.id) == orjson.loads(reads_kv)["ballot"]


def test_the_same_ballot_twice_changes_nothing_and_a_different_one_is_refused() -> None:
    gov = Gov()
    a, b, _ = gov.members
    created = gov.propose(a, greet("once"))
    gov.vote(a, created.proposal_id, REJECT)
    version = gov.store.version
    assert gov.vote(a, created.proposal_id, REJECT).proposal["ballotCount"] == 1
    with pytest.raises(VoteAlreadyExists):
        gov.vote(a, created.proposal_id, APPROVE)
    assert gov.store.version == version  # the idempotent re-send wrote nothing: no new transaction
    assert orjson.loads(gov.store.read_tx().get(PROPOSALS_INFO, created.proposal_id) or b"{}")["ballots"] == {
        a.id: orjson.loads(REJECT)["ballot"]}


def test_ballots_must_name_the_proposal_and_member_of_the_url() -> None:
    gov = Gov()
    a, b, _ = gov.members
    created = gov.propose(a, greet("url"))
    with pytest.raises(InvalidResourceName, match="proposal id"):
        gov.vote(a, created.proposal_id, signed_pid="another")
    with pytest.raises(InvalidResourceName, match="member id"):
        gov.vote(a, created.proposal_id, url_member=b.id)
    with pytest.raises(ProposalNotFound):
        gov.vote(a, "ab" * 32)
    with pytest.raises(VoteNotFound):
        ballot(gov.store.read_tx(), created.proposal_id, b.id)


def test_rejected_proposals_freeze_their_votes_and_are_not_applied() -> None:
    gov = Gov(REJECTING)
    a, b, _ = gov.members
    created = gov.propose(a, {"actions": []})
    rejected = gov.vote(b, created.proposal_id, REJECT)
    assert rejected.proposal["proposalState"] == "Rejected"
    assert rejected.proposal["finalVotes"] == {b.id: False}
    assert gov.store.read_tx().get(GREETINGS, "applied") is None


def test_leaving_open_deletes_every_other_completed_proposal() -> None:
    gov = Gov(REJECTING)
    a, b, c = gov.members
    first = gov.propose(a, {"actions": [], "n": 1})
    gov.vote(b, first.proposal_id, REJECT)
    still_open = gov.propose(a, {"actions": [], "n": 2})
    second = gov.propose(a, {"actions": [], "n": 3})
    gov.vote(b, second.proposal_id)
    gov.vote(c, second.proposal_id)  # Accepted: the earlier Rejected one goes, the Open one stays
    ids = {p["proposalId"]: p["proposalState"] for p in list_proposals(gov.store.read_tx())}
    assert ids == {still_open.proposal_id: "Open", second.proposal_id: "Accepted"}
    with pytest.raises(ProposalNotFound):
        proposal_view(gov.store.read_tx(), first.proposal_id)


@pytest.mark.parametrize(("source", "reason"), [
    (THROWING, "Failed to resolve(): Error: resolve is broken"),
    (BAD_STATUS, 'resolve() returned invalid status value: "Maybe"'),
])
def test_a_failed_resolution_records_nothing_of_the_request(source: str, reason: str) -> None:
    gov = Gov(source)
    before = (gov.store.version, gov.store.read_tx().keys(PROPOSALS))
    with pytest.raises(ConstitutionFailure) as info:
        gov.propose(gov.members[0], {"actions": []})
    assert info.value.message == reason
    assert info.value.proposal is not None and info.value.proposal["proposalState"] == "Failed"
    assert (gov.store.version, gov.store.read_tx().keys(PROPOSALS)) == before


def test_an_apply_that_throws_fails_the_proposal_and_nothing_is_applied() -> None:
    gov = Gov()
    a, b, _ = gov.members
    created = gov.propose(a, {"actions": [{"name": "set_greeting", "args": {"greeting": "partial"}},
                                          {"name": "always_throws_on_apply", "args": {}}]})
    gov.vote(a, created.proposal_id)
    with pytest.raises(ConstitutionFailure, match="Failed to apply\\(\\): Error: apply broke"):
        gov.vote(b, created.proposal_id)
    assert gov.greeting() is None
    assert proposal_view(gov.store.read_tx(), created.proposal_id)["proposalState"] == "Open"


def test_validate_that_throws_is_an_internal_failure() -> None:
    gov = Gov(VALIDATE_THROWS)
    with pytest.raises(ConstitutionFailure, match="Failed to execute validation: Error: validate is broken"):
        gov.propose(gov.members[0], {"actions": []})


def test_accepted_proposals_return_the_node_effects_they_asked_for() -> None:
    gov = Gov()
    a, b, _ = gov.members
    created = gov.propose(a, {"actions": [{"name": "trigger_ledger_rekey"}]})
    gov.vote(a, created.proposal_id)
    done = gov.vote(b, created.proposal_id)
    assert [e.name for e in done.effects] == ["trigger_ledger_rekey"]


def test_withdrawal_is_for_the_proposer_of_an_open_proposal_only() -> None:
    gov = Gov()
    a, b, _ = gov.members
    created = gov.propose(a, greet("withdraw me"))
    with pytest.raises(AuthorizationFailed):
        gov.withdraw(b, created.proposal_id)
    withdrawn = gov.withdraw(a, created.proposal_id)
    assert withdrawn is not None and withdrawn.proposal["proposalState"] == "Withdrawn"
    again = gov.withdraw(a, created.proposal_id)
    assert again is not None and again.proposal["proposalState"] == "Withdrawn"
    assert gov.withdraw(a, "cd" * 32) is None  # unknown: CCF answers 204
    with pytest.raises(ProposalNotOpen):
        gov.vote(b, created.proposal_id)


def test_a_replayed_proposal_envelope_is_refused() -> None:
    gov = Gov()
    envelope = gov._sign(gov.members[0], orjson.dumps(greet("replay")), "proposal")
    gov.propose_envelope(envelope)
    with pytest.raises(ProposalReplay):
        gov.propose_envelope(envelope)


def test_runtime_options_raise_the_limits_but_never_lower_them() -> None:
    from governance.proposals import JS_RUNTIME_OPTIONS, js_limits
    from ledger.tables import SINGLETON_KEY

    gov = Gov()
    tx = gov.store.begin()
    assert js_limits(tx).max_execution_time_ms == 5000
    tx.put_json(JS_RUNTIME_OPTIONS, SINGLETON_KEY, {"max_heap_bytes": 1, "max_stack_bytes": 1,
                                                    "max_execution_time_ms": 8000})
    limits = js_limits(tx)
    assert (limits.max_execution_time_ms, limits.max_heap_bytes) == (8000, 100 * 1024 * 1024)


def test_a_ballot_that_loops_forever_is_a_vote_failure_and_the_service_goes_on() -> None:
    gov = Gov()
    a, b, c = gov.members
    created = gov.propose(a, greet("loop"))
    loops = orjson.dumps({"ballot": "export function vote () { while (true) {} }"}).decode()
    gov.vote(b, created.proposal_id, loops)
    done = gov.vote(a, created.proposal_id)
    assert done.proposal["proposalState"] == "Open"  # one vote in favour of three active members
    assert done.proposal.get("voteFailures") is None  # frozen only when the proposal leaves Open
    finished = gov.vote(c, created.proposal_id)
    assert finished.proposal["proposalState"] == "Accepted"
    assert finished.proposal["voteFailures"][b.id]["reason"] == "Operation took too long to complete."
    assert gov.greeting() == "loop"


def test_an_apply_that_allocates_without_bound_fails_and_leaves_nothing() -> None:
    hungry = r"""
    export function validate(input) { return { valid: true }; }
    export function resolve() { return "Accepted"; }
    export function apply(proposal) {
      ccf.kv["public:app.greetings"].set(ccf.strToBuf("greeting"), ccf.strToBuf("partial"));
      const hog = [];
      while (true) hog.push(new Array(1000000).fill(1));
    }"""
    gov = Gov(hungry)
    with pytest.raises(ConstitutionFailure, match="Failed to apply\\(\\): .*out of memory"):
        gov.propose(gov.members[0], {"actions": []})
    assert gov.greeting() is None and gov.store.read_tx().keys(PROPOSALS) == []


def test_runtime_options_out_of_range_are_bounded_so_governance_keeps_working() -> None:
    from governance.proposals import JS_RUNTIME_OPTIONS, js_limits
    from ledger.tables import SINGLETON_KEY

    gov = Gov()
    tx = gov.store.begin()
    # as JavaScript would write them: numbers beyond 64 bits, and nonsense
    tx.put(JS_RUNTIME_OPTIONS, SINGLETON_KEY,
           b'{"max_heap_bytes": 100000000000000000000, "max_stack_bytes": 9223372036854775807, '
           b'"max_execution_time_ms": "forever"}')
    limits = js_limits(tx)
    assert limits.max_heap_bytes == 100 * 1024 * 1024  # not an integer once parsed: the default
    assert limits.max_stack_bytes == 64 << 20  # capped
    assert limits.max_execution_time_ms == 5000
    gov.store.commit(tx)
    assert gov.propose(gov.members[0], greet("still works")).proposal["proposalState"] == "Open"
