"""`ccf.crypto` for JavaScript, constitutions and applications alike, with CCF's semantics
(src/js/extensions/ccf/crypto.cpp).

Host calls of `js/crypto.js`: bytes cross as latin-1 strings (one character per byte), keys as PEM strings, JWKs as
objects. Covered: `sign` (ECDSA with the signature in IEEE P1363 form r||s, RSA-PSS, EdDSA, HMAC), `verifySignature`
(ECDSA P1363, RSA-PSS, EdDSA; a public key or a certificate; SHA-256), `digest` (SHA-256, SHA-384 and SHA-512, as
@microsoft/ccf-app 6's `DigestAlgorithm` lists them), key generation (AES 128/192/256, RSA, ECDSA
secp256r1/secp384r1, EdDSA curve25519/x25519), `wrapKey`/`unwrapKey` (RSA-OAEP with SHA-256, AES-KWP as RFC 5649,
RSA-OAEP-AES-KWP as PKCS#11's CKM_RSA_AES_KEY_WRAP), the PEM/JWK conversions for EC, RSA and EdDSA keys both ways
(public and private), and the certificate checks governance code has too. A bad argument raises `HostCallError` with
CCF's message, which the JavaScript throws.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa, utils, x25519
from cryptography.hazmat.primitives.keywrap import (
    InvalidUnwrap,
    aes_key_unwrap_with_padding,
    aes_key_wrap_with_padding,
)
from cryptography.x509 import load_pem_x509_certificate

from governance.js_host import (
    HostCall,
    HostCallError,
    is_valid_x509_cert_bundle,
    is_valid_x509_cert_chain,
    pub_jwk_to_pem,
    pub_pem_to_jwk,
    pub_rsa_jwk_to_pem,
    pub_rsa_pem_to_jwk,
)

_HASHES: dict[str, hashes.HashAlgorithm] = {"SHA-256": hashes.SHA256(), "SHA-384": hashes.SHA384(),
                                             "SHA-512": hashes.SHA512()}
_EC_CURVES: dict[str, ec.EllipticCurve] = {"secp256r1": ec.SECP256R1(), "secp384r1": ec.SECP384R1()}
_JWK_CURVES: dict[str, str] = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_JWK_CURVE_OBJECTS: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(),
                                                   "P-521": ec.SECP521R1()}
_OAEP_HASH = hashes.SHA256()


def _bytes(latin1: str) -> bytes:
    return latin1.encode("latin-1")


def _latin1(data: bytes) -> str:
    return data.decode("latin-1")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _from_b64url(text: object, name: str) -> bytes:
    if not isinstance(text, str):
        raise HostCallError(f"JWK member {name} must be a base64url string")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except ValueError as e:
        raise HostCallError(f"JWK member {name} is not base64url: {e}") from None


def _int_b64url(value: int) -> str:
    return _b64url(value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _private_key(pem: str) -> Any:
    try:
        return serialization.load_pem_private_key(pem.encode(), None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise HostCallError(f"invalid private key PEM: {e}") from None


def _public_key(pem: str) -> Any:
    try:
        if pem.lstrip().startswith("-----BEGIN CERTIFICATE"):
            return load_pem_x509_certificate(pem.encode()).public_key()
        return serialization.load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise HostCallError(f"invalid public key PEM: {e}") from None


def _private_pem(key: Any) -> str:
    return str(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode())


def _public_pem(key: Any) -> str:
    return str(key.public_bytes(serialization.Encoding.PEM,
                                serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def _pair(key: Any) -> dict[str, str]:
    return {"privateKey": _private_pem(key), "publicKey": _public_pem(key.public_key())}


def _hash(algorithm: Mapping[str, Any], supported: tuple[str, ...] = tuple(_HASHES)) -> hashes.HashAlgorithm:
    name = algorithm.get("hash")
    if name not in supported:
        raise HostCallError(f"Unsupported hash algorithm, supported: {', '.join(supported)}")
    return _HASHES[name]


# --- signatures ---------------------------------------------------------------------------------------------


def sign(algorithm: Mapping[str, Any], key: str, data: str) -> str:
    if not isinstance(algorithm, Mapping):
        raise HostCallError("algorithm must be an object {name, hash}")
    name, plaintext = algorithm.get("name"), _bytes(data)
    if name == "EdDSA":
        private = _private_key(key)
        if not isinstance(private, ed25519.Ed25519PrivateKey):
            raise HostCallError("Failed to sign with EdDSA pair: not an Ed25519 private key")
        return _latin1(private.sign(plaintext))
    digest = _hash(algorithm)
    if name == "ECDSA":
        private = _private_key(key)
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise HostCallError("Failed to sign: not an EC private key")
        r, s = utils.decode_dss_signature(private.sign(plaintext, ec.ECDSA(digest)))
        size = (private.curve.key_size + 7) // 8
        return _latin1(r.to_bytes(size, "big") + s.to_bytes(size, "big"))
    if name == "RSA-PSS":
        private = _private_key(key)
        if not isinstance(private, rsa.RSAPrivateKey):
            raise HostCallError("Failed to sign: not an RSA private key")
        salt = int(algorithm.get("saltLength") or 0)
        return _latin1(private.sign(plaintext, padding.PSS(padding.MGF1(digest), salt), digest))
    if name == "HMAC":
        return _latin1(hmac.new(key.encode(), plaintext, digest.name).digest())
    raise HostCallError("Unsupported signing algorithm, supported: RSA-PSS, ECDSA, EdDSA, HMAC")


def verify_signature(algorithm: Mapping[str, Any], key: str, signature: str, data: str) -> bool:
    if not isinstance(algorithm, Mapping):
        raise HostCallError("algorithm must be an object {name, hash}")
    name, sig, plaintext = algorithm.get("name"), _bytes(signature), _bytes(data)
    public = _public_key(key)
    try:
        if name == "EdDSA":
            if not isinstance(public, ed25519.Ed25519PublicKey):
                raise HostCallError("Failed to verify EdDSA signature: not an Ed25519 public key")
            public.verify(sig, plaintext)
            return True
        digest = _hash(algorithm, ("SHA-256",))
        if name == "ECDSA" and isinstance(public, ec.EllipticCurvePublicKey):
            half = len(sig) // 2
            der = utils.encode_dss_signature(int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big"))
            public.verify(der, plaintext, ec.ECDSA(digest))
        elif name == "RSA-PSS" and isinstance(public, rsa.RSAPublicKey):
            salt = int(algorithm.get("saltLength") or 0)
            public.verify(sig, plaintext, padding.PSS(padding.MGF1(digest), salt), digest)
        elif name in ("ECDSA", "RSA-PSS"):
            raise HostCallError(f"Failed to verify signature: the key does not fit {name}")
        else:
            raise HostCallError("Unsupported signing algorithm, supported: RSA-PSS, ECDSA, EdDSA")
    except InvalidSignature:
        return False
    return True


def digest(algorithm: str, data: str) -> str:
    """`ccf.crypto.digest`, with the algorithms of @microsoft/ccf-app's `DigestAlgorithm`."""
    if algorithm not in _HASHES:
        raise HostCallError(f"unsupported digest algorithm {algorithm} (SHA-256, SHA-384 or SHA-512)")
    return _latin1(hashlib.new(_HASHES[algorithm].name, _bytes(data)).digest())


