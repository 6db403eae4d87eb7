"""An open one-node service as its users and operators see it, over real TLS on 127.0.0.1.

Users write and read records and verify receipts with the `ccf` package; strangers get CCF's 401 after a TLS
handshake that accepts any client certificate; bad HTTP gets the right status and error body and the node keeps
serving; pipelined requests are answered in order; every success names a transaction; `/node/*` answers as
CCF's node API does.
"""

from __future__ import annotations

import base64
import copy
import datetime as dt
import hashlib
import json
import re
import secrets
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from ledger.identity import key_id
from network.client.connection import ServiceClient
from network.enclave.attestation import code_measurement
from tests.ccf_tools import ccf_check_json_receipt
from tests.e2e.conftest import SandboxFactory
from tests.e2e.harness import API_VERSION, TXID, Sandbox, assert_serving, error_code, request

pytestmark = pytest.mark.e2e

MAX_BODY = 64 * 1024
MAX_HEADER = 8 * 1024
TXID_PATTERN = re.compile(r"[0-9]+\.[0-9]+")


@pytest.fixture(scope="module")
def measurement() -> str:
    return code_measurement()


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: SandboxFactory, measurement: str) -> Sandbox:
    made = sandbox_factory(http={"max_body_bytes": MAX_BODY, "max_header_bytes": MAX_HEADER})
    made.start()
    made.open()
    return made


@pytest.fixture(scope="module")
def user(sandbox: Sandbox) -> ServiceClient:
    return sandbox.client("user0")


@pytest.fixture(scope="module")
def anonymous(sandbox: Sandbox) -> ServiceClient:
    return sandbox.client(None)


@pytest.fixture(scope="module")
def service_cert(sandbox: Sandbox) -> x509.Certificate:
    with open(sandbox.service_cert_path, "rb") as f:
        return x509.load_pem_x509_certificate(f.read())


def txid_of(header: str | None) -> tuple[int, int]:
    assert header is not None and TXID_PATTERN.fullmatch(header), header
    view, seqno = header.split(".")
    return int(view), int(seqno)


# --- records and receipts -----------------------------------------------------------------------------


def test_a_user_writes_and_reads_a_private_record_and_its_receipt_verifies_with_ccf(
        sandbox: Sandbox, user: ServiceClient, service_cert: x509.Certificate) -> None:
    msg = f"private record {secrets.token_hex(8)}"
    write = user.call("POST", "/app/log/private", {"id": 1, "msg": msg})
    assert write.status == 200 and write.json() is True, write
    txid = write.txid
    assert txid is not None
    view, seqno = txid_of(txid)

    read = user.call("GET", "/app/log/private?id=1")
    assert read.status == 200 and read.json() == {"msg": msg}, read

    sandbox.wait_for_commit(txid, user, frontend="/app")
    assert user.json_ok("GET", f"/app/tx?transaction_id={txid}") == {"status": "Committed", "transaction_id": txid}
    committed_view, committed_seqno = txid_of(user.json_ok("GET", "/app/commit")["transaction_id"])
    assert (committed_view, committed_seqno) >= (view, seqno)

    receipt = sandbox.receipt(user, txid)
    assert receipt["node_id"] == sandbox.node_id
    assert receipt["leaf_components"]["commit_evidence"].startswith(f"ce:{txid}:")
    assert receipt["proof"], "a write's receipt has a Merkle path to the signed root"
    ccf_check_json_receipt(receipt, service_cert)
    # node_certificate.curve_id defaults to Secp256R1 here: the node's key and the service identity are on P-256
    service_key, node_key = service_cert.public_key(), x509.load_pem_x509_certificate(
        receipt["cert"].encode()).public_key()
    assert isinstance(service_key, ec.EllipticCurvePublicKey) and isinstance(service_key.curve, ec.SECP256R1)
    assert isinstance(node_key, ec.EllipticCurvePublicKey) and isinstance(node_key.curve, ec.SECP256R1)


