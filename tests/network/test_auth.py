"""Authentication policies: certificates looked up in the KV by their SHA-256, any-of lists, all_of."""

from __future__ import annotations

import base64
import time

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ledger import cose
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_pem
from ledger.kv import Store
from ledger.tables import MEMBERS_CERTS, NODES_ENDORSED_CERTS, USERS_CERTS
from network.enclave.auth import (
    JWT_KEYS,
    AllOf,
    AnyCert,
    AuthenticationFailed,
    JwtAuth,
    MemberCert,
    NoAuth,
    UserCert,
    UserCoseSign1,
    authenticate,
)
from network.enclave.http import Request

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


# --- jwt and user_cose_sign1 -----------------------------------------------------------------------------

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwk_of(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    if isinstance(key, rsa.RSAPrivateKey):
        n = key.public_key().public_numbers()
        return {"kid": kid, "kty": "RSA", "n": b64url(n.n.to_bytes(256, "big")), "e": b64url(n.e.to_bytes(3, "big"))}
    p = key.public_key().public_numbers()
    return {"kid": kid, "kty": "EC", "crv": "P-256", "x": b64url(p.x.to_bytes(32, "big")),
            "y": b64url(p.y.to_bytes(32, "big"))}


def token(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str, payload: dict[str, object]) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    signing_input = f"{b64url(orjson.dumps({'alg': alg, 'kid': kid}))}.{b64url(orjson.dumps(payload))}".encode()
    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    else:
        r, s = utils.decode_dss_signature(key.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    return f"{signing_input.decode()}.{b64url(signature)}"


def jwt_store() -> Store:
    s = store()
    tx = s.begin()
    tx.put_json(JWT_KEYS, "rsa1", [{"issuer": "https://issuer", "jwk": jwk_of(RSA_KEY, "rsa1")}])
    tx.put_json(JWT_KEYS, "ec1", [{"issuer": "https://issuer", "jwk": jwk_of(EC_KEY, "ec1")}])
    s.commit(tx)
    return s


def bearer(jwt: str) -> Request:
    return Request("GET", "/", {"authorization": f"Bearer {jwt}"}, b"", None)


def test_jwts_signed_by_governed_keys_authenticate_and_others_do_not() -> None:
    tx = jwt_store().read_tx()
    now = time.time()
    for key, kid in ((RSA_KEY, "rsa1"), (EC_KEY, "ec1")):
        caller = authenticate((JwtAuth(),), bearer(token(key, kid, {"sub": "alice", "iss": "https://issuer",
                                                                      "exp": now + 60})), tx)
        assert (caller.kind, caller.id, caller.claims[0]) == ("jwt", "alice", "https://issuer")
    rejected = {
        "expired": token(RSA_KEY, "rsa1", {"sub": "a", "exp": now - 1}),
        "not valid yet": token(RSA_KEY, "rsa1", {"sub": "a", "nbf": now + 600}),
        "issuer": token(RSA_KEY, "rsa1", {"sub": "a", "iss": "https://other"}),
        "signing key not found": token(RSA_KEY, "unknown", {"sub": "a"}),
        "does not verify": token(rsa.generate_private_key(public_exponent=65537, key_size=2048), "rsa1", {"sub": "a"}),
        "three dot-separated": "abc.def",
    }
    for reason, jwt in rejected.items():
        with pytest.raises(AuthenticationFailed) as info:
            authenticate((JwtAuth(),), bearer(jwt), tx)
        assert reason in info.value.details()[0]["message"], reason
    with pytest.raises(AuthenticationFailed):
        authenticate((JwtAuth(),), request(None), tx)


def test_user_cose_sign1_bodies_authenticate_registered_users() -> None:
    tx = store().read_tx()
    body = cose.sign1(USER.key, {cose.HDR_KID: USER.id.encode(), "ccf.msg.type": "log"}, b'{"id": 1}')
    caller = authenticate((UserCoseSign1(),),
                          Request("POST", "/", {"content-type": "application/cose"}, body, None), tx)
    assert caller.id == USER.id and caller.claims[0] == b'{"id": 1}'
    forged = cose.sign1(STRANGER.key, {cose.HDR_KID: USER.id.encode()}, b"{}")
    for req in (Request("POST", "/", {"content-type": "application/cose"}, forged, None),
                Request("POST", "/", {"content-type": "application/json"}, body, None),
                Request("POST", "/", {"content-type": "application/cose"}, b"junk", None)):
        with pytest.raises(AuthenticationFailed):
            authenticate((UserCoseSign1(),), req, tx)
