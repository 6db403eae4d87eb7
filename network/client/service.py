"""A high-level Python client for a service, for its three kinds of users.

```python
from network.client.service import Client

user = Client("https://127.0.0.1:8000", "service_cert.pem", cert="user0_cert.pem", key="user0_privk.pem")
txid = user.write("/app/log/private", {"id": 42, "msg": "hello"})    # the x-ms-ccf-transaction-id
user.wait_for_commit(txid)                                          # raises TransactionInvalid if lost
proof = user.verified_receipt(txid)                                  # fetched and verified offline

member = Client(url, "service_cert.pem", cert="member0_cert.pem", key="member0_privk.pem").member()
proposal = member.propose([{"name": "trigger_ledger_rekey"}])
member.vote(proposal["proposalId"])

verify_receipt(receipt_json_or_cose_bytes, "service_cert.pem", claims_digest=sha256(b"msg").digest())

answer = user.infer("mlp", {"x": [[1.0, 2.0, 3.0, 4.0]]})          # app.inference, the node attested first
verify_inference(user.receipt(answer.txid), answer.claims, "service_cert.pem")
```

Guarantees: TLS is pinned to the service certificate; one kept-alive connection per node URL; several URLs
are tried in turn when a node cannot be reached; only requests that are safe to repeat (GET, HEAD) are
retried after a connection failure or a 503, and a write is never sent twice; every error is a typed
`ClientError` (a `ServiceError` carries CCF's error code and message; `ServiceCertificateMismatch` says the
node is not the service whose certificate was given). Receipt verification trusts only the
service certificate given, follows service endorsements across a change of service identity, and checks a
claims digest against the application's value.
"""

from __future__ import annotations

import hashlib
import http.client
import ssl
import time
from typing import Any

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from governance.member_client import MemberSigner
from ledger import cose
from ledger.endorsements import EndorsementError, verify_endorsement_chain
from ledger.errors import ReceiptError
from ledger.identity import load_cert
from ledger.receipts import VerifiedReceipt, verify_cose_receipt, verify_json_receipt
from ledger.txid import TxID
from network.client.connection import (
    Answer,
    ClientError,
    ServiceCertificateMismatch,
    ServiceClient,
    ServiceError,
    error_of,
)
from network.client.inference import AttestationFailed, Inference
from network.client.inference import attest as attest_node
from network.client.inference import infer as run_inference
from network.client.member_api import MemberApi

SAFE_METHODS = ("GET", "HEAD")


class Unreachable(ClientError):
    """No node of the service could be reached."""


class TransactionInvalid(ClientError):
    """The transaction was lost (an election or rollback replaced it): it will never commit; send it again."""


class CommitTimeout(ClientError):
    """The transaction did not commit in the time given (its status is still Pending or Unknown)."""


class ReceiptInvalid(ClientError):
    """A receipt does not verify against the trusted service certificate (or the claims do not match)."""


