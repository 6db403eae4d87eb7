"""Identities: EC keys and X.509 certificates of the service, nodes, members and users.

Guarantees (as CCF 6.x and its `ccf` package's checks expect):
- The service identity is a self-signed CA certificate (BasicConstraints CA, keyCertSign, SKI); its key is on
  P-384 unless asked otherwise here (`ServiceIdentity.create`), while a node creates it on its configured curve
  (`IDENTITY_CURVES`, P-256 by default); node certificates it endorses have CA false, a SAN and the service's AKI, and
  pass `ccf.receipt.check_endorsements` and `check_cert_chain`.
- Node id = hex SHA-256 of the node's public key (SubjectPublicKeyInfo DER); member and user ids =
  hex SHA-256 of their DER certificate; a COSE kid = hex SHA-256 of the signer's SPKI, as ASCII bytes.

Time comes in as a parameter (`now`) so that callers with a deterministic clock stay deterministic.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
from dataclasses import dataclass
from functools import cached_property, lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_CURVE: ec.EllipticCurve = ec.SECP384R1()
# The curves of a node's key and of the service identity a starting (or recovering) node creates, by CCF's names
# for `node_certificate.curve_id`, which in CCF chooses both. CCF defaults to Secp384R1; the default here is
# Secp256R1, which CCF also offers: every signature transaction carries a signature by the node's key and one by
# the service's, which each backup verifies before acknowledging, and a P-256 signature costs about a ninth of a
# P-384 one to make and an eighth to verify (OpenSSL through `cryptography` on this project's machine).
IDENTITY_CURVES: dict[str, ec.EllipticCurve] = {"Secp256R1": ec.SECP256R1(), "Secp384R1": ec.SECP384R1()}
DEFAULT_IDENTITY_CURVE = "Secp256R1"
CertificateKey = ec.EllipticCurvePrivateKey


def _now(now: dt.datetime | None) -> dt.datetime:
    return now if now is not None else dt.datetime.now(dt.UTC)


def generate_key(curve: ec.EllipticCurve | None = None) -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(curve or DEFAULT_CURVE)


def hash_for_key(
    key: ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey,
) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    size = key.curve.key_size
    if size >= 521:
        return hashes.SHA512()
    if size >= 384:
        return hashes.SHA384()
    return hashes.SHA256()


def spki_der(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """hex(SHA-256(SPKI DER)): a node id, and the COSE `kid` of a service signature (as ASCII)."""
    return hashlib.sha256(spki_der(key)).hexdigest()


def cert_id(cert: x509.Certificate) -> str:
    """Member or user id: hex(SHA-256(DER certificate))."""
    return cert.fingerprint(hashes.SHA256()).hex()


def cert_pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def load_cert(pem: str | bytes) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode() if isinstance(pem, str) else pem)


@lru_cache(maxsize=256)
def cert_key(pem: bytes) -> tuple[x509.Certificate, bytes]:
    """A PEM certificate (bytes) and the SPKI DER of its key, cached: a node reads the same few node and service
    certificates at every signature it verifies (parsing and encoding cost about a fifth of the verification).
    Raises what `load_cert` raises for a malformed certificate (not cached)."""
    cert = load_cert(pem)
    return cert, cert.public_key().public_bytes(serialization.Encoding.DER,
                                                serialization.PublicFormat.SubjectPublicKeyInfo)


def key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def load_key(pem: str | bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem.encode() if isinstance(pem, str) else pem, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError("only EC private keys are supported")
    return key


_CA_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
    key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _serial(key: ec.EllipticCurvePublicKey) -> int:
    # Deterministic per key (no randomness needed for uniqueness within one service).
    return int.from_bytes(hashlib.sha256(spki_der(key)).digest()[:16], "big") >> 1


def _builder(
    subject_key: ec.EllipticCurvePublicKey, cn: str, issuer: x509.Name, *, ca: bool, now: dt.datetime | None,
    days: int,
) -> x509.CertificateBuilder:
    """The fields every certificate here has: names, key, serial, validity, CA flag, SKI (and CA usage)."""
    start = _now(now) - dt.timedelta(minutes=1)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer)
        .public_key(subject_key)
        .serial_number(_serial(subject_key))
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(subject_key), critical=False)
    )
    if ca:
        builder = builder.add_extension(_CA_KEY_USAGE, critical=True)
    return builder


def self_signed_cert(
    key: ec.EllipticCurvePrivateKey, cn: str, *, ca: bool, now: dt.datetime | None = None, days: int = 365
) -> x509.Certificate:
    builder = _builder(key.public_key(), cn, _name(cn), ca=ca, now=now, days=days)
    return builder.sign(key, hash_for_key(key))


def endorse(
    issuer_key: ec.EllipticCurvePrivateKey,
    issuer_cert: x509.Certificate,
    subject_key: ec.EllipticCurvePublicKey,
    cn: str,
    *,
    san_hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
    now: dt.datetime | None = None,
    days: int = 365,
    ca: bool = False,
) -> x509.Certificate:
    """A certificate for `subject_key` issued by the service identity (SAN, AKI).

    `ca=False` for node certificates; `ca=True` when the new service identity endorses a previous one
    (after a recovery), so that chains through it pass X.509 path validation.
    """
    sans: list[x509.GeneralName] = []
    for host in san_hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        _builder(subject_key, cn, issuer_cert.subject, ca=ca, now=now, days=days)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
    )
    return builder.sign(issuer_key, hash_for_key(issuer_key))


@dataclass(frozen=True)
class ServiceIdentity:
    """The service key pair and its self-signed CA certificate (the clients' trust anchor)."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, *, curve: ec.EllipticCurve | None = None, now: dt.datetime | None = None,
               days: int = 365) -> ServiceIdentity:
        key = generate_key(curve)
        return cls(key, self_signed_cert(key, "CCF Service", ca=True, now=now, days=days))

    # derived once per identity: a signature transaction needs them every time, and each costs a DER encoding
    @cached_property
    def pem(self) -> str:
        return cert_pem(self.cert)

    @cached_property
    def kid(self) -> str:
        return key_id(self.key.public_key())


