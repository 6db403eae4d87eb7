"""Real node processes for the end-to-end tests, started the way `scripts/sandbox.py` starts them.

A `Sandbox` is one workspace laid out as the sandbox lays it out (`sandbox_common/` with the identities and the
service certificate, `sandbox_0/` with the node's configuration, data and logs), a node listening on a free
port of 127.0.0.1, and the clients the tests call it with: `ServiceClient`s pinned to the service certificate
(user0, member0, an arbitrary identity, or none), `MemberApi` for member0, and raw TLS connections for what
an HTTP client library would refuse to send.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from governance.member_client import MemberSigner
from network.client.connection import Answer, ServiceClient
from network.client.member_api import MemberApi
from scripts.sandbox import make_identities, node_config, open_service, start_node

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
API_VERSION = "api-version=2024-07-01"
TXID = "x-ms-ccf-transaction-id"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def free_sandbox_port() -> int:
    """A port P with P..P+2 and P+1000..P+1002 free (the sandbox's client and node-to-node ports)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = int(s.getsockname()[1])
        if base + 1002 > 65535:
            continue
        try:
            with contextlib.ExitStack() as stack:
                for port in (*range(base, base + 3), *range(base + 1000, base + 1003)):
                    sock = stack.enter_context(socket.socket())
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise AssertionError("no free ports for a three-node sandbox")


def error_code(answer: Answer) -> str:
    """CCF's error code from an error answer, checking the body is CCF's `{"error": {"code", "message"}}`."""
    body = answer.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), dict), answer
    assert isinstance(body["error"].get("message"), str), answer
    code: str = body["error"]["code"]
    return code


