"""Our Merkle history against the `ccf` package's MerkleTree and receipt folding."""

from __future__ import annotations

import hashlib

import ccf.receipt
import pytest
from ccf.merkletree import MerkleTree
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import MerkleError
from ledger.merkle import MerkleHistory, MerkleRoots, fold_path, inner_nodes

pytestmark = pytest.mark.unit


def leaves_for(n: int, salt: int = 0) -> list[bytes]:
    """Leaf 0 is 32 zero bytes, as in CCF; the others are distinct digests."""
    return [bytes(32)] + [hashlib.sha256(b"%d-%d" % (salt, i)).digest() for i in range(1, n)]


def ccf_root(leaves: list[bytes]) -> bytes:
    tree = MerkleTree()
    for leaf in leaves:
        tree.add_leaf(leaf, do_hash=False)
    return bytes(tree.get_merkle_root())


def ours(leaves: list[bytes]) -> MerkleHistory:
    tree = MerkleHistory()  # holds leaf 0 already
    for leaf in leaves[1:]:
        tree.append(leaf)
    return tree


def as_ccf_proof(path: list[tuple[bool, bytes]]) -> list[dict[str, str]]:
    return [{"left": h.hex()} if is_left else {"right": h.hex()} for is_left, h in path]


@pytest.mark.parametrize("n", list(range(1, 40)) + [63, 64, 65, 127, 128, 129, 1000])
def test_root_and_every_path_match_ccf(n: int) -> None:
    leaves = leaves_for(n)
    tree = ours(leaves)
    expected = ccf_root(leaves)
    assert tree.root() == expected
    for i in range(n):
        assert ccf.receipt.root(leaves[i].hex(), as_ccf_proof(tree.path(i))) == expected.hex()
        assert fold_path(leaves[i], tree.path(i)) == expected


@pytest.mark.property
@given(n=st.integers(1, 600), data=st.data())
def test_prefix_roots_and_paths_match_ccf(n: int, data: st.DataObject) -> None:
    leaves = leaves_for(n, salt=n)
    tree = ours(leaves)
    prefix = data.draw(st.integers(1, n), label="prefix")
    index = data.draw(st.integers(0, prefix - 1), label="index")
    expected = ccf_root(leaves[:prefix])
    assert tree.root(prefix) == expected
    assert ccf.receipt.root(leaves[index].hex(), as_ccf_proof(tree.path(index, prefix))) == expected.hex()


@pytest.mark.property
@given(n=st.integers(2, 400), data=st.data())
def test_truncate_then_append_equals_a_tree_built_directly(n: int, data: st.DataObject) -> None:
    leaves = leaves_for(n, salt=1)
    tree = ours(leaves)
    keep = data.draw(st.integers(1, n))
    tree.truncate(keep)
    assert tree.size == keep
    assert tree.root() == ccf_root(leaves[:keep])
    extra = leaves_for(n, salt=2)[1:]
    for leaf in extra:
        tree.append(leaf)
    assert tree.root() == ccf_root(leaves[:keep] + extra)


@pytest.mark.property
@given(n=st.integers(2, 400), data=st.data())
def test_flush_keeps_roots_and_later_paths_and_serialisation_round_trips(n: int, data: st.DataObject) -> None:
    leaves = leaves_for(n, salt=3)
    tree = ours(leaves)
    flushed = data.draw(st.integers(0, n - 1), label="flush_to")
    tree.flush_to(flushed)
    assert tree.root() == ccf_root(leaves)
    for i in range(flushed, n):
        assert fold_path(leaves[i], tree.path(i)) == tree.root()
    if flushed > 0:
        with pytest.raises(MerkleError):
            tree.path(flushed - 1)
    from_ = data.draw(st.integers(flushed, n - 1), label="serialise_from")
    copy = MerkleHistory.deserialise(tree.serialise(n, from_))
    assert copy.size == n
    assert copy.first_retained == from_
    assert copy.root() == tree.root()
    for i in range(from_, n):
        assert copy.path(i) == tree.path(i)
    copy.append(b"\x01" * 32)
    tree.append(b"\x01" * 32)
    assert copy.root() == tree.root()


