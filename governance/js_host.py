"""What governance JavaScript asks of the host: `ccf.crypto.*` and `ccf.pemToId`, as CCF provides them.

Each host call takes and returns JSON-compatible values (bytes as hex). Calls are pure, so running a
constitution twice gives the same answers. A bad argument is an error message for the JavaScript to throw.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

HostCall = Callable[..., Any]
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----[^-]+-----END CERTIFICATE-----", re.S)
_HASHES: dict[str, hashes.HashAlgorithm] = {"SHA-256": hashes.SHA256(), "SHA-384": hashes.SHA384(),
                                             "SHA-512": hashes.SHA512()}


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


def digest(algorithm: str, data_hex: str) -> str:
    if algorithm != "SHA-256":
        raise HostCallError(f"unsupported digest algorithm {algorithm} (SHA-256 only)")
    return hashlib.sha256(bytes.fromhex(data_hex)).hexdigest()


def is_valid_x509_cert_bundle(pem: str) -> bool:
    try:
        _certs(pem)
    except HostCallError:
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


def verify_signature(algorithm: dict[str, Any], key_pem: str, signature_hex: str, data_hex: str) -> bool:
    """CCF's verifySignature: ECDSA (DER signature) or RSA (PKCS#1 v1.5 or PSS), key a PEM public key or cert."""
    if not isinstance(algorithm, dict) or algorithm.get("hash") not in _HASHES:
        raise HostCallError("algorithm must be {name, hash} with hash SHA-256, SHA-384 or SHA-512")
    hash_alg = _HASHES[algorithm["hash"]]
    try:
        key = (x509.load_pem_x509_certificate(key_pem.encode()).public_key() if "CERTIFICATE" in key_pem
               else load_pem_public_key(key_pem.encode()))
        signature, data = bytes.fromhex(signature_hex), bytes.fromhex(data_hex)
        name = algorithm.get("name")
        if name == "ECDSA" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(hash_alg))
        elif name == "RSASSA-PKCS1-v1_5" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature, data, padding.PKCS1v15(), hash_alg)
        elif name == "RSA-PSS" and isinstance(key, rsa.RSAPublicKey):
            salt = int(algorithm.get("saltLength", 32))
            key.verify(signature, data, padding.PSS(padding.MGF1(hash_alg), salt), hash_alg)
        else:
            raise HostCallError(f"unsupported algorithm {name} for this key")
    except InvalidSignature:
        return False
    except (ValueError, UnsupportedAlgorithm, TypeError) as e:
        raise HostCallError(f"cannot verify: {e}") from None
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
    "digest": digest,
    "isValidX509CertBundle": is_valid_x509_cert_bundle,
    "isValidX509CertChain": is_valid_x509_cert_chain,
    "verifySignature": verify_signature,
    "isValidRsaPublicKeyPem": is_valid_rsa_public_key_pem,
    "pemToId": pem_to_id,
}
