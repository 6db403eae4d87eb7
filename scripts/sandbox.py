#!/usr/bin/env python3
"""Run a one-node service in virtual mode for trying things out (what `make sandbox` runs).

- `workspace/sandbox_common/`: service_cert.pem, member0_{cert,privk,enc_pubk,enc_privk}.pem, user0_{cert,privk}.pem
- `workspace/sandbox_0/`: the node's configuration, data (ledger, snapshots, sealed secrets) and logs (out, err)

On a new workspace it starts a new service and, through real signed governance requests, activates member0,
adds user0 and opens the service. On an existing workspace it resumes the same service (the node unseals its
secrets). `--clean` starts afresh. It prints curl commands to try, then runs until Ctrl-C (or, with
`--exit-when-open`, returns once the service is open and leaves the node running, printing its pid).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.member_client import MemberSigner, set_user, transition_service_to_open
from ledger.files import parse_chunk_name
from ledger.identity import PartyIdentity, key_pem, load_cert
from network.client.connection import ServiceClient, ServiceError
from network.client.member_api import MemberApi

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _write(path: str, data: str | bytes, private: bool = False) -> None:
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(raw)


def make_identities(common: str) -> None:
    """member0 (with a recovery encryption key pair) and user0, unless they already exist."""
    os.makedirs(common, exist_ok=True)
    for name in ("member0", "user0"):
        if os.path.exists(os.path.join(common, f"{name}_cert.pem")):
            continue
        party = PartyIdentity.create(name)
        _write(os.path.join(common, f"{name}_privk.pem"), key_pem(party.key), private=True)
        _write(os.path.join(common, f"{name}_cert.pem"), party.pem)
    if not os.path.exists(os.path.join(common, "member0_enc_pubk.pem")):
        enc = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        _write(os.path.join(common, "member0_enc_privk.pem"), enc.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), private=True)
        _write(os.path.join(common, "member0_enc_pubk.pem"), enc.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))


def node_config(workspace: str, port: int, *, index: int = 0, join: str | None = None,
                recover: dict[str, object] | None = None, **extra: object) -> str:
    """`workspace/sandbox_<index>/config.json`: node 0 starts the service (or recovers one, with `recover`), the
    others join it at `join`."""
    node_dir = os.path.join(workspace, f"sandbox_{index}")
    os.makedirs(node_dir, exist_ok=True)
    command: dict[str, object] = {"join": {"target": join}} if join else {"recover": recover} if recover else {
        "start": {
            "members": [{"certificate_file": "../sandbox_common/member0_cert.pem",
                         "encryption_public_key_file": "../sandbox_common/member0_enc_pubk.pem"}],
            "constitution": "majority",
            "service_configuration": {"recovery_threshold": 1},
        }}
    config = {
        "data_dir": ".",
        "rpc_address": f"127.0.0.1:{port}",
        "node_to_node_address": f"127.0.0.1:{port + 1000}",
        "service_certificate_file": "../sandbox_common/service_cert.pem",
        **command,
        "app": "app.logging:app",
        "signatures": {"every_tx": 5000, "every_ms": 20},
        "snapshots": {"every_tx": 10000},
        **extra,
    }
    path = os.path.join(node_dir, "config.json")
    _write(path, orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


def start_node(config_path: str, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    node_dir = os.path.dirname(config_path)
    ready = os.path.join(node_dir, "node.json")
    if os.path.exists(ready):
        os.unlink(ready)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(os.path.join(node_dir, "out"), "ab") as out, open(os.path.join(node_dir, "err"), "ab") as err:
        process = subprocess.Popen([sys.executable, "-m", "network.node", "--config", config_path],
                                   stdout=out, stderr=err, env=env, cwd=ROOT)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if process.poll() is not None:
            with open(os.path.join(node_dir, "err"), "rb") as f:
                tail = f.read().decode(errors="replace").strip().splitlines()[-5:]
            raise RuntimeError("the node exited (code {}): {}".format(process.returncode, " | ".join(tail)))
        if time.monotonic() > deadline:
            process.terminate()
            process.wait()
            raise RuntimeError(f"the node did not start within {timeout:.0f} s; see {node_dir}/err")
        time.sleep(0.05)
    with open(ready, "rb") as f:
        return process, orjson.loads(f.read())


def _member0(url: str, common: str) -> MemberApi:
    """member0's signed governance calls to the sandbox at `url`."""
    client = ServiceClient(url, os.path.join(common, "service_cert.pem"))
    with open(os.path.join(common, "member0_privk.pem"), "rb") as k, \
            open(os.path.join(common, "member0_cert.pem"), "rb") as c:
        return MemberApi(client, MemberSigner.from_pem(k.read(), c.read()))


