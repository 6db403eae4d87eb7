"""The auditor's command line on a ledger written by a real node (`scripts/sandbox.py`'s way of starting one).

One node per module, on a free port of 127.0.0.1, with small chunks so that most of its ledger is in
committed chunks: user0 writes private and public records (some binding a claim), member0 passes a rekey
proposal, user0 writes more, receipts are fetched from `/app/receipt`, and the node is stopped with SIGTERM.
Every test then works offline on the node's ledger directory (or on copies of it: replication is not built
yet, so a copy stands for a second node), judged by `read_ledger.py` and `ccf.receipt` where they apply.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import io
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ccf.receipt
import orjson
import pytest
from cryptography import x509

from governance.member_client import MemberSigner
from ledger.audit_scan import ledger_chunk_paths, scan_path
from ledger.identity import ServiceIdentity
from network.client.connection import ServiceClient
from network.client.member_api import MemberApi
from scripts import audit as audit_cli
from scripts.sandbox import make_identities, node_config, open_service, start_node
from tests.ccf_tools import read_ledger
from tests.ledger_helpers import flip_byte as flip

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit.py"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@dataclass
class NodeRun:
    workspace: Path
    node_dir: str
    ledger_dir: str
    service_cert: str
    writes: dict[str, tuple[str, str]]  # txid -> (scope, msg); claims bound for those with "claim" in msg
    receipts: dict[str, dict[str, Any]]  # txid -> JSON receipt from /app/receipt
    rekey_proposal: str


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.Popen[bytes], str]:
    for _ in range(3):
        workspace = tmp_path_factory.mktemp("audit-sandbox")
        make_identities(str(workspace / "sandbox_common"))
        port = _free_port()
        # small chunks: every signature after 4 KB ends a chunk, so most of the ledger gets committed chunks
        config = node_config(str(workspace), port, ledger={"chunk_size": 4000})
        try:
            process, _ = start_node(config)
        except RuntimeError as e:  # the free port was taken before the node bound it: try another
            if "address already in use" in str(e).lower():
                continue
            raise
        print(f"\n[e2e] audit sandbox workspace {workspace}", flush=True)
        return workspace, process, f"https://127.0.0.1:{port}"
    raise RuntimeError("no free port for the node after 3 attempts")


def _wait_for_receipt(user: ServiceClient, txid: str, deadline: float) -> dict[str, Any]:
    while True:
        answer = user.call("GET", f"/app/receipt?transaction_id={txid}")
        if answer.status == 200:
            receipt: dict[str, Any] = answer.json()
            return receipt
        if time.monotonic() > deadline:
            raise AssertionError(f"no receipt for {txid}: {answer.status} {answer.body[:300]!r}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> NodeRun:
    workspace, process, url = _start(tmp_path_factory)
    common = workspace / "sandbox_common"

    def path(name: str) -> str:
        return str(common / name)

    try:
        open_service(url, str(common))
        user = ServiceClient(url, path("service_cert.pem"), cert=path("user0_cert.pem"), key=path("user0_privk.pem"))
        writes: dict[str, tuple[str, str]] = {}

        def write(scope: str, i: int, claim: bool = False) -> None:
            msg = f"{scope} record {i}" + (" with claim" if claim else "") + " " + "." * 200
            answer = user.call("POST", f"/app/log/{scope}", {"id": i, "msg": msg, "record_claim": claim})
            assert answer.status == 200 and answer.txid, answer
            writes[answer.txid] = (scope, msg)

        for i in range(40):
            write("private", i, claim=i % 10 == 3)
            write("public", i)
        with open(path("member0_privk.pem"), "rb") as k, open(path("member0_cert.pem"), "rb") as c:
            member = MemberApi(ServiceClient(url, path("service_cert.pem")), MemberSigner.from_pem(k.read(), c.read()))
        proposal = member.propose([{"name": "trigger_ledger_rekey"}])
        if proposal["proposalState"] == "Open":
            proposal = member.vote(proposal["proposalId"])
        assert proposal["proposalState"] == "Accepted", proposal
        for i in range(40, 60):
            write("private", i, claim=i % 10 == 3)
        deadline = time.monotonic() + 60
        chosen = list(writes)[::7] + [t for t, (_, msg) in writes.items() if "with claim" in msg] + [list(writes)[-1]]
        receipts = {txid: _wait_for_receipt(user, txid, deadline) for txid in dict.fromkeys(chosen)}
        user.close()
        member.client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(30)
    assert code == 0, f"the node exited {code} on SIGTERM (logs in {workspace / 'sandbox_0'})"
    node_dir = str(workspace / "sandbox_0")
    return NodeRun(workspace, node_dir, os.path.join(node_dir, "ledger"), path("service_cert.pem"), writes,
                   receipts, proposal["proposalId"])


def audit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def audit_in_process(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = audit_cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def one_error_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    return lines[0]


def read_ledger_verdict(directory: str, *extra: str) -> tuple[int, str]:
    proc = read_ledger(directory, "-q", *extra)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "Ledger verification complete" in out, out[-3000:]
    m = re.search(r"Found (\d+) signatures, and verified until (\d+\.\d+)", out)
    assert m, out[-3000:]
    return int(m.group(1)), m.group(2)


def entry_location(directory: str, seqno: int) -> tuple[str, int, int]:
    """(chunk path, offset, size) of the entry at seqno, found by scanning the chunk files."""
    for path in ledger_chunk_paths([directory], committed_only=False):
        scan = scan_path(path, keep=frozenset(), keep_leaves=True)
        assert not isinstance(scan, tuple) and scan.offsets is not None
        if scan.start <= seqno < scan.start + scan.count:
            i = seqno - scan.start
            end = scan.offsets[i + 1] if i + 1 < scan.count else None
            if end is None:
                with open(path, "rb") as f:
                    data = f.read()
                end = struct.unpack_from("<Q", data, 0)[0] or len(data)
            return path, scan.offsets[i], end - scan.offsets[i]
    raise AssertionError(f"seqno {seqno} is in no chunk of {directory}")


def committed_private_write(node: NodeRun, after_rekey: bool = False) -> int:
    """The seqno of a private write in a committed chunk (before or after the rekey)."""
    committed_end = max(int(f.split("-")[1].split(".")[0]) for f in os.listdir(node.ledger_dir)
                        if f.endswith(".committed"))
    private = sorted(int(t.split(".")[1]) for t, (scope, _) in node.writes.items() if scope == "private")
    candidates = [s for s in private if s <= committed_end]
    assert len(candidates) > 10, (private, committed_end)
    return candidates[-3] if after_rekey else candidates[len(candidates) // 3]



def copy_of(node: NodeRun, tmp_path: Path, name: str) -> str:
    target = str(tmp_path / name)
    shutil.copytree(node.ledger_dir, target)
    return target


# --- audit ledger ------------------------------------------------------------------------------------


@pytest.mark.parametrize("uncommitted", [False, True])
def test_audit_ledger_passes_and_agrees_with_read_ledger(node: NodeRun, uncommitted: bool) -> None:
    extra = ["--uncommitted"] if uncommitted else []
    proc = audit("ledger", node.ledger_dir, "--service-cert", node.service_cert, "--json", *extra)
    assert proc.returncode == 0, proc.stderr
    (report,) = orjson.loads(proc.stdout)["ledgers"]
    signatures, last_txid = read_ledger_verdict(node.ledger_dir, *extra)
    assert report["signatures"] == signatures
    assert report["last_verified_txid"] == last_txid
    assert report["chunks"] >= (3 if not uncommitted else 4)
    human = audit("ledger", node.ledger_dir, "--service-cert", node.service_cert, *extra)
    assert human.returncode == 0 and f"{signatures} signatures verified, the last one {last_txid}" in human.stdout


def test_private_domains_check_with_the_nodes_secrets(node: NodeRun, tmp_path: Path) -> None:
    proc = audit("ledger", node.ledger_dir, "--uncommitted", "--sealed-dir", node.node_dir, "--json")
    assert proc.returncode == 0, proc.stderr
    assert orjson.loads(proc.stdout)["ledgers"][0]["ledger_secrets"] == 2  # the first secret and the rekey's
    secrets = tmp_path / "secrets.json"
    exported = audit("secrets", node.node_dir, "--out", str(secrets))
    assert exported.returncode == 0, exported.stderr
    assert [item["start"] for item in orjson.loads(secrets.read_bytes())][0] == 1
    proc = audit("ledger", node.ledger_dir, "--uncommitted", "--secrets", str(secrets))
    assert proc.returncode == 0, proc.stderr
    assert "decrypted and checked with 2 ledger secrets" in proc.stdout


@pytest.mark.parametrize("where", ["private ciphertext", "public header"])
def test_a_flipped_byte_in_a_committed_chunk_fails_naming_the_seqno(node: NodeRun, tmp_path: Path,
                                                                     where: str) -> None:
    damaged = copy_of(node, tmp_path, "damaged")
    target = committed_private_write(node)
    chunk, offset, size = entry_location(damaged, target)
    assert chunk.endswith(".committed")
    flip(chunk, offset + (size - 7 if where == "private ciphertext" else 60))

    proc = read_ledger(damaged, "-q")
    assert proc.returncode != 0 or "Ledger verification complete" not in proc.stdout  # the judge agrees

    proc = audit("ledger", damaged, "--service-cert", node.service_cert)
    assert proc.returncode == 1
    line = one_error_line(proc)
    name = os.path.basename(chunk)
    assert f"seqno {target} at offset {offset} of {name}" in line, line
    # with the node's secrets: the GCM tag (or commit evidence) of that very entry
    proc = audit("ledger", damaged, "--sealed-dir", node.node_dir)
    assert proc.returncode == 1
    assert f"(file {name}, offset {offset}, seqno {target})" in one_error_line(proc)


# --- audit compare -----------------------------------------------------------------------------------


def test_compare_copies_are_identical_and_a_planted_divergence_is_found(node: NodeRun, tmp_path: Path) -> None:
    a, b = copy_of(node, tmp_path, "node1"), copy_of(node, tmp_path, "node2")
    proc = audit("compare", node.ledger_dir, a, b)
    assert proc.returncode == 0, proc.stderr
    assert "identical: the 3 ledgers" in proc.stdout

    target = committed_private_write(node, after_rekey=True)
    chunk, offset, size = entry_location(b, target)
    flip(chunk, offset + size // 2)
    proc = audit("compare", node.ledger_dir, a, b, "--json")
    assert proc.returncode == 1
    line = one_error_line(proc)
    assert f"differ at seqno {target}" in line and f"{b}: {os.path.basename(chunk)} offset {offset}" in line
    difference = orjson.loads(proc.stdout)["difference"]
    assert difference["seqno"] == target
    assert [loc["directory"] for loc in difference["locations"]] == [node.ledger_dir, a, b]


# --- receipts ----------------------------------------------------------------------------------------


def ccf_accepts(receipt: dict[str, Any], service_cert: x509.Certificate) -> None:
    """A CCF user's check of a JSON receipt with the ccf package alone."""
    lc = receipt["leaf_components"]
    leaf = hashlib.sha256(bytes.fromhex(lc["write_set_digest"]) + hashlib.sha256(lc["commit_evidence"].encode())
                          .digest() + bytes.fromhex(lc["claims_digest"])).hexdigest()
    root = ccf.receipt.root(leaf, receipt["proof"])
    node_cert = x509.load_pem_x509_certificate(receipt["cert"].encode())
    ccf.receipt.verify(root, receipt["signature"], node_cert)
    ccf.receipt.check_endorsements(node_cert, service_cert, [])


