"""`ccf.crypto.*`, `ccf.pemToId` and `ccf.network.*` as governance JavaScript sees them."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from governance.js_runtime import JSCallFailed, call_export
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_pem
from ledger.kv import Store

pytestmark = pytest.mark.unit


def run(source: str, *args: object, **kwargs: object) -> object:
    return call_export(source, "f", list(args), Store().read_tx(), **kwargs).value  # type: ignore[arg-type]


def test_digest_and_pem_to_id_match_the_host() -> None:
    member = PartyIdentity.create("m")
    source = """export function f(text, pem) {
      const d = new Uint8Array(ccf.crypto.digest("SHA-256", ccf.strToBuf(text)));
      return [Array.from(d).map((b) => b.toString(16).padStart(2, "0")).join(""), ccf.pemToId(pem)];
    }"""
    assert run(source, "abc", member.pem) == [hashlib.sha256(b"abc").hexdigest(), member.id]
    with pytest.raises(JSCallFailed, match="unsupported digest algorithm"):
        run('export function f() { return ccf.crypto.digest("MD5", ccf.strToBuf("x")); }')


def test_certificate_bundle_and_chain_checks() -> None:
    service = ServiceIdentity.create()
    node = NodeIdentity.create().endorsed_by(service)
    assert node.endorsed is not None
    source = """export function f(bundle, chain, trusted, stranger) {
      return [ccf.crypto.isValidX509CertBundle(bundle), ccf.crypto.isValidX509CertBundle("not a cert"),
              ccf.crypto.isValidX509CertChain(chain, trusted), ccf.crypto.isValidX509CertChain(chain, stranger)];
    }"""
    other = ServiceIdentity.create()
    assert run(source, service.pem + other.pem, cert_pem(node.endorsed), service.pem, other.pem) == [
        True, False, True, False]


def test_verify_signature_with_ecdsa_keys() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    data = b"signed data"
    signature = key.sign(data, ec.ECDSA(hashes.SHA256()))
    source = """export function f(pub, sig, data) {
      const alg = { name: "ECDSA", hash: "SHA-256" };
      const hex = (h) => new Uint8Array(h.match(/../g).map((x) => parseInt(x, 16))).buffer;
      return [ccf.crypto.verifySignature(alg, pub, hex(sig), ccf.strToBuf(data)),
              ccf.crypto.verifySignature(alg, pub, hex(sig), ccf.strToBuf(data + "!"))];
    }"""
    assert run(source, pub.decode(), signature.hex(), data.decode()) == [True, False]


def test_network_calls_need_the_node_and_effects_need_apply() -> None:
    source = 'export function f() { return ccf.network.generateNetworkCertificate("20260101000000Z", 365); }'
    with pytest.raises(JSCallFailed, match="not available here"):
        run(source)
    assert run(source, host_calls={"generateNetworkCertificate": lambda start, days: f"cert {start} {days}"}) == \
        "cert 20260101000000Z 365"
    with pytest.raises(JSCallFailed, match="only available in apply"):
        run("export function f() { ccf.node.triggerLedgerRekey(); }")
    assert run("export function f() { return ccf.network.getLatestLedgerSecretSeqno(); }",
               host={"latest_ledger_secret_seqno": 42}) == 42


def test_crypto_is_withheld_where_ccf_withholds_it() -> None:
    source = 'export function f() { return ccf.crypto.isValidX509CertBundle("x"); }'
    assert run(source) is False
    with pytest.raises(JSCallFailed, match="only available in validate and apply"):
        run(source, crypto=False)
