"""Snapshots in CCF's format (src/node/snapshot_serdes.h): serialise the whole store at a seqno, load it back.

A snapshot file is one entry with no file header: entry header, GCM tag, IV (snapshot bit set),
public size, public domain = type 1 || seqno || max_conflict_version || lp(hash_at_snapshot)
|| lp(view_history) || maps, each map lp(name) || map_version || map_size || entries
(`u64 key_size || key || pad8 || u64 value_size || i64 version || value || pad8`, value_size = 8 + len).
Private maps follow encrypted under the ledger secret in force at the seqno, AAD = public domain.
Once its evidence transaction is committed, the JSON receipt of that transaction is appended and the
file is renamed `snapshot_<seqno>_<evidence>.committed`.

Loading verifies the GCM tag (which authenticates the public domain too); `SnapshotError` otherwise.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from ledger.entry import TYPE_SNAPSHOT, decrypt_private, entry_header, gcm_iv, split_domains
from ledger.errors import EntryFormatError, LedgerSecretError, SnapshotError
from ledger.framing import BODY_PREFIX, GCM_TAG_SIZE, frame_entry
from ledger.kv import PACK_MAX, History, LastWrites, MapRecords, SnapshotRecords, is_public
from ledger.secrets import LedgerSecret, LedgerSecrets

_U64 = struct.Struct("<Q")


_PADS = tuple(bytes(-n % 8) for n in range(8))  # the padding to 8 bytes after n bytes, by n % 8


def _serialise_map(records: MapRecords) -> tuple[int, bytearray]:
    """(map version, entries) of one map: the entries in the store's order (no reader depends on the order; CCF
    writes its own hash order), each written from a record without taking it apart, as a record (version ||
    value) is already an entry's `i64 version || value`. The map version is the newest record's."""
    pack, pads = _U64.pack, _PADS
    held, unpacked = records.held, records.unpacked
    out = bytearray()
    for k, history in held.items():
        record = history if history.__class__ is bytes else unpacked.get(k)
        if record is None:
            continue
        lk, lr = len(k), len(record)
        out += pack(lk)
        out += k
        out += pads[lk & 7]
        out += pack(lr)
        out += record
        out += pads[lr & 7]
    # the records' versions, reversed to big-endian, compare as numbers do
    newest = max((r[7::-1] for r in held.values() if r.__class__ is bytes), default=bytes(8))
    if unpacked:
        newest = max(newest, max(r[7::-1] for r in unpacked.values()))
    return int.from_bytes(newest, "big"), out


def _serialise_snapshot_maps(records: SnapshotRecords, names: list[str]) -> bytes:
    parts: list[bytes | bytearray] = []
    for name in names:
        map_version, blob = _serialise_map(records[name])
        bname = name.encode()
        parts += [_U64.pack(len(bname)), bname, _U64.pack(map_version), _U64.pack(len(blob)), blob]
    return b"".join(parts)


def serialise_snapshot(
    records: SnapshotRecords, seqno: int, view: int, hash_at_snapshot: bytes, view_history: list[int],
    secret: LedgerSecret,
) -> bytes:
    """The snapshot of the store's live `records` (`Store.snapshot_records`) at `seqno`."""
    public_names, private_names = split_domains({name: {b"": None} for name in records})
    history = b"".join(_U64.pack(s) for s in view_history)
    public = b"".join([
        bytes([TYPE_SNAPSHOT]), _U64.pack(seqno), _U64.pack(0),
        _U64.pack(len(hash_at_snapshot)), hash_at_snapshot, _U64.pack(len(history)), history,
        _serialise_snapshot_maps(records, public_names),
    ])
    private = _serialise_snapshot_maps(records, private_names)
    iv = gcm_iv(seqno, view, snapshot=True)
    sealed = secret.aead.encrypt(iv, private, public)
    size = BODY_PREFIX + len(public) + len(private)
    return b"".join([entry_header(0, size), sealed[-GCM_TAG_SIZE:], iv, _U64.pack(len(public)), public,
                     memoryview(sealed)[:-GCM_TAG_SIZE]])


