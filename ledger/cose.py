"""COSE_Sign1 (RFC 9052) with ECDSA: sign with a detached or attached payload, decode, verify.

Guarantees: messages are tagged (CBOR tag 18), the protected header bytes are kept exactly as received
(signatures are over those bytes), signatures are raw r||s of the curve's size, and only ES256, ES384
and ES512 are accepted. Decoding raises `CoseError` (never a bare CBOR or crypto exception).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from ledger.errors import LedgerError

COSE_SIGN1_TAG = 18
HDR_ALG = 1
HDR_KID = 4
HDR_CWT = 15
HDR_VDS = 395
HDR_VDP = 396

ALG_ES256 = -7
ALG_ES384 = -35
ALG_ES512 = -36
_ALGS: dict[int, tuple[hashes.HashAlgorithm, int]] = {
    ALG_ES256: (hashes.SHA256(), 32),
    ALG_ES384: (hashes.SHA384(), 48),
    ALG_ES512: (hashes.SHA512(), 66),
}


class CoseError(LedgerError):
    """A COSE message is malformed, uses an unsupported algorithm, or its signature does not verify."""


def alg_for_key(key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey) -> int:
    size = key.curve.key_size
    if size == 256:
        return ALG_ES256
    if size == 384:
        return ALG_ES384
    if size == 521:
        return ALG_ES512
    raise CoseError(f"unsupported curve {key.curve.name}")


def _sig_structure(phdr_bytes: bytes, payload: bytes) -> bytes:
    return bytes(cbor2.dumps(["Signature1", phdr_bytes, b"", payload]))


def sign1(
    key: ec.EllipticCurvePrivateKey,
    protected: dict[Any, Any],
    payload: bytes,
    *,
    detached: bool = False,
    unprotected: dict[Any, Any] | None = None,
) -> bytes:
    """A tagged COSE_Sign1; `protected` gets `alg` from the key if absent."""
    alg = alg_for_key(key)
    phdr = {HDR_ALG: alg, **protected}
    phdr_bytes = bytes(cbor2.dumps(phdr))
    digest_alg, size = _ALGS[alg]
    der = key.sign(_sig_structure(phdr_bytes, payload), ec.ECDSA(digest_alg))
    r, s = decode_dss_signature(der)
    sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return encode(phdr_bytes, unprotected or {}, None if detached else payload, sig)


def encode(phdr_bytes: bytes, unprotected: dict[Any, Any], payload: bytes | None, signature: bytes) -> bytes:
    return bytes(cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [phdr_bytes, unprotected, payload, signature])))


@dataclass(frozen=True)
class Sign1:
    phdr_bytes: bytes
    protected: dict[Any, Any]
    unprotected: dict[Any, Any]
    payload: bytes | None
    signature: bytes

    @property
    def alg(self) -> int:
        alg = self.protected.get(HDR_ALG)
        if not isinstance(alg, int) or alg not in _ALGS:
            raise CoseError(f"unsupported COSE algorithm {alg!r} (ES256, ES384, ES512 only)")
        return alg

    def verify(self, key: ec.EllipticCurvePublicKey, detached_payload: bytes | None = None) -> None:
        """Raise `CoseError` unless the signature verifies with `key` over the (detached) payload."""
        payload = detached_payload if detached_payload is not None else self.payload
        if payload is None:
            raise CoseError("no payload to verify (detached and none given)")
        alg = self.alg
        digest_alg, size = _ALGS[alg]
        if alg_for_key(key) != alg:
            raise CoseError(f"algorithm {alg} does not match the {key.curve.name} key")
        if len(self.signature) != 2 * size:
            raise CoseError(f"signature of {len(self.signature)} bytes, expected {2 * size}")
        r = int.from_bytes(self.signature[:size], "big")
        s = int.from_bytes(self.signature[size:], "big")
        try:
            key.verify(encode_dss_signature(r, s), _sig_structure(self.phdr_bytes, payload), ec.ECDSA(digest_alg))
        except InvalidSignature:
            raise CoseError("COSE signature does not verify") from None


def decode(data: bytes, *, require_tag: bool = True) -> Sign1:
    try:
        obj = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several unrelated types on bad input
        raise CoseError(f"not CBOR: {e}") from e
    if isinstance(obj, cbor2.CBORTag):
        if obj.tag != COSE_SIGN1_TAG:
            raise CoseError(f"CBOR tag {obj.tag} is not COSE_Sign1 (18)")
        obj = obj.value
    elif require_tag:
        raise CoseError("COSE_Sign1 must be tagged (18)")
    if not isinstance(obj, list) or len(obj) != 4:
        raise CoseError("COSE_Sign1 must be an array of 4 items")
    phdr_bytes, uhdr, payload, sig = obj
    if not isinstance(phdr_bytes, bytes) or not isinstance(uhdr, dict) or not isinstance(sig, bytes):
        raise CoseError("COSE_Sign1 items have the wrong types")
    if payload is not None and not isinstance(payload, bytes):
        raise CoseError("COSE_Sign1 payload must be bytes or nil")
    try:
        phdr = cbor2.loads(phdr_bytes) if phdr_bytes else {}
    except Exception as e:
        raise CoseError(f"protected header is not CBOR: {e}") from e
    if not isinstance(phdr, dict):
        raise CoseError("protected header must be a map")
    return Sign1(phdr_bytes, phdr, uhdr, payload, sig)
