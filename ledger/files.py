"""Ledger chunk files: the host side of the ledger. Moves bytes only; never sees a key.

File format (CCF's src/host/ledger.h): `u64 positions_offset` (0 while the chunk is open), the entries
back to back, then (complete chunks only) one u32 absolute offset per entry. Names:
`ledger_<start>` (open), `ledger_<start>-<end>` (complete), `ledger_<start>-<end>.committed`.

Guarantees:
- `append` writes entry seqno = last + 1 to the open chunk; an entry flagged FORCE_CHUNK_AFTER (a
  signature past the chunk size, decided by the enclave) completes the chunk right after it, one
  flagged FORCE_CHUNK_BEFORE completes the chunk before it.
- Durability by `FsyncPolicy`: BATCH (default) fsyncs on `flush()` (the owner calls it once per batch,
  before reporting entries as held) and whenever a chunk is completed; ALWAYS fsyncs every append.
- `commit(seqno)` renames complete chunks ending at or before seqno to `.committed`;
  `truncate(seqno)` drops uncommitted entries after seqno (reopening a complete chunk if needed).
- `LedgerFiles.open` recovers the last valid prefix: a torn or damaged tail of an uncommitted chunk is
  cut with a warning; a structurally damaged committed chunk raises `CorruptedCommittedChunk` naming the
  file and seqno. Content damage (a flipped value byte) is for the enclave to find (GCM tag, Merkle).
"""

from __future__ import annotations

import enum
import errno
import os
import re
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

from ledger.errors import CorruptedCommittedChunk, EntryFormatError, LedgerFileError
from ledger.framing import ENTRY_HEADER_SIZE, FLAG_FORCE_CHUNK_AFTER, FLAG_FORCE_CHUNK_BEFORE, read_entry_size

FILE_HEADER_SIZE = 8
COMMITTED_SUFFIX = ".committed"
_NAME = re.compile(r"^ledger_(\d+)(?:-(\d+))?(\.committed)?$")
_U64 = struct.Struct("<Q")
_IV_SEQNO = struct.Struct("<Q")


_WRITE_BATCH_BYTES = 1 << 20


class FsyncPolicy(enum.Enum):
    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


@dataclass
class _Chunk:
    start: int
    end: int | None  # None while open
    path: str
    committed: bool = False
    positions: list[int] | None = field(default=None, repr=False)  # loaded lazily for complete chunks

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def chunk_name(start: int, end: int | None, committed: bool) -> str:
    if end is None:
        return f"ledger_{start}"
    return f"ledger_{start}-{end}" + (COMMITTED_SUFFIX if committed else "")


def parse_chunk_name(name: str) -> tuple[int, int | None, bool] | None:
    m = _NAME.match(name)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)) if m.group(2) else None, bool(m.group(3))


@dataclass(frozen=True)
class RecoveryReport:
    last_seqno: int
    committed_seqno: int
    cut_bytes: int
    warnings: tuple[str, ...]


def scan_entries(data: bytes, start: int, end: int, first_seqno: int, *, file: str) -> tuple[list[int], str | None]:
    """Walk entries in data[start:end]; return their offsets and why the walk stopped early, if it did."""
    positions: list[int] = []
    pos = start
    expected = first_seqno
    while pos < end:
        try:
            size = read_entry_size(data, pos, file=file, limit=end)
        except EntryFormatError as e:
            return positions, e.reason + f" at offset {pos}, seqno {expected}"
        (iv_seqno,) = _IV_SEQNO.unpack_from(data, pos + ENTRY_HEADER_SIZE + 16)
        if iv_seqno != expected:
            return positions, f"entry at offset {pos} has seqno {iv_seqno}, expected {expected}"
        positions.append(pos)
        pos += size
        expected += 1
    return positions, None


# Fault injection for chaos runs (etcd's robustness tests use failpoints the same way): with PYCCF_FAILPOINTS=1 in
# the environment, a file named DISK_FAULT_FILE in the ledger directory, holding an errno name (ENOSPC, EROFS,
# EIO), makes every write and sync of the ledger fail with that error, as a full or read-only disk would. Off
# (no check at all) unless the variable is set.
DISK_FAULT_FILE = "disk-fault"
_FAILPOINTS = os.environ.get("PYCCF_FAILPOINTS", "") not in ("", "0")


