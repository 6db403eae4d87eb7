"""Authentication policies for endpoints (CCF's `*_auth_policy`), as pure checks over a request and the KV.

Each policy returns the caller's identity or raises `PolicyFailed` with CCF's code and message. An endpoint
lists policies; any one may pass (the identity of the first that passes is the caller's). `AllOf` needs all
of its policies. When none passes, `authenticate` raises `AuthenticationFailed` carrying one detail per
policy tried, as CCF's 401 body lists them.

Covered: `user_cert`, `member_cert`, `any_cert`, `no_auth`, `all_of`, `jwt` (keys from governance's JWT
tables, RS256/384/512 and ES256/384/512) and `user_cose_sign1`.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from ledger import cose
from ledger.kv import Tx
from ledger.tables import MEMBERS_CERTS, NODES_ENDORSED_CERTS, USERS_CERTS
from network.enclave.http import Request


@dataclass(frozen=True)
class Caller:
    policy: str
    kind: str  # "user", "member", "node", "jwt", "anonymous", or "all_of"
    id: str | None = None
    parts: tuple[Caller, ...] = ()
    claims: tuple[Any, ...] = ()  # jwt: (issuer, payload, header); user_cose_sign1: (payload bytes, protected header)


class PolicyFailed(Exception):
    def __init__(self, policy: str, code: str, message: str) -> None:
        super().__init__(message)
        self.policy = policy
        self.code = code
        self.message = message


class AuthenticationFailed(Exception):
    """No policy of the endpoint passed (CCF answers 401 InvalidAuthenticationInfo with the details)."""

    code = "InvalidAuthenticationInfo"

    def __init__(self, failures: list[PolicyFailed]) -> None:
        super().__init__("Invalid authentication credentials.")
        self.failures = failures

    def details(self) -> list[dict[str, str]]:
        return [{"auth_policy": f.policy, "code": f.code, "message": f.message} for f in self.failures]


class AuthPolicy(Protocol):
    @property
    def name(self) -> str: ...

    def authenticate(self, request: Request, tx: Tx) -> Caller: ...


def _cert_id(request: Request, policy: str) -> str:
    if request.peer_cert is None:
        raise PolicyFailed(policy, "InvalidAuthenticationInfo", "No TLS client certificate was presented")
    return hashlib.sha256(request.peer_cert).hexdigest()


def _registered(request: Request, tx: Tx, policy: str, table: str, kind: str) -> Caller:
    caller_id = _cert_id(request, policy)
    if tx.get(table, caller_id) is None:
        raise PolicyFailed(policy, "InvalidAuthenticationInfo", f"Could not find matching {kind} certificate")
    return Caller(policy, kind, caller_id)


@dataclass(frozen=True)
class UserCert:
    name: str = "user_cert"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        return _registered(request, tx, self.name, USERS_CERTS, "user")


@dataclass(frozen=True)
class MemberCert:
    name: str = "member_cert"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        return _registered(request, tx, self.name, MEMBERS_CERTS, "member")


@dataclass(frozen=True)
class AnyCert:
    """A user's, a member's, or a node's certificate (nodes are known by their endorsed certificate)."""

    name: str = "any_cert"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        caller_id = _cert_id(request, self.name)
        if tx.get(USERS_CERTS, caller_id) is not None:
            return Caller(self.name, "user", caller_id)
        if tx.get(MEMBERS_CERTS, caller_id) is not None:
            return Caller(self.name, "member", caller_id)
        assert request.peer_cert is not None
        pem = x509.load_der_x509_certificate(request.peer_cert).public_bytes(serialization.Encoding.PEM)
        for node_id, endorsed in tx.items(NODES_ENDORSED_CERTS):
            if endorsed == pem:
                return Caller(self.name, "node", node_id.decode())
        raise PolicyFailed(self.name, "InvalidAuthenticationInfo", "Could not find matching user, member or node "
                                                                   "certificate")


@dataclass(frozen=True)
class NoAuth:
    name: str = "no_auth"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        return Caller(self.name, "anonymous")


@dataclass(frozen=True)
class AllOf:
    policies: tuple[AuthPolicy, ...]

    @property
    def name(self) -> str:
        return "all_of:" + "+".join(p.name for p in self.policies)

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        parts = tuple(p.authenticate(request, tx) for p in self.policies)
        return Caller(self.name, "all_of", None, parts)


def authenticate(policies: tuple[AuthPolicy, ...], request: Request, tx: Tx) -> Caller:
    """The caller, by the first policy that passes; `AuthenticationFailed` with every failure otherwise."""
    failures: list[PolicyFailed] = []
    for policy in policies:
        try:
            return policy.authenticate(request, tx)
        except PolicyFailed as e:
            failures.append(e)
    raise AuthenticationFailed(failures)


# --- JWT bearer tokens ---------------------------------------------------------------------------------

JWT_KEYS = "public:ccf.gov.jwt.public_signing_keys_metadata_v2"
_JWT_ALGS = {"RS256": hashes.SHA256(), "RS384": hashes.SHA384(), "RS512": hashes.SHA512(),
             "ES256": hashes.SHA256(), "ES384": hashes.SHA384(), "ES512": hashes.SHA512()}
