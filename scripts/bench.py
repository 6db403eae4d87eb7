#!/usr/bin/env python3
"""Node benchmark: write throughput, commit latency and memory of a fresh one-node network; prints one JSON object.

It makes a temporary workspace, starts a new one-node service on a free port and opens it (scripts/sandbox.py's
functions: real governance requests), then drives it with an asyncio load generator on the same machine:
`--connections` kept-alive TLS connections authenticated as user0, each with `--window` pipelined
`POST /app/log/private` requests (`{"id": <int>, "msg": "<--msg-size letters>"}`, pre-encoded) in flight. A
separate connection polls `GET /app/commit` every `--poll-ms` to learn when each write's seqno (from its
`x-ms-ccf-transaction-id`) is committed. With `--until-committed` a write holds its place in the window until it
is seen committed, not only answered: each connection then waits for its commits as a synchronous client does
(an etcd put returns at commit; a CCF client polls `/app/tx` until `Committed`).

Figures, over the measured window (after `--warmup` seconds, for `--seconds`, or until `--writes` writes):
- `write_tx_per_s`: successful (2xx) writes answered in the window, per second;
- `committed_tx_per_s`: writes whose commit was observed in the window, per second;
- `p50_ms`, `p99_ms` (and `p999_ms`, `max_ms`): commit latency of the writes sent in the window, from the request
  being sent to the first `/app/commit` answer showing the commit point at or past the write's seqno (so it
  includes up to one poll interval of observation delay); `answer_p50_ms`/`answer_p99_ms`: request sent to
  answer received; `answer_p50_p99_ms_by_node`: those two by the node written to, in the order the nodes were
  started, the first one (the primary, unless an election moved it) first; null for a node with no answered write
  in the window (a backup forwards its writes to the primary: the difference is what forwarding costs);
- `node_peak_rss_mb` (VmHWM) and `node_rss_mb` (VmRSS) of the node process once the load has drained;
- `node_cpu_percent` and `loadgen_cpu_percent` (100 = one core) over the window (with the node's enclave in its
  own process, `PYCCF_ENCLAVE_PROCESS=1`, also `enclave_process_cpu_percent` and `enclave_process_peak_rss_mb`,
  the node's figures being its host's); `errors`: non-2xx answers
  and requests lost with a connection, over the whole run; `node_rss_mb_by_writes`: [writes so far, VmRSS]
  samples taken every 2 s (at most about 20 kept).

`--node-profile FILE` runs the node under cProfile (the profile is written when the node stops);
`--node-config JSON` merges settings into the node's configuration (e.g. to turn snapshots off).

The node is stopped with SIGTERM at the end and must exit 0 (`node_exit_code`); the script exits 1 otherwise.
`--nodes 3` starts a primary and two backups (they join before the service opens); the connections are spread over
all nodes (`--primary-only`: all to the primary), and the commit point is polled on the primary. `--connections
1,16,64,256` runs one configuration per count on the same network and prints one JSON line each.
`--vs-etcd` then loads a 3-member etcd cluster with the same configurations (scripts/bench_compare.py): by default
at equal load, one request in flight per connection on both sides (`--window` applies to both), and each line
gets etcd's figures, `ratio_vs_etcd`, `p99_ratio_vs_etcd`, both sides' `client_cpu_pct` and `warnings` about a
saturated load generator; `--plot FILE.png` draws latency against throughput for both.
`--app module:attr` serves another app that has the logging app's `POST /app/log/private`, and `--app js:DIR` the
JavaScript bundle in DIR (deployed with `set_js_app` once the service is open; e.g. a JS logging app); `--app
app.inference:app` runs the confidential inference benchmark instead (`scripts/bench_inference.py`, which takes
the remaining arguments: inferences/s of an ONNX model through the node against bare onnxruntime).

Usage: `.venv/bin/python scripts/bench.py --nodes 1 --seconds 20`, or `--writes 1000000` for memory after 1M writes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import os
import shutil
import signal
import socket
import ssl
import string
import subprocess
import sys
import tempfile
import time
from array import array
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from functools import partial
from itertools import repeat
from typing import Any, cast

import orjson
from sandbox import (
    DEFAULT_APP,
    INFERENCE_APP,
    JS_APP_PREFIX,
    ROOT,
    app_problem,
    deploy_js_app,
    make_identities,
    node_app,
    node_config,
    open_service,
    start_node,
)

from network.client.connection import ServiceError

try:
    import uvloop
except ImportError:  # pragma: no cover - uvloop is a project dependency on Linux
    uvloop = None  # type: ignore[assignment]

perf_counter = time.perf_counter
TXID_HEADER = b"\r\nx-ms-ccf-transaction-id:"
LENGTH_HEADER = b"\r\ncontent-length:"


def _address(rpc_address: str) -> tuple[str, int]:
    host, _, port = rpc_address.rpartition(":")
    return host, int(port)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the node process -----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_profiled_node(config_path: str, profile: str, timeout: float = 120.0) -> tuple[subprocess.Popen[bytes],
                                                                                          dict[str, Any]]:
    """`sandbox.start_node`, with the node run under cProfile (written to `profile` when it stops)."""
    node_dir = os.path.dirname(config_path)
    ready = os.path.join(node_dir, "node.json")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(os.path.join(node_dir, "out"), "ab") as out, open(os.path.join(node_dir, "err"), "ab") as err:
        process = subprocess.Popen([sys.executable, "-m", "cProfile", "-o", os.path.abspath(profile),
                                    "-m", "network.node", "--config", config_path],
                                   stdout=out, stderr=err, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the profiled node did not start; see {node_dir}/err")
        time.sleep(0.05)
    with open(ready, "rb") as f:
        return process, orjson.loads(f.read())


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB (MiB)."""
    out: dict[str, float] = {}
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                out[name] = int(value.split()[0]) / 1024
    if len(out) != 2:
        raise RuntimeError(f"the node process {pid} has exited")
    return out


