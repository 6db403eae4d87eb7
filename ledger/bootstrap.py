"""Starting a new service's ledger: identities, the genesis transaction and the first signature.

`start_new_service` returns a `ServiceLedger` whose first two transactions are genesis (seqno 1, view 2)
and a signature (seqno 2), committed, as CCF's `ledger_1-2.committed` shows for a fresh service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.files import FsyncPolicy, LedgerFiles
from ledger.genesis import (
    GENESIS_VIEW,
    GenesisMember,
    GenesisNode,
    NodeNetwork,
    ServiceConfig,
    VirtualQuote,
    genesis_writes,
)
from ledger.identity import NodeIdentity, ServiceIdentity
from ledger.secrets import LedgerSecrets
from ledger.service_ledger import DEFAULT_CHUNK_SIZE, ServiceLedger


@dataclass(frozen=True)
class NodeKeys:
    """What a node holds privately besides the ledger: its identity and its encryption key."""

    identity: NodeIdentity
    encryption_key: rsa.RSAPrivateKey

    @property
    def encryption_public_pem(self) -> str:
        return self.encryption_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode()


def start_new_service(
    ledger_dir: str | None,
    members: list[GenesisMember],
    constitution: str,
    quote: VirtualQuote | None = None,
    *,
    service: ServiceIdentity | None = None,
    node: NodeKeys | None = None,
    config: ServiceConfig | None = None,
    network: NodeNetwork | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    fsync: FsyncPolicy = FsyncPolicy.BATCH,
    clock: Callable[[], float] | None = None,
    snapshot_dir: str | None = None,
    service_data: Any = None,
    files: LedgerFiles | None = None,
) -> ServiceLedger:
    service = service or ServiceIdentity.create()
    if node is None:
        node = NodeKeys(NodeIdentity.create(), rsa.generate_private_key(public_exponent=65537, key_size=2048))
    identity = node.identity if node.identity.endorsed else node.identity.endorsed_by(service)
    if quote is None:
        quote = VirtualQuote(measurement="00" * 32, host_data="00" * 32, report_data=identity.node_id)
    if files is None and ledger_dir is not None:
        files, _ = LedgerFiles.open(ledger_dir, fsync=fsync)
    if files is not None and files.last_seqno:
        raise ValueError(f"{files.directory} already holds a ledger (up to seqno {files.last_seqno})")
    recovery_members = sum(1 for m in members if m.encryption_public_key_pem)
    config = config or ServiceConfig(recovery_threshold=max(recovery_members, 1))
    kwargs: dict[str, Any] = {"chunk_size": chunk_size, "snapshot_dir": snapshot_dir}
    if clock is not None:
        kwargs["clock"] = clock
    ledger = ServiceLedger(node=identity, service=service, secrets=LedgerSecrets.fresh(1), files=files,
                           view=GENESIS_VIEW, **kwargs)
    genesis_node = GenesisNode(identity, quote, node.encryption_public_pem, network or NodeNetwork())
    ledger.commit_writes(genesis_writes(service, genesis_node, members, constitution, config, service_data))
    ledger.request_chunk()  # genesis and its signature make the first chunk, as in CCF (ledger_1-2)
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    return ledger
