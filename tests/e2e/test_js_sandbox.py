"""`make sandbox APP=js:<bundle dir> NODES=3` (issue 14): three real nodes serve a CCF JavaScript bundle built with
npm and `@microsoft/ccf-app`. Writes sent to a backup are forwarded (the bundle says `forwarding_required`), reads,
historical queries and receipts work as with the Python logging app, and the receipts verify with CCF's checker
against the service certificate. A second bundle, in the `app.json` + `src/` layout, replaces the first by
governance; its handler that never returns is stopped with CCF's error, and the nodes go on serving."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest
from cryptography import x509

from governance.member_client import MemberSigner
from network.client.connection import ServiceClient
from network.client.member_api import MemberApi
from tests.ccf_tools import ccf_check_json_receipt
from tests.e2e.harness import free_sandbox_port
from tests.e2e.test_sandbox_recovery import _kill, _pids, _sandbox
from tests.js_apps.build import bundle_dir_or_skip

pytestmark = pytest.mark.e2e

LOOPING_APP = {"endpoints": {
    "/spin": {"post": {"js_module": "spin.js", "js_function": "spin", "mode": "readwrite",
                       "forwarding_required": "always", "authn_policies": ["user_cert"], "openapi": {}}},
    "/hello": {"get": {"js_module": "spin.js", "js_function": "hello", "mode": "readonly",
                       "forwarding_required": "sometimes", "authn_policies": ["no_auth"], "openapi": {}}},
}}
LOOPING_MODULE = """export function spin(request) { ccf.kv["spun"].set(new ArrayBuffer(1), new ArrayBuffer(1));
  for (;;) {} }
export function hello(request) { return { body: "still here" }; }
"""


def _until(call: object, ok: object, what: str, seconds: float = 20) -> object:
    deadline = time.monotonic() + seconds
    while True:
        answer = call()  # type: ignore[operator]
        if ok(answer):  # type: ignore[operator]
            return answer
        assert time.monotonic() < deadline, f"{what}: {answer}"
        time.sleep(0.1)


def test_three_nodes_serve_a_js_bundle_with_receipts_and_limits(tmp_path_factory: pytest.TempPathFactory) -> None:
    bundle_dir = bundle_dir_or_skip("logging")
    workspace = tmp_path_factory.mktemp("e2e-js-sandbox")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    port = free_sandbox_port()
    started = _sandbox(workspace, port, "--nodes", "3", "--app", f"js:{bundle_dir}")
    assert started.returncode == 0, started.stderr[-2000:] + started.stdout[-2000:]
    pids = _pids(started.stdout)
    try:
        common = workspace / "sandbox_common"
        cert = str(common / "service_cert.pem")
        user = dict(cert=str(common / "user0_cert.pem"), key=str(common / "user0_privk.pem"), timeout=30)
        primary = ServiceClient(f"https://127.0.0.1:{port}", cert, **user)
        backup = ServiceClient(f"https://127.0.0.1:{port + 1}", cert, **user)
        other = ServiceClient(f"https://127.0.0.1:{port + 2}", cert, **user)
        written = backup.call("POST", "/app/log/private", json.dumps({"id": 42, "msg": "hello",
                                                                       "record_claim": True}).encode())
        assert written.status == 200 and written.json() is True, written.body
        txid = written.txid
        assert primary.call("POST", "/app/log/private", b'{"id": 1, "msg": ""}').status == 400
        read = _until(lambda: other.call("GET", "/app/log/private?id=42"), lambda a: a.status == 200,
                      "the write never reached the second backup")
        assert read.json() == {"msg": "hello"}  # type: ignore[attr-defined]
        primary.call("POST", "/app/log/private", b'{"id": 42, "msg": "later"}')
        receipt_answer = _until(
            lambda: other.call("GET", "/app/log/private/historical_receipt?id=42",
                               headers={"x-ms-ccf-transaction-id": str(txid)}),
            lambda a: a.status == 200, "no historical receipt")
        out = receipt_answer.json()  # type: ignore[attr-defined]
        assert out["msg"] == "hello"
        assert out["receipt"]["leaf_components"]["claims_digest"] == hashlib.sha256(b"hello").hexdigest()
        ccf_check_json_receipt(out["receipt"], x509.load_pem_x509_certificate(Path(cert).read_bytes()))
        api = primary.call("GET", "/app/api").json()
        assert "/app/log/private" in api["paths"]

        # a second bundle from app.json + src/ replaces the first; a handler that never returns is stopped
        looping = workspace / "looping_app"
        (looping / "src").mkdir(parents=True)
        (looping / "app.json").write_text(json.dumps(LOOPING_APP))
        (looping / "src" / "spin.js").write_text(LOOPING_MODULE)
        from app.js_bundle import read_bundle

        signer = MemberSigner.from_pem((common / "member0_privk.pem").read_bytes(),
                                       (common / "member0_cert.pem").read_bytes())
        member = MemberApi(ServiceClient(f"https://127.0.0.1:{port}", cert, timeout=30), signer)
        proposal = member.propose([{"name": "set_js_app", "args": {"bundle": read_bundle(str(looping))}}])
        if proposal["proposalState"] == "Open":
            proposal = member.vote(proposal["proposalId"])
        assert proposal["proposalState"] == "Accepted", proposal
        began = time.monotonic()
        spun = backup.call("POST", "/app/spin", b"{}")
        assert spun.status == 500, spun.body
        assert spun.json()["error"] == {"code": "InternalError", "message": "Operation took too long to complete."}
        assert time.monotonic() - began < 10
        assert primary.call("GET", "/app/log/private?id=42").status == 404  # the logging app is gone
        for client in (primary, backup, other):
            hello = _until(lambda c=client: c.call("GET", "/app/hello"), lambda a: a.status == 200,  # type: ignore
                           "a node stopped serving")
            assert hello.body == b"still here"  # type: ignore[attr-defined]
    finally:
        _kill(pids)