# --- key generation -----------------------------------------------------------------------------------------


def generate_aes_key(size: Any) -> str:
    if size not in (128, 192, 256):
        raise HostCallError("invalid key size (not one of 128, 192, 256)")
    return _latin1(os.urandom(int(size) // 8))


def generate_rsa_key_pair(size: Any, exponent: Any = None) -> dict[str, str]:
    try:
        key = rsa.generate_private_key(65537 if exponent is None else int(exponent), int(size))
    except (ValueError, TypeError) as e:
        raise HostCallError(f"Failed to generate RSA key pair: {e}") from None
    return _pair(key)


def generate_ecdsa_key_pair(curve: str) -> dict[str, str]:
    if curve not in _EC_CURVES:
        raise HostCallError("Unsupported curve id, supported: secp256r1, secp384r1")
    return _pair(ec.generate_private_key(_EC_CURVES[curve]))


def generate_eddsa_key_pair(curve: str) -> dict[str, str]:
    if curve == "curve25519":
        return _pair(ed25519.Ed25519PrivateKey.generate())
    if curve == "x25519":
        return _pair(x25519.X25519PrivateKey.generate())
    raise HostCallError("Unsupported curve id, supported: curve25519, x25519")


# --- key wrapping -------------------------------------------------------------------------------------------


def _oaep(params: Mapping[str, Any]) -> padding.OAEP:
    label = params.get("label")
    return padding.OAEP(padding.MGF1(_OAEP_HASH), _OAEP_HASH, _bytes(label) if label else None)


def _aes_key_size(params: Mapping[str, Any]) -> int:
    size = params.get("aesKeySize")
    if size not in (128, 192, 256):
        raise HostCallError("aesKeySize must be one of 128, 192, 256")
    return int(size)


def wrap_key(key: str, wrapping_key: str, params: Mapping[str, Any]) -> str:
    name, target, wrapping = params.get("name"), _bytes(key), _bytes(wrapping_key)
    try:
        if name == "RSA-OAEP":
            public = _public_key(wrapping.decode())
            return _latin1(public.encrypt(target, _oaep(params)))
        if name == "AES-KWP":
            return _latin1(aes_key_wrap_with_padding(wrapping, target))
        if name == "RSA-OAEP-AES-KWP":
            public = _public_key(wrapping.decode())
            temporary = os.urandom(_aes_key_size(params) // 8)
            return _latin1(public.encrypt(temporary, _oaep(params)) + aes_key_wrap_with_padding(temporary, target))
    except (ValueError, TypeError, AttributeError) as e:
        raise HostCallError(f"Failed to wrap key: {e}") from None
    raise HostCallError("unsupported key wrapping algorithm, supported: RSA-OAEP, AES-KWP, RSA-OAEP-AES-KWP")


def unwrap_key(key: str, unwrapping_key: str, params: Mapping[str, Any]) -> str:
    name, wrapped, unwrapping = params.get("name"), _bytes(key), _bytes(unwrapping_key)
    try:
        if name == "RSA-OAEP":
            return _latin1(_private_key(unwrapping.decode()).decrypt(wrapped, _oaep(params)))
        if name == "AES-KWP":
            return _latin1(aes_key_unwrap_with_padding(unwrapping, wrapped))
        if name == "RSA-OAEP-AES-KWP":
            private = _private_key(unwrapping.decode())
            split = private.key_size // 8
            temporary = private.decrypt(wrapped[:split], _oaep(params))
            return _latin1(aes_key_unwrap_with_padding(temporary, wrapped[split:]))
    except (ValueError, TypeError, AttributeError, InvalidUnwrap) as e:
        raise HostCallError(f"Failed to unwrap key: {e or type(e).__name__}") from None
    raise HostCallError("unsupported key unwrapping algorithm, supported: RSA-OAEP, AES-KWP, RSA-OAEP-AES-KWP")


# --- PEM and JWK --------------------------------------------------------------------------------------------


def _with_kid(jwk: dict[str, str], kid: str | None) -> dict[str, str]:
    return {**jwk, "kid": kid} if kid is not None else jwk


def pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    """An EC private key as a JWK (crv, x, y, d)."""
    key = _private_key(pem)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise HostCallError("Failed to convert pem to jwk: not an EC private key")
    public = pub_pem_to_jwk(_public_pem(key.public_key()), kid)
    size = (key.curve.key_size + 7) // 8
    return {**public, "d": _b64url(key.private_numbers().private_value.to_bytes(size, "big"))}


def rsa_pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    key = _private_key(pem)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HostCallError("Failed to convert pem to jwk: not an RSA private key")
    n = key.private_numbers()
    public = pub_rsa_pem_to_jwk(_public_pem(key.public_key()), kid)
    return {**public, "d": _int_b64url(n.d), "p": _int_b64url(n.p), "q": _int_b64url(n.q),
            "dp": _int_b64url(n.dmp1), "dq": _int_b64url(n.dmq1), "qi": _int_b64url(n.iqmp)}


def pub_eddsa_pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    key = _public_key(pem)
    if isinstance(key, ed25519.Ed25519PublicKey):
        crv = "Ed25519"
    elif isinstance(key, x25519.X25519PublicKey):
        crv = "X25519"
    else:
        raise HostCallError("Failed to convert pem to jwk: not an EdDSA public key")
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _with_kid({"kty": "OKP", "crv": crv, "x": _b64url(raw)}, kid)


def eddsa_pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    key = _private_key(pem)
    if not isinstance(key, ed25519.Ed25519PrivateKey | x25519.X25519PrivateKey):
        raise HostCallError("Failed to convert pem to jwk: not an EdDSA private key")
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    return {**pub_eddsa_pem_to_jwk(_public_pem(key.public_key()), kid), "d": _b64url(raw)}


def jwk_to_pem(jwk: Mapping[str, Any]) -> str:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "EC" or jwk.get("crv") not in _JWK_CURVE_OBJECTS:
        raise HostCallError("Failed to convert jwk to pem: expected an EC JWK with crv P-256, P-384 or P-521")
    curve = _JWK_CURVE_OBJECTS[str(jwk["crv"])]
    d = int.from_bytes(_from_b64url(jwk.get("d"), "d"), "big")
    try:
        return _private_pem(ec.derive_private_key(d, curve))
    except ValueError as e:
        raise HostCallError(f"Failed to convert jwk to pem: {e}") from None


def rsa_jwk_to_pem(jwk: Mapping[str, Any]) -> str:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "RSA":
        raise HostCallError("Failed to convert jwk to pem: expected an RSA JWK")
    value = {name: int.from_bytes(_from_b64url(jwk.get(name), name), "big")
             for name in ("n", "e", "d", "p", "q", "dp", "dq", "qi")}
    try:
        numbers = rsa.RSAPrivateNumbers(value["p"], value["q"], value["d"], value["dp"], value["dq"], value["qi"],
                                        rsa.RSAPublicNumbers(value["e"], value["n"]))
        return _private_pem(numbers.private_key())
    except ValueError as e:
        raise HostCallError(f"Failed to convert jwk to pem: {e}") from None


def pub_eddsa_jwk_to_pem(jwk: Mapping[str, Any]) -> str:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") not in ("Ed25519", "X25519"):
        raise HostCallError("Failed to convert jwk to pem: expected an OKP JWK with crv Ed25519 or X25519")
    raw = _from_b64url(jwk.get("x"), "x")
    try:
        key = (ed25519.Ed25519PublicKey if jwk["crv"] == "Ed25519" else x25519.X25519PublicKey).from_public_bytes(raw)
    except ValueError as e:
        raise HostCallError(f"Failed to convert jwk to pem: {e}") from None
    return _public_pem(key)


def eddsa_jwk_to_pem(jwk: Mapping[str, Any]) -> str:
    if not isinstance(jwk, Mapping) or jwk.get("kty") != "OKP" or jwk.get("crv") not in ("Ed25519", "X25519"):
        raise HostCallError("Failed to convert jwk to pem: expected an OKP JWK with crv Ed25519 or X25519")
    raw = _from_b64url(jwk.get("d"), "d")
    try:
        key = (ed25519.Ed25519PrivateKey if jwk["crv"] == "Ed25519" else
               x25519.X25519PrivateKey).from_private_bytes(raw)
    except ValueError as e:
        raise HostCallError(f"Failed to convert jwk to pem: {e}") from None
    return _private_pem(key)


CRYPTO_CALLS: dict[str, HostCall] = {
    "sign": sign,
    "verifySignature": verify_signature,
    "digest": digest,
    "generateAesKey": generate_aes_key,
    "generateRsaKeyPair": generate_rsa_key_pair,
    "generateEcdsaKeyPair": generate_ecdsa_key_pair,
    "generateEddsaKeyPair": generate_eddsa_key_pair,
    "wrapKey": wrap_key,
    "unwrapKey": unwrap_key,
    "isValidX509CertBundle": is_valid_x509_cert_bundle,
    "isValidX509CertChain": is_valid_x509_cert_chain,
    "pubPemToJwk": pub_pem_to_jwk,
    "pemToJwk": pem_to_jwk,
    "pubRsaPemToJwk": pub_rsa_pem_to_jwk,
    "rsaPemToJwk": rsa_pem_to_jwk,
    "pubEddsaPemToJwk": pub_eddsa_pem_to_jwk,
    "eddsaPemToJwk": eddsa_pem_to_jwk,
    "pubJwkToPem": pub_jwk_to_pem,
    "jwkToPem": jwk_to_pem,
    "pubRsaJwkToPem": pub_rsa_jwk_to_pem,
    "rsaJwkToPem": rsa_jwk_to_pem,
    "pubEddsaJwkToPem": pub_eddsa_jwk_to_pem,
    "eddsaJwkToPem": eddsa_jwk_to_pem,
}
