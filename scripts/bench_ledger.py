#!/usr/bin/env python3
"""Ledger benchmarks; prints one JSON object.

- `commit_path_tx_per_s`: transactions per second through the whole commit path (KV transaction, CCF
  serialisation, AES-GCM, commit evidence, Merkle append, file append with batched fsync) for 1 KiB
  private writes, a signature transaction every 5000 transactions.
- `verify_speedup_vs_read_ledger`: on the ledger just written (commit set at the end, so every chunk is
  `.committed`), the wall time of `read_ledger.py DIR -q` divided by that of `scripts/verify_ledger.py DIR`,
  both run as commands (interpreter start-up and imports included, as an auditor would run them).
  `verify_speedup_in_process` compares the verification alone: `read_ledger.py`'s wall time minus its
  start-up (`read_ledger.py --help`) against `audit_ledger` called in this process.

Usage: `.venv/bin/python scripts/bench_ledger.py [--transactions 100000] [--keep DIR]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from ledger.audit import audit_ledger
from ledger.bootstrap import start_new_service
from ledger.genesis import GenesisMember
from ledger.identity import PartyIdentity


def _commit_path(ledger_dir: str, n: int, interval: int, value_size: int) -> float:
    """Transactions per second through the whole commit path, on a fresh service ledger."""
    member = PartyIdentity.create("member0")
    ledger = start_new_service(ledger_dir, [GenesisMember(member.pem)], "export function validate() {}")
    value = os.urandom(value_size)
    start = time.perf_counter()
    for i in range(n):
        tx = ledger.begin()
        tx.put("records", i.to_bytes(8, "little"), value)
        ledger.commit(tx)
        if (i + 1) % interval == 0:
            sig = ledger.emit_signature()
            ledger.flush()
            ledger.commit_to(sig.seqno)
    ledger.request_chunk()  # end on a complete chunk, so that every transaction is in a committed file
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    elapsed = time.perf_counter() - start
    assert ledger.files is not None
    ledger.files.close()
    return n / elapsed


def _timed(cmd: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    return time.perf_counter() - start, proc


def main() -> int:
    parser = argparse.ArgumentParser(description="ledger benchmarks")
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--signature-interval", type=int, default=5000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="commit-path runs (fresh ledger each); median reported")
    parser.add_argument("--keep", help="write the ledger here and keep it")
    args = parser.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="bench_ledger_")
    ledger_dir = os.path.join(work, "ledger")
    try:
        rates = []
        for _ in range(args.repeat):
            shutil.rmtree(ledger_dir, ignore_errors=True)
            rates.append(_commit_path(ledger_dir, args.transactions, args.signature_interval, args.value_size))
        n, interval = args.transactions, args.signature_interval

        start = time.perf_counter()
        report = audit_ledger([ledger_dir])
        ours_in_process_s = time.perf_counter() - start

        ours_s, proc = _timed([sys.executable, os.path.join(os.path.dirname(__file__), "verify_ledger.py"), ledger_dir])
        if proc.returncode != 0:
            raise SystemExit(f"verify_ledger.py failed: {proc.stderr[-2000:]}")
        read_ledger = os.path.join(os.path.dirname(sys.executable), "read_ledger.py")
        theirs_s, proc = _timed([sys.executable, read_ledger, ledger_dir, "-q"])
        if proc.returncode != 0 or "Ledger verification complete" not in proc.stdout:
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit("read_ledger.py did not accept the benchmark ledger")
        theirs_startup_s, _ = _timed([sys.executable, read_ledger, "--help"])

        print(json.dumps({
            "transactions": n,
            "value_size": args.value_size,
            "signature_interval": interval,
            "commit_path_tx_per_s": round(statistics.median(rates)),
            "commit_path_tx_per_s_runs": [round(r) for r in rates],
            "ledger_bytes": sum(os.path.getsize(os.path.join(ledger_dir, f)) for f in os.listdir(ledger_dir)),
            "chunks": report.chunks,
            "verify_ours_command_seconds": round(ours_s, 3),
            "verify_read_ledger_command_seconds": round(theirs_s, 3),
            "verify_speedup_vs_read_ledger": round(theirs_s / ours_s, 2),
            "verify_ours_in_process_seconds": round(ours_in_process_s, 3),
            "read_ledger_startup_seconds": round(theirs_startup_s, 3),
            "verify_speedup_in_process": round((theirs_s - theirs_startup_s) / ours_in_process_s, 2),
            "verified_transactions": report.transactions,
            "verified_signatures": report.signatures,
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