_EC_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _jwk_key(jwk: dict[str, Any]) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
    if jwk.get("x5c"):
        key = x509.load_der_x509_certificate(base64.b64decode(jwk["x5c"][0])).public_key()
        if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError("unsupported key in x5c")
        return key
    if jwk.get("kty") == "RSA":
        return rsa.RSAPublicNumbers(int.from_bytes(_b64url(jwk["e"]), "big"),
                                    int.from_bytes(_b64url(jwk["n"]), "big")).public_key()
    if jwk.get("kty") == "EC":
        curve = _EC_CURVES[jwk["crv"]]
        return ec.EllipticCurvePublicNumbers(int.from_bytes(_b64url(jwk["x"]), "big"),
                                             int.from_bytes(_b64url(jwk["y"]), "big"), curve).public_key()
    raise ValueError(f"unsupported key type {jwk.get('kty')}")


@dataclass(frozen=True)
class JwtAuth:
    """`Authorization: Bearer <JWT>` signed by a key of a governed issuer (`set_jwt_issuer`), not expired.

    `now` gives the time for `exp`/`nbf` (the frontend's clock; authentication is not replicated).
    """

    now: Callable[[], float] = time.time
    name: str = "jwt"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        def fail(message: str) -> PolicyFailed:
            return PolicyFailed(self.name, "InvalidAuthenticationInfo", message)

        header = request.headers.get("authorization", "")
        if not header.startswith("Bearer "):
            raise fail("Authorization header must be 'Bearer <token>'")
        parts = header[7:].strip().split(".")
        if len(parts) != 3:
            raise fail("Malformed JWT: expected three dot-separated parts")
        try:
            jwt_header = orjson.loads(_b64url(parts[0]))
            payload = orjson.loads(_b64url(parts[1]))
            signature = _b64url(parts[2])
        except (ValueError, orjson.JSONDecodeError):
            raise fail("Malformed JWT: parts are not base64url JSON") from None
        if not isinstance(jwt_header, dict) or not isinstance(payload, dict):
            raise fail("Malformed JWT: header and payload must be objects")
        alg, kid = jwt_header.get("alg"), jwt_header.get("kid")
        if alg not in _JWT_ALGS:
            raise fail(f"Unsupported JWT algorithm {alg!r}")
        entries = tx.get_json(JWT_KEYS, str(kid)) if isinstance(kid, str) else None
        if not entries:
            raise fail(f"JWT signing key not found: {kid!r}")
        signed = f"{parts[0]}.{parts[1]}".encode()
        for entry in entries:
            try:
                key = _jwk_key(entry["jwk"])
                if isinstance(key, rsa.RSAPublicKey) and alg.startswith("RS"):
                    key.verify(signature, signed, padding.PKCS1v15(), _JWT_ALGS[alg])
                elif isinstance(key, ec.EllipticCurvePublicKey) and alg.startswith("ES"):
                    size = (key.curve.key_size + 7) // 8
                    r, s = int.from_bytes(signature[:size], "big"), int.from_bytes(signature[size:], "big")
                    key.verify(utils.encode_dss_signature(r, s), signed, ec.ECDSA(_JWT_ALGS[alg]))
                else:
                    continue
            except (InvalidSignature, ValueError, KeyError, TypeError):
                continue
            issuer = entry.get("issuer")
            if "iss" in payload and payload["iss"] != issuer:
                raise fail("JWT issuer does not match the key's issuer")
            now = self.now()
            if isinstance(payload.get("exp"), int | float) and now >= payload["exp"]:
                raise fail("JWT has expired")
            if isinstance(payload.get("nbf"), int | float) and now < payload["nbf"]:
                raise fail("JWT is not valid yet")
            return Caller(self.name, "jwt", str(payload.get("sub", "")), claims=(issuer, payload, jwt_header))
        raise fail("JWT signature does not verify with any key of that kid")


# --- COSE Sign1 signed requests by users -----------------------------------------------------------------


@dataclass(frozen=True)
class UserCoseSign1:
    """The body is a COSE_Sign1 by a registered user (kid = user id); the caller gets its payload."""

    name: str = "user_cose_sign1"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        def fail(message: str) -> PolicyFailed:
            return PolicyFailed(self.name, "InvalidAuthenticationInfo", message)

        if request.headers.get("content-type", "").split(";")[0].strip() != "application/cose":
            raise fail("Content-Type must be application/cose")
        try:
            msg = cose.decode(request.body)
        except cose.CoseError as e:
            raise fail(f"Failed to decode COSE Sign1: {e}") from None
        kid = msg.protected.get(cose.HDR_KID)
        user_id = kid.decode("ascii", "replace") if isinstance(kid, bytes) else ""
        pem = tx.get(USERS_CERTS, user_id) if user_id else None
        if pem is None:
            raise fail("Signer is not a known user")
        key = x509.load_pem_x509_certificate(pem).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or msg.payload is None:
            raise fail("Unsupported signer key or detached payload")
        try:
            msg.verify(key)
        except cose.CoseError as e:
            raise fail(f"Signature verification failed: {e}") from None
        return Caller(self.name, "user", user_id, claims=(msg.payload, msg.protected))
