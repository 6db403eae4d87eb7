"""The framing of a ledger entry: its 8-byte header, its size, and where its parts lie, read without a key.

This is all the host needs to store, chunk and read back entries (`ledger.files`): it never decrypts and
never parses maps. Layout (CCF's src/kv/serialised_entry_format.h):
    entry  = header(8) || body;  header = version:u8 (=1) || flags:u8 || size:u48 LE
    body   = gcm_tag(16) || gcm_iv(12) || public_size:u64 || public_domain || private_ciphertext
    iv     = seqno:u64 || view:u32 (top bit set only for snapshots)
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from ledger.errors import EntryFormatError

_U64 = struct.Struct("<Q")
_IV = struct.Struct("<QI")
_unpack_u64 = _U64.unpack_from

ENTRY_FORMAT_V1 = 1

ENTRY_HEADER_SIZE = 8

GCM_TAG_SIZE = 16

GCM_IV_SIZE = 12

BODY_PREFIX = GCM_TAG_SIZE + GCM_IV_SIZE + 8

FLAG_FORCE_CHUNK_AFTER = 0x01

FLAG_FORCE_CHUNK_BEFORE = 0x02

SNAPSHOT_IV_BIT = 0x80000000

MAX_VIEW = 0x7FFFFFFF

@dataclass(frozen=True, slots=True)
class EntryFrame:
    """The framing of one entry: where its parts lie in `buf`, without parsing maps or decrypting."""

    buf: bytes
    start: int  # offset of the 8-byte header in buf
    end: int  # offset just past the entry
    flags: int
    seqno: int  # from the IV
    view: int
    is_snapshot: bool
    public_start: int
    public_end: int

    @property
    def raw(self) -> bytes:
        return self.buf[self.start : self.end]

    @property
    def tag(self) -> bytes:
        return self.buf[self.start + 8 : self.start + 24]

    @property
    def iv(self) -> bytes:
        return self.buf[self.start + 24 : self.start + 36]

    @property
    def public_domain(self) -> bytes:
        return self.buf[self.public_start : self.public_end]

    @property
    def private_ciphertext(self) -> bytes:
        return self.buf[self.public_end : self.end]

    def write_set_digest(self) -> bytes:
        return hashlib.sha256(memoryview(self.buf)[self.start : self.end]).digest()

def read_entry_size(buf: bytes, offset: int, *, file: str | None = None, limit: int | None = None) -> int:
    """Total size (header included) of the entry at `offset`; raises if the header is bad or torn.

    The entry must end at or before `limit` (default: the end of `buf`).
    """
    end_of_data = len(buf) if limit is None else limit
    if offset + ENTRY_HEADER_SIZE > end_of_data:
        raise EntryFormatError("truncated entry header", file=file, offset=offset)
    (word,) = _unpack_u64(buf, offset)
    version = word & 0xFF
    if version != ENTRY_FORMAT_V1:
        raise EntryFormatError(f"unknown entry format version {version}", file=file, offset=offset)
    size = word >> 16
    if size < BODY_PREFIX:
        raise EntryFormatError(f"entry body of {size} bytes is too small", file=file, offset=offset)
    if offset + ENTRY_HEADER_SIZE + size > end_of_data:
        raise EntryFormatError(
            f"entry of {size} bytes runs past the end of the data ({end_of_data - offset - 8} left)",
            file=file,
            offset=offset,
        )
    return ENTRY_HEADER_SIZE + int(size)

def frame_entry(buf: bytes, offset: int = 0, *, file: str | None = None) -> EntryFrame:
    total = read_entry_size(buf, offset, file=file)
    end = offset + total
    flags = buf[offset + 1]
    seqno, view_word = _IV.unpack_from(buf, offset + 24)
    (public_size,) = _unpack_u64(buf, offset + 36)
    public_start = offset + ENTRY_HEADER_SIZE + BODY_PREFIX
    public_end = public_start + public_size
    if public_end > end:
        raise EntryFormatError(
            f"public domain of {public_size} bytes overruns the entry", file=file, offset=offset, seqno=seqno
        )
    return EntryFrame(
        buf, offset, end, flags, seqno, view_word & MAX_VIEW, bool(view_word & SNAPSHOT_IV_BIT),
        public_start, public_end,
    )
