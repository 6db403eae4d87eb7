"""Joining (the primary's side): quotes checked against governance, duplicate addresses refused, trusted at
once while Opening and Pending once Open, and the network's secrets only once the trust is committed."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization

from ledger.genesis import NodeNetwork, VirtualQuote
from ledger.identity import NodeIdentity, ServiceIdentity
from ledger.kv import Store
from ledger.secrets import LedgerSecrets
from ledger.tables import (
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    SERVICE_INFO,
    SINGLETON_KEY,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
)
from network.enclave.join import JoinRefused, JoinRequest, network_info, node_key_of, record_join

pytestmark = pytest.mark.unit

SERVICE = ServiceIdentity.create()


def _store(status: str) -> Store:
    store = Store()
    tx = store.begin()
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, {"status": status, "cert": SERVICE.pem})
    tx.put_json(VIRTUAL_MEASUREMENTS, "aa" * 32, "AllowedToJoin")
    tx.put_json(VIRTUAL_HOST_DATA, "bb" * 32, "")
    store.commit(tx)
    return store


def _request(node: NodeIdentity, measurement: str = "aa" * 32, n2n: str = "127.0.0.1:9001") -> JoinRequest:
    quote = VirtualQuote(measurement, "bb" * 32, node.node_id)
    return JoinRequest(NodeNetwork("127.0.0.1:8001", n2n).to_json(), dict(quote.quote_info()), "RSA PEM", "CSR PEM")


def _der(node: NodeIdentity) -> bytes:
    return node.self_signed.public_bytes(serialization.Encoding.DER)


def test_a_node_joining_an_opening_service_is_trusted_and_endorsed_and_gets_the_secrets_once_committed() -> None:
    store = _store("Opening")
    node = NodeIdentity.create()
    tx = store.begin()
    status, node_id = record_join(tx, _request(node), node_key_of(_der(node)), SERVICE, 1)
    assert (status, node_id) == ("Trusted", node.node_id)
    assert tx.get(NODES_ENDORSED_CERTS, node_id) is not None
    secrets = LedgerSecrets.fresh(1)
    assert network_info(store.read_tx(), node_id, SERVICE, secrets) is None  # not committed yet
    store.commit(tx)
    info = network_info(store.read_tx(), node_id, SERVICE, secrets)
    assert info is not None and info["service_certificate"] == SERVICE.pem
    assert info["ledger_secrets"] == [[1, base64.b64encode(secrets.latest.raw).decode()]]
    again = store.begin()
    assert record_join(again, _request(node), node_key_of(_der(node)), SERVICE, 1) == ("Trusted", node_id)
    assert not again.writes  # asking again changes nothing


def test_a_node_joining_an_open_service_waits_pending_without_an_endorsement() -> None:
    store = _store("Open")
    node = NodeIdentity.create()
    tx = store.begin()
    status, node_id = record_join(tx, _request(node), node_key_of(_der(node)), SERVICE, 1)
    store.commit(tx)
    assert status == "Pending" and store.read_tx().get(NODES_ENDORSED_CERTS, node_id) is None
    assert store.read_tx().get_json(NODES_INFO, node_id)["certificate_signing_request"] == "CSR PEM"
    assert network_info(store.read_tx(), node_id, SERVICE, LedgerSecrets.fresh(1)) is None


def test_unknown_measurements_foreign_quotes_and_taken_addresses_are_refused() -> None:
    store = _store("Opening")
    node = NodeIdentity.create()
    with pytest.raises(JoinRefused) as e:
        record_join(store.begin(), _request(node, measurement="cc" * 32), node_key_of(_der(node)), SERVICE, 1)
    assert e.value.code == "InvalidQuote"
    other = NodeIdentity.create()
    with pytest.raises(JoinRefused) as e:  # a quote bound to another node's key
        record_join(store.begin(), _request(other), node_key_of(_der(node)), SERVICE, 1)
    assert e.value.code == "InvalidQuote"
    tx = store.begin()
    record_join(tx, _request(node), node_key_of(_der(node)), SERVICE, 1)
    store.commit(tx)
    with pytest.raises(JoinRefused) as e:
        record_join(store.begin(), _request(other), node_key_of(_der(other)), SERVICE, 1)
    assert e.value.code == "NodeAlreadyExists"
    with pytest.raises(JoinRefused) as e:
        node_key_of(None)
    assert e.value.code == "InvalidAuthenticationInfo"
    with pytest.raises(JoinRefused, match="Missing field"):
        JoinRequest.parse({"node_info_network": {}})
