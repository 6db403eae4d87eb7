"""An in-process node serving the logging app: a real `Enclave` over a real service ledger with files, opened by
writing the service status and user0's certificate straight to the KV, and a host whose fetches run at once or
when the test says so."""

from __future__ import annotations

import functools
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.logging import app
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.genesis import GenesisMember, VirtualQuote
from ledger.identity import NodeIdentity, PartyIdentity
from ledger.service_ledger import ServiceLedger
from ledger.tables import SERVICE_INFO, SINGLETON_KEY, USERS_CERTS
from ledger.txid import TxID
from network.boundary import EnclaveSettings, SignaturePolicy
from network.enclave.enclave import Enclave
from network.enclave.historical import TXID_REQUEST_HEADER
from network.enclave.http import Request, Response
from tests.network.node_harness import FakeHost

CONSTITUTION = "export function validate(input) { return { valid: true }; }"


@functools.cache
def _rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _identities() -> tuple[PartyIdentity, PartyIdentity]:
    return PartyIdentity.create("member0"), PartyIdentity.create("user0")


class AppNode:
    """One node serving `app.logging` to user0; signatures only when the test calls `sign()`."""

    def __init__(self, directory: str, *, immediate: bool = True, **ledger_kwargs: Any) -> None:
        member, self.user = _identities()
        identity = NodeIdentity.create()
        keys = NodeKeys(identity, _rsa_key())
        quote = VirtualQuote("00" * 32, "00" * 32, identity.node_id)
        self.ledger: ServiceLedger = start_new_service(f"{directory}/ledger", [GenesisMember(member.pem)],
                                                       CONSTITUTION, quote, node=keys, **ledger_kwargs)
        tx = self.ledger.begin()
        info = dict(tx.get_json(SERVICE_INFO, SINGLETON_KEY))
        info["status"] = "Open"
        tx.put_json(SERVICE_INFO, SINGLETON_KEY, info)
        tx.put(USERS_CERTS, self.user.id.encode(), self.user.pem.encode())
        self.ledger.commit(tx)
        self.host = FakeHost(immediate)
        assert self.ledger.files is not None
        self.files = self.ledger.files
        self.host.read = self.files.read_range
        self.enclave = Enclave(self.ledger, keys, quote, app, self.host,
                               EnclaveSettings(SignaturePolicy(every_tx=1_000_000, every_ms=10**9), 0))
        self.enclave.sign()
        self.user_der = self.user.cert.public_bytes(serialization.Encoding.DER)

    @property
    def historical(self) -> Any:
        return self.enclave.historical

    def call(self, method: str, target: str, body: Any = None, *, txid: TxID | str | None = None,
             headers: dict[str, str] | None = None) -> Response:
        all_headers = dict(headers or {})
        if txid is not None:
            all_headers[TXID_REQUEST_HEADER] = str(txid)
        raw = b"" if body is None else orjson.dumps(body)
        return self.enclave.handle(Request(method, target, all_headers, raw, self.user_der))

    def write(self, scope: str, record_id: int, msg: str, **extra: Any) -> TxID:
        response = self.call("POST", f"/app/log/{scope}", {"id": record_id, "msg": msg, **extra})
        assert response.status == 200, response.body
        return TxID.parse(dict(response.headers)["x-ms-ccf-transaction-id"])

    def delete(self, scope: str, record_id: int) -> TxID:
        response = self.call("DELETE", f"/app/log/{scope}?id={record_id}")
        assert response.status == 200, response.body
        return TxID.parse(dict(response.headers)["x-ms-ccf-transaction-id"])

    def sign(self) -> TxID:
        """Sign (and so commit) what is pending; the latest signature if nothing is."""
        return self.enclave.sign() or self.ledger.txid(self.ledger.last_signature_seqno)

    def get(self, target: str, txid: TxID | str | None = None) -> Response:
        return self.call("GET", target, txid=txid)


def body(response: Response) -> Any:
    return orjson.loads(response.body)


def error_code(response: Response) -> str:
    code: str = orjson.loads(response.body)["error"]["code"]
    return code
