"""Authentication policies: certificates looked up in the KV by their SHA-256, any-of lists, all_of."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization

from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_pem
from ledger.kv import Store
from ledger.tables import MEMBERS_CERTS, NODES_ENDORSED_CERTS, USERS_CERTS
from network.auth import AllOf, AnyCert, AuthenticationFailed, MemberCert, NoAuth, UserCert, authenticate
from network.http import Request

pytestmark = pytest.mark.unit

USER, MEMBER, STRANGER = PartyIdentity.create("user"), PartyIdentity.create("member"), PartyIdentity.create("x")
NODE = NodeIdentity.create().endorsed_by(ServiceIdentity.create())


def der(identity: PartyIdentity) -> bytes:
    return identity.cert.public_bytes(serialization.Encoding.DER)


def store() -> Store:
    s = Store()
    tx = s.begin()
    tx.put(USERS_CERTS, USER.id, USER.pem.encode())
    tx.put(MEMBERS_CERTS, MEMBER.id, MEMBER.pem.encode())
    assert NODE.endorsed is not None
    tx.put(NODES_ENDORSED_CERTS, NODE.node_id, cert_pem(NODE.endorsed).encode())
    s.commit(tx)
    return s


def request(cert: bytes | None) -> Request:
    return Request("GET", "/", {}, b"", cert)


def test_callers_are_identified_by_the_sha256_of_their_certificate() -> None:
    tx = store().read_tx()
    assert authenticate((UserCert(),), request(der(USER)), tx).id == USER.id
    assert authenticate((MemberCert(),), request(der(MEMBER)), tx).id == MEMBER.id
    assert authenticate((AnyCert(),), request(der(MEMBER)), tx).kind == "member"
    assert NODE.endorsed is not None
    node_der = NODE.endorsed.public_bytes(serialization.Encoding.DER)
    assert authenticate((AnyCert(),), request(node_der), tx).id == NODE.node_id
    assert authenticate((NoAuth(),), request(None), tx).kind == "anonymous"


def test_any_of_a_list_may_pass_and_all_failures_are_reported() -> None:
    tx = store().read_tx()
    assert authenticate((MemberCert(), UserCert()), request(der(USER)), tx).policy == "user_cert"
    with pytest.raises(AuthenticationFailed) as info:
        authenticate((UserCert(), MemberCert()), request(der(STRANGER)), tx)
    assert [d["auth_policy"] for d in info.value.details()] == ["user_cert", "member_cert"]
    assert info.value.code == "InvalidAuthenticationInfo"
    with pytest.raises(AuthenticationFailed, match="Invalid authentication"):
        authenticate((UserCert(),), request(None), tx)


def test_all_of_needs_every_policy() -> None:
    tx = store().read_tx()
    both = AllOf((UserCert(), NoAuth()))
    assert authenticate((both,), request(der(USER)), tx).parts[0].id == USER.id
    with pytest.raises(AuthenticationFailed):
        authenticate((AllOf((UserCert(), MemberCert())),), request(der(USER)), tx)
