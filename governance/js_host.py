"""Certificate and key checks for JavaScript: what `governance.js_crypto` builds on, and the checks CCF gives
constitutions besides `ccf.crypto` (`isValidX509RootCACert`, `isValidRsaPublicKeyPem`, `ccf.pemToId`).

Covered: certificate bundle and chain checks, and the public-key conversions between PEM and JWK (EC and RSA).

Each host call takes and returns JSON-compatible values. Calls are pure. A bad argument is a `HostCallError`,
whose message the JavaScript throws.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat, load_pem_public_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

HostCall = Callable[..., Any]
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----", re.S)
_HASHES: dict[str, hashes.HashAlgorithm] = {"SHA-256": hashes.SHA256(), "SHA-384": hashes.SHA384(),
                                             "SHA-512": hashes.SHA512()}
_CURVES: dict[str, tuple[type[ec.EllipticCurve], int]] = {"P-256": (ec.SECP256R1, 32), "P-384": (ec.SECP384R1, 48),
                                                          "P-521": (ec.SECP521R1, 66)}


class HostCallError(Exception):
    """A host call refused its arguments; the message is thrown in JavaScript."""


def _certs(pem: str) -> list[x509.Certificate]:
    blocks = _PEM_CERT.findall(pem)
    if not blocks:
        raise HostCallError("no PEM certificate found")
    try:
        return [x509.load_pem_x509_certificate(b.encode()) for b in blocks]
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as e:
        raise HostCallError(f"invalid certificate: {e}") from None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_of_int(value: int) -> str:
    """A JWK integer member: its big-endian bytes, as few as hold it, base64url without padding."""
    return _b64url(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _b64url_int(text: object, name: str) -> int:
    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
        raise HostCallError(f"JWK member {name} must be base64url")
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def _public_key(pem: str) -> object:
    try:
        return load_pem_public_key(pem.encode())
    except (ValueError, UnsupportedAlgorithm) as e:
        raise HostCallError(f"invalid public key PEM: {e}") from None


def _with_kid(jwk: dict[str, str], kid: str | None) -> dict[str, str]:
    return {**jwk, "kid": kid} if kid is not None else jwk


def pub_pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    """An EC public key PEM as a JWK (kty EC, crv P-256/P-384/P-521, x, y)."""
    key = _public_key(pem)
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise HostCallError("not an EC public key")
    crv = next((name for name, (curve, _) in _CURVES.items() if isinstance(key.curve, curve)), None)
    if crv is None:
        raise HostCallError(f"unsupported curve {key.curve.name}")
    size = _CURVES[crv][1]
    numbers = key.public_numbers()
    return _with_kid({"kty": "EC", "crv": crv, "x": _b64url(numbers.x.to_bytes(size, "big")),
                      "y": _b64url(numbers.y.to_bytes(size, "big"))}, kid)


def pub_rsa_pem_to_jwk(pem: str, kid: str | None = None) -> dict[str, str]:
    """An RSA public key PEM as a JWK (kty RSA, n, e)."""
    key = _public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise HostCallError("not an RSA public key")
    numbers = key.public_numbers()
    return _with_kid({"kty": "RSA", "n": _b64url_of_int(numbers.n), "e": _b64url_of_int(numbers.e)}, kid)


def _pem(key: ec.EllipticCurvePublicKey | rsa.RSAPublicKey) -> str:
    return key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()


def pub_jwk_to_pem(jwk: dict[str, Any]) -> str:
    if not isinstance(jwk, dict) or jwk.get("kty") != "EC" or jwk.get("crv") not in _CURVES:
        raise HostCallError("expected an EC JWK with crv P-256, P-384 or P-521")
    curve, _ = _CURVES[jwk["crv"]]
    try:
        key = ec.EllipticCurvePublicNumbers(_b64url_int(jwk.get("x"), "x"), _b64url_int(jwk.get("y"), "y"),
                                            curve()).public_key()
    except ValueError as e:
        raise HostCallError(f"invalid EC JWK: {e}") from None
    return _pem(key)


def pub_rsa_jwk_to_pem(jwk: dict[str, Any]) -> str:
    if not isinstance(jwk, dict) or jwk.get("kty") != "RSA":
        raise HostCallError("expected an RSA JWK")
    try:
        key = rsa.RSAPublicNumbers(_b64url_int(jwk.get("e"), "e"), _b64url_int(jwk.get("n"), "n")).public_key()
    except ValueError as e:
        raise HostCallError(f"invalid RSA JWK: {e}") from None
    return _pem(key)


def is_valid_x509_cert_bundle(pem: str) -> bool:
    try:
        _certs(pem)
    except HostCallError:
        return False
    return True


def is_valid_x509_root_ca_cert(pem: str) -> bool:
    """CCF's isValidX509RootCACert: one certificate, a CA (basicConstraints CA:TRUE, or an X.509 v1 certificate,
    which predates extensions) and self-signed (its issuer is its subject and its own key verifies its
    signature)."""
    try:
        [cert] = _certs(pem)
    except (HostCallError, ValueError):
        return False
    if cert.version is x509.Version.v3:
        try:
            if not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
                return False
        except x509.ExtensionNotFound:
            return False
    if cert.issuer != cert.subject:
        return False
    try:
        cert.verify_directly_issued_by(cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def is_valid_x509_cert_chain(chain: str, trusted: str) -> bool:
    try:
        leaf, *intermediates = _certs(chain)
        verifier = PolicyBuilder().store(Store(_certs(trusted))).build_client_verifier()
        verifier.verify(leaf, intermediates)
    except (HostCallError, VerificationError, ValueError):
        return False
    return True


def is_valid_rsa_public_key_pem(pem: str) -> bool:
    """Whether `pem` is an RSA public key (what recovery members register to receive their shares)."""
    try:
        return isinstance(load_pem_public_key(pem.encode()), rsa.RSAPublicKey)
    except (ValueError, UnsupportedAlgorithm):
        return False


def pem_to_id(pem: str) -> str:
    """Member/user id of a certificate: hex SHA-256 of its DER."""
    return _certs(pem)[0].fingerprint(hashes.SHA256()).hex()


DEFAULT_HOST_CALLS: dict[str, HostCall] = {
    "isValidX509RootCACert": is_valid_x509_root_ca_cert,
    "isValidRsaPublicKeyPem": is_valid_rsa_public_key_pem,
    "pemToId": pem_to_id,
}
