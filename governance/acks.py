"""Member activation (CCF's src/node/gov/handlers/acks.h): a member proves it saw the current state, then is Active.

`update_state_digest` (a signed `state_digest` request, any member) stores the Merkle root of the state the
member is shown in `public:ccf.gov.members.acks` and returns `{"memberId", "stateDigest"}`; `ack` (a signed
`ack` request carrying exactly that object) checks the digest and makes an Accepted member Active. A member
who becomes Active while the service is Open and who has a recovery encryption key asks for the recovery
shares to be dealt again (the returned effect).
"""

from __future__ import annotations

from typing import Any

import orjson

from governance.errors import InvalidRequest, InvalidResourceName, NotFound, StateDigestMismatch
from governance.js_runtime import Effect
from governance.requests import SignedRequest, record_request
from ledger.kv import Tx
from ledger.tables import MEMBERS_ACKS, MEMBERS_ENCRYPTION_KEYS, MEMBERS_INFO, SERVICE_INFO, SINGLETON_KEY


def _check_member(request: SignedRequest, member_id: str) -> None:
    if request.member_id != member_id:
        raise InvalidResourceName("Authenticated member id does not match URL")


def state_digest(tx: Tx, member_id: str) -> dict[str, str]:
    record = tx.get_json(MEMBERS_ACKS, member_id)
    if not isinstance(record, dict):
        raise NotFound(f"No ACK record exists for member {member_id}.")
    return {"memberId": member_id, "stateDigest": str(record.get("state_digest", ""))}


def update_state_digest(tx: Tx, request: SignedRequest, member_id: str, current_root: bytes) -> dict[str, str]:
    """Record the digest of the current state for the member to sign in its ack."""
    _check_member(request, member_id)
    record = tx.get_json(MEMBERS_ACKS, member_id)
    if not isinstance(record, dict):
        raise NotFound(f"No ACK record exists for member {member_id}.")
    record = dict(record)
    record["state_digest"] = current_root.hex()
    tx.put_json(MEMBERS_ACKS, member_id, record)
    record_request(tx, request)
    return {"memberId": member_id, "stateDigest": record["state_digest"]}


def ack(tx: Tx, request: SignedRequest, member_id: str) -> tuple[Effect, ...]:
    """Activate the member if its signed digest is the one stored; returns node effects."""
    _check_member(request, member_id)
    stored = state_digest(tx, member_id)
    try:
        signed: Any = orjson.loads(request.payload)
        digest = signed["stateDigest"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise InvalidRequest('An ack carries {"stateDigest": "<hex>"} as returned by :update') from None
    if digest != stored["stateDigest"]:
        raise StateDigestMismatch(f"Submitted state digest is not valid: expected {stored['stateDigest']}")
    info = tx.get_json(MEMBERS_INFO, member_id)
    if not isinstance(info, dict):
        raise NotFound(f"Member {member_id} does not exist.")
    if info.get("status") == "Active":
        record_request(tx, request)
        return ()
    service = tx.get_json(SERVICE_INFO, SINGLETON_KEY)
    recovering = isinstance(service, dict) and service.get("status") in ("Recovering", "WaitingForRecoveryShares")
    if recovering and tx.has(MEMBERS_ENCRYPTION_KEYS, member_id):
        raise InvalidRequest(f"Member {member_id} cannot be activated while the service is recovering: an inactive "
                             "recovery member's share would be missing from the recovery in progress")
    record_request(tx, request)
    tx.put_json(MEMBERS_INFO, member_id, {**info, "status": "Active"})
    if tx.has(MEMBERS_ENCRYPTION_KEYS, member_id) and isinstance(service, dict) and service.get("status") == "Open":
        return (Effect("trigger_recovery_shares_refresh", {}),)
    return ()
