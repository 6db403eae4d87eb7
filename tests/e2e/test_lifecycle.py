"""A service's life on one node: closed to users until opened, stopped with SIGTERM and resumed from its sealed
secrets and ledger, and what it leaves on disk once stopped: a ledger that CCF's `read_ledger.py` accepts, and
no private record in plaintext anywhere under its data directory."""

from __future__ import annotations

import base64
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509

from governance.member_client import set_user
from ledger.identity import PartyIdentity, key_pem
from network.client.connection import Answer, ServiceClient
from tests.ccf_tools import assert_read_ledger_accepts, ccf_check_json_receipt
from tests.e2e.conftest import SandboxFactory
from tests.e2e.harness import API_VERSION, ROOT, TXID, Sandbox, error_code

pytestmark = pytest.mark.e2e

SNAPSHOT_EVERY = 10
BUGGY_ID = 4242


@dataclass
class Service:
    sandbox: Sandbox
    before_open: dict[str, Answer]
    private: dict[int, str] = field(default_factory=dict)  # record id -> message, written as user0
    public: dict[int, str] = field(default_factory=dict)
    refused: list[str] = field(default_factory=list)  # private messages sent to a handler that failed
    receipts_of: list[str] = field(default_factory=list)  # txids of committed writes

    def user(self) -> ServiceClient:
        return self.sandbox.client("user0")

    def write(self, count: int) -> None:
        """`count` private and public records with messages found nowhere else, all committed."""
        user = self.user()
        last = None
        for _ in range(count):
            record_id = len(self.private) + 1
            self.private[record_id] = f"private-{secrets.token_hex(12)}"
            self.public[record_id] = f"public-{secrets.token_hex(12)}"
            for table, msg in (("private", self.private[record_id]), ("public", self.public[record_id])):
                answer = user.call("POST", f"/app/log/{table}", {"id": record_id, "msg": msg})
                assert answer.status == 200 and answer.txid is not None, answer
                last = answer.txid
        assert last is not None
        self.sandbox.wait_for_commit(last, user, frontend="/app")
        self.receipts_of.append(last)

    def send_to_the_buggy_handler(self) -> Answer:
        """A private record to `POST /app/log/private/buggy`, which writes it and then fails."""
        msg = f"refused-{secrets.token_hex(12)}"
        self.refused.append(msg)
        return self.user().call("POST", "/app/log/private/buggy", {"id": BUGGY_ID, "msg": msg})


@pytest.fixture(scope="module")
def service(sandbox_factory: SandboxFactory) -> Service:
    """A new service, asked a few things before it is opened, then opened; records written and committed.

    The application is the logging sample plus one endpoint with a bug (tests/e2e/app_with_a_bug.py)."""
    sandbox = sandbox_factory(snapshots={"every_tx": SNAPSHOT_EVERY}, app="tests.e2e.app_with_a_bug:app")
    sandbox.start()
    user, anonymous = sandbox.client("user0"), sandbox.client(None)
    before_open = {
        "user write": user.call("POST", "/app/log/private", {"id": 1, "msg": "too early"}),
        "anonymous read": anonymous.call("GET", "/app/commit"),
        "ready/app": anonymous.call("GET", "/node/ready/app"),
        "ready/gov": anonymous.call("GET", "/node/ready/gov"),
        "service info": anonymous.call("GET", f"/gov/service/info?{API_VERSION}"),
    }
    sandbox.open()
    service = Service(sandbox, before_open)
    service.write(15)
    return service


def test_app_answers_404_frontend_not_open_until_the_service_opens(service: Service) -> None:
    early = service.before_open
    for name in ("user write", "anonymous read"):
        assert early[name].status == 404 and error_code(early[name]) == "FrontendNotOpen", (name, early[name])
    assert early["ready/app"].status == 503
    assert early["ready/gov"].status == 204
    assert early["service info"].status == 200 and early["service info"].json()["status"] == "Opening"
    # and once open, the first record id was never written by the refused request
    user = service.user()
    assert user.json_ok("GET", "/app/log/private?id=1") == {"msg": service.private[1]}
    assert user.call("GET", "/node/ready/app").status == 204


