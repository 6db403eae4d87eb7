"""Disaster recovery under bad input and faults (issue 10), on a one-node service recovered into one node:
every refusal is a clear CCF error, nothing is lost, and the service stays recoverable."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from governance.member_client import MemberSigner, action, transition_service_to_open
from governance.recovery_shares import decrypt_share
from governance.shamir import SHARE_SIZE
from ledger.identity import PartyIdentity
from network.client.connection import ServiceClient, ServiceError
from network.client.member_api import MemberApi
from scripts.bench_recovery import write_lost_service
from scripts.sandbox import _write, start_node
from tests.ccf_tools import assert_read_ledger_accepts, verify_secrets_chain
from tests.e2e.harness import Sandbox, free_port, write_committed

pytestmark = pytest.mark.e2e
NEW_CERT = "new_service_cert.pem"


class Recovery:
    """A lost one-node service (member0, one record) and the node recovering it."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        old = Sandbox(workspace, ledger={"chunk_size": 1500})  # small chunks: several committed ones
        old.start()
        old.open()
        user = old.client("user0")
        for i in range(8):
            write_committed(user, i, f"record {i}")
        write_committed(user, 7, "kept across the disaster")
        old.stop()
        self.common = workspace / "sandbox_common"
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self, previous_cert: str = "service_cert.pem", node: str = "recovered",
              previous_ledger: str = "sandbox_0") -> None:
        node_dir = self.workspace / node
        node_dir.mkdir(exist_ok=True)
        if not self.port:
            self.port = free_port()
        config = {"data_dir": ".", "rpc_address": f"127.0.0.1:{self.port}",
                  "node_to_node_address": f"127.0.0.1:{self.port + 1000}",
                  "service_certificate_file": f"../sandbox_common/{NEW_CERT}",
                  "recover": {"previous_service_identity_file": f"../sandbox_common/{previous_cert}",
                              "previous_ledger_dirs": [f"../{previous_ledger}/ledger"]}}
        path = str(node_dir / "config.json")
        _write(path, orjson.dumps(config))
        self.process = start_node(path)[0]

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=30)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def member(self, name: str = "member0") -> MemberApi:
        client = ServiceClient(self.url, str(self.common / NEW_CERT), timeout=10)
        return MemberApi(client, MemberSigner.from_pem((self.common / f"{name}_privk.pem").read_bytes(),
                                                       (self.common / f"{name}_cert.pem").read_bytes()))

    def open(self, previous_pem: str | None = None, previous_cert: str = "service_cert.pem") -> dict[str, Any]:
        member = self.member()
        new_pem = (self.common / NEW_CERT).read_text()
        previous = previous_pem if previous_pem is not None else (self.common / previous_cert).read_text()
        proposal = member.propose([transition_service_to_open(new_pem, previous)])
        if proposal["proposalState"] == "Open":
            proposal = member.vote(proposal["proposalId"])
        return proposal

    def share(self) -> bytes:
        enc = serialization.load_pem_private_key((self.common / "member0_enc_privk.pem").read_bytes(), None)
        assert isinstance(enc, rsa.RSAPrivateKey)
        return decrypt_share(self.member().encrypted_recovery_share(), enc)

    def submit(self, share: bytes, name: str = "member0", for_member: str | None = None) -> Any:
        member = self.member(name)
        target = for_member or member.member_id
        body = member.signer.recovery_share(share)
        return member.client.call("POST", f"/gov/recovery/members/{target}:recover?api-version=2024-07-01", body,
                                  content_type="application/cose")

    def status(self) -> str:
        return str(self.member().service_info()["status"])

    def wait_open(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        client = ServiceClient(self.url, str(self.common / NEW_CERT), timeout=10)
        while time.monotonic() < deadline:
            if client.call("GET", "/node/ready/app").status == 204:
                return
            time.sleep(0.1)
        raise AssertionError("the recovered service did not open")

    def read_record(self) -> str:
        client = ServiceClient(self.url, str(self.common / NEW_CERT), cert=str(self.common / "user0_cert.pem"),
                               key=str(self.common / "user0_privk.pem"), timeout=10)
        return str(client.json_ok("GET", "/app/log/private?id=7")["msg"])


def code(answer: Any) -> str:
    return str(answer.json()["error"]["code"])


@pytest.fixture
def recovery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Recovery]:
    workspace = tmp_path_factory.mktemp("e2e-recovery-faults")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    r = Recovery(workspace)
    yield r
    r.stop()


