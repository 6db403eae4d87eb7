"""Signature transactions: the node's signature and the service's COSE signature over the Merkle root.

A signature transaction at seqno s signs the root of leaves 0..s-1 (everything before it; its own leaf
is appended afterwards, as in CCF's src/node/history.h). It writes, under the singleton key:
- `public:ccf.internal.signatures`: JSON PrimarySignature with `sig` = ECDSA (prehashed SHA-256) by the
  node key over the 32-byte root, DER, base64;
- `public:ccf.internal.cose_signatures`: JSON string of base64 COSE_Sign1 by the service key, detached
  payload = root, protected header {alg, kid, vds = 2, CWT claims {iss, sub, iat}, "ccf.v1": {txid}};
- `public:ccf.internal.tree`: the serialised Merkle tree of leaves `from`..s-1.

`verify_signature_transaction` is the check the auditor and the replay both apply to one.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from ledger import cose
from ledger.errors import VerificationError
from ledger.identity import NodeIdentity, ServiceIdentity, cert_key, spki_der
from ledger.kv import WriteSet
from ledger.tables import COSE_SIGNATURES, SIGNATURES, SINGLETON_KEY, TREE, dump_json

VDS_CCF_LEDGER_SHA256 = 2
CWT_ISS = 1
CWT_SUB = 2
CWT_IAT = 6
DEFAULT_ISSUER = "ccf.service"
DEFAULT_SUBJECT = "ledger.signature"


def sign_root(key: ec.EllipticCurvePrivateKey, root: bytes) -> bytes:
    """ECDSA over the root used directly as a SHA-256 digest, DER-encoded (CCF's `sign_hash`)."""
    return key.sign(root, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def cose_sign_root(service: ServiceIdentity, root: bytes, view: int, seqno: int, iat: int,
                   issuer: str = DEFAULT_ISSUER, subject: str = DEFAULT_SUBJECT) -> bytes:
    protected: dict[Any, Any] = {
        cose.HDR_KID: service.kid.encode(),
        cose.HDR_VDS: VDS_CCF_LEDGER_SHA256,
        cose.HDR_CWT: {CWT_ISS: issuer, CWT_SUB: subject, CWT_IAT: iat},
        "ccf.v1": {"txid": f"{view}.{seqno}"},
    }
    return cose.sign1(service.key, protected, root, detached=True)


@dataclass(frozen=True, slots=True)
class PrimarySignature:
    """The JSON value of `public:ccf.internal.signatures`."""

    node: str
    seqno: int
    view: int
    root: bytes
    sig: bytes
    cert: str

    def to_json(self) -> dict[str, Any]:
        return {
            "cert": self.cert,
            "commit_seqno": 0,
            "commit_view": 0,
            "hashed_nonce": "0" * 64,
            "node": self.node,
            "root": self.root.hex(),
            "seqno": self.seqno,
            "sig": base64.b64encode(self.sig).decode(),
            "view": self.view,
        }


def parse_primary_signature(raw: bytes, seqno: int) -> PrimarySignature:
    """The PrimarySignature stored at `seqno`; `VerificationError` if it is not one."""
    try:
        obj = orjson.loads(raw)
        return PrimarySignature(
            node=str(obj["node"]), seqno=int(obj["seqno"]), view=int(obj["view"]),
            root=bytes.fromhex(obj["root"]), sig=base64.b64decode(obj["sig"], validate=True),
            cert=str(obj.get("cert", "")),
        )
    except (orjson.JSONDecodeError, KeyError, ValueError, TypeError, AttributeError, binascii.Error) as e:
        raise VerificationError(f"malformed signature: {e!r}", seqno=seqno) from None


def verify_signature_transaction(
    primary: PrimarySignature,
    cose_value: bytes | None,
    *,
    seqno: int,
    expected_root: bytes,
    node_key: ec.EllipticCurvePublicKey,
    service_key: ec.EllipticCurvePublicKey | None,
    covering: str = "",
    node_spki: bytes | None = None,
) -> bytes:
    """Check a signature transaction against what a verifier rebuilt: the node signature verifies with
    the signer's endorsed key, the signed root is the verifier's root of leaves 0..seqno-1, and the
    service's COSE signature (when present) verifies over that root. Returns the COSE_Sign1 bytes.

    `covering` names the transactions the root covers, for the error message; `node_spki` is `node_key`'s SPKI
    DER if the caller has it. Raises `VerificationError`.
    """
    suffix = f" ({covering})" if covering else ""
    if primary.cert:
        try:
            claimed, claimed_spki = cert_key(primary.cert.encode())
        except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm) as e:
            raise VerificationError(f"signature cert is unreadable: {e}", seqno=seqno) from None
        if not isinstance(claimed.public_key(), ec.EllipticCurvePublicKey) or \
                claimed_spki != (node_spki if node_spki is not None else spki_der(node_key)):
            raise VerificationError("signature cert differs from the node's endorsed key", seqno=seqno)
    try:
        node_key.verify(primary.sig, primary.root, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise VerificationError(f"node signature over the root does not verify{suffix}", seqno=seqno) from None
    if primary.root != expected_root:
        raise VerificationError(f"signed Merkle root does not match the ledger: one of the transactions was "
                                f"altered{suffix}", seqno=seqno)
    if cose_value is None:
        return b""
    if service_key is None:
        raise VerificationError("COSE signature before any service identity", seqno=seqno)
    try:
        cose_bytes = base64.b64decode(orjson.loads(cose_value), validate=True)
        cose.decode(cose_bytes).verify(service_key, expected_root)
    except (cose.CoseError, ValueError, TypeError, binascii.Error, orjson.JSONDecodeError) as e:
        raise VerificationError(f"COSE signature by the service does not verify: {e}", seqno=seqno) from None
    return cose_bytes


def signature_writes(
    node: NodeIdentity,
    service: ServiceIdentity,
    view: int,
    seqno: int,
    root: bytes,
    serialised_tree: bytes,
    iat: int,
) -> tuple[WriteSet, PrimarySignature, bytes]:
    """The write set of the signature transaction at `seqno`, its PrimarySignature and COSE_Sign1."""
    primary = PrimarySignature(node.node_id, seqno, view, root, sign_root(node.key, root), node.pem)
    cose_sig = cose_sign_root(service, root, view, seqno, iat)
    writes: WriteSet = {
        SIGNATURES: {SINGLETON_KEY: dump_json(primary.to_json())},
        COSE_SIGNATURES: {SINGLETON_KEY: dump_json(base64.b64encode(cose_sig).decode())},
        TREE: {SINGLETON_KEY: serialised_tree},
    }
    return writes, primary, cose_sig
