"""Gathering a lost service's ledger chunks into a recovering node's ledger directory (host side: file
operations only, no key, no entry parsed beyond the chunk names and sizes)."""

from __future__ import annotations

import os
import shutil

from ledger.errors import RecoveryError
from ledger.files import parse_chunk_name


def gather_previous_ledger(sources: list[str], target: str) -> list[str]:
    """Copy the previous service's chunk files into `target` (created if missing) and return the names copied.
    Sources (and chunks already in `target`) may come from different nodes: for each start seqno the best chunk
    is taken (committed, then complete, then the longest), following the chain of chunks from the first; an
    open chunk ends the chain. Sources are only read."""
    os.makedirs(target, exist_ok=True)
    candidates: dict[int, tuple[tuple[int, int], str, str]] = {}  # start -> (rank, directory, name)

    def consider(directory: str, name: str) -> None:
        parsed = parse_chunk_name(name)
        if parsed is None:
            return
        start, end, committed = parsed
        # an open chunk's length is not in its name: its size stands for it
        length = end if end is not None else start + os.path.getsize(os.path.join(directory, name))
        rank = (2 if committed else 1 if end is not None else 0, length)
        if start not in candidates or rank > candidates[start][0]:
            candidates[start] = (rank, directory, name)

    for name in os.listdir(target):
        consider(target, name)
    for source in sources:
        if os.path.abspath(source) == os.path.abspath(target):
            continue
        try:
            names = sorted(os.listdir(source))
        except OSError as e:
            raise RecoveryError(f"cannot read the previous ledger directory {source}: {e.strerror}") from None
        for name in names:
            consider(source, name)
    chosen: list[tuple[str, str]] = []
    start = min(candidates, default=None)
    while start is not None and start in candidates:
        (kind, end), directory, name = candidates[start]
        chosen.append((directory, name))
        if kind == 0:
            break  # an open chunk is the last
        start = end + 1
    later = [s for s in candidates if start is not None and s > start]
    if start not in candidates and later:
        # a missing chunk: what follows it cannot be verified, and dropping it would lose committed history
        _, directory, name = candidates[min(later)]
        raise RecoveryError(f"the previous ledger has a gap: no chunk starts at seqno {start} (the next is "
                            f"{os.path.join(directory, name)})")
    keep = {name for _, name in chosen}
    for name in os.listdir(target):  # chunks of the target that the chain does not use are set aside
        if parse_chunk_name(name) is not None and name not in keep:
            os.makedirs(os.path.join(target, "unused"), exist_ok=True)
            os.replace(os.path.join(target, name), os.path.join(target, "unused", name))
    copied: list[str] = []
    for directory, name in chosen:
        if os.path.abspath(directory) != os.path.abspath(target):
            _place(os.path.join(directory, name), os.path.join(target, name))
            copied.append(name)
    return copied


def _place(source: str, target: str) -> None:
    """A complete chunk is only ever renamed or replaced whole, never written in place (`LedgerFiles` copies a
    shared file before reopening it), so it is hard-linked when the file system allows; an open one is copied.
    Both go through a temporary name: a crash never leaves a partial chunk under a chunk's name."""
    temporary = target + ".partial"
    parsed = parse_chunk_name(os.path.basename(target))
    linked = False
    if parsed is not None and parsed[1] is not None:
        try:
            os.link(source, temporary)
            linked = True
        except OSError:  # another file system, or links not allowed: a copy
            pass
    if not linked:
        shutil.copyfile(source, temporary)
    os.replace(temporary, target)

