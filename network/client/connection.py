"""A small HTTPS client for a service: TLS pinned to the service certificate, an optional client identity,
one kept-alive connection. Used by the sandbox, the members' script and the tests.

`ServiceClient.call` returns the status, headers and body of one request; `ServiceError` carries CCF's
error code and message when a caller asks for a successful answer (`json_ok`). A node whose TLS certificate
does not verify against the service certificate given raises `ServiceCertificateMismatch`, which names the
certificate file and what to do, before any request is sent.
"""

from __future__ import annotations

import http.client
import ssl
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson


class ClientError(Exception):
    """Base of the client's errors."""


class ServiceCertificateMismatch(ClientError):
    """The node's TLS certificate is not signed by the service certificate the client was given."""


class ServiceError(ClientError):
    """The service answered with an error."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body) if self.body else None

    @property
    def txid(self) -> str | None:
        return self.headers.get("x-ms-ccf-transaction-id")


class ServiceClient:
    def __init__(self, url: str, service_cert: str, *, cert: str | None = None, key: str | None = None,
                 timeout: float = 30.0) -> None:
        parts = urlsplit(url)
        if parts.scheme != "https" or parts.hostname is None:
            raise ValueError(f"{url!r} is not an https:// URL")
        self.url = url
        self.host = parts.hostname
        self.port = parts.port or 443
        self.service_cert_path = service_cert
        self.context = ssl.create_default_context(cafile=service_cert)
        if cert is not None:
            self.context.load_cert_chain(cert, key)
        self.timeout = timeout
        self._conn: http.client.HTTPSConnection | None = None

    def _connection(self) -> http.client.HTTPSConnection:
        if self._conn is None:
            self._conn = http.client.HTTPSConnection(self.host, self.port, context=self.context, timeout=self.timeout)
        return self._conn

    def call(self, method: str, path: str, body: bytes | Any = None, *, content_type: str | None = None,
             headers: dict[str, str] | None = None) -> Answer:
        raw = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        sent = dict(headers or {})
        if raw is not None:
            sent.setdefault("content-type", content_type or "application/json")
        for attempt in (1, 2):
            conn = self._connection()
            try:
                conn.request(method, path, raw, sent)
                response = conn.getresponse()
                data = response.read()
                return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                # the server closed an idle kept-alive connection: reconnect once
                self.close()
                if attempt == 2:
                    raise
            except ssl.SSLCertVerificationError as e:
                self.close()
                raise ServiceCertificateMismatch(
                    f"the node at {self.url} presented a TLS certificate that does not verify against the service "
                    f"certificate {self.service_cert_path} ({e.verify_message}): give the service's own certificate "
                    "(--service-cert, or the client's service_cert); a new or recovered service has a new one"
                ) from None
        raise AssertionError("unreachable")

    def peer_certificate(self) -> bytes | None:
        """The DER certificate the node presented on the current connection (None before the first request)."""
        if self._conn is None or self._conn.sock is None:
            return None
        sock = self._conn.sock
        return sock.getpeercert(binary_form=True) if isinstance(sock, ssl.SSLSocket) else None

    def json_ok(self, method: str, path: str, body: bytes | Any = None, **kw: Any) -> Any:
        answer = self.call(method, path, body, **kw)
        if answer.status >= 400:
            raise error_of(answer)
        return answer.json()

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def error_of(answer: Answer) -> ServiceError:
    try:
        error = orjson.loads(answer.body)["error"]
        return ServiceError(answer.status, str(error["code"]), str(error["message"]))
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return ServiceError(answer.status, "", answer.body.decode(errors="replace"))
