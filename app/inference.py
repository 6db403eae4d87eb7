"""Confidential inference: ONNX models the consortium approved, answering inside the enclave, with receipts.

Loaded by a node as `app.inference:app`. Users upload models; members approve a model at the digest uploaded
(governance actions `approve_model {name, digest}` and `revoke_model {name}`, recorded in the public map
`public:ccf.gov.models.approved`, so approved digests are public and auditable); clients run them:

- `PUT /app/models/{name}` (user_cert, `application/octet-stream`, the ONNX bytes): the bytes go to the private
  map `models` (encrypted in the ledger, never in plaintext in a node's files), their description to the
  private map `models.info`; answer `{"name", "digest" (SHA-256 hex of the bytes), "status": "PendingApproval"}`.
  413 `ModelTooLarge` beyond the limit (16 MiB; `PYCCF_INFERENCE_MAX_MODEL_BYTES` sets another), 400
  `InvalidModel` with onnxruntime's reason for bytes it cannot load. A new upload under a name is pending again.
- `GET /app/models`: every model (`name`, `digest`, `status`: `Approved` or `PendingApproval`, `inputs` and
  `outputs`: name, element type, shape); `GET /app/models/{name}`: one (404 `ModelNotFound`).
- `POST /app/models/{name}:infer` with `{"inputs": {"<input>": nested lists}, "record"?: bool}` →
  `{"outputs": {"<output>": nested lists}, "claims": {"model_digest", "input_digest", "output_digest"}}`.
  `input_digest` is SHA-256 of the request body as received; `output_digest` is SHA-256 of the `outputs` value
  serialised as compact JSON with keys in the model's output order (`orjson.dumps` of that dict: no spaces,
  floats in their shortest round-trip form), which is exactly the `outputs` member of the answer's bytes. The
  transaction's claims digest is SHA-256(model digest ‖ input digest ‖ output digest), raw 32 bytes each, so its
  receipt proves which model answered which input with which output. The transaction writes the count of
  inferences served per model digest (`public:inference.served`, for auditors) and, only with `"record": true`,
  the inputs and outputs (private map `inference.records`, by transaction). 403 `ModelNotApproved` unless the
  model is approved at the digest uploaded; 404 `ModelNotFound`; 400 `InvalidInput` naming the input for a
  missing or unknown name, a wrong shape or type; 400 `InferenceFailed` with the reason if the model fails at run
  time (nothing is committed then).

Sessions are cached per model digest (each node loads a model once); approvals and revocations are read from
the KV at every request, so they take effect at the next request on every node. The client's side (attested
`infer`, offline `verify_inference`) is in `network/client/inference.py`; `pyccf-audit models` lists approvals
and inferences served from a ledger.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson

from network.enclave.auth import UserCert
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints, Mode
from network.enclave.http import Response

app = Endpoints("/app")

MODELS = "models"  # private: name -> ONNX bytes
MODELS_INFO = "models.info"  # private: name -> JSON description (digest, inputs, outputs)
APPROVED = "public:ccf.gov.models.approved"  # governance: name -> JSON {"digest"}
SERVED = "public:inference.served"  # digest hex -> inferences served (JSON integer)
RECORDS = "inference.records"  # private: "<model digest>:<input digest>" -> JSON {inputs, outputs}, on request
USER = (UserCert(),)
DEFAULT_MAX_MODEL_BYTES = 16 * 1024 * 1024

# onnxruntime's element types and the numpy dtypes inputs are converted to
_ELEMENT_TYPES = {"tensor(float)": "float32", "tensor(double)": "float64", "tensor(int64)": "int64",
                  "tensor(int32)": "int32", "tensor(bool)": "bool"}
_sessions: dict[str, Any] = {}  # model digest -> onnxruntime.InferenceSession (this node's cache)


def max_model_bytes() -> int:
    return int(os.environ.get("PYCCF_INFERENCE_MAX_MODEL_BYTES", DEFAULT_MAX_MODEL_BYTES))


def _load(model: bytes) -> Any:
    import onnxruntime  # type: ignore[import-untyped]  # on first use: a node serving another app never loads it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the node's loop runs one request at a time
    return onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])


def _session(digest: str, model: bytes) -> Any:
    session = _sessions.get(digest)
    if session is None:
        session = _sessions[digest] = _load(model)
    return session


def _signature(args: list[Any]) -> list[dict[str, Any]]:
    return [{"name": a.name, "type": a.type, "shape": [d if isinstance(d, int) else None for d in a.shape]}
            for a in args]


def _name(ctx: EndpointContext) -> str:
    name = ctx.params["name"]
    if not name or len(name) > 128 or not all(c.isalnum() or c in "-_." for c in name):
        raise EndpointError(400, "InvalidInput", "A model name is 1-128 letters, digits, '-', '_' or '.'")
    return name


def _info(ctx: EndpointContext, name: str) -> dict[str, Any]:
    raw = ctx.tx.get(MODELS_INFO, name.encode())
    if raw is None:
        raise EndpointError(404, "ModelNotFound", f"No model named {name!r}")
    info: dict[str, Any] = orjson.loads(raw)
    approved = ctx.tx.get(APPROVED, name.encode())
    approved_digest = orjson.loads(approved).get("digest") if approved is not None else None
    info["status"] = "Approved" if approved_digest == info["digest"] else "PendingApproval"
    return info


@app.endpoint("PUT", "/models/{name}", mode=Mode.READWRITE, auth=USER)
def upload_model(ctx: EndpointContext) -> dict[str, Any]:
    """Upload an ONNX model (pending until members approve its digest)."""
    name = _name(ctx)
    model = ctx.request.body
    limit = max_model_bytes()
    if len(model) > limit:
        raise EndpointError(413, "ModelTooLarge", f"A model is at most {limit} bytes; this one is {len(model)}")
    try:
        session = _load(model)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for every kind of bad model
        raise EndpointError(400, "InvalidModel", f"onnxruntime cannot load the model: {e}") from None
    digest = hashlib.sha256(model).hexdigest()
    _sessions.setdefault(digest, session)
    info = {"name": name, "digest": digest, "size": len(model), "inputs": _signature(session.get_inputs()),
            "outputs": _signature(session.get_outputs())}
    ctx.tx.put(MODELS, name.encode(), model)
    ctx.tx.put(MODELS_INFO, name.encode(), orjson.dumps(info))
    return {"name": name, "digest": digest, "status": "PendingApproval"}


@app.endpoint("GET", "/models", auth=USER)
def list_models(ctx: EndpointContext) -> dict[str, Any]:
    """Every model: digest, approval, input and output signatures."""
    names = sorted(key.decode() for key, _ in ctx.tx.items(MODELS_INFO))
    return {"models": [_info(ctx, name) for name in names]}


@app.endpoint("GET", "/models/{name}", auth=USER)
def get_model(ctx: EndpointContext) -> dict[str, Any]:
    """One model's digest, approval and signatures."""
    return _info(ctx, _name(ctx))