_ENTRY_HEAD = struct.Struct("<Qq")  # value size (8 + value length), version (negative: removed)


def read_snapshot_maps(buf: bytes, pos: int, end: int, state: LastWrites, *, public: bool,
                       batch: int = 1 << 62) -> Iterator[int]:
    """Read the live entries of the maps in buf[pos:end] into `state`, pausing after every `batch` entries (it
    yields how many it read since the last pause: a recovering node reads a large snapshot's private part in
    steps); every length is checked before it is used. Each entry is kept as the snapshot holds it, its version
    (8 bytes, little-endian) followed by its value: the form in which the store keeps a small compacted value
    (`kv.last_write_history`), read with one copy."""

    def u64(what: str) -> int:
        nonlocal pos
        if pos + 8 > end:
            raise SnapshotError(f"{what} runs past the end of its domain")
        (value,) = _U64.unpack_from(buf, pos)
        pos += 8
        return int(value)

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n > end - pos:
            raise SnapshotError(f"{what} of {n} bytes runs past the end of its domain")
        value = bytes(buf[pos : pos + n])
        pos += n
        return value

    seen: set[str] = set()
    header = _ENTRY_HEAD
    read = 0
    while pos < end:
        try:
            name = take(u64("map name length"), "map name").decode()
        except UnicodeDecodeError:
            raise SnapshotError("map name is not UTF-8") from None
        if is_public(name) != public:
            raise SnapshotError(f"map {name!r} is in the {'public' if public else 'private'} domain")
        if name in seen:
            raise SnapshotError(f"map {name!r} appears twice")
        seen.add(name)
        target: dict[bytes, History] | None = None  # made at the map's first live entry
        newest = -1
        u64("map version")
        map_size = u64("map size")
        stop = pos + map_size
        if map_size > end - pos:
            raise SnapshotError(f"map {name!r} overruns the snapshot")
        # The hot loop, one entry at a time: every bound checked against the map's end, paddings skipped
        # without copying them (this is most of the time of loading a large snapshot).
        while pos < stop:
            if pos + 8 > stop:
                raise SnapshotError(f"key length in map {name!r} runs past the end of its map")
            (klen,) = _U64.unpack_from(buf, pos)
            key_end = pos + 8 + klen
            value_at = key_end + (-klen % 8)
            if value_at + 16 > stop:
                raise SnapshotError(f"key of {klen} bytes in map {name!r} runs past the end of its map")
            vsize, ver = header.unpack_from(buf, value_at)
            if vsize < 8:
                raise SnapshotError(f"value of size {vsize} in map {name!r}")
            value_end = value_at + 8 + vsize
            if value_end > stop:
                raise SnapshotError(f"value of {vsize - 8} bytes in map {name!r} runs past the end of its map")
            next_pos = value_end + (-vsize % 8)
            if next_pos > stop:
                raise SnapshotError(f"value padding in map {name!r} runs past the end of its map")
            if ver >= 0:
                record = bytes(buf[value_at + 8 : value_end])
                if target is None:
                    target = state.maps.setdefault(name, {})
                # as `kv.last_write_history` keeps a value (inline: a million records)
                target[bytes(buf[pos + 8 : key_end])] = record if vsize <= PACK_MAX + 8 else [(ver, record[8:])]
                if ver > newest:
                    state.newest[name] = newest = ver
                read += 1
                if read == batch:
                    yield read
                    read = 0
            pos = next_pos
    if read:
        yield read


def _parse_snapshot_maps(buf: bytes, pos: int, end: int, state: LastWrites, *, public: bool) -> None:
    """Parse maps in buf[pos:end] into `state`, each record kept as the store keeps it."""
    for _ in read_snapshot_maps(buf, pos, end, state, public=public):
        pass


