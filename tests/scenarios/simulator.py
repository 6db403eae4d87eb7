"""A deterministic simulation of N consensus cores (`network.consensus.raft.Raft`) over a simulated network.

The network holds messages in flight; the simulation delivers them in any order, drops, duplicates,
partitions links (one-way cuts included), crashes and restarts nodes (a restarted node keeps what it
persisted: term, vote, commit, and the log up to its last sync; entries written after it are lost, as the
shell makes only batches with a signature durable, `Ready.sync`), and drives ticks and proposals. Each node's
shell follows the order Raft requires (Ongaro & Ousterhout, §5.3-5.4): persist, then send, then apply; a new
primary signs at once (CCF).

`check()` asserts the safety invariants after every step:
- at most one primary per term;
- log matching: two logs holding an entry with the same index and term agree on everything before it;
- a committed prefix never changes, and every node's committed prefix is the one committed;
- commit only at signatures;
- leader completeness: a primary holds every committed entry.
A violation raises `InvariantViolation` naming the step and the nodes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from network.consensus.raft import (
    AppendEntries,
    ConsensusConfig,
    EntryMeta,
    HardState,
    Message,
    Raft,
    Role,
)


class InvariantViolation(AssertionError):
    pass


@dataclass
class Disk:
    hard_state: HardState = field(default_factory=lambda: HardState(0, None))
    log: list[EntryMeta] = field(default_factory=list)
    commit: int = 0
    durable: int = 0  # entries log[:durable] survive a crash


class SimNode:
    def __init__(self, node_id: str, voters: list[str], rng: random.Random, config: ConsensusConfig) -> None:
        self.id = node_id
        self.rng = rng
        self.config = config
        self.disk = Disk()
        self.voters = list(voters)
        self.up = True
        self.raft = self._boot()

    def _boot(self) -> Raft:
        return Raft(self.id, self.voters, self.rng.randrange, config=self.config, hard_state=self.disk.hard_state,
                    log=list(self.disk.log), commit=self.disk.commit, older=self._older)

    def _older(self, index: int) -> EntryMeta:
        return self.disk.log[index - 1]

    def compact(self) -> None:
        """Forget the consensus core's metadata up to its commit (the disk, like the ledger, keeps it)."""
        if self.up:
            self.raft.compact(self.raft.commit)

    def crash(self, kept_unsynced: int) -> None:
        """Stop; of the entries written since the last sync, the first `kept_unsynced` reached the disk anyway
        (the operating system writes back when it likes), the rest are lost."""
        self.up = False
        if self.disk.commit > self.disk.durable:
            raise InvariantViolation(f"{self.id} committed {self.disk.commit} but only {self.disk.durable} is durable")
        del self.disk.log[self.disk.durable + kept_unsynced:]
        self.disk.durable = len(self.disk.log)

    def restart(self) -> None:
        self.up = True
        self.raft = self._boot()