def test_a_failing_handler_gets_500_commits_nothing_and_is_logged_without_its_data(service: Service) -> None:
    sandbox = service.sandbox
    user = service.user()
    answer = service.send_to_the_buggy_handler()
    assert answer.status == 500 and error_code(answer) == "InternalError", answer
    assert TXID not in answer.headers
    missing = user.call("GET", f"/app/log/private?id={BUGGY_ID}")
    assert missing.status == 400 and error_code(missing) == "ResourceNotFound", missing  # its write was dropped
    written = user.call("POST", "/app/log/private", {"id": BUGGY_ID + 1, "msg": "the node carries on"})
    assert written.status == 200 and written.txid is not None, written
    sandbox.wait_for_commit(written.txid)

    log = (sandbox.node_dir / "err").read_text()
    assert "unhandled error answering POST /app/log/private/buggy" in log
    assert "ZeroDivisionError" in log
    assert service.refused[-1] not in log


def _view(client: ServiceClient) -> int:
    view: int = client.json_ok("GET", "/node/network")["current_view"]
    return view


def test_a_restarted_node_resumes_the_same_service_in_a_higher_view(service: Service) -> None:
    sandbox = service.sandbox
    anonymous = sandbox.client(None)
    view_before = _view(anonymous)
    commit_before = anonymous.json_ok("GET", "/node/commit")["transaction_id"]
    cert_before = Path(sandbox.service_cert_path).read_bytes()
    node_id = sandbox.node_id

    assert sandbox.stop() == 0
    sandbox.start()

    assert Path(sandbox.service_cert_path).read_bytes() == cert_before
    assert sandbox.node_id == node_id
    anonymous, user = sandbox.client(None), service.user()
    view_after = _view(anonymous)
    assert view_after > view_before
    commit_after = anonymous.json_ok("GET", "/node/commit")["transaction_id"]
    assert int(commit_after.split(".")[0]) == view_after
    assert int(commit_after.split(".")[1]) > int(commit_before.split(".")[1])
    assert anonymous.json_ok("GET", f"/node/tx?transaction_id={commit_before}")["status"] == "Committed"
    assert anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")["status"] == "Open"

    # what was written before is still there, and its receipt still verifies
    for record_id in (1, len(service.private)):
        assert user.json_ok("GET", f"/app/log/private?id={record_id}") == {"msg": service.private[record_id]}
        assert user.json_ok("GET", f"/app/log/public?id={record_id}") == {"msg": service.public[record_id]}
    service_cert = x509.load_pem_x509_certificate(cert_before)
    ccf_check_json_receipt(sandbox.receipt(user, service.receipts_of[0]), service_cert)

    # new writes commit, in the new view
    written = user.call("POST", "/app/log/private", {"id": 5000, "msg": "after the restart"})
    assert written.status == 200 and written.txid is not None, written
    assert int(written.txid.split(".")[0]) == view_after
    sandbox.wait_for_commit(written.txid, user, frontend="/app")
    ccf_check_json_receipt(sandbox.receipt(user, written.txid), service_cert)

    # member0 still governs: a signed proposal and ballot add a user, who can write
    member = sandbox.member()
    newcomer = PartyIdentity.create("user2")
    proposal = member.propose([set_user(newcomer.cert)])
    assert member.vote(proposal["proposalId"])["proposalState"] == "Accepted"
    cert_path, key_path = sandbox.workspace / "user2_cert.pem", sandbox.workspace / "user2_privk.pem"
    cert_path.write_text(newcomer.pem)
    key_path.write_text(key_pem(newcomer.key))
    user2 = sandbox.client(cert=str(cert_path), key=str(key_path))
    assert user2.call("POST", "/app/log/public", {"id": 5001, "msg": "a new user"}).status == 200


