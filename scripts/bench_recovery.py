#!/usr/bin/env python3
"""Disaster recovery speed (issue 10); prints one JSON object per case.

For each ledger size (`--transactions`, default 100000) it writes, in process, the ledger of an opened service
(member0 a recovery member, the logging app's 1 KiB private and 64-byte public records, a signature every 5000
transactions, a snapshot at the end when asked), then recovers it with a real node process and member0's steps
automated, as an operator would: the node is started with a `recover` section, member0 proposes and votes the
opening with the previous identity, fetches, decrypts and submits its share, and the clock stops when
`/node/ready/app` answers 204. Reported per case:
- `public_s`: node start to listening (the public replay, verified, and the new service's first transaction);
  `public_tx_per_s` the replayed transactions per second, without a snapshot;
- `members_s`: the proposal, the ballot and the share;
- `private_s`: share submitted to `/app` open (the secrets unwrapped and the private replay);
  `private_tx_per_s` as above, without a snapshot;
- `total_s`: node start to Open.
`audit_tx_per_s` is `scripts/audit.py ledger` on the same ledger (the offline verification rate, start-up
included), for comparison with the public replay; `audit_private_tx_per_s` the same audit given the ledger secrets
(`--sealed-dir` of the recovered node, which holds them once recovered), which also checks every entry's GCM tag,
private maps and commit evidence, as the private replay does.

Usage: `.venv/bin/python scripts/bench_recovery.py [--transactions 100000 1000000] [--snapshot both|yes|no]`
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from governance.constitution import default_constitution  # noqa: E402
from governance.member_client import MemberSigner, transition_service_to_open  # noqa: E402
from governance.recovery_shares import deal_shares  # noqa: E402
from ledger.bootstrap import start_new_service  # noqa: E402
from ledger.endorsements import write_opening_endorsement  # noqa: E402
from ledger.genesis import GenesisMember  # noqa: E402
from ledger.identity import cert_id, load_cert  # noqa: E402
from ledger.secrets import opening_secret_record  # noqa: E402
from ledger.tables import (  # noqa: E402
    HISTORICAL_SECRETS,
    MEMBERS_INFO,
    SERVICE_INFO,
    SINGLETON_KEY,
    USERS_CERTS,
    USERS_INFO,
    dump_json,
)
from network.client.connection import ServiceClient  # noqa: E402
from network.client.member_api import MemberApi  # noqa: E402
from scripts.sandbox import make_identities, start_node  # noqa: E402


def write_lost_service(workspace: str, n: int, snapshot: bool) -> str:
    """The ledger (and snapshot) of an opened one-node service with `n` application transactions."""
    common = os.path.join(workspace, "sandbox_common")
    make_identities(common)
    path = lambda name: os.path.join(common, name)  # noqa: E731
    with open(path("member0_cert.pem")) as c, open(path("member0_enc_pubk.pem")) as e:
        member = GenesisMember(c.read(), None, e.read())
    node_dir = os.path.join(workspace, "lost_0")
    ledger = start_new_service(os.path.join(node_dir, "ledger"), [member], default_constitution("majority"),
                               snapshot_dir=os.path.join(node_dir, "snapshots"))
    with open(path("service_cert.pem"), "w") as f:
        f.write(ledger.service.pem)
    tx = ledger.begin()  # what the members' acknowledgement and the opening proposal (with set_user) write
    tx.put_json(MEMBERS_INFO, member.member_id, {"status": "Active"})
    with open(path("user0_cert.pem"), "rb") as f:
        user_pem = f.read()
    user_id = cert_id(load_cert(user_pem))
    tx.put(USERS_CERTS, user_id, user_pem)
    tx.put_json(USERS_INFO, user_id, {})
    info = dict(tx.get_json(SERVICE_INFO, SINGLETON_KEY))
    info["status"] = "Open"
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, info)
    tx.put(HISTORICAL_SECRETS, SINGLETON_KEY, dump_json(opening_secret_record(ledger.secrets.latest)))
    write_opening_endorsement(tx, ledger.service, str(info["current_service_create_txid"]), int(time.time()))
    deal_shares(tx, ledger.secrets.latest.raw)
    ledger.commit(tx)
    padding, public = "." * 1024, b"p" * 64
    for i in range(n):
        tx = ledger.begin()
        key = i.to_bytes(8, "little")  # the logging app's maps and keys: its endpoints read these records
        tx.put("public:records", key, public)
        tx.put("records", key, f"private record {i} {padding}"[:1024].encode())
        ledger.commit(tx)
        if (i + 1) % 5000 == 0:
            sig = ledger.emit_signature()
            ledger.flush()
            ledger.commit_to(sig.seqno)
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    if snapshot:
        ledger.snapshot()
        ledger.request_chunk()
        sig = ledger.emit_signature()
        ledger.flush()
        ledger.commit_to(sig.seqno)
    assert ledger.files is not None
    ledger.files.close()
    return node_dir


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def recover(workspace: str, lost: str, snapshot: bool) -> dict[str, float]:
    common = os.path.join(workspace, "sandbox_common")
    path = lambda name: os.path.join(common, name)  # noqa: E731
    node_dir = os.path.join(workspace, "recovered_0")
    os.makedirs(node_dir)
    port = free_port()
    config = {"data_dir": ".", "rpc_address": f"127.0.0.1:{port}", "node_to_node_address": f"127.0.0.1:{free_port()}",
              "service_certificate_file": "../sandbox_common/new_service_cert.pem",
              "recover": {"previous_service_identity_file": "../sandbox_common/service_cert.pem",
                          "previous_ledger_dirs": [os.path.join(lost, "ledger")],
                          "previous_snapshot_dirs": [os.path.join(lost, "snapshots")],
                          "start_from_snapshot": snapshot},
              "log": {"level": "WARNING"}}
    config_path = os.path.join(node_dir, "config.json")
    with open(config_path, "wb") as f:
        f.write(orjson.dumps(config))
    started = time.perf_counter()
    process = start_node(config_path, timeout=3600)[0]
    try:
        listening = time.perf_counter()
        url = f"https://127.0.0.1:{port}"
        client = ServiceClient(url, path("new_service_cert.pem"), timeout=600)
        with open(path("member0_privk.pem"), "rb") as k, open(path("member0_cert.pem"), "rb") as c:
            member = MemberApi(client, MemberSigner.from_pem(k.read(), c.read()))
        with open(path("new_service_cert.pem")) as f1, open(path("service_cert.pem")) as f2:
            proposal = member.propose([transition_service_to_open(f1.read(), f2.read())])
        if proposal["proposalState"] == "Open":
            member.vote(proposal["proposalId"])
        with open(path("member0_enc_privk.pem"), "rb") as f:
            enc = serialization.load_pem_private_key(f.read(), None)
        assert isinstance(enc, rsa.RSAPrivateKey)
        member.submit_recovery_share(enc)
        shared = time.perf_counter()
        while client.call("GET", "/node/ready/app").status != 204:
            time.sleep(0.02)
        opened = time.perf_counter()
    finally:
        process.terminate()
        process.wait()
    return {"public_s": listening - started, "members_s": shared - listening, "private_s": opened - shared,
            "total_s": opened - started}


def audit_rate(lost: str, common: str, n: int, sealed_dir: str | None = None) -> float:
    start = time.perf_counter()
    secrets = ["--sealed-dir", sealed_dir] if sealed_dir else []
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "audit.py"), "ledger",
                           os.path.join(lost, "ledger"), "--service-cert", os.path.join(common, "service_cert.pem"),
                           "--uncommitted", "--json", *secrets], capture_output=True, text=True, cwd=ROOT,
                          # this checkout's code, as the node runs
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get(
                              "PYTHONPATH")]))})
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"audit.py failed: {proc.stderr[-500:]}")
    return n / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, nargs="+", default=[100_000])
    parser.add_argument("--snapshot", choices=["both", "yes", "no"], default="both")
    parser.add_argument("--keep", help="keep the workspaces under this directory")
    args = parser.parse_args(argv)
    cases = {"both": [False, True], "yes": [True], "no": [False]}[args.snapshot]
    for n in args.transactions:
        for snapshot in cases:
            workspace = tempfile.mkdtemp(prefix=f"bench-recovery-{n}-", dir=args.keep)
            try:
                t0 = time.perf_counter()
                lost = write_lost_service(workspace, n, snapshot)
                written = time.perf_counter() - t0
                # A lost service's ledger is not freshly written: let the kernel write back the gigabytes just
                # written before the clock starts, or the recovery would share the machine with that writeback
                # (and the audit, run after it, would not).
                os.sync()
                result: dict[str, object] = {"transactions": n, "snapshot": snapshot,
                                             "ledger_written_s": round(written, 1)}
                timings = recover(workspace, lost, snapshot)
                result.update({k: round(v, 2) for k, v in timings.items()})
                if not snapshot:  # with a snapshot, almost nothing is replayed: the times say it all
                    result["public_tx_per_s"] = round(n / timings["public_s"])
                    result["private_tx_per_s"] = round(n / timings["private_s"])
                    common = os.path.join(workspace, "sandbox_common")
                    result["audit_tx_per_s"] = round(audit_rate(lost, common, n))
                    result["audit_private_tx_per_s"] = round(
                        audit_rate(lost, common, n, os.path.join(workspace, "recovered_0")))
                print(json.dumps(result), flush=True)
            finally:
                if args.keep is None:
                    shutil.rmtree(workspace, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
