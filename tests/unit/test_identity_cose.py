"""Identities (`ledger.identity`) and COSE_Sign1 (`ledger.cose`), judged by the `ccf` package where it can."""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from typing import Any

import cbor2
import ccf.cose
import ccf.receipt
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.verification import VerificationError
from hypothesis import given
from hypothesis import strategies as st

from ledger import cose, identity
from ledger.cose import CoseError
from ledger.errors import LedgerError
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity

pytestmark = pytest.mark.unit

CURVES = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
ALG_FOR = {"P-256": cose.ALG_ES256, "P-384": cose.ALG_ES384, "P-521": cose.ALG_ES512}
SIG_SIZE = {"P-256": 64, "P-384": 96, "P-521": 132}


@pytest.fixture(scope="module")
def service() -> ServiceIdentity:
    return ServiceIdentity.create()


@pytest.fixture(scope="module")
def node(service: ServiceIdentity) -> NodeIdentity:
    return NodeIdentity.create().endorsed_by(service)


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(curve) for name, curve in CURVES.items()}


def ext(cert: x509.Certificate, cls: type[Any]) -> Any:
    return cert.extensions.get_extension_for_class(cls)


# --- service identity ----------------------------------------------------------------------------------


def test_service_identity_is_self_signed_ca_on_p384_by_default(service: ServiceIdentity) -> None:
    cert = service.cert
    assert isinstance(service.key.curve, ec.SECP384R1)
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().public_numbers() == service.key.public_key().public_numbers()
    bc = ext(cert, x509.BasicConstraints)
    assert bc.critical
    assert bc.value.ca is True
    ku = ext(cert, x509.KeyUsage).value
    assert ku.key_cert_sign is True
    assert ku.digital_signature is True
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(service.key.public_key())
    assert cert.issuer == cert.subject
    cert.verify_directly_issued_by(cert)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA384)


def test_service_identity_honours_curve_and_validity_period() -> None:
    now = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
    svc = ServiceIdentity.create(curve=ec.SECP256R1(), now=now, days=10)
    assert isinstance(svc.key.curve, ec.SECP256R1)
    assert isinstance(svc.cert.signature_hash_algorithm, hashes.SHA256)
    assert svc.cert.not_valid_before_utc == now - dt.timedelta(minutes=1)
    assert svc.cert.not_valid_after_utc == now - dt.timedelta(minutes=1) + dt.timedelta(days=10)


def test_service_pem_and_kid(service: ServiceIdentity) -> None:
    assert identity.load_cert(service.pem) == service.cert
    spki = service.key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert service.kid == hashlib.sha256(spki).hexdigest()


# --- node identity -----------------------------------------------------------------------------------------