class Client:
    def __init__(self, urls: str | list[str], service_cert: str, *, cert: str | None = None, key: str | None = None,
                 timeout: float = 30.0, retries: int = 3) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("a client needs at least one node URL")
        self.service_cert_path = service_cert
        with open(service_cert, "rb") as f:
            self.service_cert = load_cert(f.read())
        self.cert, self.key = cert, key
        self.retries = retries
        self._nodes = [ServiceClient(u, service_cert, cert=cert, key=key, timeout=timeout) for u in self.urls]
        self._current = 0

    # --- requests -----------------------------------------------------------------------------------

    def request(self, method: str, path: str, body: Any = None, *, content_type: str | None = None,
                headers: dict[str, str] | None = None) -> Answer:
        """One request; the answer whatever its status. Raises `Unreachable` if no node answers."""
        method = method.upper()
        attempts = max(1, self.retries) if method in SAFE_METHODS else 1
        last_error: Exception | None = None
        for attempt in range(attempts):
            for offset in range(len(self._nodes)):
                node = self._nodes[(self._current + offset) % len(self._nodes)]
                try:
                    answer = node.call(method, path, body, content_type=content_type, headers=headers)
                except (OSError, http.client.HTTPException, ssl.SSLError) as e:
                    node.close()
                    last_error = e
                    if method not in SAFE_METHODS and not isinstance(e, ConnectionRefusedError):
                        # the write may have been received: never send it twice
                        raise Unreachable(f"{method} {path}: connection lost ({e}); the outcome is unknown") from e
                    continue
                self._current = (self._current + offset) % len(self._nodes)
                if answer.status == 503 and method in SAFE_METHODS and attempt + 1 < attempts:
                    break  # busy: back off, then try again
                return answer
            time.sleep(min(0.1 * 2 ** attempt, 2.0))
        raise Unreachable(f"no node of {', '.join(self.urls)} answered {method} {path}: {last_error}")

    def call(self, method: str, path: str, body: Any = None, **kw: Any) -> Any:
        """A request whose answer must be a success: its JSON (or None), else `ServiceError`."""
        answer = self.request(method, path, body, **kw)
        if answer.status >= 400:
            raise error_of(answer)
        return answer.json() if answer.body and answer.headers.get("content-type", "").startswith(
            "application/json") else (answer.body or None)

    def get(self, path: str, **kw: Any) -> Any:
        return self.call("GET", path, **kw)

    def post(self, path: str, body: Any = None, **kw: Any) -> Any:
        return self.call("POST", path, body, **kw)

    def delete(self, path: str, **kw: Any) -> Any:
        return self.call("DELETE", path, **kw)

    # --- users ----------------------------------------------------------------------------------------

    def write(self, path: str, body: Any = None, method: str = "POST") -> TxID:
        """Send a write; returns its transaction id (commit is not waited for)."""
        answer = self.request(method, path, body)
        if answer.status >= 400:
            raise error_of(answer)
        if answer.txid is None:
            raise ClientError(f"{method} {path} answered without a transaction id")
        return TxID.parse(answer.txid)

    def status(self, txid: TxID | str) -> str:
        result = self.get(f"/app/tx?transaction_id={txid}")
        return str(result["status"])

    def wait_for_commit(self, txid: TxID | str, timeout: float = 30.0, poll: float = 0.02) -> None:
        """Poll `/app/tx` until Committed; `TransactionInvalid` if it never will, `CommitTimeout` after timeout."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(txid)
            if status == "Committed":
                return
            if status == "Invalid":
                raise TransactionInvalid(f"transaction {txid} is Invalid: it was lost and must be sent again")
            if time.monotonic() > deadline:
                raise CommitTimeout(f"transaction {txid} still {status} after {timeout} s")
            time.sleep(poll)

    def receipt(self, txid: TxID | str, timeout: float = 30.0) -> dict[str, Any]:
        """The JSON receipt of a committed transaction (waits while the node fetches it: 202)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.request("GET", f"/app/receipt?transaction_id={txid}")
            if answer.status == 200:
                receipt: dict[str, Any] = answer.json()
                return receipt
            if answer.status != 202 or time.monotonic() > deadline:
                raise error_of(answer)
            time.sleep(0.05)

    def verified_receipt(self, txid: TxID | str, *, claims_digest: bytes | None = None) -> VerifiedReceipt:
        """Fetch the receipt and verify it against the service certificate this client trusts."""
        proof = verify_receipt(self.receipt(txid), self.service_cert, claims_digest=claims_digest)
        expected = TxID.parse(str(txid))
        if (proof.view, proof.seqno) != (expected.view, expected.seqno):
            raise ReceiptInvalid(f"the receipt is for {proof.view}.{proof.seqno}, not {txid}")
        return proof

    def infer(self, name: str, inputs: dict[str, Any], *, attest: bool = True, record: bool = False) -> Inference:
        """Run model `name` of a confidential inference service (`app.inference`): with `attest`, the node is first
        checked by its quote (`AttestationFailed` otherwise) and the request goes over the same connection. The
        answer's `claims` and `txid` let `verify_inference` check it later against the receipt."""
        node = self._nodes[self._current]
        attested = None
        if attest:
            attest_node(node)
            attested = node.peer_certificate()
        result = run_inference(node, name, inputs, record=record)
        if attest and node.peer_certificate() != attested:
            raise AttestationFailed("the connection changed node between the attestation and the inference")
        return result

    # --- members --------------------------------------------------------------------------------------

    def member(self) -> MemberApi:
        """Signed governance calls as the member whose certificate and key this client holds."""
        if self.cert is None or self.key is None:
            raise ClientError("a member client needs the member's certificate and key")
        with open(self.key, "rb") as k, open(self.cert, "rb") as c:
            signer = MemberSigner.from_pem(k.read(), c.read())
        return MemberApi(self._nodes[self._current], signer)

    def recovery_share(self, member_id: str) -> str:
        """The member's encrypted recovery share (base64), as `GET /gov/recovery/encrypted-shares` serves it."""
        result = self.get(f"/gov/recovery/encrypted-shares/{member_id}?api-version=2024-07-01")
        return str(result["encryptedShare"])

    def close(self) -> None:
        for node in self._nodes:
            node.close()


