#!/usr/bin/env python3
"""Run a service in virtual mode on this machine, for trying things out (what `make sandbox` runs).

- `WORKSPACE/sandbox_common/`: service_cert.pem, member0_{cert,privk,enc_pubk,enc_privk}.pem, user0_{cert,privk}.pem
- `WORKSPACE/sandbox_<i>/`: node i's configuration, data (ledger, snapshots, sealed secrets) and logs (out, err)

On a new workspace it starts a new service of `--nodes` nodes (the others join the first while the service is
still Opening, so they are trusted at once) and, through real signed governance requests, activates member0,
adds user0 and opens the service. On a workspace that holds a service it resumes every node the workspace has
(each unseals its secrets), and grows the service to `--nodes` if more are asked for: a node joining an open
service waits as Pending until member0 proposes and votes `transition_node_to_trusted` for it. `--clean`
starts afresh; `--recover` brings a lost service back from its ledgers (disaster recovery). It prints where
the service is and commands to run as printed, then runs until Ctrl-C (or, with `--exit-when-open`, returns
once the service is open, leaving the nodes running and printing their pids).
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.js_bundle import JS_APP_PREFIX, JS_GENERIC_APP, BundleInvalid, read_bundle
from governance.member_client import MemberSigner, set_user, transition_node_to_trusted, transition_service_to_open
from ledger.files import parse_chunk_name
from ledger.identity import PartyIdentity, key_pem, load_cert
from network.boundary import SEALED_FILE
from network.client.connection import ServiceClient, ServiceError
from network.client.member_api import MemberApi
from network.enclave.endpoints import Endpoints
from network.host.node import READY_FILE
from scripts.sandbox_guide import DEFAULT_APP, INFERENCE_APP, ServiceView, guide

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


def app_settings(app: str) -> dict[str, object]:
    """What a node serving `app` needs besides: room in a request for a whole model, for confidential inference
    (CCF's 1 MiB body limit otherwise; the app's own limit is 16 MiB)."""
    return {"http": {"max_body_bytes": INFERENCE_MAX_BODY}} if app == INFERENCE_APP else {}


def node_app(spec: str) -> str:
    """The application a node loads for `spec`: a JavaScript bundle (`js:DIR`) is served by the JS generic app."""
    return JS_GENERIC_APP if spec.startswith(JS_APP_PREFIX) else spec


def app_problem(spec: str) -> str | None:
    """Why `module:attr` names no application the node could load (or `js:DIR` no bundle), or None."""
    if spec.startswith(JS_APP_PREFIX):
        try:
            read_bundle(spec[len(JS_APP_PREFIX):])
        except BundleInvalid as e:
            return str(e)
        return None
    module, colon, attr = spec.partition(":")
    if not colon or not module or not attr:
        return "an application is named MODULE:ATTR, e.g. app.logging:app"
    try:
        loaded = getattr(importlib.import_module(module), attr, None)
    except ImportError as e:
        return f"cannot import {module}: {e}"
    return None if isinstance(loaded, Endpoints) else f"{module} has no application named {attr}"


INFERENCE_MAX_BODY = 17 * 1024 * 1024


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
        "app": DEFAULT_APP,
        "signatures": {"every_tx": 5000, "every_ms": 20},
        "snapshots": {"every_tx": 10000},
        **extra,
    }
    path = os.path.join(node_dir, "config.json")
    _write(path, orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


def launch_node(config_path: str) -> subprocess.Popen[bytes]:
    """Start the node of `config_path` (its output appended to `out` and `err` next to it); not waited for."""
    node_dir = os.path.dirname(config_path)
    ready = os.path.join(node_dir, READY_FILE)
    if os.path.exists(ready):
        os.unlink(ready)
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(os.path.join(node_dir, "out"), "ab") as out, open(os.path.join(node_dir, "err"), "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "network.node", "--config", config_path],
                                stdout=out, stderr=err, env=env, cwd=ROOT)


def _log_tail(node_dir: str, lines: int = 5) -> str:
    with open(os.path.join(node_dir, "err"), "rb") as f:
        return " | ".join(f.read().decode(errors="replace").strip().splitlines()[-lines:])


def wait_ready(process: subprocess.Popen[bytes], config_path: str, timeout: float = 60.0) -> dict[str, object]:
    """Wait until the node serves (it writes `node.json`); its contents. RuntimeError if it exits or times out."""
    node_dir = os.path.dirname(config_path)
    ready = os.path.join(node_dir, READY_FILE)
    deadline = time.monotonic() + timeout
    while not os.path.exists(ready):
        if process.poll() is not None:
            raise RuntimeError(f"the node exited (code {process.returncode}): {_log_tail(node_dir)}")
        if time.monotonic() > deadline:
            process.terminate()
            process.wait()
            raise RuntimeError(f"the node did not start within {timeout:.0f} s; see {node_dir}/err")
        time.sleep(0.05)
    with open(ready, "rb") as f:
        return dict(orjson.loads(f.read()))


def start_node(config_path: str, timeout: float = 60.0) -> tuple[subprocess.Popen[bytes], dict[str, object]]:
    process = launch_node(config_path)
    return process, wait_ready(process, config_path, timeout)


def _member0(url: str, common: str) -> MemberApi:
    """member0's signed governance calls to the sandbox at `url`."""
    client = ServiceClient(url, os.path.join(common, "service_cert.pem"))
    with open(os.path.join(common, "member0_privk.pem"), "rb") as k, \
            open(os.path.join(common, "member0_cert.pem"), "rb") as c:
        return MemberApi(client, MemberSigner.from_pem(k.read(), c.read()))


