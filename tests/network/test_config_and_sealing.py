"""The node's configuration file and its virtual sealing of secrets."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ledger.bootstrap import NodeKeys
from ledger.files import FsyncPolicy
from ledger.identity import DEFAULT_IDENTITY_CURVE, IDENTITY_CURVES, NodeIdentity, ServiceIdentity
from ledger.secrets import LedgerSecrets
from network.boundary import DEFAULT_IDENTITY_CURVE_ID, IDENTITY_CURVE_IDS, SEALED_FILE
from network.enclave.sealing import SealedState, SealingError, seal, unseal, unseal_data_dir
from network.host.config import ConfigError, load_config, parse_config

pytestmark = pytest.mark.unit

MINIMAL: dict[str, Any] = {"data_dir": "node", "service_certificate_file": "service_cert.pem"}


def test_a_minimal_configuration_takes_the_documented_defaults(tmp_path: Path) -> None:
    config = parse_config(MINIMAL, str(tmp_path))
    assert config.data_dir == str(tmp_path / "node")
    assert config.ledger_dir == str(tmp_path / "node" / "ledger")
    assert config.rpc_address == "127.0.0.1:8000" and config.host_port == ("127.0.0.1", 8000)
    assert config.enclave.signatures.every_tx == 5000 and config.enclave.signatures.every_ms == 20
    assert config.fsync is FsyncPolicy.BATCH and config.app == "app.logging:app" and config.start is None


def test_a_full_configuration_is_read_with_paths_relative_to_its_file(tmp_path: Path) -> None:
    obj = {**MINIMAL, "rpc_address": "127.0.0.1:9000",
           "start": {"members": [{"certificate_file": "m0.pem", "encryption_public_key_file": "m0_enc.pem"}],
                     "constitution": "sandbox", "service_configuration": {"recovery_threshold": 1}},
           "signatures": {"every_tx": 10, "every_ms": 5}, "ledger": {"fsync": "always", "chunk_size": 1000},
           "http": {"max_body_bytes": 100}, "log": {"format": "json", "level": "DEBUG"}}
    path = tmp_path / "cfg.json"
    path.write_bytes(orjson.dumps(obj))
    config = load_config(str(path))
    assert config.start is not None and config.start.members[0].certificate_file == str(tmp_path / "m0.pem")
    assert config.start.members[0].encryption_public_key_file == str(tmp_path / "m0_enc.pem")
    assert config.start.constitution == "sandbox"
    assert (config.enclave.signatures.every_tx, config.enclave.signatures.every_ms) == (10, 5)
    assert config.fsync is FsyncPolicy.ALWAYS and config.chunk_size == 1000
    assert config.enclave.retained_records == 65_536  # the default: not given here
    assert config.http.max_body_bytes == 100 and config.log.format == "json"


@pytest.mark.parametrize("change, field", [
    ({"data_dir": None}, "data_dir"),
    ({"rpc_address": "nohost"}, "rpc_address"),
    ({"rpc_address": 8000}, "rpc_address"),
    ({"signatures": {"every_tx": 0}}, "signatures"),
    ({"signatures": {"every_ms": "fast"}}, "every_ms"),
    ({"ledger": {"fsync": "sometimes"}}, "ledger.fsync"),
    ({"log": {"format": "xml"}}, "log.format"),
    ({"start": {"members": []}}, "start.members"),
    ({"start": {"members": [{"cert": "x"}]}}, "certificate_file"),
    ({"http": []}, "http"),
    ({"http": {"max_open_sessions_soft": "many"}}, "http.max_open_sessions_soft"),
    ({"http": {"max_open_sessions_soft": 20, "max_open_sessions_hard": 10}}, "max_open_sessions_hard"),
    ({"http": {"request_timeout": 0}}, "http limits"),
    ({"consensus": {"node_to_node_queue_limit": "x"}}, "consensus.node_to_node_queue_limit"),
    ({"ledger": {"retained_records": 0}}, "ledger.retained_records"),
    ({"ledger": {"retained_records": "all"}}, "ledger.retained_records"),
    ({"node_certificate": {"curve_id": "Secp521R1"}}, "node_certificate.curve_id"),
    ({"node_certificate": {"curve_id": 256}}, "node_certificate.curve_id"),
    ({"node_certificate": "P-256"}, "node_certificate"),
])
def test_a_bad_field_is_named_in_the_error(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        parse_config({**MINIMAL, **change})


def test_every_limit_of_the_rpc_interface_has_a_name_and_ccfs_defaults() -> None:
    default = parse_config(MINIMAL)
    assert (default.http.max_open_sessions_soft, default.http.max_open_sessions_hard) == (1000, 1010)
    assert (default.http.tls_handshake_timeout, default.http.request_timeout, default.http.idle_timeout) == \
        (10.0, 30.0, 60.0)
    assert (default.http.max_pipelined, default.http.max_unsent_bytes) == (64, 256 * 1024)
    assert default.enclave.node_to_node_queue_limit == 10_000
    names = {"max_open_sessions_soft": 5, "max_open_sessions_hard": 6, "tls_handshake_timeout": 1.5,
             "request_timeout": 2, "idle_timeout": 3, "max_pipelined": 7, "max_unsent_bytes": 8192}
    config = parse_config({**MINIMAL, "http": names, "consensus": {"node_to_node_queue_limit": 9}})
    assert {name: getattr(config.http, name) for name in names} == names
    assert config.enclave.node_to_node_queue_limit == 9


def test_the_node_key_curve_takes_ccfs_names_and_defaults_to_p256() -> None:
    assert parse_config(MINIMAL).enclave.identity_curve == "Secp256R1"
    chosen = parse_config({**MINIMAL, "node_certificate": {"curve_id": "Secp384R1"}})
    assert chosen.enclave.identity_curve == "Secp384R1"
    # the host knows the names only; the enclave maps each to its curve
    assert set(IDENTITY_CURVE_IDS) == set(IDENTITY_CURVES) and DEFAULT_IDENTITY_CURVE_ID == DEFAULT_IDENTITY_CURVE
    assert isinstance(NodeIdentity.create().key.curve, ec.SECP256R1)


def test_an_unreadable_or_non_json_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.json"))
    (tmp_path / "bad.json").write_text("{nope")
    with pytest.raises(ConfigError, match="not JSON"):
        load_config(str(tmp_path / "bad.json"))


def _state() -> SealedState:
    service = ServiceIdentity.create()
    node = NodeKeys(NodeIdentity.create().endorsed_by(service),
                    rsa.generate_private_key(public_exponent=65537, key_size=2048))
    secrets = LedgerSecrets.fresh(1)
    secrets.rekey(10)
    return SealedState(node, service, secrets)


def test_sealed_secrets_unseal_to_the_same_identities_and_secrets(tmp_path: Path) -> None:
    state = _state()
    sealed = seal(state, str(tmp_path))
    back = unseal(sealed, str(tmp_path))
    assert back.node.identity.node_id == state.node.identity.node_id
    assert back.node.identity.endorsed == state.node.identity.endorsed
    assert back.service.kid == state.service.kid and back.service.cert == state.service.cert
    assert [(s.start, s.raw) for s in back.secrets.all()] == [(s.start, s.raw) for s in state.secrets.all()]
    assert back.node.encryption_key.private_numbers() == state.node.encryption_key.private_numbers()
    # nothing secret is in the clear in the blob the host stores
    assert all(s.raw not in sealed for s in state.secrets.all())
    assert b"PRIVATE KEY" not in sealed


def test_damaged_or_foreign_sealed_state_is_refused(tmp_path: Path) -> None:
    (tmp_path / SEALED_FILE).write_bytes(seal(_state(), str(tmp_path)))
    assert unseal_data_dir(str(tmp_path)).secrets.latest.start == 11  # rekeyed at 10: in force from 11
    data = bytearray((tmp_path / SEALED_FILE).read_bytes())
    data[40] ^= 1
    (tmp_path / SEALED_FILE).write_bytes(bytes(data))
    with pytest.raises(SealingError, match="do not decrypt"):
        unseal_data_dir(str(tmp_path))
    os.unlink(tmp_path / "sealing.key")
    with pytest.raises(SealingError, match="missing"):
        unseal(bytes(data), str(tmp_path))
    with pytest.raises(SealingError, match="holds no node"):
        unseal_data_dir(str(tmp_path / "elsewhere"))
