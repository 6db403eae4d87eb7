"""Signed governance requests: COSE Sign1 envelopes from consortium members, checked as CCF checks them.

Guarantees: a request is accepted only if it is a tagged COSE_Sign1 with an attached
payload; its algorithm is ES256, ES384 or ES512 and matches the signer's key; its `kid` (the ASCII hex of
the signer's certificate fingerprint, i.e. the member id) names a member registered in
`public:ccf.gov.members.certs`, who must be Active where the operation requires it; its
`ccf.gov.msg.type` is the one the operation expects; `ccf.gov.msg.created_at` is a non-negative integer;
ballots and withdrawals carry `ccf.gov.msg.proposal_id`; and the signature verifies with the member's
certificate. Requests made by the `ccf` package's `ccf_cose_sign1` are accepted byte for byte.

Failures raise `AuthenticationFailed` (CCF's 401 `InvalidAuthenticationInfo`) with CCF's messages.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from governance.errors import AuthenticationFailed
from governance.tables import COSE_HISTORY
from ledger import cose
from ledger.kv import Tx
from ledger.tables import MEMBERS_CERTS, MEMBERS_INFO

HDR_MSG_TYPE = "ccf.gov.msg.type"
HDR_CREATED_AT = "ccf.gov.msg.created_at"
HDR_PROPOSAL_ID = "ccf.gov.msg.proposal_id"
_ACCEPTED_ALGS = (cose.ALG_ES256, cose.ALG_ES384, cose.ALG_ES512)


class MessageType(enum.Enum):
    PROPOSAL = "proposal"
    BALLOT = "ballot"
    WITHDRAWAL = "withdrawal"
    ACK = "ack"
    STATE_DIGEST = "state_digest"
    RECOVERY_SHARE = "recovery_share"
    ENCRYPTED_RECOVERY_SHARE = "encrypted_recovery_share"

    @property
    def needs_proposal_id(self) -> bool:
        return self in (MessageType.BALLOT, MessageType.WITHDRAWAL)


@dataclass(frozen=True)
class SignedRequest:
    """A verified governance request."""

    member_id: str
    msg_type: MessageType
    created_at: int
    proposal_id: str | None
    payload: bytes
    signature: bytes  # the COSE signature bytes (proposal ids and replay keys hash them)
    envelope: bytes  # the whole COSE_Sign1, as received


def _header(protected: dict[Any, Any], label: str) -> Any:
    return protected.get(label)


def verify_request(tx: Tx, body: bytes, expected: MessageType, *, require_active: bool) -> SignedRequest:
    """Check `body` as a governance request of type `expected`, reading members from `tx`."""
    try:
        msg = cose.decode(body)
    except cose.CoseError as e:
        raise AuthenticationFailed(f"Failed to decode COSE Sign1: {e}") from None
    if msg.payload is None:
        raise AuthenticationFailed("COSE Sign1 payload must be attached")
    alg = msg.protected.get(cose.HDR_ALG)
    if alg not in _ACCEPTED_ALGS:
        raise AuthenticationFailed(f"Unsupported algorithm {alg!r} (ES256, ES384 or ES512 only)")
    kid = msg.protected.get(cose.HDR_KID)
    if not isinstance(kid, bytes):
        raise AuthenticationFailed("Missing kid in protected header")
    try:
        member_id = kid.decode("ascii")
    except UnicodeDecodeError:
        raise AuthenticationFailed("kid is not an ASCII member id") from None
    msg_type = _header(msg.protected, HDR_MSG_TYPE)
    if msg_type != expected.value:
        raise AuthenticationFailed(
            f"Found {HDR_MSG_TYPE} set to {msg_type!r}, expected {HDR_MSG_TYPE} to be {expected.value!r}")
    created_at = _header(msg.protected, HDR_CREATED_AT)
    if not isinstance(created_at, int) or isinstance(created_at, bool) or created_at < 0:
        raise AuthenticationFailed(f"Missing or invalid {HDR_CREATED_AT} in protected header")
    proposal_id = _header(msg.protected, HDR_PROPOSAL_ID)
    if expected.needs_proposal_id:
        if not isinstance(proposal_id, str) or not proposal_id:
            raise AuthenticationFailed(f"Missing {HDR_PROPOSAL_ID} in protected header")
    elif proposal_id is not None and not isinstance(proposal_id, str):
        raise AuthenticationFailed(f"Invalid {HDR_PROPOSAL_ID} in protected header")

    cert_pem = tx.get(MEMBERS_CERTS, member_id) if member_id else None
    if cert_pem is None:
        raise AuthenticationFailed("Signer is not a known member")
    if require_active:
        info = tx.get_json(MEMBERS_INFO, member_id)
        if not isinstance(info, dict) or info.get("status") != "Active":
            raise AuthenticationFailed("Signer is not an active member")
    key = x509.load_pem_x509_certificate(cert_pem).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise AuthenticationFailed("Member certificate does not hold an EC key")
    try:
        msg.verify(key)
    except cose.CoseError as e:
        raise AuthenticationFailed(f"Signature verification failed: {e}") from None
    return SignedRequest(member_id, expected, created_at, proposal_id, msg.payload, msg.signature, body)


def record_request(tx: Tx, request: SignedRequest) -> None:
    """Keep the member's latest accepted envelope in `public:ccf.gov.cose_history`, as CCF does."""
    tx.put(COSE_HISTORY, request.member_id, request.envelope)
