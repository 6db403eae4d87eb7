"""CCF's Merkle history: leaf i is transaction i, leaf 0 is 32 zero bytes.

Tree shape (merklecpp, CCF's doc/architecture/merkle_tree.rst): pair nodes level by level, promote an odd last node
unchanged. That is the same as folding, from the right, the perfect subtrees given by the binary
decomposition of the leaf count: for 7 leaves, root = H(P4 || H(P2 || P1)). This module keeps only the
perfect subtrees (level k holds the hash of each complete run of 2^k leaves), so:
- `append` is O(1) amortised (one hash per leaf on average);
- `root(n)` of any retained prefix and `path(i, n)` are O(log n);
- `truncate(n)` (rollback) is O(log n) plus the nodes dropped;
- `flush_to(f)` forgets leaves below f but keeps the left peaks needed for roots and for paths of
  leaves >= f; `serialise`/`deserialise` carry exactly that state in merklecpp's form: the leaves from
  `f`, then the left peaks smallest first (one per set bit of f, from the leaf level up).

Not kept: anything about which leaf is a signature (that is the ledger's business).
"""

from __future__ import annotations

import struct
from hashlib import sha256

from ledger.errors import MerkleError

HASH_SIZE = 32
_HEAD = struct.Struct(">QQ")

# One step of an inclusion path: (sibling_is_left, sibling_hash), leaf to root.
PathStep = tuple[bool, bytes]


def fold_path(leaf: bytes, path: list[PathStep]) -> bytes:
    """The root reached from `leaf` along `path`."""
    cur = leaf
    for is_left, sibling in path:
        cur = sha256(sibling + cur).digest() if is_left else sha256(cur + sibling).digest()
    return cur


def inner_nodes(leaves: bytes, start: int) -> list[bytes]:
    """The internal nodes that lie wholly within the leaves at tree positions [start, start + n) (32 bytes each,
    back to back): element k - 1 holds level k's nodes ceil(start / 2^k) .. floor((start + n) / 2^k) - 1, up to
    the first level that has none. Pure: what a worker process hashes for `MerkleHistory.extend_hashed`."""
    if len(leaves) % HASH_SIZE:
        raise MerkleError(f"leaves come {HASH_SIZE} bytes each, not {len(leaves)} bytes in all")
    end = start + len(leaves) // HASH_SIZE
    out: list[bytes] = []
    lower, lower_first = leaves, start
    k = 1
    while (first := -(-start >> k)) < (stop := end >> k):
        skip = 2 * first - lower_first  # the first child's place in `lower`
        with memoryview(lower) as pairs:
            upper = b"".join([sha256(pairs[32 * i: 32 * i + 64]).digest()
                              for i in range(skip, skip + 2 * (stop - first), 2)])
        out.append(upper)
        lower, lower_first = upper, first
        k += 1
    return out


class MerkleRoots:
    """The running root of a CCF Merkle tree, keeping only the peaks (perfect subtrees): O(log n) memory.

    For auditors that only need the root at each signature, not paths. Same tree as `MerkleHistory`.
    """

    __slots__ = ("peaks", "size")

    def __init__(self, first_leaf: bytes | None = bytes(HASH_SIZE)) -> None:
        self.peaks: list[bytes] = []
        self.size = 0
        if first_leaf is not None:
            self.append(first_leaf)

    def append(self, leaf: bytes) -> None:
        peaks = self.peaks
        self.size = n = self.size + 1
        while not n & 1:
            leaf = sha256(peaks.pop() + leaf).digest()
            n >>= 1
        peaks.append(leaf)

    def append_subtree(self, height: int, subtree_root: bytes) -> None:
        """Append 2**height leaves at once, given the root of their perfect subtree.

        The tree size must be a multiple of 2**height (the subtree is aligned, as in the tree's shape).
        """
        size = 1 << height
        if self.size & (size - 1):
            raise MerkleError(f"a subtree of {size} leaves cannot start at leaf {self.size}")
        peaks = self.peaks
        self.size += size
        m = self.size >> height
        while not m & 1:
            subtree_root = sha256(peaks.pop() + subtree_root).digest()
            m >>= 1
        peaks.append(subtree_root)

    def root(self) -> bytes:
        if not self.peaks:
            raise MerkleError("no leaves")
        acc = self.peaks[-1]
        for p in reversed(self.peaks[:-1]):
            acc = sha256(p + acc).digest()
        return acc