@dataclass(frozen=True)
class NodeIdentity:
    """A node's key pair, its self-signed certificate, and the certificate the service endorsed."""

    key: ec.EllipticCurvePrivateKey
    self_signed: x509.Certificate
    endorsed: x509.Certificate | None = None

    @classmethod
    def create(cls, *, curve: ec.EllipticCurve | None = None, now: dt.datetime | None = None) -> NodeIdentity:
        """A new node key (on `curve`, by default `IDENTITY_CURVES[DEFAULT_IDENTITY_CURVE]`) and its self-signed
        certificate."""
        key = generate_key(curve or IDENTITY_CURVES[DEFAULT_IDENTITY_CURVE])
        return cls(key, self_signed_cert(key, "CCF Node", ca=False, now=now))

    def endorsed_by(self, service: ServiceIdentity, *, now: dt.datetime | None = None,
                    san_hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> NodeIdentity:
        cert = endorse(service.key, service.cert, self.key.public_key(), "CCF Node", now=now, san_hosts=san_hosts)
        return NodeIdentity(self.key, self.self_signed, cert)

    @cached_property
    def node_id(self) -> str:
        return key_id(self.key.public_key())

    @property
    def cert(self) -> x509.Certificate:
        """The certificate others should see: the endorsed one once there is one."""
        return self.endorsed or self.self_signed

    @cached_property
    def pem(self) -> str:
        """`cert` as PEM (what a signature transaction records as the signing node's certificate)."""
        return cert_pem(self.cert)


@dataclass(frozen=True)
class PartyIdentity:
    """A member's or user's key and self-signed certificate; their id is the certificate's digest."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @classmethod
    def create(cls, name: str, *, curve: ec.EllipticCurve | None = None,
               now: dt.datetime | None = None) -> PartyIdentity:
        key = generate_key(curve)
        return cls(key, self_signed_cert(key, name, ca=False, now=now))

    @property
    def id(self) -> str:
        return cert_id(self.cert)

    @property
    def pem(self) -> str:
        return cert_pem(self.cert)
