"""The equal-load comparison of `bench.py --vs-etcd`: the same configurations run on a 3-member etcd cluster, and
each of our rows joined with etcd's, with the ratios and a warning where a load generator was saturated.

Equal load means, for each configuration: the same number of connections, spread over the members as ours are
spread over the nodes; the same requests in flight on each (`--window`, one by default); the same payload size;
the same machine, in the same run. Our commit latency is observed by polling `/app/commit`, etcd's by the put's
answer (etcd answers a put once it is committed). `plot` draws both systems' latency against throughput.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import bench_etcd

SATURATED_CPU_PCT = 90  # a load generator this busy measures itself, not the system under load


def _log(message: str) -> None:
    print(message, flush=True, file=sys.stderr)


def with_etcd(rows: list[dict[str, Any]], workspace: str, window: int, msg_size: int, seconds: float,
              warmup: float) -> list[dict[str, Any]]:
    """Our rows (one per connection count), each joined with etcd's figures for the same configuration."""
    _log("starting a 3-member etcd cluster for the comparison")
    processes, ports = bench_etcd.start_cluster(workspace)
    try:
        joined = []
        for row in rows:
            cpu, began = time.process_time(), time.perf_counter()
            etcd = bench_etcd.run_load(ports, row["connections"], window, msg_size, seconds, warmup)
            etcd["etcd_client_cpu_pct"] = round(100 * (time.process_time() - cpu) / (time.perf_counter() - began))
            joined.append(combine(row, etcd))
            _log(f"etcd, {row['connections']} connections: {etcd['etcd_committed_tx_per_s']} committed/s, "
                 f"p99 {etcd['etcd_p99_ms']} ms")
    finally:
        bench_etcd.stop_cluster(processes)
    return joined


def combine(ours: dict[str, Any], etcd: dict[str, Any]) -> dict[str, Any]:
    """One configuration's row: both sides' figures, the ratios, and warnings about saturated clients."""
    row = {**ours, **etcd}
    row["ratio_vs_etcd"] = round(ours["committed_tx_per_s"] / etcd["etcd_committed_tx_per_s"], 2) \
        if etcd["etcd_committed_tx_per_s"] else None
    row["p99_ratio_vs_etcd"] = round(ours["p99_ms"] / etcd["etcd_p99_ms"], 2) \
        if ours.get("p99_ms") is not None and etcd["etcd_p99_ms"] else None
    warnings = []
    for side, key in (("ours", "client_cpu_pct"), ("etcd", "etcd_client_cpu_pct")):
        if row.get(key, 0) >= SATURATED_CPU_PCT:
            warnings.append(f"the load generator for {side} used {row[key]}% of a core: saturated, its figures "
                            "measure the client, not the system")
    row["warnings"] = warnings
    return row


def plot(rows: list[dict[str, Any]], path: str) -> None:
    """p50 and p99 commit latency against committed writes/s, both systems, one point per connection count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for label, rate, p50, p99, color in (("this service", "committed_tx_per_s", "p50_ms", "p99_ms", "tab:blue"),
                                          ("etcd 3.4", "etcd_committed_tx_per_s", "etcd_p50_ms", "etcd_p99_ms",
                                           "tab:orange")):
        xs = [r[rate] for r in rows]
        ax.plot(xs, [r[p99] for r in rows], marker="o", color=color, label=f"{label}, p99")
        ax.plot(xs, [r[p50] for r in rows], marker="s", linestyle="--", color=color, label=f"{label}, p50")
        for r in rows:
            ax.annotate(str(r["connections"]), (r[rate], r[p99]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8, color=color)
    ax.set_xlabel("committed writes/s")
    ax.set_ylabel("commit latency (ms)")
    ax.set_yscale("log")
    nodes = rows[0].get("nodes", "?")
    ax.set_title(f"Equal load: {nodes} nodes vs a 3-member etcd cluster, {rows[0]['window']} request(s) in flight "
                 "per connection\n(numbers: connections)", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
