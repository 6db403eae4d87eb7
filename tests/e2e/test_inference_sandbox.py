"""`make sandbox APP=app.inference:app NODES=3` (issue 13): confidential inference on three real nodes. A model
uploaded through a backup and approved by member0 answers a request sent to another backup (forwarded to the
primary, as CCF forwards writes); the answer's claims are bound into the transaction's receipt, which CCF's
verifier accepts against the service certificate; and no node's file holds the model's weights in the clear."""

from __future__ import annotations

import contextlib
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from cryptography import x509

from governance.member_client import MemberSigner
from network.client.connection import ServiceClient
from network.client.inference import AttestationFailed, verify_inference
from network.client.member_api import MemberApi
from network.client.service import Client, ReceiptInvalid
from tests.app.test_inference import B1, B2, W1, W2, mlp
from tests.ccf_tools import ccf_check_json_receipt
from tests.e2e.harness import free_sandbox_port
from tests.e2e.test_sandbox_recovery import _kill, _pids, _sandbox

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[2]


def test_three_nodes_serve_an_approved_model_with_receipts_and_keep_its_weights_sealed(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    workspace = tmp_path_factory.mktemp("e2e-inference")
    print(f"\nworkspace: {workspace} (kept for inspection)")
    port = free_sandbox_port()
    started = _sandbox(workspace, port, "--nodes", "3", "--app", "app.inference:app")
    assert started.returncode == 0, started.stderr[-2000:] + started.stdout[-2000:]
    assert "approve_model" in started.stdout and "/app/models/mymodel:infer" in started.stdout
    pids = _pids(started.stdout)
    try:
        common = workspace / "sandbox_common"
        cert = str(common / "service_cert.pem")
        user = dict(cert=str(common / "user0_cert.pem"), key=str(common / "user0_privk.pem"), timeout=30)
        backup1 = ServiceClient(f"https://127.0.0.1:{port + 1}", cert, **user)
        backup2 = ServiceClient(f"https://127.0.0.1:{port + 2}", cert, **user)
        # the sandbox returns only once every node serves the app (a backup learns of the opening a moment later
        # than the primary; its app frontend answered FrontendNotOpen until then)
        assert [c.call("GET", "/node/ready/app").status for c in (backup1, backup2)] == [204, 204]
        model = mlp()
        uploaded = backup1.call("PUT", "/app/models/mlp", model, content_type="application/octet-stream")
        assert uploaded.status == 200, uploaded.body
        digest = hashlib.sha256(model).hexdigest()
        assert uploaded.json()["digest"] == digest
        signer = MemberSigner.from_pem((common / "member0_privk.pem").read_bytes(),
                                       (common / "member0_cert.pem").read_bytes())
        member = MemberApi(ServiceClient(f"https://127.0.0.1:{port}", cert, timeout=30), signer)
        proposal = member.propose([{"name": "approve_model", "args": {"name": "mlp", "digest": digest}}])
        if proposal["proposalState"] == "Open":
            proposal = member.vote(proposal["proposalId"])
        assert proposal["proposalState"] == "Accepted", proposal
        x = np.array([[0.5, -1.0, 2.0, 0.25]], dtype=np.float32)
        body = orjson.dumps({"inputs": {"x": x.tolist()}})
        deadline = time.monotonic() + 20
        while (answer := backup2.call("POST", "/app/models/mlp:infer", body)).status == 403:
            assert time.monotonic() < deadline, "the approval never reached the backup"  # replication lag
            time.sleep(0.1)
        assert answer.status == 200, answer.body
        result = answer.json()
        assert np.allclose(result["outputs"]["y"], np.maximum(x @ W1 + B1, 0) @ W2 + B2, atol=1e-5)
        claims = result["claims"]
        triple = b"".join(bytes.fromhex(claims[k]) for k in ("model_digest", "input_digest", "output_digest"))
        txid = answer.txid
        deadline = time.monotonic() + 20
        while (got := backup2.call("GET", f"/app/receipt?transaction_id={txid}")).status != 200:
            assert time.monotonic() < deadline, got.body
            time.sleep(0.1)
        receipt = got.json()
        assert receipt["leaf_components"]["claims_digest"] == hashlib.sha256(triple).hexdigest()
        ccf_check_json_receipt(receipt, x509.load_pem_x509_certificate(Path(cert).read_bytes()))

        # the high-level client: the node attested first, the answer verified offline later
        client = Client([f"https://127.0.0.1:{port + 1}"], cert, cert=user["cert"], key=user["key"])
        kept = client.infer("mlp", {"x": x.tolist()})
        assert np.allclose(kept.outputs["y"], result["outputs"]["y"], atol=1e-6)
        client.wait_for_commit(kept.txid)
        proof = verify_inference(client.receipt(kept.txid), kept.claims, cert, output_bytes=kept.output_bytes)
        assert f"{proof.view}.{proof.seqno}" == kept.txid
        forged = {**kept.claims, "output_digest": hashlib.sha256(b"another answer").hexdigest()}
        with pytest.raises(ReceiptInvalid):
            verify_inference(client.receipt(kept.txid), forged, cert)
        with pytest.raises(ReceiptInvalid, match="not the ones"):
            verify_inference(client.receipt(kept.txid), kept.claims, cert, output_bytes=b'{"y":[[0.0]]}')
        # once governance no longer allows the nodes' measurement, the client refuses to send anything
        quote = client.get("/node/quotes/self")
        proposal = member.propose([{"name": "remove_virtual_measurement",
                                    "args": {"measurement": quote["measurement"]}}])
        if proposal["proposalState"] == "Open":
            proposal = member.vote(proposal["proposalId"])
        assert proposal["proposalState"] == "Accepted", proposal
        deadline = time.monotonic() + 20
        while True:
            try:
                client.infer("mlp", {"x": x.tolist()})
            except AttestationFailed as e:
                assert "not one governance allows" in str(e)
                break
            assert time.monotonic() < deadline, "the backup never saw the measurement removed"
            time.sleep(0.1)
    finally:
        for pid in pids:  # an orderly stop: what the nodes wrote is on disk to be searched
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        time.sleep(3)
        _kill(pids)
    # the auditor's view, from the public part of a ledger alone: which digest was approved and revoked when,
    # and how many inferences it served (two: the raw call and the client's; the third was refused)
    audit = subprocess.run([sys.executable, "scripts/audit.py", "models", str(workspace / "sandbox_0" / "ledger"),
                            "--uncommitted", "--json"], capture_output=True, text=True, cwd=ROOT)
    assert audit.returncode == 0, audit.stderr
    listed = orjson.loads(audit.stdout)
    assert [(a["event"], a["model"], a["digest"]) for a in listed["approvals"]] == [("approved", "mlp", digest)]
    assert [(s["digest"], s["inferences"]) for s in listed["served"]] == [(digest, 2)]
    weights = W2.tobytes()[:64]
    searched = 0
    for path in workspace.rglob("*"):
        if path.is_file():
            searched += 1
            assert weights not in path.read_bytes(), f"the model's weights are in {path} in the clear"
    assert searched > 10
