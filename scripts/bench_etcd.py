"""The etcd baseline for `bench.py --vs-etcd`: a three-member etcd cluster on 127.0.0.1 (Debian's etcd-server,
installed with apt-get if missing; WAL fsync on, etcd's default) and the same kind of load: pipelined HTTP/1.1
writes (`POST /v3/kv/put`, etcd's JSON gateway) of the same message size over the same number of connections.

etcd answers a put once it is committed, so its commit latency is the answer latency (request sent to answer
read), which is what `bench.py` measures for our node (request sent to commit observed).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import socket
import subprocess
import time
import urllib.request
from time import perf_counter
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_etcd() -> str:
    found = shutil.which("etcd")
    if found:
        return found
    subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "etcd-server"], check=True, capture_output=True,
                   env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    found = shutil.which("etcd")
    if not found:
        raise RuntimeError("etcd is not installed and apt-get could not install etcd-server")
    return found


def start_cluster(workspace: str, members: int = 3) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    etcd = ensure_etcd()
    clients = [free_port() for _ in range(members)]
    peers = [free_port() for _ in range(members)]
    cluster = ",".join(f"e{i}=http://127.0.0.1:{peers[i]}" for i in range(members))
    processes = []
    for i in range(members):
        data = os.path.join(workspace, f"etcd{i}")
        log = open(os.path.join(workspace, f"etcd{i}.log"), "wb")  # noqa: SIM115 - kept open by the process
        processes.append(subprocess.Popen(
            [etcd, "--name", f"e{i}", "--data-dir", data,
             "--listen-client-urls", f"http://127.0.0.1:{clients[i]}",
             "--advertise-client-urls", f"http://127.0.0.1:{clients[i]}",
             "--listen-peer-urls", f"http://127.0.0.1:{peers[i]}",
             "--initial-advertise-peer-urls", f"http://127.0.0.1:{peers[i]}",
             "--initial-cluster", cluster, "--initial-cluster-state", "new",
             "--initial-cluster-token", "bench"], stdout=log, stderr=log))
    deadline = time.monotonic() + 60
    for port in clients:
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if b'"true"' in r.read():
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                stop_cluster(processes)
                raise RuntimeError(f"etcd did not become healthy; see {workspace}/etcd*.log")
            time.sleep(0.2)
    return processes, clients


def stop_cluster(processes: list[subprocess.Popen[bytes]]) -> None:
    for p in processes:
        p.terminate()
    for p in processes:
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()


async def _writer(port: int, connection: int, window: int, msg: bytes, stop_at: float, t0: float,
                  latencies: list[tuple[float, float]]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent: list[float] = []
    counter = 0

    def request() -> bytes:
        nonlocal counter
        counter += 1
        key = base64.b64encode(f"k{connection:04d}-{counter:012d}".encode()).decode()
        body = b'{"key":"' + key.encode() + b'","value":"' + msg + b'"}'
        return (b"POST /v3/kv/put HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)

    for _ in range(window):
        writer.write(request())
        sent.append(perf_counter())
    while sent:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        await reader.readexactly(length)
        started = sent.pop(0)
        done = perf_counter()
        if b" 200 " in head.split(b"\r\n", 1)[0]:
            latencies.append((done, done - started))
        if done < stop_at:
            writer.write(request())
            sent.append(perf_counter())
    writer.close()


def run_load(ports: list[int], connections: int, window: int, msg_size: int, seconds: float,
             warmup: float) -> dict[str, Any]:
    """Load the cluster (connections spread over its members) and return the committed rate and latencies."""
    msg = base64.b64encode(b"x" * msg_size)
    latencies: list[tuple[float, float]] = []

    async def main() -> tuple[float, float]:
        t0 = perf_counter() + warmup
        stop_at = t0 + seconds
        await asyncio.gather(*(_writer(ports[c % len(ports)], c, window, msg, stop_at, t0, latencies)
                               for c in range(connections)))
        return t0, stop_at

    t0, t1 = asyncio.run(main())
    measured = sorted(lat for at, lat in latencies if t0 <= at <= t1)
    if not measured:
        raise RuntimeError("etcd answered no write in the measured window")
    return {"etcd_committed_tx_per_s": round(len(measured) / (t1 - t0)),
            "etcd_p50_ms": round(measured[len(measured) // 2] * 1000, 2),
            "etcd_p99_ms": round(measured[min(len(measured) - 1, int(len(measured) * 0.99))] * 1000, 2)}


if __name__ == "__main__":
    raise SystemExit("bench_etcd.py is a module of bench.py, not a command: run "
                     "`.venv/bin/python scripts/bench.py --nodes 3 --vs-etcd` (see its --help)")
