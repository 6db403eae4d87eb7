#!/usr/bin/env python3
"""The auditor's command line: verify ledgers and receipts offline, compare nodes' ledgers, draw a report.

  audit.py ledger DIR... [--service-cert PEM [--prefix]] [--secrets FILE | --sealed-dir DIR] [--uncommitted]
                         [--json]
  audit.py receipt FILE --service-cert PEM [--claims-digest HEX | --claims-of-msg TEXT] [--json]
  audit.py compare DIR DIR... [--uncommitted] [--json]
  audit.py report DIR (--out report.html | --json) [--service-cert PEM [--prefix]] [--secrets FILE | --sealed-dir DIR]
  audit.py secrets DATA_DIR --out FILE      (a node's sealed ledger secrets, in the --secrets format)
  audit.py models DIR [--uncommitted] [--json]   (confidential inference: approvals, inferences served)

--service-cert is the NEWEST service certificate: a ledger that spans disaster recoveries is verified back
through the previous identities its recoveries name. --prefix accepts an older one and audits only the part
of the ledger up to that identity's end.

Exit status: 0 only when everything given verifies (or, for `compare`, is identical); 1 otherwise, with one
`error: ...` line per failure on stderr naming the file, offset and seqno where known; 2 for a malformed
command line. The logic lives in `ledger/audit*.py`; this file parses arguments and prints. See docs/audit.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

import orjson
from cryptography import x509

from ledger.audit import AlteredEntry, AuditReport, audit_ledger
from ledger.audit_maps import public_map_writes
from ledger.audit_secrets import dump_secrets, load_secrets
from ledger.errors import LedgerError, LocatedError, ReceiptError
from ledger.identity import load_cert
from ledger.secrets import LedgerSecrets


class Failure(Exception):
    """A one-line reason to exit 1."""


class ProgressBar:
    """`[#####.....]  45%  12.3/27.0 MB  seqno 45000` redrawn in place on stderr, at most 10 times a second."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self.label = label
        self.stream = stream
        self.drawn = False
        self.last = 0.0

    def __call__(self, done: int, total: int, seqno: int) -> None:
        now = time.monotonic()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        fraction = done / total if total else 1.0
        bar = "#" * int(30 * fraction) + "." * (30 - int(30 * fraction))
        self.stream.write(f"\r{self.label} [{bar}] {100 * fraction:3.0f}%  {done / 1e6:.1f}/{total / 1e6:.1f} MB  "
                          f"seqno {seqno}\x1b[K")  # clear what a longer previous line left
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def _read(path: str, what: str) -> bytes:
    try:
        if path == "-":
            return sys.stdin.buffer.read()
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Failure(f"cannot read {what} {path}: {e.strerror or e}") from None


def _service_cert(path: str | None) -> x509.Certificate | None:
    if path is None:
        return None
    try:
        return load_cert(_read(path, "service certificate"))
    except ValueError as e:
        raise Failure(f"{path} is not a PEM certificate: {e}") from None


def _secrets(args: argparse.Namespace) -> LedgerSecrets | None:
    if args.secrets:
        try:
            return load_secrets(_read(args.secrets, "ledger secrets file"))
        except LedgerError as e:
            raise Failure(f"{args.secrets}: {e}") from None
    if args.sealed_dir:
        return _unseal(args.sealed_dir)
    return None


def _unseal(directory: str) -> LedgerSecrets:
    from network.enclave.sealing import (  # the node's virtual sealing; ledger/ must not import it
        SealingError,
        unseal_data_dir,
    )

    try:
        return unseal_data_dir(directory).secrets
    except SealingError as e:
        raise Failure(str(e)) from None


def _error_json(e: LocatedError) -> dict[str, Any]:
    out: dict[str, Any] = {"message": str(e), "reason": e.reason, "file": e.file, "offset": e.offset,
                           "seqno": e.seqno, "altered": None}
    if isinstance(e, AlteredEntry):
        out["altered"] = {"file": e.altered_file, "offset": e.altered_offset, "seqno": e.altered_seqno}
    return out


def _progress(args: argparse.Namespace, label: str) -> ProgressBar | None:
    return ProgressBar(label, sys.stderr) if args.progress or sys.stderr.isatty() else None


def _audit_one(paths: list[str], args: argparse.Namespace, cert: x509.Certificate | None,
               secrets: LedgerSecrets | None) -> tuple[AuditReport | None, LocatedError | None, float]:
    bar = _progress(args, os.path.basename(os.path.normpath(paths[0])) or paths[0])
    start = time.perf_counter()
    try:
        report = audit_ledger(paths, committed_only=not args.uncommitted, service_cert=cert, secrets=secrets,
                              workers=args.workers, progress=bar, prefix=args.prefix)
        return report, None, time.perf_counter() - start
    except LocatedError as e:
        return None, e, time.perf_counter() - start
    finally:
        if bar is not None:
            bar.finish()