def open_service(url: str, common: str) -> None:
    """member0 acks, proposes user0 and the opening, and votes for it (majority of one)."""
    path = lambda name: os.path.join(common, name)  # noqa: E731
    member = _member0(url, common)
    client = member.client
    if member.service_info()["status"] == "Open":
        return
    member.activate()
    with open(path("user0_cert.pem"), "rb") as f:
        user_cert = load_cert(f.read())
    with open(path("service_cert.pem")) as f:
        service_pem = f.read()
    proposal = member.propose([set_user(user_cert), transition_service_to_open(service_pem)])
    if proposal["proposalState"] == "Open":
        proposal = member.vote(proposal["proposalId"])
    if proposal["proposalState"] != "Accepted":
        raise RuntimeError(f"the opening proposal ended {proposal['proposalState']}: {proposal}")
    client.close()


def instructions(url: str, common: str) -> str:
    rel = os.path.relpath(common)
    tls = f"--cacert {rel}/service_cert.pem"
    user = f"{tls} --cert {rel}/user0_cert.pem --key {rel}/user0_privk.pem"
    return f"""
The service is open at {url}  (service certificate: {rel}/service_cert.pem)

Write a private record as user0, and read it back:
  curl {url}/app/log/private {user} -H 'content-type: application/json' --data-binary '{{"id": 42, "msg": "hello"}}' -i
  curl '{url}/app/log/private?id=42' {user}
Is the write committed? (use the x-ms-ccf-transaction-id of the write, e.g. 2.10)
  curl '{url}/app/tx?transaction_id=2.10' {user}
  curl {url}/app/commit {user}
Its receipt (verify it offline against the service certificate):
  curl '{url}/app/receipt?transaction_id=2.10' {user}
A member proposal, signed by member0 (e.g. trigger a ledger rekey):
  echo '{{"actions": [{{"name": "trigger_ledger_rekey", "args": {{}}}}]}}' > /tmp/p.json
  ccf_cose_sign1 --ccf-gov-msg-type proposal --ccf-gov-msg-created_at "$(date -uIs)" \\
    --signing-key {rel}/member0_privk.pem --signing-cert {rel}/member0_cert.pem --content /tmp/p.json \\
  | curl '{url}/gov/members/proposals:create?api-version=2024-07-01' {tls} \\
    -H 'content-type: application/cose' --data-binary @-
  (or: python scripts/member.py --cert {rel}/member0_cert.pem --key {rel}/member0_privk.pem \\
        --url {url} --service-cert {rel}/service_cert.pem propose --trigger trigger_ledger_rekey)
"""


def _last_seqno(ledger_dir: str) -> int:
    ends = [parsed[1] or parsed[0] for name in os.listdir(ledger_dir) if (parsed := parse_chunk_name(name))] \
        if os.path.isdir(ledger_dir) else []
    return max(ends, default=0)


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a killed node whose parent has not reaped it yet is a zombie: not running)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


def prepare_recovery(workspace: str, nodes: int, port: int) -> list[str]:
    """Set the lost service aside and write the new nodes' configurations: node 0 recovers from the longest of the
    lost ledgers (only each lost node's ledger/ and snapshots/ are used), the others join it. Returns the configs."""
    common = os.path.join(workspace, "sandbox_common")
    lost = sorted(d for d in os.listdir(workspace) if d.startswith("sandbox_") and d[8:].isdigit())
    if not lost or not os.path.exists(os.path.join(common, "service_cert.pem")):
        raise RuntimeError(f"{workspace} holds no service to recover (run make sandbox first)")
    for d in lost:
        ready = os.path.join(workspace, d, "node.json")
        if os.path.exists(ready):
            with open(ready, "rb") as f:
                pid = int(orjson.loads(f.read()).get("pid", 0))
            if not _alive(pid):
                continue
            raise RuntimeError(f"{d}'s node (pid {pid}) is still running: stop the lost service's nodes first")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    moved = []
    for d in lost:
        target = os.path.join(workspace, f"lost-{stamp}", d)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(workspace, d), target)
        moved.append(target)
    best = max(moved, key=lambda d: _last_seqno(os.path.join(d, "ledger")))
    print(f"recovery: the lost service is kept in {os.path.dirname(best)}; recovering from {best}/ledger "
          f"(up to seqno {_last_seqno(os.path.join(best, 'ledger'))})", flush=True)
    shutil.copyfile(os.path.join(common, "service_cert.pem"), os.path.join(common, "previous_service_cert.pem"))
    recover = {"previous_service_identity_file": "../sandbox_common/previous_service_cert.pem",
               "previous_ledger_dirs": [os.path.join(best, "ledger")],
               "previous_snapshot_dirs": [os.path.join(best, "snapshots")]}
    first_url = f"https://127.0.0.1:{port}"
    return [node_config(workspace, port + i, index=i, join=first_url if i else None, recover=recover)
            for i in range(nodes)]


