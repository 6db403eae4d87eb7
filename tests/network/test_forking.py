"""`Forks.run_in_workers`: results back in order, through the pipe or through memory shared with the workers."""

from __future__ import annotations

import asyncio
import functools
import mmap
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest

from network import forking
from network.forking import Forks

pytestmark = pytest.mark.unit


def _payload(index: int, size: int) -> dict[bytes, bytes]:
    return {index.to_bytes(4, "little") + bytes([i]): bytes([index % 251]) * size for i in range(4)}


def _fails() -> Any:
    raise ValueError("a damaged chunk")


def _run(jobs: list[Any], result_bytes: list[int] | None) -> list[Any] | BaseException:
    async def main() -> list[Any] | BaseException:
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[list[Any] | BaseException] = loop.create_future()
        Forks(loop, os.getcwd()).run_in_workers(jobs, answer.set_result, result_bytes)
        return await asyncio.wait_for(answer, 60)

    return asyncio.run(main())


@pytest.mark.parametrize("shared", [False, True])
def test_workers_results_come_back_in_order_through_the_pipe_or_shared_memory(
        shared: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[bool] = []  # per result: did it come through shared memory?
    load = forking._SharedResults.load

    def spy(self: forking._SharedResults, index: int, answer: tuple[bool, Any]) -> Any:
        answers.append(answer[0])
        return load(self, index, answer)

    monkeypatch.setattr(forking._SharedResults, "load", spy)
    jobs = [functools.partial(_payload, i, 3000) for i in range(7)]
    # slot 2 is too small for its result: that one takes the pipe
    bounds = [20_000 if i != 2 else 100 for i in range(7)] if shared else None
    assert _run(jobs, bounds) == [_payload(i, 3000) for i in range(7)]
    assert answers == ([True, True, False, True, True, True, True] if shared else [])


@pytest.mark.parametrize("shared", [False, True])
def test_a_failing_job_hands_its_error_to_done(shared: bool) -> None:
    jobs = [functools.partial(_payload, 0, 10), _fails, functools.partial(_payload, 2, 10)]
    result = _run(jobs, [4096] * 3 if shared else None)
    assert isinstance(result, ValueError) and str(result) == "a damaged chunk"


def test_results_take_the_pipe_when_the_kernel_refuses_the_shared_mapping(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(mmap, "mmap", refused)
    jobs = [functools.partial(_payload, i, 100) for i in range(3)]
    assert _run(jobs, [8192] * 3) == [_payload(i, 100) for i in range(3)]


def test_a_fork_refused_midway_leaves_nothing_running_or_held(monkeypatch: pytest.MonkeyPatch) -> None:
    class RefusesTheSecond(ProcessPoolExecutor):
        submitted = 0

        def submit(self, *args: Any, **kwargs: Any) -> Any:
            RefusesTheSecond.submitted += 1
            if RefusesTheSecond.submitted == 2:
                raise OSError(11, "Resource temporarily unavailable")
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(forking, "ProcessPoolExecutor", RefusesTheSecond)

    async def main() -> None:
        forks = Forks(asyncio.get_running_loop(), os.getcwd())
        with pytest.raises(OSError, match="temporarily unavailable"):
            forks.run_in_workers([functools.partial(_payload, i, 10) for i in range(3)], lambda results: None,
                                 [8192] * 3)

    asyncio.run(main())
    assert forking._WORKER_JOBS == [] and forking._WORKER_SHARED == []