def _injected_disk_fault(directory: str) -> None:
    if not _FAILPOINTS:
        return
    try:
        with open(os.path.join(directory, DISK_FAULT_FILE)) as f:
            name = f.read().strip()
    except FileNotFoundError:
        return
    code = getattr(errno, name, errno.EIO)
    raise OSError(code, f"{os.strerror(code)} (injected: {DISK_FAULT_FILE})")


def read_positions(data: bytes, name: str, start: int, end: int | None) -> tuple[list[int], int]:
    """Positions of a complete chunk from its table, each checked against the entry found there.

    Returns (positions, offset of the table). Raises `LedgerFileError` naming the first entry whose
    framing disagrees with the table (its size, its IV seqno; `offset` set), or the chunk start if the
    table itself cannot be read (`offset` unset).
    """
    table = _U64.unpack_from(data, 0)[0] if len(data) >= 8 else 0
    if table < FILE_HEADER_SIZE or table > len(data) or (len(data) - table) % 4:
        raise LedgerFileError(f"bad positions table offset {table} in a file of {len(data)} bytes",
                              file=name, seqno=start)
    count = (len(data) - table) // 4
    positions = list(struct.unpack_from(f"<{count}I", data, table))
    if end is not None and count != end - start + 1:
        raise LedgerFileError(f"positions table holds {count} entries, the name says {end - start + 1}",
                              file=name, seqno=start)
    bounds = [*positions, table]
    expected_pos = FILE_HEADER_SIZE
    for i, pos in enumerate(positions):
        seqno = start + i
        if pos != expected_pos:
            raise LedgerFileError(f"positions table says offset {pos}, the previous entry ends at {expected_pos}",
                                  file=name, offset=pos, seqno=seqno)
        next_pos = bounds[i + 1]
        try:
            size = read_entry_size(data, pos, file=name, limit=table)
        except EntryFormatError as e:
            raise LedgerFileError(e.reason, file=name, offset=pos, seqno=seqno) from None
        if pos + size != next_pos:
            # Either this entry's size field or the next row of the table is wrong: if a well-framed
            # entry with the next seqno starts where this one ends, the table row is to blame.
            blamed = seqno + 1 if _entry_at(data, pos + size, seqno + 1, table) else seqno
            raise LedgerFileError(f"entry ends at offset {pos + size}, the table says {next_pos}",
                                  file=name, offset=pos, seqno=blamed)
        (iv_seqno,) = _IV_SEQNO.unpack_from(data, pos + ENTRY_HEADER_SIZE + 16)
        if iv_seqno != seqno:
            raise LedgerFileError(f"entry holds seqno {iv_seqno}", file=name, offset=pos, seqno=seqno)
        expected_pos = next_pos
    return positions, table


def _reset_open_chunk(path: str, length: int | None) -> None:
    """Make the file an open chunk on disk: zero header (no positions table), cut to `length`, fsynced."""
    _unshare(path)
    with open(path, "r+b") as f:
        f.write(bytes(FILE_HEADER_SIZE))
        if length is not None:
            f.truncate(length)
        f.flush()
        os.fsync(f.fileno())


def _unshare(path: str) -> None:
    """A chunk hard-linked from another directory (a recovery's source) gets its own copy before any write in
    place, so the other directory never changes."""
    if os.stat(path).st_nlink > 1:
        private = path + ".copy"
        shutil.copyfile(path, private)
        os.replace(private, path)


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _entry_at(data: bytes, pos: int, seqno: int, limit: int) -> bool:
    """Whether a well-framed entry holding `seqno` starts at `pos` (or `pos` is the end, past the last)."""
    if pos == limit:
        return True
    try:
        read_entry_size(data, pos, limit=limit)
    except EntryFormatError:
        return False
    return bool(_IV_SEQNO.unpack_from(data, pos + ENTRY_HEADER_SIZE + 16)[0] == seqno)


