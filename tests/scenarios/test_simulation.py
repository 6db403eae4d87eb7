"""The consensus core under a simulated network: random faults, seeded, invariants after every step."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from network.consensus.raft import Role
from tests.scenarios.simulator import Simulation

pytestmark = pytest.mark.scenario


def _liveness(sim: Simulation) -> None:
    """Once the network is healed and every node up, a primary is elected and new entries commit."""
    sim.heal()
    for i in sim.ids:
        if not sim.nodes[i].up:
            sim.restart(i)
    sim.run_until_quiet(80)
    leader = sim.leader()
    assert leader is not None, f"no primary after healing (seed {sim.seed})"
    before = leader.disk.commit
    sim.propose()
    sim.propose(signature=True)
    sim.run_until_quiet(20)
    assert all(sim.commit_of(i) > before for i in sim.ids), f"no progress after healing (seed {sim.seed})"


@given(seed=st.integers(0, 2**32 - 1), nodes=st.sampled_from([3, 5]))
def test_random_faults_never_break_safety_and_the_healed_network_makes_progress(seed: int, nodes: int) -> None:
    sim = Simulation(nodes, seed)
    for _ in range(400):
        sim.random_step()
    _liveness(sim)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(int(os.environ.get("SIM_SEEDS", "200"))))
def test_long_seeded_runs(seed: int) -> None:
    print(f"seed={seed}")
    sim = Simulation(5 if seed % 2 else 3, seed)
    for _ in range(3000):
        sim.random_step()
    _liveness(sim)


def test_a_fault_free_network_elects_one_primary_and_commits_at_signatures_only(seed: int) -> None:
    sim = Simulation(3, seed)
    sim.run_until_quiet(60)
    leader = sim.leader()
    assert leader is not None
    assert sum(1 for n in sim.nodes.values() if n.raft.role is Role.LEADER) == 1
    committed = leader.disk.commit
    sim.propose()
    sim.propose()
    sim.run_until_quiet(5)
    assert all(sim.commit_of(i) == committed for i in sim.ids)  # no signature yet: nothing more commits
    sim.propose(signature=True)
    sim.run_until_quiet(5)
    assert all(sim.commit_of(i) == leader.raft.last_index for i in sim.ids)
