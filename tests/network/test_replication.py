"""Replication of real ledgers: three `ServiceLedger`s with files, each driven by its `Raft` core through a
`Replicator`, over an in-memory network carrying the real wire encoding. The judges: byte-identical ledgers,
`read_ledger.py` on every node's files, identical stores, rollback of unsigned suffixes after an election."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.bootstrap import NodeKeys, start_new_service
from ledger.errors import LedgerError
from ledger.files import LedgerFiles
from ledger.genesis import GenesisMember, VirtualQuote
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_pem
from ledger.replay import SecretsTaken
from ledger.secrets import LedgerSecrets
from ledger.service_ledger import ServiceLedger
from ledger.tables import NODES_ENDORSED_CERTS, NODES_INFO, dump_json
from network.consensus.raft import (
    AppendEntries,
    AppendEntriesResponse,
    ConsensusConfig,
    EntryMeta,
    HardState,
    Raft,
    Role,
)
from network.enclave.replication import ReplicationError, Replicator, ledger_entry_meta
from network.enclave.wire import Envelope, decode, encode
from tests.ccf_tools import assert_read_ledger_accepts

pytestmark = pytest.mark.unit

CONSTITUTION = "export function validate(input) { return { valid: true }; }"
CONFIG = ConsensusConfig(election_ticks=10, heartbeat_ticks=1, max_batch=8, max_inflight_entries=64)


class Cluster:
    def __init__(self, root: Path, seed: int) -> None:
        self.rng = random.Random(seed)
        self.service = ServiceIdentity.create()
        self.keys = [NodeKeys(NodeIdentity.create().endorsed_by(self.service),
                              rsa.generate_private_key(public_exponent=65537, key_size=2048)) for _ in range(3)]
        self.ids = [k.identity.node_id for k in self.keys]
        self.network: list[bytes] = []
        self.down: set[str] = set()
        self.sealed: dict[str, int] = {i: 0 for i in self.ids}
        self.taken: dict[str, list[SecretsTaken]] = {i: [] for i in self.ids}  # what each replicated rekey gave
        member = PartyIdentity.create("member0")
        k0 = self.keys[0]
        quote = VirtualQuote("aa" * 32, "bb" * 32, k0.identity.node_id)
        first = start_new_service(str(root / "n0" / "ledger"), [GenesisMember(member.pem)], CONSTITUTION, quote,
                                  service=self.service, node=k0)
        self.ledgers: dict[str, ServiceLedger] = {self.ids[0]: first}
        self.replicators: dict[str, Replicator] = {}
        for i, k in enumerate(self.keys):
            node_id = k.identity.node_id
            if i:
                files, _ = LedgerFiles.open(str(root / f"n{i}" / "ledger"))
                # a joiner receives the service identity and the ledger secrets when it is trusted
                self.ledgers[node_id] = ServiceLedger(node=k.identity, service=self.service,
                                                      secrets=LedgerSecrets(first.secrets.all()), files=files)
                raft = Raft(node_id, [self.ids[0]], self.rng.randrange, config=CONFIG,
                            older=ledger_entry_meta(self.ledgers[node_id]))
            else:
                raft = Raft(node_id, [node_id], self.rng.randrange, config=CONFIG, hard_state=HardState(2, None),
                            log=[EntryMeta(1, 2), EntryMeta(2, 2, True)], commit=2, older=ledger_entry_meta(first))
                raft.assume_leadership()
            self.replicators[node_id] = Replicator(
                self.ledgers[node_id], raft, k.encryption_key, self._send, lambda hs: None,
                lambda taken, n=node_id: self._secrets_taken(n, taken))  # type: ignore[misc]
        self.replicators[self.ids[0]].process()

    def _secrets_taken(self, node_id: str, taken: SecretsTaken) -> None:
        self.sealed[node_id] += 1
        self.taken[node_id].append(taken)

    def _send(self, envelope: Envelope) -> None:
        self.network.append(encode(envelope))

    def deliver_all(self, limit: int = 100_000) -> None:
        for _ in range(limit):
            if not self.network:
                return
            envelope = decode(self.network.pop(0)[4:])
            if envelope.message.to not in self.down and envelope.message.sender not in self.down:
                self.replicators[envelope.message.to].receive(envelope)

    def run(self, rounds: int) -> None:
        for _ in range(rounds):
            for node_id, r in self.replicators.items():
                if node_id not in self.down:
                    r.tick()
            self.deliver_all()

    @property
    def primary(self) -> Replicator:
        leaders = [r for i, r in self.replicators.items() if i not in self.down and r.raft.role is Role.LEADER]
        assert len(leaders) == 1, [r.raft.role for r in self.replicators.values()]
        return leaders[0]

    def write(self, n: int, private: bool = True) -> None:
        primary = self.primary
        for i in range(n):
            tx = primary.ledger.begin()
            tx.put("records" if private else "public:records", f"k{self.rng.randrange(10**9)}-{i}", b"v" * 100)
            primary.ledger.commit(tx)
        primary.sync()

    def sign(self) -> None:
        self.primary.ledger.emit_signature()
        self.primary.sync()

    def elect(self, node_id: str, down: set[str]) -> Replicator:
        """`node_id` stands for election while the nodes of `down` hear nothing, and wins."""
        self.down = down
        candidate = self.replicators[node_id]
        candidate.raft.campaign()
        candidate.process()
        self.deliver_all()
        assert self.primary is candidate
        return candidate

    def signed_round(self, writes: int) -> None:
        """The primary writes, signs, and the signature replicates."""
        self.write(writes)
        self.sign()
        self.run(3)

    def trust_backups(self) -> None:
        """What governance's transition_node_to_trusted leaves in the KV, then the new configuration."""
        primary = self.primary
        tx = primary.ledger.begin()
        for k in self.keys[1:]:
            node_id = k.identity.node_id
            assert k.identity.endorsed is not None
            pem = k.encryption_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                             serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            tx.put(NODES_INFO, node_id, dump_json({"status": "Trusted", "encryption_pub_key": pem}))
            tx.put(NODES_ENDORSED_CERTS, node_id, cert_pem(k.identity.endorsed).encode())
        primary.ledger.commit(tx)
        self.sign()
        for r in self.replicators.values():
            r.raft.set_voters(self.ids)
            r.process()
        self.run(5)

    def files_bytes(self, node_id: str, upto: int) -> list[bytes]:
        files = self.ledgers[node_id].files
        assert files is not None
        return files.read_range(1, upto)