@dataclass(frozen=True)
class Stopped:
    service: Service
    data_dir: Path
    exit_code: int
    last_write: str  # the last write, answered just before the stop (the node signs what is pending as it stops)


@pytest.fixture(scope="module")
def stopped(service: Service) -> Iterator[Stopped]:
    """More records (after the restart, when that test ran), then the node stopped with SIGTERM."""
    service.write(15)
    assert service.send_to_the_buggy_handler().status == 500
    sandbox = service.sandbox
    unsigned = service.user().call("POST", "/app/log/public", {"id": 9999, "msg": "just before the stop"})
    assert unsigned.status == 200 and unsigned.txid is not None, unsigned
    code = sandbox.stop()
    yield Stopped(service, sandbox.node_dir, code, unsigned.txid)


def test_the_node_stops_on_sigterm_with_exit_code_0(stopped: Stopped) -> None:
    assert stopped.exit_code == 0
    assert not (stopped.data_dir / "node.json").exists(), "the node removes its ready file when it stops"


def test_read_ledger_accepts_the_stopped_nodes_ledger(stopped: Stopped) -> None:
    ledger_dir = stopped.data_dir / "ledger"
    assert sorted(p.name for p in ledger_dir.iterdir())
    out = assert_read_ledger_accepts(str(ledger_dir), "--uncommitted")
    verified = re.search(r"verified until ([0-9]+)\.([0-9]+)", out)
    assert verified is not None, out[-3000:]
    write_view, write_seqno = (int(n) for n in stopped.last_write.split("."))
    # the write answered just before SIGTERM is covered by a signature the node made as it stopped
    assert int(verified[1]) == write_view and int(verified[2]) > write_seqno, (verified[0], stopped.last_write)
    # and so does our own auditor, trusting only the service certificate, up to the last transaction
    proc = subprocess.run([sys.executable, str(Path(ROOT) / "scripts" / "verify_ledger.py"), str(ledger_dir),
                           "--uncommitted", "--service-cert", stopped.service.sandbox.service_cert_path],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["last_verified_txid"] == f"{verified[1]}.{verified[2]}", report


def test_private_records_never_appear_in_plaintext_in_the_nodes_files(stopped: Stopped) -> None:
    files = {path: path.read_bytes() for path in stopped.data_dir.rglob("*") if path.is_file()}
    names = {path.relative_to(stopped.data_dir).parts[0] for path in files}
    assert {"ledger", "snapshots", "sealed_secrets.bin", "out", "err"} <= names, names
    snapshots = sorted((p for p in files if p.parent.name == "snapshots"), key=lambda p: p.stat().st_mtime)
    assert snapshots, "the node was configured to snapshot often"

    private = [*stopped.service.private.values(), *stopped.service.refused]
    assert len(private) >= 31
    for path, data in files.items():
        for msg in private:
            assert msg.encode() not in data, f"private message {msg} in plaintext in {path}"
            assert base64.b64encode(msg.encode()) not in data, f"private message {msg} in base64 in {path}"

    # the test can see plaintext when it is there: public records are written in the clear
    ledger = b"".join(data for path, data in files.items() if path.parent.name == "ledger")
    for msg in stopped.service.public.values():
        assert msg.encode() in ledger, f"public message {msg} not found in the ledger files"
    latest_snapshot = files[snapshots[-1]]
    assert stopped.service.public[1].encode() in latest_snapshot


def test_snapshots_made_while_serving_are_committed_with_their_evidence_and_ccf_reads_them(stopped: Stopped) -> None:
    from tests.ccf_tools import read_ledger

    committed = sorted((stopped.data_dir / "snapshots").glob("snapshot_*.committed"))
    assert committed, "snapshots are serialised in a forked process and committed once their evidence is"
    assert not list((stopped.data_dir / "snapshots").glob(".snapshot-*.partial")), "no half-written snapshot left"
    for path in committed[-2:]:
        seqno, evidence = (int(x) for x in path.name.split(".")[0].split("_")[1:])
        assert evidence > seqno
        proc = read_ledger(str(path), "--snapshot", "-q")
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
