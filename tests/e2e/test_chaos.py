"""Seeded chaos runs on real nodes (`scripts/chaos.py`): the history of a short run under faults checks valid
against the nodes' ledgers, the recorded history checks again on its own, a history altered to hide a lost
commit is refused, and the HTML report renders in a headless browser. Longer runs (five nodes, more faults)
are `slow`; `make chaos` runs one for a few minutes."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_audit_on_sandbox import assert_real_screenshot, render

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
CHAOS = str(ROOT / "scripts" / "chaos.py")


def chaos(*args: str, timeout: float = 900) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    proc = subprocess.run([sys.executable, CHAOS, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    lines = proc.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads(lines[-1])


def run_and_check(workspace: Path, seconds: int, seed: int, nodes: int = 3) -> dict[str, Any]:
    print(f"\nchaos workspace: {workspace} (kept), seed {seed}")
    proc, summary = chaos("--seconds", str(seconds), "--seed", str(seed), "--nodes", str(nodes),
                          "--workspace", str(workspace))
    assert summary["valid"], "\n".join(f"{a['kind']} {a['ops']}: {a['detail']}" for a in summary["anomalies"][:20])
    assert proc.returncode == 0
    assert summary["seed"] == seed and summary["lost_committed_writes"] == 0
    assert sum(summary["faults"].values()) >= seconds // 10, summary["faults"]  # windows of 1-4 s, heals, gaps
    assert summary["ops"] > 50 * seconds and summary["counts"]["write-ok"] > 10 * seconds, summary["counts"]
    assert summary["liveness_s"] is not None and summary["committed_seqno"] > summary["counts"]["write-ok"]
    return summary


@pytest.mark.enclave_process_pass
def test_a_short_seeded_run_under_faults_keeps_every_promise(tmp_path_factory: pytest.TempPathFactory,
                                                             tmp_path: Path) -> None:
    workspace = tmp_path_factory.mktemp("chaos")
    summary = run_and_check(workspace, seconds=20, seed=11)
    history = summary["history"]

    # the recorded history checks on its own, with the same verdict
    proc, again = chaos("--check", history)
    assert proc.returncode == 0 and again["valid"] and again["ops"] == summary["ops"]

    # a history that claims a commit the ledger does not hold is refused, the operation named
    lines = Path(history).read_text().splitlines()
    for i, line in enumerate(lines):
        event = json.loads(line)
        if event["type"] == "ok" and event["f"] == "write":
            view, seqno = event["txid"].split(".")
            event["txid"] = f"{view}.{int(seqno) + 100000}"
            lines[i] = json.dumps(event)
            break
    altered = tmp_path / "altered.jsonl"
    altered.write_text("\n".join(lines) + "\n")
    os.link(history + ".committed.json", str(altered) + ".committed.json")
    proc, verdict = chaos("--check", str(altered))
    assert proc.returncode == 1 and not verdict["valid"]
    assert [a["kind"] for a in verdict["anomalies"]] == ["lost-commit"]
    assert verdict["anomalies"][0]["ops"] == [event["op"]]

    # a history that is not one is refused in one line
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op": 1}\n')
    proc = subprocess.run([sys.executable, CHAOS, "--check", str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "line 1" in proc.stderr and "Traceback" not in proc.stderr

    # the report, in a real browser: every fault window drawn, the verdict shown
    png, dom = render(Path(summary["report"]), tmp_path)
    assert_real_screenshot(png)
    assert 'data-ready="1"' in dom and 'data-valid="1"' in dom
    assert len(re.findall(r'<rect class="fault"', dom)) == sum(summary["faults"].values())
    answered = summary["counts"]["write-ok"] + summary["counts"]["read-ok"]
    assert len(re.findall(r'<rect class="op op-ok"', dom)) == answered


@pytest.mark.slow
@pytest.mark.parametrize(("nodes", "seed"), [(3, 101), (5, 202)])
def test_longer_seeded_runs_keep_every_promise(tmp_path_factory: pytest.TempPathFactory, nodes: int,
                                               seed: int) -> None:
    run_and_check(tmp_path_factory.mktemp(f"chaos-{nodes}"), seconds=90, seed=seed, nodes=nodes)
