"""Virtual sealing: a node's secrets kept in its data directory so that it can restart on the same service.

What is sealed: the node's key and certificates, its encryption key, the service key and certificate, and
every ledger secret. `seal` encrypts them (AES-256-GCM) into a blob that the host stores
(`HostCalls.store_sealed`) and hands back at the next start; the host never holds them in the clear.

The sealing key is the virtual platform's: a TEE derives it from the CPU and the enclave's measurement;
virtual mode keeps it in `sealing.key` in the node's data directory, which only this module reads. This is
exactly as insecure as the virtual quote: anyone who can read the data directory can unseal, and it says so.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.bootstrap import NodeKeys
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, key_pem, load_cert, load_key
from ledger.secrets import LedgerSecret, LedgerSecrets
from network.boundary import SEALED_FILE

KEY_FILE = "sealing.key"
_AAD = b"ccf-py virtual sealing v1"


class SealingError(Exception):
    """The sealed secrets are missing, damaged, or sealed under another key."""


@dataclass(frozen=True)
class SealedState:
    node: NodeKeys
    service: ServiceIdentity
    secrets: LedgerSecrets


def _write_atomically(path: str, data: bytes, mode: int = 0o600) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _sealing_key(directory: str, create: bool) -> bytes:
    path = os.path.join(directory, KEY_FILE)
    if not os.path.exists(path):
        if not create:
            raise SealingError(f"{path} is missing: the node's secrets cannot be unsealed")
        _write_atomically(path, os.urandom(32))
    with open(path, "rb") as f:
        key = f.read()
    if len(key) != 32:
        raise SealingError(f"{path} is not a 32-byte sealing key")
    return key


def seal(state: SealedState, key_dir: str) -> bytes:
    """The sealed blob of `state` (the platform's sealing key is made in `key_dir` the first time)."""
    node = state.node.identity
    body = {
        "node_key": key_pem(node.key),
        "node_self_signed": cert_pem(node.self_signed),
        "node_endorsed": cert_pem(node.endorsed) if node.endorsed is not None else None,
        "encryption_key": state.node.encryption_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode(),
        "service_key": key_pem(state.service.key),
        "service_cert": cert_pem(state.service.cert),
        "ledger_secrets": [[s.start, base64.b64encode(s.raw).decode()] for s in state.secrets.all()],
    }
    nonce = os.urandom(12)
    return nonce + AESGCM(_sealing_key(key_dir, create=True)).encrypt(nonce, orjson.dumps(body), _AAD)


def unseal(sealed: bytes, key_dir: str) -> SealedState:
    """The state sealed in `sealed`; `SealingError` if it was sealed under another key or is damaged."""
    try:
        plain = AESGCM(_sealing_key(key_dir, create=False)).decrypt(sealed[:12], sealed[12:], _AAD)
        body = orjson.loads(plain)
        encryption_key = serialization.load_pem_private_key(body["encryption_key"].encode(), None)
        if not isinstance(encryption_key, rsa.RSAPrivateKey):
            raise SealingError("the sealed encryption key is not RSA")
        endorsed = body["node_endorsed"]
        node = NodeIdentity(load_key(body["node_key"]), load_cert(body["node_self_signed"]),
                            load_cert(endorsed) if endorsed else None)
        service = ServiceIdentity(load_key(body["service_key"]), load_cert(body["service_cert"]))
        secrets = LedgerSecrets([LedgerSecret.create(int(start), base64.b64decode(raw))
                                 for start, raw in body["ledger_secrets"]])
    except InvalidTag:
        raise SealingError(f"the sealed secrets do not decrypt under {os.path.join(key_dir, KEY_FILE)}: damaged, "
                           "or sealed by another node") from None
    except (KeyError, TypeError, ValueError) as e:
        raise SealingError(f"the sealed secrets are not a sealed node state: {e}") from None
    return SealedState(NodeKeys(node, encryption_key), service, secrets)


def unseal_data_dir(directory: str) -> SealedState:
    """Unseal what a node keeps in its data directory (virtual mode: its sealing key is there too)."""
    try:
        with open(os.path.join(directory, SEALED_FILE), "rb") as f:
            sealed = f.read()
    except FileNotFoundError:
        raise SealingError(f"{os.path.join(directory, SEALED_FILE)} is missing: this data directory holds no "
                           "node") from None
    return unseal(sealed, directory)
