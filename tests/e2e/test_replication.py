"""Three real node processes replicating over mutual TLS (issue 5): writes sent to a backup are forwarded,
the primary is killed with SIGKILL, a new primary is elected, every write reported Committed is still
readable on every node, the killed node restarts and catches up, and afterwards every node's ledger passes
`read_ledger.py` with byte-identical committed entries."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from ledger.files import LedgerFiles, parse_chunk_name
from ledger.identity import load_cert
from network.client.connection import ServiceClient
from scripts.sandbox import make_identities, node_config, open_service, start_node
from tests.ccf_tools import assert_read_ledger_accepts
from tests.e2e.harness import free_port

pytestmark = pytest.mark.e2e


class Network:
    def __init__(self, workspace: Path, size: int = 3, n2n: list[tuple[str, str]] | None = None) -> None:
        """`n2n`: per node, where it binds its node-to-node channel and where the others reach it. The first node
        starts the service with CCF's default `node_certificate.curve_id` (Secp384R1: its key and the service identity
        on P-384), the others join with ours (Secp256R1): each verifies the other curve's signatures, before and
        after an election."""
        self.workspace = workspace
        self.common = str(workspace / "sandbox_common")
        make_identities(self.common)
        self.ports: list[int] = []
        self.configs: list[str] = []
        self.processes: list[subprocess.Popen[bytes] | None] = []
        self.live_before_stop: list[int] = []
        for i in range(size):
            for attempt in range(3):  # a free port can be taken by another process before the node binds it
                port = free_port()
                link = n2n[i] if n2n else (f"127.0.0.1:{free_port()}",) * 2
                config = node_config(str(workspace), port, index=i,
                                     join=f"https://127.0.0.1:{self.ports[0]}" if i else None,
                                     node_to_node_address=link[0], node_to_node_published_address=link[1],
                                     consensus={"election_timeout_ms": 500, "heartbeat_ms": 50},
                                     snapshots={"every_tx": 20},
                                     node_certificate={"curve_id": "Secp384R1" if i == 0 else "Secp256R1"})
                try:
                    process = start_node(config)[0]
                    break
                except RuntimeError as e:
                    if "cannot listen" not in str(e) or attempt == 2:
                        raise
            self.ports.append(port)
            self.configs.append(config)
            self.processes.append(process)
        first = f"https://127.0.0.1:{self.ports[0]}"
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

    def key_curve(self, i: int) -> str:
        pem = self.client(i).call("GET", "/node/self_signed_certificate").json()["self_signed_certificate"]
        return str(load_cert(pem).public_key().curve.name)

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

    def stop_and_check_ledgers(self) -> None:
        """Stop every node cleanly; each ledger passes read_ledger.py and the committed entries agree."""
        last = min(self.commit(i)[1] for i in self.live())
        assert self.stop() == [0] * len(self.live_before_stop)
        ledgers = []
        for config in self.configs:
            ledger_dir = os.path.join(os.path.dirname(config), "ledger")
            assert_read_ledger_accepts(ledger_dir, "--uncommitted")
            files, _ = LedgerFiles.open(ledger_dir)
            ledgers.append(files.read_range(1, last))
            files.close()
        assert all(entries == ledgers[0] for entries in ledgers), "committed entries differ between nodes"

    def stop(self) -> list[int]:
        self.live_before_stop = self.live()
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
    assert [network.key_curve(i) for i in range(3)] == ["secp384r1", "secp256r1", "secp256r1"]
    with open(os.path.join(network.common, "service_cert.pem"), "rb") as f:
        assert load_cert(f.read()).public_key().curve.name == "secp384r1"
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
    # but what the node frontend says is about the node the client talks to (never forwarded, as in CCF)
    assert session.call("GET", "/node/quotes/self").json()["node_id"] == network.node_id(1)
    stranger = network.client(2, user=False).call("POST", "/app/log/private", {"id": 98, "msg": "x"})
    assert stranger.status == 401  # the primary authenticated the forwarded caller, and refused it

    # a write load on the primary when it dies
    accepted: list[tuple[int, str]] = []
    stop = threading.Event()

    def load() -> None:
        client = network.client(first)
        record_id = 1000
        while not stop.is_set():
            try:
                answer = client.call("POST", "/app/log/private", {"id": record_id, "msg": f"load-{record_id}"})
            except OSError:
                return  # the primary is gone
            if answer.status == 200 and answer.txid:
                accepted.append((record_id, answer.txid))
            record_id += 1
            time.sleep(0.01)  # a steady load, small enough to check every write afterwards

    writer = threading.Thread(target=load)
    writer.start()
    time.sleep(1.0)
    process = network.processes[first]
    assert process is not None
    process.send_signal(signal.SIGKILL)
    process.wait()
    stop.set()
    writer.join(timeout=30)
    assert len(accepted) > 20, "the load did not run"
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
    # every write the dead primary accepted is now either Committed (and then readable everywhere) or Invalid
    outcomes = {"Committed": 0, "Invalid": 0}
    for record_id, txid in accepted:
        status = network.client(new).json_ok("GET", f"/app/tx?transaction_id={txid}")["status"]
        assert status in outcomes, (txid, status)
        outcomes[status] += 1
        if status == "Committed":
            for i in network.live():
                assert network.client(i).json_ok("GET", f"/app/log/private?id={record_id}") == \
                    {"msg": f"load-{record_id}"}
    assert outcomes["Committed"] > 0

    # the killed node restarts on its data directory and catches up as a backup
    network.processes[first] = start_node(network.configs[first])[0]
    target = network.commit(new)[1]
    deadline = time.monotonic() + 20
    while network.commit(first)[1] < target:
        assert time.monotonic() < deadline, "the restarted node did not catch up"
        time.sleep(0.1)
    assert network.client(first).json_ok("GET", "/app/log/private?id=12") == {"msg": "after-2"}
    # (leadership may move again on a loaded machine: what matters is that the network still commits)
    network.write_committed(network.primary(), 20, "after the restart")

    network.stop_and_check_ledgers()


def test_a_node_joining_the_open_service_waits_for_the_members_then_serves_is_retired_and_removed(
        network: Network) -> None:
    import threading

    from governance.member_client import MemberSigner, transition_node_to_trusted
    from network.client.member_api import MemberApi

    primary = network.primary()
    early = network.write_committed(primary, 1, "before the fourth node")
    port = free_port()
    for i in range(30):  # enough for a committed snapshot the newcomer can start from
        network.write_committed(primary, 100 + i, f"filler-{i}")
    config = node_config(str(network.workspace), port, index=3, join=network.url(primary),
                         node_to_node_address=f"127.0.0.1:{free_port()}",
                         consensus={"election_timeout_ms": 500, "heartbeat_ms": 50}, snapshots={"every_tx": 20})
    started: list[subprocess.Popen[bytes]] = []
    joining = threading.Thread(target=lambda: started.append(start_node(config, timeout=60)[0]))
    joining.start()
    observer = network.client(primary, user=False)
    deadline = time.monotonic() + 20
    while not (pending := observer.json_ok("GET", "/node/network/nodes?status=Pending")["nodes"]):
        assert time.monotonic() < deadline, "the joining node never showed up as Pending"
        time.sleep(0.1)
    node_id = pending[0]["node_id"]
    assert joining.is_alive()  # it waits: an open service trusts a node only through governance

    with open(os.path.join(network.common, "member0_privk.pem"), "rb") as k, \
            open(os.path.join(network.common, "member0_cert.pem"), "rb") as c:
        member = MemberApi(ServiceClient(network.url(primary), os.path.join(network.common, "service_cert.pem")),
                           MemberSigner.from_pem(k.read(), c.read()))
    proposal = member.propose([transition_node_to_trusted(node_id)])
    assert member.vote(proposal["proposalId"])["proposalState"] == "Accepted"
    joining.join(timeout=60)
    assert started, "the trusted node did not start serving"
    network.processes.append(started[0])
    network.configs.append(config)
    network.ports.append(port)
    deadline = time.monotonic() + 20
    while network.client(3).call("GET", "/app/log/private?id=1").status != 200:
        assert time.monotonic() < deadline, "the fourth node did not catch up"
        time.sleep(0.1)
    assert network.client(3).call("GET", "/app/log/private?id=1").json() == {"msg": "before the fourth node"}
    voted = int(network.write_committed(primary, 2, "with four voters").split(".")[1])
    # the commit needs three of the four voters: wait until the newcomer holds that write too (it persists
    # entries before acknowledging them, so its ledger files then exist)
    deadline = time.monotonic() + 20
    while network.commit(3)[1] < voted:
        assert time.monotonic() < deadline, "the fourth node did not catch up with the write"
        time.sleep(0.05)
    # it started from the service's snapshot: its ledger files begin after it, and it restarts from it
    newcomer_dir = os.path.dirname(config)
    with open(os.path.join(newcomer_dir, "err")) as f:
        assert "starting from the snapshot at seqno" in f.read()
    starts = [parsed[0] for n in os.listdir(os.path.join(newcomer_dir, "ledger")) if (parsed := parse_chunk_name(n))]
    assert min(starts) > 1, starts
    # it holds no records from before its snapshot: it says so, and the others serve that receipt
    before_snapshot = network.client(3).call("GET", f"/app/receipt?transaction_id={early}")
    assert before_snapshot.status == 404 and b"ResourceNotFound" in before_snapshot.body
    assert network.client(primary).call("GET", f"/app/receipt?transaction_id={early}").status == 200
    restarted = network.processes[3]
    assert restarted is not None
    restarted.send_signal(signal.SIGTERM)
    assert restarted.wait(timeout=30) == 0
    network.processes[3] = start_node(config)[0]
    network.write_committed(primary, 5, "after the newcomer's restart")
    deadline = time.monotonic() + 20
    while network.client(3).call("GET", "/app/log/private?id=5").status != 200:
        assert time.monotonic() < deadline, "the newcomer did not catch up after its restart"
        time.sleep(0.1)

    retire = member.propose([{"name": "remove_node", "args": {"node_id": node_id}}])
    assert member.vote(retire["proposalId"])["proposalState"] == "Accepted"
    deadline = time.monotonic() + 20  # the observer reports what it has replicated
    while {n["node_id"]: n["status"] for n in observer.json_ok("GET", "/node/network/nodes")["nodes"]}[
            node_id] != "Retired":
        assert time.monotonic() < deadline, "the observer never saw the node retired"
        time.sleep(0.1)
    network.write_committed(primary, 3, "without the retired node")  # three voters commit without it
    # once its retirement is committed it is removable, and removed on request
    refused = observer.call("DELETE", f"/node/network/nodes/{network.node_id(primary)}")
    assert refused.status == 400 and b"NodeNotRetiredCommitted" in refused.body
    deadline = time.monotonic() + 10
    while node_id not in [n["node_id"] for n in observer.json_ok("GET", "/node/network/removable_nodes")["nodes"]]:
        assert time.monotonic() < deadline, "the retirement was never marked committed"
        time.sleep(0.1)
    assert observer.json_ok("DELETE", f"/node/network/nodes/{node_id}") is True
    # The observer answers node reads from what it holds (CCF never forwards them): if the primacy moved on
    # this loaded machine, the DELETE went to the new primary and its removal reaches the observer by
    # replication.
    deadline = time.monotonic() + 10
    while node_id in [n["node_id"] for n in observer.json_ok("GET", "/node/network/nodes")["nodes"]]:
        assert time.monotonic() < deadline, "the removed node is still listed"
        time.sleep(0.05)
    network.write_committed(primary, 4, "after the removal")
