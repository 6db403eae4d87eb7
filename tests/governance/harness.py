"""A governance harness for tests: a store with active members and a constitution, where each call is one
transaction (abandoned if it raises, as the node does), signed the way members sign."""

from __future__ import annotations

import hashlib
import itertools
from typing import Any

import orjson

from governance.proposals import NodeServices, Outcome, create_proposal, submit_ballot, withdraw_proposal
from governance.requests import MessageType, verify_request
from ledger import cose
from ledger.identity import PartyIdentity
from ledger.kv import Store, Tx
from ledger.tables import CONSTITUTION, MEMBERS_CERTS, MEMBERS_INFO, SINGLETON_KEY
from tests.governance.constitutions import CCF_STYLE

APPROVE = '{"ballot": "export function vote (proposal, proposerId) { return true }"}'
REJECT = '{"ballot": "export function vote (proposal, proposerId) { return false }"}'
GREETINGS = "public:app.greetings"
_MEMBERS = [PartyIdentity.create(f"member{i}") for i in range(3)]


class Gov:
    """A store with three active members and a constitution; each call is one transaction."""

    def __init__(self, constitution: str = CCF_STYLE, members: list[PartyIdentity] = _MEMBERS,
                 node: NodeServices | None = None) -> None:
        self.store = Store()
        self.node = node or NodeServices()
        self.members = members
        self.clock = itertools.count(1_800_000_000)
        tx = self.store.begin()
        tx.put_json(CONSTITUTION, SINGLETON_KEY, constitution)
        for m in members:
            tx.put(MEMBERS_CERTS, m.id, m.pem.encode())
            tx.put_json(MEMBERS_INFO, m.id, {"status": "Active"})
        self.store.commit(tx)

    def _sign(self, member: PartyIdentity, payload: bytes, msg_type: str, proposal_id: str | None = None,
              created_at: int | None = None) -> bytes:
        headers: dict[Any, Any] = {cose.HDR_KID: member.id.encode(), "ccf.gov.msg.type": msg_type,
                                   "ccf.gov.msg.created_at": next(self.clock) if created_at is None else created_at}
        if proposal_id is not None:
            headers["ccf.gov.msg.proposal_id"] = proposal_id
        return cose.sign1(member.key, headers, payload)

    def _run(self, action: Any) -> Any:
        tx = self.store.begin()
        try:
            result = action(tx)
        except Exception:
            tx.abandon()
            raise
        self.store.commit(tx)
        return result

    def root(self, tx: Tx) -> bytes:
        return hashlib.sha256(b"root at %d" % tx.read_version).digest()

    def propose(self, member: PartyIdentity, body: dict[str, Any] | bytes, **kw: Any) -> Outcome:
        payload = body if isinstance(body, bytes) else orjson.dumps(body)
        envelope = self._sign(member, payload, "proposal", **kw)
        return self._run(lambda tx: create_proposal(
            tx, verify_request(tx, envelope, MessageType.PROPOSAL, require_active=True), self.root(tx), self.node))

    def propose_envelope(self, envelope: bytes) -> Outcome:
        return self._run(lambda tx: create_proposal(
            tx, verify_request(tx, envelope, MessageType.PROPOSAL, require_active=True), self.root(tx), self.node))

    def vote(self, member: PartyIdentity, pid: str, ballot_body: str = APPROVE, url_member: str | None = None,
             signed_pid: str | None = None) -> Outcome:
        envelope = self._sign(member, ballot_body.encode(), "ballot", signed_pid or pid)
        return self._run(lambda tx: submit_ballot(
            tx, verify_request(tx, envelope, MessageType.BALLOT, require_active=True), pid, url_member or member.id,
            self.node))

    def withdraw(self, member: PartyIdentity, pid: str) -> Outcome | None:
        envelope = self._sign(member, b"", "withdrawal", pid)
        return self._run(lambda tx: withdraw_proposal(
            tx, verify_request(tx, envelope, MessageType.WITHDRAWAL, require_active=True), pid))

    def greeting(self) -> Any:
        return self.store.read_tx().get_json(GREETINGS, "greeting")


