"""How the enclave comes to hold a service: start a new one, resume from sealed secrets, join, or recover.

Every path makes or unseals the node's keys here, inside the enclave, and replays and verifies the ledger the
host hands over (`ledger.files.LedgerFiles`: entries as bytes, private parts encrypted):
- `new_service`: new service and node identities, genesis and its signature (members, constitution,
  configuration, this node's virtual quote);
- `resume`: unseal, replay and verify the ledger files, drop any unsigned suffix, continue in a new view;
- `join` (async): ask a node of the service to let this node in, over a connection the host relays (TLS
  with the node's self-signed certificate, inside the enclave), until trusted; start from the service's
  latest snapshot if it has one;
- `recover`: disaster recovery: a new service identity, the lost service's public ledger replayed up to its
  last signature, and the recovered service's first transaction (members then open it and submit shares).
Each returns a `Held` (the ledger, keys, consensus core and what else the node needs), or raises `StartError`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import random
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from loguru import logger

from ledger import genesis
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.errors import LedgerError, RecoveryError
from ledger.files import LedgerFiles
from ledger.framing import FLAG_FORCE_CHUNK_BEFORE
from ledger.genesis import GenesisNode, NodeNetwork, ServiceConfig, VirtualQuote
from ledger.identity import (
    IDENTITY_CURVES,
    NodeIdentity,
    ServiceIdentity,
    cert_pem,
    hash_for_key,
    key_pem,
    load_cert,
    load_key,
)
from ledger.recovery import choose_snapshot, recovery_create_writes, replay_public
from ledger.replay import recover
from ledger.secrets import LedgerSecret, LedgerSecrets
from ledger.service_ledger import ServiceLedger
from network.boundary import EnclaveStart, HostCalls
from network.consensus.raft import ConsensusConfig, HardState, Raft
from network.enclave import sealing
from network.enclave.attestation import code_measurement, host_data, make_quote
from network.enclave.enclave import trusted_nodes
from network.enclave.join import JoinRequest
from network.enclave.outbound import OutboundCalls, OutboundError
from network.enclave.replication import ledger_entry_meta
from network.enclave.tls import client_context

JOIN_RETRY = 0.2  # seconds between a joiner's requests while it waits to be trusted


class StartError(Exception):
    """The enclave cannot start as asked (the message says why)."""


@dataclass
class Held:
    ledger: ServiceLedger
    keys: NodeKeys
    raft: Raft | None = None  # None: the service's sole voter, leading at once
    recovery_snapshot: bytes | None = None
    peers: dict[str, str] = field(default_factory=dict)  # node id -> node-to-node address, from the join answer


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Replaying a ledger builds millions of long-lived objects and no cycles: the cyclic collector is paused
    meanwhile (about 12% of a replay's time), and what was built is then moved out of its sight for good
    (`gc.freeze`), so that later collections do not walk the whole state again and again."""
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


# Requests in flight keep a few dozen objects each alive across many allocations. With the collector's default
# (the youngest generation collected every 700 allocations) they are promoted, then die in the oldest generation,
# whose growth sets off full collections that walk the node's whole state: measured on a loaded node, 9% of its
# time serving a JavaScript app (whose requests wait for the worker), 1.4% serving the Python one. Collecting the
# youngest generation every 50 000 allocations lets them die young; the few that survive are as before.
YOUNG_COLLECTION_EVERY = 50_000


def tune_collector() -> None:
    """The cyclic collector's thresholds for a serving node (see `YOUNG_COLLECTION_EVERY`)."""
    gc.set_threshold(YOUNG_COLLECTION_EVERY, 20, 20)


def consensus_config(start: EnclaveStart) -> ConsensusConfig:
    return ConsensusConfig(election_ticks=start.election_ticks, heartbeat_ticks=start.heartbeat_ticks)


def quote_for(identity: NodeIdentity, start: EnclaveStart) -> VirtualQuote:
    return make_quote(identity.key.public_key(), code_measurement(), host_data(start.host_data.encode()))


def identity_curve(start: EnclaveStart) -> ec.EllipticCurve:
    """The configured curve (CCF's node_certificate.curve_id) of this node's key and of a service it creates."""
    curve = IDENTITY_CURVES.get(start.settings.identity_curve)
    if curve is None:
        raise StartError(f"node_certificate.curve_id {start.settings.identity_curve!r} is not one of "
                         f"{sorted(IDENTITY_CURVES)}")
    return curve


