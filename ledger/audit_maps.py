"""The writes to chosen public maps over a whole ledger, in transaction order: what an auditor lists from the
public part alone (which models governance approved when, how many inferences each served, ...).

Guarantees: every write and removal to the maps asked for, with its transaction id, in ledger order, read by
the auditor's scanner (framing and seqnos checked). Not here: signatures and Merkle roots (`audit_ledger`
verifies those; run it on the same ledger), private maps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ledger.audit_scan import ledger_chunk_paths, scan_chunks
from ledger.errors import VerificationError


@dataclass(frozen=True)
class MapWrite:
    txid: str  # view.seqno
    map: str
    key: bytes
    value: bytes | None  # None: removed


def public_map_writes(paths: list[str], maps: frozenset[str], *, committed_only: bool = True,
                      workers: int | None = None) -> Iterator[MapWrite]:
    for path, scan in scan_chunks(ledger_chunk_paths(paths, committed_only), keep=maps, workers=workers):
        if isinstance(scan, tuple):
            reason, offset, seqno = scan
            raise VerificationError(f"{path}: {reason} (offset {offset}, seqno {seqno})")
        for entry in scan.kept:
            txid = f"{entry.view}.{scan.start + entry.index}"
            for name in sorted(maps & entry.tables.keys()):
                for key, value in entry.tables[name].items():
                    yield MapWrite(txid, name, key, value)
