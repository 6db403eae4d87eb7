"""The consensus shell inside the enclave: one node's `Raft` core driven against its `ServiceLedger`.

On the primary, `sync()` proposes to consensus every entry the ledger appended since (signatures flagged),
so the enclave keeps committing transactions as before and consensus follows. On every node, `process()`
carries out what the core hands over, persisting before it sends or acknowledges, then applying commit:
1. persist the term and vote (`persist_state`);
2. roll the ledger back if the core dropped entries (a new primary's unsigned suffix, or a backup's
   conflicting uncommitted entries);
3. append the entries received from the primary, each verified as replay verifies a stored entry (GCM tag,
   commit evidence, node and service signatures against the tree rebuilt so far), switching ledger secrets
   at a rekey that encrypts the next one to this node;
4. flush (fsync) if the batch holds a signature (`Ready.sync`): a backup before anything is sent, so an
   acknowledgement of a signature means it is durable with every entry before it (other entries may be
   acknowledged before they are durable, since nothing commits but at a signature; a rollback is synced by the
   files themselves); the primary just after its AppendEntries have gone out (`send_now`), so the backups
   verify and sync the signature while it syncs its own copy (Raft thesis §10.2.1: a leader may write to its
   disk in parallel with replication, provided it counts itself towards a majority only once durable). Given
   `sync_off_loop`, the primary's sync runs off the loop: until it is done, consensus inputs (messages, ticks,
   proposals) wait in order, so no acknowledgement is counted and the core sees exactly what it would have
   seen after a blocking sync; the loop meanwhile executes and answers requests, whose entries are proposed
   once it is done;
5. send the messages, attaching the bytes of the entries an AppendEntries carries (read back from the
   ledger files, or from memory while they are new);
6. advance commit; and a node that became primary sets its view and signs at once (CCF).

An entry from the primary that does not verify stops this node (`ReplicationError`): a correct primary never
sends one, so the node must not go on with a state it cannot trust.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TypeAlias

from cryptography.hazmat.primitives.asymmetric import rsa
from loguru import logger

from ledger.errors import EntryFormatError, LedgerError, VerificationError
from ledger.replay import SecretsTaken, receive_entry
from ledger.service_ledger import ServiceLedger
from network.consensus.raft import AppendEntries, EntryMeta, HardState, Message, Raft, Role
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse

MAX_STASHED = 100_000  # entries received but not yet appended (beyond: the oldest are forgotten)
MAX_WAITING = 10_000  # consensus inputs held while the primary syncs (beyond: the oldest are dropped)

# run `work` (a blocking sync) away from the loop, then `done(what it raised, or None)` on the loop
SyncOffLoop: TypeAlias = Callable[[Callable[[], None], Callable[[BaseException | None], None]], None]


def sync_in_place(work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
    """A `SyncOffLoop` for a host that has no thread for it (or no longer): the sync runs here and now."""
    try:
        work()
    except OSError as e:
        done(e)
        return
    done(None)


def ledger_entry_meta(ledger: ServiceLedger) -> Callable[[int], EntryMeta]:
    """Consensus metadata of the ledger's entries, read from the ledger (so the core keeps none)."""

    def meta(seqno: int) -> EntryMeta:
        view = ledger.view_of(seqno)
        if view is None:
            raise LedgerError(f"the ledger holds no entry {seqno}")
        return EntryMeta(seqno, view, ledger.is_signature(seqno))

    return meta


class ReplicationError(Exception):
    """This node received an entry it cannot verify, or its ledger and consensus disagree."""