def new_node_keys(start: EnclaveStart) -> tuple[NodeIdentity, rsa.RSAPrivateKey]:
    """A new node's signing identity, on the configured curve, and its RSA key for the secrets sent to it."""
    return (NodeIdentity.create(curve=identity_curve(start)),
            rsa.generate_private_key(public_exponent=65537, key_size=2048))


def seal(keys: NodeKeys, ledger: ServiceLedger, start: EnclaveStart, host: HostCalls) -> None:
    host.store_sealed(sealing.seal(sealing.SealedState(keys, ledger.service, ledger.secrets), start.data_dir))


def _network(start: EnclaveStart) -> NodeNetwork:
    return NodeNetwork(start.rpc_address, start.node_to_node_address,
                       published_node_to_node_address=start.published_node_to_node_address)


def sole_candidate(ledger: ServiceLedger, term: int, config: ConsensusConfig) -> Raft:
    """The consensus core of a service's only node, everything it holds committed, standing for election
    from `term` (Raft §5.2): it wins the next term alone and, as a new primary, signs in it at once."""
    node_id = ledger.node.node_id
    raft = Raft(node_id, [node_id], random.Random().randrange, config=config,
                hard_state=HardState(term, node_id), commit=ledger.last_seqno,
                first_index=ledger.last_seqno + 1, base_term=ledger.view, older=ledger_entry_meta(ledger))
    raft.campaign(transfer=False)
    return raft


def new_service(start: EnclaveStart, files: LedgerFiles, host: HostCalls) -> Held:
    asked = start.new
    assert asked is not None
    members = [genesis.GenesisMember(m.certificate_pem, m.member_data, m.encryption_public_key_pem)
               for m in asked.members]
    service = ServiceIdentity.create(curve=identity_curve(start))
    identity, encryption_key = new_node_keys(start)
    identity = identity.endorsed_by(service)
    keys = NodeKeys(identity, encryption_key)
    recovery_members = sum(1 for m in members if m.encryption_public_key_pem)
    sc = asked.service_configuration
    try:
        config = ServiceConfig(recovery_threshold=int(sc.get("recovery_threshold", max(recovery_members, 1))),
                               **{k: v for k, v in sc.items() if k != "recovery_threshold"})
    except TypeError as e:
        raise StartError(f"start.service_configuration: {e}") from None
    try:
        ledger = start_new_service(None, members, asked.constitution, quote_for(identity, start), service=service,
                                   node=keys, config=config, network=_network(start), chunk_size=start.chunk_size,
                                   snapshot_dir=start.snapshot_dir, files=files)
    except ValueError as e:
        raise StartError(str(e)) from None
    seal(keys, ledger, start, host)
    logger.info(f"started a new service; node {identity.node_id[:16]}..., genesis at 2.1")
    return Held(ledger, keys)


def resume(start: EnclaveStart, files: LedgerFiles, host: HostCalls) -> Held:
    assert start.sealed is not None
    try:
        sealed = sealing.unseal(start.sealed, start.data_dir)
    except sealing.SealingError as e:
        raise StartError(str(e)) from None
    base = None
    if files.first_seqno > 1:  # this node started from a snapshot: load it, then replay what follows
        snapshot = host.snapshot_at(files.first_seqno - 1)
        if snapshot is None:
            raise StartError(f"the ledger starts after seqno {files.first_seqno - 1} but the host has no committed "
                             "snapshot at that seqno")
        base = ServiceLedger.from_snapshot(snapshot, secrets=sealed.secrets, node=sealed.node.identity,
                                           service=sealed.service, files=None, chunk_size=start.chunk_size,
                                           snapshot_dir=start.snapshot_dir)
    ledger = recover(files, secrets=sealed.secrets, node=sealed.node.identity, service=sealed.service,
                     base=base, chunk_size=start.chunk_size, snapshot_dir=start.snapshot_dir)
    last_signed = ledger.last_signature_seqno
    if last_signed == 0:
        raise StartError(f"{files.directory} holds no signed transaction to resume from")
    config = consensus_config(start)
    # One node is the whole majority: every durable signature is committed. What follows the last
    # signature was never committed and is dropped; the node then stands for election (Raft §5.2): it
    # wins a new term alone, and as a new primary signs in that view at once, so the dropped seqnos can
    # be told apart from the ones reused.
    persisted = start.consensus
    meta = ledger_entry_meta(ledger)
    node_id = ledger.node.node_id
    voters = set(trusted_nodes(ledger))
    if voters != {node_id}:
        # one of several nodes: consensus decides, from what this node holds (Raft §5.2-5.3)
        commit = ledger.committed_seqno
        state = HardState(max(persisted[0] if persisted else 0, ledger.view), persisted[1] if persisted else None)
        raft = Raft(node_id, voters, random.Random().randrange, config=config, hard_state=state,
                    log=[meta(s) for s in range(commit + 1, ledger.last_seqno + 1)], commit=commit,
                    first_index=commit + 1, base_term=ledger.view_of(commit) or 0, older=meta)
        logger.info(f"rejoining the network after {ledger.txid(ledger.last_seqno)}")
        return Held(ledger, sealed.node, raft)
    ledger.commit_to(last_signed)
    ledger.rollback(last_signed)
    raft = sole_candidate(ledger, max(persisted[0] if persisted else 0, ledger.view), config)
    logger.info(f"resuming the service after {ledger.txid(last_signed)} in view {raft.term}; replayed "
                f"{ledger.last_seqno} entries")
    return Held(ledger, sealed.node, raft)