def verify_receipt(receipt: dict[str, Any] | bytes, service_cert: x509.Certificate | str, *,
                   claims_digest: bytes | None = None, claims_of: bytes | None = None,
                   cose_endorsements: list[bytes] | None = None) -> VerifiedReceipt:
    """Verify a JSON (dict) or COSE (bytes) receipt trusting only `service_cert` (a certificate or a PEM path).

    `claims_digest` (or `claims_of`, the application value whose SHA-256 is the digest) must match what the
    receipt commits to. A JSON receipt of an earlier service (before a disaster recovery) carries its own
    `service_endorsements`; a COSE receipt of one needs `cose_endorsements`, what `GET /app/receipt/
    cose_endorsements?transaction_id=` serves. Raises `ReceiptInvalid` saying why otherwise.
    """
    if isinstance(service_cert, str):
        with open(service_cert, "rb") as f:
            service_cert = load_cert(f.read())
    if claims_of is not None:
        claims_digest = hashlib.sha256(claims_of).digest()
    try:
        if isinstance(receipt, bytes) and cose_endorsements:
            trusted = service_cert.public_key()
            if not isinstance(trusted, ec.EllipticCurvePublicKey):
                raise ReceiptInvalid("the service certificate must hold an EC key")
            seqno = _cose_receipt_seqno(receipt)
            key = verify_endorsement_chain(trusted, cose_endorsements, seqno)
            proof = verify_cose_receipt(receipt, key, expected_claims_digest=claims_digest)
        elif isinstance(receipt, bytes):
            proof = verify_cose_receipt(receipt, service_cert, expected_claims_digest=claims_digest)
        else:
            proof = verify_json_receipt(receipt, service_cert, expected_claims_digest=claims_digest)
    except (ReceiptError, EndorsementError) as e:
        raise ReceiptInvalid(f"{type(e).__name__}: {e}") from None
    if claims_digest is not None and proof.claims_digest not in (None, claims_digest):
        raise ReceiptInvalid("the receipt commits to other claims than the application value")
    return proof


def _cose_receipt_seqno(receipt: bytes) -> int:
    """The seqno a COSE receipt's commit evidence names (checked again by the full verification)."""
    try:
        proof = cbor2.loads(cose.decode(receipt).unprotected[cose.HDR_VDP][-1][0])
        return int(str(proof[1][1]).split(":")[1].split(".")[1])
    except (cose.CoseError, KeyError, IndexError, TypeError, ValueError, cbor2.CBORDecodeError) as e:
        raise ReceiptInvalid(f"ReceiptFormatError: not a CCF COSE receipt ({e})") from None


__all__ = ["Client", "ClientError", "CommitTimeout", "ReceiptInvalid", "ServiceCertificateMismatch", "ServiceError",
           "TransactionInvalid", "Unreachable", "verify_receipt"]