def test_endorsed_node_cert_is_not_ca_has_san_and_service_aki(service: ServiceIdentity, node: NodeIdentity) -> None:
    cert = node.cert
    assert node.endorsed is not None
    assert cert is node.endorsed
    assert ext(cert, x509.BasicConstraints).value.ca is False
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    service_ski = ext(service.cert, x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == service_ski.digest
    assert cert.issuer == service.cert.subject
    assert cert.public_key().public_numbers() == node.key.public_key().public_numbers()
    cert.verify_directly_issued_by(service.cert)


def test_endorsed_node_cert_passes_ccf_endorsement_and_chain_checks(
    service: ServiceIdentity, node: NodeIdentity
) -> None:
    ccf.receipt.check_endorsements(node.cert, service.cert, [])
    ccf.receipt.check_cert_chain(node.cert, service.cert, [])


@pytest.mark.parametrize("curve", ["P-256", "P-521"])
def test_endorsement_works_across_curves(curve: str) -> None:
    svc = ServiceIdentity.create(curve=CURVES[curve])
    nd = NodeIdentity.create(curve=CURVES["P-384"]).endorsed_by(svc)
    ccf.receipt.check_endorsements(nd.cert, svc.cert, [])
    ccf.receipt.check_cert_chain(nd.cert, svc.cert, [])


def test_node_cert_endorsed_by_another_service_fails_ccf_checks(node: NodeIdentity) -> None:
    other = ServiceIdentity.create()
    with pytest.raises(InvalidSignature):
        ccf.receipt.check_endorsements(node.cert, other.cert, [])
    with pytest.raises(VerificationError):
        ccf.receipt.check_cert_chain(node.cert, other.cert, [])


def test_unendorsed_node_uses_self_signed_non_ca_cert() -> None:
    nd = NodeIdentity.create()
    assert nd.endorsed is None
    assert nd.cert is nd.self_signed
    assert ext(nd.cert, x509.BasicConstraints).value.ca is False
    nd.cert.verify_directly_issued_by(nd.cert)
    with pytest.raises(x509.ExtensionNotFound):
        ext(nd.cert, x509.KeyUsage)


def test_endorsed_by_honours_custom_san_hosts(service: ServiceIdentity) -> None:
    nd = NodeIdentity.create().endorsed_by(service, san_hosts=("10.0.0.7", "node.example", "::1"))
    san = ext(nd.cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.7"), ipaddress.ip_address("::1")]
    assert san.get_values_for_type(x509.DNSName) == ["node.example"]


def test_node_id_is_sha256_of_spki_der_and_survives_endorsement(service: ServiceIdentity) -> None:
    nd = NodeIdentity.create()
    spki = nd.key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert nd.node_id == hashlib.sha256(spki).hexdigest()
    assert nd.endorsed_by(service).node_id == nd.node_id
    assert identity.key_id(nd.key.public_key()) == nd.node_id
    assert NodeIdentity.create().node_id != nd.node_id


# --- members and users -------------------------------------------------------------------------------------


def test_party_id_is_sha256_of_der_certificate() -> None:
    party = PartyIdentity.create("member0")
    der = party.cert.public_bytes(serialization.Encoding.DER)
    assert party.id == hashlib.sha256(der).hexdigest()
    assert identity.cert_id(identity.load_cert(party.pem)) == party.id
    assert party.cert.subject.rfc4514_string() == "CN=member0"
    assert ext(party.cert, x509.BasicConstraints).value.ca is False
    assert isinstance(party.key.curve, ec.SECP384R1)
    assert PartyIdentity.create("member0").id != party.id


def test_key_pem_round_trips_and_load_key_rejects_non_ec() -> None:
    key = identity.generate_key(ec.SECP256R1())
    loaded = identity.load_key(identity.key_pem(key))
    assert loaded.private_numbers() == key.private_numbers()
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError):
        identity.load_key(ed)


# --- COSE_Sign1: our own round trip --------------------------------------------------------------------------


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("detached", [False, True])
def test_sign1_is_tagged_decodes_and_verifies(keys: dict[str, Any], curve: str, detached: bool) -> None:
    key = keys[curve]
    payload = b"the payload \x00\xff"
    msg = cose.sign1(key, {cose.HDR_KID: b"kid-1", "ccf.v1": {"txid": "2.7"}}, payload, detached=detached,
                     unprotected={cose.HDR_VDP: {-1: [b"proof"]}})
    assert msg[0] == 0xD2  # CBOR tag 18
    outer = cbor2.loads(msg)
    assert isinstance(outer, cbor2.CBORTag) and outer.tag == 18
    decoded = cose.decode(msg)
    assert decoded.alg == ALG_FOR[curve]
    assert decoded.protected[cose.HDR_ALG] == ALG_FOR[curve]
    assert decoded.protected[cose.HDR_KID] == b"kid-1"
    assert decoded.protected["ccf.v1"] == {"txid": "2.7"}
    assert decoded.unprotected == {cose.HDR_VDP: {-1: [b"proof"]}}
    assert len(decoded.signature) == SIG_SIZE[curve]
    if detached:
        assert decoded.payload is None
        decoded.verify(key.public_key(), payload)
        with pytest.raises(CoseError):
            decoded.verify(key.public_key())  # nothing to verify against
    else:
        assert decoded.payload == payload
        decoded.verify(key.public_key())
        decoded.verify(key.public_key(), payload)


@pytest.mark.parametrize("curve", list(CURVES))
@pytest.mark.parametrize("detached", [False, True])
def test_ccf_validate_cose_sign1_accepts_our_messages(keys: dict[str, Any], curve: str, detached: bool) -> None:
    key = keys[curve]
    payload = b'{"root": "abc"}'
    msg = cose.sign1(key, {cose.HDR_KID: b"k", cose.HDR_VDS: 2, "ccf.v1": {"txid": "1.9"}}, payload,
                     detached=detached)
    if detached:
        ccf.cose.validate_cose_sign1(pubkey=key.public_key(), cose_sign1=msg, payload=payload)
        with pytest.raises(ValueError):
            ccf.cose.validate_cose_sign1(pubkey=key.public_key(), cose_sign1=msg, payload=payload + b"x")
    else:
        ccf.cose.validate_cose_sign1(pubkey=key.public_key(), cose_sign1=msg)


def test_protected_header_alg_defaults_from_key_and_explicit_alg_is_kept(keys: dict[str, Any]) -> None:
    msg = cose.sign1(keys["P-256"], {cose.HDR_ALG: cose.ALG_ES256}, b"p")
    cose.decode(msg).verify(keys["P-256"].public_key())
    assert cose.decode(cose.sign1(keys["P-521"], {}, b"p")).protected == {cose.HDR_ALG: cose.ALG_ES512}


@pytest.mark.parametrize("curve", list(CURVES))
def test_flipped_detached_payload_byte_fails_verification(keys: dict[str, Any], curve: str) -> None:
    key = keys[curve]
    payload = b"0123456789abcdef"
    decoded = cose.decode(cose.sign1(key, {}, payload, detached=True))
    for i in (0, 7, len(payload) - 1):
        tampered = bytearray(payload)
        tampered[i] ^= 0x01
        with pytest.raises(CoseError):
            decoded.verify(key.public_key(), bytes(tampered))


def test_flipped_attached_payload_byte_fails_verification(keys: dict[str, Any]) -> None:
    key = keys["P-384"]
    decoded = cose.decode(cose.sign1(key, {}, b"attached payload"))
    tampered = cose.encode(decoded.phdr_bytes, decoded.unprotected, b"attached paylaod", decoded.signature)
    with pytest.raises(CoseError):
        cose.decode(tampered).verify(key.public_key())


@pytest.mark.parametrize("curve", list(CURVES))
def test_flipped_signature_byte_fails_verification(keys: dict[str, Any], curve: str) -> None:
    key = keys[curve]
    decoded = cose.decode(cose.sign1(key, {}, b"payload"))
    size = SIG_SIZE[curve]
    for i in (0, size // 2 - 1, size // 2, size - 1):
        sig = bytearray(decoded.signature)
        sig[i] ^= 0x80
        tampered = cose.decode(cose.encode(decoded.phdr_bytes, {}, decoded.payload, bytes(sig)))
        with pytest.raises(CoseError):
            tampered.verify(key.public_key())


def test_flipped_protected_header_byte_fails_verification(keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    decoded = cose.decode(cose.sign1(key, {cose.HDR_KID: b"abcd"}, b"payload"))
    phdr = bytearray(decoded.phdr_bytes)
    phdr[-1] ^= 0x01  # inside the kid value
    tampered = cose.decode(cose.encode(bytes(phdr), {}, decoded.payload, decoded.signature))
    assert tampered.protected[cose.HDR_KID] != b"abcd"
    with pytest.raises(CoseError):
        tampered.verify(key.public_key())


def test_unprotected_header_is_not_covered_by_signature(keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    decoded = cose.decode(cose.sign1(key, {}, b"payload", unprotected={4: b"a"}))
    changed = cose.decode(cose.encode(decoded.phdr_bytes, {4: b"b"}, decoded.payload, decoded.signature))
    changed.verify(key.public_key())


def test_wrong_key_fails_verification(keys: dict[str, Any]) -> None:
    msg = cose.decode(cose.sign1(keys["P-384"], {}, b"payload"))
    with pytest.raises(CoseError):
        msg.verify(ec.generate_private_key(ec.SECP384R1()).public_key())  # same curve
    with pytest.raises(CoseError):
        msg.verify(keys["P-256"].public_key())  # other curve
    with pytest.raises(CoseError):
        msg.verify(keys["P-521"].public_key())


def test_signature_of_wrong_length_fails_verification(keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    decoded = cose.decode(cose.sign1(key, {}, b"payload"))
    for sig in (decoded.signature[:-1], decoded.signature + b"\x00", b""):
        with pytest.raises(CoseError):
            cose.decode(cose.encode(decoded.phdr_bytes, {}, decoded.payload, sig)).verify(key.public_key())


def test_protected_header_bytes_are_kept_exactly_as_received(keys: dict[str, Any]) -> None:
    # A non-canonical encoding (keys out of order, a 2-byte length where 1 would do) signed as is:
    # re-encoding the decoded map would change the bytes and break the signature.
    key = keys["P-256"]
    phdr_bytes = bytes.fromhex("a2") + bytes.fromhex("04") + bytes.fromhex("5900024b31") + bytes.fromhex("0126")
    assert cbor2.loads(phdr_bytes) == {4: b"K1", 1: -7}
    assert cbor2.dumps(cbor2.loads(phdr_bytes)) != phdr_bytes
    der = key.sign(cbor2.dumps(["Signature1", phdr_bytes, b"", b"payload"]), ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    msg = cose.encode(phdr_bytes, {}, b"payload", r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    decoded = cose.decode(msg)
    assert decoded.phdr_bytes == phdr_bytes
    decoded.verify(key.public_key())


# --- COSE_Sign1: malformed and unsupported input ---------------------------------------------------------------


def test_untagged_message_is_rejected_unless_tag_not_required(keys: dict[str, Any]) -> None:
    key = keys["P-256"]
    msg = cose.sign1(key, {}, b"payload")
    untagged = cbor2.dumps(cbor2.loads(msg).value)
    with pytest.raises(CoseError):
        cose.decode(untagged)
    decoded = cose.decode(untagged, require_tag=False)
    decoded.verify(key.public_key())


def test_message_with_other_cbor_tag_is_rejected(keys: dict[str, Any]) -> None:
    inner = cbor2.loads(cose.sign1(keys["P-256"], {}, b"payload")).value
    for tag in (98, 17, 61):
        with pytest.raises(CoseError):
            cose.decode(cbor2.dumps(cbor2.CBORTag(tag, inner)))
        with pytest.raises(CoseError):
            cose.decode(cbor2.dumps(cbor2.CBORTag(tag, inner)), require_tag=False)


@pytest.mark.parametrize(
    "value",
    [
        [],
        [b"", {}, None],
        [b"", {}, None, b"", b""],
        {"a": 1},
        b"bytes",
        [b"\xa0", [], None, b"sig"],  # unprotected header not a map
        ["text", {}, None, b"sig"],  # protected header not a bstr
        [b"\xa0", {}, 12, b"sig"],  # payload neither bstr nor nil
        [b"\xa0", {}, "text", b"sig"],
        [b"\xa0", {}, None, "sig"],  # signature not a bstr
        [b"\x80", {}, None, b"sig"],  # protected header decodes to an array
        [b"\xff\xff", {}, None, b"sig"],  # protected header is not CBOR
        [b"\xa1\x01", {}, None, b"sig"],  # protected header is truncated CBOR
    ],
    ids=lambda v: repr(v)[:40],
)
def test_malformed_structures_raise_cose_error(value: Any) -> None:
    with pytest.raises(CoseError):
        cose.decode(cbor2.dumps(cbor2.CBORTag(18, value)))


@pytest.mark.parametrize("data", [b"", b"\xd2", b"\xff", b"\xd2\x84", b"\x9f", b"not cbor at all \xff\xfe"])
def test_garbage_bytes_raise_cose_error(data: bytes) -> None:
    with pytest.raises(CoseError):
        cose.decode(data)


def test_empty_protected_header_decodes_but_has_no_algorithm(keys: dict[str, Any]) -> None:
    decoded = cose.decode(cose.encode(b"", {}, b"payload", bytes(64)))
    assert decoded.protected == {}
    with pytest.raises(CoseError):
        _ = decoded.alg
    with pytest.raises(CoseError):
        decoded.verify(keys["P-256"].public_key())


@pytest.mark.parametrize("alg", [-37, -8, -257, 0, 1, "ES256", -7.0, None, True])
def test_unsupported_alg_in_protected_header_raises_cose_error(keys: dict[str, Any], alg: Any) -> None:
    key = keys["P-256"]
    msg = cose.sign1(key, {cose.HDR_ALG: alg}, b"payload")
    decoded = cose.decode(msg)
    assert decoded.protected[cose.HDR_ALG] == alg
    with pytest.raises(CoseError):
        _ = decoded.alg
    with pytest.raises(CoseError):
        decoded.verify(key.public_key())


def test_alg_that_does_not_match_key_curve_raises_cose_error(keys: dict[str, Any]) -> None:
    # header claims ES256 but the message was signed with P-384
    decoded = cose.decode(cose.sign1(keys["P-384"], {cose.HDR_ALG: cose.ALG_ES256}, b"payload"))
    with pytest.raises(CoseError):
        decoded.verify(keys["P-384"].public_key())
    with pytest.raises(CoseError):
        decoded.verify(keys["P-256"].public_key())


def test_cose_error_is_a_ledger_error() -> None:
    assert issubclass(CoseError, LedgerError)


@pytest.mark.property
@given(data=st.binary(max_size=200))
def test_decode_of_arbitrary_bytes_raises_only_cose_error(data: bytes) -> None:
    try:
        decoded = cose.decode(data)
    except CoseError:
        return
    assert isinstance(decoded, cose.Sign1)
    assert isinstance(decoded.protected, dict)


cbor_leaf = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.binary(max_size=20), st.text(max_size=10),
    st.floats(allow_nan=False),
)
cbor_value = st.recursive(
    cbor_leaf,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.integers(-50, 50), st.text(max_size=5)), children, max_size=4),
        st.builds(cbor2.CBORTag, st.integers(0, 300), children),
    ),
    max_leaves=15,
)


cbor_map = st.dictionaries(st.one_of(st.integers(-50, 50), st.text(max_size=5)), cbor_value, max_size=4)
header_map = st.one_of(
    cbor_map,
    st.fixed_dictionaries({cose.HDR_ALG: st.sampled_from([cose.ALG_ES256, cose.ALG_ES384, cose.ALG_ES512])}),
    st.fixed_dictionaries({cose.HDR_ALG: cbor_value}),
)


@pytest.mark.property
@given(
    # mostly well-shaped (so that decoding gets deep and verify runs), sometimes not
    phdr=st.one_of(header_map.map(cbor2.dumps), st.binary(max_size=30), cbor_value.map(cbor2.dumps)),
    uhdr=st.one_of(cbor_map, cbor_value),
    payload=st.one_of(st.none(), st.binary(max_size=30), cbor_value),
    sig=st.one_of(st.binary(max_size=140), st.binary(min_size=64, max_size=64), cbor_value),
    tagged=st.booleans(),
)
def test_decode_and_verify_of_arbitrary_cose_shaped_input_raise_only_cose_error(
    keys: dict[str, Any], phdr: bytes, uhdr: Any, payload: Any, sig: Any, tagged: bool
) -> None:
    body: Any = [phdr, uhdr, payload, sig]
    data = cbor2.dumps(cbor2.CBORTag(18, body) if tagged else body)
    try:
        decoded = cose.decode(data, require_tag=tagged)
    except CoseError:
        return
    for key in keys.values():
        with pytest.raises(CoseError):
            decoded.verify(key.public_key(), b"payload")


# --- messages made by the ccf package ------------------------------------------------------------------------


@pytest.mark.parametrize("curve", list(CURVES))
def test_ccf_create_cose_sign1_output_decodes_and_verifies_with_our_code(curve: str) -> None:
    party = PartyIdentity.create("member0", curve=CURVES[curve])
    payload = b'{"actions": []}'
    msg = ccf.cose.create_cose_sign1(
        payload,
        identity.key_pem(party.key),
        party.pem,
        {"ccf.gov.msg.type": "proposal", "ccf.gov.msg.created_at": 1700000000},
    )
    decoded = cose.decode(msg)
    assert decoded.payload == payload
    assert decoded.alg == ALG_FOR[curve]
    assert decoded.protected[cose.HDR_KID] == party.id.encode()
    assert decoded.protected["ccf.gov.msg.type"] == "proposal"
    assert decoded.protected["ccf.gov.msg.created_at"] == 1700000000
    decoded.verify(party.key.public_key())
    with pytest.raises(CoseError):
        decoded.verify(party.key.public_key(), payload + b" ")
    with pytest.raises(CoseError):
        decoded.verify(PartyIdentity.create("other", curve=CURVES[curve]).key.public_key())
