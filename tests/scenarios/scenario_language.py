"""Scenario files (`tests/scenarios/*.txt`): a small line language driving the consensus simulation.

    nodes 3                    # n0, n1, n2 (first line)
    elect n0                   # n0 stands; every message is delivered; it must win
    campaign n0                # n0 stands; every message is delivered; it may lose
    propose [K]                # K entries (default 1) on the primary
    sign                       # a signature entry on the primary
    deliver [all | nA->nB]     # deliver one random / every / every message on a link
    drop [all | nA->nB]        # drop messages in flight (every one, or those on a link)
    tick nX|all [K]            # K ticks (default 1), answers processed
    run K                      # K rounds of: tick every node, deliver everything
    partition n0 | n1 n2       # cut every link between the groups (both ways)
    cut nA->nB                 # a one-way cut
    heal
    crash nX [K] / restart nX  # K of the entries written since its last sync survive (default: none)
    compact nX                 # the node's core forgets its log metadata up to its commit
    voters n0 n1               # install a voter set on every node (committed governance state)
    assert leader nX | assert no-leader
    assert role nX Primary|Backup|Candidate
    assert commit nX|all [>=] K  # commit index (exactly, or at least)
    assert last nX [>=] K      # last log index
    assert term nX T
    assert same-logs           # every node's log is the same

The safety invariants (`Simulation.check`) run after every line. `#` starts a comment.
"""

from __future__ import annotations

from network.consensus.raft import Role
from tests.scenarios.simulator import Simulation


class ScenarioError(AssertionError):
    pass


def _link(text: str) -> tuple[str, str]:
    a, _, b = text.partition("->")
    if not a or not b:
        raise ScenarioError(f"expected a link nA->nB, got {text!r}")
    return a, b


def run_scenario(text: str, seed: int) -> Simulation:
    sim: Simulation | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        try:
            if words[0] == "nodes":
                sim = Simulation(int(words[1]), seed)
                continue
            if sim is None:
                raise ScenarioError("the first command must be 'nodes N'")
            _execute(sim, words)
            sim.check()
        except (ScenarioError, AssertionError) as e:
            raise ScenarioError(f"line {number} ({line!r}): {e}") from e
    if sim is None:
        raise ScenarioError("empty scenario")
    return sim


def _targets(sim: Simulation, name: str) -> list[str]:
    return list(sim.ids) if name == "all" else [name]


def _execute(sim: Simulation, words: list[str]) -> None:
    op, args = words[0], words[1:]
    if op == "elect":
        sim.elect(args[0])
    elif op == "campaign":
        sim.nodes[args[0]].raft.campaign()
        sim._process(sim.nodes[args[0]])
        sim.deliver_all()
    elif op == "propose":
        for _ in range(int(args[0]) if args else 1):
            if not sim.propose():
                raise ScenarioError("no primary to propose to")
    elif op == "sign":
        if not sim.propose(signature=True):
            raise ScenarioError("no primary to sign")
    elif op == "deliver":
        if not args:
            sim.deliver()
        elif args[0] == "all":
            sim.deliver_all()
        else:
            a, b = _link(args[0])
            while True:
                indices = [i for i, m in enumerate(sim.in_flight) if (m.sender, m.to) == (a, b)]
                if not indices:
                    break
                sim.deliver(indices[0])
    elif op == "drop":
        if args and args[0] != "all":
            a, b = _link(args[0])
            sim.in_flight = [m for m in sim.in_flight if (m.sender, m.to) != (a, b)]
        else:
            sim.in_flight = []
    elif op == "tick":
        for _ in range(int(args[1]) if len(args) > 1 else 1):
            for node in _targets(sim, args[0]):
                sim.tick(node)
    elif op == "run":
        sim.run_until_quiet(int(args[0]))
    elif op == "partition":
        groups, current = [], []
        for word in args:
            if word == "|":
                groups.append(current)
                current = []
            else:
                current.append(word)
        groups.append(current)
        sim.partition(*groups)
    elif op == "cut":
        sim.cut_link(*_link(args[0]))
    elif op == "heal":
        sim.heal()
    elif op == "compact":
        sim.nodes[args[0]].compact()
    elif op == "crash":
        sim.crash(args[0], int(args[1]) if len(args) > 1 else 0)
    elif op == "restart":
        sim.restart(args[0])
    elif op == "voters":
        for node in sim.nodes.values():
            node.voters = list(args)
            if node.up:
                node.raft.set_voters(args)
                sim._process(node)
    elif op == "assert":
        _check(sim, args)
    else:
        raise ScenarioError(f"unknown command {op!r}")


def _check(sim: Simulation, args: list[str]) -> None:
    what = args[0]
    if what == "leader":
        leader = sim.leader()
        if leader is None or leader.id != args[1]:
            raise ScenarioError(f"expected primary {args[1]}, got {leader.id if leader else None}")
    elif what == "no-leader":
        leader = sim.leader()
        if leader is not None:
            raise ScenarioError(f"expected no primary, got {leader.id} (term {leader.raft.term})")
    elif what == "role":
        role = sim.nodes[args[1]].raft.role
        if role is not Role(args[2]):
            raise ScenarioError(f"{args[1]} is {role.value}, expected {args[2]}")
    elif what == "commit":
        for node in _targets(sim, args[1]):
            _compare(f"{node} committed", sim.commit_of(node), args[2:])
    elif what == "last":
        _compare(f"{args[1]} ends at", sim.nodes[args[1]].raft.last_index, args[2:])
    elif what == "same-logs":
        logs = {i: [(e.index, e.term, e.signature) for e in n.raft.log] for i, n in sim.nodes.items()}
        if len({tuple(v) for v in logs.values()}) != 1:
            raise ScenarioError(f"logs differ: { {i: len(v) for i, v in logs.items()} }")
    elif what == "term":
        for node in _targets(sim, args[1]):
            term = sim.nodes[node].raft.term
            if term != int(args[2]):
                raise ScenarioError(f"{node} is in term {term}, expected {args[2]}")
    else:
        raise ScenarioError(f"unknown assertion {what!r}")


def _compare(what: str, actual: int, spec: list[str]) -> None:
    at_least = spec[0] == ">="
    expected = int(spec[-1])
    if (actual < expected) if at_least else (actual != expected):
        raise ScenarioError(f"{what} {actual}, expected {'>= ' if at_least else ''}{expected}")
