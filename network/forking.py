"""Processes forked for the enclave's own work: serialising a snapshot, and a recovery's parallel replay.

Forking copies the enclave's state as it is (copy-on-write), so a snapshot is taken of the state at one
signature while the node goes on serving, and replay workers inherit the ledger secrets and the jobs without
them crossing a pipe. The forks are made from the process the enclave runs in: the node's one process, or the
enclave's own process. Each child is killed with its parent (Linux `PR_SET_PDEATHSIG`).

Workers' results come back through the executor's pipe, or, when the caller bounds their size, through an
anonymous shared mapping made before the workers are forked (no file, nothing the host can open): each worker
pickles its result straight into its job's slot and the loop unpickles it from there, which spares the copies
through the pipe (a recovery's private replay brings back a gigabyte of state for a million 1 KiB records). A
result too large for its slot takes the pipe.

This module holds no key itself and imports nothing of the host or the enclave; the work it runs is given.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import mmap
import multiprocessing
import os
import pickle
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

from loguru import logger

from ledger.snapshot_files import write_file


class Forks:
    def __init__(self, loop: asyncio.AbstractEventLoop, snapshot_dir: str) -> None:
        self.loop = loop
        self.snapshot_dir = snapshot_dir
        self._snapshot_child: tuple[int, str] | None = None
        self._worker_task: asyncio.Task[None] | None = None

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        """Serialise in a forked process, which writes a temporary file in the snapshot directory and sends
        back its SHA-256; then `done(digest or None, place)` runs on the loop."""
        loop = self.loop
        partial = os.path.join(self.snapshot_dir, f".snapshot-{os.getpid()}.partial")
        read_end, write_end = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: no event loop, no logging; only serialise, write, report, exit
            code = 1
            try:
                die_with_parent()
                if os.getppid() != parent:  # the parent died before the line above took effect
                    os._exit(1)
                os.close(read_end)
                data = serialise()
                write_file(partial, data)
                os.write(write_end, hashlib.sha256(data).hexdigest().encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        self._snapshot_child = (pid, partial)

        def finished() -> None:
            loop.remove_reader(read_end)
            digest = os.read(read_end, 64).decode() or None
            os.close(read_end)
            os.waitpid(pid, 0)
            self._snapshot_child = None
            if digest is None and os.path.exists(partial):
                os.unlink(partial)
            done(digest, lambda path: os.replace(partial, path))

        loop.add_reader(read_end, finished)

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        """Forked worker processes (one a core) run `jobs`; `done` gets their results on the loop. `result_bytes`:
        a bound on each job's pickled result, if the caller knows one (the results then travel through shared
        memory, each unpickled on the loop as it arrives)."""
        loop = self.loop
        shared = None
        if result_bytes is not None and len(result_bytes) == len(jobs):
            try:
                shared = _SharedResults(result_bytes)
            except OSError as e:  # the kernel would not commit that much shared memory: the pipe it is
                logger.info(f"worker results through the pipe: no shared mapping of {sum(result_bytes)} bytes ({e})")
        _WORKER_JOBS[:] = jobs  # the forked workers inherit the jobs: only their indices cross the pipe
        _WORKER_SHARED[:] = [shared] if shared is not None else []
        pool = ProcessPoolExecutor(max_workers=max(1, min(len(jobs), os.cpu_count() or 1)),
                                   mp_context=multiprocessing.get_context("fork"))
        futures: list[asyncio.Future[Any]] = []
        try:
            for i in range(len(jobs)):
                futures.append(asyncio.wrap_future(pool.submit(_run_worker_job, i), loop=loop))
        except Exception:  # a fork refused: nothing is left running or held for the caller's fallback
            for future in futures:
                future.cancel()
            pool.shutdown(wait=False, cancel_futures=True)
            _WORKER_JOBS.clear()
            _WORKER_SHARED.clear()
            if shared is not None:
                shared.close()
            raise

        async def collect() -> None:
            results: list[Any] | BaseException
            try:
                if shared is None:
                    results = list(await asyncio.gather(*futures))
                else:  # in order, each unpickled as it comes while later jobs run; an error stops the collection
                    results = [shared.load(i, await future) for i, future in enumerate(futures)]
            except Exception as e:  # the first failure, passed on as it is
                results = e
                for future in futures:  # the others' outcomes are not wanted (nor logged as never retrieved)
                    if future.done() and not future.cancelled():
                        future.exception()
                    else:
                        future.cancel()
            finally:
                pool.shutdown(wait=False, cancel_futures=True)
                _WORKER_JOBS.clear()
                _WORKER_SHARED.clear()
                if shared is not None:
                    shared.close()
            done(results)

        self._worker_task = loop.create_task(collect())

    def abandon(self) -> None:
        """The node stops: an unfinished snapshot is killed and its partial file removed."""
        if self._snapshot_child is not None:
            pid, partial = self._snapshot_child
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            if os.path.exists(partial):
                os.unlink(partial)
            self._snapshot_child = None


class RunsForks:
    """`HostCalls.run_snapshot` and `run_in_workers` for whoever holds the `Forks` of the enclave's process (the
    host in-process, the enclave's own process otherwise)."""

    forks: Forks | None = None

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        assert self.forks is not None
        self.forks.run_snapshot(serialise, done)

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        assert self.forks is not None
        self.forks.run_in_workers(jobs, done, result_bytes)


