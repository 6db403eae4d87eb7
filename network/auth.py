"""Authentication policies for endpoints (ccf-api.md §4.2), as pure checks over a request and the KV.

Each policy returns the caller's identity or raises `PolicyFailed` with CCF's code and message. An endpoint
lists policies; any one may pass (the identity of the first that passes is the caller's). `AllOf` needs all
of its policies. When none passes, `authenticate` raises `AuthenticationFailed` carrying one detail per
policy tried, as CCF's 401 body lists them.

Covered here: `user_cert`, `member_cert`, `any_cert`, `no_auth`, `all_of`. (`jwt` and `user_cose_sign1`
come with the endpoint framework's next part.)
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ledger.kv import Tx
from ledger.tables import MEMBERS_CERTS, NODES_ENDORSED_CERTS, USERS_CERTS
from network.http import Request


@dataclass(frozen=True)
class Caller:
    policy: str
    kind: str  # "user", "member", "node", "anonymous", or "all_of"
    id: str | None = None
    parts: tuple[Caller, ...] = ()


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


@dataclass(frozen=True)
class UserCert:
    name: str = "user_cert"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        caller_id = _cert_id(request, self.name)
        if tx.get(USERS_CERTS, caller_id) is None:
            raise PolicyFailed(self.name, "InvalidAuthenticationInfo", "Could not find matching user certificate")
        return Caller(self.name, "user", caller_id)


@dataclass(frozen=True)
class MemberCert:
    name: str = "member_cert"

    def authenticate(self, request: Request, tx: Tx) -> Caller:
        caller_id = _cert_id(request, self.name)
        if tx.get(MEMBERS_CERTS, caller_id) is None:
            raise PolicyFailed(self.name, "InvalidAuthenticationInfo", "Could not find matching member certificate")
        return Caller(self.name, "member", caller_id)


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
