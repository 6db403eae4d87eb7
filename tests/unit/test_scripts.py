"""The command-line tools: the auditor's verify_ledger.py and the benchmark script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from ledger.service_ledger import ServiceLedger
from tests.ledger_helpers import sign_and_commit

pytestmark = pytest.mark.unit

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *args], capture_output=True, text=True,
                          timeout=300)


def finished_ledger(new_service: Callable[..., ServiceLedger]) -> ServiceLedger:
    ledger = new_service(chunk_size=2000)
    for i in range(20):
        tx = ledger.begin()
        tx.put("public:log", b"%d" % i, b"x" * 200)
        ledger.commit(tx)
    sign_and_commit(ledger)
    return ledger


def test_verify_ledger_prints_a_json_report_and_exits_0(new_service: Callable[..., ServiceLedger],
                                                        tmp_path: os.PathLike[str]) -> None:
    ledger = finished_ledger(new_service)
    cert = os.path.join(tmp_path, "service_cert.pem")
    with open(cert, "w") as f:
        f.write(ledger.service.pem)
    proc = run_script("verify_ledger.py", ledger.files.directory, "--service-cert", cert)  # type: ignore[union-attr]
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["last_seqno"] == ledger.last_seqno
    assert report["signatures"] == len(ledger.signature_seqnos())
    assert report["last_verified_txid"] == str(ledger.txid(ledger.last_seqno))


def test_verify_ledger_reports_damage_in_one_line_and_exits_1(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = finished_ledger(new_service)
    directory = ledger.files.directory  # type: ignore[union-attr]
    chunk = sorted(f for f in os.listdir(directory) if f.endswith(".committed"))[-1]
    with open(os.path.join(directory, chunk), "r+b") as f:
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = run_script("verify_ledger.py", directory)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and chunk in lines[0] and "seqno" in lines[0]


def test_verify_ledger_refuses_a_missing_directory_and_a_foreign_service_cert(
    new_service: Callable[..., ServiceLedger], tmp_path: os.PathLike[str]
) -> None:
    from ledger.identity import ServiceIdentity

    proc = run_script("verify_ledger.py", os.path.join(tmp_path, "nope"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    ledger = finished_ledger(new_service)
    foreign = os.path.join(tmp_path, "foreign.pem")
    with open(foreign, "w") as f:
        f.write(ServiceIdentity.create().pem)
    proc = run_script("verify_ledger.py", ledger.files.directory, "--service-cert", foreign)  # type: ignore[union-attr]
    assert proc.returncode == 1 and "not the trusted one" in proc.stderr


def test_bench_script_prints_the_agreed_keys() -> None:
    proc = run_script("bench_ledger.py", "--transactions", "3000", "--signature-interval", "500", "--repeat", "1",
                      "--verify-repeat", "1", "--receipt-seconds", "0.1", "--receipt-rounds", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout)
    assert figures["commit_path_tx_per_s"] > 0
    assert figures["verify_speedup_vs_read_ledger"] > 0
    for key in ("audit_ledger_mb_per_s", "audit_speedup_vs_read_ledger", "receipts_verified_per_s",
                "p384_verifies_per_s", "receipts_vs_p384"):
        assert figures[key] > 0, key
    ratio = figures["receipts_verified_per_s"] / figures["p384_verifies_per_s"]
    assert abs(figures["receipts_vs_p384"] - ratio) < 0.01
    # genesis and the first signature, 3000 writes, a signature every 500, the final signature
    assert figures["verified_transactions"] == 2 + 3000 + 3000 // 500 + 1
    assert figures["verified_signatures"] == 1 + 3000 // 500 + 1
