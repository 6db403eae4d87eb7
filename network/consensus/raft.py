"""CFT consensus as a pure, deterministic state machine (Raft with CCF's rules), in etcd raft's shape.

`Raft` takes inputs - `tick()`, `step(message)`, `propose(entries)`, `set_voters(...)` - and accumulates
outputs that `ready()` hands over once: the hard state (term, vote) and log changes to persist, the messages
to send (only after the rest is persisted, see `Ready`), the new commit index, and role changes. It has no clock,
randomness, sockets or files: time is `tick()`, randomness is the `randrange` callable given at
construction (a seeded `random.Random(...).randrange` in the simulator).

The log holds only metadata (`EntryMeta`: index, term, whether the entry is a signature); entry bytes stay
with the shell (the ledger), which attaches them to outgoing `AppendEntries` and appends what it receives.

CCF's rules on top of Raft (Ongaro & Ousterhout, "In Search of an Understandable Consensus Algorithm"):
- commit only at signature entries: the commit index is always the index of a signature that a majority
  holds and that was written in the leader's current term (Raft §5.4.2: a leader commits entries of earlier
  terms only by committing one of its own);
- the up-to-date check of an election (Raft §5.4.1) compares the candidates' last *committable* entries
  (their last signature), not their last entries: a candidate must hold the latest committable entry;
- a new primary rolls back its unsigned suffix (everything after its last signature) and must sign at once:
  `Ready.rollback_to` and `Ready.became_leader` tell the shell, which emits a signature and proposes it;
- backups truncate uncommitted entries that conflict with the primary's (Raft §5.3), never committed ones;
- a primary that has not heard from a majority within an election timeout steps down (check quorum), so a
  deposed or isolated primary stops accepting writes (it never reports a commit without a majority anyway);
- append entries are batched (`max_batch`) and pipelined: the primary sends ahead of acknowledgements;
- pre-vote (Ongaro's dissertation §9.6, CCF's PreVoteCandidate): a node whose election timer fires first asks
  the voters whether they would vote for it in the next term, without raising its own. Only with a majority's
  yes does it stand for real. A node that restarts, or comes back from a partition, with a log no newer than
  the others' therefore never raises its term, and cannot depose a healthy primary by answering it with a
  higher term. A voter answers yes only if it has not heard from a primary within an election timeout.

Membership: `set_voters` installs the voter set the shell read from committed governance state (a node counts
once `transition_node_to_trusted` commits; a retired node stops counting once its retirement commits).

Not here: snapshots and catch-up from them (the shell sends a snapshot when a follower needs entries below
`first_index`), forwarding.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


class Role(enum.Enum):
    FOLLOWER = "Backup"
    PRE_CANDIDATE = "PreVoteCandidate"
    CANDIDATE = "Candidate"
    LEADER = "Primary"


@dataclass(frozen=True, slots=True)
class EntryMeta:
    index: int
    term: int
    signature: bool = False


@dataclass(frozen=True, slots=True)
class AppendEntries:
    term: int
    sender: str
    to: str
    prev_index: int
    prev_term: int
    entries: tuple[EntryMeta, ...]
    commit: int


@dataclass(frozen=True, slots=True)
class AppendEntriesResponse:
    term: int
    sender: str
    to: str
    success: bool
    last_index: int  # success: the index matched up to; failure: where the follower's log ends (a hint)


@dataclass(frozen=True, slots=True)
class RequestVote:
    term: int
    sender: str
    to: str
    last_committable_index: int
    last_committable_term: int
    transfer: bool = False  # a leadership transfer (or an operator's order): voters disregard their lease
    pre_vote: bool = False  # would you vote for me in `term`? (the sender's term stays one below)


@dataclass(frozen=True, slots=True)
class RequestVoteResponse:
    term: int
    sender: str
    to: str
    granted: bool
    pre_vote: bool = False


Message = AppendEntries | AppendEntriesResponse | RequestVote | RequestVoteResponse


@dataclass(frozen=True, slots=True)
class HardState:
    term: int
    voted_for: str | None


@dataclass(frozen=True)
class Ready:
    """What the shell must do, in order: persist `hard_state`, roll the log back to `rollback_to` (drop every
    entry after it), write `entries`, make them durable if `sync`, then send `messages` and apply up to `commit`.

    `sync` is set when an entry is a signature or the log was rolled back. Entries without a signature may stay
    in the operating system's (or the shell's) buffers: nothing commits except at a signature, and the sync of
    the batch that holds a signature makes every entry before it durable too. So an acknowledgement can name
    entries a crash loses, but never a signature it loses, and commit counts only signatures. A node that lost
    such entries answers the primary's next AppendEntries with where its log now ends, and the primary sends
    them again (`_on_append_response`)."""

    hard_state: HardState | None = None
    rollback_to: int | None = None
    entries: tuple[EntryMeta, ...] = ()
    messages: tuple[Message, ...] = ()
    commit: int | None = None
    became_leader: bool = False
    role: Role | None = None  # set when the role changed
    sync: bool = False

    def empty(self) -> bool:
        return (self.hard_state is None and self.rollback_to is None and not self.entries and not self.messages
                and self.commit is None and self.role is None)


class ConsensusError(Exception):
    """An input the state machine must never receive (e.g. a proposal on a backup)."""


@dataclass(frozen=True)
class ConsensusConfig:
    election_ticks: int = 10  # an election timeout is drawn from [election_ticks, 2 * election_ticks)
    heartbeat_ticks: int = 1
    max_batch: int = 256  # entries per AppendEntries
    max_inflight_entries: int = 8192  # entries sent ahead of a follower's acknowledgement (pipelining window)


@dataclass
class _Progress:
    """The primary's view of one follower (etcd raft's probe and replicate states)."""

    next_index: int
    match_index: int = 0
    replicating: bool = False  # False: probing for the match point, one AppendEntries at a time
    probe_outstanding: bool = False
    match_at_heartbeat: int = -1  # match index at the previous heartbeat (no progress since: resend)


@dataclass
class _Pending:
    hard_state_changed: bool = False
    rollback_to: int | None = None
    entries: list[EntryMeta] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)
    commit_changed: bool = False
    became_leader: bool = False
    role_changed: bool = False
    sync: bool = False


class Raft:
    def __init__(self, node_id: str, voters: Iterable[str], randrange: Callable[[int, int], int], *,
                 config: ConsensusConfig | None = None, hard_state: HardState | None = None,
                 log: Iterable[EntryMeta] = (), commit: int = 0, first_index: int = 1,
                 base_term: int = 0, older: Callable[[int], EntryMeta] | None = None) -> None:
        """`log` holds entries `first_index..`; the entry before `first_index` (from a snapshot, or
        compacted) had term `base_term`. `commit` is the commit index the node had made durable. `older`
        gives the metadata of entries below `first_index` that the node still holds (the shell reads them
        from its ledger): with it, a primary can send them to a lagging follower after compaction."""
        self.id = node_id
        self.config = config or ConsensusConfig()
        self.randrange = randrange
        self.voters = frozenset(voters)
        state = hard_state or HardState(0, None)
        self.term = state.term
        self.voted_for = state.voted_for
        self.first_index = first_index
        self.base_term = base_term
        self.older = older
        self.log: list[EntryMeta] = list(log)
        for offset, e in enumerate(self.log):
            if e.index != first_index + offset:
                raise ConsensusError(f"log entry {e.index} out of place (expected {first_index + offset})")
        self.commit = commit
        self.role = Role.FOLLOWER
        self.leader: str | None = None
        self.votes: set[str] = set()
        self.progress: dict[str, _Progress] = {}
        self.recent_active: set[str] = set()
        self.elapsed = 0
        self.heartbeat_elapsed = 0
        self.timeout = self._random_timeout()
        self._pending = _Pending()

    # --- the log -------------------------------------------------------------------------------------

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.log) - 1

    def term_at(self, index: int) -> int | None:
        if index == 0:
            return 0  # the empty log: what a probe to a node that holds nothing matches
        if index == self.first_index - 1:
            return self.base_term
        if self.first_index <= index <= self.last_index:
            return self.log[index - self.first_index].term
        if 1 <= index < self.first_index and self.older is not None:
            return self.older(index).term
        return None

    def entry(self, index: int) -> EntryMeta:
        if index < self.first_index:
            if self.older is None:
                raise ConsensusError(f"entry {index} was compacted")
            return self.older(index)
        return self.log[index - self.first_index]

    def compact(self, index: int) -> None:
        """Forget the metadata of entries up to `index` (committed): the memory kept is the uncommitted
        suffix. Entries below are then read through `older`, if given."""
        if index > self.commit:
            raise ConsensusError(f"cannot compact to {index}: committed only to {self.commit}")
        if index < self.first_index:
            return
        self.base_term = self.log[index - self.first_index].term
        del self.log[: index - self.first_index + 1]
        self.first_index = index + 1

    @property
    def last_committable(self) -> tuple[int, int]:
        """(index, term) of the last signature held (the snapshot point counts as committable)."""
        for e in reversed(self.log):
            if e.signature:
                return e.index, e.term
        return self.first_index - 1, self.base_term

    def _truncate_after(self, index: int) -> None:
        if index < self.commit:
            raise ConsensusError(f"refusing to truncate committed entries (to {index}, commit {self.commit})")
        if index < self.last_index:
            del self.log[index - self.first_index + 1:]
            pending = self._pending
            pending.rollback_to = index if pending.rollback_to is None else min(pending.rollback_to, index)
            pending.sync = True
            pending.entries = [e for e in pending.entries if e.index <= index]

    def _append(self, entries: Iterable[EntryMeta]) -> None:
        for e in entries:
            if e.index != self.last_index + 1:
                raise ConsensusError(f"appending {e.index} after {self.last_index}")
            self.log.append(e)
            self._pending.entries.append(e)
            if e.signature:
                self._pending.sync = True

    # --- outputs -----------------------------------------------------------------------------------

    def _send(self, message: Message) -> None:
        self._pending.messages.append(message)

    def has_ready(self) -> bool:
        p = self._pending
        return bool(p.hard_state_changed or p.rollback_to is not None or p.entries or p.messages
                    or p.commit_changed or p.role_changed)

    def ready(self) -> Ready:
        """Hand over (once) what to persist, send and apply. A primary first packs the entries proposed
        since the last call into batched AppendEntries, so proposing many entries costs few messages."""
        if self.role is Role.LEADER:
            self._broadcast(heartbeat=False)
        p = self._pending
        self._pending = _Pending()
        return Ready(
            hard_state=HardState(self.term, self.voted_for) if p.hard_state_changed else None,
            rollback_to=p.rollback_to,
            entries=tuple(p.entries),
            messages=tuple(p.messages),
            commit=self.commit if p.commit_changed else None,
            became_leader=p.became_leader,
            role=self.role if p.role_changed else None,
            sync=p.sync,
        )

    # --- roles -------------------------------------------------------------------------------------

    def _random_timeout(self) -> int:
        return self.randrange(self.config.election_ticks, 2 * self.config.election_ticks)

    def _set_term(self, term: int) -> None:
        if term != self.term:
            self.term = term
            self.voted_for = None
            self._pending.hard_state_changed = True

    def _set_role(self, role: Role) -> None:
        if role is not self.role:
            self.role = role
            self._pending.role_changed = True

    def _become_follower(self, term: int, leader: str | None, *, reset_timer: bool = True) -> None:
        self._set_term(term)
        self._set_role(Role.FOLLOWER)
        self.leader = leader
        self.votes = set()
        self.progress = {}
        if reset_timer:
            self.elapsed = 0
            self.timeout = self._random_timeout()

    def _pre_campaign(self) -> None:
        """Ask the voters whether they would elect this node in the next term; the term stays as it is."""
        self._stand(Role.PRE_CANDIDATE, self.term + 1, transfer=False)

    def _campaign(self, transfer: bool = False) -> None:
        if self.id in self.voters:
            self._set_term(self.term + 1)
            self.voted_for = self.id
            self._pending.hard_state_changed = True
        self._stand(Role.CANDIDATE, self.term, transfer)

    def _stand(self, role: Role, term: int, transfer: bool) -> None:
        """Ask every other voter for its vote (or, as a pre-candidate, whether it would give it) in `term`."""
        if self.id not in self.voters:
            self.elapsed = 0  # not a voter (yet, or any more): never stands
            return
        self._set_role(role)
        self.leader = None
        self.votes = {self.id}
        self.elapsed = 0
        self.timeout = self._random_timeout()
        index, last_term = self.last_committable
        pre_vote = role is Role.PRE_CANDIDATE
        for peer in sorted(self.voters - {self.id}):
            self._send(RequestVote(term, self.id, peer, index, last_term, transfer, pre_vote))
        self._maybe_win()

    def _maybe_win(self) -> None:
        if not self._is_majority(self.votes):
            return
        if self.role is Role.PRE_CANDIDATE:
            self._campaign()
        elif self.role is Role.CANDIDATE:
            self._become_leader()

    def _is_majority(self, nodes: set[str]) -> bool:
        return len(nodes & self.voters) * 2 > len(self.voters)

    def _become_leader(self) -> None:
        self._set_role(Role.LEADER)
        self.leader = self.id
        self.votes = set()
        # CCF: the new primary drops its unsigned suffix; the shell then signs in the new term at once.
        committable, _ = self.last_committable
        self._truncate_after(max(committable, self.commit))
        self._pending.became_leader = True
        self.progress = {p: _Progress(self.last_index + 1) for p in self.voters if p != self.id}
        self.recent_active = set()
        self.heartbeat_elapsed = 0
        self.elapsed = 0
        self._broadcast(heartbeat=True)

    # --- inputs --------------------------------------------------------------------------------------

    def tick(self) -> None:
        self.elapsed += 1
        if self.role is Role.LEADER:
            self.heartbeat_elapsed += 1
            if self.heartbeat_elapsed >= self.config.heartbeat_ticks:
                self.heartbeat_elapsed = 0
                self._broadcast(heartbeat=True)
            if self.elapsed >= self.config.election_ticks:
                self.elapsed = 0
                # check quorum: step down if a majority has not been heard from in an election timeout
                if not self._is_majority(self.recent_active | {self.id}):
                    self._become_follower(self.term, None)
                    return
                self.recent_active = set()
        elif self.elapsed >= self.timeout:
            self._pre_campaign()

    def assume_leadership(self) -> None:
        """The first node of a new service leads the view its genesis was written in, without an election:
        it is the only voter. Refused in any other configuration."""
        if self.voters != {self.id}:
            raise ConsensusError("only the sole voter of a new service may lead without an election")
        self.voted_for = self.id
        self._pending.hard_state_changed = True
        self._set_role(Role.LEADER)
        self.leader = self.id
        self.progress = {}
        self.recent_active = set()
        self.elapsed = 0

    def campaign(self, transfer: bool = True) -> None:
        """Stand for election now (leadership transfer, operators, tests): voters set aside their lease."""
        if self.role is not Role.LEADER:
            self._campaign(transfer)

    def propose(self, signature: bool = False) -> EntryMeta:
        """Append one entry in the current term (primary only); it is sent at the next `ready()`."""
        if self.role is not Role.LEADER:
            raise ConsensusError(f"{self.id} is not the primary")
        entry = EntryMeta(self.last_index + 1, self.term, signature)
        self._append([entry])
        if signature:
            self._maybe_commit()  # a primary alone is its own majority
        return entry

    def set_voters(self, voters: Iterable[str]) -> None:
        """Install a new voter set (from committed governance state)."""
        self.voters = frozenset(voters)
        if self.role is Role.LEADER:
            # new voters get a whole election timeout to be heard from before check quorum counts them
            self.elapsed = 0
            self.recent_active = set()
            for p in self.voters - {self.id} - set(self.progress):
                self.progress[p] = _Progress(self.last_index + 1)
            for p in set(self.progress) - self.voters:
                del self.progress[p]
            if self.id not in self.voters:
                self._become_follower(self.term, None)  # retired: stop leading
                return
            self._maybe_commit()
            self._broadcast(heartbeat=False)
        elif self.role in (Role.PRE_CANDIDATE, Role.CANDIDATE):
            self._maybe_win()

    def step(self, m: Message) -> None:
        if m.to != self.id:
            raise ConsensusError(f"message for {m.to} given to {self.id}")
        if isinstance(m, RequestVote) and not m.transfer and m.term > self.term and self.leader is not None \
                and self.elapsed < self.config.election_ticks:
            # Leader lease (with check quorum, as etcd raft): while this node hears from a live primary it
            # ignores candidates, so a node coming back from a partition cannot depose a healthy primary.
            return
        if isinstance(m, RequestVote) and m.pre_vote and m.term >= self.term:
            self._on_pre_vote(m)  # a question about a future term: this node's term and vote stay as they are
            return
        if isinstance(m, RequestVoteResponse) and m.pre_vote and m.granted:
            self._on_vote(m)  # granted for the term this node would stand in: its own term stays
            return
        if m.term > self.term:
            # Raft §5.2: the election timer restarts on hearing from a primary or granting a vote, not on
            # merely learning a higher term, so a candidate with a stale log cannot keep delaying the
            # nodes that could win.
            leader = m.sender if isinstance(m, AppendEntries) else None
            self._become_follower(m.term, leader, reset_timer=isinstance(m, AppendEntries))
        elif m.term < self.term:
            # a stale sender learns the current term from the answer, and steps down (Raft §5.1)
            if isinstance(m, AppendEntries):
                self._send(AppendEntriesResponse(self.term, self.id, m.sender, False, self.last_index))
            elif isinstance(m, RequestVote):
                self._send(RequestVoteResponse(self.term, self.id, m.sender, False, m.pre_vote))
            return
        if isinstance(m, AppendEntries):
            self._on_append(m)
        elif isinstance(m, AppendEntriesResponse):
            self._on_append_response(m)
        elif isinstance(m, RequestVote):
            self._on_request_vote(m)
        else:
            self._on_vote(m)

    # --- message handlers -------------------------------------------------------------------------------

    def _on_append(self, m: AppendEntries) -> None:
        if self.role is Role.LEADER:
            raise ConsensusError(f"two primaries in term {self.term}: {self.id} and {m.sender}")
        if self.role is not Role.FOLLOWER:
            self._become_follower(self.term, m.sender)  # a candidate learns of this term's leader
        self.leader = m.sender
        self.elapsed = 0
        if self.term_at(m.prev_index) != m.prev_term:
            # Raft §5.3: no match at prev; hint where our log ends (or our commit, if prev is past our log)
            hint = min(self.last_index, m.prev_index - 1)
            self._send(AppendEntriesResponse(self.term, self.id, m.sender, False, max(hint, self.commit)))
            return
        for e in m.entries:
            if e.index < self.first_index:
                continue  # compacted here: committed, so the same entry (Raft's log matching)
            held = self.term_at(e.index)
            if held is None:
                self._append([e])
            elif held != e.term:
                self._truncate_after(e.index - 1)
                self._append([e])
        matched = m.prev_index + len(m.entries)
        self._advance_follower_commit(min(m.commit, matched))
        self._send(AppendEntriesResponse(self.term, self.id, m.sender, True, matched))

    def _advance_follower_commit(self, bound: int) -> None:
        """Commit up to the last signature at or below `bound` (the primary's commit is a signature)."""
        if bound <= self.commit:
            return
        for index in range(min(bound, self.last_index), self.commit, -1):
            if index >= self.first_index and self.entry(index).signature:
                self.commit = index
                self._pending.commit_changed = True
                return

    def _on_append_response(self, m: AppendEntriesResponse) -> None:
        if self.role is not Role.LEADER or m.sender not in self.progress:
            return
        self.recent_active.add(m.sender)
        pr = self.progress[m.sender]
        pr.probe_outstanding = False
        if m.success:
            if m.last_index > pr.match_index:
                pr.match_index = m.last_index
                self._maybe_commit()
            pr.next_index = max(pr.next_index, pr.match_index + 1)
            pr.replicating = True
        else:
            # The follower's log does not reach where we sent. It may have lost entries it acknowledged but had
            # not made durable (`Ready.sync`: never a signature), so what it is known to hold goes back to its
            # hint; if the answer is merely older than its acknowledgements, that costs a resend.
            pr.match_index = min(pr.match_index, m.last_index)
            pr.next_index = max(pr.match_index + 1, min(pr.next_index - 1, m.last_index + 1))
            pr.replicating = False
        self._send_append(m.sender, heartbeat=False)

    def _on_request_vote(self, m: RequestVote) -> None:
        up_to_date = self._holds_no_newer_than(m)
        can_vote = self.voted_for in (None, m.sender) and self.role is Role.FOLLOWER
        granted = up_to_date and can_vote and m.sender in self.voters
        if granted:
            self.voted_for = m.sender
            self._pending.hard_state_changed = True
            self.elapsed = 0
        self._send(RequestVoteResponse(self.term, self.id, m.sender, granted))

    def _holds_no_newer_than(self, m: RequestVote) -> bool:
        """Raft §5.4.1, on committable entries (CCF): the candidate's last signature is at least as new as ours."""
        mine_index, mine_term = self.last_committable
        return (m.last_committable_term, m.last_committable_index) >= (mine_term, mine_index)

    def _on_pre_vote(self, m: RequestVote) -> None:
        """Answer yes if this node would vote for the sender in `m.term`: its log is up to date and this node
        has no primary to keep following (the lease check in `step` already ignored the question while a
        primary is heard from). Nothing is recorded: a pre-vote binds no one."""
        up_to_date = self._holds_no_newer_than(m)
        free = m.term > self.term or (self.voted_for in (None, m.sender) and self.leader is None)
        granted = up_to_date and free and m.sender in self.voters
        # a yes carries the asked term (the sender stands in it); a no carries this node's, which may be newer
        self._send(RequestVoteResponse(m.term if granted else self.term, self.id, m.sender, granted, True))

    def _on_vote(self, m: RequestVoteResponse) -> None:
        counting = Role.PRE_CANDIDATE if m.pre_vote else Role.CANDIDATE
        if self.role is counting and m.granted and (not m.pre_vote or m.term == self.term + 1):
            self.votes.add(m.sender)
            self._maybe_win()

    # --- the leader's replication ------------------------------------------------------------------------

    def _broadcast(self, *, heartbeat: bool) -> None:
        for peer in sorted(self.progress):
            self._send_append(peer, heartbeat=heartbeat)

    def _append_from(self, peer: str, next_index: int) -> AppendEntries | None:
        prev = next_index - 1
        prev_term = self.term_at(prev)
        if prev_term is None:  # below our first index: the shell must send a snapshot
            return None
        end = min(self.last_index, next_index + self.config.max_batch - 1)
        if next_index < self.first_index:  # compacted: read back through the shell
            entries = tuple(self.entry(i) for i in range(next_index, end + 1))
        else:
            entries = tuple(self.log[next_index - self.first_index: end - self.first_index + 1])
        return AppendEntries(self.term, self.id, peer, prev, prev_term, entries, self.commit)

    def _send_append(self, peer: str, *, heartbeat: bool) -> None:
        pr = self.progress[peer]
        if not pr.replicating:
            # Probe: one AppendEntries at next_index until the follower says where it matches (Raft §5.3);
            # a heartbeat repeats a probe that may have been lost.
            if pr.probe_outstanding and not heartbeat:
                return
            probe = self._append_from(peer, pr.next_index)
            if probe is not None:
                self._send(probe)
                pr.probe_outstanding = True
            return
        sent = False
        while pr.next_index <= self.last_index and pr.next_index - pr.match_index <= self.config.max_inflight_entries:
            message = self._append_from(peer, pr.next_index)
            if message is None:
                return
            self._send(message)
            pr.next_index = message.prev_index + len(message.entries) + 1  # pipelined: assume it arrives
            sent = True
        if heartbeat and not sent:
            if pr.match_index < self.last_index and pr.match_index == pr.match_at_heartbeat:
                # No progress for a whole heartbeat interval: what was in flight may be lost; send again
                # from the match point (duplicates are harmless to the follower).
                resend = self._append_from(peer, pr.match_index + 1)
                if resend is not None:
                    self._send(resend)
            else:
                # A heartbeat anchors at what the follower is known to hold, so it never races ahead of
                # appends in flight; the follower commits only up to what it matched.
                prev_term = self.term_at(pr.match_index)
                if prev_term is not None:
                    self._send(AppendEntries(self.term, self.id, peer, pr.match_index, prev_term, (), self.commit))
            pr.match_at_heartbeat = pr.match_index

    def _match(self, node: str) -> int:
        if node == self.id:
            return self.last_index
        pr = self.progress.get(node)
        return pr.match_index if pr is not None else 0

    def _maybe_commit(self) -> None:
        if not self.voters:
            return
        matches = sorted((self._match(p) for p in self.voters), reverse=True)
        majority_index = matches[len(matches) // 2]  # held by a majority of the voters
        for index in range(min(majority_index, self.last_index), self.commit, -1):
            e = self.entry(index)
            if e.signature and e.term == self.term:  # Raft §5.4.2, at a signature (CCF)
                self.commit = index
                self._pending.commit_changed = True
                return
