"""Joining a service (CCF's src/node/rpc/node_frontend.h): the primary's side and what a trusted joiner receives.

`record_join` runs in the primary's transaction for `POST /node/join`. The caller is the joining node: the
TLS client certificate it presents is its self-signed node certificate, and its node id is the digest of
that certificate's public key. The quote must be bound to that key and allowed by governance (400
`InvalidQuote` otherwise); a node-to-node address already used by another node is 400 `NodeAlreadyExists`.
While the service is Opening (or Recovering) the node is Trusted at once, with its certificate endorsed by
the service; once Open it stays Pending until members pass `transition_node_to_trusted`.

`network_info` is what a joiner gets once its Trusted status is committed: the service identity (its key
included: every trusted node signs as the service), its endorsed certificate and the ledger secrets. It is
only ever sent over the TLS session the joiner opened to the service, pinned to the service certificate.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.identity import ServiceIdentity, cert_pem, endorse, key_id, key_pem
from ledger.kv import Tx
from ledger.secrets import LedgerSecrets
from ledger.tables import NODES_ENDORSED_CERTS, NODES_INFO, SERVICE_INFO, SINGLETON_KEY
from network.enclave.attestation import AttestationError, verify_quote

OPENING_STATES = ("Opening", "Recovering")


class JoinRefused(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class JoinRequest:
    node_info_network: dict[str, Any]
    quote_info: dict[str, Any]
    public_encryption_key: str
    certificate_signing_request: str
    node_data: Any = None

    @classmethod
    def parse(cls, body: Any) -> JoinRequest:
        if not isinstance(body, dict):
            raise JoinRefused("InvalidInput", "A join request is a JSON object")
        try:
            network, quote = body["node_info_network"], body["quote_info"]
            enc, csr = body["public_encryption_key"], body["certificate_signing_request"]
        except KeyError as e:
            raise JoinRefused("InvalidInput", f"Missing field {e.args[0]!r} in the join request") from None
        if not (isinstance(network, dict) and isinstance(quote, dict) and isinstance(enc, str)
                and isinstance(csr, str)):
            raise JoinRefused("InvalidInput", "Malformed join request fields")
        return cls(network, quote, enc, csr, body.get("node_data"))

    def to_json(self) -> dict[str, Any]:
        return {"node_info_network": self.node_info_network, "quote_info": self.quote_info,
                "public_encryption_key": self.public_encryption_key,
                "certificate_signing_request": self.certificate_signing_request, "node_data": self.node_data}


def node_key_of(cert_der: bytes | None) -> ec.EllipticCurvePublicKey:
    if cert_der is None:
        raise JoinRefused("InvalidAuthenticationInfo", "A joining node presents its certificate over TLS")
    key = x509.load_der_x509_certificate(cert_der).public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise JoinRefused("InvalidAuthenticationInfo", "A node key is an EC key")
    return key


def _node_to_node_address(network: dict[str, Any]) -> Any:
    return network.get("node_to_node_interface", {}).get("published_address")


def record_join(tx: Tx, request: JoinRequest, node_key: ec.EllipticCurvePublicKey, service: ServiceIdentity,
                latest_secret_seqno: int) -> tuple[str, str]:
    """Record (or look up) the joining node; returns (its status, its id)."""
    node_id = key_id(node_key)
    existing = tx.get_json(NODES_INFO, node_id)
    if isinstance(existing, dict):
        return str(existing.get("status")), node_id
    try:
        quote = verify_quote(tx, request.quote_info, node_key)
    except AttestationError as e:
        raise JoinRefused("InvalidQuote", str(e)) from None
    address = _node_to_node_address(request.node_info_network)
    for _, raw in tx.items(NODES_INFO):
        other = orjson.loads(raw)
        if isinstance(other, dict) and other.get("status") != "Retired" and address is not None \
                and _node_to_node_address(other) == address:
            raise JoinRefused("NodeAlreadyExists", f"A node with the node-to-node address {address} already exists")
    service_info = tx.get_json(SERVICE_INFO, SINGLETON_KEY) or {}
    trusted = service_info.get("status") in OPENING_STATES
    info: dict[str, Any] = {
        **request.node_info_network,
        "certificate_signing_request": request.certificate_signing_request,
        "code_digest": quote.measurement,
        "encryption_pub_key": request.public_encryption_key,
        "ledger_secret_seqno": latest_secret_seqno if trusted else 0,
        "public_key": node_key.public_bytes(serialization.Encoding.PEM,
                                            serialization.PublicFormat.SubjectPublicKeyInfo).decode(),
        "quote_info": request.quote_info,
        "status": "Trusted" if trusted else "Pending",
    }
    if request.node_data is not None:
        info["node_data"] = request.node_data
    tx.put_json(NODES_INFO, node_id, info)
    if trusted:
        endorsed = endorse(service.key, service.cert, node_key, "CCF Node")
        tx.put(NODES_ENDORSED_CERTS, node_id, cert_pem(endorsed).encode())
    return info["status"], node_id


def network_info(committed: Tx, node_id: str, service: ServiceIdentity,
                 secrets: LedgerSecrets) -> dict[str, Any] | None:
    """What a joiner receives once its Trusted status is committed (None before)."""
    info = committed.get_json(NODES_INFO, node_id)
    endorsed = committed.get(NODES_ENDORSED_CERTS, node_id)
    if not isinstance(info, dict) or info.get("status") != "Trusted" or endorsed is None:
        return None
    nodes = {}
    for key, raw in committed.items(NODES_INFO):
        other = orjson.loads(raw)
        address = _node_to_node_address(other)
        if other.get("status") == "Trusted" and address and key.decode() != node_id:
            nodes[key.decode()] = address
    return {"service_certificate": service.pem, "service_key": key_pem(service.key),
            "endorsed_certificate": endorsed.decode(),
            "ledger_secrets": [[s.start, base64.b64encode(s.raw).decode()] for s in secrets.all()],
            "nodes": nodes}  # where to reach the trusted nodes until the joiner's own state says
