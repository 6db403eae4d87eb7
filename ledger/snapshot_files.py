"""Snapshot files: their names, durable writes, the committed rename, and finding the latest committed one.

Host side: these move bytes only (a snapshot's private maps are encrypted before the host sees them).
Names (CCF's): `snapshot_<seqno>_<evidence seqno>`, then `.committed` once the evidence is committed and its
receipt appended.
"""

from __future__ import annotations

import os
import re

_NAME = re.compile(r"^snapshot_(\d+)_(\d+)(\.committed)?$")


def snapshot_file_name(seqno: int, evidence_seqno: int, committed: bool) -> str:
    return f"snapshot_{seqno}_{evidence_seqno}" + (".committed" if committed else "")


def parse_snapshot_name(name: str) -> tuple[int, int, bool] | None:
    m = _NAME.match(name)
    return (int(m.group(1)), int(m.group(2)), bool(m.group(3))) if m else None


def write_file(path: str, data: bytes) -> None:
    """Write `data` to `path` durably."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def commit_snapshot_file(directory: str, seqno: int, evidence_seqno: int, receipt_json: bytes) -> str:
    """Append the evidence receipt and rename the snapshot `.committed`."""
    path = os.path.join(directory, snapshot_file_name(seqno, evidence_seqno, False))
    with open(path, "ab") as f:
        f.write(receipt_json)
        f.flush()
        os.fsync(f.fileno())
    final = os.path.join(directory, snapshot_file_name(seqno, evidence_seqno, True))
    os.replace(path, final)
    return final


def latest_committed_snapshot(directory: str) -> str | None:
    best: tuple[int, str] | None = None
    if not os.path.isdir(directory):
        return None
    for name in os.listdir(directory):
        parsed = parse_snapshot_name(name)
        if parsed and parsed[2] and (best is None or parsed[0] > best[0]):
            best = (parsed[0], os.path.join(directory, name))
    return best[1] if best else None

