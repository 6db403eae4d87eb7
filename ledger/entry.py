"""CCF transaction entries: serialise a committed write set, parse and decrypt one back.

Byte layout (CCF's src/kv/serialised_entry_format.h and the KV serialiser):
    entry   = header(8) || body
    header  = version:u8 (=1) || flags:u8 || size:u48 LE (= len(body))
    body    = gcm_tag(16) || gcm_iv(12) || public_size:u64 || public_domain || private_ciphertext
    iv      = seqno:u64 || view:u32 (top bit set only for snapshots)
    public  = entry_type:u8 (4) || seqno:u64 || claims:32 || commit_evidence_digest:32
              || max_conflict_version:u64 (0) || maps sorted by name
    map     = lp(name) || read_version:u64 (0) || read_count:u64 (0) || write_count:u64
              || (lp(key) || lp(value))* || remove_count:u64 || lp(key)*

The private maps use the same map format, encrypted with AES-256-GCM under the ledger secret in force,
AAD = the public domain bytes. Encryption happens even with no private writes so that the tag always
authenticates the public domain. Parsing never raises anything but `EntryFormatError` (or its
`DecryptionError`), carrying the offset and, once known, the seqno.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag

from ledger.errors import DecryptionError, EntryFormatError, LedgerSecretError
from ledger.framing import (
    BODY_PREFIX,
    ENTRY_FORMAT_V1,
    GCM_TAG_SIZE,
    MAX_VIEW,
    SNAPSHOT_IV_BIT,
    EntryFrame,
    frame_entry,
)
from ledger.kv import PUBLIC_PREFIX, MapChanges, WriteSet, is_public
from ledger.secrets import LedgerSecret, LedgerSecrets

TYPE_WRITE_SET = 0
TYPE_SNAPSHOT = 1
TYPE_WITH_CLAIMS = 2
TYPE_WITH_COMMIT_EVIDENCE = 3
TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS = 4


_U64 = struct.Struct("<Q")
_IV = struct.Struct("<QI")
_MAP_PREFIX = struct.Struct("<QQQ")
_READ_HEADER = struct.Struct("<QQ")
_PUBLIC_HEAD = struct.Struct("<BQ")
_PUBLIC_HEAD4 = struct.Struct("<BQ32s32sQ")  # type, seqno, claims, commit evidence digest, max_conflict_version
_ENTRY_HEAD = struct.Struct("<Q16sQIQ")  # header word, GCM tag, IV (seqno, view), public domain size
_ZERO8 = bytes(8)
_pack_u64 = _U64.pack
_unpack_u64 = _U64.unpack_from


def entry_header(flags: int, body_size: int) -> bytes:
    return _pack_u64(ENTRY_FORMAT_V1 | (flags << 8) | (body_size << 16))


def gcm_iv(seqno: int, view: int, snapshot: bool = False) -> bytes:
    if not 0 <= view <= MAX_VIEW:
        raise ValueError(f"view {view} does not fit in 31 bits")
    return _IV.pack(seqno, view | SNAPSHOT_IV_BIT if snapshot else view)


_ONE_WRITE = _MAP_PREFIX.pack(0, 0, 1)
_NO_WRITES = _MAP_PREFIX.pack(0, 0, 0)
_ONE = _pack_u64(1)


def _append_map(parts: list[bytes], name: str, changes: MapChanges) -> None:
    """Append one map's write/remove serialisation to `parts` (keys in byte order)."""
    bname = name.encode()
    parts.append(_pack_u64(len(bname)))
    parts.append(bname)
    if len(changes) == 1:  # the common case: one key changed
        for k, v in changes.items():
            if v is None:
                parts += (_NO_WRITES, _ONE, _pack_u64(len(k)), k)
            else:
                parts += (_ONE_WRITE, _pack_u64(len(k)), k, _pack_u64(len(v)), v, _ZERO8)
        return
    writes = sorted((k, v) for k, v in changes.items() if v is not None)
    parts.append(_MAP_PREFIX.pack(0, 0, len(writes)))
    for k, v in writes:
        parts += (_pack_u64(len(k)), k, _pack_u64(len(v)), v)
    removes = sorted(k for k, v in changes.items() if v is None)
    parts.append(_pack_u64(len(removes)))
    for k in removes:
        parts += (_pack_u64(len(k)), k)