def test_bad_shares_are_refused_wrong_ones_cleared_and_the_right_one_still_recovers(recovery: Recovery) -> None:
    recovery.start()
    share = recovery.share()
    # before the members open it, the service takes no share
    answer = recovery.submit(share)
    assert answer.status == 403 and code(answer) == "ServiceNotWaitingForRecoveryShares"
    # the wrong previous identity is refused (CCF's check), and the service stays Recovering
    other = PartyIdentity.create("not the previous service").pem
    with pytest.raises(ServiceError) as refused:
        recovery.open(previous_pem=other)
    assert refused.value.status == 500 or "previous" in str(refused.value).lower()
    assert recovery.status() == "Recovering"
    # no rekey while the service recovers (CCF's rule): the proposal fails, saying why
    member = recovery.member()
    proposal = member.propose([action("trigger_ledger_rekey")])
    assert proposal["proposalState"] == "Open"
    with pytest.raises(ServiceError) as rekey:
        member.vote(proposal["proposalId"])
    assert rekey.value.status == 500 and "while the service is not open" in str(rekey.value), rekey.value
    assert recovery.status() == "Recovering"
    assert recovery.open()["proposalState"] == "Accepted"
    assert recovery.status() == "WaitingForRecoveryShares"
    # malformed and truncated shares, and an index-zero (whole key) share from a member who is no recovery owner:
    # 400, nothing recorded
    for bad in (share[:-1], b"", bytes([0]) + share[1:], share + b"x"):
        answer = recovery.submit(bad)
        assert answer.status == 400 and code(answer) == "InvalidInput", answer.body
    # a share sent for another member
    answer = recovery.submit(share, for_member="00" * 32)
    assert answer.status in (400, 401), answer.body
    # a wrong share that passes the format checks: combining fails, shares cleared, still waiting
    wrong = share[:1] + bytes((b ^ 0x5A) for b in share[1:2]) + share[2:]
    assert len(wrong) == SHARE_SIZE
    answer = recovery.submit(wrong)
    assert answer.status == 500 and code(answer) == "InternalError", answer.body
    assert recovery.status() == "WaitingForRecoveryShares"
    # the right share now succeeds; a duplicate after it is refused as the service is no longer waiting
    answer = recovery.submit(share)
    assert answer.status == 200, answer.body
    assert answer.json()["message"].startswith("1/1 recovery shares successfully submitted")
    recovery.wait_open()
    assert recovery.read_record() == "kept across the disaster"
    answer = recovery.submit(share)
    assert answer.status == 403 and code(answer) == "ServiceNotWaitingForRecoveryShares"


def test_a_recovery_node_killed_in_the_public_phase_and_started_again_recovers(recovery: Recovery) -> None:
    recovery.start()
    assert recovery.status() == "Recovering"
    recovery.kill()
    recovery.start()  # resumes its sealed recovering service
    assert recovery.status() == "Recovering"
    assert recovery.open()["proposalState"] == "Accepted"
    share = recovery.share()
    recovery.kill()
    recovery.start()
    assert recovery.status() == "WaitingForRecoveryShares"
    answer = recovery.submit(share)
    assert answer.status == 200, answer.body
    recovery.wait_open()
    assert recovery.read_record() == "kept across the disaster"
    # and once open it restarts as any node does
    recovery.kill()
    recovery.start()
    recovery.wait_open()
    assert recovery.read_record() == "kept across the disaster"


def test_a_ledger_that_does_not_verify_is_refused_naming_the_file(recovery: Recovery) -> None:
    ledger_dir = recovery.workspace / "sandbox_0" / "ledger"
    committed = sorted(p for p in ledger_dir.iterdir() if p.name.endswith(".committed"))
    target = committed[-1]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0x01
    target.write_bytes(bytes(data))
    with pytest.raises(RuntimeError) as failed:
        recovery.start()
    log = (recovery.workspace / "recovered" / "err").read_text()
    assert "cannot recover" in log, log[-2000:]
    assert target.name in log or "ledger_" in log, log[-2000:]
    assert "exited" in str(failed.value)


def test_a_missing_middle_chunk_is_refused(recovery: Recovery) -> None:
    ledger_dir = recovery.workspace / "sandbox_0" / "ledger"
    chunks = sorted((p for p in ledger_dir.iterdir() if p.name.startswith("ledger_")),
                    key=lambda p: int(p.name.split("_")[1].split("-")[0].split(".")[0]))
    assert len(chunks) >= 3, chunks
    os.unlink(chunks[1])
    with pytest.raises(RuntimeError):
        recovery.start()
    log = (recovery.workspace / "recovered" / "err").read_text()
    assert "gap" in log or "expected" in log, log[-2000:]


