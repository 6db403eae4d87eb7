"""A network of real node processes for chaos runs: each node on its own loopback address behind a per-link
proxy (so links can be cut or slowed one by one), and the handles a nemesis needs: kill -9, restart, pause
(SIGSTOP), resume (SIGCONT), a disk that refuses writes (the ledger's failpoint), and who is primary.

Guarantees: `Cluster.start` returns an open service (member0 opened it, user0 may write); `stop` stops every
node (resuming paused ones first) and reports each node's last commit seqno for the ledger check. Not here:
load, faults' schedule, checking.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from ledger.files import DISK_FAULT_FILE
from network.client.connection import ServiceClient
from scripts.link_proxy import LinkProxies
from scripts.sandbox import launch_node, make_identities, node_config, open_service, start_node, wait_ready

ELECTION_TIMEOUT_MS = 500  # short, so that a run sees many elections
FAILPOINTS_VARIABLE = "PYCCF_FAILPOINTS"  # see ledger/files.py: injected disk faults


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Cluster:
    def __init__(self, workspace: str, size: int) -> None:
        self.workspace = workspace
        self.size = size
        self.common = os.path.join(workspace, "sandbox_common")
        self.hosts = [f"127.0.0.{2 + i}" for i in range(size)]
        self.proxies = LinkProxies()
        self.ports: list[int] = []
        self.configs: list[str] = []
        self.processes: list[subprocess.Popen[bytes] | None] = [None] * size
        self.paused: set[int] = set()
        self.last_commit: list[int] = [0] * size
        self.ids: list[str] = [""] * size  # node ids, as each node first wrote them
        self.restart_failures: list[str] = []  # nodes that did not come back when restarted

    def start(self) -> None:
        os.environ[FAILPOINTS_VARIABLE] = "1"  # the nodes started from here honour injected disk faults
        make_identities(self.common)
        for i, host in enumerate(self.hosts):
            bind, published = f"{host}:{free_port(host)}", f"{host}:{free_port(host)}"
            self.proxies.add(published, bind)
            port = free_port()
            config = node_config(self.workspace, port, index=i,
                                 join=f"https://127.0.0.1:{self.ports[0]}" if i else None,
                                 node_to_node_address=bind, node_to_node_published_address=published,
                                 consensus={"election_timeout_ms": ELECTION_TIMEOUT_MS, "heartbeat_ms": 50},
                                 snapshots={"every_tx": 2000})
            self.ports.append(port)
            self.configs.append(config)
            self.processes[i], ready = start_node(config, timeout=60)
            self.ids[i] = str(ready["node_id"])
        open_service(self.url(0), self.common)  # nodes that join before the opening are trusted with it

    # --- addresses and clients -------------------------------------------------------------------------

    def url(self, i: int) -> str:
        return f"https://127.0.0.1:{self.ports[i]}"

    def data_dir(self, i: int) -> str:
        return os.path.dirname(self.configs[i])

    def client(self, i: int, *, user: bool = True, timeout: float = 3.0) -> ServiceClient:
        path = lambda name: os.path.join(self.common, name)  # noqa: E731
        return ServiceClient(self.url(i), path("service_cert.pem"), cert=path("user0_cert.pem") if user else None,
                             key=path("user0_privk.pem") if user else None, timeout=timeout)

    def running(self, i: int) -> bool:
        p = self.processes[i]
        return p is not None and p.poll() is None

    def primary(self) -> int | None:
        """The node a majority of the reachable running nodes name as primary, if any."""
        named: dict[str, int] = {}
        for i in range(self.size):
            if not self.running(i) or i in self.paused:
                continue
            with contextlib.suppress(Exception):
                primary = self.client(i, user=False, timeout=1.0).json_ok("GET", "/node/network")["primary_id"]
                if primary:
                    named[primary] = named.get(primary, 0) + 1
        ids = {node_id: i for i, node_id in enumerate(self.ids)}
        best = max(named.items(), key=lambda kv: kv[1], default=None)
        return ids.get(best[0]) if best else None

    def commit_seqno(self, i: int) -> int | None:
        try:
            txid = self.client(i, user=False, timeout=2.0).json_ok("GET", "/node/commit")["transaction_id"]
        except Exception:  # noqa: BLE001 - down, paused or electing: unknown
            return None
        seqno = int(str(txid).split(".")[1])
        self.last_commit[i] = max(self.last_commit[i], seqno)
        return seqno

    # --- faults -------------------------------------------------------------------------------------------

    def kill(self, i: int) -> None:
        p = self.processes[i]
        if p is not None and p.poll() is None:
            if i in self.paused:
                p.send_signal(signal.SIGCONT)
                self.paused.discard(i)
            p.send_signal(signal.SIGKILL)
            p.wait()

    def pause(self, i: int) -> None:
        p = self.processes[i]
        if p is not None and p.poll() is None and i not in self.paused:
            p.send_signal(signal.SIGSTOP)
            self.paused.add(i)

    def resume(self, i: int) -> None:
        p = self.processes[i]
        if i in self.paused and p is not None:
            p.send_signal(signal.SIGCONT)
        self.paused.discard(i)

    def disk_fault(self, i: int, errno_name: str) -> None:
        """Node i's ledger writes fail with `errno_name` (ENOSPC: a full disk, EROFS: a read-only one)."""
        with open(os.path.join(self.data_dir(i), "ledger", DISK_FAULT_FILE), "w") as f:
            f.write(errno_name)

    def heal(self) -> None:
        """Every node running and resumed, every disk and link whole (the nodes that were down start side by
        side)."""
        self.proxies.heal()
        for i in range(self.size):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.data_dir(i), "ledger", DISK_FAULT_FILE))
        down = [i for i in range(self.size) if not self.running(i)]
        for i in range(self.size):
            self.resume(i)
        for i in down:
            self.processes[i] = launch_node(self.configs[i])
        for i in down:
            process = self.processes[i]
            assert process is not None
            try:
                wait_ready(process, self.configs[i], timeout=120)
            except RuntimeError as e:  # a finding, reported with the run's anomalies; the run goes on
                self.restart_failures.append(f"node {i}: {e}")

    def stop(self) -> list[int]:
        """Stop every node (after noting its commit seqno); their exit codes."""
        for i in range(self.size):
            self.resume(i)
            if self.running(i):
                self.commit_seqno(i)
        codes = []
        for p in self.processes:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    codes.append(p.wait(timeout=30))
                except subprocess.TimeoutExpired:
                    p.kill()
                    codes.append(p.wait())
        self.proxies.close()
        return codes

    def wait_for_primary(self, timeout: float = 30.0) -> int | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (p := self.primary()) is not None:
                return p
            time.sleep(0.1)
        return None
