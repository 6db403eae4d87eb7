"""Confidential inference from the client's side: check the node by attestation, run a model, verify later.

`attest(node)` asks the node for its quote (`GET /node/quotes/self`) and checks that its measurement is one
governance allows (`GET /gov/service/join-policy`) and that its report data is bound to the public key of the
certificate that node presented on this very TLS connection; `infer(node, name, inputs)` then sends the request
on that connection. `verify_inference(receipt, claims, service_cert)` checks a kept answer offline: the
receipt verifies against the service certificate alone and its claims digest is SHA-256 of the model, input and
output digests the answer named (and, given the outputs' bytes, that they are the ones the output digest covers).

Guarantees: nothing is sent to a node whose attestation does not check (`AttestationFailed`); a receipt that
does not prove the claims raises `ReceiptInvalid`. Not here: a TEE's quote (virtual mode's quote proves nothing
about hardware; the checks are those a client makes on real hardware).
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509

from ledger.genesis import VIRTUAL_FORMAT, VirtualQuote
from ledger.identity import key_id
from ledger.receipts import VerifiedReceipt
from network.client.connection import ClientError, ServiceClient, error_of

GOV_API = "api-version=2024-07-01"
CLAIM_NAMES = ("model_digest", "input_digest", "output_digest")


class AttestationFailed(ClientError):
    """The node's quote is malformed, names a measurement governance does not allow, or is not bound to the key
    the node serves TLS with."""


@dataclass(frozen=True)
class Inference:
    outputs: dict[str, Any]
    claims: dict[str, str]
    txid: str
    output_bytes: bytes  # the `outputs` member exactly as answered (what `output_digest` covers)


def attest(node: ServiceClient) -> VirtualQuote:
    """Check the node behind `node`'s connection (see the module docstring); its quote."""
    answer = node.call("GET", "/node/quotes/self")
    if answer.status != 200:
        raise AttestationFailed(f"the node did not give its quote: HTTP {answer.status}")
    peer = node.peer_certificate()  # the same connection the quote came over
    try:
        body = answer.json()
        if body.get("format") != VIRTUAL_FORMAT:
            raise AttestationFailed(f"quote format {body.get('format')!r}, expected {VIRTUAL_FORMAT}")
        quote = VirtualQuote.parse(base64.b64decode(body["raw"], validate=True))
    except (KeyError, TypeError, ValueError, orjson.JSONDecodeError) as e:
        raise AttestationFailed(f"the node's quote is malformed: {e}") from None
    if peer is None:
        raise AttestationFailed("the TLS connection shows no node certificate")
    served_key = x509.load_der_x509_certificate(peer).public_key()
    if quote.report_data != key_id(served_key):  # type: ignore[arg-type]
        raise AttestationFailed("the quote is not bound to the key this node serves TLS with")
    policy = node.call("GET", f"/gov/service/join-policy?{GOV_API}")
    if policy.status != 200:
        raise error_of(policy)
    allowed = policy.json().get("virtual", {}).get("measurements", [])
    if quote.measurement not in allowed:
        raise AttestationFailed(f"measurement {quote.measurement} is not one governance allows")
    return quote


def infer(node: ServiceClient, name: str, inputs: dict[str, Any], *, record: bool = False) -> Inference:
    body: dict[str, Any] = {"inputs": inputs}
    if record:
        body["record"] = True
    answer = node.call("POST", f"/app/models/{name}:infer", orjson.dumps(body))
    if answer.status != 200:
        raise error_of(answer)
    raw = answer.body
    start, end = len(b'{"outputs":'), raw.rfind(b',"claims":')
    if not raw.startswith(b'{"outputs":') or end < start or answer.txid is None:
        raise ClientError("the node's inference answer is not in the app's form")
    parsed = answer.json()
    return Inference(parsed["outputs"], parsed["claims"], answer.txid, raw[start:end])


def claims_digest(claims: dict[str, str]) -> bytes:
    """SHA-256(model digest ‖ input digest ‖ output digest), what the transaction's receipt commits to."""
    try:
        return hashlib.sha256(b"".join(bytes.fromhex(claims[k]) for k in CLAIM_NAMES)).digest()
    except (KeyError, ValueError, TypeError) as e:
        raise ClientError(f"claims need {', '.join(CLAIM_NAMES)} as hex digests: {e}") from None


def verify_inference(receipt: dict[str, Any] | bytes, claims: dict[str, str], service_cert: x509.Certificate | str,
                     *, output_bytes: bytes | None = None) -> VerifiedReceipt:
    """Verify a kept inference offline (see the module docstring)."""
    from network.client.service import ReceiptInvalid, verify_receipt

    if output_bytes is not None and hashlib.sha256(output_bytes).hexdigest() != claims.get("output_digest"):
        raise ReceiptInvalid("the outputs are not the ones the claims' output digest covers")
    return verify_receipt(receipt, service_cert, claims_digest=claims_digest(claims))