@pytest.fixture(scope="module")
def receipt(sandbox: Sandbox, user: ServiceClient) -> dict[str, Any]:
    write = user.call("POST", "/app/log/private", {"id": 2, "msg": "a receipt to damage"})
    assert write.status == 200 and write.txid is not None, write
    sandbox.wait_for_commit(write.txid, user, frontend="/app")
    return sandbox.receipt(user, write.txid)


def _flip_hex(text: str) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[len(raw) // 2] ^= 0x01
    return raw.hex()


def _flip_signature(r: dict[str, Any]) -> None:
    sig = bytearray(base64.b64decode(r["signature"]))
    sig[12] ^= 0x01  # inside the DER integer r
    r["signature"] = base64.b64encode(bytes(sig)).decode()


def _flip_proof(index: int) -> Callable[[dict[str, Any]], None]:
    def flip(r: dict[str, Any]) -> None:
        step = r["proof"][index]
        side = "left" if "left" in step else "right"
        step[side] = _flip_hex(step[side])

    return flip


def _flip_write_set(r: dict[str, Any]) -> None:
    r["leaf_components"]["write_set_digest"] = _flip_hex(r["leaf_components"]["write_set_digest"])


def _change_commit_evidence(r: dict[str, Any]) -> None:
    r["leaf_components"]["commit_evidence"] = r["leaf_components"]["commit_evidence"][:-1] + (
        "0" if r["leaf_components"]["commit_evidence"][-1] != "0" else "1")


def _swap_node_cert(r: dict[str, Any]) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    r["cert"] = _self_signed(key, "CCF Node").public_bytes(serialization.Encoding.PEM).decode()


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "signature": _flip_signature,
    "first proof hash": _flip_proof(0),
    "last proof hash": _flip_proof(-1),
    "write set digest": _flip_write_set,
    "commit evidence": _change_commit_evidence,
    "node certificate": _swap_node_cert,
}


@pytest.mark.parametrize("mutation", MUTATIONS)
def test_a_mutated_receipt_fails_ccf_verification(receipt: dict[str, Any], service_cert: x509.Certificate,
                                                  mutation: str) -> None:
    ccf_check_json_receipt(receipt, service_cert)  # the original passes
    damaged = copy.deepcopy(receipt)
    MUTATIONS[mutation](damaged)
    assert damaged != receipt
    with pytest.raises((InvalidSignature, ValueError)):
        ccf_check_json_receipt(damaged, service_cert)


def test_a_receipt_does_not_verify_against_another_service_certificate(receipt: dict[str, Any]) -> None:
    other = _self_signed(ec.generate_private_key(ec.SECP384R1()), "CCF Service")
    with pytest.raises((InvalidSignature, ValueError)):
        ccf_check_json_receipt(receipt, other)


# --- authentication at the TLS and HTTP layers ---------------------------------------------------------


def _self_signed(key: Any, cn: str, *, expired: bool = False) -> x509.Certificate:
    return _issued(key, cn, key, cn, expired=expired)


def _issued(key: Any, cn: str, issuer_key: Any, issuer_cn: str, *, expired: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    start, end = (now - dt.timedelta(days=30), now - dt.timedelta(days=1)) if expired else \
        (now - dt.timedelta(minutes=5), now + dt.timedelta(days=30))
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_cn)]))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .sign(issuer_key, hashes.SHA256()))


def _write_identity(directory: Path, name: str, key: Any, cert: x509.Certificate) -> tuple[str, str]:
    directory.mkdir(exist_ok=True)
    cert_path, key_path = directory / f"{name}_cert.pem", directory / f"{name}_privk.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