class LedgerFiles:
    """The ledger directory of one node: append, flush, commit, truncate and read entries by seqno."""

    def __init__(self, directory: str, *, chunks: list[_Chunk], committed_seqno: int,
                 fsync: FsyncPolicy = FsyncPolicy.BATCH) -> None:
        self.directory = directory
        self.fsync = fsync
        self._chunks = chunks
        self._committed = committed_seqno
        self._file: BinaryIO | None = None
        self._open_positions: list[int] = []
        self._open_size = 0
        self._dirty = False
        self._failure: OSError | None = None
        self._new_name_unsynced = False
        self._pending: list[bytes] = []  # appended entries not yet handed to the OS
        self._pending_bytes = 0
        if chunks and chunks[-1].end is None:
            last = chunks[-1]
            self._file = open(last.path, "r+b")  # noqa: SIM115 - kept open across appends
            self._file.seek(0, os.SEEK_END)
            self._open_size = self._file.tell()
            self._open_positions = list(last.positions or [])
            last.positions = self._open_positions
        self._last = self._compute_last()

    # --- opening and recovery ----------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str, *, fsync: FsyncPolicy = FsyncPolicy.BATCH,
             defer_committed_tables: bool = False) -> tuple[LedgerFiles, RecoveryReport]:
        """The chunks of `directory`, each complete chunk's positions table checked against its entries, and an
        open chunk's torn tail cut. `defer_committed_tables`: committed chunks are checked when first read
        instead (damage then raises `CorruptedCommittedChunk` there), for a caller about to check every entry
        itself: a recovery's replay reads every chunk whole, in worker processes."""
        os.makedirs(directory, exist_ok=True)
        found: list[_Chunk] = []
        for name in os.listdir(directory):
            parsed = parse_chunk_name(name)
            if parsed is None:
                continue
            start, end, committed = parsed
            found.append(_Chunk(start, end, os.path.join(directory, name), committed))
        found.sort(key=lambda c: c.start)
        warnings: list[str] = []
        cut = 0
        chunks: list[_Chunk] = []
        committed_seqno = 0
        expected_start = found[0].start if found else 1
        for i, chunk in enumerate(found):
            if chunk.start != expected_start:
                raise LedgerFileError(f"chunk starts at {chunk.start}, expected {expected_start} (gap or overlap)",
                                      file=chunk.name, seqno=expected_start)
            if chunk.end is not None and chunk.committed and defer_committed_tables:
                committed_seqno = chunk.end
                chunks.append(chunk)
                expected_start = chunk.end + 1
                continue
            with open(chunk.path, "rb") as f:
                data = f.read()
            if chunk.end is not None:
                try:
                    chunk.positions, _ = read_positions(data, chunk.name, chunk.start, chunk.end)
                except LedgerFileError as e:
                    if chunk.committed:
                        raise CorruptedCommittedChunk(f"committed chunk is damaged: {e.reason}", file=chunk.name,
                                                      offset=e.offset, seqno=e.seqno) from e
                    # Never committed, so never agreed: keep the valid prefix, drop the rest.
                    cut += cls._cut_damaged_chunk(chunk, data, e, found[i + 1 :], warnings)
                    if chunk.positions:
                        chunks.append(chunk)
                    break
                if chunk.committed:
                    committed_seqno = chunk.end
                chunks.append(chunk)
                expected_start = chunk.end + 1
                continue
            # An open chunk: only the last one, and its tail may be torn.
            if i != len(found) - 1:
                raise LedgerFileError("an open chunk is followed by other chunks", file=chunk.name)
            header = _U64.unpack_from(data, 0)[0] if len(data) >= 8 else 0
            if header:
                # Crashed while completing the chunk: if the table is whole, finish the rename; if not,
                # the chunk was never complete, so forget the header and the table and treat it as open.
                try:
                    positions, _ = read_positions(data, chunk.name, chunk.start, None)
                except LedgerFileError:
                    data = bytes(FILE_HEADER_SIZE) + data[FILE_HEADER_SIZE:]  # the torn table is cut below
                    _reset_open_chunk(chunk.path, None)
                else:
                    chunk.end = chunk.start + len(positions) - 1
                    chunk.positions = positions
                    new_path = os.path.join(directory, chunk_name(chunk.start, chunk.end, False))
                    os.replace(chunk.path, new_path)
                    _fsync_directory(directory)
                    chunk.path = new_path
                    chunks.append(chunk)
                    continue
            positions, problem = scan_entries(data, FILE_HEADER_SIZE, len(data), chunk.start, file=chunk.name)
            good_end = positions[-1] + read_entry_size(data, positions[-1]) if positions else FILE_HEADER_SIZE
            if problem is not None or len(data) < FILE_HEADER_SIZE:
                cut += max(len(data) - good_end, 0) if len(data) >= FILE_HEADER_SIZE else len(data)
                msg = f"{chunk.name}: cut torn or damaged tail after offset {good_end} ({problem or 'torn header'})"
                from loguru import logger  # deferred: loguru costs ~60 ms to import, warnings are rare

                logger.warning(msg)
                warnings.append(msg)
                _reset_open_chunk(chunk.path, good_end)
            if not positions:
                os.remove(chunk.path)
                continue
            chunk.positions = positions
            chunks.append(chunk)
        files = cls(directory, chunks=chunks, committed_seqno=committed_seqno, fsync=fsync)
        return files, RecoveryReport(files.last_seqno, committed_seqno, cut, tuple(warnings))

    @staticmethod
    def _cut_damaged_chunk(chunk: _Chunk, data: bytes, error: LedgerFileError, later: list[_Chunk],
                           warnings: list[str]) -> int:
        """Turn a damaged, uncommitted complete chunk back into an open one holding its valid prefix,
        and delete the chunks after it. Returns the number of bytes dropped."""
        from loguru import logger  # deferred: loguru costs ~60 ms to import, warnings are rare

        committed_after = [c.name for c in later if c.committed]
        if committed_after:
            raise CorruptedCommittedChunk(
                f"uncommitted chunk is damaged ({error.reason}) but committed chunks follow it: "
                f"{', '.join(committed_after)}", file=chunk.name, offset=error.offset, seqno=error.seqno)
        scanned, _ = scan_entries(data, FILE_HEADER_SIZE, len(data), chunk.start, file=chunk.name)
        if error.offset is not None and error.seqno is not None:  # a damaged entry: keep those before it
            scanned = scanned[: max(error.seqno - chunk.start, 0)]
        positions = scanned
        good_end = positions[-1] + read_entry_size(data, positions[-1]) if positions else FILE_HEADER_SIZE
        dropped = len(data) - good_end + sum(os.path.getsize(c.path) for c in later)
        open_path = os.path.join(os.path.dirname(chunk.path), chunk_name(chunk.start, None, False))
        _reset_open_chunk(chunk.path, good_end)
        for c in later:
            os.remove(c.path)
        if positions:
            os.replace(chunk.path, open_path)
            chunk.path, chunk.end, chunk.positions = open_path, None, positions
        else:
            os.remove(chunk.path)
            chunk.positions = []
        _fsync_directory(os.path.dirname(chunk.path))
        msg = (f"{chunk.name}: uncommitted chunk damaged ({error.reason}, seqno {error.seqno}); kept "
               f"{len(positions)} entries, dropped {len(later)} later chunk(s)")
        logger.warning(msg)
        warnings.append(msg)
        return dropped

    # --- state -------------------------------------------------------------------------------------

    def _compute_last(self) -> int:
        if not self._chunks:
            return 0
        last = self._chunks[-1]
        if last.end is not None:
            return last.end
        return last.start + len(self._open_positions) - 1

    @property
    def last_seqno(self) -> int:
        return self._last

    @property
    def committed_seqno(self) -> int:
        return self._committed

    @property
    def first_seqno(self) -> int:
        return self._chunks[0].start if self._chunks else 0

    def start_after(self, seqno: int) -> None:
        """An empty ledger directory whose first entry will be seqno + 1 (a node that starts from a snapshot)."""
        if self._chunks:
            raise LedgerFileError(f"cannot start after {seqno}: the directory already holds a ledger")
        self._last = self._committed = seqno

    def chunk_spans(self) -> list[tuple[str, int, int, bool]]:
        """Every chunk as (path, first seqno, last seqno, whether complete), for readers in other processes (the
        open chunk's last entry is the last one written)."""
        self.flush()
        return [(c.path, c.start, c.end if c.end is not None else c.start + len(self._open_positions) - 1,
                 c.end is not None) for c in self._chunks]

    def chunk_names(self) -> list[str]:
        return [c.name for c in self._chunks]

    # --- writing -----------------------------------------------------------------------------------

    def _open_new_chunk(self, start: int) -> None:
        path = os.path.join(self.directory, chunk_name(start, None, False))
        self._file = open(path, "w+b")  # noqa: SIM115 - kept open across appends
        self._file.write(bytes(FILE_HEADER_SIZE))
        self._open_size = FILE_HEADER_SIZE
        self._open_positions = []
        self._chunks.append(_Chunk(start, None, path, positions=self._open_positions))
        self._new_name_unsynced = True  # the next flush makes the new name durable too

    def append(self, entry: bytes) -> int:
        """Append the next entry; return its seqno.

        The entry must be well framed and hold seqno last + 1 (the host reads the public framing only).
        If the operating system fails a write, the files are in an unknown state: this object refuses
        everything from then on (the node must restart and recover), and `LedgerFileError` is raised.
        """
        if self._failure is not None:
            raise LedgerFileError(f"ledger files stopped after a failed write: {self._failure}")
        seqno = self._last + 1
        try:
            read_entry_size(entry, 0, limit=len(entry))
        except EntryFormatError as e:
            raise LedgerFileError(f"cannot append a malformed entry: {e.reason}", seqno=seqno) from None
        if len(entry) != ENTRY_HEADER_SIZE + (_U64.unpack_from(entry, 0)[0] >> 16):
            raise LedgerFileError("entry has bytes after its declared size", seqno=seqno)
        (iv_seqno,) = _IV_SEQNO.unpack_from(entry, ENTRY_HEADER_SIZE + 16)
        if iv_seqno != seqno:
            raise LedgerFileError(f"entry holds seqno {iv_seqno}, the ledger expects {seqno}", seqno=seqno)
        try:
            return self._append(entry, seqno)
        except OSError as e:
            self._failure = e
            raise LedgerFileError(f"writing the ledger failed: {e}", seqno=seqno) from e

    def _append(self, entry: bytes, seqno: int) -> int:
        flags = entry[1]
        if flags & FLAG_FORCE_CHUNK_BEFORE and self._file is not None and self._open_positions:
            self._complete_open_chunk()
        if self._file is None:
            self._open_new_chunk(seqno)
        self._open_positions.append(self._open_size)
        self._pending.append(entry)
        self._pending_bytes += len(entry)
        self._open_size += len(entry)
        self._last = seqno
        self._dirty = True
        if self._pending_bytes >= _WRITE_BATCH_BYTES:
            self._write_pending()
        if self.fsync is FsyncPolicy.ALWAYS:
            self.flush()
        if flags & FLAG_FORCE_CHUNK_AFTER:
            self._complete_open_chunk()
        return seqno

    def _write_pending(self) -> None:
        if self._pending:
            assert self._file is not None
            _injected_disk_fault(self.directory)
            self._file.write(b"".join(self._pending))
            self._pending.clear()
            self._pending_bytes = 0

    def flush(self) -> None:
        """Make appended entries durable (per the fsync policy): `flush_in_background`, waited for here."""
        make_durable = self.flush_in_background()
        if make_durable is not None:
            try:
                make_durable()
            except OSError as e:
                raise self.background_flush_failed(e) from e

    def flush_in_background(self) -> Callable[[], None] | None:
        """`flush`, split for a caller that waits for the disk off its thread: the appended entries are written to
        the operating system now; the function returned (None: nothing to wait for) then makes them durable, and
        may run on another thread (it syncs a duplicate of the file's descriptor, so the chunk may be completed,
        written to or closed meanwhile). That function raises `OSError`, which the caller hands to
        `background_flush_failed`."""
        if self._failure is not None:
            raise LedgerFileError(f"ledger files stopped after a failed write: {self._failure}")
        if self._file is None or not self._dirty:
            return None
        try:
            self._write_pending()
            _injected_disk_fault(self.directory)
            self._file.flush()
        except OSError as e:
            self._failure = e
            raise LedgerFileError(f"writing the ledger failed: {e}") from e
        self._dirty = False
        if self.fsync is FsyncPolicy.NEVER:
            return None
        fd = os.dup(self._file.fileno())
        directory = self.directory if self._new_name_unsynced else None
        self._new_name_unsynced = False

        def make_durable() -> None:
            try:
                os.fsync(fd)
                if directory is not None:
                    _fsync_directory(directory)  # a new chunk's name must survive a crash as its entries do
            finally:
                os.close(fd)

        return make_durable

    def background_flush_failed(self, error: BaseException) -> LedgerFileError:
        """What `flush_in_background`'s function raised: the files stop, as after any failed write."""
        self._failure = error if isinstance(error, OSError) else OSError(errno.EIO, str(error))
        return LedgerFileError(f"writing the ledger failed: {error}")

    def _sync(self, f: BinaryIO) -> None:
        _injected_disk_fault(self.directory)
        f.flush()
        if self.fsync is not FsyncPolicy.NEVER:
            os.fsync(f.fileno())

    def _fsync_dir(self) -> None:
        if self.fsync is not FsyncPolicy.NEVER:
            _fsync_directory(self.directory)

    def _complete_open_chunk(self) -> None:
        self._write_pending()
        f = self._file
        assert f is not None
        chunk = self._chunks[-1]
        table = self._open_size
        # The table must be durable before the header points at it: a header reaching the disk first
        # would describe a torn table (open() copes, but a chunk should never need that).
        f.write(struct.pack(f"<{len(self._open_positions)}I", *self._open_positions))
        self._sync(f)
        f.seek(0)
        f.write(_U64.pack(table))
        self._sync(f)
        f.close()
        self._file = None
        self._dirty = False
        chunk.end = chunk.start + len(self._open_positions) - 1
        chunk.positions = None  # on disk in the table now: loaded again only if an old entry is read
        chunk.committed = chunk.end <= self._committed
        new_path = os.path.join(self.directory, chunk_name(chunk.start, chunk.end, chunk.committed))
        os.replace(chunk.path, new_path)
        chunk.path = new_path
        self._fsync_dir()

    def commit(self, seqno: int) -> None:
        """Record that everything up to `seqno` is committed; rename the chunks that became so."""
        if seqno > self._last:
            raise LedgerFileError(f"cannot commit {seqno}: the ledger ends at {self._last}")
        if seqno <= self._committed:
            return
        self._committed = seqno
        renamed = False
        for chunk in self._chunks:
            if chunk.end is not None and not chunk.committed and chunk.end <= seqno:
                new_path = os.path.join(self.directory, chunk_name(chunk.start, chunk.end, True))
                os.replace(chunk.path, new_path)
                chunk.path = new_path
                chunk.committed = True
                renamed = True
        if renamed:
            self._fsync_dir()

    def truncate(self, seqno: int) -> None:
        """Drop every entry after `seqno` (which must not be below the commit point)."""
        if seqno < self._committed:
            raise LedgerFileError(f"cannot truncate to {seqno}: committed up to {self._committed}")
        if seqno >= self._last:
            return
        self.flush()
        while self._chunks and self._chunks[-1].start > seqno:
            chunk = self._chunks.pop()
            if chunk.end is None and self._file is not None:
                self._file.close()
                self._file = None
            os.remove(chunk.path)
        if self._chunks:
            chunk = self._chunks[-1]
            if chunk.end is None:
                keep = seqno - chunk.start + 1
                assert self._file is not None
                self._open_size = self._open_positions[keep]
                del self._open_positions[keep:]
                self._file.truncate(self._open_size)
                self._file.seek(self._open_size)
                self._sync(self._file)
            elif chunk.end > seqno:
                self._reopen(chunk, seqno)
        self._last = seqno
        self._fsync_dir()

    def discard_after(self, seqno: int) -> list[str]:
        """Disaster recovery only: forget every entry after `seqno`, committed or not (what an abandoned recovery
        attempt wrote after the ledger it recovered). The chunks touched are first copied into `unused/` in the
        directory, so nothing is destroyed. Returns the names set aside."""
        if seqno >= self._last:
            return []
        self.flush()
        unused = os.path.join(self.directory, "unused")
        os.makedirs(unused, exist_ok=True)
        set_aside = []
        for chunk in self._chunks:
            if chunk.end is None or chunk.end > seqno:
                shutil.copyfile(chunk.path, os.path.join(unused, chunk.name))
                set_aside.append(chunk.name)
        self._committed = min(self._committed, seqno)
        for chunk in self._chunks:
            if chunk.end is not None and chunk.end > seqno and chunk.start <= seqno and chunk.committed:
                committed_path = chunk.path
                chunk.path = os.path.join(self.directory, chunk_name(chunk.start, chunk.end, False))
                os.replace(committed_path, chunk.path)
                chunk.committed = False
        self.truncate(seqno)
        return set_aside

    def _reopen(self, chunk: _Chunk, seqno: int) -> None:
        positions = self._positions(chunk)
        keep = seqno - chunk.start + 1
        _unshare(chunk.path)
        # Make the file an open chunk on disk (no header, no table, no dropped entries) before its name
        # says so: a crash in between must not bring the dropped entries back.
        f = open(chunk.path, "r+b")  # noqa: SIM115 - kept open across appends
        f.write(bytes(FILE_HEADER_SIZE))
        f.truncate(positions[keep])
        f.seek(positions[keep])
        self._sync(f)
        new_path = os.path.join(self.directory, chunk_name(chunk.start, None, False))
        os.replace(chunk.path, new_path)
        chunk.path, chunk.end, chunk.committed = new_path, None, False
        self._file = f
        self._open_positions = positions[:keep]
        chunk.positions = self._open_positions
        self._open_size = positions[keep]

    # --- reading -----------------------------------------------------------------------------------

    def _positions(self, chunk: _Chunk) -> list[int]:
        if chunk.positions is None:
            with open(chunk.path, "rb") as f:
                data = f.read()
            try:
                chunk.positions, _ = read_positions(data, chunk.name, chunk.start, chunk.end)
            except LedgerFileError as e:
                if not chunk.committed:
                    raise
                raise CorruptedCommittedChunk(f"committed chunk is damaged: {e.reason}", file=chunk.name,
                                              offset=e.offset, seqno=e.seqno) from e
        return chunk.positions

    def _chunk_for(self, seqno: int) -> _Chunk:
        for chunk in reversed(self._chunks):
            if chunk.start <= seqno:
                if seqno <= self._last and (chunk.end is None or seqno <= chunk.end):
                    return chunk
                break
        raise LedgerFileError(f"no entry {seqno} (ledger holds {self.first_seqno}..{self._last})", seqno=seqno)

    def read(self, seqno: int) -> bytes:
        return self.read_range(seqno, seqno)[0]

    def read_range(self, start: int, end: int) -> list[bytes]:
        """Entries start..end inclusive, as stored."""
        if start > end:
            return []
        pending = self._pending
        first_pending = self._last - len(pending) + 1
        if pending and first_pending <= start and end <= self._last:
            # the newest entries, not yet handed to the OS (what a primary replicates as it writes them)
            return pending[start - first_pending: end - first_pending + 1]
        if self._file is not None and self._dirty:
            self._write_pending()
            self._file.flush()
        out: list[bytes] = []
        seqno = start
        while seqno <= end:
            chunk = self._chunk_for(seqno)
            positions = self._positions(chunk)
            last_in_chunk = chunk.start + len(positions) - 1 if chunk.end is None else chunk.end
            stop = min(end, last_in_chunk)
            with open(chunk.path, "rb") as f:
                first = positions[seqno - chunk.start]
                f.seek(first)
                if stop == last_in_chunk:
                    data = f.read((self._open_size if chunk.end is None else _table_offset(f)) - first)
                else:
                    data = f.read(positions[stop - chunk.start + 1] - first)
            for s in range(seqno, stop + 1):
                a = positions[s - chunk.start] - first
                b = (positions[s - chunk.start + 1] - first) if s < stop else len(data)
                out.append(data[a:b])
            seqno = stop + 1
        return out

    def chunk_end_of(self, seqno: int) -> int:
        """The last seqno held by the chunk holding `seqno` (the ledger's last for the open chunk)."""
        chunk = self._chunk_for(seqno)
        return chunk.end if chunk.end is not None else self._last

    def chunk_file_of(self, seqno: int) -> str:
        return self._chunk_for(seqno).path

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def _table_offset(f: BinaryIO) -> int:
    here = f.tell()
    f.seek(0)
    (table,) = _U64.unpack(f.read(8))
    f.seek(here)
    return int(table)