def test_receipts_from_the_node_verify_with_the_cli_and_ccf(node: NodeRun, tmp_path: Path) -> None:
    with open(node.service_cert, "rb") as f:
        service_cert = x509.load_pem_x509_certificate(f.read())
    assert len(node.receipts) >= 10
    with_claims = [t for t in node.receipts if "with claim" in node.writes[t][1]]
    assert with_claims
    as_processes = {*with_claims[:2], *list(node.receipts)[:2]}  # the rest in this process, to save start-ups
    for txid, receipt in node.receipts.items():
        ccf_accepts(receipt, service_cert)
        path = tmp_path / f"{txid}.json"
        path.write_bytes(orjson.dumps(receipt))
        scope, msg = node.writes[txid]
        claims = ["--claims-of-msg", msg] if "with claim" in msg else []
        args = ["receipt", str(path), "--service-cert", node.service_cert, "--json", *claims]
        if txid in as_processes:
            proc = audit(*args)
            code, out, err = proc.returncode, proc.stdout, proc.stderr
        else:
            code, out, err = audit_in_process(*args)
        assert code == 0, (txid, err)
        result = orjson.loads(out)
        assert result["txid"] == txid and result["claims_checked"] == bool(claims)
        if claims:  # a claim of another message does not verify
            code, _, err = audit_in_process(*args[:-1], msg + "!")
            assert code == 1 and "ReceiptClaimsMismatch" in err