class Replicator:
    def __init__(self, ledger: ServiceLedger, raft: Raft, encryption_key: rsa.RSAPrivateKey,
                 send: Callable[[Envelope], None], persist_state: Callable[[HardState], None],
                 secrets_changed: Callable[[SecretsTaken], None] = lambda taken: None,
                 send_now: Callable[[], None] = lambda: None, sync_off_loop: SyncOffLoop | None = None,
                 sync_failed: Callable[[Exception], None] | None = None) -> None:
        self.ledger = ledger
        self.raft = raft
        self.encryption_key = encryption_key
        self.send = send
        self.persist_state = persist_state
        self.secrets_changed = secrets_changed
        self.send_now = send_now
        self.sync_off_loop = sync_off_loop
        self.sync_failed = sync_failed
        self._syncing = False  # the primary's sync of a signature runs off the loop
        # consensus inputs meanwhile, in order: a message, or a tick
        self._waiting: deque[Envelope | None] = deque(maxlen=MAX_WAITING)
        self._held_ticks = 0
        self._sync_asked = False  # `sync()` was called meanwhile
        self._starting_sync = False
        self._failed = False  # a sync failed, or what waited for it could not be handled: consensus stays stopped
        self._stash: dict[tuple[int, int], bytes] = {}  # (index, term) -> entry bytes from the primary

    @property
    def node_id(self) -> str:
        return self.raft.id

    @property
    def is_primary(self) -> bool:
        return self.raft.role is Role.LEADER

    def unproposed(self) -> int:
        """On the primary: how many entries the ledger holds that consensus has not been given yet."""
        return self.ledger.last_seqno - self.raft.last_index if self.is_primary else 0

    @property
    def syncing(self) -> bool:
        """The primary's sync of its last signature is still running off the loop (consensus inputs wait)."""
        return self._syncing

    def sync(self) -> None:
        """On the primary: propose what the ledger appended since the last call, then process."""
        if self._syncing:
            self._sync_asked = True
            return
        if self.is_primary:
            for seqno in range(self.raft.last_index + 1, self.ledger.last_seqno + 1):
                self.raft.propose(signature=self.ledger.is_signature(seqno))
        if self.raft.last_index != self.ledger.last_seqno and self.is_primary:
            raise ReplicationError(f"ledger ends at {self.ledger.last_seqno}, consensus at {self.raft.last_index}")
        self.process()

    def receive(self, envelope: Envelope) -> None:
        if self._syncing:
            self._hold(envelope)
            return
        m = envelope.message
        if isinstance(m, ForwardedRequest | ForwardedResponse):
            raise ReplicationError("a forwarded request is not a consensus message")
        if isinstance(m, AppendEntries):
            for meta, payload in zip(m.entries, envelope.payloads, strict=True):
                if meta.index > self.ledger.committed_seqno:
                    self._stash[(meta.index, meta.term)] = payload
            while len(self._stash) > MAX_STASHED:
                del self._stash[next(iter(self._stash))]
        self.raft.step(m)
        self.process()

    def tick(self) -> None:
        if self._syncing:
            self._hold(None)
            self._held_ticks += 1
            if self._held_ticks == self.raft.config.election_ticks and not self._failed:
                # a disk that does not answer: before syncs left the loop, the whole node stalled; now it would
                # go on executing writes as a primary the others have replaced, so it stops
                self._stop(LedgerError("the ledger's sync has not finished within an election timeout"))
            return
        self.raft.tick()
        self.process()

    def _hold(self, waiting: Envelope | None) -> None:
        self._waiting.append(waiting)  # past MAX_WAITING the oldest goes, as on a lossy network

    def process(self) -> None:
        while self.raft.has_ready() and not self._syncing:
            ready = self.raft.ready()
            if ready.hard_state is not None:
                self.persist_state(ready.hard_state)
            if ready.role in (Role.LEADER, Role.CANDIDATE) or (
                    ready.role is Role.FOLLOWER and self.raft.leader is None):
                # elections are rare and explain most surprises in a run: an operator reads them in the log
                logger.info(f"consensus: {ready.role.value} in view {self.raft.term}")
            if ready.rollback_to is not None and ready.rollback_to < self.ledger.last_seqno:
                self.ledger.rollback(ready.rollback_to)
            self._drop_unproposed()
            for meta in ready.entries:
                if meta.index <= self.ledger.last_seqno:
                    if self.ledger.view_of(meta.index) == meta.term:
                        continue  # the primary's own entry, already in its ledger
                    # this node wrote another entry there, as a primary deposed before it proposed it
                    self.ledger.rollback(meta.index - 1)
                self._append_received(meta.index, meta.term)
            # a signature, or a rollback: see `Ready` for why other entries need not be synced
            sync_after_sending = ready.sync and self.is_primary and bool(ready.messages)
            if ready.sync and not sync_after_sending:
                self.ledger.flush()
            # off the loop: the entries go to the operating system, and consensus inputs are held, before anything
            # is sent (so no acknowledgement can be counted before the sync, whatever the host's delivery)
            work = self._begin_sync() if sync_after_sending and self.sync_off_loop is not None else None
            for message in ready.messages:
                self.send(self._envelope(message))
            if sync_after_sending:
                self.send_now()
                if self.sync_off_loop is None:
                    self.ledger.flush()
                elif work is not None:
                    self._start_sync(work)
            if ready.commit is not None and ready.commit > self.ledger.committed_seqno:
                self.ledger.commit_to(ready.commit)
            if ready.commit is not None:
                self.raft.compact(ready.commit)  # the ledger keeps what consensus needs below commit
            if ready.became_leader:
                self._sign_as_new_primary()

    def _begin_sync(self) -> Callable[[], None] | None:
        """The primary's sync off the loop, first step: what it appended goes to the files, and consensus inputs
        wait from now on. Returns the blocking rest (None: nothing to wait for, no fsync configured or files that
        synced already, as the enclave's host does)."""
        work = self.ledger.flush_in_background()
        if work is not None:
            self._syncing = True
            self._held_ticks = 0
        return work

    def _start_sync(self, work: Callable[[], None]) -> None:
        assert self.sync_off_loop is not None
        self._starting_sync = True
        try:
            self.sync_off_loop(work, self._synced)
        finally:
            self._starting_sync = False

    def _synced(self, error: BaseException | None) -> None:
        """The primary's sync is done: the inputs that waited are handled, in the order they came."""
        if self._failed:
            return
        if error is not None:
            self._stop(self.ledger.background_flush_failed(error))  # as after any failed write
            return
        self._syncing = False
        if self._starting_sync:
            return  # done at once (a host without a thread for it): `process` goes on; nothing waited
        try:
            self.process()  # what the core had ready before the sync (commit from earlier acknowledgements)
            while self._waiting and not self._syncing:
                waited = self._waiting.popleft()
                if waited is None:
                    self.tick()
                else:
                    self.receive(waited)
            if not self._syncing and self._sync_asked:
                self._sync_asked = False
                self.sync()
        except (ReplicationError, LedgerError) as e:
            # as when a message arrives (`Enclave.receive`): consensus took an input the ledger could not follow
            self._stop(e)

    def _stop(self, error: Exception) -> None:
        """This node cannot go on: consensus stays stopped (inputs are held and never handled) and the node says so."""
        self._failed = True
        self._syncing = True
        if self.sync_failed is None:
            raise error
        self.sync_failed(error)

    def _drop_unproposed(self) -> None:
        """A primary's ledger runs ahead of consensus between a write and the next `sync`. If it is deposed in
        between (a higher term arrived), or elected again in a later term, those entries were never proposed and
        never will be in their view: they go, as an unsigned suffix does after an election (Raft §5.3-5.4;
        CCF rolls back to the last committable entry when a primary steps down). Kept, they would be proposed
        under the new term with their old view inside, or shadow the new primary's entries at their seqnos."""
        if self.ledger.last_seqno > self.raft.last_index and (
                not self.is_primary or self.ledger.view != self.raft.term):
            self.ledger.rollback(self.raft.last_index)

    def _append_received(self, index: int, term: int) -> None:
        raw = self._stash.pop((index, term), None)
        if raw is None:
            raise ReplicationError(f"consensus appended {index} (term {term}) but its bytes were not received")
        try:
            changed = receive_entry(self.ledger, raw, index, node_id=self.node_id, encryption_key=self.encryption_key)
        except (EntryFormatError, VerificationError) as e:
            raise ReplicationError(f"entry {index} from the primary does not verify: {e}") from e
        if self.ledger.view_of(index) != term:
            raise ReplicationError(f"entry {index} is in view {self.ledger.view_of(index)}, consensus says {term}")
        if changed:
            self.secrets_changed(changed)

    def _envelope(self, message: Message) -> Envelope:
        if not isinstance(message, AppendEntries) or not message.entries:
            return Envelope(message)
        first, last = message.entries[0].index, message.entries[-1].index
        if self.ledger.files is None:
            raise ReplicationError("a replicating node needs its ledger files")
        return Envelope(message, tuple(self.ledger.files.read_range(first, last)))

    def _sign_as_new_primary(self) -> None:
        # The core already rolled back the unsigned suffix (step 2 above); sign in the new view at once.
        self.ledger.set_view(self.raft.term)
        self.ledger.emit_signature()
        self.sync()
