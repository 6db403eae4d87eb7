"""Names and encodings of the service maps the ledger core writes (CCF's doc/audit/builtin_maps.rst).

ServiceMap values are compact JSON with sorted keys (nlohmann `dump()`); single-value tables use the
key of 8 zero bytes; certificate maps hold raw PEM bytes; entity ids are their ASCII hex string.
"""

from __future__ import annotations

from typing import Any

import orjson

SINGLETON_KEY = bytes(8)

SIGNATURES = "public:ccf.internal.signatures"
COSE_SIGNATURES = "public:ccf.internal.cose_signatures"
TREE = "public:ccf.internal.tree"
SNAPSHOT_EVIDENCE = "public:ccf.internal.snapshot_evidence"
HISTORICAL_SECRETS = "public:ccf.internal.historical_encrypted_ledger_secret"
NODE_SECRETS = "public:ccf.internal.encrypted_ledger_secrets"

SERVICE_INFO = "public:ccf.gov.service.info"
SERVICE_CONFIG = "public:ccf.gov.service.config"
# After a disaster recovery: the previous service certificate (a JSON string of its PEM, as CCF writes it)
PREVIOUS_SERVICE_IDENTITY = "public:ccf.gov.service.previous_service_identity"
# At each opening: the service key's COSE endorsement of itself, or of its predecessor's key after a recovery
PREVIOUS_IDENTITY_ENDORSEMENT = "public:ccf.internal.previous_service_identity_endorsement"
CONSTITUTION = "public:ccf.gov.constitution"
NODES_INFO = "public:ccf.gov.nodes.info"
NODES_ENDORSED_CERTS = "public:ccf.gov.nodes.endorsed_certificates"
VIRTUAL_MEASUREMENTS = "public:ccf.gov.nodes.virtual.measurements"
VIRTUAL_HOST_DATA = "public:ccf.gov.nodes.virtual.host_data"
MEMBERS_CERTS = "public:ccf.gov.members.certs"
MEMBERS_INFO = "public:ccf.gov.members.info"
MEMBERS_ACKS = "public:ccf.gov.members.acks"
MEMBERS_ENCRYPTION_KEYS = "public:ccf.gov.members.encryption_public_keys"
USERS_CERTS = "public:ccf.gov.users.certs"
USERS_INFO = "public:ccf.gov.users.info"


def dump_json(value: Any) -> bytes:
    """nlohmann-style JSON: compact, object keys sorted."""
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
