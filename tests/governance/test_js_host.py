"""`ccf.crypto.*`, `ccf.pemToId` and `ccf.network.*` as governance JavaScript sees them."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

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
    with pytest.raises(JSCallFailed, match="unsupported digest algorithm MD5"):
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
    r, s = utils.decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")  # CCF's ECDSA signatures are IEEE P1363: r || s
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


def test_the_deprecated_top_level_names_and_more_digests_are_there() -> None:
    pem = PartyIdentity.create("m").pem
    service = ServiceIdentity.create()
    node_pem, service_pem = cert_pem(NodeIdentity.create().endorsed_by(service).cert), service.pem
    source = f"""
    export function f() {{
      const data = ccf.strToBuf("abc");
      const hex = (b) => [...new Uint8Array(b)].map((x) => x.toString(16).padStart(2, "0")).join("");
      return {{ old: hex(ccf.digest("SHA-256", data)), s384: hex(ccf.crypto.digest("SHA-384", data)),
               s512: hex(ccf.crypto.digest("SHA-512", data)), bundle: ccf.isValidX509CertBundle({pem!r}),
               notBundle: ccf.isValidX509CertBundle("nope"),
               chain: ccf.isValidX509CertChain({node_pem!r}, {service_pem!r}),
               metrics: [ccf.enableMetricsLogging(false), ccf.enableMetricsLogging(true)],
               untrustedTime: ccf.enableUntrustedDateTime(true) }};
    }}"""
    assert run(source) == {
        "old": hashlib.sha256(b"abc").hexdigest(), "s384": hashlib.sha384(b"abc").hexdigest(),
        "s512": hashlib.sha512(b"abc").hexdigest(), "bundle": True, "notBundle": False, "chain": True,
        "metrics": [True, False], "untrustedTime": False}
    with pytest.raises(JSCallFailed, match="unsupported digest algorithm MD5"):
        run('export function f() { ccf.crypto.digest("MD5", ccf.strToBuf("x")); }')


def test_public_keys_convert_between_pem_and_jwk_both_ways() -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    ec_pem = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    source = f"""
    export function f() {{
      const ecJwk = ccf.crypto.pubPemToJwk({ec_pem!r}, "k1");
      const rsaJwk = ccf.crypto.pubRsaPemToJwk({rsa_pem!r});
      return {{ ecJwk, ecBack: ccf.crypto.pubJwkToPem(ecJwk), rsaE: rsaJwk.e, rsaKid: rsaJwk.kid === undefined,
               rsaBack: ccf.crypto.pubRsaJwkToPem(rsaJwk) }};
    }}"""
    out = run(source)
    assert isinstance(out, dict)
    assert out["ecJwk"]["kty"] == "EC" and out["ecJwk"]["crv"] == "P-384" and out["ecJwk"]["kid"] == "k1"
    assert len(out["ecJwk"]["x"]) == 64  # 48 bytes, base64url without padding
    assert out["ecBack"] == ec_pem and out["rsaBack"] == rsa_pem
    assert out["rsaE"] == "AQAB" and out["rsaKid"] is True
    with pytest.raises(JSCallFailed, match="not an EC public key"):
        run(f"export function f() {{ ccf.crypto.pubPemToJwk({rsa_pem!r}); }}")
    with pytest.raises(JSCallFailed, match="expected an EC JWK"):
        run('export function f() { ccf.crypto.pubJwkToPem({kty: "EC", crv: "P-192", x: "AA", y: "AA"}); }')


def test_a_constitution_in_ccfs_style_checks_a_jwks_and_records_an_ack_without_a_value() -> None:
    """Written like CCF's default actions.js: helpers over ccf.crypto, a Map of actions, and `set(key)` with no
    value (as the set_member action of CCF's sample constitution writes the new member's ack record)."""
    ec_pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    source = """
    function checkType(value, type, field) {
      const optional = type.endsWith("?");
      if (optional) { if (value === null || value === undefined) return; type = type.slice(0, -1); }
      if (type === "array" ? !Array.isArray(value) : typeof value !== type) {
        throw new Error(`${field} must be of type ${type}`);
      }
    }
    function checkJwks(value, field) {
      checkType(value, "object", field);
      checkType(value.keys, "array", `${field}.keys`);
      for (const [i, jwk] of value.keys.entries()) {
        checkType(jwk.kid, "string", `${field}.keys[${i}].kid`);
        ccf.crypto.pubJwkToPem(jwk);
      }
    }
    const actions = new Map([["set_jwks", { validate: (args) => checkJwks(args.jwks, "jwks"),
      apply: (args) => ccf.kv["public:ccf.gov.members.acks"].set(ccf.strToBuf(args.who)) }]]);
    export function go(args) {
      actions.get("set_jwks").validate(args);
      actions.get("set_jwks").apply(args);
      return ccf.kv["public:ccf.gov.members.acks"].get(ccf.strToBuf(args.who)).byteLength;
    }"""
    jwk = {"kid": "k", **{k: v for k, v in _jwk_of(ec_pem).items() if k != "kid"}}
    store = Store()
    result = call_export(source, "go", [{"jwks": {"keys": [jwk]}, "who": "m1"}], store.begin(), writable=True)
    assert result.value == 0 and result.writes == {"public:ccf.gov.members.acks": {b"m1": b""}}
    with pytest.raises(JSCallFailed, match="jwks.keys\\[0\\].kid must be of type string"):
        call_export(source, "go", [{"jwks": {"keys": [{"kty": "EC"}]}, "who": "m1"}], store.begin(), writable=True)


def _jwk_of(pem: str) -> dict[str, str]:
    from governance.js_host import pub_pem_to_jwk

    return pub_pem_to_jwk(pem)


def _self_signed(ca: bool | None) -> str:
    """A self-signed P-256 certificate; `ca` is its basicConstraints CA flag (None: no such extension)."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "root?")])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def test_root_ca_certificates_are_self_signed_cas_one_at_a_time() -> None:
    """CCF's isValidX509RootCACert, which its newer constitutions call on every certificate of a CA bundle: a CA
    (basicConstraints CA:TRUE) that signed itself; not a CA:FALSE or extension-less self-signed certificate, not a
    certificate another CA issued, not two certificates at once, not garbage."""
    service = ServiceIdentity.create()
    node = NodeIdentity.create().endorsed_by(service)
    assert node.endorsed is not None
    source = "export function f(pem) { return ccf.crypto.isValidX509RootCACert(pem); }"
    assert run(source, service.pem) is True
    assert run(source, _self_signed(True)) is True
    for pem in (_self_signed(False), _self_signed(None), cert_pem(node.endorsed), service.pem + _self_signed(True),
                "not a certificate"):
        assert run(source, pem) is False