def cmd_ledger(args: argparse.Namespace) -> int:
    cert = _service_cert(args.service_cert)
    secrets = _secrets(args)
    groups = [args.paths] if args.as_one else [[p] for p in args.paths]
    results: list[dict[str, Any]] = []
    errors: list[str] = []
    for paths in groups:
        name = ", ".join(paths)
        report, error, seconds = _audit_one(paths, args, cert, secrets)
        if report is not None:
            results.append({"path": name, "ok": True, **report.to_json(), "seconds": round(seconds, 3)})
            if not args.json:
                rate = report.bytes / 1e6 / seconds if seconds > 0 else 0.0
                print(f"{name}: verified")
                for line in [*report.describe(), f"{seconds:.2f} s ({rate:.1f} MB/s)"]:
                    print(f"  {line}")
        else:
            assert error is not None
            results.append({"path": name, "ok": False, "error": _error_json(error)})
            errors.append(f"{name}: {error}")
            if not args.json:
                print(f"{name}: FAILED (see the error below)")
    if args.json:
        print(orjson.dumps({"ok": not errors, "ledgers": results}).decode())
    for line in errors:
        print(f"error: {line}", file=sys.stderr)
    return 1 if errors else 0


def cmd_receipt(args: argparse.Namespace) -> int:
    from ledger.audit_receipt import check_receipt, claims_digest_of_msg

    cert = _service_cert(args.service_cert)
    assert cert is not None
    expected = None
    if args.claims_digest is not None:
        try:
            expected = bytes.fromhex(args.claims_digest)
        except ValueError:
            expected = b""
        if len(expected) != 32:
            raise Failure("--claims-digest must be 64 hex digits (a SHA-256 digest)")
    elif args.claims_of_msg is not None:
        expected = claims_digest_of_msg(args.claims_of_msg)
    data = _read(args.file, "receipt")
    try:
        check = check_receipt(data, cert, expected_claims_digest=expected)
    except ReceiptError as e:
        if args.json:
            print(orjson.dumps({"ok": False, "error": {"kind": type(e).__name__, "message": str(e)}}).decode())
        raise Failure(f"{args.file}: receipt does not verify: {e} ({type(e).__name__})") from None
    print(orjson.dumps(check.to_json()).decode() if args.json else check.describe())
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from ledger.audit_compare import compare_ledgers

    try:
        result = compare_ledgers(args.dirs, committed_only=not args.uncommitted)
    except LocatedError as e:
        raise Failure(str(e)) from None
    if args.json:
        print(orjson.dumps(result.to_json()).decode())
    if result.difference is not None:
        raise Failure(result.difference.describe())
    if not args.json:
        kind = "entries" if args.uncommitted else "committed entries"
        print(f"identical: the {len(args.dirs)} ledgers hold byte-identical {kind} for seqnos "
              f"{result.first_seqno}..{result.last_seqno} (last {'' if args.uncommitted else 'committed '}seqnos: "
              f"{', '.join(map(str, result.committed_ends))})")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from ledger.audit_report import Outcome, render_report, report_json
    from ledger.audit_timeline import collect_timeline

    cert = _service_cert(args.service_cert)
    secrets = _secrets(args)
    try:
        timeline = collect_timeline([args.dir], committed_only=not args.uncommitted, workers=args.workers)
    except LocatedError as e:
        raise Failure(f"{args.dir}: {e}") from None
    report, error, _ = _audit_one([args.dir], args, cert, secrets)
    outcome = Outcome(report, error)
    if args.out is not None:
        page = render_report(timeline, outcome, title=args.dir)
        try:
            with open(args.out, "w", encoding="utf-8") as f:
                f.write(page)
        except OSError as e:
            raise Failure(f"cannot write {args.out}: {e.strerror or e}") from None
    if args.json:
        print(orjson.dumps(report_json(timeline, outcome, title=args.dir)).decode())
    written = f"report written to {args.out}" if args.out is not None else "report printed"
    if error is not None:
        raise Failure(f"{args.dir}: {error} ({written})")
    if not args.json:
        recoveries = len(timeline.recoveries)
        print(f"{args.dir}: verified; {written} ({len(timeline.chunks)} chunks, "
              f"{timeline.count('signature')} signatures, "
              f"{sum(1 for e in timeline.events if e.kind not in ('chunk', 'signature'))} governance events"
              + (f", {recoveries} recover{'ies' if recoveries != 1 else 'y'}" if recoveries else "") + ")")
    return 0