def _inputs(body: Any, signature: list[dict[str, Any]]) -> dict[str, Any]:
    import numpy

    if not isinstance(body, dict) or not isinstance(body.get("inputs"), dict):
        raise EndpointError(400, "InvalidInput", 'Body must be {"inputs": {"<input name>": nested lists}}')
    given: dict[str, Any] = body["inputs"]
    expected = {s["name"]: s for s in signature}
    if unknown := sorted(set(given) - set(expected)):
        raise EndpointError(400, "InvalidInput", f"Unknown input {unknown[0]!r}; the model takes {sorted(expected)}")
    feeds: dict[str, Any] = {}
    for name, spec in expected.items():
        if name not in given:
            raise EndpointError(400, "InvalidInput", f"Missing input {name!r}")
        dtype = _ELEMENT_TYPES.get(spec["type"])
        if dtype is None:
            raise EndpointError(400, "InvalidInput",
                                f"Input {name!r} has a type this app does not take: {spec['type']}")
        try:
            array = numpy.asarray(given[name], dtype=dtype)
        except (TypeError, ValueError) as e:
            raise EndpointError(400, "InvalidInput", f"Input {name!r} is not an array of {dtype}: {e}") from None
        shape = spec["shape"]
        if array.ndim != len(shape) or any(want is not None and want != got for want, got in zip(shape, array.shape,
                                                                                              strict=True)):
            raise EndpointError(400, "InvalidInput", f"Input {name!r} has shape {list(array.shape)}, the model "
                                                     f"takes {[d if d is not None else 'any' for d in shape]}")
        feeds[name] = array
    return feeds


@app.endpoint("POST", "/models/{name}:infer", mode=Mode.READWRITE, auth=USER)
def infer(ctx: EndpointContext) -> Any:
    """Run an approved model; the receipt's claims digest binds model, input and output."""
    name = _name(ctx)
    info = _info(ctx, name)
    if info["status"] != "Approved":
        raise EndpointError(403, "ModelNotApproved", f"Model {name!r} is not approved at digest {info['digest']}")
    body = ctx.request.body
    request = ctx.json()  # parsed once: the inputs, and whether to record them
    feeds = _inputs(request, info["inputs"])
    model = ctx.tx.get(MODELS, name.encode())
    assert model is not None
    try:
        results = _session(info["digest"], model).run(None, feeds)
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors at run time
        raise EndpointError(400, "InferenceFailed", f"The model failed: {e}") from None
    outputs = {spec["name"]: value.tolist() for spec, value in zip(info["outputs"], results, strict=True)}
    output_bytes = orjson.dumps(outputs)
    model_digest = bytes.fromhex(info["digest"])
    input_digest = hashlib.sha256(body).digest()
    output_digest = hashlib.sha256(output_bytes).digest()
    ctx.set_claims_digest(hashlib.sha256(model_digest + input_digest + output_digest).digest())
    served = ctx.tx.get(SERVED, info["digest"].encode())
    ctx.tx.put(SERVED, info["digest"].encode(), orjson.dumps((orjson.loads(served) if served else 0) + 1))
    if request.get("record") is True:
        ctx.tx.put(RECORDS, f"{info['digest']}:{input_digest.hex()}".encode(),
                   orjson.dumps({"inputs": request["inputs"], "outputs": outputs}))
    claims = {"model_digest": info["digest"], "input_digest": input_digest.hex(),
              "output_digest": output_digest.hex()}
    # the outputs' bytes in the answer are exactly those `output_digest` covers
    return Response(200, b'{"outputs":' + output_bytes + b',"claims":' + orjson.dumps(claims) + b"}",
                    (("content-type", "application/json"),))