def test_receipt_mutations_fail(node: NodeRun, tmp_path: Path) -> None:
    txid = next(t for t in node.receipts if len(node.receipts[t]["proof"]) >= 2)
    receipt = node.receipts[txid]

    def flipped_hex(value: str) -> str:
        raw = bytearray(bytes.fromhex(value))
        raw[len(raw) // 2] ^= 0x01
        return raw.hex()

    def mutate(change: Any) -> dict[str, Any]:
        m = copy.deepcopy(receipt)
        change(m)
        return m

    sig = bytearray(base64.b64decode(receipt["signature"]))
    sig[-2] ^= 0x01
    other_cert = Path(node.workspace / "sandbox_common" / "user0_cert.pem").read_text()
    mutations = {
        "signature": mutate(lambda m: m.__setitem__("signature", base64.b64encode(bytes(sig)).decode())),
        "proof element": mutate(lambda m: m["proof"][1].__setitem__(
            next(iter(m["proof"][1])), flipped_hex(next(iter(m["proof"][1].values()))))),
        "write_set_digest": mutate(lambda m: m["leaf_components"].__setitem__(
            "write_set_digest", flipped_hex(m["leaf_components"]["write_set_digest"]))),
        "claims_digest": mutate(lambda m: m["leaf_components"].__setitem__(
            "claims_digest", flipped_hex(m["leaf_components"]["claims_digest"]))),
        "commit_evidence": mutate(lambda m: m["leaf_components"].__setitem__(
            "commit_evidence", m["leaf_components"]["commit_evidence"][:-4] + "abcd")),
        "cert": mutate(lambda m: m.__setitem__("cert", other_cert)),
    }
    for name, mutated in mutations.items():
        path = tmp_path / f"{name}.json"
        path.write_bytes(orjson.dumps(mutated))
        proc = audit("receipt", str(path), "--service-cert", node.service_cert)
        assert proc.returncode == 1, name
        assert "receipt does not verify" in one_error_line(proc), name
    other_service = node.workspace / "other_service.pem"
    other_service.write_text(ServiceIdentity.create().pem)
    path = tmp_path / "good.json"
    path.write_bytes(orjson.dumps(receipt))
    proc = audit("receipt", str(path), "--service-cert", str(other_service))
    assert proc.returncode == 1 and "ReceiptEndorsementError" in one_error_line(proc)


# --- audit report, in a real browser -----------------------------------------------------------------


def chromium() -> str:
    found = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if found is None:
        pytest.skip("Debian's chromium is not installed (apt-get install -y chromium): "
                    "the report cannot be checked in a headless browser on this machine")
    return found


def render(html_path: Path, tmp_path: Path) -> tuple[bytes, str]:
    """A screenshot (PNG bytes) and the DOM after the page's script ran, from headless chromium."""
    browser = chromium()
    url = html_path.resolve().as_uri()
    png = tmp_path / f"{html_path.stem}.png"
    common = [browser, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1200,900"]
    shot = subprocess.run([*common, f"--screenshot={png}", url], capture_output=True, text=True, timeout=120)
    assert shot.returncode == 0 and png.exists(), shot.stderr[-2000:]
    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    return png.read_bytes(), dom.stdout


def assert_real_screenshot(png: bytes) -> None:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", png[16:24])
    assert (width, height) == (1200, 900)
    assert len(png) > 20_000, "the screenshot is nearly blank"


def test_report_renders_the_timeline_in_a_headless_browser(node: NodeRun, tmp_path: Path) -> None:
    out = tmp_path / "report.html"
    proc = audit("report", node.ledger_dir, "--uncommitted", "--service-cert", node.service_cert, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    verdict = orjson.loads(audit("ledger", node.ledger_dir, "--uncommitted", "--json").stdout)["ledgers"][0]
    png, dom = render(out, tmp_path)
    assert_real_screenshot(png)
    assert 'data-ready="1"' in dom  # the page's script ran to its end
    signatures = verdict["signatures"]
    assert len(re.findall(r'<tr class="ev ev-signature"', dom)) == signatures
    assert f'id="count-signature" data-count="signature">{signatures}<' in dom
    assert len(re.findall(r'<tr class="ev ev-chunk"', dom)) == verdict["chunks"]
    assert len(re.findall(r'<tr class="ev ev-rekey"', dom)) == 1
    assert node.rekey_proposal[:12] in dom and "trigger_ledger_rekey" in dom and "Accepted" in dom
    assert "service status Open" in dom and "user " in dom and "Verified up to" in dom


def test_report_of_a_damaged_ledger_shows_where_in_a_headless_browser(node: NodeRun, tmp_path: Path) -> None:
    damaged = copy_of(node, tmp_path, "damaged")
    target = committed_private_write(node)
    chunk, offset, size = entry_location(damaged, target)
    flip(chunk, offset + size - 7)
    out = tmp_path / "damaged.html"
    proc = audit("report", damaged, "--out", str(out))
    assert proc.returncode == 1 and "report written to" in one_error_line(proc)
    png, dom = render(out, tmp_path)
    assert_real_screenshot(png)
    assert "Verification FAILED" in dom
    assert re.search(rf'<tr class="ev ev-failure" id="ev-\d+" data-kind="failure" data-seqno="{target}">', dom)
    assert 'id="count-failure" data-count="failure">1<' in dom
