"""The versioned key-value store: named maps of bytes to bytes, transactions, optimistic concurrency.

Guarantees:
- Every committed write transaction gets the next seqno (version) and the store's current view; its
  write set (a dict per map of key -> value, `None` for a removal) is kept until compaction.
- A transaction reads a consistent state at its read version. Committing fails with
  `TransactionConflict` if a key it read (or a map it iterated or sized) was written by a transaction
  committed after its read version; blind writes never conflict (as in CCF).
- `rollback(seqno)` undoes every version above `seqno` (consensus truncating an uncommitted suffix);
  `compact(seqno)` forgets superseded versions at or below `seqno` and fires global hooks; reads at
  versions below the compaction point are refused.
- `snapshot(seqno)` returns the live state at `seqno`; `Store.from_snapshot` rebuilds a store from it.

Not guaranteed: durability, serialisation and encryption; those are `ledger.entry` and the files.
Maps whose name starts with `public:` are public (written in clear to the ledger); others are private.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import orjson

from ledger.errors import (
    ReadOnlyTransaction,
    RollbackBelowCommit,
    TransactionClosed,
    TransactionConflict,
    VersionUnavailable,
)

PUBLIC_PREFIX = "public:"
ZERO_CLAIMS = bytes(32)

Key = bytes
Value = bytes
MapChanges = dict[bytes, bytes | None]
WriteSet = dict[str, MapChanges]
Hook = Callable[[int, MapChanges], None]
SnapshotState = dict[str, dict[bytes, tuple[int, bytes]]]


def _version_of(entry: tuple[int, bytes | None]) -> int:
    return entry[0]


def is_public(map_name: str) -> bool:
    return map_name.startswith(PUBLIC_PREFIX)


def _key(key: bytes | str) -> bytes:
    if isinstance(key, str):
        return key.encode()
    if isinstance(key, bytes):
        return key
    if isinstance(key, bytearray | memoryview):
        return bytes(key)
    raise TypeError(f"keys are bytes or str, got {type(key).__name__}")


class CommitResult(NamedTuple):
    """What a committed write transaction became: its txid, write set and claims digest.

    (An immutable NamedTuple rather than a frozen dataclass: it is built once per transaction on the
    commit path, where a frozen dataclass's __init__ costs several times more.)
    """

    seqno: int
    view: int
    writes: WriteSet
    claims_digest: bytes = ZERO_CLAIMS


# A key's history: [(version, value or None for removed)], ascending; or, once compaction left it a single live
# version of at most PACK_MAX bytes, that version (8 bytes, little-endian) and the value packed into one bytes
# object. A million small records then cost one object each rather than four (list, tuple, version, value),
# about 150 B less a key; a read copies the value out, which is why large values are not packed.
History = list[tuple[int, bytes | None]] | bytes
PACK_MAX = 1024


# Each key's `History`, per map.
Histories = dict[str, dict[bytes, History]]


def _pack(version: int, value: bytes) -> bytes:
    return version.to_bytes(8, "little") + value


def last_write_history(version: int, value: bytes | None) -> History:
    """The history of a key whose last write, at `version`, is all that is kept (compacted), as the store keeps
    it: a replay that builds the state elsewhere hands these to `Store.load_histories`."""
    if value is None or len(value) > PACK_MAX:
        return [(version, value)]
    return _pack(version, value)


@dataclass
class LastWrites:
    """The state a run of transactions leaves, as the store keeps it once compacted: each key's last write
    (`last_write_history`; a removal is kept, so that a later run's removal of a key overrides an earlier run's
    write when runs are merged), the last version that wrote each map, and the maps in which a key was removed.
    What a replay decoding the ledger elsewhere (in worker processes, chunk by chunk) hands to the store:
    `Store.load_histories` and `Store.restore_earlier_state` take its dictionaries without a pass over the keys."""

    maps: Histories = field(default_factory=dict)
    newest: dict[str, int] = field(default_factory=dict)
    removals: set[str] = field(default_factory=set)

    def note(self, writes: WriteSet, version: int) -> None:
        """A transaction at `version`, later than every one noted before."""
        maps, newest = self.maps, self.newest
        prefix = version.to_bytes(8, "little")  # `last_write_history`, inlined: a replay calls this a million times
        for name, changes in writes.items():
            target = maps.get(name)
            if target is None:
                target = maps[name] = {}
            newest[name] = version
            for key, value in changes.items():
                if value is None:
                    self.removals.add(name)
                    target[key] = [(version, None)]
                elif len(value) > PACK_MAX:
                    target[key] = [(version, value)]
                else:
                    target[key] = prefix + value

    def merge(self, later: LastWrites) -> None:
        """Take in what a later run left (its dictionaries are taken where this one has none of a map)."""
        for name, entries in later.maps.items():
            if (target := self.maps.get(name)) is None:
                self.maps[name] = entries
            else:
                target.update(entries)
        for name, version in later.newest.items():
            if version > self.newest.get(name, -1):
                self.newest[name] = version
        self.removals |= later.removals

    def live(self, name: str) -> dict[bytes, History]:
        """The histories of map `name` without its removed keys."""
        entries = self.maps.get(name, {})
        if name not in self.removals:
            return entries
        return {k: h for k, h in entries.items() if not isinstance(h, list) or h[-1][1] is not None}


def last_write(history: History) -> tuple[int, bytes | None]:
    """(version, value or None if removed) of a history's last write."""
    return _unpack(history) if isinstance(history, bytes) else history[-1]


def _unpack(packed: bytes) -> tuple[int, bytes]:
    return int.from_bytes(packed[:8], "little"), packed[8:]


def _as_list(history: History | None) -> list[tuple[int, bytes | None]]:
    if history is None:
        return []
    if isinstance(history, bytes):
        return [_unpack(history)]
    return history


@dataclass(frozen=True, slots=True)
class MapRecords:
    """One map's live records at a snapshot's seqno, each as version (8 bytes, little-endian) || value, the form in
    which the store keeps a small compacted record. `held` is the store's own dictionary, to be read and never
    changed: a key whose history there is packed (`bytes`) has that as its record; any other key's record is in
    `unpacked`, and a key absent from `unpacked` has no live value at the seqno. `live` counts the records."""

    held: dict[bytes, History]
    unpacked: dict[bytes, bytes]
    live: int


SnapshotRecords = dict[str, MapRecords]


class _MapState:
    """All retained versions of one map: key -> its `History`."""

    __slots__ = ("keys", "write_versions", "dropped_removal")

    def __init__(self) -> None:
        self.keys: dict[bytes, History] = {}
        self.write_versions: list[int] = []
        self.dropped_removal = 0  # the latest removal compaction dropped (with its key's history)

    def value_at(self, key: bytes, version: int) -> tuple[int, bytes | None]:
        history = self.keys.get(key)
        if not history:
            return 0, None
        if isinstance(history, bytes):
            ver = int.from_bytes(history[:8], "little")
            return (ver, history[8:]) if ver <= version else (0, None)
        last = history[-1]
        if last[0] <= version:
            return last
        i = bisect_right(history, version, key=_version_of)
        return history[i - 1] if i else (0, None)

    def last_version(self, key: bytes) -> int:
        """The version of the key's last retained write (0 if none is retained)."""
        history = self.keys.get(key)
        if not history:
            return 0
        if isinstance(history, bytes):
            return int.from_bytes(history[:8], "little")
        return history[-1][0]


class Store:
    """A versioned store of named maps. Single-threaded: the node serialises access."""

    def __init__(self) -> None:
        self._maps: dict[str, _MapState] = {}
        self._log: dict[int, WriteSet] = {}  # write sets of versions above the compaction point
        self._version = 0
        self._view = 0
        self._compacted = 0
        self._rollbacks: list[int] = []  # the seqno each rollback went back to, in order
        self._local_hooks: dict[str, list[Hook]] = {}
        self._global_hooks: dict[str, list[Hook]] = {}
        self._hold_removals_from: int | None = None  # see hold_removals_from

    # --- state ------------------------------------------------------------------------------------

    @property
    def version(self) -> int:
        """The seqno of the last committed (applied) transaction."""
        return self._version

    @property
    def view(self) -> int:
        return self._view

    @property
    def compacted_version(self) -> int:
        return self._compacted

    def set_view(self, view: int) -> None:
        if view < self._view:
            raise ValueError(f"view cannot go back from {self._view} to {view}")
        self._view = view

    def write_set(self, seqno: int) -> WriteSet:
        """The write set committed at `seqno` (retained until compaction)."""
        try:
            return self._log[seqno]
        except KeyError:
            raise VersionUnavailable(f"write set of version {seqno} is not retained") from None

    # --- hooks ------------------------------------------------------------------------------------

    def add_local_hook(self, map_name: str, hook: Hook) -> None:
        """Call `hook(version, changes)` each time a transaction changing `map_name` is applied."""
        self._local_hooks.setdefault(map_name, []).append(hook)

    def add_global_hook(self, map_name: str, hook: Hook) -> None:
        """Call `hook(version, changes)` when a version changing `map_name` is compacted (committed)."""
        self._global_hooks.setdefault(map_name, []).append(hook)

    # --- transactions -----------------------------------------------------------------------------

    def begin(self) -> Tx:
        """A read-write transaction reading at the latest version."""
        return Tx(self, self._version, readonly=False)

    def read_tx(self, at: int | None = None) -> Tx:
        """A read-only transaction at the latest version or at version `at`."""
        if at is None:
            at = self._version
        self._check_readable(at)
        return Tx(self, at, readonly=True)

    def map_version(self, map_name: str) -> int:
        """The version of the latest transaction that wrote `map_name` (0 if none is retained): a cheap test of
        whether a map changed, outside any transaction."""
        ms = self._maps.get(map_name)
        return ms.write_versions[-1] if ms is not None and ms.write_versions else 0

    def _check_readable(self, version: int) -> None:
        if version > self._version:
            raise VersionUnavailable(f"version {version} is ahead of the store ({self._version})")
        if version < self._compacted:
            raise VersionUnavailable(f"version {version} was compacted (compacted to {self._compacted})")

    def _map(self, name: str) -> _MapState | None:
        return self._maps.get(name)

    def commit(self, tx: Tx) -> CommitResult | None:
        """Apply a read-write transaction as the next version; raise `TransactionConflict` if stale.

        A transaction that wrote nothing gets no version (as in CCF): it is closed and None returned.
        """
        if tx._closed:
            raise TransactionClosed("transaction already committed or abandoned")
        if tx.readonly:
            raise ReadOnlyTransaction("a read-only transaction cannot be committed")
        self._validate(tx)
        tx._closed = True
        writes = tx._writes
        if not any(writes.values()):
            return None
        version = self._version + 1
        self._apply(version, writes)
        return CommitResult(version, self._view, writes, tx.claims_digest)

    def _validate(self, tx: Tx) -> None:
        """`TransactionConflict` unless what `tx` read is still what the latest version holds."""
        rv = tx.read_version
        if tx._rollbacks_seen != len(self._rollbacks):
            # Versions this transaction read from may have been rolled back and reused since.
            for target in self._rollbacks[tx._rollbacks_seen :]:
                if target < rv:
                    raise TransactionConflict("*", None, rv, target + 1)
        if rv != self._version:
            self._check_conflicts(tx)

    def _check_conflicts(self, tx: Tx) -> None:
        rv = tx.read_version
        for map_name in tx._map_reads:
            ms = self._maps.get(map_name)
            if ms is not None and ms.write_versions and ms.write_versions[-1] > rv:
                raise TransactionConflict(map_name, None, rv, ms.write_versions[-1])
        for (map_name, key) in tx._reads:
            ms = self._maps.get(map_name)
            if ms is None:
                continue
            last = ms.last_version(key)
            if last:
                if last > rv:
                    raise TransactionConflict(map_name, key, rv, last)
            elif ms.dropped_removal > rv:
                # The key has no history left: compaction may have dropped a removal of it made after this
                # transaction read it. Be conservative: any such removal in the map is a conflict.
                raise TransactionConflict(map_name, key, rv, ms.dropped_removal)

    def apply_writes(self, seqno: int, view: int, writes: WriteSet) -> None:
        """Apply a write set replicated or replayed from the ledger, as version `seqno` in `view`."""
        if seqno != self._version + 1:
            raise ValueError(f"expected version {self._version + 1}, got {seqno}")
        if view < self._view:
            raise ValueError(f"view of version {seqno} ({view}) is older than the store's ({self._view})")
        self._view = view
        self._apply(seqno, writes)

    def _apply(self, version: int, writes: WriteSet) -> None:
        maps = self._maps
        for map_name, changes in writes.items():
            ms = maps.get(map_name)
            if ms is None:
                ms = maps[map_name] = _MapState()
            keys = ms.keys
            for k, v in changes.items():
                history = keys.get(k)
                if history is None:
                    keys[k] = [(version, v)]
                elif isinstance(history, bytes):
                    keys[k] = [_unpack(history), (version, v)]
                else:
                    history.append((version, v))
            ms.write_versions.append(version)
        self._log[version] = writes
        self._version = version
        if self._local_hooks:
            for map_name, changes in writes.items():
                for hook in self._local_hooks.get(map_name, ()):
                    hook(version, changes)

    # --- rollback, compaction, snapshots ------------------------------------------------------------

    def rollback(self, seqno: int) -> None:
        """Undo every version above `seqno`. The view is left for the caller (consensus) to set."""
        if seqno < self._compacted:
            raise RollbackBelowCommit(f"cannot roll back to {seqno}: compacted to {self._compacted}")
        if seqno < self._version:
            self._rollbacks.append(seqno)
        for version in range(self._version, seqno, -1):
            writes = self._log.pop(version)
            for map_name, changes in writes.items():
                ms = self._maps[map_name]
                for k in changes:
                    history = ms.keys[k]
                    if isinstance(history, bytes):  # only compacted versions are packed, and those stay
                        raise RollbackBelowCommit(f"version {version} of a key in {map_name!r} was compacted")
                    history.pop()
                    if not history:
                        del ms.keys[k]
                ms.write_versions.pop()
        self._version = min(self._version, seqno)

    def compact(self, seqno: int) -> None:
        """Forget versions superseded at or below `seqno`, then fire global hooks for them, in order.

        The store's state is complete before the first hook runs: a hook that raises leaves the store
        compacted and consistent (and the remaining hooks of this call unfired). Hooks should not raise.
        """
        if seqno <= self._compacted:
            return
        if seqno > self._version:
            raise VersionUnavailable(f"cannot compact to {seqno}: store is at {self._version}")
        compacted: list[tuple[int, WriteSet]] = []
        touched: set[str] = set()
        for version in range(self._compacted + 1, seqno + 1):
            writes = self._log.pop(version)
            compacted.append((version, writes))
            for map_name, changes in writes.items():
                touched.add(map_name)
                ms = self._maps[map_name]
                keys = ms.keys
                for k in changes:
                    history = keys.get(k)
                    if history is None or isinstance(history, bytes):
                        continue
                    if len(history) > 1:
                        # keep the newest entry at or below seqno, and everything after it
                        i = bisect_right(history, seqno, key=_version_of)
                        if i > 1:
                            del history[: i - 1]
                    if len(history) == 1:
                        ver, val = history[0]
                        if ver > seqno:
                            continue
                        if val is not None:
                            if len(val) <= PACK_MAX:
                                keys[k] = _pack(ver, val)
                        elif self._hold_removals_from is None or ver < self._hold_removals_from:
                            del keys[k]  # a removal nothing can read past any more
                            ms.dropped_removal = max(ms.dropped_removal, ver)
        for map_name in touched:
            wv = self._maps[map_name].write_versions
            i = bisect_right(wv, seqno)
            if i > 1:
                del wv[: i - 1]
        self._compacted = seqno
        if self._global_hooks:
            for version, writes in compacted:
                for map_name, changes in writes.items():
                    for hook in self._global_hooks.get(map_name, ()):
                        hook(version, changes)

    def snapshot(self, seqno: int | None = None) -> SnapshotState:
        """Live state at `seqno`: map -> key -> (version written, value). Removed keys are absent."""
        if seqno is None:
            seqno = self._version
        self._check_readable(seqno)
        state: SnapshotState = {}
        for map_name, ms in self._maps.items():
            entries: dict[bytes, tuple[int, bytes]] = {}
            for k in ms.keys:
                ver, val = ms.value_at(k, seqno)
                if val is not None:
                    entries[k] = (ver, val)
            if entries:
                state[map_name] = entries
        return state

    def snapshot_records(self, seqno: int | None = None) -> SnapshotRecords:
        """`snapshot`'s live state as `MapRecords`: most records of a large state are handed over as the store holds
        them, with no object or dictionary made for them (a snapshot is serialised in a forked process, where every
        page written is a page copied from the parent). Read the result before the store changes."""
        if seqno is None:
            seqno = self._version
        self._check_readable(seqno)
        records: SnapshotRecords = {}
        for map_name, ms in self._maps.items():
            keys = ms.keys
            # A packed history is one that compaction, a replay (`load_histories`, `restore_earlier_state`) or a
            # snapshot (`from_snapshot`) left at or below the compaction point, which `seqno` is not below: it is
            # live at `seqno`.
            others = [k for k, h in keys.items() if h.__class__ is not bytes]
            unpacked: dict[bytes, bytes] = {}
            for k in others:
                ver, val = ms.value_at(k, seqno)
                if val is not None:
                    unpacked[k] = _pack(ver, val)
            live = len(keys) - len(others) + len(unpacked)
            if live:
                records[map_name] = MapRecords(keys, unpacked, live)
        return records

    def hold_removals_from(self, version: int) -> None:
        """Keep removals made at `version` or later through compaction, until `restore_earlier_state` (a
        recovering service: its predecessor's state, restored later, must not come back over them)."""
        self._hold_removals_from = version

    def restore_earlier_state(self, state: LastWrites, below: int) -> None:
        """Add maps' state written before `below` that this store could not read when it applied those versions
        (the private maps of a recovered service's predecessor, decrypted once its secrets are back). Keys the
        store already holds keep their later history; a removal restores nothing. A map the store holds nothing
        of is taken as it is (its dictionary, not a copy)."""
        if below > self._compacted + 1:
            raise VersionUnavailable(f"earlier state must end below the compaction point {self._compacted}")
        for map_name in state.maps:
            newest = state.newest.get(map_name)
            if newest is None:
                raise ValueError(f"restored map {map_name!r} comes without the version that last wrote it")
            if newest >= below:
                raise ValueError(f"restored entry of {map_name!r} at {newest}, not below {below}")
            entries = state.live(map_name)
            if not entries:
                continue
            ms = self._maps.setdefault(map_name, _MapState())
            if not ms.keys:
                ms.keys = entries
            else:
                keys = ms.keys
                for k, history in entries.items():
                    held = keys.get(k)
                    keys[k] = history if held is None else [*_as_list(history), *_as_list(held)]
            # Every restored version lies at or below the compaction point, where only the latest that wrote the
            # map is kept (as compaction trims them); the store's own versions all come after it.
            ms.write_versions = [newest, *ms.write_versions]
        self._hold_removals_from = None

    def load_histories(self, state: LastWrites, seqno: int, view: int) -> None:
        """Become `state` at version `seqno` (compacted there), keeping this store's hooks: what a replay that
        decoded the ledger elsewhere hands over (it fires the hooks itself, with `fire_local_hooks`, for the
        writes they need). The dictionaries are taken, not copied (but for maps with removed keys, which are
        dropped)."""
        maps: dict[str, _MapState] = {}
        for map_name in state.maps:
            last = state.newest.get(map_name)
            if last is None or last > seqno:
                raise ValueError(f"map {map_name!r} was last written at {last}, not at or below {seqno}")
            if keys := state.live(map_name):
                ms = maps[map_name] = _MapState()
                ms.keys, ms.write_versions = keys, [last]
        self._maps, self._log, self._version = maps, {}, seqno
        self._view, self._compacted = view, seqno

    def fire_local_hooks(self, version: int, writes: WriteSet) -> None:
        for map_name, changes in writes.items():
            for hook in self._local_hooks.get(map_name, ()):
                hook(version, changes)

    @classmethod
    def from_snapshot(cls, state: SnapshotState, seqno: int, view: int) -> Store:
        """A store whose state is `state` at version `seqno` (compacted there: no older reads)."""
        store = cls()
        for map_name, entries in state.items():
            ms = store._maps[map_name] = _MapState()
            newest = max((ver for ver, _ in entries.values()), default=None)
            if newest is not None and newest > seqno:
                raise ValueError(f"an entry of {map_name!r} has version {newest}, above the snapshot {seqno}")
            ms.keys = {k: last_write_history(ver, val) for k, (ver, val) in entries.items()}
            ms.write_versions = [newest] if newest is not None else []
        store._version = store._compacted = seqno
        store._view = view
        return store


class Tx:
    """One transaction over a `Store`: reads at `read_version`, buffered writes, commit via the store."""

    __slots__ = ("_store", "read_version", "readonly", "_writes", "_reads", "_map_reads", "_closed",
                 "claims_digest", "_rollbacks_seen")

    def __init__(self, store: Store, read_version: int, readonly: bool) -> None:
        self._store = store
        self.read_version = read_version
        self.readonly = readonly
        self._writes: WriteSet = {}
        self._reads: set[tuple[str, bytes]] = set()
        self._map_reads: set[str] = set()
        self._closed = False
        self.claims_digest = ZERO_CLAIMS
        self._rollbacks_seen = len(store._rollbacks)

    # raw bytes API ---------------------------------------------------------------------------------

    def get(self, map_name: str, key: bytes | str) -> bytes | None:
        k = _key(key)
        changes = self._writes.get(map_name)
        if changes is not None and k in changes:
            return changes[k]
        self._reads.add((map_name, k))
        store = self._store
        if self.read_version < store._compacted:
            raise VersionUnavailable(f"this transaction reads at {self.read_version}, compacted since to "
                                     f"{store._compacted}: retry it")
        ms = store._map(map_name)
        if ms is None:
            return None
        return ms.value_at(k, self.read_version)[1]

    def map_version(self, map_name: str) -> int:
        """The version of the last transaction, up to the read version, that wrote `map_name` (0 if none is
        retained): a cheap test of whether a map changed. Counts as a read of the whole map."""
        self._map_reads.add(map_name)
        ms = self._store._map(map_name)
        if ms is None or not ms.write_versions:
            return 0
        versions = ms.write_versions
        if versions[-1] <= self.read_version:
            return versions[-1]
        i = bisect_right(versions, self.read_version)
        return versions[i - 1] if i else 0

    def get_version(self, map_name: str, key: bytes | str) -> int:
        """The version at which the value read for `key` was written (0 if absent)."""
        k = _key(key)
        self._reads.add((map_name, k))
        self._store._check_readable(self.read_version)
        ms = self._store._map(map_name)
        if ms is None:
            return 0
        ver, val = ms.value_at(k, self.read_version)
        return ver if val is not None else 0

    def has(self, map_name: str, key: bytes | str) -> bool:
        return self.get(map_name, key) is not None

    def put(self, map_name: str, key: bytes | str, value: bytes) -> None:
        if self.readonly:
            raise ReadOnlyTransaction(f"cannot write to {map_name!r} in a read-only transaction")
        if self._closed:
            raise TransactionClosed("transaction already committed or abandoned")
        if value.__class__ is not bytes:
            if not isinstance(value, bytearray | memoryview):
                raise TypeError(f"values are bytes, got {type(value).__name__}")
            value = bytes(value)
        changes = self._writes.get(map_name)
        if changes is None:
            changes = self._writes[map_name] = {}
        changes[key if key.__class__ is bytes else _key(key)] = value

    def remove(self, map_name: str, key: bytes | str) -> None:
        if self.readonly:
            raise ReadOnlyTransaction(f"cannot remove from {map_name!r} in a read-only transaction")
        if self._closed:
            raise TransactionClosed("transaction already committed or abandoned")
        changes = self._writes.get(map_name)
        if changes is None:
            changes = self._writes[map_name] = {}
        changes[_key(key)] = None

    def clear(self, map_name: str) -> None:
        for k, _ in list(self.items(map_name)):
            self.remove(map_name, k)

    def items(self, map_name: str) -> Iterator[tuple[bytes, bytes]]:
        """Live (key, value) pairs of a map as this transaction sees them, ordered by key."""
        self._map_reads.add(map_name)
        self._store._check_readable(self.read_version)
        view: dict[bytes, bytes | None] = {}
        ms = self._store._map(map_name)
        if ms is not None:
            rv = self.read_version
            for k in ms.keys:
                view[k] = ms.value_at(k, rv)[1]
        view.update(self._writes.get(map_name, {}))
        for k in sorted(view):
            v = view[k]
            if v is not None:
                yield k, v

    def committed_versions(self, map_name: str) -> dict[bytes, int]:
        """For each live key of the map at the read version, the version that last wrote it (this
        transaction's own writes are not versions yet)."""
        self._map_reads.add(map_name)
        self._store._check_readable(self.read_version)
        ms = self._store._map(map_name)
        if ms is None:
            return {}
        versions = {}
        for k in ms.keys:
            version, value = ms.value_at(k, self.read_version)
            if value is not None:
                versions[k] = version
        return versions

    def keys(self, map_name: str) -> list[bytes]:
        return [k for k, _ in self.items(map_name)]

    def size(self, map_name: str) -> int:
        return sum(1 for _ in self.items(map_name))

    # typed helpers ---------------------------------------------------------------------------------

    def get_json(self, map_name: str, key: bytes | str) -> Any:
        raw = self.get(map_name, key)
        return None if raw is None else orjson.loads(raw)

    def put_json(self, map_name: str, key: bytes | str, value: Any) -> None:
        self.put(map_name, key, orjson.dumps(value, option=orjson.OPT_SORT_KEYS))

    def get_str(self, map_name: str, key: bytes | str) -> str | None:
        raw = self.get(map_name, key)
        return None if raw is None else raw.decode()

    def put_str(self, map_name: str, key: bytes | str, value: str) -> None:
        self.put(map_name, key, value.encode())

    def get_int(self, map_name: str, key: bytes | str) -> int | None:
        raw = self.get(map_name, key)
        return None if raw is None else int.from_bytes(raw, "little", signed=True)

    def put_int(self, map_name: str, key: bytes | str, value: int) -> None:
        self.put(map_name, key, value.to_bytes(8, "little", signed=True))

    # lifecycle -------------------------------------------------------------------------------------

    def set_claims_digest(self, digest: bytes) -> None:
        """Application claims bound into this transaction's Merkle leaf (32 bytes)."""
        if len(digest) != 32:
            raise ValueError("a claims digest is 32 bytes")
        self.claims_digest = bytes(digest)

    @property
    def writes(self) -> WriteSet:
        return self._writes

    @property
    def rollbacks_seen(self) -> int:
        """How many rollbacks the store had made when this transaction began (or was last refreshed): versions
        seen before and after a rollback may name different states."""
        return self._rollbacks_seen

    def refresh(self) -> None:
        """Read from the latest version from now on, as if the transaction had begun now: `TransactionConflict`
        if anything it read has been written since (it must then run again). A transaction that waits (for a
        JavaScript worker, say) checks here what it read so far, so that what it reads next is current and its
        commit is unlikely to conflict; its buffered writes stay."""
        store = self._store
        if self._closed:
            raise TransactionClosed("transaction already committed or abandoned")
        store._validate(self)
        self.read_version = store._version
        self._rollbacks_seen = len(store._rollbacks)

    def abandon(self) -> None:
        self._closed = True

    def commit(self) -> CommitResult | None:
        return self._store.commit(self)
