"""The nemesis of a chaos run: seeded faults, one window at a time, each healed at the end of its window and
logged with its times.

Fault kinds (`KINDS`): `kill` (kill -9 of a node, the primary half of the time, restarted at the window's end),
`pause` (SIGSTOP past the election timeout, then SIGCONT), `disk-full` and `disk-read-only` (a node's ledger
writes fail with ENOSPC or EROFS, the primary half of the time; it must stop rather than lose writes, and is
restarted once the disk is back), `partition` (a random minority cut off from the
majority), `isolate-primary`, `one-way` (one node's links to the others cut in one direction only), `bridge`
(two sides that see each other only through one node), `slow` (a node's links delayed), `crash-all` (every node
killed, then all restarted), `kill-and-partition` (a kill inside a partition). The random choices come from
`random.Random(seed)`; which node is primary when a fault begins is the service's doing.

Guarantees: after `run` returns, every node runs, none is paused, and every link is whole. Not here: the load
and the check.
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from scripts.chaos_cluster import ELECTION_TIMEOUT_MS, Cluster

KINDS = ("kill", "pause", "partition", "isolate-primary", "one-way", "bridge", "slow", "crash-all",
         "kill-and-partition", "disk-full", "disk-read-only")
WEIGHTS = (4, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1)  # the primary's death is the fault that matters most


@dataclass
class FaultWindow:
    kind: str
    start: float
    end: float = 0.0
    nodes: list[int] = field(default_factory=list)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "start": round(self.start, 3), "end": round(self.end, 3), "nodes": self.nodes,
                "detail": self.detail}


class Nemesis:
    def __init__(self, cluster: Cluster, seed: int, clock: Any, log: Any = print,
                 kinds: tuple[str, ...] = KINDS) -> None:
        unknown = set(kinds) - set(KINDS)
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; the kinds are {', '.join(KINDS)}")
        self.kinds = kinds
        self.weights = [WEIGHTS[KINDS.index(k)] for k in kinds]
        self.cluster = cluster
        self.rng = random.Random(seed)
        self.clock = clock  # seconds since the run began
        self.log = log
        self.windows: list[FaultWindow] = []
        self.stopping = threading.Event()

    def _pick_target(self) -> int:
        primary = self.cluster.primary()
        if primary is not None and self.rng.random() < 0.5:
            return primary
        return self.rng.randrange(self.cluster.size)

    def _cut_between(self, side_a: list[int], side_b: list[int], both_ways: bool = True) -> None:
        hosts = self.cluster.hosts
        pairs = {(hosts[a], hosts[b]) for a in side_a for b in side_b}
        if both_ways:
            pairs |= {(hosts[b], hosts[a]) for a in side_a for b in side_b}
        self.cluster.proxies.cut_links(pairs)

    def _begin(self, kind: str) -> tuple[FaultWindow, float]:
        """Apply a fault of `kind`; the window and how long to hold it."""
        c, rng, n = self.cluster, self.rng, self.cluster.size
        window = FaultWindow(kind, self.clock())
        hold = rng.uniform(1.0, 4.0)
        if kind == "kill":
            target = self._pick_target()
            c.kill(target)
            window.nodes = [target]
        elif kind == "pause":
            target = self._pick_target()
            c.pause(target)
            window.nodes = [target]
            hold = rng.uniform(1.5, 3.0) * ELECTION_TIMEOUT_MS / 500  # well past an election timeout
        elif kind in ("partition", "kill-and-partition"):
            minority = rng.sample(range(n), (n - 1) // 2)
            self._cut_between(minority, [i for i in range(n) if i not in minority])
            window.nodes, window.detail = minority, "minority cut off"
            if kind == "kill-and-partition":
                majority = [i for i in range(n) if i not in minority]
                victim = rng.choice(majority)
                c.kill(victim)
                window.nodes = [*minority, victim]
                window.detail = f"minority {minority} cut off, node {victim} of the majority killed"
        elif kind == "isolate-primary":
            primary = c.primary()
            target = primary if primary is not None else rng.randrange(n)
            self._cut_between([target], [i for i in range(n) if i != target])
            window.nodes = [target]
        elif kind == "one-way":
            target = rng.randrange(n)
            self._cut_between([target], [i for i in range(n) if i != target], both_ways=False)
            window.nodes, window.detail = [target], "its outgoing links cut"
        elif kind == "bridge":
            order = list(range(n))
            rng.shuffle(order)
            bridge, rest = order[0], order[1:]
            half = len(rest) // 2
            self._cut_between(rest[:half], rest[half:])
            window.nodes, window.detail = [bridge], f"sides {rest[:half]} and {rest[half:]} meet only through it"
        elif kind == "slow":
            target = rng.randrange(n)
            hosts = c.hosts
            delay = rng.uniform(0.05, 0.3)
            others = [i for i in range(n) if i != target]
            c.proxies.slow_links({(hosts[target], hosts[o]) for o in others} |
                                 {(hosts[o], hosts[target]) for o in others}, delay)
            window.nodes, window.detail = [target], f"{delay * 1000:.0f} ms added per chunk"
        elif kind in ("disk-full", "disk-read-only"):
            target = self._pick_target()
            c.disk_fault(target, "ENOSPC" if kind == "disk-full" else "EROFS")
            window.nodes = [target]
            window.detail = "its ledger writes fail; it must stop rather than lose them"
        elif kind == "crash-all":
            for i in range(n):
                c.kill(i)
            window.nodes = list(range(n))
            hold = rng.uniform(0.5, 2.0)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        return window, hold

    def _end(self, window: FaultWindow) -> None:
        self.cluster.heal()  # restarts the killed, resumes the paused, mends the links
        window.end = self.clock()

    def run(self, seconds: float) -> None:
        """Faults for `seconds` (or until `stop`), quiet gaps between them; everything healed at the end."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not self.stopping.is_set():
            if self.stopping.wait(self.rng.uniform(0.5, 2.0)):
                break
            kind = self.rng.choices(self.kinds, self.weights)[0]
            window, hold = self._begin(kind)
            self.log(f"  {window.start:7.2f} s  {kind} {window.nodes} {window.detail}".rstrip())
            self.windows.append(window)
            self.stopping.wait(min(hold, max(0.0, deadline - time.monotonic())))
            self._end(window)
        self.cluster.heal()

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.windows:
            out[w.kind] = out.get(w.kind, 0) + 1
        return out