def _stranger(sandbox: Sandbox, kind: str) -> tuple[str, str]:
    """A client identity nobody registered: self-signed, expired, issued by an unknown CA, or RSA."""
    directory = sandbox.workspace / "strangers"
    if kind == "rsa":
        rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return _write_identity(directory, kind, rsa_key, _self_signed(rsa_key, "stranger"))
    key = ec.generate_private_key(ec.SECP256R1())
    if kind == "unknown-ca":
        ca_key = ec.generate_private_key(ec.SECP256R1())
        return _write_identity(directory, kind, key, _issued(key, "stranger", ca_key, "Nobody's CA"))
    return _write_identity(directory, kind, key, _self_signed(key, "stranger", expired=kind == "expired"))


def test_an_unknown_client_certificate_gets_401_invalid_authentication_info(
        sandbox: Sandbox, user: ServiceClient) -> None:
    cert, key = _stranger(sandbox, "self-signed")
    stranger = sandbox.client(cert=cert, key=key)
    for method, path, body in (("GET", "/app/log/private?id=1", None),
                               ("POST", "/app/log/private", {"id": 404, "msg": "from a stranger"})):
        answer = stranger.call(method, path, body)
        assert answer.status == 401, answer
        assert error_code(answer) == "InvalidAuthenticationInfo"
        details = answer.json()["error"]["details"]
        assert [d["auth_policy"] for d in details] == ["user_cert"], details
        assert "Could not find matching user certificate" in details[0]["message"], details
    # the refused write wrote nothing
    missing = user.call("GET", "/app/log/private?id=404")
    assert missing.status == 400 and error_code(missing) == "ResourceNotFound", missing


def test_no_client_certificate_gets_401(anonymous: ServiceClient) -> None:
    answer = anonymous.call("GET", "/app/log/private?id=1")
    assert answer.status == 401, answer
    assert error_code(answer) == "InvalidAuthenticationInfo"
    assert "No TLS client certificate" in answer.json()["error"]["details"][0]["message"]


@pytest.mark.parametrize("tls_version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
@pytest.mark.parametrize("kind", ["self-signed", "expired", "unknown-ca", "rsa"])
def test_the_tls_handshake_accepts_any_client_certificate(sandbox: Sandbox, kind: str,
                                                          tls_version: ssl.TLSVersion) -> None:
    """The node asks for a client certificate and takes any; the frontends answer 401 in HTTP."""
    cert, key = _stranger(sandbox, kind)
    context = ssl.create_default_context(cafile=sandbox.service_cert_path)
    context.minimum_version = context.maximum_version = tls_version
    context.load_cert_chain(cert, key)
    with sandbox.raw_with_context(context) as raw:  # connecting completes the handshake
        assert raw.sock.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[
            tls_version]
        raw.send(request("GET", "/app/log/private?id=1"))
        answer = raw.response()
    assert answer.status == 401 and answer.error_code == "InvalidAuthenticationInfo", answer
    # the node saw the certificate (it did not fall back to "no certificate")
    assert "Could not find matching user certificate" in answer.json()["error"]["details"][0]["message"]


# --- bad HTTP input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("garbage", [
    b"THIS IS NOT HTTP\r\n\r\n",
    b"GET /node/commit HTTP/1.1 trailing\r\n\r\n",
    b"GET /node/commit HTTP/7.3\r\nhost: x\r\n\r\n",
    b"\x00\x01\x02\x03\r\n\r\n",
], ids=["words", "extra-token", "bad-version", "binary"])
def test_a_malformed_request_line_gets_400_and_the_connection_is_closed(sandbox: Sandbox, garbage: bytes) -> None:
    with sandbox.raw() as raw:
        raw.send(garbage)
        answer = raw.response()
        assert answer.status == 400, answer
        assert answer.error_code == "InvalidInput"
        assert answer.headers.get("connection") == "close"
        assert raw.closed_by_server()
    assert_serving(sandbox)


def test_garbage_after_a_good_pipelined_request_is_answered_after_it(sandbox: Sandbox) -> None:
    with sandbox.raw() as raw:
        raw.send(request("GET", "/node/commit") + b"NOT HTTP AT ALL\r\n\r\n")
        first, second = raw.response(), raw.response()
        assert first.status == 200 and "transaction_id" in first.json(), first
        assert second.status == 400 and second.error_code == "InvalidInput", second
        assert raw.closed_by_server()
    assert_serving(sandbox)