def _propose_and_vote(member: MemberApi, actions: list[dict[str, object]]) -> dict[str, object]:
    """member0 proposes `actions` and votes for them if the proposal is still Open; the proposal as it ends."""
    proposal: dict[str, object] = member.propose(actions)
    if proposal["proposalState"] == "Open":
        proposal = member.vote(str(proposal["proposalId"]))
    return proposal


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
    proposal = _propose_and_vote(member, [set_user(user_cert), transition_service_to_open(service_pem)])
    if proposal["proposalState"] != "Accepted":
        raise RuntimeError(f"the opening proposal ended {proposal['proposalState']}: {proposal}")
    client.close()


def deploy_js_app(url: str, common: str, directory: str) -> None:
    """member0 proposes the bundle in `directory` with `set_js_app` (as CCF's sandbox does with --js-app-bundle)
    and votes for it."""
    member = _member0(url, common)
    proposal = _propose_and_vote(member, [{"name": "set_js_app", "args": {"bundle": read_bundle(directory)}}])
    if proposal["proposalState"] != "Accepted":
        raise RuntimeError(f"the set_js_app proposal ended {proposal['proposalState']}: {proposal}")
    member.client.close()


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
    proposal = _propose_and_vote(member, [transition_service_to_open(new_pem, old_pem)])
    print(f"recovery: proposal {proposal['proposalState']}; status {member.service_info()['status']}", flush=True)
    with open(path("member0_enc_privk.pem"), "rb") as f:
        enc = serialization.load_pem_private_key(f.read(), None)
    if not isinstance(enc, rsa.RSAPrivateKey):
        raise RuntimeError("member0_enc_privk.pem is not an RSA key")
    answer = member.submit_recovery_share(enc)
    print("recovery: member0's share: " + answer["message"].replace("\n", "; "), flush=True)
    wait_serving([url], common, [], timeout=600.0)
    print(f"recovery: service {member.service_info()['status']} again "
          f"(recovery count {member.service_info()['recoveryCount']})", flush=True)
    client.close()


def _node_dirs(workspace: str) -> list[int]:
    if not os.path.isdir(workspace):
        return []
    return sorted(int(d[8:]) for d in os.listdir(workspace) if d.startswith("sandbox_") and d[8:].isdigit())


def resumable_nodes(workspace: str) -> list[int]:
    """The indices of the workspace's nodes that hold a service's sealed secrets (and so resume it)."""
    return [i for i in _node_dirs(workspace) if os.path.exists(os.path.join(workspace, f"sandbox_{i}", SEALED_FILE))]


def _check_resumable(workspace: str) -> None:
    """A node with a ledger but without its sealed secrets cannot resume: say what can bring it back."""
    for i in _node_dirs(workspace):
        node_dir = os.path.join(workspace, f"sandbox_{i}")
        if _last_seqno(os.path.join(node_dir, "ledger")) and not os.path.exists(os.path.join(node_dir, SEALED_FILE)):
            raise RuntimeError(f"{node_dir} holds a ledger but no sealed secrets, so it cannot resume: bring the "
                               "service back with `make sandbox RECOVER=1` (disaster recovery), or start a new one "
                               "with `make sandbox CLEAN=1`")


