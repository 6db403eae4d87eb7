#!/usr/bin/env python3
"""Ledger benchmarks; prints one JSON object.

- `commit_path_tx_per_s`: transactions per second through the whole commit path (KV transaction, CCF
  serialisation, AES-GCM, commit evidence, Merkle append, file append with batched fsync) for 1 KiB
  private writes, a signature transaction every 5000 transactions.
- `verify_speedup_vs_read_ledger`: on the ledger just written (the last signature ends a chunk, so every
  chunk is `.committed` and both tools see every transaction), the verification time of
  `read_ledger.py DIR -q` divided by that of our `scripts/verify_ledger.py DIR`. Both are run as commands;
  each one's verification time is its wall time minus its start-up (the same command with `--help`,
  which imports the same modules). `verify_speedup_commands` is the plain ratio of the commands' wall
  times, start-up included. Each timing is the median of `--verify-repeat` runs.

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
from collections.abc import Callable

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


def _median_time(cmd: list[str], repeat: int,
                 accept: Callable[[subprocess.CompletedProcess[str]], bool] = lambda p: True) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if not accept(proc):
            print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
            raise SystemExit(f"{' '.join(cmd)} failed")
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description="ledger benchmarks")
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--signature-interval", type=int, default=5000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="commit-path runs (fresh ledger each); median reported")
    parser.add_argument("--verify-repeat", type=int, default=5, help="runs of each verification command")
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

        report = audit_ledger([ledger_dir])
        ours_cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "verify_ledger.py")]
        theirs_cmd = [sys.executable, os.path.join(os.path.dirname(sys.executable), "read_ledger.py")]
        runs = args.verify_repeat
        ours_s = _median_time(ours_cmd + [ledger_dir], runs, lambda p: p.returncode == 0)
        ours_startup_s = _median_time(ours_cmd + ["--help"], runs)
        theirs_s = _median_time(theirs_cmd + [ledger_dir, "-q"], runs,
                                lambda p: p.returncode == 0 and "Ledger verification complete" in p.stdout)
        theirs_startup_s = _median_time(theirs_cmd + ["--help"], runs)

        print(json.dumps({
            "transactions": n,
            "value_size": args.value_size,
            "signature_interval": interval,
            "commit_path_tx_per_s": round(statistics.median(rates)),
            "commit_path_tx_per_s_runs": [round(r) for r in rates],
            "ledger_bytes": sum(os.path.getsize(os.path.join(ledger_dir, f)) for f in os.listdir(ledger_dir)),
            "chunks": report.chunks,
            "verify_speedup_vs_read_ledger": round((theirs_s - theirs_startup_s) / (ours_s - ours_startup_s), 2),
            "verify_speedup_commands": round(theirs_s / ours_s, 2),
            "verify_ours_command_seconds": round(ours_s, 3),
            "verify_ours_startup_seconds": round(ours_startup_s, 3),
            "verify_read_ledger_command_seconds": round(theirs_s, 3),
            "verify_read_ledger_startup_seconds": round(theirs_startup_s, 3),
            "verified_transactions": report.transactions,
            "verified_signatures": report.signatures,
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
