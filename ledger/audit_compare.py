"""Comparing several nodes' ledgers: are their committed prefixes byte-identical?

`compare_ledgers(dirs)` reads the committed chunk files of each directory (contiguous, as the auditor requires)
and compares them entry by entry over the seqnos all of them hold in committed chunks: from the largest first
committed seqno to the smallest last committed seqno. Chunk boundaries may differ between nodes; entries may
not. `committed_only=False` (the CLI's `--uncommitted`, for a running network whose newest chunk is still
open) also reads the uncommitted chunks, up to each one's last complete entry; such entries may still be rolled
back by an election, so a difference there is not by itself a fault. Guarantees:
- `ComparisonResult.identical` is True only if every entry in that range is byte-for-byte the same in every
  directory (header, GCM tag and IV, public domain, private ciphertext);
- otherwise `difference` names the first seqno that differs and, for each directory, the chunk file and the
  offset of its entry there (or of the damage that stopped reading it).
It does not verify signatures: run the auditor on one of the directories for that (identical bytes then
carry the verdict over to the others). Raises `VerificationError` when a directory cannot be read as a ledger
or the directories hold no committed seqno in common.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ledger.audit_scan import chunk_range, ledger_chunk_paths
from ledger.errors import EntryFormatError, VerificationError
from ledger.files import FILE_HEADER_SIZE
from ledger.framing import read_entry_size


@dataclass(frozen=True)
class EntryLocation:
    directory: str
    file: str
    offset: int | None
    problem: str | None = None  # set when the entry could not be read (damaged framing)


@dataclass(frozen=True)
class Difference:
    seqno: int
    locations: list[EntryLocation]

    def describe(self) -> str:
        where = "; ".join(f"{loc.directory}: {loc.file} offset {loc.offset}"
                          + (f" ({loc.problem})" if loc.problem else "") for loc in self.locations)
        return f"ledgers differ at seqno {self.seqno}: {where}"


@dataclass(frozen=True)
class ComparisonResult:
    directories: list[str]
    first_seqno: int
    last_seqno: int  # the comparison covered first_seqno..last_seqno (or stopped at difference.seqno)
    committed_ends: list[int] = field(default_factory=list)  # each directory's last committed seqno
    difference: Difference | None = None

    @property
    def identical(self) -> bool:
        return self.difference is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ok": self.identical, "identical": self.identical, "directories": self.directories,
            "first_seqno": self.first_seqno,
            "last_seqno": self.last_seqno, "committed_ends": self.committed_ends, "difference": None,
        }
        if self.difference is not None:
            out["difference"] = {"seqno": self.difference.seqno,
                                 "locations": [loc.__dict__ for loc in self.difference.locations]}
        return out


class _Damaged(Exception):
    def __init__(self, file: str, offset: int | None, problem: str) -> None:
        super().__init__(problem)
        self.file = file
        self.offset = offset
        self.problem = problem


def _entries(chunk_paths: list[str], first: int, last: int) -> Iterator[tuple[int, str, int, bytes]]:
    """(seqno, file, offset, entry bytes) for seqnos first..last, read with each entry's own framing."""
    for path in chunk_paths:
        start, end = chunk_range(path)
        if end is not None and end < first:
            continue
        if start > last:
            return
        name = os.path.basename(path)
        with open(path, "rb") as f:
            data = f.read()
        limit = len(data)
        if len(data) >= 8:
            table = int.from_bytes(data[:8], "little")
            if FILE_HEADER_SIZE <= table <= len(data):
                limit = table
        pos = FILE_HEADER_SIZE
        seqno = start
        while seqno <= last and (end is None or seqno <= end):
            try:
                size = read_entry_size(data, pos, file=name, limit=limit)
            except EntryFormatError as e:
                raise _Damaged(name, pos, e.reason) from None
            if seqno >= first:
                yield seqno, name, pos, data[pos : pos + size]
            pos += size
            seqno += 1


def _complete_entries(path: str) -> int:
    """How many whole entries an open (uncommitted) chunk file holds: a torn last entry is not counted."""
    with open(path, "rb") as f:
        data = f.read()
    pos, count = FILE_HEADER_SIZE, 0
    while pos < len(data):
        try:
            size = read_entry_size(data, pos, file=os.path.basename(path), limit=len(data))
        except EntryFormatError:
            break
        pos += size
        count += 1
    return count


def _last_seqno(chunk_path: str) -> int:
    start, end = chunk_range(chunk_path)
    return end if end is not None else start + _complete_entries(chunk_path) - 1


def compare_ledgers(directories: list[str], committed_only: bool = True) -> ComparisonResult:
    """Compare the committed prefixes of `directories` (two or more) entry by entry (with `committed_only=False`,
    also what their uncommitted chunks hold)."""
    if len(directories) < 2:
        raise VerificationError("give at least two ledger directories to compare")
    chunks = [ledger_chunk_paths([d], committed_only=committed_only) for d in directories]
    firsts = [chunk_range(c[0])[0] for c in chunks]
    ends = [_last_seqno(c[-1]) for c in chunks]
    first, last = max(firsts), min(ends)
    if first > last:
        raise VerificationError(f"the ledgers hold no committed seqno in common (first seqnos {firsts}, "
                                f"last committed seqnos {ends})")
    iters = [_entries(c, first, last) for c in chunks]
    seqno = first
    while seqno <= last:
        found: list[tuple[str, int, bytes] | _Damaged] = []
        for it in iters:
            try:
                s, file, offset, entry = next(it)
                assert s == seqno
                found.append((file, offset, entry))
            except _Damaged as e:
                found.append(e)
            except StopIteration:  # the chunk file is shorter than its name says
                found.append(_Damaged("?", None, "ends early"))
        readable = [f for f in found if not isinstance(f, _Damaged)]
        if len(readable) != len(found) or any(f[2] != readable[0][2] for f in readable):
            locations = [EntryLocation(d, f.file, f.offset, f.problem) if isinstance(f, _Damaged)
                         else EntryLocation(d, f[0], f[1]) for d, f in zip(directories, found, strict=True)]
            return ComparisonResult(directories, first, seqno, ends, Difference(seqno, locations))
        seqno += 1
    return ComparisonResult(directories, first, last, ends)
