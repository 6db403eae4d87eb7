"""The confidential inference app (`app.inference`) on one enclave: upload, the consortium's approval, inference
whose answer and receipt bind model, input and output, and every refusal the issue names. Models are made here
with `onnx.helper`: a linear layer and a small MLP, checked against numpy."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import orjson
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.inference import app as inference_app
from tests.ccf_tools import ccf_check_json_receipt
from tests.network.node_harness import Node

pytestmark = pytest.mark.unit

RNG = np.random.default_rng(7)
W1, B1 = RNG.normal(size=(4, 8)).astype(np.float32), RNG.normal(size=(8,)).astype(np.float32)
W2, B2 = RNG.normal(size=(8, 3)).astype(np.float32), RNG.normal(size=(3,)).astype(np.float32)


def _model(nodes: list[Any], initialisers: list[Any], out_width: int) -> bytes:
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, out_width])],
                              initialisers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def linear() -> bytes:
    return _model([helper.make_node("Gemm", ["x", "W1", "B1"], ["y"])],
                  [numpy_helper.from_array(W1, "W1"), numpy_helper.from_array(B1, "B1")], 8)


def mlp() -> bytes:
    return _model([helper.make_node("Gemm", ["x", "W1", "B1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
                   helper.make_node("Gemm", ["r", "W2", "B2"], ["y"])],
                  [numpy_helper.from_array(a, n) for a, n in ((W1, "W1"), (B1, "B1"), (W2, "W2"), (B2, "B2"))], 3)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    n = Node(str(tmp_path), application=inference_app)
    n.open_service()
    return n


def upload(node: Node, name: str, model: bytes) -> Any:
    return node.user_call("PUT", f"/app/models/{name}", model,
                          headers={"content-type": "application/octet-stream"})


def approve(node: Node, name: str, digest: str) -> None:
    assert node.pass_proposal([{"name": "approve_model", "args": {"name": name, "digest": digest}}])[
        "proposalState"] == "Accepted"


def error(response: Any) -> tuple[int, str]:
    return response.status, orjson.loads(response.body)["error"]["code"]


def test_an_approved_model_answers_as_numpy_and_binds_model_input_and_output(node: Node) -> None:
    model = mlp()
    up = upload(node, "mlp", model)
    assert up.status == 200, up.body
    digest = hashlib.sha256(model).hexdigest()
    assert orjson.loads(up.body) == {"name": "mlp", "digest": digest, "status": "PendingApproval"}
    x = RNG.normal(size=(2, 4)).astype(np.float32)
    body = orjson.dumps({"inputs": {"x": x.tolist()}})
    assert error(node.user_call("POST", "/app/models/mlp:infer", body)) == (403, "ModelNotApproved")
    approve(node, "mlp", digest)
    listed = orjson.loads(node.user_call("GET", "/app/models").body)["models"]
    assert [(m["name"], m["status"], m["digest"]) for m in listed] == [("mlp", "Approved", digest)]
    assert listed[0]["inputs"] == [{"name": "x", "type": "tensor(float)", "shape": [None, 4]}]
    answer = node.user_call("POST", "/app/models/mlp:infer", body)
    assert answer.status == 200, answer.body
    result = orjson.loads(answer.body)
    expected = np.maximum(x @ W1 + B1, 0) @ W2 + B2
    assert np.allclose(np.array(result["outputs"]["y"]), expected, atol=1e-5)
    claims = result["claims"]
    assert claims["model_digest"] == digest
    assert claims["input_digest"] == hashlib.sha256(body).hexdigest()
    # the output digest covers exactly the `outputs` member's bytes in the answer
    raw_outputs = answer.body[len(b'{"outputs":'): answer.body.index(b',"claims":')]
    assert claims["output_digest"] == hashlib.sha256(raw_outputs).hexdigest()
    triple = b"".join(bytes.fromhex(claims[k]) for k in ("model_digest", "input_digest", "output_digest"))
    seqno = int(dict(answer.headers)["x-ms-ccf-transaction-id"].split(".")[1])
    node.enclave.turn_ended()  # signed and committed (one node)
    receipt = node.ledger.receipt(seqno)
    assert receipt["leaf_components"]["claims_digest"] == hashlib.sha256(triple).hexdigest()
    ccf_check_json_receipt(receipt, node.ledger.service.cert)  # CCF's own verifier


def test_revocation_and_a_new_upload_take_effect_at_the_next_request(node: Node) -> None:
    first, second = linear(), mlp()
    upload(node, "m", first)
    approve(node, "m", hashlib.sha256(first).hexdigest())
    body = orjson.dumps({"inputs": {"x": [[1, 2, 3, 4]]}})
    assert node.user_call("POST", "/app/models/m:infer", body).status == 200
    assert upload(node, "m", second).status == 200  # a new version is pending again
    assert orjson.loads(node.user_call("GET", "/app/models/m").body)["status"] == "PendingApproval"
    assert error(node.user_call("POST", "/app/models/m:infer", body)) == (403, "ModelNotApproved")
    approve(node, "m", hashlib.sha256(second).hexdigest())
    assert len(orjson.loads(node.user_call("POST", "/app/models/m:infer", body).body)["outputs"]["y"][0]) == 3
    assert node.pass_proposal([{"name": "revoke_model", "args": {"name": "m"}}])["proposalState"] == "Accepted"
    assert error(node.user_call("POST", "/app/models/m:infer", body)) == (403, "ModelNotApproved")


def test_bad_models_inputs_and_names_are_refused_with_ccf_errors(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    assert error(upload(node, "junk", b"not a model")) == (400, "InvalidModel")
    monkeypatch.setenv("PYCCF_INFERENCE_MAX_MODEL_BYTES", "100")
    assert error(upload(node, "big", linear())) == (413, "ModelTooLarge")
    monkeypatch.delenv("PYCCF_INFERENCE_MAX_MODEL_BYTES")
    assert error(node.user_call("GET", "/app/models/nope")) == (404, "ModelNotFound")
    assert error(node.user_call("POST", "/app/models/nope:infer", {"inputs": {}})) == (404, "ModelNotFound")
    model = linear()
    upload(node, "lin", model)
    approve(node, "lin", hashlib.sha256(model).hexdigest())
    for inputs, says in [({}, "Missing input 'x'"), ({"x": [[1, 2, 3, 4]], "z": 1}, "Unknown input 'z'"),
                         ({"x": [[1, 2, 3]]}, "shape [1, 3]"), ({"x": [1, 2, 3, 4]}, "shape [4]"),
                         ({"x": [["a", "b", "c", "d"]]}, "not an array of float32")]:
        answer = node.user_call("POST", "/app/models/lin:infer", {"inputs": inputs})
        assert error(answer) == (400, "InvalidInput") and says in orjson.loads(answer.body)["error"]["message"]
    assert error(node.user_call("POST", "/app/models/lin:infer", b"[")) == (400, "InvalidInput")
    # governance refuses a malformed approval
    created = node.gov("/members/proposals:create", node.signer.proposal(
        [{"name": "approve_model", "args": {"name": "lin", "digest": "not-hex"}}]))
    assert created.status == 400 and b"64 lowercase hex digits" in created.body


def test_the_model_weights_are_in_no_node_file_in_the_clear(node: Node, tmp_path: Path) -> None:
    model = mlp()
    upload(node, "secret", model)
    node.enclave.turn_ended()
    node.ledger.flush()
    weights = W2.tobytes()[:64]
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert weights not in path.read_bytes(), path


def test_the_auditor_lists_approvals_revocations_and_inferences_served_from_the_public_ledger(
        node: Node, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from scripts.audit import main as audit

    model = linear()
    digest = hashlib.sha256(model).hexdigest()
    upload(node, "lin", model)
    approve(node, "lin", digest)
    for _ in range(3):
        assert node.user_call("POST", "/app/models/lin:infer", {"inputs": {"x": [[1, 2, 3, 4]]}}).status == 200
    assert node.pass_proposal([{"name": "revoke_model", "args": {"name": "lin"}}])["proposalState"] == "Accepted"
    node.enclave.turn_ended()
    node.ledger.flush()
    assert audit(["models", str(tmp_path / "ledger"), "--uncommitted", "--json"]) == 0
    listed = orjson.loads(capsys.readouterr().out)
    assert [(a["event"], a["model"], a["digest"]) for a in listed["approvals"]] == [
        ("approved", "lin", digest), ("revoked", "lin", None)]
    assert [(s["digest"], s["inferences"]) for s in listed["served"]] == [(digest, 3)]
    assert audit(["models", str(tmp_path / "ledger"), "--uncommitted"]) == 0
    text = capsys.readouterr().out
    assert "approved  lin" in text and "served 3 inferences" in text


def test_inputs_and_outputs_are_recorded_only_when_asked_and_a_failing_model_commits_nothing(node: Node) -> None:
    from app.inference import RECORDS

    model = linear()
    upload(node, "lin", model)
    approve(node, "lin", hashlib.sha256(model).hexdigest())
    assert node.user_call("POST", "/app/models/lin:infer", {"inputs": {"x": [[1, 2, 3, 4]]}}).status == 200
    assert list(node.ledger.read_tx().items(RECORDS)) == []
    kept = node.user_call("POST", "/app/models/lin:infer", {"inputs": {"x": [[4, 3, 2, 1]]}, "record": True})
    assert kept.status == 200
    [(_, record)] = list(node.ledger.read_tx().items(RECORDS))
    assert orjson.loads(record) == {"inputs": {"x": [[4, 3, 2, 1]]}, "outputs": orjson.loads(kept.body)["outputs"]}
    # a model that fails at run time: a reshape the batch size does not fit
    failing = _model([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                     [numpy_helper.from_array(np.array([3, -1], dtype=np.int64), "shape")], 4)
    upload(node, "bad", failing)
    approve(node, "bad", hashlib.sha256(failing).hexdigest())
    before = node.ledger.last_seqno
    answer = node.user_call("POST", "/app/models/bad:infer", {"inputs": {"x": [[1, 2, 3, 4]]}})
    assert error(answer) == (400, "InferenceFailed") and "model failed" in orjson.loads(answer.body)["error"]["message"]
    assert node.ledger.last_seqno == before  # nothing committed