def recover_service(start: EnclaveStart, files: LedgerFiles, host: HostCalls) -> Held:
    """Disaster recovery: a new service identity and node key, and the previous ledger (gathered by the host
    into this node's ledger files) replayed, public part only and verified, up to the previous service's last
    signature."""
    asked = start.recover
    assert asked is not None
    previous_cert = load_cert(asked.previous_service_certificate_pem)
    began = time.perf_counter()
    try:
        if files.last_seqno == 0:
            raise RecoveryError(f"no ledger to recover: {files.directory} holds no chunk")
        # With the whole ledger at hand it is replayed from the start, so the node holds every Merkle leaf and
        # serves receipts and historical queries of every transaction; a snapshot is used when the ledger files
        # start after one, or when the configuration asks for it (a faster start).
        found = None
        if files.first_seqno > 1 or asked.start_from_snapshot:
            found = choose_snapshot(list(asked.snapshot_dirs), files, previous_cert)
        service = ServiceIdentity.create(curve=identity_curve(start))
        identity, encryption_key = new_node_keys(start)
        identity = identity.endorsed_by(service)
        keys = NodeKeys(identity, encryption_key)
        logger.info("recovery: replaying the public ledger" + (f" from snapshot {found[0]}" if found else ""))
        public = replay_public(files, node=identity, service=service, previous_service_cert=previous_cert,
                               snapshot=found[1] if found else None, chunk_size=start.chunk_size,
                               snapshot_dir=start.snapshot_dir)
    except LedgerError as e:
        raise StartError(f"cannot recover: {e}") from None
    ledger = public.ledger
    logger.info(f"recovery: public replay to seqno {ledger.last_seqno} in {time.perf_counter() - began:.2f} s")
    ledger.secrets.add(LedgerSecret.create(ledger.last_seqno + 1))  # the recovered service's own secret
    # The create transaction and its signature, in the view after next (as CCF), durable and committed
    # (this node is the recovered service's only voter), before anything else is served.
    ledger.set_view(ledger.view + 2)
    seqno = ledger.last_seqno + 1
    node = GenesisNode(keys.identity, quote_for(identity, start), keys.encryption_public_pem, _network(start))
    try:
        # the previous service's chunks end where it ended (CCF starts the recovered service in a new chunk)
        ledger.commit_writes(recovery_create_writes(ledger.read_tx(), service, node, f"{ledger.view}.{seqno}"),
                             flags=FLAG_FORCE_CHUNK_BEFORE)
    except RecoveryError as e:
        raise StartError(f"cannot recover: {e}") from None
    ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_seqno)
    seal(keys, ledger, start, host)  # only now: a node killed before this recovers again from the same files
    raft = sole_candidate(ledger, ledger.view, consensus_config(start))
    logger.info(f"recovery: public ledger verified up to {ledger.txid(seqno - 1)}; the recovered service "
                f"was created at {ledger.txid(seqno)}, Recovering: members open it, then submit their shares")
    return Held(ledger, keys, raft, found[1] if found else None)


