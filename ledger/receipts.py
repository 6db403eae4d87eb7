"""Receipts: issue JSON and COSE receipts, and verify them offline trusting only the service certificate.

Shapes (CCF's include/ccf/receipt.h, doc/audit/receipts.rst):
- JSON (describe_receipt_v1): {cert, leaf_components {claims_digest, commit_evidence, write_set_digest},
  node_id, proof [{left|right: hex}], signature, service_endorsements?}; for a signature transaction
  {cert, leaf: root, node_id, proof: [], signature}.
- COSE: the covering signature's COSE_Sign1 (same protected header and signature, detached payload) with
  unprotected header {396: {-1: [bstr(cbor({1: [wsd, commit_evidence, claims], 2: [[is_left, hash]...]}))]}}.

The verifiers are pure functions, independent of the `ccf` package. They return what they proved
(`VerifiedReceipt`) or raise a `ReceiptError` subclass naming the check that failed.

Speed: a JSON receipt costs one ECDSA verification (the node's signature over the root) plus hashing. The
parsed node certificate and the successful check of its endorsement chain up to the trusted service
certificate are cached per exact (certificate PEMs, service certificate object) (bounded caches); failures
are never cached, so a receipt with another certificate or endorsement is checked in full.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cbor2
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from ledger import cose
from ledger.errors import (
    ReceiptClaimsMismatch,
    ReceiptEndorsementError,
    ReceiptFormatError,
    ReceiptSignatureError,
)
from ledger.identity import key_id
from ledger.merkle import PathStep, fold_path
from ledger.signatures import VDS_CCF_LEDGER_SHA256, PrimarySignature

_ECDSA_PREHASHED_SHA256 = ec.ECDSA(utils.Prehashed(hashes.SHA256()))
VDP_INCLUSION_PROOFS = -1
PROOF_LEAF = 1
PROOF_PATH = 2
_COMMIT_EVIDENCE = re.compile(r"^ce:(\d+)\.(\d+):([0-9a-f]{64})$")


def _leaf(wsd: bytes, commit_evidence: str, claims: bytes) -> bytes:
    return hashlib.sha256(wsd + hashlib.sha256(commit_evidence.encode()).digest() + claims).digest()


# --- issuing -----------------------------------------------------------------------------------------


def json_receipt(
    *,
    write_set_digest: bytes,
    commit_evidence: str,
    claims_digest: bytes,
    path: list[PathStep],
    signature: PrimarySignature,
    service_endorsements: list[str] | None = None,
) -> dict[str, Any]:
    receipt: dict[str, Any] = {
        "cert": signature.cert,
        "leaf_components": {
            "claims_digest": claims_digest.hex(),
            "commit_evidence": commit_evidence,
            "write_set_digest": write_set_digest.hex(),
        },
        "node_id": signature.node,
        "proof": [{"left": h.hex()} if is_left else {"right": h.hex()} for is_left, h in path],
        "signature": base64.b64encode(signature.sig).decode(),
    }
    if service_endorsements:
        receipt["service_endorsements"] = list(service_endorsements)
    return receipt


def json_receipt_for_signature(signature: PrimarySignature,
                               service_endorsements: list[str] | None = None) -> dict[str, Any]:
    receipt: dict[str, Any] = {
        "cert": signature.cert,
        "leaf": signature.root.hex(),
        "node_id": signature.node,
        "proof": [],
        "signature": base64.b64encode(signature.sig).decode(),
    }
    if service_endorsements:
        receipt["service_endorsements"] = list(service_endorsements)
    return receipt


def cose_receipt(
    signature_cose: bytes, *, write_set_digest: bytes, commit_evidence: str, claims_digest: bytes,
    path: list[PathStep]
) -> bytes:
    sig = cose.decode(signature_cose)
    proof = cbor2.dumps({
        PROOF_LEAF: [write_set_digest, commit_evidence, claims_digest],
        PROOF_PATH: [[is_left, h] for is_left, h in path],
    })
    return cose.encode(sig.phdr_bytes, {cose.HDR_VDP: {VDP_INCLUSION_PROOFS: [proof]}}, None, sig.signature)


# --- verifying ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedReceipt:
    """What a receipt proved: a transaction (when it names one) is in the tree whose root was signed."""

    root: bytes
    leaf: bytes
    view: int | None
    seqno: int | None
    claims_digest: bytes | None
    write_set_digest: bytes | None
    is_signature: bool = False


def _hex(value: Any, what: str, size: int | None = 32) -> bytes:
    if not isinstance(value, str):
        raise ReceiptFormatError(f"{what} must be a hex string")
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise ReceiptFormatError(f"{what} is not hex") from None
    if size is not None and len(raw) != size:
        raise ReceiptFormatError(f"{what} must be {size} bytes, got {len(raw)}")
    return raw


def _cert(pem: Any, what: str) -> x509.Certificate:
    if not isinstance(pem, str):
        raise ReceiptFormatError(f"{what} must be a PEM string")
    try:
        return x509.load_pem_x509_certificate(pem.encode())
    except (ValueError, x509.InvalidVersion) as e:
        raise ReceiptFormatError(f"{what} is not a PEM certificate: {e}") from None


def _parse_commit_evidence(ce: Any) -> tuple[int, int]:
    if not isinstance(ce, str):
        raise ReceiptFormatError("commit_evidence must be a string")
    m = _COMMIT_EVIDENCE.match(ce)
    if not m:
        raise ReceiptFormatError(f"commit_evidence {ce!r} is not ce:<view>.<seqno>:<64 hex>")
    return int(m.group(1)), int(m.group(2))


def _check_endorsed(cert: x509.Certificate, issuer: x509.Certificate, what: str) -> None:
    try:
        algo = cert.signature_hash_algorithm
        key = issuer.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ReceiptEndorsementError(f"{what}: unusable certificate ({e})") from None
    if algo is None or not isinstance(key, ec.EllipticCurvePublicKey):
        raise ReceiptEndorsementError(f"{what}: unsupported certificate signature")
    try:
        digest = hashes.Hash(algo)
        digest.update(cert.tbs_certificate_bytes)
        key.verify(cert.signature, digest.finalize(), ec.ECDSA(utils.Prehashed(algo)))
    except InvalidSignature:
        raise ReceiptEndorsementError(f"{what} is not endorsed by the next certificate in the chain") from None


@lru_cache(maxsize=256)
def _node_cert(pem: str) -> tuple[x509.Certificate, ec.EllipticCurvePublicKey, str]:
    """A receipt's node certificate, its key and the node id the key gives (cached per PEM)."""
    node_cert = _cert(pem, "cert")
    try:
        node_key = node_cert.public_key()
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ReceiptFormatError(f"cert holds an unusable key: {e}") from None
    if not isinstance(node_key, ec.EllipticCurvePublicKey):
        raise ReceiptFormatError("cert must hold an EC key")
    return node_cert, node_key, key_id(node_key)