@pytest.mark.property
@given(sizes=st.lists(st.integers(1, 300), min_size=1, max_size=6), data=st.data())
def test_extending_with_nodes_hashed_elsewhere_gives_the_same_tree(sizes: list[int], data: st.DataObject) -> None:
    """Runs of leaves whose inner nodes a worker hashed (`inner_nodes`) make the tree that appending them one
    by one makes: the same roots of every prefix (as CCF computes them) and the same paths, whether or not a
    root is taken between runs (which hashes the nodes straddling a run's start here)."""
    leaves = leaves_for(sum(sizes) + 1, salt=len(sizes))
    tree = MerkleHistory()
    at = 1
    for size in sizes:
        run = b"".join(leaves[at: at + size])
        tree.extend_hashed(run, inner_nodes(run, at))
        at += size
        if data.draw(st.booleans(), label="root between runs"):
            assert tree.root() == ccf_root(leaves[:at])
    direct = ours(leaves)
    prefix = data.draw(st.integers(1, at), label="prefix")
    index = data.draw(st.integers(0, prefix - 1), label="index")
    assert tree.root(prefix) == ccf_root(leaves[:prefix]) == direct.root(prefix)
    assert tree.path(index, prefix) == direct.path(index, prefix)


def test_inner_nodes_that_do_not_fit_the_tree_are_refused() -> None:
    leaves = leaves_for(40)
    tree = MerkleHistory()
    run = b"".join(leaves[1:17])
    wrong_start = inner_nodes(run, 2)  # hashed as if the run began at leaf 2
    with pytest.raises(MerkleError, match="do not fit"):
        tree.extend_hashed(run, wrong_start)
    assert tree.size == 1  # unchanged
    tree.extend_hashed(run, inner_nodes(run, 1))
    assert tree.root() == ccf_root(leaves[:17])
    with pytest.raises(MerkleError, match="levels of inner nodes"):
        MerkleHistory().extend_hashed(run, [*inner_nodes(run, 1), bytes(32)])


def test_serialised_tree_uses_big_endian_count_and_start() -> None:
    tree = ours(leaves_for(5))
    blob = tree.serialise()
    assert blob[:8] == (5).to_bytes(8, "big") and blob[8:16] == (0).to_bytes(8, "big")
    assert len(blob) == 16 + 5 * 32


def test_bad_uses_raise_merkle_error() -> None:
    tree = ours(leaves_for(4))
    with pytest.raises(MerkleError):
        tree.root(5)
    with pytest.raises(MerkleError):
        tree.path(4)
    with pytest.raises(MerkleError):
        tree.truncate(9)
    with pytest.raises(MerkleError):
        MerkleHistory.deserialise(b"\x00" * 10)
    with pytest.raises(MerkleError):
        MerkleHistory.deserialise(tree.serialise()[:-1])


@pytest.mark.property
@given(n=st.integers(1, 300), data=st.data())
def test_root_accumulator_with_aligned_subtrees_matches_full_tree(n: int, data: st.DataObject) -> None:
    leaves = leaves_for(n, salt=4)
    acc = MerkleRoots(first_leaf=None)
    i = 0
    while i < n:
        # the largest aligned block allowed here, or a smaller one at random
        align = (i & -i).bit_length() - 1 if i else 10
        k = data.draw(st.integers(0, min(align, (n - i).bit_length() - 1)))
        block = leaves[i : i + (1 << k)]
        acc.append_subtree(k, ccf_root(block))
        i += 1 << k
        assert acc.root() == ccf_root(leaves[:i])
    with pytest.raises(MerkleError):
        bad = MerkleRoots()
        bad.append_subtree(1, bytes(32))  # size 1 is not a multiple of 2


def merklecpp_deserialised_root(data: bytes) -> bytes:
    """Independent port of merklecpp's TreeT::deserialise + root: leaves from `from`, then one extra
    hash per set bit of `from`, consumed from the leaf level up and put in front of that level."""
    import struct

    count, flushed = struct.unpack_from(">QQ", data)
    pos = 16
    level = [data[pos + 32 * i : pos + 32 * i + 32] for i in range(count)]
    pos += 32 * count
    bits = flushed
    while bits or len(level) > 1:
        if bits & 1:
            level.insert(0, data[pos : pos + 32])
            pos += 32
        level = [level[i] if i + 1 >= len(level) else hashlib.sha256(level[i] + level[i + 1]).digest()
                 for i in range(0, len(level), 2)]
        bits >>= 1
    assert pos == len(data)
    return level[0]


@pytest.mark.parametrize("from_", [0, 1, 2, 3, 5, 6, 7, 11, 12, 13, 31, 32, 38])
def test_serialised_tree_is_read_back_by_merklecpp_to_the_same_root(from_: int) -> None:
    tree = ours(leaves_for(40, salt=9))
    blob = tree.serialise(40, from_)
    assert merklecpp_deserialised_root(blob) == tree.root()
