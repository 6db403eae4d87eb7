#!/usr/bin/env python3
"""Audit a ledger directory offline: `verify_ledger.py DIR [--service-cert PEM] [--uncommitted]`.

Prints one JSON line with what was verified and exits 0, or prints `error: ...` naming the file and
seqno of the first damage and exits 1. Kept for scripts that use it: `audit.py ledger --as-one --json` is
the same audit (the paths are parts of one ledger) with a fuller report, and `audit.py` has the rest of the
auditor's tools (docs/audit.md).
"""

from __future__ import annotations

import argparse
import sys

import orjson

from ledger.audit import audit_ledger
from ledger.errors import LedgerError
from ledger.identity import load_cert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="ledger directories or chunk files")
    parser.add_argument("--service-cert", help="trusted service certificate (PEM)")
    parser.add_argument("--uncommitted", action="store_true", help="also verify uncommitted chunks")
    args = parser.parse_args(argv)
    try:
        cert = None
        if args.service_cert:
            with open(args.service_cert, "rb") as f:
                cert = load_cert(f.read())
        report = audit_ledger(args.paths, committed_only=not args.uncommitted, service_cert=cert)
    except (LedgerError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    keys = ("chunks", "transactions", "signatures", "last_seqno", "last_verified_txid")
    print(orjson.dumps({k: getattr(report, k) for k in keys}).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
