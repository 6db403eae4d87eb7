#!/usr/bin/env python3
"""How fast the chaos checker is: writes a history of `--ops` operations (half writes, half reads, over 50 keys,
every write Committed, every read the key's latest value) with its committed ledger, then times
`chaos.py --check` on it, the whole command (reading the file included) and the check alone.

Usage: `.venv/bin/python scripts/bench_chaos_check.py [--ops 1000000] [--dir DIR]`; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.chaos import save_ledger  # noqa: E402
from scripts.chaos_check import CommittedLedger  # noqa: E402
from scripts.chaos_history import Event, write_history  # noqa: E402


def write_example(path: str, ops: int, seed: int = 1) -> None:
    rng = random.Random(seed)
    events: list[Event] = []
    records: list[tuple[int, int, str | None]] = []
    views = [0]
    latest: dict[int, str] = {}
    clock = 0.0
    for i in range(ops // 2):
        key, reader_key, process = rng.randrange(50), rng.randrange(50), rng.randrange(8)
        clock += 0.001
        seqno, value = i + 1, f"v{i}"
        views.append(2)
        records.append((seqno, key, value))
        latest[key] = value
        events += [Event(2 * i, process, 0, "invoke", "write", key, value, clock),
                   Event(2 * i, process, 0, "ok", "write", key, value, clock + 0.0005, f"2.{seqno}"),
                   Event(2 * i + 1, 8 + process, 0, "invoke", "read", reader_key, None, clock + 0.0006),
                   Event(2 * i + 1, 8 + process, 0, "ok", "read", reader_key, latest.get(reader_key), clock + 0.0007,
                         f"2.{seqno}")]
    write_history(path, events)
    save_ledger(path + ".committed.json", CommittedLedger(views, records))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time the chaos checker on a generated history.")
    parser.add_argument("--ops", type=int, default=1_000_000)
    parser.add_argument("--dir", help="where the history goes (default: a temporary directory, removed)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(args.dir or scratch, "history.jsonl")
        write_example(path, args.ops)
        began = time.perf_counter()
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "chaos.py"), "--check", path],
                              capture_output=True, text=True)
        wall = time.perf_counter() - began
        verdict = json.loads(proc.stdout.strip().splitlines()[-1])
    print(json.dumps({"ops": verdict["ops"], "valid": verdict["valid"], "command_s": round(wall, 1),
                      "check_s": verdict["check_s"], "history_bytes": os.path.getsize(path) if args.dir else None}))
    return 0 if verdict["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
