"""Checking a receipt file: JSON or COSE, detected from its bytes, verified against the service certificate.

- JSON: CCF's receipt object (what `/app/receipt?transaction_id=` returns), or an object holding it under
  `"receipt"` (what the logging app's `historical_receipt` endpoints return, `{"msg", "receipt"}`);
- COSE: a COSE_Sign1 (CBOR, tag 18) with the inclusion proof in its unprotected header (CCF 6.x).
A file whose first non-blank byte is `{` is JSON; anything else is taken as COSE.

Guarantees: `check_receipt` returns a `ReceiptCheck` only if the receipt verifies with
`ledger.receipts.verify_json_receipt` / `verify_cose_receipt` trusting nothing but `service_cert` and, when an
expected claims digest is given, binds exactly that digest; otherwise it raises `ReceiptError` (a
`ReceiptFormatError` for bytes that are neither). `claims_digest_of_msg` is the logging app's claim,
SHA-256 of the message's UTF-8 bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson
from cryptography import x509

from ledger.errors import ReceiptFormatError
from ledger.receipts import VerifiedReceipt, verify_cose_receipt, verify_json_receipt


@dataclass(frozen=True)
class ReceiptCheck:
    kind: str  # "json" or "cose"
    proved: VerifiedReceipt
    node_id: str | None  # the signing node (JSON receipts; COSE receipts are signed by the service)
    claims_checked: bool

    @property
    def txid(self) -> str | None:
        p = self.proved
        return f"{p.view}.{p.seqno}" if p.seqno is not None else None

    def to_json(self) -> dict[str, Any]:
        p = self.proved
        return {
            "ok": True, "kind": self.kind, "txid": self.txid, "is_signature": p.is_signature,
            "root": p.root.hex(), "leaf": p.leaf.hex(), "node_id": self.node_id,
            "write_set_digest": p.write_set_digest.hex() if p.write_set_digest is not None else None,
            "claims_digest": p.claims_digest.hex() if p.claims_digest is not None else None,
            "claims_checked": self.claims_checked,
        }

    def describe(self) -> str:
        what = f"transaction {self.txid}" if self.txid else "signature transaction"
        signer = f"node {self.node_id}, endorsed by the service," if self.node_id else "the service"
        lines = [f"receipt OK ({self.kind.upper()}): {what} is in the ledger: its leaf is under the Merkle root "
                 f"{self.proved.root.hex()} signed by {signer} whose certificate you trust"]
        if self.proved.claims_digest is not None:
            state = "matches the expected one" if self.claims_checked else "not checked (no --claims-*)"
            lines.append(f"  claims digest {self.proved.claims_digest.hex()}: {state}")
        return "\n".join(lines)


def claims_digest_of_msg(msg: str) -> bytes:
    return hashlib.sha256(msg.encode()).digest()


def detect_kind(data: bytes) -> str:
    return "json" if data.lstrip()[:1] == b"{" else "cose"


def check_receipt(data: bytes, service_cert: x509.Certificate, *,
                  expected_claims_digest: bytes | None = None) -> ReceiptCheck:
    """Verify a receipt file's bytes; raise `ReceiptError` naming the check that failed."""
    if detect_kind(data) == "json":
        try:
            receipt = orjson.loads(data)
        except orjson.JSONDecodeError as e:
            raise ReceiptFormatError(f"not a JSON receipt: {e}") from None
        if isinstance(receipt, dict) and isinstance(receipt.get("receipt"), dict) and "signature" not in receipt:
            receipt = receipt["receipt"]
        proved = verify_json_receipt(receipt, service_cert, expected_claims_digest=expected_claims_digest)
        return ReceiptCheck("json", proved, str(receipt.get("node_id")), expected_claims_digest is not None)
    if not data:
        raise ReceiptFormatError("empty file")
    proved = verify_cose_receipt(data, service_cert, expected_claims_digest=expected_claims_digest)
    return ReceiptCheck("cose", proved, None, expected_claims_digest is not None)