# (node certificate PEM, endorsement PEMs) -> the service certificate object the chain was verified against
_verified_chains: dict[tuple[str, tuple[str, ...]], x509.Certificate] = {}
_MAX_VERIFIED_CHAINS = 256


def _check_chain(node_pem: str, endorsements: tuple[str, ...], service_cert: x509.Certificate) -> None:
    """The node certificate is endorsed, through `endorsements`, by the service certificate. Only a success is
    remembered, keyed by the exact PEMs, for that very certificate object (an identity check: another object,
    even an equal one, is verified in full; the cache holds a reference, so the identity cannot be reused)."""
    key = (node_pem, endorsements)
    if _verified_chains.get(key) is service_cert:
        return
    chain = [_node_cert(node_pem)[0]] + [_cert(p, "service endorsement") for p in endorsements] + [service_cert]
    for i in range(len(chain) - 1):
        _check_endorsed(chain[i], chain[i + 1], "node certificate" if i == 0 else f"endorsement {i}")
    if len(_verified_chains) >= _MAX_VERIFIED_CHAINS:
        _verified_chains.clear()
    _verified_chains[key] = service_cert


def _json_path(proof: list[Any]) -> list[PathStep]:
    """[{"left"|"right": 64 hex digits}] -> [(sibling_is_left, 32 bytes)], strictly."""
    path: list[PathStep] = []
    append = path.append
    fromhex = bytes.fromhex
    for step in proof:
        if type(step) is not dict or len(step) != 1:
            raise ReceiptFormatError("each proof step is {'left': hex} or {'right': hex}")
        ((side, value),) = step.items()
        if side != "left" and side != "right":
            raise ReceiptFormatError("each proof step is {'left': hex} or {'right': hex}")
        if type(value) is str and len(value) == 64:
            try:
                raw = fromhex(value)
            except ValueError:
                raw = b""
            if len(raw) == 32:
                append((side == "left", raw))
                continue
        append((side == "left", _hex(value, f"proof step {side}")))  # raises the precise error
    return path


