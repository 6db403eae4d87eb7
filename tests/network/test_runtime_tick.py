"""The enclave runtime's timer: work that fails stops the node, saying why, rather than the timer alone."""

from __future__ import annotations

from typing import Any, cast

import pytest

from network.boundary import HostCalls
from network.enclave.enclave import Enclave
from network.enclave.runtime import EnclaveRuntime

pytestmark = pytest.mark.unit


class _Host:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def failed(self, reason: str) -> None:
        self.failures.append(reason)


class _FailingEnclave:
    def tick(self) -> Any:
        raise RuntimeError("deal_shares: no active recovery member")


def test_a_failing_tick_stops_the_node_with_its_reason_instead_of_killing_the_timer() -> None:
    host = _Host()
    runtime = EnclaveRuntime(cast(HostCalls, host))
    runtime.enclave = cast(Enclave, _FailingEnclave())
    runtime.tick()  # does not raise: the host's timer task lives on while the node stops
    runtime.tick()  # and the node is asked to stop once
    assert len(host.failures) == 1 and "no active recovery member" in host.failures[0]