def test_constitutions_get_all_of_ccf_crypto_and_the_older_top_level_names() -> None:
    """Key generation, signing, wrapping and every PEM/JWK conversion, as CCF's crypto extension gives them to
    governance code; answers are fixed per call, so a re-run sees the same keys, and two calls two keys."""
    source = """export function f() {
      const rec = ccf.kv["public:ccf.gov.members.info"].get(ccf.strToBuf("absent"));  // a map load: a re-run
      const a = ccf.crypto.generateAesKey(256), b = ccf.generateAesKey(256);
      const bytes = (x) => Array.from(new Uint8Array(x)).join(",");
      const ec = ccf.crypto.generateEcdsaKeyPair("secp384r1");
      const msg = ccf.strToBuf("hello");
      const sig = ccf.crypto.sign({ name: "ECDSA", hash: "SHA-256" }, ec.privateKey, msg);
      const ed = ccf.crypto.generateEddsaKeyPair("curve25519");
      const edSig = ccf.crypto.sign({ name: "EdDSA" }, ed.privateKey, msg);
      const rsa = ccf.generateRsaKeyPair(2048);
      const wrapped = ccf.wrapKey(a, ccf.strToBuf(rsa.publicKey), { name: "RSA-OAEP-AES-KWP", aesKeySize: 256 });
      const unwrapped = ccf.crypto.unwrapKey(wrapped, ccf.strToBuf(rsa.privateKey),
                                             { name: "RSA-OAEP-AES-KWP", aesKeySize: 256 });
      const jwk = ccf.crypto.pemToJwk(ec.privateKey, "k");
      const rsaJwk = ccf.crypto.rsaPemToJwk(rsa.privateKey);
      const edJwk = ccf.crypto.eddsaPemToJwk(ed.privateKey);
      return {
        absent: rec === undefined, distinct: bytes(a) !== bytes(b), aes: a.byteLength,
        ecdsa: [sig.byteLength, ccf.crypto.verifySignature({ name: "ECDSA", hash: "SHA-256" }, ec.publicKey, sig, msg)],
        eddsa: ccf.crypto.verifySignature({ name: "EdDSA" }, ed.publicKey, edSig, msg),
        unwrapped: bytes(unwrapped) === bytes(a),
        jwk: [jwk.kty, jwk.crv, jwk.kid, typeof jwk.d, ccf.crypto.pubJwkToPem(jwk) === ec.publicKey,
              ccf.crypto.pemToJwk(ccf.crypto.jwkToPem(jwk)).d === jwk.d],
        rsa: [rsaJwk.kty, typeof rsaJwk.qi, ccf.crypto.rsaPemToJwk(ccf.crypto.rsaJwkToPem(rsaJwk)).d === rsaJwk.d],
        eddsa_jwk: [edJwk.kty, edJwk.crv, ccf.crypto.eddsaJwkToPem(edJwk) === ed.privateKey,
                    ccf.crypto.pubEddsaJwkToPem(ccf.crypto.pubEddsaPemToJwk(ed.publicKey)) === ed.publicKey],
      };
    }"""
    assert run(source) == {"absent": True, "distinct": True, "aes": 32, "ecdsa": [96, True], "eddsa": True,
                           "unwrapped": True, "jwk": ["EC", "P-384", "k", "string", True, True],
                           "rsa": ["RSA", "string", True], "eddsa_jwk": ["OKP", "Ed25519", True, True]}