def test_a_recovered_service_lost_again_is_recovered_again(recovery: Recovery) -> None:
    recovery.start()
    assert recovery.open()["proposalState"] == "Accepted"
    assert recovery.submit(recovery.share()).status == 200
    recovery.wait_open()
    # the opening is durable once a later write commits (the second disaster strikes an Open service)
    client = ServiceClient(recovery.url, str(recovery.common / NEW_CERT), cert=str(recovery.common / "user0_cert.pem"),
                           key=str(recovery.common / "user0_privk.pem"), timeout=10)
    write_committed(client, 8, "written by the first recovered service")
    recovery.kill()
    # the second disaster: the recovered node's data is lost but for its ledger
    os.replace(recovery.common / NEW_CERT, recovery.common / "first_recovery_cert.pem")
    recovery.start(previous_cert="first_recovery_cert.pem", node="recovered_again", previous_ledger="recovered")
    info = recovery.member().service_info()
    assert info["status"] == "Recovering" and info["recoveryCount"] == 2
    assert recovery.open(previous_cert="first_recovery_cert.pem")["proposalState"] == "Accepted"
    assert recovery.submit(recovery.share()).status == 200
    recovery.wait_open()
    assert recovery.read_record() == "kept across the disaster"
    again = ServiceClient(recovery.url, str(recovery.common / NEW_CERT), cert=str(recovery.common / "user0_cert.pem"),
                          key=str(recovery.common / "user0_privk.pem"), timeout=10)
    assert again.json_ok("GET", "/app/log/private?id=8")["msg"] == "written by the first recovered service"
    recovery.stop()
    ledger_dir = str(recovery.workspace / "recovered_again" / "ledger")
    assert_read_ledger_accepts(ledger_dir, "--uncommitted")
    chain = verify_secrets_chain(ledger_dir)
    assert chain.returncode == 0, chain.stdout + chain.stderr
    assert chain.stdout.count("next_version") >= 3, chain.stdout  # the opening and two recoveries


def test_shares_during_the_private_replay_are_refused_and_a_node_killed_in_it_recovers(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A ledger large enough for the private replay to take a while (written in process, as the benchmark does)."""
    workspace = tmp_path_factory.mktemp("e2e-recovery-private")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    write_lost_service(str(workspace), 60_000, snapshot=False)
    os.replace(workspace / "lost_0", workspace / "sandbox_0")
    recovery = Recovery.__new__(Recovery)
    recovery.workspace, recovery.common, recovery.process, recovery.port = workspace, workspace / "sandbox_common", \
        None, 0
    try:
        recovery.start()
        assert recovery.open()["proposalState"] == "Accepted"
        share = recovery.share()
        assert recovery.submit(share).status == 200
        answer = recovery.submit(share)  # the node is reading the private ledger now
        assert answer.status == 403 and code(answer) == "NodeAlreadyRecovering", answer.body
        state = ServiceClient(recovery.url, str(recovery.common / NEW_CERT)).json_ok("GET", "/node/state")["state"]
        assert state == "ReadingPrivateLedger"
        recovery.kill()  # halfway through the private replay
        recovery.start()  # it sealed the previous secrets as they arrived: no share is needed again
        recovery.wait_open(timeout=120)
        client = ServiceClient(recovery.url, str(recovery.common / NEW_CERT),
                               cert=str(recovery.common / "user0_cert.pem"),
                               key=str(recovery.common / "user0_privk.pem"), timeout=10)
        assert recovery.status() == "Open"
        assert client.call("GET", "/node/state").json()["state"] == "PartOfNetwork"
        for record_id in (0, 30_000, 59_999):
            assert client.json_ok("GET", f"/app/log/private?id={record_id}")["msg"].startswith(
                f"private record {record_id} ")
    finally:
        recovery.stop()


def test_a_torn_last_chunk_is_cut_back_to_the_last_signature(recovery: Recovery) -> None:
    ledger_dir = recovery.workspace / "sandbox_0" / "ledger"
    chunks = {int(p.name.removeprefix("ledger_").split("-")[0].split(".")[0]): p for p in ledger_dir.iterdir()
              if p.name.startswith("ledger_")}
    last = chunks[max(chunks)]
    torn_entry = (1 | 4096 << 16).to_bytes(8, "little") + b"torn"  # a version-1 header of 4096 bytes, then 4
    if "-" in last.name:  # the node died while appending to a new chunk: its header, then half an entry
        end = int(last.name.split("-")[1].split(".")[0])
        (ledger_dir / f"ledger_{end + 1}").write_bytes(bytes(8) + torn_entry)
    else:  # the last chunk is still open (whether it is depends on how the writes fell into signatures)
        with open(last, "ab") as f:
            f.write(torn_entry)
    recovery.start()
    log = (recovery.workspace / "recovered" / "err").read_text()
    assert "torn" in log, log[-2000:]
    assert recovery.open()["proposalState"] == "Accepted"
    assert recovery.submit(recovery.share()).status == 200
    recovery.wait_open()
    assert recovery.read_record() == "kept across the disaster"
