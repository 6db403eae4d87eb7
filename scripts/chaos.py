#!/usr/bin/env python3
"""Chaos runs: a fresh network under a recorded client load and a seeded nemesis, then a check of the whole
history against the nodes' ledgers for what CCF promises (no lost commit, no ghost, reads in transaction order,
sessions that never go back, agreeing ledgers CCF's `read_ledger.py` accepts, and liveness after the faults).

Usage:
  chaos.py --seconds S --seed N [--nodes 3|5] [--clients C] [--history-out FILE] [--report FILE]
  chaos.py --check FILE            (a recorded history, with the committed ledger saved next to it)

It prints the faults as they happen, a readable summary and, last, one JSON line: `valid`, `ops`, `faults`
(kind -> count), `anomalies`, `lost_committed_writes`, `seed`, `liveness_s`, and where the workspace (the nodes'
data directories and logs, kept), the history and the HTML report are. Exit code 0 only for a valid history.
The history format is described in `scripts/chaos_history.py` and docs/chaos.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from typing import Any

import orjson

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from scripts.chaos_check import Anomaly, CheckResult, CommittedLedger, check  # noqa: E402
from scripts.chaos_history import HistoryError, read_history, write_history  # noqa: E402
from scripts.chaos_nemesis import KINDS  # noqa: E402

LIVENESS_BOUND_S = 30.0  # after the last fault heals, a write must commit within this


def save_ledger(path: str, ledger: CommittedLedger) -> None:
    with open(path, "wb") as f:
        f.write(orjson.dumps({"views": ledger.views, "records": ledger.records}))


def load_ledger(path: str) -> CommittedLedger:
    with open(path, "rb") as f:
        data = orjson.loads(f.read())
    return CommittedLedger(list(data["views"]), [(int(s), int(k), v) for s, k, v in data["records"]])


def summarise(result: CheckResult, extra: dict[str, Any]) -> dict[str, Any]:
    return {"valid": result.valid, "ops": result.ops, "anomalies": [a.to_json() for a in result.anomalies],
            "lost_committed_writes": result.lost_committed_writes, "counts": result.counts, **extra}


def print_summary(summary: dict[str, Any]) -> None:
    print(f"{'VALID' if summary['valid'] else 'INVALID'}: {summary['ops']} operations checked"
          + (f", {sum(summary.get('faults', {}).values())} faults" if "faults" in summary else ""))
    for name, count in sorted(summary.get("counts", {}).items()):
        print(f"  {name}: {count}")
    for a in summary["anomalies"][:50]:
        print(f"  ANOMALY {a['kind']} (ops {a['ops']}): {a['detail']}")
    print(orjson.dumps(summary).decode())


def check_file(path: str) -> int:
    ledger_path = path + ".committed.json"
    try:
        events = list(read_history(path))
        ledger = load_ledger(ledger_path)
    except (OSError, HistoryError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        print(f"chaos.py: cannot check {path}: {e} (the committed ledger is read from {ledger_path})",
              file=sys.stderr)
        return 2
    began = time.perf_counter()
    result = check(events, ledger)
    print_summary(summarise(result, {"check_s": round(time.perf_counter() - began, 3), "history": path}))
    return 0 if result.valid else 1


def run(args: argparse.Namespace) -> int:
    from scripts.chaos_cluster import Cluster
    from scripts.chaos_history import Recorder
    from scripts.chaos_ledger import NodeLedger, read_committed
    from scripts.chaos_load import Load
    from scripts.chaos_nemesis import Nemesis
    from scripts.chaos_report import render

    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    workspace = args.workspace or tempfile.mkdtemp(prefix="chaos-")
    os.makedirs(workspace, exist_ok=True)
    history_path = args.history_out or os.path.join(workspace, "history.jsonl")
    report_path = args.report or os.path.join(workspace, "report.html")
    print(f"chaos: seed {seed}, {args.nodes} nodes, {args.clients} clients, {args.seconds:g} s of faults; "
          f"workspace {workspace} (kept)")
    cluster = Cluster(workspace, args.nodes)
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        raise
    recorder = Recorder()
    load = Load(cluster, recorder, args.clients, args.keys, seed)
    nemesis = Nemesis(cluster, seed, recorder.now, kinds=args.faults)
    extra_anomalies: list[Anomaly] = []
    liveness = None
    try:
        load.start()
        time.sleep(1.0)
        nemesis.run(args.seconds)
        healed = recorder.now()
        deadline = time.monotonic() + LIVENESS_BOUND_S
        while time.monotonic() < deadline:  # the resolver learns the fates meanwhile
            if load.last_commit_time is not None and load.last_commit_time > healed:
                liveness = round(load.last_commit_time - healed, 3)
                break
            time.sleep(0.1)
        if liveness is None:
            extra_anomalies.append(Anomaly("no-liveness", (), f"no write committed within {LIVENESS_BOUND_S:g} s "
                                                              "of the last fault healing"))
        time.sleep(1.0)
        load.stop_clients()
        load.finish(30.0)
        load.final_reads(args.clients)
    finally:
        load.stopping.set()
        nemesis.stopping.set()
        codes = cluster.stop()
    extra_anomalies += [Anomaly("restart-failed", (), failure) for failure in cluster.restart_failures]
    if any(codes):
        extra_anomalies.append(Anomaly("unclean-stop", (), f"node exit codes {codes}"))
    ledger, ledger_anomalies = read_committed(
        [NodeLedger(i, cluster.data_dir(i), cluster.last_commit[i]) for i in range(args.nodes)])
    began = time.perf_counter()
    result = check(recorder.events, ledger)
    check_s = time.perf_counter() - began
    result.anomalies[:0] = [*ledger_anomalies, *extra_anomalies]
    write_history(history_path, recorder.events)
    save_ledger(history_path + ".committed.json", ledger)
    faults = [w.to_json() for w in nemesis.windows]
    summary = summarise(result, {"faults": nemesis.counts(), "seed": seed, "liveness_s": liveness,
                                 "committed_seqno": ledger.last_seqno, "check_s": round(check_s, 3),
                                 "workspace": workspace, "history": history_path, "report": report_path})
    with open(report_path, "w") as f:
        f.write(render(recorder.events, result, faults, summary))
    print_summary(summary)
    return 0 if result.valid else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chaos runs with a recorded history and a checker (see the "
                                                 "module docstring).")
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the nemesis injects faults")
    parser.add_argument("--seed", type=int, help="the nemesis's and the clients' seed (default: random, printed)")
    parser.add_argument("--nodes", type=int, choices=(3, 5), default=3)
    parser.add_argument("--clients", type=int, default=6, help="client processes (spread over the nodes)")
    parser.add_argument("--keys", type=int, default=8, help="records the clients write and read")
    parser.add_argument("--faults", type=lambda s: tuple(k.strip() for k in s.split(",") if k.strip()),
                        default=KINDS, help=f"the fault kinds to draw from, comma-separated (default: all: "
                                            f"{','.join(KINDS)})")
    parser.add_argument("--history-out", help="where the history goes (default: the workspace's history.jsonl)")
    parser.add_argument("--report", help="where the HTML report goes (default: the workspace's report.html)")
    parser.add_argument("--workspace", help="the nodes' directory (default: a new temporary one, kept)")
    parser.add_argument("--check", metavar="FILE", help="only check this recorded history")
    args = parser.parse_args(argv)
    if args.check:
        return check_file(args.check)
    if args.seconds <= 0 or args.clients < 1 or args.keys < 1:
        parser.error("--seconds, --clients and --keys must be positive")
    if unknown := set(args.faults) - set(KINDS):
        parser.error(f"unknown fault kinds {', '.join(sorted(unknown))} (the kinds: {', '.join(KINDS)})")
    if not args.faults:
        parser.error("--faults names no fault kind")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