def verify_json_receipt(
    receipt: Any, service_cert: x509.Certificate, *, expected_claims_digest: bytes | None = None
) -> VerifiedReceipt:
    """Check a JSON receipt against the trusted service certificate; return what it proves.

    A receipt without `leaf_components.claims_digest` (CCF leaves it out where the application expects the
    verifier to recompute it from the application's value) uses `expected_claims_digest` for the leaf, or
    zeros without one; either way the signature over the recomputed root decides.
    """
    if not isinstance(receipt, dict):
        raise ReceiptFormatError("a JSON receipt is an object")
    node_pem = receipt.get("cert")
    if not isinstance(node_pem, str):
        raise ReceiptFormatError("cert must be a PEM string")
    _, node_key, node_id = _node_cert(node_pem)
    if receipt.get("node_id") != node_id:
        raise ReceiptFormatError("node_id does not match the certificate's key")
    proof = receipt.get("proof")
    if not isinstance(proof, list):
        raise ReceiptFormatError("proof must be a list")
    path = _json_path(proof)
    view = seqno = None
    claims = wsd = None
    if "leaf_components" in receipt:
        lc = receipt["leaf_components"]
        if not isinstance(lc, dict):
            raise ReceiptFormatError("leaf_components must be an object")
        wsd = _hex(lc.get("write_set_digest"), "write_set_digest")
        claims = _hex(lc["claims_digest"], "claims_digest") if "claims_digest" in lc \
            else expected_claims_digest or bytes(32)
        ce = lc.get("commit_evidence")
        view, seqno = _parse_commit_evidence(ce)
        assert isinstance(ce, str)
        leaf = _leaf(wsd, ce, claims)
        is_signature = False
    elif "leaf" in receipt:
        leaf = _hex(receipt["leaf"], "leaf")
        if path:
            raise ReceiptFormatError("a signature receipt has an empty proof")
        is_signature = True
    else:
        raise ReceiptFormatError("receipt has neither leaf_components nor leaf")
    sig_b64 = receipt.get("signature")
    if not isinstance(sig_b64, str):
        raise ReceiptFormatError("signature must be a base64 string")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        raise ReceiptFormatError("signature is not base64") from None
    root = fold_path(leaf, path)
    try:
        node_key.verify(sig, root, _ECDSA_PREHASHED_SHA256)
    except InvalidSignature:
        raise ReceiptSignatureError("signature over the recomputed root does not verify") from None
    except ValueError as e:
        raise ReceiptSignatureError(f"signature is malformed: {e}") from None
    endorsements = receipt.get("service_endorsements", [])
    if not isinstance(endorsements, list) or not all(isinstance(p, str) for p in endorsements):
        raise ReceiptFormatError("service_endorsements must be a list of PEM strings")
    _check_chain(node_pem, tuple(endorsements), service_cert)
    if expected_claims_digest is not None and claims != expected_claims_digest:
        raise ReceiptClaimsMismatch("claims digest differs from the expected one")
    return VerifiedReceipt(root, leaf, view, seqno, claims, wsd, is_signature)


