"""Historical queries (network/enclave/historical.py): fetching, verification against the Merkle tree, holding
and caching, and what a damaged or altered ledger file gives (500, never the altered value)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.entry import decode_entry
from ledger.txid import TxID
from network.enclave.endpoints import EndpointError
from network.enclave.historical import HistoricalEntry, HistoricalPending, HistoricalQueries, runs_of
from tests.app.harness import AppNode, body, error_code


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Loop:
    """A host loop: scheduled fetches wait for `run()`; reads are counted."""

    def __init__(self, read: Callable[[int, int], list[bytes]]) -> None:
        self.pending: list[Callable[[], None]] = []
        self.reads: list[tuple[int, int]] = []
        self._read = read

    def read(self, start: int, end: int) -> list[bytes]:
        self.reads.append((start, end))
        return self._read(start, end)

    def schedule(self, fn: Callable[[], None]) -> None:
        self.pending.append(fn)

    def run(self) -> None:
        while self.pending:
            self.pending.pop(0)()


def _node(directory: str, writes: int = 30) -> AppNode:
    node = AppNode(directory)
    for i in range(writes):
        node.write("private" if i % 2 else "public", i % 4, f"message {i}")
    node.sign()
    return node


@pytest.fixture
def node(tmp_path: Path) -> AppNode:
    return _node(str(tmp_path))


def _queries(node: AppNode, **kwargs: object) -> tuple[HistoricalQueries, Loop, Clock]:
    loop, clock = Loop(node.files.read_range), Clock()
    return HistoricalQueries(node.ledger, loop.read, loop.schedule, clock=clock, **kwargs), loop, clock  # type: ignore[arg-type]


def _expected(node: AppNode, seqno: int) -> HistoricalEntry:
    decoded = decode_entry(node.files.read(seqno), node.ledger.secrets)
    return HistoricalEntry(TxID(decoded.view, seqno), decoded.writes)


# --- fetching, holding, caching ------------------------------------------------------------------------------


@pytest.mark.unit
def test_one_fetch_per_request_however_often_it_is_asked(node: AppNode) -> None:
    hq, loop, _ = _queries(node)
    for _ in range(3):
        with pytest.raises(HistoricalPending):
            hq.entries(2, 9)
    assert len(loop.pending) == 1
    loop.run()
    assert hq.entries(2, 9) == [_expected(node, s) for s in range(2, 10)]
    assert hq.entries(3, 5) == [_expected(node, s) for s in range(3, 6)]  # from the cache
    assert loop.reads == [(2, 9)]


@pytest.mark.unit
def test_concurrent_requests_do_not_starve_each_other_through_a_small_cache(node: AppNode) -> None:
    """Ten clients ask for ten ranges; the LRU holds two entries, yet each gets its range after one fetch."""
    hq, loop, _ = _queries(node, cache_entries=2)
    ranges = [(1 + 3 * i, 3 + 3 * i) for i in range(10)]
    for start, end in ranges:
        with pytest.raises(HistoricalPending):
            hq.entries(start, end)
    loop.run()
    for start, end in ranges:
        assert [e.txid.seqno for e in hq.entries(start, end)] == list(range(start, end + 1))
    assert sorted(loop.reads) == ranges
    assert len(hq._cache) <= 2 and not hq._requests  # everything handed over: nothing held


@pytest.mark.unit
def test_requests_in_flight_are_bounded(node: AppNode) -> None:
    hq, loop, _ = _queries(node, max_requests=3)
    for s in (1, 2, 3, 4):
        with pytest.raises(HistoricalPending):
            hq.entries(s, s)
    assert len(loop.pending) == 3  # the fourth waits for a slot: 202 without a fetch
    loop.run()
    with pytest.raises(HistoricalPending):
        hq.entries(4, 4)  # now a held result is dropped (the oldest) to make room
    loop.run()
    assert hq.entries(4, 4)[0].txid.seqno == 4
    assert hq.entries(2, 2)[0].txid.seqno == 2
    assert len(hq._requests) <= 3


@pytest.mark.unit
def test_held_results_expire_and_are_bounded_in_bytes(node: AppNode) -> None:
    hq, loop, clock = _queries(node, cache_entries=0, hold_seconds=10)
    with pytest.raises(HistoricalPending):
        hq.entries(1, 4)
    loop.run()
    clock.now += 11  # the client never came back
    with pytest.raises(HistoricalPending):
        hq.entries(1, 4)
    assert len(loop.pending) == 1
    loop.run()
    assert len(hq.entries(1, 4)) == 4

    one = sum(len(node.files.read(s)) for s in range(5, 9))
    hq, loop, _ = _queries(node, cache_entries=0, hold_bytes=one)
    for start in (5, 9, 13):
        with pytest.raises(HistoricalPending):
            hq.entries(start, start + 3)
    loop.run()
    held = [req for req in hq._requests.values() if req.done]
    assert sum(req.size for req in held) <= one + max(req.size for req in held)
    assert len(hq.entries(13, 16)) == 4  # the newest is always kept


@pytest.mark.unit
def test_cache_is_bounded_in_entries_and_bytes(node: AppNode) -> None:
    size = len(node.files.read(3))
    hq, loop, _ = _queries(node, cache_bytes=4 * size)
    for start in range(1, 20, 2):
        with pytest.raises(HistoricalPending):
            hq.entries(start, start + 1)
        loop.run()
        hq.entries(start, start + 1)
        assert hq._cache_size <= 4 * size + max(e.size for e in hq._cache.values())
    assert hq._cache_size == sum(e.size for e in hq._cache.values())


@pytest.mark.unit
def test_only_committed_seqnos_are_fetched(node: AppNode) -> None:
    hq, loop, _ = _queries(node)
    unsigned = node.write("public", 1, "pending")
    with pytest.raises(EndpointError) as e:
        hq.entries(1, unsigned.seqno)
    assert e.value.status == 400 and e.value.code == "InvalidInput"
    with pytest.raises(EndpointError) as e:
        hq.entries(0, 3)
    assert e.value.status == 400
    with pytest.raises(EndpointError) as e:
        hq.entry(unsigned)
    assert e.value.status == 404 and e.value.code == "TransactionPendingOrUnknown"
    assert not loop.pending and hq.entries(5, 4) == [] and hq.entries_at([]) == []


@pytest.mark.unit
def test_runs_of_merges_sorted_seqnos() -> None:
    assert runs_of([9, 1, 2, 3, 5, 3, 10]) == ((1, 3), (5, 5), (9, 10))
    assert runs_of([]) == ()


# --- damaged and altered files ---------------------------------------------------------------------------------


def _alter(path: str, old: bytes, new: bytes) -> bytes:
    data = Path(path).read_bytes()
    assert len(old) == len(new) and data.count(old) == 1
    Path(path).write_bytes(data.replace(old, new))
    return data


@pytest.mark.unit
def test_a_tampered_public_entry_gives_500_and_never_the_tampered_value(tmp_path: Path) -> None:
    node = AppNode(str(tmp_path))
    txid = node.write("public", 1, "original value")
    node.sign()
    target = "/app/log/public/historical?id=1"
    assert body(node.get(target, txid)) == {"msg": "original value"}
    node.historical.clear_cache()
    clock = Clock()
    node.historical.clock = clock
    path = node.files.chunk_file_of(txid.seqno)
    original = _alter(path, b"original value", b"FORGED   value")
    reads = len(node.host.reads)
    for query in (target, "/app/log/public/historical_receipt?id=1"):
        response = node.get(query, txid)
        assert response.status == 500 and error_code(response) == "InternalError"
        message = body(response)["error"]["message"]
        # the GCM tag authenticates the public domain too, so the altered entry fails it before the leaf check
        assert message.startswith(f"Historical entries {txid.seqno} cannot be served: entry {txid.seqno} read "
                                  "from the ledger files does not verify: GCM tag does not verify")
        assert b"FORGED" not in response.body
    assert len(node.host.reads) == reads + 1  # the failure is answered without reading again...
    range_response = node.get(f"/app/log/public/historical/range?id=1&from_seqno=1&to_seqno={txid.seqno}")
    assert range_response.status == 500 and b"FORGED" not in range_response.body
    clock.now += node.historical.hold_seconds + 1  # ...until it expires; then the (restored) file is read again
    Path(path).write_bytes(original)
    assert body(node.get(target, txid)) == {"msg": "original value"}


@pytest.mark.unit
def test_a_tampered_private_entry_fails_its_gcm_tag(tmp_path: Path) -> None:
    node = AppNode(str(tmp_path))
    txid = node.write("private", 1, "secret value")
    node.sign()
    raw = node.files.read(txid.seqno)
    node.historical.clear_cache()
    path = node.files.chunk_file_of(txid.seqno)
    _alter(path, raw, raw[:-1] + bytes([raw[-1] ^ 1]))  # a bit of the ciphertext
    response = node.get("/app/log/private/historical?id=1", txid)
    assert response.status == 500 and error_code(response) == "InternalError"
    assert "GCM tag does not verify" in body(response)["error"]["message"]


@pytest.mark.unit
def test_a_host_returning_other_entries_is_caught(node: AppNode) -> None:
    shifted = HistoricalQueries(node.ledger, lambda s, e: node.files.read_range(s + 1, e + 1), lambda fn: fn())
    with pytest.raises(EndpointError) as e:
        shifted.entries(3, 4)
    assert e.value.status == 500 and "entry 3 read from the ledger files does not match this node's Merkle tree" \
        in e.value.message  # a genuine entry, but not the one asked for
    short = HistoricalQueries(node.ledger, lambda s, e: node.files.read_range(s, e)[:-1], lambda fn: fn())
    with pytest.raises(EndpointError) as e:
        short.entries(3, 4)
    assert e.value.status == 500 and "returned 1 entries" in e.value.message
    missing = HistoricalQueries(node.ledger, lambda s, e: [b"\x00" * 8], lambda fn: fn())
    with pytest.raises(EndpointError) as e:
        missing.entries(3, 3)
    assert e.value.status == 500 and "cannot be served" in e.value.message


@pytest.mark.unit
def test_entries_older_than_the_records_a_node_keeps_are_checked_against_the_stored_trees(tmp_path: Path) -> None:
    """Past `retained_records` committed transactions a node drops their Merkle leaves from memory; a historical
    read of one is checked against the tree its covering signature stored (the signature entry pinned by the
    digest the node kept), so old entries are served and a host returning other genuine entries is still
    caught."""
    node = _node(str(tmp_path))
    node.ledger.retained_records = 3
    for i in range(12):
        node.write("public", 10 + i, f"later {i}")
        node.sign()
    assert node.ledger.merkle.first_retained > 30  # the leaves of the first writes are no longer in memory
    hq, loop, _ = _queries(node)
    with pytest.raises(HistoricalPending):
        hq.entries(2, 20)
    loop.run()
    assert hq.entries(2, 20) == [_expected(node, s) for s in range(2, 21)]
    shifted = HistoricalQueries(node.ledger, lambda s, e: node.files.read_range(s + 1, e + 1), lambda fn: fn())
    with pytest.raises(EndpointError) as e:
        shifted.entries(3, 4)
    assert e.value.status == 500 and "entry 3 read from the ledger files does not match this node's Merkle tree" \
        in e.value.message


# --- property: whatever the interleaving, served entries are the ledger's and memory stays bounded -------------


@pytest.fixture(scope="module")
def shared_node(tmp_path_factory: pytest.TempPathFactory) -> AppNode:
    return _node(str(tmp_path_factory.mktemp("historical")), writes=40)


@pytest.mark.property
@given(cache_entries=st.integers(0, 8), max_requests=st.integers(1, 4), hold_entries=st.integers(0, 6),
       steps=st.lists(st.one_of(st.tuples(st.just("ask"), st.integers(1, 40), st.integers(0, 5)),
                                st.tuples(st.just("run"), st.integers(0, 3), st.just(0)),
                                st.tuples(st.just("wait"), st.integers(0, 100), st.just(0))), max_size=40))
def test_interleaved_requests_are_served_correctly_within_bounds(
        shared_node: AppNode, cache_entries: int, max_requests: int, hold_entries: int,
        steps: list[tuple[str, int, int]]) -> None:
    node = shared_node
    size = max(len(node.files.read(s)) for s in range(1, 41))
    hq, loop, clock = _queries(node, cache_entries=cache_entries, max_requests=max_requests,
                               hold_bytes=hold_entries * size, cache_bytes=cache_entries * size)
    last = node.ledger.committed_seqno
    asked: list[tuple[int, int]] = []
    for kind, a, b in steps:
        if kind == "ask":
            start, end = min(a, last), min(a + b, last)
            asked.append((start, end))
            try:
                got = hq.entries(start, end)
            except HistoricalPending:
                continue
            assert got == [_expected(node, s) for s in range(start, end + 1)]
        elif kind == "run":
            for _ in range(a):
                if loop.pending:
                    loop.pending.pop(0)()
        else:
            clock.now += a
        assert len(hq._cache) <= cache_entries
        assert len(hq._requests) <= max_requests
        held = [req.size for req in hq._requests.values() if req.done]
        assert not held or sum(held) <= hold_entries * size + max(held)
    for start, end in asked:  # liveness: a client that keeps asking (and lets the host run) is served
        for _ in range(max_requests + 2):
            try:
                assert [e.txid.seqno for e in hq.entries(start, end)] == list(range(start, end + 1))
                break
            except HistoricalPending:
                loop.run()
        else:
            pytest.fail(f"{start}..{end} never served")
