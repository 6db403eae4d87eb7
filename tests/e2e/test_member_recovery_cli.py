"""Disaster recovery driven by a member with `scripts/member.py`, as a person would do it.

A one-node service is opened, given a private record and stopped; a recovery node is started on its ledger
(the `recover` section of the configuration, as `scripts/sandbox.py` starts nodes); then member0, with the
script only, proposes to open the recovered service naming both service identities, votes, and submits its
recovery share (`recovery-share --enc-key`). The private record is read back through the new service
certificate, and a share submitted once the service is open is refused in one line with CCF's code.

A recovery owner (CCF's `Owner` recovery role) holds the whole recovery key: with two participants and a
threshold of 2 besides, the owner's share alone opens the recovered service.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.member_client import MemberSigner, action, set_member
from ledger.identity import PartyIdentity, key_pem
from network.client.connection import ServiceClient
from network.client.member_api import MemberApi
from scripts.sandbox import _write, start_node
from tests.e2e.conftest import SandboxFactory
from tests.e2e.harness import API_VERSION, TXID, Sandbox, free_port

pytestmark = pytest.mark.e2e

MEMBER_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                             "scripts", "member.py")


def _recovery_config(sandbox: Sandbox, name: str, port: int) -> str:
    """A node configuration that recovers `sandbox`'s service from its ledger, with a new service identity."""
    node_dir = sandbox.workspace / name
    node_dir.mkdir()
    config = {
        "data_dir": ".",
        "rpc_address": f"127.0.0.1:{port}",
        "node_to_node_address": f"127.0.0.1:{port + 1000}",
        "service_certificate_file": "../sandbox_common/new_service_cert.pem",
        "recover": {
            "previous_service_identity_file": "../sandbox_common/service_cert.pem",
            "previous_ledger_dirs": ["../sandbox_0/ledger"],
            "previous_snapshot_dirs": ["../sandbox_0/snapshots"],
        },
        "app": "app.logging:app",
    }
    path = str(node_dir / "config.json")
    _write(path, orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


def _start_recovery_node(sandbox: Sandbox) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The recovery node, its port and its directory (another port if a free one was taken meanwhile)."""
    for attempt in range(3):
        port = free_port()
        config = _recovery_config(sandbox, f"recovery_{attempt}", port)
        try:
            process, _ = start_node(config)
        except RuntimeError as e:
            if "address already in use" not in str(e).lower() or attempt == 2:
                raise
            continue
        return process, port, Path(config).parent
    raise AssertionError("unreachable")


def _stop(process: subprocess.Popen[bytes], timeout: float = 30.0) -> int:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return int(process.returncode)


def _log_tail(node_dir: Path, lines: int = 20) -> str:
    try:
        return "\n".join((node_dir / "err").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_until_open(client: ServiceClient, node_dir: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    state: Any = None
    status: Any = None
    while time.monotonic() < deadline:
        state = client.json_ok("GET", "/node/state")
        status = client.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"]
        if state.get("state") == "PartOfNetwork" and status == "Open":
            return
        time.sleep(0.1)
    raise AssertionError(f"not open after {timeout:.0f} s: node {state}, service {status}\n{_log_tail(node_dir)}")


def _one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def test_a_member_recovers_the_service_with_the_members_script(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory("lost")
    sandbox.start()
    sandbox.open()
    written = sandbox.client("user0").call("POST", "/app/log/private", {"id": 1, "msg": "m"})
    assert written.status == 200, written
    sandbox.wait_for_commit(written.headers[TXID])
    assert sandbox.stop() == 0

    old_cert = sandbox.service_cert_path
    new_cert = sandbox.common_file("new_service_cert.pem")
    process, port, node_dir = _start_recovery_node(sandbox)
    url = f"https://127.0.0.1:{port}"
    clients: list[ServiceClient] = []
    try:
        def member_cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, MEMBER_SCRIPT, "--cert", sandbox.common_file("member0_cert.pem"),
                 "--key", sandbox.common_file("member0_privk.pem"), "--url", url, "--service-cert", new_cert, *args],
                capture_output=True, text=True, timeout=120, check=False)

        anonymous = ServiceClient(url, new_cert, timeout=20)
        clients.append(anonymous)
        assert Path(new_cert).read_bytes() != Path(old_cert).read_bytes()
        assert anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"] == "Recovering"

        # a share is refused until the members have accepted the opening of the recovered service
        early = _one_error_line(member_cli("recovery-share", "--enc-key", sandbox.common_file("member0_enc_privk.pem")))
        assert "403 ServiceNotWaitingForRecoveryShares" in early, early

        # opening a recovering service without naming the service it recovers fails when it is applied
        alone = member_cli("--json", "propose", "--transition-service-to-open", new_cert)
        assert alone.returncode == 0, alone.stderr
        alone_id = orjson.loads(alone.stdout)["proposalId"]
        failed = _one_error_line(member_cli("vote", alone_id, "--approve"))  # as CCF: 500, the apply() error
        assert "InternalError" in failed and "requires previous_service_identity" in failed, failed
        withdrawn = member_cli("withdraw", alone_id)  # it was not applied: take it back
        assert withdrawn.returncode == 0 and "Withdrawn" in withdrawn.stdout, withdrawn
        assert anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"] == "Recovering"

        proposed = member_cli("--json", "propose", "--transition-service-to-open", new_cert,
                              "--previous-service-cert", old_cert)
        assert proposed.returncode == 0, proposed.stderr + _log_tail(node_dir)
        proposal = orjson.loads(proposed.stdout)
        if proposal["proposalState"] == "Open":
            voted = member_cli("vote", proposal["proposalId"], "--approve")
            assert voted.returncode == 0, voted.stderr
            assert f"proposal {proposal['proposalId']} Accepted" in voted.stdout, voted.stdout
        else:
            assert proposal["proposalState"] == "Accepted", proposal
        assert anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"] == "WaitingForRecoveryShares"

        # the wrong RSA key: the share does not decrypt, nothing is submitted
        wrong_key = sandbox.workspace / "not_member0_enc_privk.pem"
        wrong_key.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        wrong = _one_error_line(member_cli("recovery-share", "--enc-key", str(wrong_key)))
        assert "cannot decrypt" in wrong and "not_member0_enc_privk.pem" in wrong, wrong
        assert anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"] == "WaitingForRecoveryShares"

        submitted = member_cli("recovery-share", "--enc-key", sandbox.common_file("member0_enc_privk.pem"))
        assert submitted.returncode == 0, submitted.stderr + _log_tail(node_dir)
        assert submitted.stdout.splitlines()[0] == "1/1 shares submitted", submitted.stdout
        assert submitted.stdout == "1/1 shares submitted\nend of recovery procedure initiated\n", submitted.stdout

        _wait_until_open(anonymous, node_dir)
        user = ServiceClient(url, new_cert, cert=sandbox.common_file("user0_cert.pem"),
                             key=sandbox.common_file("user0_privk.pem"), timeout=20)
        clients.append(user)
        assert user.json_ok("GET", "/app/log/private?id=1") == {"msg": "m"}
        previous = anonymous.json_ok("GET", "/node/service/previous_identity")["previous_service_identity"]
        assert previous.strip() == Path(old_cert).read_text().strip()

        # once open, a share is refused in one line with CCF's code
        again = member_cli("recovery-share", "--enc-key", sandbox.common_file("member0_enc_privk.pem"))
        line = _one_error_line(again)
        assert "ServiceNotWaitingForRecoveryShares" in line and "403" in line, line
        assert again.stdout == ""
        again_json = member_cli("--json", "recovery-share", "--enc-key", sandbox.common_file("member0_enc_privk.pem"))
        assert "ServiceNotWaitingForRecoveryShares" in _one_error_line(again_json)
    finally:
        for client in clients:
            client.close()
        code = _stop(process)
    assert code == 0, f"the recovery node exited {code} on SIGTERM\n{_log_tail(node_dir)}"


def _new_member(sandbox: Sandbox, name: str) -> tuple[PartyIdentity, str]:
    """A member's identity and RSA encryption key, written as sandbox_common/{name}_*.pem; the public key's PEM."""
    identity = PartyIdentity.create(name)
    encryption = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    files = {
        "cert": identity.pem.encode(), "privk": key_pem(identity.key).encode(),
        "enc_privk": encryption.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()),
    }
    for suffix, content in files.items():
        Path(sandbox.common_file(f"{name}_{suffix}.pem")).write_bytes(content)
    public = encryption.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return identity, public


def _member_api(sandbox: Sandbox, name: str, url: str, service_cert: str) -> MemberApi:
    with open(sandbox.common_file(f"{name}_privk.pem"), "rb") as k, \
            open(sandbox.common_file(f"{name}_cert.pem"), "rb") as c:
        return MemberApi(ServiceClient(url, service_cert, timeout=20), MemberSigner.from_pem(k.read(), c.read()))


def _pass(apis: list[MemberApi], actions: list[dict[str, Any]]) -> None:
    """The first member proposes `actions`; the others vote for them until the proposal is accepted."""
    proposal = apis[0].propose(actions)
    for api in apis:
        if proposal["proposalState"] != "Open":
            break
        proposal = api.vote(proposal["proposalId"])
    assert proposal["proposalState"] == "Accepted", proposal


@pytest.mark.enclave_process_pass
def test_a_recovery_owner_recovers_the_service_alone(sandbox_factory: SandboxFactory) -> None:
    sandbox = sandbox_factory("owned")
    sandbox.start()
    sandbox.open()
    url, old_cert = sandbox.url, sandbox.service_cert_path
    owner, owner_key = _new_member(sandbox, "owner")
    participant, participant_key = _new_member(sandbox, "member1")
    apis = {name: _member_api(sandbox, name, url, old_cert) for name in ("member0", "owner", "member1")}
    try:
        _pass([apis["member0"]], [set_member(owner.cert, owner_key, recovery_role="Owner"),
                                  set_member(participant.cert, participant_key)])
        apis["owner"].activate()
        apis["member1"].activate()
        _pass([apis["member0"], apis["member1"]], [action("set_recovery_threshold", recovery_threshold=2)])
        shares = sandbox.client(None).json_ok("GET", f"/gov/recovery/encrypted-shares/{owner.id}?{API_VERSION}")
        assert shares["memberId"] == owner.id
    finally:
        for api in apis.values():
            api.client.close()
    written = sandbox.client("user0").call("POST", "/app/log/private", {"id": 7, "msg": "owned"})
    assert written.status == 200, written
    sandbox.wait_for_commit(written.headers[TXID])
    assert sandbox.stop() == 0

    new_cert = sandbox.common_file("new_service_cert.pem")
    process, port, node_dir = _start_recovery_node(sandbox)
    url = f"https://127.0.0.1:{port}"
    apis = {name: _member_api(sandbox, name, url, new_cert) for name in ("member0", "member1")}
    try:
        with open(new_cert) as f, open(old_cert) as g:
            opening = {"name": "transition_service_to_open",
                       "args": {"next_service_identity": f.read(), "previous_service_identity": g.read()}}
        _pass([apis["member0"], apis["member1"]], [opening])
        submitted = subprocess.run(
            [sys.executable, MEMBER_SCRIPT, "--cert", sandbox.common_file("owner_cert.pem"),
             "--key", sandbox.common_file("owner_privk.pem"), "--url", url, "--service-cert", new_cert,
             "recovery-share", "--enc-key", sandbox.common_file("owner_enc_privk.pem")],
            capture_output=True, text=True, timeout=120, check=False)
        assert submitted.returncode == 0, submitted.stderr + _log_tail(node_dir)
        # one share against a threshold of 2, but the whole key: the private recovery begins
        assert submitted.stdout == "full recovery key submitted\nend of recovery procedure initiated\n"
        anonymous = ServiceClient(url, new_cert, timeout=20)
        _wait_until_open(anonymous, node_dir)
        user = ServiceClient(url, new_cert, cert=sandbox.common_file("user0_cert.pem"),
                             key=sandbox.common_file("user0_privk.pem"), timeout=20)
        assert user.json_ok("GET", "/app/log/private?id=7") == {"msg": "owned"}
        for client in (anonymous, user):
            client.close()
    finally:
        for api in apis.values():
            api.client.close()
        code = _stop(process)
    assert code == 0, f"the recovery node exited {code} on SIGTERM\n{_log_tail(node_dir)}"