def _metrics_errors(anonymous: ServiceClient) -> dict[str, int]:
    sessions = anonymous.json_ok("GET", "/node/metrics")["sessions"]
    errors: dict[str, int] = sessions["interfaces"]["primary_rpc_interface"]["errors"]
    return errors


@pytest.mark.parametrize("where", ["header", "target"])
def test_headers_beyond_the_limit_get_431(sandbox: Sandbox, anonymous: ServiceClient, where: str) -> None:
    before = _metrics_errors(anonymous)["request_header_too_large"]
    big = "a" * (MAX_HEADER + 1)
    with sandbox.raw() as raw:
        if where == "header":
            raw.send(request("GET", "/node/commit", headers={"x-big": big}))
        else:
            raw.send(request("GET", f"/node/commit?padding={big}"))
        answer = raw.response()
        assert answer.status == 431 and answer.error_code == "RequestHeaderTooLarge", answer
        assert raw.closed_by_server()
    assert _metrics_errors(anonymous)["request_header_too_large"] == before + 1
    assert_serving(sandbox)


def test_headers_just_within_the_limit_are_served(sandbox: Sandbox) -> None:
    with sandbox.raw() as raw:
        raw.send(request("GET", "/node/commit", headers={"x-big": "a" * (MAX_HEADER // 2)}))
        answer = raw.response()
    assert answer.status == 200, answer


def test_a_declared_body_beyond_the_limit_gets_413(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    before = _metrics_errors(anonymous)["request_payload_too_large"]
    with sandbox.raw("user0") as raw:
        # the headers alone: the node refuses on Content-Length, before any body
        raw.send(request("POST", "/app/log/private", headers={"content-type": "application/json",
                                                                "content-length": str(MAX_BODY + 1)}))
        answer = raw.response()
        assert answer.status == 413 and answer.error_code == "RequestBodyTooLarge", answer
        assert raw.closed_by_server()
    assert _metrics_errors(anonymous)["request_payload_too_large"] == before + 1
    assert_serving(sandbox)


def test_a_chunked_body_beyond_the_limit_gets_413(sandbox: Sandbox) -> None:
    payload = b"x" * (MAX_BODY + 1)
    with sandbox.raw("user0") as raw:
        head = request("POST", "/app/log/private", headers={"content-type": "application/json",
                                                            "transfer-encoding": "chunked"})
        raw.send(head + f"{len(payload):x}\r\n".encode() + payload)
        answer = raw.response()
        assert answer.status == 413 and answer.error_code == "RequestBodyTooLarge", answer
        assert raw.closed_by_server()
    assert_serving(sandbox)


def test_a_body_just_within_the_limit_is_served(user: ServiceClient) -> None:
    body = orjson.dumps({"id": 3, "msg": ""})
    msg = "m" * (MAX_BODY - len(body))
    answer = user.call("POST", "/app/log/public", {"id": 3, "msg": msg})
    assert answer.status == 200, answer
    assert user.json_ok("GET", "/app/log/public?id=3") == {"msg": msg}


def test_a_gov_signed_call_with_another_content_type_gets_415(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    signed = sandbox.member_signer().proposal([{"name": "trigger_ledger_chunk"}])
    answer = anonymous.call("POST", f"/gov/members/proposals:create?{API_VERSION}", signed,
                            content_type="application/json")
    assert answer.status == 415 and error_code(answer) == "UnsupportedContentType", answer
    assert anonymous.json_ok("GET", "/node/commit")  # the same connection still serves
    assert_serving(sandbox)


@pytest.mark.parametrize("body", [b"{not json", b"", b"[1, 2]", b'{"id": "one", "msg": "x"}', b'{"id": 5}'],
                         ids=["broken", "empty", "array", "string-id", "no-msg"])
def test_bad_json_to_log_private_gets_400_invalid_input(sandbox: Sandbox, user: ServiceClient, body: bytes) -> None:
    answer = user.call("POST", "/app/log/private", body, content_type="application/json")
    assert answer.status == 400 and error_code(answer) == "InvalidInput", answer
    assert TXID not in answer.headers
    assert user.call("GET", "/app/log/private?id=1").status == 200
    assert_serving(sandbox)


@pytest.mark.parametrize("path", ["/app/no/such/path", "/gov/no/such/path", "/node/no/such/path", "/elsewhere",
                                  "/"])
def test_an_unknown_path_gets_404_resource_not_found(sandbox: Sandbox, user: ServiceClient, path: str) -> None:
    answer = user.call("GET", path)
    assert answer.status == 404 and error_code(answer) == "ResourceNotFound", answer
    assert_serving(sandbox)


@pytest.mark.parametrize(("method", "path"), [("PUT", "/app/log/private"), ("PATCH", "/app/log/public"),
                                              ("POST", "/node/commit"), ("DELETE", "/gov/api")])
def test_a_known_path_with_another_method_gets_405(sandbox: Sandbox, user: ServiceClient, method: str,
                                                   path: str) -> None:
    answer = user.call(method, path)
    assert answer.status == 405 and error_code(answer) == "UnsupportedHttpVerb", answer
    assert_serving(sandbox)


def test_a_gov_call_without_api_version_gets_400(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    answer = anonymous.call("GET", "/gov/service/info")
    assert answer.status == 400 and error_code(answer) == "MissingApiVersionParameter", answer
    assert_serving(sandbox)


def test_a_gov_call_with_an_unknown_api_version_gets_400(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    answer = anonymous.call("GET", "/gov/service/info?api-version=1999-01-01")
    assert answer.status == 400 and error_code(answer) == "UnsupportedApiVersionValue", answer
    assert "2024-07-01" in answer.json()["error"]["message"]
    assert_serving(sandbox)


@pytest.mark.parametrize("body", [b"garbage", b"", bytes(range(256))], ids=["text", "empty", "binary"])
def test_a_garbage_cose_body_gets_401(sandbox: Sandbox, anonymous: ServiceClient, body: bytes) -> None:
    before = anonymous.json_ok("GET", f"/gov/members/proposals?{API_VERSION}")["value"]
    answer = anonymous.call("POST", f"/gov/members/proposals:create?{API_VERSION}", body,
                            content_type="application/cose")
    assert answer.status == 401 and error_code(answer) == "InvalidAuthenticationInfo", answer
    assert anonymous.json_ok("GET", f"/gov/members/proposals?{API_VERSION}")["value"] == before
    assert_serving(sandbox)


# --- connections ----------------------------------------------------------------------------------------


def test_pipelined_requests_on_one_connection_are_answered_in_order(sandbox: Sandbox, user: ServiceClient) -> None:
    messages = {700 + i: f"pipelined {i} {secrets.token_hex(4)}" for i in range(3)}
    for record_id, msg in messages.items():
        assert user.call("POST", "/app/log/private", {"id": record_id, "msg": msg}).status == 200
    with sandbox.raw("user0") as raw:
        raw.send(b"".join(request("GET", f"/app/log/private?id={i}") for i in messages))  # one write
        answers = [raw.response() for _ in messages]
        assert [(a.status, a.json()) for a in answers] == [(200, {"msg": m}) for m in messages.values()]

        # a write, a read of what it wrote and an anonymous read, in one write: in order, on one transaction line
        raw.send(request("POST", "/app/log/private", orjson.dumps({"id": 710, "msg": "written then read"}))
                 + request("GET", "/app/log/private?id=710") + request("GET", "/node/state"))
        wrote, read, state = raw.response(), raw.response(), raw.response()
        assert (wrote.status, wrote.body) == (200, b"true"), wrote
        assert (read.status, read.json()) == (200, {"msg": "written then read"}), read
        assert state.status == 200 and state.json()["node_id"] == sandbox.node_id, state
        assert txid_of(wrote.headers.get(TXID)) <= txid_of(read.headers.get(TXID))

        # still kept alive; "connection: close" is honoured after the answer
        raw.send(request("GET", "/node/commit", headers={"connection": "close"}))
        last = raw.response()
        assert last.status == 200 and last.headers.get("connection") == "close", last
        assert raw.closed_by_server()


def test_every_successful_response_carries_a_transaction_id(sandbox: Sandbox, user: ServiceClient,
                                                            anonymous: ServiceClient) -> None:
    write = user.call("POST", "/app/log/public", {"id": 800, "msg": "with a txid"})
    assert write.txid is not None
    sandbox.wait_for_commit(write.txid)
    sandbox.receipt(user, write.txid)  # should the node fetch it first (202), it is held for the call below
    signer = sandbox.member_signer()
    calls: list[tuple[ServiceClient, str, str, Any, str | None]] = [
        (user, "POST", "/app/log/private", {"id": 801, "msg": "x"}, None),
        (user, "GET", "/app/log/private?id=801", None, None),
        (user, "GET", "/app/log/private/count", None, None),
        (user, "GET", "/app/log/public?id=800", None, None),
        (user, "DELETE", "/app/log/private?id=801", None, None),
        (user, "GET", "/app/commit", None, None),
        (user, "GET", f"/app/tx?transaction_id={write.txid}", None, None),
        (user, "GET", f"/app/receipt?transaction_id={write.txid}", None, None),
        (user, "GET", "/app/api", None, None),
        (anonymous, "GET", "/node/network", None, None),
        (anonymous, "GET", "/node/ready/app", None, None),
        (anonymous, "GET", "/node/primary", None, None),
        (anonymous, "GET", "/node/quotes/self", None, None),
        (anonymous, "GET", "/gov/commit", None, None),
        (anonymous, "GET", f"/gov/service/info?{API_VERSION}", None, None),
        (anonymous, "GET", f"/gov/service/members?{API_VERSION}", None, None),
        (anonymous, "GET", f"/gov/service/constitution?{API_VERSION}", None, None),
        (anonymous, "POST", f"/gov/members/state-digests/{signer.member_id}:update?{API_VERSION}",
         signer.state_digest_update(), "application/cose"),
    ]
    seen_writes = []
    for client, method, path, body, content_type in calls:
        answer = client.call(method, path, body, content_type=content_type)
        assert 200 <= answer.status < 300, (method, path, answer)
        view, seqno = txid_of(answer.headers.get(TXID))
        assert view >= 2 and seqno >= 1, (path, answer.headers)
        if method in ("POST", "DELETE"):
            seen_writes.append((view, seqno))
    assert seen_writes == sorted(seen_writes) and len(set(seen_writes)) == len(seen_writes), seen_writes


# --- the node API (/node) ----------------------------------------------------------------------------


def test_node_network_describes_the_open_service(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    network = anonymous.json_ok("GET", "/node/network")
    with open(sandbox.service_cert_path) as f:
        assert network["service_certificate"] == f.read()
    assert network["service_status"] == "Open"
    assert network["primary_id"] == sandbox.node_id
    assert isinstance(network["current_view"], int) and network["current_view"] >= 2
    assert network["recovery_count"] == 0
    assert TXID_PATTERN.fullmatch(network["current_service_create_txid"])


def test_node_network_nodes_lists_this_node_as_trusted_primary(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    nodes = anonymous.json_ok("GET", "/node/network/nodes")["nodes"]
    assert [n["node_id"] for n in nodes] == [sandbox.node_id]
    node = nodes[0]
    assert node["status"] == "Trusted" and node["primary"] is True
    assert node["rpc_interfaces"]["primary_rpc_interface"]["published_address"] == f"127.0.0.1:{sandbox.port}"
    assert isinstance(node["last_written"], int)
    assert anonymous.json_ok("GET", "/node/network/nodes/self") == node
    assert anonymous.json_ok("GET", "/node/network/nodes/primary") == node
    assert anonymous.json_ok("GET", f"/node/network/nodes/{sandbox.node_id}") == node
    assert anonymous.json_ok("GET", "/node/network/nodes?status=Trusted")["nodes"] == [node]
    assert anonymous.json_ok("GET", "/node/network/nodes?status=Pending")["nodes"] == []
    assert anonymous.json_ok("GET", f"/node/network/nodes?host=127.0.0.1&port={sandbox.port}")["nodes"] == [node]
    unknown = anonymous.call("GET", f"/node/network/nodes/{'0' * 64}")
    assert unknown.status == 404 and error_code(unknown) == "ResourceNotFound", unknown


def test_head_answers_carry_no_body_so_the_next_answer_on_the_connection_is_intact(sandbox: Sandbox) -> None:
    with sandbox.raw() as raw:
        raw.send(request("HEAD", "/node/primary") + request("HEAD", "/node/commit") + request("GET", "/node/commit"))
        primary, refused, commit = raw.response(head=True), raw.response(head=True), raw.response()
        assert primary.status == 200 and TXID in primary.headers, primary
        assert refused.status == 405, refused
        assert commit.status == 200 and "transaction_id" in commit.json(), commit
        raw.send(request("GET", "/node/version"))  # nothing left over between the answers
        assert raw.response().json()["unsafe"] is False


def test_node_primary_backup_state_version(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    assert anonymous.call("GET", "/node/primary").status == 200
    backup = anonymous.call("GET", "/node/backup")
    assert backup.status == 404 and error_code(backup) == "ResourceNotFound"
    state = anonymous.json_ok("GET", "/node/state")
    assert state["node_id"] == sandbox.node_id and state["state"] == "PartOfNetwork"
    assert isinstance(state["last_signed_seqno"], int) and state["last_signed_seqno"] > 0
    assert isinstance(state["startup_seqno"], int)
    version = anonymous.json_ok("GET", "/node/version")
    assert isinstance(version["ccf_version"], str) and isinstance(version["quickjs_version"], str)
    assert version["unsafe"] is False


def test_node_commit_and_tx(sandbox: Sandbox, user: ServiceClient, anonymous: ServiceClient) -> None:
    write = user.call("POST", "/app/log/public", {"id": 900, "msg": "commit me"})
    assert write.txid is not None
    sandbox.wait_for_commit(write.txid)
    commit = anonymous.json_ok("GET", "/node/commit")["transaction_id"]
    assert txid_of(commit) >= txid_of(write.txid)
    assert anonymous.json_ok("GET", f"/node/tx?transaction_id={commit}")["status"] == "Committed"
    view, seqno = txid_of(commit)
    assert anonymous.json_ok("GET", f"/node/tx?transaction_id={view}.{seqno + 1000}")["status"] == "Unknown"
    assert anonymous.json_ok("GET", f"/node/tx?transaction_id={view - 1}.{seqno}")["status"] == "Invalid"
    for bad in ("", "?transaction_id=banana", "?transaction_id=2"):
        answer = anonymous.call("GET", f"/node/tx{bad}")
        assert answer.status == 400 and error_code(answer) == "InvalidQueryParameterValue", answer


def test_node_quotes_are_virtual_and_bound_to_the_node_key(sandbox: Sandbox, anonymous: ServiceClient,
                                                           measurement: str) -> None:
    quote = anonymous.json_ok("GET", "/node/quotes/self")
    assert quote["format"] == "Insecure_Virtual"
    assert quote["node_id"] == sandbox.node_id
    assert quote["measurement"] == measurement  # the code this test runs is the code the node runs
    raw = json.loads(base64.b64decode(quote["raw"]))
    assert raw["measurement"] == measurement
    assert anonymous.json_ok("GET", "/node/quotes")["quotes"] == [quote]
    # the report data is the node key's digest, and the node id is that key's digest too
    cert = x509.load_pem_x509_certificate(
        anonymous.json_ok("GET", "/node/self_signed_certificate")["self_signed_certificate"].encode())
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert raw["report_data"] == key_id(public_key) == sandbox.node_id
    # the join policy allows that measurement
    policy = anonymous.json_ok("GET", f"/gov/service/join-policy?{API_VERSION}")
    assert measurement in policy["virtual"]["measurements"]


def test_node_self_signed_certificate_holds_the_key_the_node_serves_tls_with(sandbox: Sandbox,
                                                                               anonymous: ServiceClient) -> None:
    pem = anonymous.json_ok("GET", "/node/self_signed_certificate")["self_signed_certificate"]
    self_signed = x509.load_pem_x509_certificate(pem.encode())
    with sandbox.raw() as raw:
        der = raw.sock.getpeercert(binary_form=True)
    assert der is not None
    served = x509.load_der_x509_certificate(der)
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert served.public_key().public_bytes(serialization.Encoding.DER, spki) == \
        self_signed.public_key().public_bytes(serialization.Encoding.DER, spki)
    assert hashlib.sha256(self_signed.public_key().public_bytes(serialization.Encoding.DER, spki)).hexdigest() == \
        sandbox.node_id
    assert served.issuer != served.subject  # the served certificate is the service-endorsed one


def test_node_service_configuration_ready_and_metrics(anonymous: ServiceClient) -> None:
    configuration = anonymous.json_ok("GET", "/node/service/configuration")
    assert configuration["recovery_threshold"] == 1
    for probe in ("/node/ready/app", "/node/ready/gov"):
        answer = anonymous.call("GET", probe)
        assert (answer.status, answer.body) == (204, b""), (probe, answer)
    sessions = anonymous.json_ok("GET", "/node/metrics")["sessions"]
    assert sessions["active"] >= 1 and sessions["peak"] >= sessions["active"]
    interface = sessions["interfaces"]["primary_rpc_interface"]
    assert set(interface["errors"]) == {"parsing", "request_payload_too_large", "request_header_too_large"}
    assert (interface["max_body_bytes"], interface["max_header_bytes"]) == (MAX_BODY, MAX_HEADER)
    previous = anonymous.call("GET", "/node/service/previous_identity")
    assert previous.status == 404 and error_code(previous) == "ResourceNotFound"


def test_gov_service_info_shows_the_service_open(sandbox: Sandbox, anonymous: ServiceClient) -> None:
    info = anonymous.json_ok("GET", f"/gov/service/info?{API_VERSION}")
    assert info["status"] == "Open"
    with open(sandbox.service_cert_path) as f:
        assert info["certificate"] == f.read()
    assert info["configuration"]["recoveryThreshold"] == 1


@pytest.mark.parametrize(("frontend", "expected"), [
    ("/node", {("get", "/network"), ("get", "/network/nodes/{node_id}"), ("get", "/quotes/self"),
               ("get", "/ready/app"), ("get", "/metrics"), ("get", "/commit"), ("get", "/api")}),
    ("/gov", {("post", "/members/proposals:create"), ("get", "/service/info"),
              ("post", "/members/proposals/{proposalId}/ballots/{memberId}:submit"),
              ("get", "/recovery/encrypted-shares/{memberId}"), ("get", "/api")}),
    ("/app", {("post", "/log/private"), ("get", "/log/private"), ("post", "/log/public"), ("get", "/receipt"),
              ("get", "/tx"), ("get", "/api")}),
])
def test_api_is_an_openapi_document_of_the_registered_paths(user: ServiceClient, frontend: str,
                                                            expected: set[tuple[str, str]]) -> None:
    document = user.json_ok("GET", f"{frontend}/api")
    assert document["openapi"].startswith("3.")
    assert isinstance(document["info"]["title"], str)
    registered = {(method, path.removeprefix(frontend)) for path, methods in document["paths"].items()
                  for method in methods}
    assert expected <= registered, expected - registered
