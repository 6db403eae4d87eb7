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
- `audit_ledger_mb_per_s`: megabytes (10^6 bytes) of ledger files per second through `scripts/audit.py ledger
  DIR --json` on that same ledger, its start-up (`audit.py --help`) subtracted as above;
  `audit_speedup_vs_read_ledger` is `read_ledger.py`'s verification time over `audit.py ledger`'s.
- `receipts_verified_per_s`: JSON receipts (`ledger.receipts.verify_json_receipt`, receipts already parsed from
  JSON, the service certificate loaded once) verified per second on one core, for transactions of a
  4096-transaction ledger; `p384_verifies_per_s`: bare P-384 ECDSA verifications (`cryptography`, prehashed
  SHA-256, the operation a receipt needs once) per second in the same process; `receipts_vs_p384` is the ratio.
  Both are measured in alternating batches of 16 calls, for `--receipt-rounds` x `--receipt-seconds` each.

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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa, utils

from ledger.audit import audit_ledger
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.genesis import GenesisMember
from ledger.identity import NodeIdentity, PartyIdentity
from ledger.receipts import verify_json_receipt


def _p384_node() -> NodeKeys:
    """A node key on CCF's default curve, as the ledgers measured here always had: the receipts' figure is against
    bare P-384 verifications, and the verification rates compare with earlier runs."""
    return NodeKeys(NodeIdentity.create(curve=ec.SECP384R1()), rsa.generate_private_key(public_exponent=65537,
                                                                                       key_size=2048))


def _commit_path(ledger_dir: str, n: int, interval: int, value_size: int) -> float:
    """Transactions per second through the whole commit path, on a fresh service ledger."""
    member = PartyIdentity.create("member0")
    ledger = start_new_service(ledger_dir, [GenesisMember(member.pem)], "export function validate() {}",
                               node=_p384_node())
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


def _receipt_rates(seconds: float, rounds: int) -> tuple[float, float]:
    """(JSON receipts verified per second, P-384 verifications per second) on this core, interleaved."""
    member = PartyIdentity.create("member0")
    ledger = start_new_service(None, [GenesisMember(member.pem)], "export function validate() {}", node=_p384_node())
    for i in range(4096):
        tx = ledger.begin()
        tx.put("records", i.to_bytes(8, "little"), b"v" * 64)
        ledger.commit(tx)
        if i % 1000 == 999:
            ledger.emit_signature()
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    receipts = [ledger.receipt(s) for s in range(3, sig.seqno) if not ledger.is_signature(s)]
    service_cert = ledger.service.cert
    for r in receipts[:10]:
        verify_json_receipt(r, service_cert)

    key = ec.generate_private_key(ec.SECP384R1())
    public = key.public_key()
    digests = [os.urandom(32) for _ in range(64)]
    algorithm = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
    signatures = [key.sign(d, algorithm) for d in digests]

    # Alternate small batches of each for the whole budget, so that the machine's noise (other processes
    # taking the core for a while) falls on both sides alike; each rate is calls over the time spent on them.
    spent = {"receipts": 0.0, "p384": 0.0}
    calls = {"receipts": 0, "p384": 0}
    batch = 16
    i = 0
    budget = seconds * rounds
    perf = time.perf_counter
    while spent["receipts"] < budget or spent["p384"] < budget:
        t = perf()
        for j in range(i, i + batch):
            verify_json_receipt(receipts[j % len(receipts)], service_cert)
        spent["receipts"] += perf() - t
        t = perf()
        for j in range(i, i + batch):
            public.verify(signatures[j % 64], digests[j % 64], algorithm)
        spent["p384"] += perf() - t
        calls["receipts"] += batch
        calls["p384"] += batch
        i += batch
    return calls["receipts"] / spent["receipts"], calls["p384"] / spent["p384"]


def main() -> int:
    parser = argparse.ArgumentParser(description="ledger benchmarks")
    parser.add_argument("--transactions", type=int, default=100_000)
    parser.add_argument("--signature-interval", type=int, default=5000)
    parser.add_argument("--value-size", type=int, default=1024)
    parser.add_argument("--repeat", type=int, default=3, help="commit-path runs (fresh ledger each); median reported")
    parser.add_argument("--verify-repeat", type=int, default=5, help="runs of each verification command")
    parser.add_argument("--keep", help="write the ledger here and keep it")
    parser.add_argument("--receipt-seconds", type=float, default=1.0, help="receipt-rate time per round and side")
    parser.add_argument("--receipt-rounds", type=int, default=7, help="receipt-rate rounds")
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
        audit_cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "audit.py")]
        audit_s = _median_time(audit_cmd + ["ledger", ledger_dir, "--json"], runs, lambda p: p.returncode == 0)
        audit_startup_s = _median_time(audit_cmd + ["--help"], runs)
        ledger_bytes = sum(os.path.getsize(os.path.join(ledger_dir, f)) for f in os.listdir(ledger_dir))
        # start-up excluded; on a tiny ledger (the test's) noise can exceed the verify time: clamp, never negative
        theirs_verify_s = max(theirs_s - theirs_startup_s, 1e-3)
        ours_verify_s = max(ours_s - ours_startup_s, 1e-3)
        audit_verify_s = max(audit_s - audit_startup_s, 1e-3)
        receipts_per_s, p384_per_s = _receipt_rates(args.receipt_seconds, args.receipt_rounds)

        print(json.dumps({
            "transactions": n,
            "value_size": args.value_size,
            "signature_interval": interval,
            "commit_path_tx_per_s": round(statistics.median(rates)),
            "commit_path_tx_per_s_runs": [round(r) for r in rates],
            "ledger_bytes": ledger_bytes,
            "chunks": report.chunks,
            "verify_speedup_vs_read_ledger": round(theirs_verify_s / ours_verify_s, 2),
            "verify_speedup_commands": round(theirs_s / ours_s, 2),
            "verify_ours_command_seconds": round(ours_s, 3),
            "verify_ours_startup_seconds": round(ours_startup_s, 3),
            "verify_read_ledger_command_seconds": round(theirs_s, 3),
            "verify_read_ledger_startup_seconds": round(theirs_startup_s, 3),
            "verified_transactions": report.transactions,
            "verified_signatures": report.signatures,
            "audit_ledger_mb_per_s": round(ledger_bytes / 1e6 / audit_verify_s, 1),
            "audit_speedup_vs_read_ledger": round(theirs_verify_s / audit_verify_s, 2),
            "audit_speedup_commands": round(theirs_s / audit_s, 2),
            "audit_command_seconds": round(audit_s, 3),
            "audit_startup_seconds": round(audit_startup_s, 3),
            "read_ledger_mb_per_s": round(ledger_bytes / 1e6 / theirs_verify_s, 1),
            "receipts_verified_per_s": round(receipts_per_s),
            "p384_verifies_per_s": round(p384_per_s),
            "receipts_vs_p384": round(receipts_per_s / p384_per_s, 3),
        }))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
