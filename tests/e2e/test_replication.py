"""Three real node processes replicating over mutual TLS (issue 5): writes sent to a backup are forwarded,
the primary is killed with SIGKILL, a new primary is elected, every write reported Committed is still
readable on every node, the killed node restarts and catches up, and afterwards every node's ledger passes
`read_ledger.py` with byte-identical committed entries."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ledger.files import LedgerFiles
from network.client import ServiceClient
from scripts.sandbox import make_identities, node_config, open_service, start_node
from tests.ccf_tools import assert_read_ledger_accepts
from tests.e2e.harness import free_port

pytestmark = pytest.mark.e2e


class Network:
    def __init__(self, workspace: Path, size: int = 3) -> None:
        self.workspace = workspace
        self.common = str(workspace / "sandbox_common")
        make_identities(self.common)
        self.ports = [free_port() for _ in range(size)]
        first = f"https://127.0.0.1:{self.ports[0]}"
        self.configs = [node_config(str(workspace), port, index=i, join=first if i else None,
                                    node_to_node_address=f"127.0.0.1:{free_port()}",
                                    consensus={"election_timeout_ms": 500, "heartbeat_ms": 50})
                        for i, port in enumerate(self.ports)]
        self.processes: list[subprocess.Popen[bytes] | None] = []
        for config in self.configs:
            self.processes.append(start_node(config)[0])
        open_service(first, self.common)

    def url(self, i: int) -> str:
        return f"https://127.0.0.1:{self.ports[i]}"

    def client(self, i: int, user: bool = True) -> ServiceClient:
        cert = os.path.join(self.common, "user0_cert.pem") if user else None
        key = os.path.join(self.common, "user0_privk.pem") if user else None
        return ServiceClient(self.url(i), os.path.join(self.common, "service_cert.pem"), cert=cert, key=key,
                             timeout=10)

    def live(self) -> list[int]:
        return [i for i, p in enumerate(self.processes) if p is not None and p.poll() is None]

    def primary(self, timeout: float = 20.0) -> int:
        """The index of the node every live node names as primary (waits for an election)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            named = set()
            for i in self.live():
                try:
                    named.add(self.client(i, user=False).json_ok("GET", "/node/network")["primary_id"])
                except Exception:  # a node may be busy electing: ask again
                    named.add(None)
            ids = {self.node_id(i): i for i in self.live()}
            if len(named) == 1 and (only := named.pop()) in ids:
                return ids[only]
            time.sleep(0.1)
        raise AssertionError("the live nodes do not agree on a primary")

    def node_id(self, i: int) -> str:
        with open(os.path.join(os.path.dirname(self.configs[i]), "node.json"), "rb") as f:
            return str(orjson.loads(f.read())["node_id"])

    def commit(self, i: int) -> tuple[int, int]:
        view, seqno = self.client(i, user=False).json_ok("GET", "/node/commit")["transaction_id"].split(".")
        return int(view), int(seqno)

    def write_committed(self, i: int, record_id: int, msg: str, timeout: float = 20.0) -> str:
        client = self.client(i)
        answer = client.call("POST", "/app/log/private", {"id": record_id, "msg": msg})
        assert answer.status == 200, answer.body
        txid = answer.txid
        assert txid is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.json_ok("GET", f"/app/tx?transaction_id={txid}")["status"]
            if status == "Committed":
                return txid
            assert status != "Invalid", txid
            time.sleep(0.05)
        raise AssertionError(f"{txid} did not commit")

    def stop(self) -> list[int]:
        codes = []
        for p in self.processes:
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                codes.append(p.wait(timeout=30))
        return codes


@pytest.fixture
def network(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    workspace = tmp_path_factory.mktemp("e2e-replication")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    net = Network(workspace)
    yield net
    net.stop()


def test_a_killed_primary_is_replaced_and_no_committed_write_is_lost(network: Network) -> None:
    first = network.primary()
    assert first == 0
    committed = {i: network.write_committed(first, i, f"before-{i}") for i in range(5)}
    # reads are served by every node, from its replicated state
    for i in range(3):
        deadline = time.monotonic() + 10
        while network.client(i).call("GET", "/app/log/private?id=4").status != 200:
            assert time.monotonic() < deadline, f"node {i} never caught up"
            time.sleep(0.05)
    # a write sent to a backup is forwarded to the primary with the caller's identity, and the session then
    # reads its own writes (its later requests go to the primary too)
    session = network.client(1)
    forwarded = session.call("POST", "/app/log/private", {"id": 99, "msg": "via a backup"})
    assert forwarded.status == 200 and forwarded.txid is not None, forwarded.body
    assert session.call("GET", "/app/log/private?id=99").json() == {"msg": "via a backup"}
    stranger = network.client(2, user=False).call("POST", "/app/log/private", {"id": 98, "msg": "x"})
    assert stranger.status == 401  # the primary authenticated the forwarded caller, and refused it

    process = network.processes[first]
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    new = network.primary()
    assert new != first
    view_before = network.commit(new)[0]
    for i in range(3):
        network.write_committed(new, 10 + i, f"after-{i}")
    for i in network.live():
        for record_id in range(5):
            answer = network.client(i).call("GET", f"/app/log/private?id={record_id}")
            assert answer.status == 200 and answer.json() == {"msg": f"before-{record_id}"}, (i, committed)
    assert network.commit(new)[0] >= view_before > 2

    # the killed node restarts on its data directory and catches up as a backup
    network.processes[first] = start_node(network.configs[first])[0]
    target = network.commit(new)[1]
    deadline = time.monotonic() + 20
    while network.commit(first)[1] < target:
        assert time.monotonic() < deadline, "the restarted node did not catch up"
        time.sleep(0.1)
    assert network.client(first).json_ok("GET", "/app/log/private?id=12") == {"msg": "after-2"}
    assert network.primary() == new

    last = min(network.commit(i)[1] for i in range(3))
    assert network.stop() == [0, 0, 0]
    ledgers = []
    for config in network.configs:
        ledger_dir = os.path.join(os.path.dirname(config), "ledger")
        assert_read_ledger_accepts(ledger_dir, "--uncommitted")
        files, _ = LedgerFiles.open(ledger_dir)
        ledgers.append(files.read_range(1, last))
        files.close()
    assert ledgers[0] == ledgers[1] == ledgers[2], "committed entries differ between nodes"
