"""The genesis transaction of a new service (CCF's src/service/internal_tables_access.h).

It writes service info (status Opening, the service certificate), the initial members (Accepted),
the service configuration, the constitution, the first node as Trusted with its endorsed certificate,
and the node's virtual measurement and host data as allowed to join. What `read_ledger.py` needs
before the first signature (a Trusted node, its endorsed certificate, service info with `cert`) is all
here; node info deliberately carries no `cert` (`read_ledger.py` wants it only in the endorsed certificates).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from ledger.identity import NodeIdentity, ServiceIdentity, cert_id, cert_pem, load_cert
from ledger.kv import WriteSet
from ledger.tables import (
    CONSTITUTION,
    MEMBERS_ACKS,
    MEMBERS_CERTS,
    MEMBERS_ENCRYPTION_KEYS,
    MEMBERS_INFO,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_CONFIG,
    SERVICE_INFO,
    SINGLETON_KEY,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
    dump_json,
)

GENESIS_VIEW = 2
GENESIS_SEQNO = 1
VIRTUAL_FORMAT = "Insecure_Virtual"


@dataclass(frozen=True)
class GenesisMember:
    cert_pem: str
    member_data: Any = None
    encryption_public_key_pem: str | None = None  # recovery members only

    @property
    def member_id(self) -> str:
        return cert_id(load_cert(self.cert_pem))


@dataclass(frozen=True)
class VirtualQuote:
    """CCF's `Insecure_Virtual` quote: JSON with the code measurement, host data and report data."""

    measurement: str
    host_data: str
    report_data: str

    def raw(self) -> bytes:
        return dump_json({"host_data": self.host_data, "measurement": self.measurement,
                          "report_data": self.report_data})

    def quote_info(self) -> dict[str, str]:
        return {"endorsements": "", "format": VIRTUAL_FORMAT, "quote": base64.b64encode(self.raw()).decode()}

    @classmethod
    def parse(cls, raw: bytes) -> VirtualQuote:
        obj = orjson.loads(raw)
        return cls(str(obj["measurement"]), str(obj["host_data"]), str(obj["report_data"]))


@dataclass(frozen=True)
class ServiceConfig:
    recovery_threshold: int
    maximum_node_certificate_validity_days: int = 365
    maximum_service_certificate_validity_days: int = 365
    reconfiguration_type: str = "OneTransaction"
    recent_cose_proposals_window_size: int = 100

    def to_json(self) -> dict[str, Any]:
        return {
            "consensus": "CFT",
            "maximum_node_certificate_validity_days": self.maximum_node_certificate_validity_days,
            "maximum_service_certificate_validity_days": self.maximum_service_certificate_validity_days,
            "reconfiguration_type": self.reconfiguration_type,
            "recent_cose_proposals_window_size": self.recent_cose_proposals_window_size,
            "recovery_threshold": self.recovery_threshold,
        }


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} is not host:port")
    return host, port


@dataclass(frozen=True)
class NodeNetwork:
    """Where a node listens (CCF's NodeInfoNetwork): node-to-node and one primary RPC interface."""

    rpc_address: str = "127.0.0.1:8000"
    node_to_node_address: str = "127.0.0.1:8001"
    published_rpc_address: str | None = None
    published_node_to_node_address: str | None = None  # where others reach it, if not where it binds

    def to_json(self) -> dict[str, Any]:
        published = self.published_rpc_address or self.rpc_address
        rpc_host, rpc_port = _split(self.rpc_address)
        pub_host, pub_port = _split(published)
        node_host, node_port = _split(self.node_to_node_address)
        return {
            "node_to_node_interface": {"bind_address": self.node_to_node_address,
                                       "published_address": self.published_node_to_node_address
                                       or self.node_to_node_address},
            "rpc_interfaces": {"primary_rpc_interface": {"bind_address": self.rpc_address,
                                                         "published_address": published}},
            # the v1 mirror fields CCF still writes
            "nodehost": node_host, "nodeport": node_port, "rpchost": rpc_host, "rpcport": rpc_port,
            "pubhost": pub_host, "pubport": pub_port,
        }


@dataclass(frozen=True)
class GenesisNode:
    identity: NodeIdentity  # must carry its endorsed certificate
    quote: VirtualQuote
    encryption_public_key_pem: str
    network: NodeNetwork = field(default_factory=NodeNetwork)
    node_data: Any = None

    def info(self, status: str) -> dict[str, Any]:
        info: dict[str, Any] = {
            **self.network.to_json(),
            "code_digest": self.quote.measurement,
            "encryption_pub_key": self.encryption_public_key_pem,
            "ledger_secret_seqno": 0,
            "public_key": self.identity.key.public_key()
            .public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
            .decode(),
            "quote_info": self.quote.quote_info(),
            "status": status,
        }
        if self.node_data is not None:
            info["node_data"] = self.node_data
        return info


def genesis_writes(
    service: ServiceIdentity,
    node: GenesisNode,
    members: list[GenesisMember],
    constitution: str,
    config: ServiceConfig,
    service_data: Any = None,
    create_txid: str = f"{GENESIS_VIEW}.{GENESIS_SEQNO}",
) -> WriteSet:
    if node.identity.endorsed is None:
        raise ValueError("the genesis node needs its service-endorsed certificate")
    if not members:
        raise ValueError("a service starts with at least one member")
    service_info: dict[str, Any] = {
        "cert": cert_pem(service.cert),
        "current_service_create_txid": create_txid,
        "recovery_count": 0,
        "status": "Opening",
    }
    if service_data is not None:
        service_info["service_data"] = service_data
    writes: WriteSet = {
        SERVICE_INFO: {SINGLETON_KEY: dump_json(service_info)},
        SERVICE_CONFIG: {SINGLETON_KEY: dump_json(config.to_json())},
        CONSTITUTION: {SINGLETON_KEY: dump_json(constitution)},
        NODES_INFO: {node.identity.node_id.encode(): dump_json(node.info("Trusted"))},
        NODES_ENDORSED_CERTS: {node.identity.node_id.encode(): cert_pem(node.identity.endorsed).encode()},
        VIRTUAL_MEASUREMENTS: {node.quote.measurement.encode(): dump_json("AllowedToJoin")},
        VIRTUAL_HOST_DATA: {node.quote.host_data.encode(): dump_json("")},
        MEMBERS_CERTS: {},
        MEMBERS_INFO: {},
        MEMBERS_ACKS: {},
    }
    for m in members:
        mid = m.member_id.encode()
        writes[MEMBERS_CERTS][mid] = m.cert_pem.encode()
        info: dict[str, Any] = {"status": "Accepted"}
        if m.member_data is not None:
            info["member_data"] = m.member_data
        if m.encryption_public_key_pem is not None:
            info["recovery_role"] = "Participant"
            writes.setdefault(MEMBERS_ENCRYPTION_KEYS, {})[mid] = m.encryption_public_key_pem.encode()
        writes[MEMBERS_INFO][mid] = dump_json(info)
        writes[MEMBERS_ACKS][mid] = dump_json({"state_digest": ""})
    return writes