@dataclass(frozen=True)
class LoadedSnapshot:
    seqno: int
    view: int
    hash_at_snapshot: bytes
    view_history: list[int]
    state: LastWrites  # every live record, as the store keeps it (`Store.load_histories` takes it)
    receipt: dict[str, object] | None


def load_snapshot(data: bytes, secrets: LedgerSecrets | None) -> LoadedSnapshot:
    """Parse a snapshot file's bytes; with `secrets` that cover its seqno, verify the tag and include the
    private maps."""
    try:
        frame = frame_entry(data, 0)
        if not frame.is_snapshot:
            raise SnapshotError("the IV does not carry the snapshot bit")
        buf, pos = data, frame.public_start
        if buf[pos] != TYPE_SNAPSHOT:
            raise SnapshotError(f"entry type {buf[pos]} is not a snapshot (1)")
        end = frame.public_end
        if pos + 33 > end:
            raise SnapshotError("snapshot header runs past the public domain")
        seqno, _max_conflict, hlen = struct.unpack_from("<QQQ", buf, pos + 1)
        pos += 25
        if hlen != 32 or pos + hlen + 8 > end:
            raise SnapshotError(f"hash at snapshot of {hlen} bytes (expected 32)")
        hash_at = bytes(buf[pos : pos + hlen])
        pos += hlen
        (vlen,) = _U64.unpack_from(buf, pos)
        pos += 8
        if vlen % 8 or vlen > end - pos:
            raise SnapshotError("view history is not an array of u64 inside the public domain")
        history = list(struct.unpack_from(f"<{vlen // 8}Q", buf, pos))
        pos += vlen
        state = LastWrites()
        _parse_snapshot_maps(buf, pos, end, state, public=True)
        if secrets is not None and secrets.covers(seqno):  # a recovering node reads the public part only
            plain = decrypt_private(frame, secrets.for_seqno(seqno))
            _parse_snapshot_maps(plain, 0, len(plain), state, public=False)
        receipt = None
        rest = data[frame.end :]
        if rest:
            receipt = orjson.loads(rest)
            if not isinstance(receipt, dict):
                raise SnapshotError("the receipt appended to the snapshot is not a JSON object")
    except (struct.error, orjson.JSONDecodeError) as e:
        raise SnapshotError(f"malformed snapshot: {e}") from e
    except (EntryFormatError, LedgerSecretError) as e:
        raise SnapshotError(f"cannot read the snapshot: {e}") from e
    return LoadedSnapshot(seqno, frame.view, hash_at, history, state, receipt)


@dataclass(frozen=True)
class SnapshotSummary:
    """What can be read of a snapshot without parsing its maps: its seqno, digest and appended receipt."""

    seqno: int
    digest: bytes
    receipt: dict[str, object] | None


def summarise_snapshot(data: bytes, *, digest: bool = True) -> SnapshotSummary:
    """The seqno, the SHA-256 of the snapshot entry (as its evidence records it; empty without `digest`) and the
    receipt, without parsing the maps."""
    try:
        frame = frame_entry(data, 0)
        if not frame.is_snapshot or data[frame.public_start] != TYPE_SNAPSHOT:
            raise SnapshotError("not a snapshot entry")
        (seqno,) = _U64.unpack_from(data, frame.public_start + 1)
        rest = data[frame.end:]
        receipt = orjson.loads(rest) if rest else None
    except (struct.error, IndexError, orjson.JSONDecodeError) as e:
        raise SnapshotError(f"malformed snapshot: {e}") from e
    except EntryFormatError as e:
        raise SnapshotError(f"cannot read the snapshot: {e}") from e
    if receipt is not None and not isinstance(receipt, dict):
        raise SnapshotError("the receipt appended to the snapshot is not a JSON object")
    # (hashed in place: a large snapshot is not copied to be hashed)
    digested = hashlib.sha256(memoryview(data)[: frame.end]).digest() if digest else b""
    return SnapshotSummary(int(seqno), digested, receipt)


# --- snapshot files (host side) ----------------------------------------------------------------------


