"""`scripts/bench.py` runs against a real one-node service and prints one JSON object of figures; `--app` chooses
the app the node serves, and `--app app.inference:app` runs the inference benchmark (issue 13) with the rest of
the arguments. Figures are not asserted against goals here (they are measured, not tested): only that each run
did real work, all of it successful, and that the node stopped cleanly."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def _bench(*args: str) -> dict[str, object]:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures: dict[str, object] = orjson.loads(proc.stdout.strip().splitlines()[-1])
    return figures


def test_bench_app_inference_compares_the_node_with_bare_onnxruntime() -> None:
    figures = _bench("--app", "app.inference:app", "--width", "64", "--batch", "4", "--requests", "40",
                     "--connections", "2")
    assert figures["requests"] == 40 and figures["connections"] == 2
    node_rate, bare_rate = float(figures["node_inferences_per_s"]), float(figures["bare_inferences_per_s"])
    assert node_rate > 0 and bare_rate > 0
    assert figures["ratio"] == round(node_rate / bare_rate, 3)
    assert 0 < float(figures["node_p50_ms"]) <= float(figures["node_p99_ms"])


def test_bench_serves_the_app_it_is_given_and_commits_its_writes() -> None:
    figures = _bench("--app", "app.logging:app", "--seconds", "1", "--warmup", "0.5", "--connections", "2",
                     "--window", "1")
    assert figures["errors"] == 0 and figures["node_exit_code"] == 0
    assert float(figures["committed_tx_per_s"]) > 0


def test_bench_sweeps_connection_counts_spread_over_the_nodes(tmp_path: object) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--nodes", "3", "--connections", "1,4",
                           "--window", "1", "--seconds", "1", "--warmup", "0.5"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [orjson.loads(line) for line in proc.stdout.strip().splitlines()]
    assert [(r["connections"], r["window"], r["spread_over_nodes"]) for r in rows] == [(1, 1, 1), (4, 1, 3)]
    for row in rows:
        assert row["errors"] == 0 and float(row["committed_tx_per_s"]) > 0 and "client_cpu_pct" in row


def test_bench_refuses_bad_connection_counts_in_one_line() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--connections", "4,x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--connections" in proc.stderr and "4,x" in proc.stderr
