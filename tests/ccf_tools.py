"""Run the `ccf` package's own tools (the judges) on what our code wrote."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from typing import Any

import ccf.receipt
from cryptography import x509

BIN = os.path.dirname(sys.executable)


def run_tool(tool: str, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `tool` (a script installed by the `ccf` package) with this interpreter."""
    return subprocess.run(
        [sys.executable, os.path.join(BIN, tool), *args], capture_output=True, text=True, timeout=timeout
    )


def read_ledger(path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_tool("read_ledger.py", path, *extra)


def assert_read_ledger_accepts(path: str, *extra: str, signatures: int | None = None) -> str:
    proc = read_ledger(path, "-q", *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "Ledger verification complete" in out, out[-3000:]
    if signatures is not None:
        assert f"Found {signatures} signatures" in out, out[-3000:]
    return out


def verify_secrets_chain(path: str) -> subprocess.CompletedProcess[str]:
    return run_tool("verify_ledger_secrets_chain.py", path)


def ccf_check_json_receipt(receipt: dict[str, Any], service_cert: x509.Certificate) -> None:
    """What a CCF user does with a JSON receipt, using only the ccf package."""
    if "leaf_components" in receipt:
        lc = receipt["leaf_components"]
        leaf = hashlib.sha256(
            bytes.fromhex(lc["write_set_digest"])
            + hashlib.sha256(lc["commit_evidence"].encode()).digest()
            + bytes.fromhex(lc["claims_digest"])
        ).hexdigest()
    else:
        leaf = receipt["leaf"]
    root = ccf.receipt.root(leaf, receipt["proof"])
    node_cert = x509.load_pem_x509_certificate(receipt["cert"].encode())
    ccf.receipt.verify(root, receipt["signature"], node_cert)
    endorsements = [x509.load_pem_x509_certificate(p.encode()) for p in receipt.get("service_endorsements", [])]
    ccf.receipt.check_endorsements(node_cert, service_cert, endorsements)
    ccf.receipt.check_cert_chain(node_cert, service_cert, endorsements)