class Simulation:
    def __init__(self, n: int, seed: int, *, config: ConsensusConfig | None = None) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.config = config or ConsensusConfig(election_ticks=10, heartbeat_ticks=2, max_batch=4,
                                                max_inflight_entries=16)
        self.ids = [f"n{i}" for i in range(n)]
        self.nodes = {i: SimNode(i, self.ids, random.Random(self.rng.random()), self.config) for i in self.ids}
        self.in_flight: list[Message] = []
        self.cut: set[tuple[str, str]] = set()  # (from, to) links that drop everything
        self.leaders: dict[int, str] = {}  # term -> the one primary of that term
        self.committed: list[int] = []  # terms of committed entries, index 1.. at position 0..
        self.committed_in: list[int] = []  # the term in which each committed entry was first seen committed
        self.step_no = 0
        self.log_lines: list[str] = []

    # --- driving ---------------------------------------------------------------------------------

    def _process(self, node: SimNode) -> None:
        """Run the shell's loop for one node until its core has nothing more to hand over."""
        while node.up and node.raft.has_ready():
            ready = node.raft.ready()
            disk = node.disk
            if ready.hard_state is not None:
                disk.hard_state = ready.hard_state
            if ready.rollback_to is not None:
                del disk.log[ready.rollback_to:]
            disk.log.extend(ready.entries)
            if ready.sync:
                disk.durable = len(disk.log)
            disk.durable = min(disk.durable, len(disk.log))
            for m in ready.messages:
                if (m.sender, m.to) not in self.cut:
                    self.in_flight.append(m)
            if ready.commit is not None:
                disk.commit = ready.commit
                self._record_commit(node)
            if ready.became_leader:
                self._note_leader(node)
                node.raft.propose(signature=True)  # CCF: a new primary signs at once

    def _record_commit(self, node: SimNode) -> None:
        terms = [e.term for e in node.disk.log[: node.disk.commit]]
        common = min(len(terms), len(self.committed))
        if terms[:common] != self.committed[:common]:
            raise InvariantViolation(f"step {self.step_no}: {node.id} committed a prefix that differs from the "
                                     f"committed one (seed {self.seed})")
        if len(terms) > len(self.committed):
            self.committed_in += [node.raft.term] * (len(terms) - len(self.committed))
            self.committed = terms

    def _note_leader(self, node: SimNode) -> None:
        term = node.raft.term
        other = self.leaders.get(term)
        if other is not None and other != node.id:
            raise InvariantViolation(f"step {self.step_no}: two primaries in term {term}: {other} and {node.id} "
                                     f"(seed {self.seed})")
        self.leaders[term] = node.id

    def tick(self, node_id: str) -> None:
        node = self.nodes[node_id]
        if node.up:
            node.raft.tick()
            self._process(node)

    def deliver(self, index: int | None = None, *, duplicate: bool = False) -> bool:
        if not self.in_flight:
            return False
        i = self.rng.randrange(len(self.in_flight)) if index is None else index
        m = self.in_flight[i] if duplicate else self.in_flight.pop(i)
        node = self.nodes[m.to]
        if node.up and (m.sender, m.to) not in self.cut:
            node.raft.step(m)
            self._process(node)
        return True

    def deliver_all(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            if not self.in_flight:
                return
            self.deliver(0)

    def drop(self) -> None:
        if self.in_flight:
            self.in_flight.pop(self.rng.randrange(len(self.in_flight)))

    def leader(self) -> SimNode | None:
        live = [n for n in self.nodes.values() if n.up and n.raft.role is Role.LEADER]
        return max(live, key=lambda n: n.raft.term) if live else None

    def propose(self, signature: bool = False) -> bool:
        node = self.leader()
        if node is None:
            return False
        node.raft.propose(signature=signature)
        self._process(node)
        return True

    def partition(self, *groups: list[str]) -> None:
        """Cut every link between different groups (both ways)."""
        self.cut = {(a, b) for a in self.ids for b in self.ids
                    if a != b and not any(a in g and b in g for g in groups)}

    def cut_link(self, sender: str, to: str) -> None:
        self.cut.add((sender, to))

    def heal(self) -> None:
        self.cut = set()

    def crash(self, node_id: str, kept_unsynced: int | None = None) -> None:
        """Crash a node; `kept_unsynced` of its unsynced entries survive (None: a random number of them)."""
        node = self.nodes[node_id]
        if kept_unsynced is None:
            kept_unsynced = self.rng.randint(0, len(node.disk.log) - node.disk.durable)
        node.crash(kept_unsynced)
        self.in_flight = [m for m in self.in_flight if m.to != node_id]

    def restart(self, node_id: str) -> None:
        self.nodes[node_id].restart()

    def elect(self, node_id: str, max_steps: int = 5000) -> None:
        """Make node_id stand, and run the network until it leads (or raise)."""
        self.nodes[node_id].raft.campaign()
        self._process(self.nodes[node_id])
        self.deliver_all()
        if self.nodes[node_id].raft.role is not Role.LEADER:
            raise AssertionError(f"{node_id} did not win its election")

    def random_step(self, *, faults: bool = True) -> str:
        """One random action; returns its description."""
        self.step_no += 1
        r = self.rng.random()
        up = [i for i in self.ids if self.nodes[i].up]
        if r < 0.40:
            action = "deliver"
            self.deliver()
        elif r < 0.60:
            node = self.rng.choice(self.ids)
            action = f"tick {node}"
            self.tick(node)
        elif r < 0.75:
            signature = self.rng.random() < 0.3
            action = f"propose{' signature' if signature else ''}"
            self.propose(signature)
        elif not faults or r < 0.80:
            action = "deliver duplicate"
            self.deliver(duplicate=True)
        elif r < 0.86:
            action = "drop"
            self.drop()
        elif r < 0.88:
            node = self.rng.choice(self.ids)
            action = f"compact {node}"
            self.nodes[node].compact()
        elif r < 0.90:
            a, b = self.rng.sample(self.ids, 2)
            action = f"cut {a}->{b}"
            self.cut_link(a, b)
        elif r < 0.93:
            action = "heal"
            self.heal()
        elif r < 0.96 and len(up) > 1:
            node = self.rng.choice(up)
            kept = self.rng.randint(0, len(self.nodes[node].disk.log) - self.nodes[node].disk.durable)
            action = f"crash {node} (keeping {kept} unsynced entries)"
            self.crash(node, kept)
        else:
            down = [i for i in self.ids if not self.nodes[i].up]
            if down:
                node = self.rng.choice(down)
                action = f"restart {node}"
                self.restart(node)
            else:
                action = "deliver"
                self.deliver()
        self.log_lines.append(action)
        self.check()
        return action

    # --- invariants ---------------------------------------------------------------------------------

    def check(self) -> None:
        where = f"step {self.step_no} (seed {self.seed})"
        logs = {i: [e.term for e in n.disk.log] for i, n in self.nodes.items()}
        for i, n in self.nodes.items():
            raft = n.raft
            if n.up and raft.role is Role.LEADER:
                self._note_leader(n)
                # leader completeness (Raft §5.4): a primary of term t holds every entry committed before t
                must_hold = sum(1 for t in self.committed_in if t < raft.term)
                held = [raft.term_at(i) for i in range(1, must_hold + 1)]  # through `older` where compacted
                if held != self.committed[:must_hold]:
                    raise InvariantViolation(f"{where}: primary {i} (term {raft.term}) lacks committed entries")
            commit = n.disk.commit
            if commit and not n.disk.log[commit - 1].signature:
                raise InvariantViolation(f"{where}: {i} committed {commit}, which is not a signature")
            if [e.term for e in n.disk.log[:commit]] != self.committed[:commit]:
                raise InvariantViolation(f"{where}: {i}'s committed prefix differs from the committed one")
        ids = sorted(logs)
        for a_pos, a in enumerate(ids):
            for b in ids[a_pos + 1:]:
                la, lb = logs[a], logs[b]
                for index in range(min(len(la), len(lb)), 0, -1):
                    if la[index - 1] == lb[index - 1]:
                        if la[:index] != lb[:index]:
                            raise InvariantViolation(f"{where}: logs of {a} and {b} match at {index} but differ "
                                                     "before it")
                        break

    def messages_of(self, kind: type) -> list[Message]:
        return [m for m in self.in_flight if isinstance(m, kind)]

    def commit_of(self, node_id: str) -> int:
        return self.nodes[node_id].disk.commit

    def run_until_quiet(self, ticks: int = 200) -> None:
        """Heal-free liveness helper: tick everyone and deliver everything, `ticks` rounds."""
        for _ in range(ticks):
            for i in self.ids:
                self.tick(i)
            self.deliver_all()
            self.check()


__all__ = ["AppendEntries", "InvariantViolation", "Simulation"]