class MerkleHistory:
    """An append-only Merkle tree over 32-byte leaves, with rollback and flushing."""

    def __init__(self, first_leaf: bytes | None = bytes(HASH_SIZE)) -> None:
        # Each level's hashes back to back (32 bytes a node, rather than a 65-byte bytes object plus a list
        # slot): the tree costs about 64 bytes per leaf.
        self._levels: list[bytearray] = [bytearray()]
        self._offsets: list[int] = [0]
        self._size = 0
        self._flushed = 0
        if first_leaf is not None:
            self.append(first_leaf)

    @property
    def size(self) -> int:
        """Number of leaves (the next leaf's index)."""
        return self._size

    @property
    def first_retained(self) -> int:
        """Index of the first leaf that is still held (paths exist for leaves from here on)."""
        return self._flushed

    def append(self, leaf: bytes) -> None:
        # O(1): internal nodes are hashed in batches when a root or path is next asked for (on the commit
        # path that is once per signature), which costs a third of hashing them one append at a time.
        if len(leaf) != HASH_SIZE:
            raise MerkleError(f"a leaf is {HASH_SIZE} bytes, not {len(leaf)}")
        self._levels[0] += leaf
        self._size += 1

    def extend(self, leaves: bytes) -> None:
        """Append many leaves at once (32 bytes each, back to back)."""
        if len(leaves) % HASH_SIZE:
            raise MerkleError(f"leaves come {HASH_SIZE} bytes each, not {len(leaves)} bytes in all")
        self._levels[0] += leaves
        self._size += len(leaves) // HASH_SIZE

    def extend_hashed(self, leaves: bytes, inner: list[bytes]) -> None:
        """`extend(leaves)`, taking the internal nodes wholly within them from `inner` (`inner_nodes` of them at
        this tree's size) rather than hashing them here; only the nodes straddling the old end are hashed. Nodes
        that do not fit raise `MerkleError`, the tree unchanged."""
        self._build()
        start = self._size
        self.extend(leaves)
        try:
            self._take_inner(start, inner)
        except MerkleError:
            self.truncate(start)
            raise

    def _take_inner(self, start: int, inner: list[bytes]) -> None:
        end = self._size
        levels, offsets = self._levels, self._offsets
        k = 1
        while (first := -(-start >> k)) < (stop := end >> k):
            if k > len(inner):
                raise MerkleError(f"inner nodes end at level {len(inner)}, level {k} has some")
            if k == len(levels):
                levels.append(bytearray())
                offsets.append(self._flushed >> k)
            lower, upper = levels[k - 1], levels[k]
            for j in range(offsets[k] + (len(upper) >> 5), first):  # the one straddling `start`, if any
                at = 32 * (2 * j - offsets[k - 1])
                upper += sha256(lower[at: at + 64]).digest()
            if offsets[k] + (len(upper) >> 5) != first or len(inner[k - 1]) != 32 * (stop - first):
                raise MerkleError(f"level {k}: inner nodes {first}..{stop} do not fit the tree")
            upper += inner[k - 1]
            k += 1
        if len(inner) >= k:
            raise MerkleError(f"{len(inner)} levels of inner nodes for leaves {start}..{end}, expected {k - 1}")

    def _build(self) -> None:
        """Hash every internal node whose two children exist and that is not hashed yet."""
        levels, offsets = self._levels, self._offsets
        k = 0
        while True:
            lower = levels[k]
            top = offsets[k] + (len(lower) >> 5)  # number of nodes at level k (global index of the next one)
            if top < 2:
                return
            if k + 1 == len(levels):
                levels.append(bytearray())
                offsets.append(self._flushed >> (k + 1))
            upper = levels[k + 1]
            first = offsets[k + 1] + (len(upper) >> 5)
            stop = top >> 1
            if first < stop:
                off = offsets[k]
                with memoryview(lower) as pairs:  # two siblings are 64 contiguous bytes
                    upper += b"".join([sha256(pairs[32 * i: 32 * i + 64]).digest()
                                       for i in range(2 * first - off, 2 * stop - off, 2)])
            k += 1

    def leaf(self, index: int) -> bytes:
        return self._node(0, index)

    def _node(self, level: int, index: int) -> bytes:
        if level:
            self._build()
        off = self._offsets[level]
        if index < off:
            raise MerkleError(f"node {index} of level {level} was flushed (first retained leaf {self._flushed})")
        at = 32 * (index - off)
        node = bytes(self._levels[level][at: at + 32]) if level < len(self._levels) else b""
        if len(node) != HASH_SIZE:
            raise MerkleError(f"node {index} of level {level} does not exist (size {self._size})")
        return node

    def _range_root(self, start: int, end: int) -> bytes:
        """Root of leaves [start, end) where start is aligned to every peak of end - start."""
        peaks: list[bytes] = []
        pos = start
        rem = end - start
        k = rem.bit_length() - 1
        while k >= 0:
            if rem >> k & 1:
                peaks.append(self._node(k, pos >> k))
                pos += 1 << k
            k -= 1
        acc = peaks[-1]
        for p in reversed(peaks[:-1]):
            acc = sha256(p + acc).digest()
        return acc

    def root(self, n: int | None = None) -> bytes:
        """Root of the tree made of the first `n` leaves (default: all)."""
        if n is None:
            n = self._size
        if not 1 <= n <= self._size:
            raise MerkleError(f"cannot take the root of {n} leaves (size {self._size})")
        self._build()
        return self._range_root(0, n)

    def path(self, index: int, n: int | None = None) -> list[PathStep]:
        """Inclusion path of leaf `index` in the tree of the first `n` leaves, leaf to root."""
        if n is None:
            n = self._size
        if not 0 <= index < n <= self._size:
            raise MerkleError(f"no leaf {index} in a tree of {n} leaves (size {self._size})")
        if index < self._flushed:
            raise MerkleError(f"leaf {index} was flushed (first retained leaf {self._flushed})")
        path: list[PathStep] = []
        j = index
        k = 0
        width = n
        while width > 1:
            if j & 1:
                path.append((True, self._node(k, j - 1)))
            elif j + 1 < width:
                start = (j + 1) << k
                end = min(start + (1 << k), n)
                sibling = self._node(k, j + 1) if end - start == 1 << k else self._range_root(start, end)
                path.append((False, sibling))
            j >>= 1
            k += 1
            width = (width + 1) >> 1
        return path

    def truncate(self, n: int) -> None:
        """Keep only the first `n` leaves (rollback)."""
        if n < self._flushed or n > self._size:
            raise MerkleError(f"cannot truncate to {n} leaves (retained {self._flushed}..{self._size})")
        for k, level in enumerate(self._levels):
            keep = max((n >> k) - self._offsets[k], 0)
            del level[32 * keep:]
        self._size = n

    def flush_to(self, f: int) -> None:
        """Forget leaves (and nodes) below `f`, keeping the left peaks of [0, f)."""
        if f <= self._flushed:
            return
        if f > self._size:
            raise MerkleError(f"cannot flush to {f}: only {self._size} leaves")
        self._build()
        for k, level in enumerate(self._levels):
            idx = f >> k
            new_off = idx - 1 if idx & 1 else idx
            drop = new_off - self._offsets[k]
            if drop > 0:
                del level[: 32 * drop]
                self._offsets[k] = new_off
        self._flushed = f

    def _left_peaks(self, f: int) -> list[bytes]:
        """Hashes of the perfect subtrees that make up [0, f), smallest (deepest) first: merklecpp's
        order, since its deserialiser consumes one per set bit of `f` from the leaf level up."""
        peaks = []
        pos = f
        for k in range(f.bit_length()):
            if f >> k & 1:
                pos -= 1 << k
                peaks.append(self._node(k, pos >> k))
        return peaks

    def serialise(self, n: int | None = None, from_: int | None = None) -> bytes:
        """`u64 BE count || u64 BE from || leaves from..n-1 || left peaks of [0, from)`.

        `from_` defaults to the flush point; a later one makes a smaller tree that still yields the same
        roots and the paths of leaves from `from_` on.
        """
        if n is None:
            n = self._size
        f = self._flushed if from_ is None else from_
        if not self._flushed <= f < n <= self._size:
            raise MerkleError(f"cannot serialise {n} leaves from {f} (size {self._size})")
        off = self._offsets[0]
        leaves = bytes(self._levels[0][32 * (f - off): 32 * (n - off)])
        return b"".join([_HEAD.pack(n - f, f), leaves, *self._left_peaks(f)])

    @classmethod
    def deserialise(cls, data: bytes) -> MerkleHistory:
        if len(data) < _HEAD.size:
            raise MerkleError("serialised tree too short")
        count, f = _HEAD.unpack_from(data)
        extras = bin(f).count("1")
        if len(data) != _HEAD.size + HASH_SIZE * (count + extras) or count == 0:
            raise MerkleError(f"serialised tree of {len(data)} bytes does not hold {count} leaves from {f}")
        tree = cls(first_leaf=None)
        tree._flushed = tree._size = f
        nlevels = max(f.bit_length(), 1)
        tree._levels = [bytearray() for _ in range(nlevels)]
        tree._offsets = [f >> k for k in range(nlevels)]
        pos = _HEAD.size + HASH_SIZE * count
        for k in range(f.bit_length()):
            if f >> k & 1:
                tree._levels[k] += data[pos : pos + HASH_SIZE]
                tree._offsets[k] = (f >> k) - 1
                pos += HASH_SIZE
        tree._levels[0] += data[_HEAD.size: _HEAD.size + HASH_SIZE * count]
        tree._size += count
        return tree
