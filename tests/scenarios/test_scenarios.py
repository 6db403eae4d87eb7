"""Every named scenario file under tests/scenarios/ runs and passes (several seeds each)."""

from __future__ import annotations

import os

import pytest

from tests.scenarios.scenario_language import ScenarioError, run_scenario

pytestmark = pytest.mark.scenario

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = sorted(f for f in os.listdir(HERE) if f.endswith(".txt"))


@pytest.mark.parametrize("name", FILES)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_scenario(name: str, seed: int) -> None:
    with open(os.path.join(HERE, name)) as f:
        run_scenario(f.read(), seed)


def test_the_scenario_files_exist() -> None:
    assert {"elections.txt", "rollback_unsigned_suffix.txt", "stale_primary.txt", "membership.txt"} <= set(FILES)


def test_a_failing_assertion_names_its_line() -> None:
    with pytest.raises(ScenarioError, match=r"line 3 .*expected 5"):
        run_scenario("nodes 3\nelect n0\nassert commit n0 5\n", 1)


def test_an_unknown_command_is_refused() -> None:
    with pytest.raises(ScenarioError, match="unknown command"):
        run_scenario("nodes 3\nfly n0\n", 1)