def serialise_maps(maps: WriteSet, names: list[str]) -> bytes:
    """The per-map write/remove format of the given maps, in the order given (callers sort)."""
    parts: list[bytes] = []
    for name in names:
        _append_map(parts, name, maps[name])
    return b"".join(parts)


def split_domains(writes: WriteSet) -> tuple[list[str], list[str]]:
    """Names of the changed public and private maps, each sorted (std::map order)."""
    public: list[str] = []
    private: list[str] = []
    for name, changes in writes.items():
        if changes:
            (public if is_public(name) else private).append(name)
    public.sort()
    private.sort()
    return public, private


def serialise_entry(
    seqno: int,
    view: int,
    writes: WriteSet,
    claims_digest: bytes,
    commit_evidence_digest: bytes,
    secret: LedgerSecret,
    flags: int = 0,
) -> bytes:
    """A whole CCF entry (type 4) for the transaction committed at `seqno` in `view`."""
    public_head = _PUBLIC_HEAD4.pack(TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS, seqno, claims_digest,
                                     commit_evidence_digest, 0)
    if len(writes) == 1:
        public_bytes, private_bytes = _one_map(public_head, writes)
    else:
        public = [public_head]
        private: list[bytes] = []
        for name in sorted(writes):
            changes = writes[name]
            if changes:
                _append_map(public if name.startswith(PUBLIC_PREFIX) else private, name, changes)
        public_bytes = b"".join(public)
        private_bytes = b"".join(private)
    sealed = secret.aead.encrypt(_IV.pack(seqno, view), private_bytes, public_bytes)
    public_size = len(public_bytes)
    body_size = BODY_PREFIX + public_size + len(private_bytes)
    head = _ENTRY_HEAD.pack(ENTRY_FORMAT_V1 | (flags << 8) | (body_size << 16), sealed[-GCM_TAG_SIZE:], seqno,
                            view, public_size)
    return b"".join((head, public_bytes, memoryview(sealed)[:-GCM_TAG_SIZE]))


def _one_map(public_head: bytes, writes: WriteSet) -> tuple[bytes, bytes]:
    """The public and private domains of a write set that touches a single map (the common case)."""
    for name, changes in writes.items():
        parts = [public_head]
        if not changes:
            return public_head, b""
        if name.startswith(PUBLIC_PREFIX):
            _append_map(parts, name, changes)
            return b"".join(parts), b""
        parts = []
        _append_map(parts, name, changes)
        return public_head, b"".join(parts)
    return public_head, b""


# --- parsing -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PublicHeader:
    entry_type: int
    seqno: int
    claims_digest: bytes | None
    commit_evidence_digest: bytes | None
    maps_offset: int  # absolute offset in the buffer where the maps start


def parse_public_header(frame: EntryFrame, *, file: str | None = None) -> PublicHeader:
    buf, pos, end = frame.buf, frame.public_start, frame.public_end
    if pos + 9 > end:
        raise EntryFormatError("public domain too short", file=file, offset=frame.start, seqno=frame.seqno)
    entry_type, seqno = _PUBLIC_HEAD.unpack_from(buf, pos)
    pos += 9
    claims = ce = None
    if entry_type in (TYPE_WITH_CLAIMS, TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS):
        claims = bytes(buf[pos : pos + 32])
        pos += 32
    if entry_type in (TYPE_WITH_COMMIT_EVIDENCE, TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS):
        ce = bytes(buf[pos : pos + 32])
        pos += 32
    if entry_type > TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS:
        raise EntryFormatError(f"unknown entry type {entry_type}", file=file, offset=frame.start, seqno=seqno)
    pos += 8  # max_conflict_version
    if pos > end:
        raise EntryFormatError("public domain too short", file=file, offset=frame.start, seqno=frame.seqno)
    if seqno != frame.seqno and not frame.is_snapshot:
        raise EntryFormatError(
            f"public domain names seqno {seqno} but the IV names {frame.seqno}",
            file=file, offset=frame.start, seqno=frame.seqno,
        )
    return PublicHeader(entry_type, seqno, claims, ce, pos)