def cmd_secrets(args: argparse.Namespace) -> int:
    secrets = _unseal(args.data_dir)
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(dump_secrets(secrets))
    except OSError as e:
        raise Failure(f"cannot write {args.out}: {e.strerror or e}") from None
    print(f"{len(secrets)} ledger secret{'s' if len(secrets) != 1 else ''} written to {args.out} (keep it secret)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """Confidential inference (app.inference): approvals and revocations, and inferences served per digest."""
    from app.inference import APPROVED as MODELS_APPROVED  # the app's maps (imported here: the other commands
    from app.inference import SERVED as INFERENCES_SERVED  # start without the node's modules)

    approvals: list[dict[str, Any]] = []
    served: dict[str, int] = {}
    last_served_at: dict[str, str] = {}
    maps = frozenset({MODELS_APPROVED, INFERENCES_SERVED})
    for write in public_map_writes(args.dirs, maps, committed_only=not args.uncommitted, workers=args.workers):
        if write.map == MODELS_APPROVED:
            digest = orjson.loads(write.value).get("digest") if write.value is not None else None
            approvals.append({"txid": write.txid, "model": write.key.decode(errors="replace"),
                              "event": "approved" if digest else "revoked", "digest": digest})
        else:
            digest = write.key.decode(errors="replace")
            served[digest] = int(orjson.loads(write.value)) if write.value is not None else 0
            last_served_at[digest] = write.txid
    if args.json:
        print(orjson.dumps({"approvals": approvals, "served": [
            {"digest": d, "inferences": n, "last_txid": last_served_at[d]} for d, n in sorted(served.items())]
        }).decode())
        return 0
    for a in approvals:
        print(f"{a['txid']:>12}  {a['event']:8}  {a['model']}" + (f"  {a['digest']}" if a["digest"] else ""))
    if not approvals:
        print("no model was ever approved in this ledger")
    for digest, count in sorted(served.items()):
        print(f"{digest}  served {count} inference{'s' if count != 1 else ''} (the last at {last_served_at[digest]})")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    sub = parser.add_subparsers(dest="command", required=True)

    def secrets_options(p: argparse.ArgumentParser) -> None:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--secrets", metavar="FILE",
                           help='ledger secrets, JSON [{"start": seqno, "secret": base64}]: check private domains')
        group.add_argument("--sealed-dir", metavar="DIR",
                           help="take the ledger secrets from a node's data directory (virtual sealing)")

    def run_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--service-cert", metavar="PEM",
                       help="the trusted service certificate: the newest, when the ledger spans recoveries")
        p.add_argument("--prefix", action="store_true",
                       help="--service-cert may be an older service certificate: audit only the ledger up to the "
                            "end of its identity (the next recovery)")
        secrets_options(p)
        p.add_argument("--uncommitted", action="store_true", help="also verify uncommitted chunks")
        p.add_argument("--progress", action="store_true", help="draw a progress bar on stderr (default: on a TTY)")
        p.add_argument("--workers", type=int, default=None, help="processes scanning chunks (default: cores)")

    p = sub.add_parser("ledger", help="verify ledger directories (one per node)")
    p.add_argument("paths", nargs="+", metavar="DIR", help="a node's ledger directory (or chunk files)")
    run_options(p)
    p.add_argument("--as-one", action="store_true", help="the paths are parts of one ledger (as read_ledger.py)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a summary")
    p.set_defaults(run=cmd_ledger)

    p = sub.add_parser("receipt", help="verify a JSON or COSE receipt")
    p.add_argument("file", help="the receipt (JSON or COSE; - for stdin)")
    p.add_argument("--service-cert", metavar="PEM", required=True, help="the trusted service certificate")
    claims = p.add_mutually_exclusive_group()
    claims.add_argument("--claims-digest", metavar="HEX", help="the claims digest the receipt must bind")
    claims.add_argument("--claims-of-msg", metavar="TEXT", help="bind SHA-256(TEXT), the logging app's claim")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_receipt)

    p = sub.add_parser("compare", help="check that nodes' committed ledgers are byte-identical")
    p.add_argument("dirs", nargs="+", metavar="DIR")
    p.add_argument("--uncommitted", action="store_true",
                   help="also compare the uncommitted chunks (a running network's newest entries)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_compare)

    p = sub.add_parser("report", help="write a self-contained HTML timeline of a ledger (or print it as JSON)")
    p.add_argument("dir", metavar="DIR")
    p.add_argument("--out", metavar="HTML", help="write the page there")
    p.add_argument("--json", action="store_true", help="print the report as one JSON object on stdout")
    run_options(p)
    p.set_defaults(run=cmd_report)

    p = sub.add_parser("models", help="confidential inference: models approved and revoked, inferences served")
    p.add_argument("dirs", nargs="+", metavar="DIR", help="a node's ledger directory")
    p.add_argument("--uncommitted", action="store_true", help="also read uncommitted chunks")
    p.add_argument("--workers", type=int, default=None, help="processes scanning chunks (default: cores)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=cmd_models)

    p = sub.add_parser("secrets", help="write a node's sealed ledger secrets in the --secrets format")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--out", required=True, metavar="FILE")
    p.set_defaults(run=cmd_secrets)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "prefix", False) and args.service_cert is None:
        parser.error("--prefix audits the part of the ledger that an older service certificate vouches for: "
                     "give it with --service-cert")
    if args.command == "report" and args.out is None and not args.json:
        parser.error("report: give --out HTML (the page), --json (the report on stdout), or both")
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except Failure as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except LedgerError as e:  # anything the ledger core raised that a command did not present itself
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
