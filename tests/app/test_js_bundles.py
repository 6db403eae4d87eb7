"""CCF JavaScript apps built as CCF users build them (npm, `@microsoft/ccf-app` 6.0.1, rollup, ccf-build-bundle; see
tests/js_apps/) and installed with `set_js_app` on an in-process node (issue 14).

The JS logging app answers the Python logging app's requests with the same statuses and bodies and writes the same
bytes to the same maps; its historical endpoints and receipts verify with CCF's own checker; the second app's
`ccf.crypto`, `ccf.historical.getStateRange` and `jwt` policy work. The bundles are built at test time (npm's cache
lives under .venv); without node or the npm registry these tests skip, saying why."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from app.js_generic import app as js_app
from app.logging import app as python_logging_app
from tests.ccf_tools import ccf_check_json_receipt
from tests.js_apps.build import bundle_dir_or_skip, load_bundle
from tests.network.node_harness import Node
from tests.network.test_auth import EC_KEY, jwk_of, token

APP_MAPS = ("records", "public:records", "first_write_version", "public:first_write_version")


def bundle(name: str) -> dict[str, Any]:
    bundle_dir_or_skip(name)
    return load_bundle(name)


def js_node(directory: Path, name: str) -> Node:
    node = Node(str(directory), application=js_app)
    node.open_service()
    proposal = node.pass_proposal([{"name": "set_js_app", "args": {"bundle": bundle(name)}}])
    assert proposal["proposalState"] == "Accepted", proposal
    return node


def body(response: Any) -> Any:
    return orjson.loads(response.body) if response.body else None


def txid_of(response: Any) -> str:
    return str(dict(response.headers)["x-ms-ccf-transaction-id"])


def fetched(node: Node, path: str, headers: dict[str, str] | None = None) -> Any:
    """A GET of past state, asked again while the node answers 202 (it fetches on the host's next turn)."""
    answer = node.user_call("GET", path, headers=headers)
    for _ in range(3):
        if answer.status != 202:
            break
        node.host.run_scheduled()
        answer = node.user_call("GET", path, headers=headers)
    return answer


def historical(node: Node, path: str, txid: str) -> Any:
    return fetched(node, path, {"x-ms-ccf-transaction-id": txid})


REQUESTS: list[tuple[str, str, Any]] = [
    ("POST", "/app/log/private", {"id": 1, "msg": "first"}),
    ("POST", "/app/log/private", {"id": 1, "msg": "second", "record_claim": True}),
    ("POST", "/app/log/public", {"id": 2, "msg": "public one"}),
    ("POST", "/app/log/private", {"id": 3, "msg": ""}),
    ("POST", "/app/log/private", {"id": -1, "msg": "negative"}),
    ("POST", "/app/log/private", b"not json"),
    ("GET", "/app/log/private?id=1", None),
    ("GET", "/app/log/private?id=99", None),
    ("GET", "/app/log/private?id=abc", None),
    ("GET", "/app/log/public?id=2", None),
    ("GET", "/app/log/private/count", None),
    ("DELETE", "/app/log/private?id=1", None),
    ("DELETE", "/app/log/private?id=1", None),
    ("POST", "/app/log/public", {"id": 4, "msg": "another"}),
    ("GET", "/app/log/public/count", None),
    ("DELETE", "/app/log/public/all", None),
    ("GET", "/app/log/public/count", None),
]


def test_the_js_logging_app_answers_and_writes_as_the_python_one(tmp_path: Path) -> None:
    js = js_node(tmp_path / "js", "logging")
    py = Node(str(tmp_path / "py"), application=python_logging_app)
    py.open_service()
    js_first, py_first = js.ledger.last_seqno + 1, py.ledger.last_seqno + 1
    def answer(response: Any, payload: Any) -> Any:
        if payload == b"not json":  # the message is the JSON parser's own: JavaScript's is not orjson's
            return response.status, body(response)["error"]["code"]
        return response.status, body(response)

    for method, path, payload in REQUESTS:
        a, b = js.user_call(method, path, payload), py.user_call(method, path, payload)
        assert answer(a, payload) == answer(b, payload), (method, path, a.body, b.body)
        assert ("x-ms-ccf-transaction-id" in dict(a.headers)) == ("x-ms-ccf-transaction-id" in dict(b.headers))

    def app_writes(node: Node, first: int) -> list[dict[str, Any]]:
        """The app maps' writes, in order; first-write versions are seqnos, counted here from the first request
        (the two services had different numbers of governance transactions before it)."""
        store = node.ledger.store
        out = []
        for seqno in range(first, node.ledger.last_seqno + 1):
            writes = {name: changes for name, changes in store.write_set(seqno).items() if name in APP_MAPS}
            for name in ("first_write_version", "public:first_write_version"):
                if name in writes:
                    writes[name] = {k: None if v is None else int.from_bytes(v, "little") - first
                                    for k, v in writes[name].items()}
            if writes:
                out.append(writes)
        return out

    assert app_writes(js, js_first) == app_writes(py, py_first) != []


def test_js_logging_historical_endpoints_and_receipts_verify_with_ccf(tmp_path: Path) -> None:
    node = js_node(tmp_path, "logging")
    written = node.user_call("POST", "/app/log/private", {"id": 7, "msg": "kept", "record_claim": True})
    txid = txid_of(written)
    node.user_call("POST", "/app/log/private", {"id": 7, "msg": "newer"})
    node.enclave.sign()
    assert body(historical(node, "/app/log/private/historical?id=7", txid)) == {"msg": "kept"}
    assert historical(node, "/app/log/private/historical?id=8", txid).status == 204
    out = body(historical(node, "/app/log/private/historical_receipt?id=7", txid))
    assert out["msg"] == "kept"
    receipt = out["receipt"]
    assert receipt["leaf_components"]["claims_digest"] == hashlib.sha256(b"kept").hexdigest()
    ccf_check_json_receipt(receipt, node.ledger.service.cert)
    missing = node.user_call("GET", "/app/log/private/historical?id=7")
    assert missing.status == 400
    unknown = node.user_call("GET", "/app/log/private/historical?id=7",
                             headers={"x-ms-ccf-transaction-id": "2.100000"})
    assert unknown.status == 404


def test_js_logging_range_reads_every_write_of_a_key(tmp_path: Path) -> None:
    node = js_node(tmp_path, "logging")
    seqnos = [int(txid_of(node.user_call("POST", "/app/log/public", {"id": 5, "msg": f"v{i}"})).split(".")[1])
              for i in range(3)]
    node.enclave.sign()
    answer = fetched(node, f"/app/log/public/historical/range?id=5&from_seqno={seqnos[0]}&to_seqno={seqnos[-1]}")
    assert body(answer)["entries"] == [{"seqno": s, "id": 5, "msg": f"v{i}"} for i, s in enumerate(seqnos)]


@pytest.fixture(scope="module")
def crypto_node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    return js_node(tmp_path_factory.mktemp("js-crypto"), "crypto_jwt")


def test_digest_and_key_wrapping_round_trips(crypto_node: Node) -> None:
    digest = body(crypto_node.user_call("POST", "/app/crypto/digest", {"data": "abc"}))
    assert digest == {"algorithm": "SHA-256", "digest": hashlib.sha256(b"abc").hexdigest()}
    sha384 = body(crypto_node.user_call("POST", "/app/crypto/digest", {"data": "abc", "algorithm": "SHA-384"}))
    assert sha384["digest"] == hashlib.sha384(b"abc").hexdigest()
    for algorithm in ("AES-KWP", "RSA-OAEP", "RSA-OAEP-AES-KWP"):
        wrapped = body(crypto_node.user_call("POST", "/app/crypto/wrap", {"algorithm": algorithm, "size": 128}))
        assert wrapped["round_trip"] is True and wrapped["key_size"] == 16, wrapped


def test_ecdsa_signatures_are_p1363_and_verify_both_ways(crypto_node: Node) -> None:
    signed = body(crypto_node.user_call("POST", "/app/crypto/sign", {"message": "hello", "curve": "secp256r1"}))
    assert signed["verified"] is True and signed["tampered_verified"] is False and signed["jwk_round_trip"] is True
    assert signed["jwk"]["kty"] == "EC" and signed["jwk"]["crv"] == "P-256" and signed["jwk"]["kid"] == "signing-key"
    public = serialization.load_pem_public_key(signed["public_key"].encode())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    raw = bytes.fromhex(signed["signature"])
    assert len(raw) == 64  # r || s, not DER
    der = utils.encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    public.verify(der, b"hello", ec.ECDSA(hashes.SHA256()))  # raises if the signature is wrong
    key = ec.generate_private_key(ec.SECP256R1())
    r, s = utils.decode_dss_signature(key.sign(b"from python", ec.ECDSA(hashes.SHA256())))
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    signature = (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex()
    verify = {"public_key": pem, "message": "from python", "signature": signature}
    assert body(crypto_node.user_call("POST", "/app/crypto/verify", verify)) == {"valid": True}
    assert body(crypto_node.user_call("POST", "/app/crypto/verify", {**verify, "message": "other"})) == \
        {"valid": False}


def test_get_state_range_reads_the_values_of_past_transactions(crypto_node: Node) -> None:
    seqnos = [int(txid_of(crypto_node.user_call("POST", "/app/values", {"id": 9, "value": f"x{i}"})).split(".")[1])
              for i in range(2)]
    crypto_node.enclave.sign()
    answer = fetched(crypto_node, f"/app/history?id=9&from={seqnos[0]}&to={seqnos[-1]}")
    assert body(answer)["entries"] == [{"seqno": seqnos[0], "value": "x0"}, {"seqno": seqnos[1], "value": "x1"}]


def test_the_jwt_policy_gives_the_handler_the_token(crypto_node: Node) -> None:
    issuer = "https://login.example"
    assert crypto_node.pass_proposal([{"name": "set_jwt_issuer", "args": {
        "issuer": issuer, "jwks": {"keys": [jwk_of(EC_KEY, "kid-1")]}}}])["proposalState"] == "Accepted"
    jwt = token(EC_KEY, "kid-1", {"sub": "bob", "iss": issuer, "exp": time.time() + 60})
    answer = crypto_node.call("GET", "/app/jwt", headers={"authorization": f"Bearer {jwt}"})
    assert body(answer) == {"policy": "jwt", "issuer": issuer, "sub": "bob", "kid": "kid-1"}
    assert crypto_node.call("GET", "/app/jwt").status == 401
    assert body(crypto_node.user_call("GET", "/app/whoami")) == {"policy": "user_cert", "id": crypto_node.user.id}


def test_a_bundle_that_cannot_be_built_fails_where_bundles_are_required(monkeypatch: pytest.MonkeyPatch) -> None:
    """`make test` sets PYCCF_REQUIRE_JS_BUNDLES=1: there, no npm is a failure, never a silent skip."""
    import tests.js_apps.build as build

    def unavailable(app: str) -> Path:
        raise build.BundleBuildUnavailable("npm is not installed")

    monkeypatch.setattr(build, "build_bundle", unavailable)
    monkeypatch.setenv(build.REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="npm is not installed"):
        build.bundle_dir_or_skip("logging")
    monkeypatch.setenv(build.REQUIRE_VARIABLE, "0")
    with pytest.raises(pytest.skip.Exception, match="npm is not installed"):
        build.bundle_dir_or_skip("logging")