async def join(start: EnclaveStart, files: LedgerFiles, host: HostCalls, outbound: OutboundCalls) -> Held:
    """Ask the service to let this node in, until it is trusted and has the network's secrets."""
    asked = start.join
    assert asked is not None
    if files.last_seqno:
        raise StartError(f"{files.directory} already holds a ledger: a joining node starts empty")
    identity, encryption_key = new_node_keys(start)
    keys = NodeKeys(identity, encryption_key)
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "CCF Node")]))
           .sign(identity.key, hash_for_key(identity.key)))
    request = JoinRequest(_network(start).to_json(), dict(quote_for(identity, start).quote_info()),
                          keys.encryption_public_pem, csr.public_bytes(serialization.Encoding.PEM).decode())
    context = client_context(asked.service_certificate_pem, cert_pem(identity.self_signed), key_pem(identity.key))
    target, info = await _ask_to_join(asked.target, context, request, outbound)
    service = ServiceIdentity(load_key(info["service_key"]), load_cert(info["service_certificate"]))
    node = NodeIdentity(identity.key, identity.self_signed, load_cert(info["endorsed_certificate"]))
    secrets = LedgerSecrets([LedgerSecret.create(int(start_seqno), base64.b64decode(raw))
                             for start_seqno, raw in info["ledger_secrets"]])
    answer = await outbound.call(target, context, "GET", "/node/snapshot")
    if answer.status == 200 and "x-ccf-snapshot-name" in answer.headers:
        # start from the service's latest committed snapshot, then the ledger after it
        name = answer.headers["x-ccf-snapshot-name"].rsplit("/", 1)[-1]
        ledger = ServiceLedger.from_snapshot(answer.body, secrets=secrets, node=node, service=service, files=None,
                                             chunk_size=start.chunk_size, snapshot_dir=start.snapshot_dir)
        files.start_after(ledger.last_seqno)
        ledger.files = files
        host.store_snapshot(name, answer.body)  # to restart from, as well
        logger.info(f"starting from the snapshot at seqno {ledger.last_seqno}")
    elif answer.status == 404:
        ledger = ServiceLedger(node=node, service=service, secrets=secrets, files=files,
                               chunk_size=start.chunk_size, snapshot_dir=start.snapshot_dir)
    else:
        raise StartError(f"{target} did not give its snapshot: {answer.status} {answer.body[:200]!r}")
    keys = NodeKeys(node, keys.encryption_key)
    seal(keys, ledger, start, host)
    begin = ledger.last_seqno  # 0, or the snapshot's seqno (committed state)
    raft = Raft(node.node_id, [], random.Random().randrange, config=consensus_config(start), commit=begin,
                first_index=begin + 1, base_term=(ledger.view_of(begin) or 0) if begin else 0,
                older=ledger_entry_meta(ledger))
    logger.info(f"joined the service as {node.node_id[:16]}...; catching up from the primary")
    return Held(ledger, keys, raft, peers={str(k): str(v) for k, v in info.get("nodes", {}).items()})


async def _ask_to_join(target: str, context: ssl.SSLContext, request: JoinRequest,
                       outbound: OutboundCalls) -> tuple[str, dict[str, Any]]:
    """Post the join request until the answer carries the network's secrets; follows redirects to the primary.
    Returns the node that answered and the network information."""
    body = orjson.dumps(request.to_json())
    while True:
        try:
            answer = await outbound.call(target, context, "POST", "/node/join", body)
        except OutboundError as e:
            logger.info(f"cannot reach {target} yet ({e}); trying again")
            await asyncio.sleep(JOIN_RETRY)
            continue
        if answer.status == 308 and "location" in answer.headers:
            target = answer.headers["location"].removeprefix("https://").removesuffix("/node/join")
            continue
        if answer.status != 200:
            raise StartError(f"{target} refused the join: {answer.status} "
                             f"{answer.body.decode(errors='replace')[:300]}")
        obj = orjson.loads(answer.body)
        if "network_info" in obj:
            return target, dict(obj["network_info"])
        logger.info(f"joining as {obj['node_status']}; " + ("waiting for the network's secrets"
                    if obj["node_status"] == "Trusted" else "waiting to be trusted"))
        await asyncio.sleep(JOIN_RETRY)