@lru_cache(maxsize=16)
def _service_key_of_cert(service_cert: x509.Certificate) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    return _service_key(service_cert.public_key())


def _service_key(service_key: Any) -> tuple[ec.EllipticCurvePublicKey, bytes]:
    if not isinstance(service_key, ec.EllipticCurvePublicKey):
        raise ReceiptFormatError("the service certificate must hold an EC key")
    return service_key, key_id(service_key).encode()


def verify_cose_receipt(
    data: bytes, service_cert: x509.Certificate | ec.EllipticCurvePublicKey, *,
    expected_claims_digest: bytes | None = None
) -> VerifiedReceipt:
    """Check a COSE receipt (vds 2) against the trusted service certificate (or a service key an endorsement
    chain led to); return what it proves."""
    service_key, service_kid = _service_key(service_cert) if isinstance(service_cert, ec.EllipticCurvePublicKey) \
        else _service_key_of_cert(service_cert)
    try:
        msg = cose.decode(data)
    except cose.CoseError as e:
        raise ReceiptFormatError(str(e)) from None
    if msg.protected.get(cose.HDR_KID) != service_kid:
        raise ReceiptEndorsementError("kid does not name the trusted service key")
    if msg.protected.get(cose.HDR_VDS) != VDS_CCF_LEDGER_SHA256:
        raise ReceiptFormatError("vds (395) must be 2 (CCF_LEDGER_SHA256)")
    vdp = msg.unprotected.get(cose.HDR_VDP)
    if not isinstance(vdp, dict) or not isinstance(vdp.get(VDP_INCLUSION_PROOFS), list) \
            or len(vdp[VDP_INCLUSION_PROOFS]) != 1:
        raise ReceiptFormatError("unprotected header 396 must hold exactly one inclusion proof")
    raw_proof = vdp[VDP_INCLUSION_PROOFS][0]
    if not isinstance(raw_proof, bytes):
        raise ReceiptFormatError("inclusion proof must be a bstr")
    try:
        proof = cbor2.loads(raw_proof)
    except Exception as e:  # cbor2 raises several unrelated types on bad input
        raise ReceiptFormatError(f"inclusion proof is not CBOR: {e}") from None
    if not isinstance(proof, dict):
        raise ReceiptFormatError("inclusion proof must be a map")
    leaf_parts = proof.get(PROOF_LEAF)
    if not (isinstance(leaf_parts, list) and len(leaf_parts) == 3 and isinstance(leaf_parts[0], bytes)
            and isinstance(leaf_parts[1], str) and isinstance(leaf_parts[2], bytes)
            and len(leaf_parts[0]) == 32 and len(leaf_parts[2]) == 32):
        raise ReceiptFormatError("leaf must be [bstr .size 32, tstr, bstr .size 32]")
    wsd, ce, claims = leaf_parts
    view, seqno = _parse_commit_evidence(ce)
    steps = proof.get(PROOF_PATH)
    if not isinstance(steps, list):
        raise ReceiptFormatError("path must be an array")
    path: list[PathStep] = []
    for step in steps:
        if not (isinstance(step, list) and len(step) == 2 and isinstance(step[0], bool)
                and isinstance(step[1], bytes) and len(step[1]) == 32):
            raise ReceiptFormatError("each path step is [bool, bstr .size 32]")
        path.append((step[0], step[1]))
    leaf = _leaf(wsd, ce, claims)
    root = fold_path(leaf, path)
    try:
        msg.verify(service_key, root)
    except cose.CoseError as e:
        raise ReceiptSignatureError(str(e)) from None
    if expected_claims_digest is not None and claims != expected_claims_digest:
        raise ReceiptClaimsMismatch("claims digest differs from the expected one")
    return VerifiedReceipt(root, leaf, view, seqno, claims, wsd)
