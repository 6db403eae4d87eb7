"""The enclave runtime's syncs off the loop: a finished sync is handed back at the next input the loop gives the
enclave, before that input, and otherwise by a callback the sync thread schedules; once, in order, errors
included. And its forwarding: the primary's answer relayed, or a 503 once it is overdue."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import cast

import orjson
import pytest

import network.enclave.runtime as runtime_module
from network.boundary import HostCalls
from network.enclave.channels import Channels
from network.enclave.enclave import Enclave
from network.enclave.http import Request, Response
from network.enclave.runtime import EnclaveRuntime
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse

pytestmark = pytest.mark.unit

NOT_A_CONNECTION = 10**9  # `received` for a connection the runtime does not know: only the hand-back happens


class _Host:
    def __init__(self) -> None:
        self.failures: list[str] = []

    def failed(self, reason: str) -> None:
        self.failures.append(reason)

    def stopped(self) -> None:
        pass


def _wait_until(condition: object, timeout: float = 5.0) -> None:
    """Block the loop's thread (so no loop callback runs) until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the sync thread did not finish in time"
        time.sleep(0.001)


def test_a_finished_sync_is_handed_back_at_the_next_input_before_any_loop_callback() -> None:
    runtime = EnclaveRuntime(cast(HostCalls, _Host()))
    handed: list[tuple[str, BaseException | None]] = []
    synced = threading.Event()

    async def scenario() -> None:
        runtime.sync_off_loop(synced.set, lambda error: handed.append(("done", error)))
        _wait_until(lambda: synced.is_set() and runtime._finished_syncs)
        assert handed == []  # finished on the thread, not yet handed back: the loop has not run
        runtime.received(NOT_A_CONNECTION, b"")
        assert handed == [("done", None)]  # handed back by the input, without a turn of the loop
        await asyncio.sleep(0.01)  # the thread's callback runs now and finds nothing left
        assert handed == [("done", None)]

    asyncio.run(scenario())
    runtime.stop()


def test_without_input_the_sync_thread_hands_the_sync_back_through_the_loop() -> None:
    runtime = EnclaveRuntime(cast(HostCalls, _Host()))
    handed: list[BaseException | None] = []

    async def scenario() -> None:
        runtime.sync_off_loop(lambda: None, handed.append)
        for _ in range(500):
            if handed:
                break
            await asyncio.sleep(0.001)
        assert handed == [None]

    asyncio.run(scenario())
    runtime.stop()


def test_syncs_are_handed_back_in_the_order_they_began_with_their_errors() -> None:
    runtime = EnclaveRuntime(cast(HostCalls, _Host()))
    handed: list[tuple[int, BaseException | None]] = []
    failure = OSError(5, "Input/output error")

    def failing() -> None:
        raise failure

    async def scenario() -> None:
        runtime.sync_off_loop(lambda: time.sleep(0.02), lambda error: handed.append((1, error)))
        runtime.sync_off_loop(failing, lambda error: handed.append((2, error)))
        runtime.sync_off_loop(lambda: None, lambda error: handed.append((3, error)))
        _wait_until(lambda: len(runtime._finished_syncs) == 3)
        runtime.received(NOT_A_CONNECTION, b"")
        assert handed == [(1, None), (2, failure), (3, None)]

    asyncio.run(scenario())
    runtime.stop()


def test_a_failing_hand_back_stops_the_node_saying_why() -> None:
    host = _Host()
    runtime = EnclaveRuntime(cast(HostCalls, host))

    def done(error: BaseException | None) -> None:
        raise RuntimeError("replayed input did not apply")

    async def scenario() -> None:
        runtime.sync_off_loop(lambda: None, done)
        _wait_until(lambda: runtime._finished_syncs)
        runtime.received(NOT_A_CONNECTION, b"")
        assert len(host.failures) == 1 and "replayed input did not apply" in host.failures[0]

    asyncio.run(scenario())
    runtime.stop()


def test_once_stopping_a_sync_runs_in_place() -> None:
    runtime = EnclaveRuntime(cast(HostCalls, _Host()))
    handed: list[BaseException | None] = []
    runtime.stop()
    runtime.sync_off_loop(lambda: None, handed.append)  # no loop needed: it runs here and now
    assert handed == [None]


# --- forwarding: the primary's answer relayed, or a timeout -------------------------------------------------


class _Backup:
    node_id = "backup"

    def primary_id(self) -> str:
        return "primary"


class _Channels:
    def __init__(self) -> None:
        self.sent: list[Envelope] = []

    def send(self, envelope: Envelope) -> bool:
        self.sent.append(envelope)
        return True


def _forwarding_runtime() -> tuple[EnclaveRuntime, _Channels]:
    runtime = EnclaveRuntime(cast(HostCalls, _Host()))
    runtime.enclave = cast(Enclave, _Backup())
    channels = _Channels()
    runtime.channels = cast(Channels, channels)
    return runtime, channels


async def _forward_started(runtime: EnclaveRuntime,
                           channels: _Channels) -> tuple[asyncio.Task[Response], ForwardedRequest]:
    """A write being forwarded (its task started), and the request the channels were given for the primary."""
    request = Request("POST", "/app/log/private", {}, b"{}", None)
    task = asyncio.get_running_loop().create_task(runtime._forward(request))
    await asyncio.sleep(0)
    (sent,) = channels.sent
    assert isinstance(sent.message, ForwardedRequest)
    return task, sent.message


def test_a_forwarded_request_gets_the_primarys_answer() -> None:
    runtime, channels = _forwarding_runtime()

    async def scenario() -> Response:
        answer, forwarded = await _forward_started(runtime, channels)
        assert forwarded.to == "primary"
        runtime.forwarded(ForwardedResponse("primary", "backup", forwarded.id, 201, (("x", "y"),), b"made"))
        return await answer

    response = asyncio.run(scenario())
    assert (response.status, response.body, response.headers) == (201, b"made", (("x", "y"),))
    assert runtime._forwarding == {}


def test_a_forwarded_request_the_primary_does_not_answer_in_time_is_a_503_and_a_late_answer_is_dropped(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime_module, "FORWARD_TIMEOUT", 0.01)
    runtime, channels = _forwarding_runtime()

    async def scenario() -> Response:
        response = await runtime._forward(Request("POST", "/app/log/private", {}, b"{}", None))
        (sent,) = channels.sent
        runtime.forwarded(ForwardedResponse("primary", "backup", sent.message.id, 200, (), b"late"))  # ignored
        return response

    response = asyncio.run(scenario())
    assert response.status == 503 and orjson.loads(response.body)["error"]["code"] == "TransactionReplicationFailed"
    assert runtime._forwarding == {}


def test_a_forwarded_request_whose_client_is_gone_leaves_no_timer_and_no_waiting_entry() -> None:
    runtime, channels = _forwarding_runtime()

    async def scenario() -> int:
        task, forwarded = await _forward_started(runtime, channels)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        runtime.forwarded(ForwardedResponse("primary", "backup", forwarded.id, 200, (), b"late"))  # dropped
        return len(asyncio.get_running_loop()._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(scenario()) == 0  # the timeout's timer was cancelled with the request
    assert runtime._forwarding == {}
