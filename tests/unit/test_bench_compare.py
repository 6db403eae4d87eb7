"""`bench.py --vs-etcd`'s equal-load rows (scripts/bench_compare.py): both sides' figures joined per configuration,
the ratios computed from them, a saturated load generator named in the row, and the plot written as a PNG."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "scripts"))
import bench_compare  # noqa: E402

pytestmark = pytest.mark.unit


def ours(connections: int, rate: int, p50: float, p99: float, cpu: int) -> dict[str, object]:
    return {"nodes": 3, "connections": connections, "window": 1, "committed_tx_per_s": rate, "p50_ms": p50,
            "p99_ms": p99, "client_cpu_pct": cpu}


def etcd(rate: int, p50: float, p99: float, cpu: int) -> dict[str, object]:
    return {"etcd_committed_tx_per_s": rate, "etcd_p50_ms": p50, "etcd_p99_ms": p99, "etcd_client_cpu_pct": cpu}


def test_a_row_joins_both_sides_with_their_ratios() -> None:
    row = bench_compare.combine(ours(64, 3000, 20.0, 60.0, 40), etcd(2000, 10.0, 80.0, 30))
    assert row["connections"] == 64 and row["etcd_committed_tx_per_s"] == 2000
    assert row["ratio_vs_etcd"] == 1.5 and row["p99_ratio_vs_etcd"] == 0.75
    assert row["warnings"] == []


def test_a_saturated_load_generator_is_named_in_the_row() -> None:
    row = bench_compare.combine(ours(256, 3000, 20.0, 60.0, 97), etcd(2000, 10.0, 80.0, 95))
    assert len(row["warnings"]) == 2
    assert "ours used 97%" in row["warnings"][0] and "etcd used 95%" in row["warnings"][1]


def test_the_plot_is_a_png_of_both_systems(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib", reason="matplotlib is the bench extra (make installs it)")
    rows = [bench_compare.combine(ours(c, 500 * c, 5.0 + c, 10.0 + c, 20), etcd(700 * c, 2.0, 4.0 + c, 20))
            for c in (1, 16, 64)]
    path = tmp_path / "latency.png"
    bench_compare.plot(rows, str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000