class _Malformed(Exception):
    """Raised inside `parse_maps`'s quick pass: the careful pass then names what is wrong."""


# Map names seen, raw -> (name, public): a ledger names a handful of maps a million times. Bounded in count and
# in each name's size, so that a hostile ledger naming a new (or a huge) map in every entry cannot grow it.
_MAP_NAMES: dict[bytes, tuple[str, bool]] = {}
_MAP_NAMES_MAX = 4096
_MAP_NAME_CACHED_MAX = 256


def _map_name(raw: bytes) -> tuple[str, bool]:
    try:
        name = raw.decode()
    except UnicodeDecodeError:
        raise _Malformed from None
    known = (name, is_public(name))
    if len(_MAP_NAMES) < _MAP_NAMES_MAX and len(raw) <= _MAP_NAME_CACHED_MAX:
        _MAP_NAMES[raw] = known
    return known


def parse_maps(buf: bytes, pos: int, end: int, *, seqno: int | None = None, file: str | None = None,
               offset: int | None = None, public: bool | None = None) -> WriteSet:
    """Parse back the output of `serialise_maps` lying in buf[pos:end]. Every length is checked
    against what is left before it is used, so damaged lengths raise `EntryFormatError`; a map named
    twice, or (when `public` is given) a map in the wrong domain, is refused too.

    Every entry a replay or an audit reads comes through here, so the well-formed case is one tight pass: each
    field is read, then the position checked against `end` before anything read is used (a length running past
    `end` leaves the position past it). At the first anomaly, `_parse_maps_checked` parses the same bytes again,
    checking each length before it is used, and raises the error naming it."""
    given, first, stop = buf, pos, end
    if type(buf) is not bytes:  # slices of a memoryview would be views: the values must be bytes
        buf, pos, end = bytes(buf[pos:end]), 0, end - pos
    u64 = _unpack_u64
    map_head = _MAP_PREFIX.unpack_from
    names = _MAP_NAMES
    maps: WriteSet = {}
    try:
        while pos < end:
            (n,) = u64(buf, pos)
            pos += 8 + n
            if pos > end:
                raise _Malformed
            raw = buf[pos - n : pos]
            name, name_public = names.get(raw) or _map_name(raw)
            if name in maps or (public is not None and name_public != public):
                raise _Malformed
            _read_version, reads, writes = map_head(buf, pos)
            pos += 24
            if pos > end or reads:
                raise _Malformed
            changes: MapChanges = {}
            # A count too large for the domain stops the loop at the first field that runs past `end`.
            for _ in range(writes):
                (n,) = u64(buf, pos)
                pos += 8 + n
                if pos > end:
                    raise _Malformed
                k = buf[pos - n : pos]
                (n,) = u64(buf, pos)
                pos += 8 + n
                if pos > end:
                    raise _Malformed
                changes[k] = buf[pos - n : pos]
            (removals,) = u64(buf, pos)
            pos += 8
            if pos > end:
                raise _Malformed
            for _ in range(removals):
                (n,) = u64(buf, pos)
                pos += 8 + n
                if pos > end:
                    raise _Malformed
                changes[buf[pos - n : pos]] = None
            maps[name] = changes
    except (_Malformed, struct.error):
        return _parse_maps_checked(given, first, stop, seqno=seqno, file=file, offset=offset, public=public)
    return maps