def _wait(condition: Callable[[], bool], what: str, timeout: float, processes: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise RuntimeError(f"a node exited (code {process.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"no {what} within {timeout:.0f} s; see the nodes' err files")
        time.sleep(0.1)


def wait_for_primary(url: str, common: str, processes: list[subprocess.Popen[bytes]],
                     timeout: float = 60.0) -> dict[str, object]:
    """Wait until the node at `url` knows a primary; its `/node/network` answer then."""
    client = ServiceClient(url, os.path.join(common, "service_cert.pem"), timeout=10)
    seen: dict[str, object] = {}

    def elected() -> bool:
        try:
            seen.update(client.json_ok("GET", "/node/network"))
        except (ServiceError, OSError):
            return False
        return seen.get("primary_id") is not None

    _wait(elected, "primary elected", timeout, processes)
    client.close()
    return seen


def wait_serving(urls: list[str], common: str, processes: list[subprocess.Popen[bytes]],
                 timeout: float = 60.0) -> None:
    """Wait until every node answers `/node/ready/app` with 204: a backup serves the app only once the opening has
    reached it, so a client sent to it straight after the primary opened would be told FrontendNotOpen."""
    for url in urls:
        client = ServiceClient(url, os.path.join(common, "service_cert.pem"), timeout=10)

        def ready(client: ServiceClient = client) -> bool:
            try:
                return client.call("GET", "/node/ready/app").status == 204
            except (ServiceError, OSError):
                return False

        _wait(ready, f"app frontend open on {url}", timeout, processes)
        client.close()


def describe_service(urls: list[str], common: str, origin: str,
                     processes: list[subprocess.Popen[bytes]]) -> ServiceView:
    """Once the service has a primary and every node serves the app, what the sandbox prints of it."""
    network = wait_for_primary(urls[0], common, processes)
    # a recovered service's backups finish their private replay before they serve (long for a long ledger)
    wait_serving(urls, common, processes, timeout=600.0 if origin == "recovered" else 60.0)
    client = ServiceClient(urls[0], os.path.join(common, "service_cert.pem"), timeout=10)
    primary_url = None
    for node in client.json_ok("GET", "/node/network/nodes")["nodes"]:
        if node["primary"]:
            addresses = [i.get("published_address") for i in node["rpc_interfaces"].values()]
            primary_url = f"https://{addresses[0]}" if addresses else None
    client.close()
    return ServiceView(node_urls=urls, primary_url=primary_url, view=int(str(network.get("current_view", 0))),
                       status=str(network.get("service_status")),
                       create_txid=str(network.get("current_service_create_txid")),
                       recovery_count=int(str(network.get("recovery_count") or 0)), origin=origin)


def trust_joiners(url: str, common: str, joiners: list[tuple[subprocess.Popen[bytes], str]],
                  timeout: float = 120.0) -> None:
    """Nodes joining an open service wait as Pending: member0 proposes and votes `transition_node_to_trusted` for
    each (as the service's only member it is the majority), then they are waited for."""
    member = _member0(url, common)
    trusted: set[str] = set()

    def trust_pending() -> bool:
        for node in member.client.json_ok("GET", "/node/network/nodes?status=Pending")["nodes"]:
            node_id = str(node["node_id"])
            if node_id in trusted:
                continue
            proposal = _propose_and_vote(member, [transition_node_to_trusted(node_id)])
            proposal_id = str(proposal["proposalId"])
            if proposal["proposalState"] != "Accepted":
                raise RuntimeError(f"trusting node {node_id[:16]}... needs more votes: proposal "
                                   f"{proposal_id} is {proposal['proposalState']}")
            trusted.add(node_id)
            print(f"node {node_id[:16]}... joined the open service; member0 trusted it "
                  f"(transition_node_to_trusted, proposal {proposal_id[:16]}...)", flush=True)
        return all(os.path.exists(os.path.join(os.path.dirname(config), READY_FILE)) for _, config in joiners)

    _wait(trust_pending, "joining nodes trusted and serving", timeout, [p for p, _ in joiners])
    member.client.close()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pyccf-sandbox", description=(__doc__ or "").split("\n\n")[0],
                                     epilog="make sandbox [NODES=3] [CLEAN=1] [RECOVER=1] runs this script.")
    parser.add_argument("--workspace", default=os.path.join(ROOT, "workspace"), metavar="DIR",
                        help="where the identities and the nodes' directories are kept (default: ./workspace of "
                             "the repository)")
    parser.add_argument("--port", type=int, default=8000,
                        help="node i serves https://127.0.0.1:PORT+i and talks to the others on PORT+1000+i "
                             "(default 8000)")
    parser.add_argument("--nodes", type=int, default=1,
                        help="how many nodes (at least those the workspace already has; more join the service)")
    parser.add_argument("--clean", action="store_true", help="remove the workspace and start a new service")
    parser.add_argument("--recover", action="store_true",
                        help="recover the stopped service of the workspace into new nodes (disaster recovery)")
    parser.add_argument("--app", default=DEFAULT_APP, metavar="MODULE:ATTR",
                        help=f"the application the nodes serve (default {DEFAULT_APP}; {INFERENCE_APP}: confidential "
                             "inference with ONNX models; js:DIR: the JavaScript bundle in DIR, bundle.json or "
                             "app.json with src/, deployed with set_js_app)")
    parser.add_argument("--exit-when-open", action="store_true",
                        help="return once the service is open, leaving the nodes running (their pids are printed)")
    return parser


def _bring_up(args: argparse.Namespace, common: str, processes: list[subprocess.Popen[bytes]]) -> ServiceView:
    """Start, resume, grow or recover the workspace's service; the nodes started are appended to `processes`."""
    urls = lambda n: [f"https://127.0.0.1:{args.port + i}" for i in range(n)]  # noqa: E731
    first_url = f"https://127.0.0.1:{args.port}"
    if args.recover:
        configs = prepare_recovery(args.workspace, args.nodes, args.port)
        for config in configs:
            processes.append(start_node(config)[0])
        complete_recovery(first_url, common)
        return describe_service(urls(len(configs)), common, "recovered", processes)
    _check_resumable(args.workspace)
    resumed = resumable_nodes(args.workspace)
    total = max(args.nodes, resumed[-1] + 1 if resumed else 0)
    if total > args.nodes:
        print(f"the workspace holds a service of {total} nodes: resuming all of them (it commits only with a "
              "majority of its nodes)", flush=True)
    configs = [node_config(args.workspace, args.port + i, index=i, join=first_url if i else None,
                           app=node_app(args.app), **app_settings(args.app)) for i in range(total)]
    deploy = (lambda: deploy_js_app(first_url, common, args.app[len(JS_APP_PREFIX):])) \
        if args.app.startswith(JS_APP_PREFIX) else (lambda: None)
    if not resumed:  # the others join while the service is still Opening: trusted at once, as CCF's sandbox does
        for config in configs:
            processes.append(start_node(config)[0])
        open_service(first_url, common)
        deploy()
        return describe_service(urls(total), common, "new", processes)
    for i in resumed:
        processes.append(start_node(configs[i])[0])
    wait_for_primary(first_url, common, processes)  # governance needs one
    open_service(first_url, common)  # a no-op unless it was stopped before it opened
    joiners = [(launch_node(configs[i]), configs[i]) for i in range(total) if i not in resumed]
    processes.extend(p for p, _ in joiners)
    if joiners:
        trust_joiners(first_url, common, joiners)
    deploy()
    return describe_service(urls(total), common, "resumed", processes)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.nodes < 1:
        print("error: --nodes must be at least 1", file=sys.stderr)
        return 1
    if (problem := app_problem(args.app)) is not None:
        print(f"error: --app {args.app}: {problem}", file=sys.stderr)
        return 1
    if args.clean and os.path.exists(args.workspace):
        shutil.rmtree(args.workspace)
    common = os.path.join(args.workspace, "sandbox_common")
    make_identities(common)
    processes: list[subprocess.Popen[bytes]] = []
    try:
        service = _bring_up(args, common, processes)
    except (ServiceError, RuntimeError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        for process in processes:
            process.terminate()
            process.wait()
        return 1
    print(guide(service, common, args.app), flush=True)
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