class Sandbox:
    """One node on its own workspace; `start`, `open` and `stop` it as a test needs."""

    def __init__(self, workspace: Path, **config: Any) -> None:
        self.workspace = workspace
        self.common = workspace / "sandbox_common"
        self.node_dir = workspace / "sandbox_0"
        self.config_extra = config
        make_identities(str(self.common))
        self.port = free_port()
        self.config_path = node_config(str(workspace), self.port, **config)
        self.process: subprocess.Popen[bytes] | None = None
        self.info: dict[str, Any] = {}
        self._clients: list[ServiceClient] = []

    # --- the node process -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def node_id(self) -> str:
        node_id: str = self.info["node_id"]
        return node_id

    def start(self) -> None:
        assert not self.running, "the node is already running"
        new_service = not (self.node_dir / "sealed_secrets.bin").exists()
        try:
            self.process, self.info = start_node(self.config_path)
        except RuntimeError as e:
            if not (new_service and "address already in use" in str(e).lower()):
                raise
            # the free port was taken before the node bound it: start the new service afresh on another one
            for path in sorted(self.node_dir.rglob("*"), reverse=True):
                if path.is_dir():
                    path.rmdir()
                elif path.name not in ("out", "err"):
                    path.unlink()
            self.port = free_port()
            self.config_path = node_config(str(self.workspace), self.port, **self.config_extra)
            self.process, self.info = start_node(self.config_path)

    def open(self) -> None:
        open_service(self.url, str(self.common))

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, and the node's exit code (it must stop by itself within `timeout`)."""
        assert self.process is not None, "the node was never started"
        for client in self._clients:
            client.close()
        self._clients.clear()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"the node did not stop within {timeout:.0f} s of SIGTERM") from None
        return int(self.process.returncode)

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = (self.node_dir / "err").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- files ------------------------------------------------------------------------------------

    def common_file(self, name: str) -> str:
        return str(self.common / name)

    @property
    def service_cert_path(self) -> str:
        return self.common_file("service_cert.pem")

    @property
    def ledger_dir(self) -> str:
        return str(self.node_dir / "ledger")

    # --- clients ----------------------------------------------------------------------------------

    def client(self, identity: str | None = "user0", *, cert: str | None = None,
               key: str | None = None) -> ServiceClient:
        """A client as `identity` (a name in sandbox_common), as the given cert and key, or anonymous."""
        if cert is None and identity is not None:
            cert, key = self.common_file(f"{identity}_cert.pem"), self.common_file(f"{identity}_privk.pem")
        client = ServiceClient(self.url, self.service_cert_path, cert=cert, key=key, timeout=20)
        self._clients.append(client)
        return client

    def member_signer(self) -> MemberSigner:
        with open(self.common_file("member0_privk.pem"), "rb") as k, \
                open(self.common_file("member0_cert.pem"), "rb") as c:
            return MemberSigner.from_pem(k.read(), c.read())

    def member(self) -> MemberApi:
        return MemberApi(self.client(None), self.member_signer())

    def raw(self, identity: str | None = None, *, cert: str | None = None, key: str | None = None) -> RawConnection:
        """A raw TLS connection, pinned to the service certificate, optionally with a client certificate."""
        context = ssl.create_default_context(cafile=self.service_cert_path)
        if cert is None and identity is not None:
            cert, key = self.common_file(f"{identity}_cert.pem"), self.common_file(f"{identity}_privk.pem")
        if cert is not None:
            context.load_cert_chain(cert, key)
        return self.raw_with_context(context)

    def raw_with_context(self, context: ssl.SSLContext) -> RawConnection:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=20)
        try:
            return RawConnection(context.wrap_socket(sock, server_hostname="127.0.0.1"))
        except BaseException:
            sock.close()
            raise

    # --- waiting ----------------------------------------------------------------------------------

    def wait_for_commit(self, txid: str, client: ServiceClient | None = None, frontend: str = "/node",
                        timeout: float = 20.0) -> None:
        """Poll `<frontend>/tx` until `txid` is Committed (CCF's client pattern); fail on Invalid or timeout."""
        client = client or self.client(None)
        deadline = time.monotonic() + timeout
        status = None
        while time.monotonic() < deadline:
            status = client.json_ok("GET", f"{frontend}/tx?transaction_id={txid}")["status"]
            if status == "Committed":
                return
            assert status in ("Pending", "Unknown"), f"{txid} is {status}"
            time.sleep(0.02)
        raise AssertionError(f"{txid} not committed within {timeout:.0f} s (last status {status})")

    def receipt(self, client: ServiceClient, txid: str, timeout: float = 20.0) -> dict[str, Any]:
        """The receipt of a committed transaction, retrying while the node answers 202 (historical fetch)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = client.call("GET", f"/app/receipt?transaction_id={txid}")
            if answer.status != 202 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert answer.status == 200, answer
        receipt: dict[str, Any] = answer.json()
        return receipt


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def error_code(self) -> str:
        body = self.json()
        assert isinstance(body.get("error"), dict) and isinstance(body["error"].get("message"), str), body
        code: str = body["error"]["code"]
        return code


@dataclass
class RawConnection:
    """HTTP/1.1 by hand over one TLS connection: send any bytes, read answers one by one, see the close."""

    sock: ssl.SSLSocket
    buffer: bytes = b""
    closed: bool = field(default=False)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> bool:
        try:
            chunk = self.sock.recv(65536)
        except (ssl.SSLEOFError, ConnectionResetError, BrokenPipeError):
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buffer += chunk
        return True

    def response(self, head: bool = False) -> RawResponse:
        """The next answer; `head`: it answers a HEAD request, so it has no body whatever its content-length."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                raise AssertionError(f"connection closed before a complete answer; got {self.buffer!r}")
        header_block, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        status_line, *lines = header_block.decode("latin-1").split("\r\n")
        version, status, _ = status_line.split(" ", 2)
        assert version == "HTTP/1.1", status_line
        headers: dict[str, str] = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        length = 0 if head else int(headers.get("content-length", "0"))
        while len(self.buffer) < length:
            if not self._fill():
                raise AssertionError("connection closed in the middle of a body")
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return RawResponse(int(status), headers, body)

    def closed_by_server(self) -> bool:
        """True once the server closes the connection (nothing more is sent); False if it sends more."""
        while not self.closed:
            if self._fill():
                return False
        return self.buffer == b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(method: str, target: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 request as bytes (Host and, with a body, Content-Length added)."""
    lines = [f"{method} {target} HTTP/1.1", "host: 127.0.0.1"]
    sent = dict(headers or {})
    if body:
        sent.setdefault("content-type", "application/json")
        sent.setdefault("content-length", str(len(body)))
    lines += [f"{name}: {value}" for name, value in sent.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_serving(sandbox: Sandbox) -> None:
    """The node still answers on a new connection: an anonymous read and a user's write."""
    assert sandbox.running, "the node has exited"
    with sandbox.raw("user0") as raw:
        raw.send(request("GET", "/node/commit"))
        answer = raw.response()
        assert answer.status == 200 and TXID in answer.headers, answer
        raw.send(request("POST", "/app/log/public", orjson.dumps({"id": 999_999, "msg": "still serving"})))
        answer = raw.response()
        assert answer.status == 200 and answer.body == b"true", answer


def write_committed(client: ServiceClient, record_id: int, msg: str, table: str = "private",
                    timeout: float = 30.0) -> str:
    """Write a record with the logging app and wait until `/app/tx` says Committed; its transaction id."""
    answer = client.call("POST", f"/app/log/{table}", {"id": record_id, "msg": msg})
    assert answer.status == 200 and answer.txid is not None, answer.body
    deadline = time.monotonic() + timeout
    while (status := client.json_ok("GET", f"/app/tx?transaction_id={answer.txid}")["status"]) != "Committed":
        assert status != "Invalid" and time.monotonic() < deadline, f"{answer.txid} is {status}"
        time.sleep(0.05)
    return answer.txid
