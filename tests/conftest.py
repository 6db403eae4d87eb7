"""Shared fixtures: hypothesis profiles, printed seeds, fresh service ledgers, the `ccf` package's tools."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from ledger.bootstrap import start_new_service
from ledger.genesis import GenesisMember
from ledger.identity import PartyIdentity
from ledger.service_ledger import ServiceLedger

settings.register_profile(
    "ci", max_examples=20, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "thorough", max_examples=300, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """A seed for tests that draw their own randomness; printed so a failure can be replayed."""
    value = int(os.environ.get("TEST_SEED", random.randrange(2**32)))
    print(f"\n[{request.node.name}] seed={value} (rerun with TEST_SEED={value})")
    return value


@pytest.fixture
def rng(seed: int) -> random.Random:
    return random.Random(seed)


@pytest.fixture(scope="session")
def member() -> PartyIdentity:
    return PartyIdentity.create("member0")


@pytest.fixture
def new_service(tmp_path: Any, member: PartyIdentity) -> Callable[..., ServiceLedger]:
    """Factory: a fresh service ledger (genesis + first signature, committed) under tmp_path."""
    counter = [0]

    def make(*, with_files: bool = True, **kwargs: Any) -> ServiceLedger:
        counter[0] += 1
        base = tmp_path / f"service{counter[0]}"
        kwargs.setdefault("snapshot_dir", str(base / "snapshots"))
        return start_new_service(
            str(base / "ledger") if with_files else None,
            [GenesisMember(member.pem, member_data={"name": "member0"})],
            "export function validate(input) { return { valid: true }; }",
            **kwargs,
        )

    return make