def complete_recovery(url: str, common: str) -> None:
    """member0's part, through the member tooling: open with the previous identity, then submit its share."""
    path = lambda name: os.path.join(common, name)  # noqa: E731
    member = _member0(url, common)
    client = member.client
    with open(path("service_cert.pem")) as f:
        new_pem = f.read()
    with open(path("previous_service_cert.pem")) as f:
        old_pem = f.read()
    print(f"recovery: service status {member.service_info()['status']}; member0 proposes "
          "transition_service_to_open with the previous identity", flush=True)
    proposal = member.propose([transition_service_to_open(new_pem, old_pem)])
    if proposal["proposalState"] == "Open":
        proposal = member.vote(proposal["proposalId"])
    print(f"recovery: proposal {proposal['proposalState']}; status {member.service_info()['status']}", flush=True)
    with open(path("member0_enc_privk.pem"), "rb") as f:
        enc = serialization.load_pem_private_key(f.read(), None)
    if not isinstance(enc, rsa.RSAPrivateKey):
        raise RuntimeError("member0_enc_privk.pem is not an RSA key")
    answer = member.submit_recovery_share(enc)
    print("recovery: member0's share: " + answer["message"].replace("\n", "; "), flush=True)
    deadline = time.monotonic() + 600
    while client.call("GET", "/node/ready/app").status != 204:
        if time.monotonic() > deadline:
            raise RuntimeError("the recovered service did not open within 600 s")
        time.sleep(0.1)
    print(f"recovery: service {member.service_info()['status']} again "
          f"(recovery count {member.service_info()['recoveryCount']})", flush=True)
    client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workspace", default=os.path.join(ROOT, "workspace"))
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--clean", action="store_true", help="remove the workspace and start a new service")
    parser.add_argument("--exit-when-open", action="store_true", help="leave the nodes running and return")
    parser.add_argument("--nodes", type=int, default=1, help="how many nodes (ports --port, --port + 1, ...)")
    parser.add_argument("--recover", action="store_true",
                        help="recover the stopped service of the workspace into new nodes (disaster recovery)")
    args = parser.parse_args(argv)
    if args.nodes < 1:
        print("error: --nodes must be at least 1", file=sys.stderr)
        return 1
    if args.clean and os.path.exists(args.workspace):
        shutil.rmtree(args.workspace)
    common = os.path.join(args.workspace, "sandbox_common")
    make_identities(common)
    first_url = f"https://127.0.0.1:{args.port}"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if args.recover:
            configs = prepare_recovery(args.workspace, args.nodes, args.port)
        else:
            # the others join while the service is still Opening: trusted at once, as CCF's sandbox does
            configs = [node_config(args.workspace, args.port + i, index=i, join=first_url if i else None)
                       for i in range(args.nodes)]
        for config in configs:
            process, ready = start_node(config)
            processes.append(process)
        if args.recover:
            complete_recovery(first_url, common)
        else:
            open_service(first_url, common)
    except (ServiceError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        for process in processes:
            process.terminate()
            process.wait()
        return 1
    print(instructions(first_url, common), flush=True)
    if args.nodes > 1:
        client = ServiceClient(first_url, os.path.join(common, "service_cert.pem"))
        network = client.json_ok("GET", "/node/network")
        print(f"{args.nodes} nodes on ports {args.port}..{args.port + args.nodes - 1}; primary: "
              f"{network['primary_id']}", flush=True)
        client.close()
    if args.exit_when_open:
        print("node pids " + " ".join(str(p.pid) for p in processes), flush=True)
        return 0
    print("Running until Ctrl-C.", flush=True)
    try:
        signal.signal(signal.SIGTERM, lambda *_: [p.terminate() for p in processes])
        for process in processes:
            process.wait()
    except KeyboardInterrupt:
        for process in processes:
            process.send_signal(signal.SIGINT)
            process.wait()
    codes = [p.returncode for p in processes]
    print(f"nodes stopped (exits {codes}); their ledgers are in {args.workspace}/sandbox_<i>/ledger")
    return 0 if all(c in (0, -signal.SIGTERM, -signal.SIGINT) for c in codes) else 1


if __name__ == "__main__":
    sys.exit(main())