@pytest.fixture
def cluster(tmp_path: Path, seed: int) -> Cluster:
    return Cluster(tmp_path, seed)


def _state(ledger: ServiceLedger, table: str) -> dict[bytes, bytes]:
    return dict(ledger.read_tx().items(table))


def test_backups_hold_byte_identical_ledgers_that_ccf_accepts(cluster: Cluster, tmp_path: Path) -> None:
    cluster.trust_backups()
    cluster.write(30)
    cluster.write(10, private=False)
    cluster.sign()
    cluster.run(5)
    primary = cluster.primary.ledger
    commit = primary.committed_seqno
    assert commit == primary.last_seqno
    for node_id, ledger in cluster.ledgers.items():
        assert ledger.committed_seqno == commit, node_id
        assert cluster.files_bytes(node_id, commit) == cluster.files_bytes(cluster.ids[0], commit)
        assert _state(ledger, "records") == _state(primary, "records")  # private maps decrypted on backups
        assert ledger.merkle.root() == primary.merkle.root()
        ledger.flush()
    for i in range(3):
        assert_read_ledger_accepts(str(tmp_path / f"n{i}" / "ledger"), "--uncommitted")


def test_backups_sync_only_batches_that_hold_a_signature(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.trust_backups()
    cluster.run(3)
    backup = cluster.ledgers[cluster.ids[1]]
    synced: list[int] = []
    flush = backup.flush
    monkeypatch.setattr(backup, "flush", lambda: (synced.append(backup.last_seqno), flush())[1])
    cluster.write(10)  # replicated before they are signed: held and acknowledged, not synced
    cluster.deliver_all()
    assert backup.last_seqno == cluster.primary.ledger.last_seqno and synced == []
    cluster.sign()
    cluster.run(3)  # the signature, then the commit point on the heartbeats
    assert synced == [cluster.primary.ledger.last_signature_seqno]  # one sync, with the signature
    assert backup.committed_seqno == synced[0]


def test_the_primary_sends_a_signature_before_syncing_it_and_a_backup_syncs_it_before_acknowledging(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.trust_backups()
    cluster.run(3)
    primary, backup = cluster.primary, cluster.replicators[cluster.ids[1]]
    events: list[tuple[str, list[Any]]] = []

    def in_flight() -> list[Any]:
        return [decode(frame[4:]).message for frame in cluster.network]

    def record(what: str, then: Callable[[], None]) -> Callable[[], None]:
        return lambda: (events.append((what, in_flight())), then())[1]

    monkeypatch.setattr(primary, "send_now", record("primary pushed", lambda: None))
    monkeypatch.setattr(primary.ledger, "flush", record("primary synced", primary.ledger.flush))
    monkeypatch.setattr(backup.ledger, "flush", record("backup synced", backup.ledger.flush))
    cluster.write(3)
    cluster.deliver_all()
    assert events == []  # entries without a signature: neither node syncs
    cluster.sign()
    signature = primary.ledger.last_signature_seqno
    (pushed, queued), (synced, still_queued) = events
    assert (pushed, synced) == ("primary pushed", "primary synced") and queued == still_queued
    carried = {m.to for m in queued if isinstance(m, AppendEntries) and any(e.index == signature for e in m.entries)}
    assert carried == {cluster.ids[1], cluster.ids[2]}  # out to both backups before the primary's own sync
    cluster.deliver_all()
    (what, at_backup_sync), = events[2:]
    assert what == "backup synced"
    assert not [m for m in at_backup_sync if isinstance(m, AppendEntriesResponse) and m.sender == backup.node_id
                and m.last_index >= signature]  # its acknowledgement of the signature comes after its sync
    assert primary.ledger.committed_seqno == signature  # which the primary's commit then counts


class HeldSyncs:
    """A host's `sync_off_loop` whose syncs run only when the test says (`finish`)."""

    def __init__(self) -> None:
        self.held: list[tuple[Callable[[], None], Callable[[BaseException | None], None]]] = []

    def __call__(self, work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        self.held.append((work, done))

    def finish(self, error: BaseException | None = None) -> None:
        work, done = self.held.pop(0)
        if error is None:
            work()
        done(error)


def test_the_primary_syncs_off_the_loop_and_consensus_waits_for_it(cluster: Cluster) -> None:
    cluster.trust_backups()
    cluster.run(3)
    primary = cluster.primary
    primary.sync_off_loop = syncs = HeldSyncs()
    cluster.write(3)
    cluster.sign()
    signature = primary.ledger.last_signature_seqno
    assert primary.syncing and len(syncs.held) == 1
    cluster.deliver_all()  # both backups hold the signature and acknowledge it: the primary has not counted them
    assert all(cluster.ledgers[b].last_seqno == signature for b in cluster.ids[1:])
    assert primary.raft.commit < signature and primary.ledger.committed_seqno < signature
    cluster.write(2)  # the loop goes on executing requests; their entries wait to be proposed
    assert primary.raft.last_index == signature and primary.ledger.last_seqno == signature + 2
    elapsed = primary.raft.elapsed
    cluster.run(2)  # ticks wait too
    assert primary.raft.elapsed == elapsed
    syncs.finish()
    assert not primary.syncing
    assert primary.ledger.committed_seqno == signature  # the acknowledgements that waited, counted now
    assert primary.raft.last_index == signature + 2  # and what was written meanwhile is proposed
    cluster.sign()
    syncs.finish()
    cluster.run(3)
    assert all(cluster.ledgers[n].committed_seqno == signature + 3 for n in cluster.ids)


def _signing_with_held_syncs(cluster: Cluster) -> tuple[Replicator, HeldSyncs, list[Exception]]:
    """The primary, whose syncs wait for the test (`HeldSyncs`) and whose failures are recorded, once it has
    written one transaction and signed it (the signature's sync then held)."""
    cluster.trust_backups()
    cluster.run(3)
    primary = cluster.primary
    primary.sync_off_loop = syncs = HeldSyncs()
    failures: list[Exception] = []
    primary.sync_failed = failures.append
    cluster.write(1)
    cluster.sign()
    return primary, syncs, failures


def test_a_failed_sync_off_the_loop_stops_the_primary_taking_writes(cluster: Cluster) -> None:
    primary, syncs, failures = _signing_with_held_syncs(cluster)
    syncs.finish(OSError(28, "No space left on device"))
    assert len(failures) == 1 and "No space left on device" in str(failures[0])
    assert primary.syncing  # consensus stays stopped: the node is going down
    tx = primary.ledger.begin()
    tx.put("records", "after", b"v")
    with pytest.raises(LedgerError, match="stopped after a failed write"):
        primary.ledger.commit(tx)


def test_what_waited_for_the_sync_and_cannot_be_handled_stops_the_node(cluster: Cluster,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    primary, syncs, failures = _signing_with_held_syncs(cluster)
    cluster.deliver_all()  # the acknowledgements wait

    def unverifiable(envelope: Envelope) -> None:
        raise ReplicationError("an entry from the primary does not verify")

    monkeypatch.setattr(primary, "receive", unverifiable)  # what handling a held message may raise
    syncs.finish()
    assert [str(f) for f in failures] == ["an entry from the primary does not verify"]
    assert primary.syncing  # consensus stays stopped


def test_a_sync_that_outlives_an_election_timeout_stops_the_primary(cluster: Cluster) -> None:
    primary, _, failures = _signing_with_held_syncs(cluster)  # a disk that never answers
    for _ in range(CONFIG.election_ticks - 1):
        primary.tick()
    assert failures == []
    primary.tick()
    assert len(failures) == 1 and "election timeout" in str(failures[0])


def test_nothing_commits_without_a_majority_and_everything_does_once_it_is_back(cluster: Cluster) -> None:
    cluster.trust_backups()
    before = cluster.primary.ledger.committed_seqno
    cluster.down = {cluster.ids[1], cluster.ids[2]}
    cluster.write(5)
    cluster.sign()
    cluster.run(3)
    assert cluster.primary.ledger.committed_seqno == before
    cluster.down = {cluster.ids[2]}
    cluster.run(3)
    assert cluster.primary.ledger.committed_seqno == cluster.primary.ledger.last_seqno > before


def test_a_new_primary_rolls_back_the_unsigned_suffix_and_backups_follow(cluster: Cluster) -> None:
    cluster.trust_backups()
    cluster.write(5)
    cluster.sign()
    cluster.run(3)
    signed = cluster.primary.ledger.last_seqno
    cluster.write(4)  # replicated, never signed
    cluster.run(1)
    n0, n1, n2 = cluster.ids
    assert cluster.ledgers[n1].last_seqno == signed + 4
    cluster.down = {n0}
    new = cluster.replicators[n1]
    new.raft.campaign()
    new.process()
    cluster.deliver_all()
    assert cluster.primary is new and new.raft.term == 3
    # the unsigned suffix is gone and the new primary signed at once in view 3
    assert new.ledger.last_seqno == signed + 1 and new.ledger.is_signature(signed + 1)
    assert new.ledger.view_of(signed + 1) == 3
    cluster.run(3)
    assert cluster.ledgers[n2].last_seqno == signed + 1 and cluster.ledgers[n2].committed_seqno == signed + 1
    cluster.write(3)
    cluster.sign()
    cluster.run(3)
    # the old primary comes back: its unsigned suffix (view 2) is replaced by view 3's entries
    cluster.down = set()
    cluster.run(5)
    last = new.ledger.last_seqno
    assert cluster.ledgers[n0].last_seqno == last and cluster.ledgers[n0].committed_seqno == last
    assert cluster.files_bytes(n0, last) == cluster.files_bytes(n1, last) == cluster.files_bytes(n2, last)
    assert cluster.replicators[n0].raft.role is Role.FOLLOWER


def test_a_rekey_reaches_the_backups_and_they_read_what_follows(cluster: Cluster, tmp_path: Path) -> None:
    cluster.trust_backups()
    cluster.write(3)
    cluster.primary.ledger.rekey()
    cluster.write(5)
    cluster.sign()
    cluster.run(3)
    primary = cluster.primary.ledger
    for node_id, ledger in cluster.ledgers.items():
        assert len(ledger.secrets) == 2, node_id
        assert ledger.secrets.latest.raw == primary.secrets.latest.raw
        assert _state(ledger, "records") == _state(primary, "records")
        ledger.flush()
    assert cluster.sealed[cluster.ids[1]] == 1 and cluster.sealed[cluster.ids[2]] == 1
    assert cluster.taken[cluster.ids[1]] == cluster.taken[cluster.ids[2]] == [SecretsTaken.LATER]
    for i in range(3):
        assert_read_ledger_accepts(str(tmp_path / f"n{i}" / "ledger"), "--uncommitted")


def test_a_tampered_entry_from_the_primary_stops_the_backup(cluster: Cluster) -> None:
    from network.enclave.replication import ReplicationError

    cluster.trust_backups()
    cluster.write(2)
    primary = cluster.primary
    original = primary.send

    def tamper(envelope: Envelope) -> None:
        if envelope.payloads:
            bad = bytearray(envelope.payloads[-1])
            bad[-1] ^= 1
            envelope = Envelope(envelope.message, (*envelope.payloads[:-1], bytes(bad)))
        original(envelope)

    primary.send = tamper  # type: ignore[method-assign]
    cluster.sign()
    with pytest.raises(ReplicationError, match="does not verify"):
        cluster.run(2)


def _write_unproposed(primary: Replicator, key: str) -> None:
    """A write in the primary's ledger that consensus has not been given yet (no sync)."""
    tx = primary.ledger.begin()
    tx.put("records", key, b"x")
    primary.ledger.commit(tx)


def test_entries_a_deposed_primary_never_proposed_give_way_to_the_new_primarys(cluster: Cluster) -> None:
    """Found by a chaos run (seed 1): a primary's ledger runs ahead of consensus between a write and the next
    sync. Deposed in between, it kept those entries, skipped the new primary's entries at the same seqnos as if
    they were its own, and, elected again later, proposed them under the new term with the old view inside:
    its backups then refused them and never caught up. They are dropped instead, as an unsigned suffix is."""
    cluster.trust_backups()
    cluster.signed_round(5)
    n0, n1, n2 = cluster.ids
    old = cluster.replicators[n0]
    signed = old.ledger.last_seqno
    for i in range(3):
        _write_unproposed(old, f"unproposed-{i}")
    assert old.ledger.last_seqno == signed + 3 > old.raft.last_index
    new = cluster.elect(n1, down={n0})
    cluster.signed_round(4)
    cluster.down = set()
    cluster.run(5)
    last = new.ledger.last_seqno
    assert old.raft.role is Role.FOLLOWER
    assert old.ledger.last_seqno == last and old.ledger.committed_seqno == last
    assert cluster.files_bytes(n0, last) == cluster.files_bytes(n1, last) == cluster.files_bytes(n2, last)
    assert all(old.ledger.view_of(s) == new.ledger.view_of(s) for s in range(1, last + 1))
    assert not any(k.startswith(b"unproposed") for k in _state(old.ledger, "records"))
    # elected again in a later term with nothing unproposed, it replicates what it holds as it is
    cluster.elect(n0, down={n1})
    cluster.signed_round(2)
    cluster.down = set()
    cluster.run(5)
    last = old.ledger.last_seqno
    assert cluster.files_bytes(n0, last) == cluster.files_bytes(n1, last) == cluster.files_bytes(n2, last)


def test_a_primary_deposed_and_elected_again_drops_what_it_wrote_unproposed_in_its_earlier_term(
        cluster: Cluster) -> None:
    """The other way the same entries went wrong: a primary that steps down (a higher term's vote request) and
    wins the next election before any new primary's entry reaches it would have proposed its old term's
    unproposed entries under the new term."""
    cluster.trust_backups()
    cluster.signed_round(3)
    n0, n1, _ = cluster.ids
    old = cluster.replicators[n0]
    signed = old.ledger.last_seqno
    _write_unproposed(old, "unproposed")
    cluster.replicators[n1].raft.campaign()
    cluster.replicators[n1].process()
    requests = [decode(m[4:]) for m in cluster.network]
    cluster.network.clear()
    for envelope in requests:  # only the vote request to the primary arrives; its answer is lost
        if envelope.message.to == n0:
            old.receive(envelope)
    cluster.network.clear()
    assert old.raft.role is Role.FOLLOWER and old.raft.term == 3
    old.raft.campaign()
    old.process()
    cluster.deliver_all()
    assert cluster.primary is old and old.raft.term == 4
    # the unproposed entry (view 2) is gone; the new primary signed in view 4 right after the signature
    assert old.ledger.view_of(signed + 1) == 4 and old.ledger.is_signature(signed + 1)
    assert b"unproposed" not in _state(old.ledger, "records")
    cluster.run(3)
    last = old.ledger.last_seqno
    assert all(cluster.ledgers[n].view_of(s) == old.ledger.view_of(s) for n in cluster.ids for s in range(1, last + 1))