_WORKER_JOBS: list[Callable[[], Any]] = []
_WORKER_SHARED: list[_SharedResults] = []  # the shared mapping of the jobs being run, if they use one


def _run_worker_job(index: int) -> Any:
    """In a worker forked by `run_in_workers`: run the job it inherited (its result placed in the shared mapping
    when there is one)."""
    die_with_parent()
    result = _WORKER_JOBS[index]()
    return _WORKER_SHARED[0].store(index, result) if _WORKER_SHARED else result


class _SlotFull(Exception):
    pass


class _SlotWriter:
    """A file-like target for `pickle.dump` writing into one slot of the shared mapping."""

    def __init__(self, view: memoryview) -> None:
        self.view = view
        self.size = 0

    def write(self, data: bytes) -> int:
        n = len(data)
        if self.size + n > len(self.view):
            raise _SlotFull
        self.view[self.size : self.size + n] = data
        self.size += n
        return n


class _SharedResults:
    """One page-aligned slot a job in an anonymous shared mapping, made before the workers are forked."""

    def __init__(self, result_bytes: list[int]) -> None:
        page = mmap.PAGESIZE
        sizes = [max(page, -(-max(0, n) // page) * page) for n in result_bytes]
        self.starts = list(itertools.accumulate(sizes, initial=0))
        self.memory = mmap.mmap(-1, self.starts[-1] or page)  # anonymous and shared: what the forks write, we read

    def store(self, index: int, result: Any) -> tuple[bool, Any]:
        """In a worker: (True, size) if `result` was pickled into slot `index`, else (False, result)."""
        with memoryview(self.memory) as whole, whole[self.starts[index] : self.starts[index + 1]] as slot:
            writer = _SlotWriter(slot)
            try:
                pickle.dump(result, writer, protocol=pickle.HIGHEST_PROTOCOL)
            except _SlotFull:
                return False, result
            return True, writer.size

    def load(self, index: int, answer: tuple[bool, Any]) -> Any:
        """In the parent: the result of job `index` from what its worker answered; its slot's pages are freed."""
        stored, value = answer
        if not stored:
            return value
        start = self.starts[index]
        with memoryview(self.memory) as whole, whole[start : start + value] as pickled:
            result = pickle.loads(pickled)
        with contextlib.suppress(AttributeError, OSError):  # not Linux: the mapping is freed whole when closed
            self.memory.madvise(mmap.MADV_REMOVE, start, self.starts[index + 1] - start)
        return result

    def close(self) -> None:
        self.memory.close()


def die_with_parent() -> None:
    """Linux: a forked child is killed with its parent (PR_SET_PDEATHSIG), never left writing alone."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