def proc_cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def enclave_process_of(pid: int) -> int | None:
    """The node's enclave process, when it runs its enclave as a separate process (`--enclave-process`)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError):
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                command = f.read()
            if ppid == pid and b"network.enclave.process" in command:
                return int(entry)
    return None


# --- the load generator ---------------------------------------------------------------------------------


class Load:
    """What the writer connections share: the request template, the ids, the limit, and the answers."""

    def __init__(self, template: bytes, limit: int | None, key_space: int) -> None:
        self.template = template
        self.limit = limit
        self.key_space = key_space
        self.next_id = 0
        self.stopped = False
        self.outstanding = 0
        self.ok = 0
        self.errors = 0
        self.error_samples: list[str] = []
        # one row per successful write: its seqno, when it was sent, when its answer was read
        self.seqnos = array("q")
        self.sent = array("d")
        self.answered = array("d")
        self.node = array("b")  # the index of the target it was written to (0: the first node started)
        self.drained = asyncio.Event()  # stopped (or the limit reached) and nothing outstanding
        # --until-committed: (seqno, order of answering, connection) of answered writes whose commit each
        # connection waits for before it sends more (the order breaks ties: a seqno written again after a rollback)
        self.awaiting_commit: list[tuple[int, int, WriterConnection]] = []
        self.awaiting_order = itertools.count()

    def committed_up_to(self, seqno: int) -> None:
        """The poller saw the commit point reach `seqno`: connections waiting for it send their next writes."""
        waiting, ready = self.awaiting_commit, []
        while waiting and waiting[0][0] <= seqno:
            _, _, connection = heapq.heappop(waiting)
            connection.held -= 1
            ready.append(connection)
        for connection in ready:
            connection.fill()

    def take(self, n: int) -> list[bytes]:
        if self.stopped:
            return []
        if self.limit is not None:
            n = min(n, self.limit - self.next_id)
            if n <= 0:
                return []
        first, template, space = self.next_id, self.template, self.key_space
        self.next_id = first + n
        self.outstanding += n
        if space:
            return [template % (i % space) for i in range(first, first + n)]
        return [template % i for i in range(first, first + n)]

    def failed(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what)
            log(f"error: {what}")

    def check_drained(self) -> None:
        if self.outstanding == 0 and (self.stopped or (self.limit is not None and self.next_id >= self.limit)):
            self.drained.set()


class WriterConnection(asyncio.Protocol):
    """Keeps `window` pipelined writes in flight; parses answers with a minimal HTTP/1.1 response reader.

    With `until_committed`, a write stays in the window until the poller sees it committed, not only until it
    is answered: the connection then waits for each commit as a synchronous client does (an etcd put returns
    at commit; a CCF client polls `/app/tx` until `Committed`)."""

    def __init__(self, load: Load, window: int, until_committed: bool = False, node: int = 0) -> None:
        self.load = load
        self.node = node  # the index of the target it writes to (0: the first node started)
        self.window = window
        self.until_committed = until_committed
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.pending: deque[float] = deque()  # send times of the requests in flight, in order
        self.held = 0  # answered writes whose commit the connection still waits for (--until-committed)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def fill(self) -> None:
        n = self.window - len(self.pending) - self.held
        if n <= 0 or self.transport is None or self.transport.is_closing():
            return
        requests = self.load.take(n)
        if requests:
            self.pending.extend(repeat(perf_counter(), len(requests)))
            self.transport.write(b"".join(requests))

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        size = len(buf)
        pos = 0
        now = perf_counter()
        load, pending = self.load, self.pending
        while True:
            end = buf.find(b"\r\n\r\n", pos)
            if end < 0:
                break
            head = bytes(buf[pos:end]).lower()
            i = head.find(LENGTH_HEADER)
            if i < 0:
                raise RuntimeError(f"an answer without content-length: {head[:200]!r}")
            j = head.find(b"\r\n", i + 2)
            stop = end + 4 + int(head[i + len(LENGTH_HEADER): j if j >= 0 else len(head)])
            if stop > size:
                break
            status = int(head[9:12])
            sent = pending.popleft()
            load.outstanding -= 1
            k = head.find(TXID_HEADER)
            if 200 <= status < 300 and k >= 0:
                j = head.find(b"\r\n", k + 2)
                txid = head[k + len(TXID_HEADER): j if j >= 0 else len(head)]
                seqno = int(txid[txid.find(b".") + 1:])
                load.seqnos.append(seqno)
                if self.until_committed:
                    self.held += 1
                    heapq.heappush(load.awaiting_commit, (seqno, next(load.awaiting_order), self))
                load.sent.append(sent)
                load.answered.append(now)
                load.node.append(self.node)
                load.ok += 1
            else:
                load.failed(f"{status}: {bytes(buf[end + 4:stop])[:300].decode(errors='replace')}")
            pos = stop
        if pos:
            del buf[:pos]
        self.fill()
        if load.outstanding == 0:
            load.check_drained()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.pending:
            lost = len(self.pending)
            self.pending.clear()
            self.load.outstanding -= lost
            for _ in range(lost):
                self.load.failed(f"connection lost with requests in flight ({exc})")
            self.load.check_drained()


class CommitPoller:
    """Polls `GET /app/commit` on its own connection; records (time answered, commit seqno)."""

    def __init__(self, host: str, port: int, context: ssl.SSLContext, interval: float) -> None:
        self.host, self.port, self.context, self.interval = host, port, context, interval
        self.times = array("d")
        self.seqnos = array("q")
        self.last = 0
        self.stop = asyncio.Event()
        self.advanced = asyncio.Event()
        self.ended = False
        self.on_advance: Callable[[int], None] | None = None

    async def run(self) -> None:
        try:
            await self._poll()
        except (OSError, EOFError, RuntimeError, ValueError, KeyError) as e:  # the node went away, or a bad answer
            log(f"error: commit polling stopped: {type(e).__name__}: {e}")
        finally:
            self.ended = True
            self.advanced.set()

    async def _poll(self) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port, ssl=self.context)
        request = f"GET /app/commit HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n\r\n".encode()
        try:
            while not self.stop.is_set():
                asked = perf_counter()
                writer.write(request)
                head = (await reader.readuntil(b"\r\n\r\n")).lower()
                i = head.find(LENGTH_HEADER)
                j = head.find(b"\r\n", i + 2)
                body = await reader.readexactly(int(head[i + len(LENGTH_HEADER):j]))
                now = perf_counter()
                if head[9:12] != b"200":
                    raise RuntimeError(f"GET /app/commit answered {head[:12]!r}: {body[:200]!r}")
                seqno = int(orjson.loads(body)["transaction_id"].split(".")[1])
                if seqno > self.last:
                    self.last = seqno
                    self.times.append(now)
                    self.seqnos.append(seqno)
                    self.advanced.set()
                    if self.on_advance is not None:
                        self.on_advance(seqno)
                await asyncio.sleep(max(0.0, self.interval - (now - asked)))
        finally:
            writer.close()

    async def wait_for(self, seqno: int, timeout: float) -> bool:
        deadline = perf_counter() + timeout
        while self.last < seqno:
            if self.ended:
                return False
            self.advanced.clear()
            left = deadline - perf_counter()
            if left <= 0:
                return False
            try:
                await asyncio.wait_for(self.advanced.wait(), left)
            except TimeoutError:
                return False
        return True


def percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


async def run_load(args: argparse.Namespace, targets: list[tuple[str, int]], context: ssl.SSLContext, pid: int,
                   connection_count: int) -> dict[str, Any]:
    """`connection_count` writer connections spread over `targets` (the primary first: it is also polled for
    the commit point), `args.window` requests in flight on each."""
    loop = asyncio.get_running_loop()
    host, port = targets[0]
    msg = (string.ascii_letters * (args.msg_size // len(string.ascii_letters) + 1))[: args.msg_size]
    # `{"id":` then the id right-aligned in 12 columns (JSON allows the spaces): the whole request, its
    # content-length included, is fixed, so one `template % id` makes each request.
    body = b'{"id":%12d,"msg":"' + msg.encode() + b'"}'
    template = (f"POST /app/log/private HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                f"content-length: {len(body % 0)}\r\n\r\n").encode() + body
    load = Load(template, args.writes, args.key_space)
    poller = CommitPoller(host, port, context, args.poll_ms / 1000)
    if args.until_committed:
        poller.on_advance = load.committed_up_to
    poll_task = loop.create_task(poller.run())
    connections: list[WriterConnection] = []
    for i in range(connection_count):
        target_host, target_port = targets[i % len(targets)]
        _, protocol = await loop.create_connection(
            partial(WriterConnection, load, args.window, args.until_committed, i % len(targets)), target_host,
            target_port, ssl=context)
        connections.append(protocol)
    log(f"{len(connections)} connections open over {min(len(targets), connection_count)} node(s), {args.window} "
        "requests in flight on each")

    start = perf_counter()
    rss_curve: list[tuple[int, float]] = []
    stop_sampling = asyncio.Event()

    async def sample() -> None:
        last_ok, last_t = 0, start
        while not stop_sampling.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_sampling.wait(), 2.0)
            now = perf_counter()
            try:
                rss = proc_status_mb(pid)["VmRSS"]
            except RuntimeError as e:
                log(f"error: {e}; stopping the load")
                load.stopped = True
                return
            rss_curve.append((load.ok, round(rss, 1)))
            log(f"t={now - start:6.1f}s writes={load.ok} ({(load.ok - last_ok) / (now - last_t):.0f}/s) "
                f"commit={poller.last} errors={load.errors} node_rss={rss:.0f}MB")
            last_ok, last_t = load.ok, now

    sampler = loop.create_task(sample())
    for c in connections:
        c.fill()

    # the measured window
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(load.drained.wait(), args.warmup)  # only returns early with --writes
    t0 = perf_counter() if not load.drained.is_set() else start
    enclave = enclave_process_of(pid)
    cpu0, me0 = proc_cpu_seconds(pid), time.process_time()
    enclave_cpu0 = proc_cpu_seconds(enclave) if enclave else 0.0
    if args.writes is None:
        await asyncio.sleep(args.seconds)
        t1 = perf_counter()
        load.stopped = True
    else:
        await load.drained.wait()
        t1 = perf_counter()
    cpu1, me1 = proc_cpu_seconds(pid), time.process_time()
    enclave_cpu1 = proc_cpu_seconds(enclave) if enclave else 0.0
    load.check_drained()
    try:
        await asyncio.wait_for(load.drained.wait(), 60)
    except TimeoutError:
        log(f"warning: {load.outstanding} requests still unanswered 60 s after the end")
    if load.seqnos and not await poller.wait_for(max(load.seqnos), 30):
        log(f"warning: commit observed only up to {poller.last}, the last write is {max(load.seqnos)}")
    poller.stop.set()
    stop_sampling.set()
    await asyncio.gather(poll_task, sampler)
    for c in connections:
        if c.transport is not None:
            c.transport.close()
    status = proc_status_mb(pid)
    enclave_status = proc_status_mb(enclave) if enclave else None

    # figures
    window = t1 - t0
    ptimes, pseqnos = poller.times, poller.seqnos
    never = float("inf")
    commit_times = [ptimes[i] if (i := bisect_left(pseqnos, s)) < len(pseqnos) else never for s in load.seqnos]
    answered_in = sum(1 for t in load.answered if t0 <= t <= t1)
    committed_in = sum(1 for t in commit_times if t0 <= t <= t1)
    latencies: list[float] = []
    answer_latencies: list[float] = []
    by_node: dict[int, list[float]] = {n: [] for n in range(min(len(targets), connection_count))}
    uncommitted = 0
    for sent, answered, committed, node in zip(load.sent, load.answered, commit_times, load.node, strict=True):
        if t0 <= sent <= t1:
            answer_latencies.append(answered - sent)
            by_node[node].append(answered - sent)
            if committed == never:
                uncommitted += 1
            else:
                latencies.append(committed - sent)
    latencies.sort()
    answer_latencies.sort()
    for node_latencies in by_node.values():
        node_latencies.sort()
    curve = rss_curve[:: max(1, len(rss_curve) // 20)]
    if rss_curve and curve[-1] != rss_curve[-1]:
        curve.append(rss_curve[-1])
    return {
        "write_tx_per_s": round(answered_in / window),
        "committed_tx_per_s": round(committed_in / window),
        "p50_ms": ms(percentile(latencies, 0.50)),
        "p99_ms": ms(percentile(latencies, 0.99)),
        "p999_ms": ms(percentile(latencies, 0.999)),
        "max_ms": ms(latencies[-1]) if latencies else None,
        "latency": f"request sent -> first GET /app/commit answer (polled every {args.poll_ms:g} ms) at or past "
                   "the write's seqno",
        "answer_p50_ms": ms(percentile(answer_latencies, 0.50)),
        "answer_p99_ms": ms(percentile(answer_latencies, 0.99)),
        # the same by the node written to, in start order (null: no answered write in the window)
        "answer_p50_p99_ms_by_node": [[ms(percentile(node_latencies, p)) for p in (0.50, 0.99)] if node_latencies
                                      else None for node_latencies in by_node.values()],
        "node_peak_rss_mb": round(status["VmHWM"], 1),
        "node_rss_mb": round(status["VmRSS"], 1),
        "node_cpu_percent": round(100 * (cpu1 - cpu0) / window),
        "loadgen_cpu_percent": round(100 * (me1 - me0) / window),
        "client_cpu_pct": round(100 * (me1 - me0) / window),
        **({"enclave_process_cpu_percent": round(100 * (enclave_cpu1 - enclave_cpu0) / window),
            "enclave_process_peak_rss_mb": round(enclave_status["VmHWM"], 1)} if enclave_status else {}),
        "errors": load.errors,
        "uncommitted_in_window": uncommitted,
        "writes_in_window": answered_in,
        "total_writes": load.ok,
        "last_seqno": max(load.seqnos) if load.seqnos else 0,
        "commit_polls_advancing": len(pseqnos),
        "connections": connection_count,
        "window": args.window,
        "until_committed": args.until_committed,
        "spread_over_nodes": min(len(targets), connection_count),
        "msg_size": args.msg_size,
        "key_space": args.key_space,
        "seconds": round(window, 2),
        "warmup_seconds": round(t0 - start, 2),
        "node_rss_mb_by_writes": curve,
    }


def client_context(common: str) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=os.path.join(common, "service_cert.pem"))
    context.load_cert_chain(os.path.join(common, "user0_cert.pem"), os.path.join(common, "user0_privk.pem"))
    return context


def run_event_loop(main: Callable[[], Any]) -> Any:
    if uvloop is not None:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main())
    return asyncio.run(main())


def _counts(text: str) -> list[int]:
    """`--connections`: one positive count, or several separated by commas."""
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a count or a comma-separated list of counts") from None
    if not counts or any(c <= 0 for c in counts):
        raise argparse.ArgumentTypeError(f"connection counts must be positive, not {text!r}")
    return counts


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--nodes", type=int, default=1,
                        help="nodes in the network (the connections are spread over them; see --primary-only)")
    parser.add_argument("--app", default=DEFAULT_APP,
                        help=f"the app the nodes serve (it must have POST /app/log/private); {INFERENCE_APP} runs "
                             "the inference benchmark with the remaining arguments")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the measured window")
    parser.add_argument("--writes", type=int,
                        help="stop after this many writes, warm-up included (--seconds is then ignored)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the measured window")
    parser.add_argument("--connections", type=_counts, default=None, metavar="N[,N...]",
                        help="writer connections; several (e.g. 1,16,64,256) run one configuration each, on the same "
                             "network (default 32; with --vs-etcd 1,16,64,256)")
    parser.add_argument("--window", type=int, default=None,
                        help="pipelined requests in flight per connection (default 8; with --vs-etcd 1, as a "
                             "client of either system keeps one request in flight per connection)")
    spread = parser.add_mutually_exclusive_group()
    spread.add_argument("--spread", dest="primary_only", action="store_false", default=False,
                        help="spread the connections over all nodes (the default; backups forward writes)")
    spread.add_argument("--primary-only", dest="primary_only", action="store_true",
                        help="open every connection to the primary")
    parser.add_argument("--plot", metavar="PNG",
                        help="with --vs-etcd: write a latency-versus-throughput plot of both systems (matplotlib)")
    parser.add_argument("--msg-size", type=int, default=64, help="characters in each message")
    parser.add_argument("--key-space", type=int, default=0,
                        help="ids cycle through 0..N-1 (0: every write records a new id)")
    parser.add_argument("--until-committed", action="store_true",
                        help="a write stays in its connection's window until it is seen committed, not only "
                             "answered: each connection waits for its commits, as a synchronous client does")
    parser.add_argument("--poll-ms", type=float, default=10.0, help="interval of the GET /app/commit polls")
    parser.add_argument("--node-config", default="{}",
                        help='JSON merged into the node configuration, e.g. \'{"snapshots": {"every_tx": 0}}\'')
    parser.add_argument("--node-profile", metavar="FILE", help="run the node under cProfile, writing FILE")
    parser.add_argument("--keep-workspace", action="store_true", help="keep the node's workspace (path on stderr)")
    parser.add_argument("--vs-etcd", action="store_true",
                        help="also load a 3-member etcd cluster the same way (installs Debian's etcd-server if "
                             "missing)")
    args = parser.parse_args(argv)
    if args.connections is None:
        args.connections = [1, 16, 64, 256] if args.vs_etcd else [32]
    if args.window is None:
        args.window = 1 if args.vs_etcd else 8
    if args.plot and not args.vs_etcd:
        parser.exit(2, "error: --plot goes with --vs-etcd\n")
    if (problem := app_problem(args.app)) is not None:
        parser.exit(2, f"error: --app {args.app}: {problem}\n")
    if args.nodes < 1:
        parser.exit(2, f"error: --nodes must be at least 1, not {args.nodes}\n")
    for name in ("seconds", "window", "msg_size", "poll_ms"):
        if getattr(args, name) <= 0:
            parser.exit(2, f"error: --{name.replace('_', '-')} must be positive\n")
    if args.writes is not None and args.writes <= 0:
        parser.exit(2, "error: --writes must be positive\n")
    if args.warmup < 0 or args.key_space < 0:
        parser.exit(2, "error: --warmup and --key-space cannot be negative\n")
    try:
        extra = orjson.loads(args.node_config)
    except orjson.JSONDecodeError as e:
        parser.exit(2, f"error: --node-config is not JSON: {e}\n")
    if not isinstance(extra, dict):
        parser.exit(2, "error: --node-config must be a JSON object\n")
    args.node_config = extra
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chooser = argparse.ArgumentParser(add_help=False)
    chooser.add_argument("--app", default=DEFAULT_APP)
    chosen, rest = chooser.parse_known_args(argv)
    if chosen.app == INFERENCE_APP:
        import bench_inference

        return int(bench_inference.main(rest))
    args = parse_args(argv)
    workspace = tempfile.mkdtemp(prefix="bench_node_")
    common = os.path.join(workspace, "sandbox_common")
    process: subprocess.Popen[bytes] | None = None
    backups: list[subprocess.Popen[bytes]] = []
    try:
        make_identities(common)
        port = free_port()
        config = node_config(workspace, port, app=node_app(args.app),
                             node_to_node_address=f"127.0.0.1:{free_port()}",
                             **args.node_config)
        log(f"starting a one-node service in {workspace} on port {port}")
        if args.node_profile:
            process, ready = start_profiled_node(config, args.node_profile)
        else:
            process, ready = start_node(config)
        pid = int(ready["pid"])
        targets = [_address(str(ready["rpc_address"]))]
        for i in range(1, args.nodes):  # backups join before the opening: trusted at once
            backup_config = node_config(workspace, free_port(), index=i, join=f"https://{ready['rpc_address']}",
                                        app=node_app(args.app), node_to_node_address=f"127.0.0.1:{free_port()}",
                                        **args.node_config)
            backup, backup_ready = start_node(backup_config)
            backups.append(backup)
            targets.append(_address(str(backup_ready["rpc_address"])))
        open_service(f"https://{ready['rpc_address']}", common)
        if args.app.startswith(JS_APP_PREFIX):
            deploy_js_app(f"https://{ready['rpc_address']}", common, args.app[len(JS_APP_PREFIX):])
        log(f"service open; node pid {pid}")
        if args.primary_only:
            targets = targets[:1]
        results = [run_event_loop(lambda c=count: run_load(args, targets, client_context(common), pid, c))
                   for count in args.connections]
        process.send_signal(signal.SIGTERM)
        try:
            code = process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            log("error: the node did not stop within 300 s of SIGTERM; killed")
            process.kill()
            code = process.wait()
        process = None
        for backup in backups:
            backup.send_signal(signal.SIGTERM)
            code = code or backup.wait(timeout=300)
        backups.clear()
        rows = [{"nodes": args.nodes, **result, "node_exit_code": code} for result in results]
        if args.vs_etcd:
            import bench_compare

            rows = bench_compare.with_etcd(rows, workspace, args.window, args.msg_size, args.seconds, args.warmup)
            if args.plot:
                bench_compare.plot(rows, args.plot)
                log(f"plot written to {args.plot}")
        for row in rows:
            if args.keep_workspace:
                row["workspace"] = workspace
            print(orjson.dumps(row).decode(), flush=True)
        if code != 0:
            log(f"error: the node exited with code {code}; see {workspace}/sandbox_0/err")
            return 1
        return 0
    except (RuntimeError, OSError, ServiceError) as e:
        log(f"error: {e}")
        return 1
    finally:
        for left in ([process] if process is not None else []) + backups:
            left.kill()
            left.wait()
        if args.keep_workspace:
            log(f"workspace kept: {workspace}")
        else:
            shutil.rmtree(workspace, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
