"""A hypothesis state machine over governance under the default constitution: random members, proposals,
ballots, withdrawals, replays, wrong message types, membership changes (add, ack, remove) and proposals
whose apply fails. Checked after every step against a model:
- nothing is applied without a majority of the active members (counted when it is resolved);
- a Failed proposal (its apply threw) leaves no write at all;
- replays are refused with ProposalReplay and wrong message types with InvalidAuthenticationInfo;
- final votes are frozen once a proposal leaves Open.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from governance.acks import ack, update_state_digest
from governance.constitution import default_constitution
from governance.errors import (
    AuthenticationFailed,
    AuthorizationFailed,
    ConstitutionFailure,
    ProposalNotFound,
    ProposalNotOpen,
    ProposalReplay,
    VoteAlreadyExists,
)
from governance.member_client import APPROVE_BALLOT, REJECT_BALLOT, MemberSigner, action
from governance.proposals import list_proposals, submit_ballot, withdraw_proposal
from governance.requests import MessageType, verify_request
from ledger import cose
from ledger.identity import PartyIdentity, cert_pem
from ledger.tables import MEMBERS_INFO, SINGLETON_KEY, USERS_INFO
from tests.governance.harness import Gov

pytestmark = pytest.mark.property

POOL = [PartyIdentity.create(f"pool{i}") for i in range(5)]
SIGNERS = [MemberSigner(p.key, p.cert) for p in POOL]
USER = PartyIdentity.create("user")


class Governance(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.gov = Gov(default_constitution(), members=POOL[:3])
        self.active = {p.id for p in POOL[:3]}
        self.known = set(self.active)
        self.clock = 1_900_000_000
        self.envelopes: list[bytes] = []
        self.open: dict[str, dict[str, bool]] = {}  # proposal id -> ballots (member -> approve)
        self.actions: dict[str, list[dict[str, Any]]] = {}
        self.frozen: dict[str, dict[str, Any]] = {}

    def _signer(self, who: int) -> MemberSigner:
        """0-4: anyone in the pool (active or not); 5-9: an active member, so that majorities happen."""
        if who < 5 or not self.active:
            return SIGNERS[who % 5]
        active = sorted(self.active)
        return next(s for s in SIGNERS if s.member_id == active[(who - 5) % len(active)])

    def _tick(self) -> int:
        self.clock += 1
        return self.clock

    def _apply_model(self, pid: str) -> None:
        for a in self.actions[pid]:
            if a["name"] == "set_member":
                member_id = next(p.id for p in POOL if cert_pem(p.cert) == a["args"]["cert"])
                self.known.add(member_id)
                self.active.discard(member_id)  # (re)set members are Accepted until they ack
            elif a["name"] == "remove_member":
                self.known.discard(a["args"]["member_id"])
                self.active.discard(a["args"]["member_id"])

    @rule(who=st.integers(0, 9), kind=st.sampled_from(["snapshot", "set_user", "add", "remove", "bad_apply"]),
          whom=st.integers(0, 4))
    def propose(self, who: int, kind: str, whom: int) -> None:
        signer = self._signer(who)
        if kind == "snapshot":
            actions = [action("trigger_snapshot")]
        elif kind == "set_user":
            actions = [action("set_user", cert=USER.pem, user_data={"n": self.clock})]
        elif kind == "add":
            actions = [action("set_member", cert=POOL[whom].pem)]
        elif kind == "remove":
            actions = [action("remove_member", member_id=POOL[whom].id)]
        else:  # passes validation, throws in apply
            actions = [action("set_user", cert=USER.pem, user_data=1),
                       action("set_member_data", member_id="ee" * 32, member_data=1)]
        envelope = signer.proposal(actions, created_at=self._tick())
        if signer.member_id not in self.active:
            with pytest.raises(AuthenticationFailed):
                self.gov.propose_envelope(envelope)
            return
        outcome = self.gov.propose_envelope(envelope)
        assert outcome.proposal["proposalState"] == "Open"  # no ballots yet: never a majority
        self.envelopes.append(envelope)
        self.open[outcome.proposal_id] = {}
        self.actions[outcome.proposal_id] = actions

    @precondition(lambda self: bool(self.envelopes))
    @rule(index=st.integers(0, 50))
    def replay(self, index: int) -> None:
        envelope = self.envelopes[index % len(self.envelopes)]
        signer_id = cose.decode(envelope).protected[cose.HDR_KID].decode()
        if signer_id not in self.active:
            with pytest.raises(AuthenticationFailed):
                self.gov.propose_envelope(envelope)
        else:
            with pytest.raises(ProposalReplay):
                self.gov.propose_envelope(envelope)
            event("a replay was refused")

    @rule(who=st.integers(0, 4))
    def wrong_message_type(self, who: int) -> None:
        ballot_envelope = SIGNERS[who].ballot("ab" * 32, created_at=self._tick())
        with pytest.raises(AuthenticationFailed):
            verify_request(self.gov.store.read_tx(), ballot_envelope, MessageType.PROPOSAL, require_active=False)

    @precondition(lambda self: bool(self.actions))
    @rule(who=st.integers(0, 9), index=st.integers(0, 50), approve=st.sampled_from([True, True, True, False]),
          any_proposal=st.booleans())
    def vote(self, who: int, index: int, approve: bool, any_proposal: bool) -> None:
        # in creation order: proposal ids are random (ECDSA), so sorting them would make runs differ
        candidates = list(self.actions) if any_proposal or not self.open else list(self.open)
        pid = candidates[index % len(candidates)]
        signer = self._signer(who)
        envelope = signer.ballot(pid, APPROVE_BALLOT if approve else REJECT_BALLOT, created_at=self._tick())

        def submit() -> Any:
            return self.gov._run(lambda tx: submit_ballot(
                tx, verify_request(tx, envelope, MessageType.BALLOT, require_active=True), pid, signer.member_id))

        if signer.member_id not in self.active:
            with pytest.raises(AuthenticationFailed):
                submit()
            return
        if pid not in self.open:
            with pytest.raises((ProposalNotOpen, ProposalNotFound)):
                submit()
            return
        ballots = self.open[pid]
        if signer.member_id in ballots and ballots[signer.member_id] != approve:
            with pytest.raises(VoteAlreadyExists):
                submit()
            return
        ballots[signer.member_id] = approve
        in_favour = sum(ballots.values())
        majority = in_favour > len(self.active) // 2
        bad_apply = any(a["name"] == "set_member_data" for a in self.actions[pid])
        if majority and bad_apply:
            version = self.gov.store.version
            users = self.gov.store.read_tx().get(USERS_INFO, USER.id)
            with pytest.raises(ConstitutionFailure, match="Failed to apply"):
                submit()
            assert self.gov.store.version == version  # nothing of it was written
            event("a proposal failed in apply and left nothing behind")
            assert self.gov.store.read_tx().get(USERS_INFO, USER.id) == users
            del ballots[signer.member_id]
            return
        outcome = submit()
        state = outcome.proposal["proposalState"]
        assert state == ("Accepted" if majority else "Open")
        if majority:
            event("a proposal was accepted")
            assert sum(outcome.proposal["finalVotes"].values()) > len(self.active) // 2
            self.frozen[pid] = outcome.proposal
            del self.open[pid]
            self._apply_model(pid)
            for other in list(self.frozen):
                if other != pid:
                    del self.frozen[other]  # only the latest completed proposal stays readable

    @precondition(lambda self: bool(self.open))
    @rule(who=st.integers(0, 9), index=st.integers(0, 50))
    def withdraw(self, who: int, index: int) -> None:
        pid = list(self.open)[index % len(self.open)]
        signer = self._signer(who)
        envelope = signer.withdrawal(pid, created_at=self._tick())
        proposer = self.gov.store.read_tx().get_json("public:ccf.gov.proposals_info", pid)["proposer_id"]

        def run() -> Any:
            return self.gov._run(lambda tx: withdraw_proposal(
                tx, verify_request(tx, envelope, MessageType.WITHDRAWAL, require_active=True), pid))

        if signer.member_id not in self.active:
            with pytest.raises(AuthenticationFailed):
                run()
        elif signer.member_id != proposer:
            with pytest.raises(AuthorizationFailed, match="can only be withdrawn by proposer"):
                run()
        else:
            assert run().proposal["proposalState"] == "Withdrawn"
            del self.open[pid]
            self.frozen = {pid: self.gov.store.read_tx().get_json("public:ccf.gov.proposals_info", pid)}

    @rule(who=st.integers(0, 4))
    def activate(self, who: int) -> None:
        member = SIGNERS[who]
        if member.member_id not in self.known or member.member_id in self.active:
            return
        store = self.gov.store
        tx = store.begin()
        shown = update_state_digest(tx, verify_request(tx, member.state_digest_update(created_at=self._tick()),
                                                       MessageType.STATE_DIGEST, require_active=False),
                                    member.member_id, b"\x01" * 32)
        ack(tx, verify_request(tx, member.ack(shown, created_at=self._tick()), MessageType.ACK,
                               require_active=False), member.member_id)
        store.commit(tx)
        self.active.add(member.member_id)
        event("a member was activated")

    @invariant()
    def membership_matches_the_model(self) -> None:
        tx = self.gov.store.read_tx()
        active = {k.decode() for k, v in tx.items(MEMBERS_INFO) if orjson.loads(v)["status"] == "Active"}
        assert active == self.active

    @invariant()
    def final_votes_are_frozen(self) -> None:
        views = {p["proposalId"]: p for p in list_proposals(self.gov.store.read_tx())}
        for pid, frozen in self.frozen.items():
            if pid in views and frozen.get("finalVotes") is not None:
                assert views[pid]["finalVotes"] == frozen["finalVotes"]
                assert views[pid]["proposalState"] == frozen["proposalState"]
        for pid in self.open:
            assert views[pid]["proposalState"] == "Open"
            assert "finalVotes" not in views[pid]

    @invariant()
    def no_store_singleton_misuse(self) -> None:
        assert self.gov.store.read_tx().get("public:ccf.gov.service.info", SINGLETON_KEY) is None


TestGovernance = Governance.TestCase
TestGovernance.settings = settings(max_examples=max(60, settings.default.max_examples), stateful_step_count=30,
                                   deadline=None)
