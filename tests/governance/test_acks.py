"""Member activation by state digest and ack."""

from __future__ import annotations

import orjson
import pytest

from governance.acks import ack, state_digest, update_state_digest
from governance.errors import AuthenticationFailed, InvalidResourceName, NotFound, StateDigestMismatch
from governance.requests import MessageType, verify_request
from ledger import cose
from ledger.identity import PartyIdentity
from ledger.kv import Store
from ledger.tables import (
    MEMBERS_ACKS,
    MEMBERS_CERTS,
    MEMBERS_ENCRYPTION_KEYS,
    MEMBERS_INFO,
    SERVICE_INFO,
    SINGLETON_KEY,
)

pytestmark = pytest.mark.unit

ROOT = bytes(range(32))


def setup(
    status: str = "Accepted", service_status: str = "Opening", recovery: bool = False
) -> tuple[Store, PartyIdentity]:
    member = PartyIdentity.create("new member")
    store = Store()
    tx = store.begin()
    tx.put(MEMBERS_CERTS, member.id, member.pem.encode())
    tx.put_json(MEMBERS_INFO, member.id, {"status": status})
    tx.put_json(MEMBERS_ACKS, member.id, {"state_digest": ""})
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, {"status": service_status})
    if recovery:
        tx.put(MEMBERS_ENCRYPTION_KEYS, member.id, b"-----BEGIN PUBLIC KEY-----...")
    store.commit(tx)
    return store, member


def signed(member: PartyIdentity, msg_type: str, payload: bytes = b"") -> bytes:
    return cose.sign1(member.key, {cose.HDR_KID: member.id.encode(), "ccf.gov.msg.type": msg_type,
                                   "ccf.gov.msg.created_at": 1}, payload)


def test_update_then_ack_activates_the_member() -> None:
    store, member = setup()
    tx = store.begin()
    with pytest.raises(AuthenticationFailed, match="active"):
        verify_request(tx, signed(member, "proposal", b"{}"), MessageType.PROPOSAL, require_active=True)
    request = verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST, require_active=False)
    shown = update_state_digest(tx, request, member.id, ROOT)
    assert shown == {"memberId": member.id, "stateDigest": ROOT.hex()}
    store.commit(tx)
    assert state_digest(store.read_tx(), member.id) == shown
    tx = store.begin()
    effects = ack(tx, verify_request(tx, signed(member, "ack", orjson.dumps(shown)), MessageType.ACK,
                                     require_active=False), member.id)
    store.commit(tx)
    assert effects == ()
    assert store.read_tx().get_json(MEMBERS_INFO, member.id)["status"] == "Active"
    verify_request(store.read_tx(), signed(member, "proposal", b"{}"), MessageType.PROPOSAL, require_active=True)


def test_an_ack_of_another_digest_is_refused() -> None:
    store, member = setup()
    tx = store.begin()
    update_state_digest(tx, verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST,
                                           require_active=False), member.id, ROOT)
    stale = orjson.dumps({"memberId": member.id, "stateDigest": "00" * 32})
    with pytest.raises(StateDigestMismatch):
        ack(tx, verify_request(tx, signed(member, "ack", stale), MessageType.ACK, require_active=False), member.id)
    assert tx.get_json(MEMBERS_INFO, member.id)["status"] == "Accepted"


def test_acks_are_for_the_signer_only_and_need_a_record() -> None:
    store, member = setup()
    other = PartyIdentity.create("other")
    tx = store.begin()
    request = verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST, require_active=False)
    with pytest.raises(InvalidResourceName):
        update_state_digest(tx, request, other.id, ROOT)
    with pytest.raises(NotFound):
        state_digest(tx, other.id)


def test_a_recovery_member_activated_on_an_open_service_asks_for_shares_to_be_dealt() -> None:
    store, member = setup(service_status="Open", recovery=True)
    tx = store.begin()
    shown = update_state_digest(tx, verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST,
                                                   require_active=False), member.id, ROOT)
    effects = ack(tx, verify_request(tx, signed(member, "ack", orjson.dumps(shown)), MessageType.ACK,
                                     require_active=False), member.id)
    assert [e.name for e in effects] == ["trigger_recovery_shares_refresh"]


def test_a_member_without_an_ack_record_cannot_update_it() -> None:
    store, member = setup()
    tx = store.begin()
    tx.remove(MEMBERS_ACKS, member.id)
    with pytest.raises(NotFound, match="No ACK record"):
        update_state_digest(tx, verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST,
                                               require_active=False), member.id, ROOT)


def test_an_inactive_recovery_member_cannot_be_activated_during_recovery() -> None:
    from governance.errors import InvalidRequest

    store, member = setup(service_status="Recovering", recovery=True)
    tx = store.begin()
    shown = update_state_digest(tx, verify_request(tx, signed(member, "state_digest"), MessageType.STATE_DIGEST,
                                                   require_active=False), member.id, ROOT)
    with pytest.raises(InvalidRequest, match="recovering"):
        ack(tx, verify_request(tx, signed(member, "ack", orjson.dumps(shown)), MessageType.ACK,
                               require_active=False), member.id)
