"""A partitioned primary (its node-to-node links cut by per-link proxies) commits nothing while isolated; the
majority elects a new primary and goes on; after the partition heals, the old primary's uncommitted write is
Invalid, and every node's ledger passes `read_ledger.py` with byte-identical committed entries."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from scripts.link_proxy import LinkProxies
from tests.e2e.harness import free_port
from tests.e2e.test_replication import Network

pytestmark = pytest.mark.e2e

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]  # one loopback address per node, so links can be told apart


@pytest.fixture
def partitionable(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Network, LinkProxies]]:
    workspace = tmp_path_factory.mktemp("e2e-partition")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    proxies = LinkProxies()
    links = []
    for host in HOSTS:
        bind, published = f"{host}:{free_port()}", f"{host}:{free_port()}"
        proxies.add(published, bind)
        links.append((bind, published))
    network = Network(workspace, n2n=links)
    yield network, proxies
    network.stop()
    proxies.close()


def _status(network: Network, node: int, txid: str) -> str:
    return str(network.client(node).json_ok("GET", f"/app/tx?transaction_id={txid}")["status"])


def _agreed_primary(network: Network, nodes: list[int], timeout: float = 20.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        named = {network.client(i, user=False).json_ok("GET", "/node/network")["primary_id"] for i in nodes}
        ids = {network.node_id(i): i for i in nodes}
        if len(named) == 1 and (only := named.pop()) in ids:
            return ids[only]
        time.sleep(0.1)
    raise AssertionError(f"nodes {nodes} do not agree on a primary among themselves")


def test_an_isolated_primary_commits_nothing_and_its_write_is_invalid_after_healing(
        partitionable: tuple[Network, LinkProxies]) -> None:
    network, proxies = partitionable
    assert network.primary() == 0
    network.write_committed(0, 1, "before the partition")
    old = HOSTS[0]
    proxies.cut_links({(old, h) for h in HOSTS[1:]} | {(h, old) for h in HOSTS[1:]})

    answer = network.client(0).call("POST", "/app/log/private", {"id": 2, "msg": "written while isolated"})
    assert answer.status == 200 and answer.txid is not None
    lost = answer.txid
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # well past an election timeout (0.5-1 s)
        assert _status(network, 0, lost) != "Committed", "an isolated primary reported a commit"
        time.sleep(0.1)

    new = _agreed_primary(network, [1, 2])
    network.write_committed(new, 3, "on the majority side")
    stepped_down = network.client(0, user=False).json_ok("GET", "/node/network")["primary_id"]
    assert stepped_down != network.node_id(0), "the isolated primary still believes it leads"

    proxies.heal()
    target = network.commit(new)[1]
    deadline = time.monotonic() + 20
    while network.commit(0)[1] < target:
        assert time.monotonic() < deadline, "the old primary did not catch up after healing"
        time.sleep(0.1)
    assert _status(network, 0, lost) == "Invalid"
    for i in range(3):
        assert network.client(i).call("GET", "/app/log/private?id=2").status == 400  # rolled back everywhere
        assert network.client(i).json_ok("GET", "/app/log/private?id=3") == {"msg": "on the majority side"}

    network.stop_and_check_ledgers()