def _parse_maps_checked(buf: bytes, pos: int, end: int, *, seqno: int | None = None, file: str | None = None,
                        offset: int | None = None, public: bool | None = None) -> WriteSet:
    """`parse_maps` checking every length before it is used: the error names what is wrong."""

    def fail(message: str) -> EntryFormatError:
        return EntryFormatError(message, file=file, offset=offset, seqno=seqno)

    def blob(what: str) -> bytes:
        nonlocal pos
        if pos + 8 > end:
            raise fail(f"{what} length runs past the domain")
        (n,) = _unpack_u64(buf, pos)
        if n > end - pos - 8:
            raise fail(f"{what} of {n} bytes runs past the domain")
        value = bytes(buf[pos + 8 : pos + 8 + n])
        pos += 8 + n
        return value

    def count(what: str, minimum_item_size: int) -> int:
        nonlocal pos
        if pos + 8 > end:
            raise fail(f"{what} count runs past the domain")
        (n,) = _unpack_u64(buf, pos)
        pos += 8
        if n > (end - pos) // minimum_item_size:
            raise fail(f"{what} count {n} cannot fit in the domain")
        return int(n)

    maps: WriteSet = {}
    while pos < end:
        try:
            name = blob("map name").decode()
        except UnicodeDecodeError:
            raise fail("map name is not UTF-8") from None
        if name in maps:
            raise fail(f"map {name!r} appears twice")
        if public is not None and is_public(name) != public:
            raise fail(f"map {name!r} is in the {'public' if public else 'private'} domain")
        if pos + 16 > end:
            raise fail(f"map {name!r} header runs past the domain")
        _read_version, read_count = _READ_HEADER.unpack_from(buf, pos)
        pos += 16
        if read_count != 0:
            raise fail(f"map {name!r} has {read_count} reads (expected 0)")
        changes: MapChanges = {}
        for _ in range(count(f"map {name!r} write", 16)):
            k = blob("key")
            changes[k] = blob("value")
        for _ in range(count(f"map {name!r} removal", 8)):
            changes[blob("key")] = None
        maps[name] = changes
    return maps


@dataclass(frozen=True, slots=True)
class DecodedEntry:
    """An entry parsed and decrypted back into a write set."""

    seqno: int
    view: int
    flags: int
    entry_type: int
    claims_digest: bytes | None
    commit_evidence_digest: bytes | None
    writes: WriteSet
    write_set_digest: bytes


def decrypt_private(frame: EntryFrame, secret: LedgerSecret, *, file: str | None = None) -> bytes:
    """The plaintext of the entry's private domain; `DecryptionError` if the GCM tag (which covers the public
    domain too) does not verify."""
    try:
        with memoryview(frame.buf) as view:
            # `AESGCM.decrypt` wants the tag after the ciphertext: one copy of the ciphertext (a snapshot's is a
            # gigabyte at a million records), taken from the entry in place; the public domain is not copied.
            ciphertext_and_tag = b"".join((view[frame.public_end : frame.end], frame.tag))
            return secret.aead.decrypt(frame.iv, ciphertext_and_tag, view[frame.public_start : frame.public_end])
    except InvalidTag:
        raise DecryptionError(
            "GCM tag does not verify (wrong ledger secret or tampered entry)",
            file=file, offset=frame.start, seqno=frame.seqno,
        ) from None


def decode_entry(
    buf: bytes, secrets: LedgerSecrets | None, offset: int = 0, *, file: str | None = None
) -> DecodedEntry:
    """Parse the entry at `offset`; with `secrets`, verify its tag and decrypt its private maps."""
    frame = frame_entry(buf, offset, file=file)
    header = parse_public_header(frame, file=file)
    writes = parse_maps(buf, header.maps_offset, frame.public_end, seqno=frame.seqno, file=file,
                        offset=frame.start, public=True)
    if secrets is not None:
        try:
            secret = secrets.for_seqno(frame.seqno)
        except LedgerSecretError as e:
            raise DecryptionError(str(e), file=file, offset=frame.start, seqno=frame.seqno) from e
        plain = decrypt_private(frame, secret, file=file)
        if plain:
            writes.update(parse_maps(plain, 0, len(plain), seqno=frame.seqno, file=file, offset=frame.start,
                                     public=False))
    return DecodedEntry(
        frame.seqno, frame.view, frame.flags, header.entry_type, header.claims_digest,
        header.commit_evidence_digest, writes, frame.write_set_digest(),
    )


def merkle_leaf(write_set_digest: bytes, commit_evidence_digest: bytes | None, claims: bytes | None) -> bytes:
    """The transaction digest CCF puts in the Merkle tree for each entry type."""
    if commit_evidence_digest is None and claims is None:
        return write_set_digest
    return hashlib.sha256(write_set_digest + (commit_evidence_digest or b"") + (claims or b"")).digest()
