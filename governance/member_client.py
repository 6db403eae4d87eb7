"""The member side: signing governance requests as `ccf_cose_sign1` does, and building common proposals.

`MemberSigner` writes COSE_Sign1 envelopes with the same protected-header layout as the `ccf` package's
`ccf_cose_sign1` (alg, kid = hex SHA-256 of the member's certificate, `ccf.gov.msg.type`, then
`ccf.gov.msg.proposal_id` when there is one, then `ccf.gov.msg.created_at`), so a node cannot tell them
apart; ECDSA signatures are randomised, so only the signature bytes differ.
"""

from __future__ import annotations

import base64
import datetime as dt
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from governance.requests import HDR_CREATED_AT, HDR_MSG_TYPE, HDR_PROPOSAL_ID, MessageType
from ledger import cose
from ledger.identity import cert_id, cert_pem, load_cert, load_key

APPROVE_BALLOT = "export function vote (proposal, proposerId) { return true }"
REJECT_BALLOT = "export function vote (proposal, proposerId) { return false }"


def now_seconds() -> int:
    return int(dt.datetime.now(dt.UTC).timestamp())


@dataclass(frozen=True)
class MemberSigner:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def from_pem(cls, key_pem: str | bytes, cert_pem_: str | bytes) -> MemberSigner:
        key, cert = load_key(key_pem), load_cert(cert_pem_)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
                serialization.Encoding.DER, spki):
            raise ValueError("the key does not match the certificate")
        return cls(key, cert)

    @property
    def member_id(self) -> str:
        return cert_id(self.cert)

    def sign(self, msg_type: MessageType, payload: bytes, *, created_at: int | None = None,
             proposal_id: str | None = None) -> bytes:
        if msg_type.needs_proposal_id and not proposal_id:
            raise ValueError(f"a {msg_type.value} needs a proposal id")
        protected: dict[Any, Any] = {cose.HDR_KID: self.member_id.encode(), HDR_MSG_TYPE: msg_type.value}
        if proposal_id:
            protected[HDR_PROPOSAL_ID] = proposal_id
        protected[HDR_CREATED_AT] = now_seconds() if created_at is None else created_at
        return cose.sign1(self.key, protected, payload)

    def proposal(self, actions: list[dict[str, Any]], **kw: Any) -> bytes:
        return self.sign(MessageType.PROPOSAL, orjson.dumps({"actions": actions}), **kw)

    def ballot(self, proposal_id: str, ballot: str = APPROVE_BALLOT, **kw: Any) -> bytes:
        return self.sign(MessageType.BALLOT, orjson.dumps({"ballot": ballot}), proposal_id=proposal_id, **kw)

    def withdrawal(self, proposal_id: str, **kw: Any) -> bytes:
        return self.sign(MessageType.WITHDRAWAL, b"", proposal_id=proposal_id, **kw)

    def state_digest_update(self, **kw: Any) -> bytes:
        return self.sign(MessageType.STATE_DIGEST, b"", **kw)

    def ack(self, state_digest: dict[str, Any], **kw: Any) -> bytes:
        return self.sign(MessageType.ACK, orjson.dumps(state_digest), **kw)

    def recovery_share(self, share: bytes, **kw: Any) -> bytes:
        """A decrypted recovery share, as `POST /gov/recovery/members/{id}:recover` takes it."""
        return self.sign(MessageType.RECOVERY_SHARE, orjson.dumps({"share": base64.b64encode(share).decode()}), **kw)


def action(name: str, **args: Any) -> dict[str, Any]:
    """A proposal's action; one without arguments has no "args" at all, as CCF's constitution wants (its
    `checkNone` refuses even an empty object)."""
    given = {k: v for k, v in args.items() if v is not None}
    return {"name": name, "args": given} if given else {"name": name}


def set_user(cert: x509.Certificate, user_data: Any = None) -> dict[str, Any]:
    return action("set_user", cert=cert_pem(cert), user_data=user_data)


def set_member(
    cert: x509.Certificate, encryption_pub_key: str | None = None, member_data: Any = None,
    recovery_role: str | None = None,
) -> dict[str, Any]:
    """Add a member; with `encryption_pub_key` a recovery member, whose `recovery_role` is "Participant" (the default:
    one share of the threshold) or "Owner" (the whole recovery key)."""
    return action("set_member", cert=cert_pem(cert), encryption_pub_key=encryption_pub_key, member_data=member_data,
                  recovery_role=recovery_role)


def transition_node_to_trusted(node_id: str, valid_from: str | None = None) -> dict[str, Any]:
    """Trust a node that joined an open service (it waits as Pending until then); `valid_from` is the ASN.1 UTC
    time its endorsed certificate is valid from (default: now)."""
    when = valid_from or dt.datetime.now(dt.UTC).strftime("%y%m%d%H%M%SZ")
    return action("transition_node_to_trusted", node_id=node_id, valid_from=when)


def transition_service_to_open(service_cert_pem: str, previous_service_cert_pem: str | None = None) -> dict[str, Any]:
    """Open the service; a recovered service names the identity it recovers (`previous_service_cert_pem`)."""
    return action("transition_service_to_open", next_service_identity=service_cert_pem,
                  previous_service_identity=previous_service_cert_pem)
