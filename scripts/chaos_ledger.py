"""What the nodes' ledgers say after a chaos run: the committed history, agreement, and CCF's verdict.

After the nodes are stopped, each node's ledger is read up to the commit point it last reported. In virtual
mode a node's ledger secrets can be unsealed from its data directory (the virtual platform keeps its sealing
key there; a TEE would not), which lets this test tool decrypt the private records the clients wrote.

Guarantees: `read_committed` returns the committed history of the node that committed furthest, and names
(as anomalies) every pair of nodes whose committed prefixes differ, and every ledger `read_ledger.py`
refuses. Not here: the history's check (`chaos_check`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass

from ledger.entry import decode_entry
from ledger.files import LedgerFiles
from network.enclave.sealing import SealingError, unseal_data_dir
from scripts.chaos_check import Anomaly, CommittedLedger

RECORDS = "records"  # the logging app's private map, which `/app/log/private` writes


@dataclass(frozen=True)
class NodeLedger:
    node: int
    directory: str  # the node's data directory
    commit: int  # the last commit seqno it reported (0: unknown, then its committed chunks are taken)


def read_ledger_verdict(ledger_dir: str) -> str | None:
    """None if CCF's `read_ledger.py` accepts the ledger (uncommitted entries included), else its complaint."""
    tool = os.path.join(os.path.dirname(sys.executable), "read_ledger.py")
    proc = subprocess.run([sys.executable, tool, ledger_dir, "-q", "--uncommitted"], capture_output=True,
                          text=True, timeout=600)
    out = proc.stdout + proc.stderr
    if proc.returncode == 0 and "Ledger verification complete" in out:
        return None
    return out.strip().splitlines()[-1] if out.strip() else f"exit code {proc.returncode}"


def read_committed(nodes: list[NodeLedger], *, judge: bool = True) -> tuple[CommittedLedger, list[Anomaly]]:
    anomalies: list[Anomaly] = []
    secrets = None
    for n in nodes:
        try:
            secrets = unseal_data_dir(n.directory).secrets
            break
        except (SealingError, OSError):
            continue
    if secrets is None:
        raise SealingError("no node's data directory holds sealed secrets: the private records cannot be read")
    prefixes: list[tuple[int, list[bytes]]] = []
    for n in nodes:
        ledger_dir = os.path.join(n.directory, "ledger")
        if judge and (complaint := read_ledger_verdict(ledger_dir)) is not None:
            anomalies.append(Anomaly("ledger-refused", (), f"node {n.node}: read_ledger.py: {complaint}"))
        files, _ = LedgerFiles.open(ledger_dir)
        try:
            last = min(n.commit or files.committed_seqno, files.last_seqno)
            prefixes.append((n.node, files.read_range(1, last) if last else []))
        finally:
            files.close()
    shortest = min(len(entries) for _, entries in prefixes)
    reference_node, reference = max(prefixes, key=lambda p: len(p[1]))
    digests = [hashlib.sha256(e).digest() for e in reference[:shortest]]
    for node, entries in prefixes:
        for seqno, (entry, digest) in enumerate(zip(entries, digests, strict=False), 1):
            if hashlib.sha256(entry).digest() != digest:
                anomalies.append(Anomaly("ledgers-disagree", (), f"node {node}'s committed entry at seqno {seqno} "
                                                                 f"differs from node {reference_node}'s"))
                break
    views = [0]
    records: list[tuple[int, int, str | None]] = []
    for seqno, raw in enumerate(reference, 1):
        decoded = decode_entry(raw, secrets)
        views.append(decoded.view)
        for key, value in decoded.writes.get(RECORDS, {}).items():
            records.append((seqno, int.from_bytes(key, "little"), value.decode() if value is not None else None))
    return CommittedLedger(views, records), anomalies
