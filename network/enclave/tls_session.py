"""TLS terminated inside the enclave: one `ssl.SSLObject` over memory buffers per connection.

The host hands the enclave a connection's bytes as they arrive and writes out what the enclave gives back;
both are TLS records, so the host never sees a request, an answer, a consensus message or a key (as in CCF,
where the host relays encrypted bytes over its ringbuffer and TLS lives in the enclave).

`TlsSession.feed(data)` takes records in and returns the plaintext they carried (empty while the handshake
runs); `write(plaintext)` encrypts and passes the records to `send`. Errors are `ssl.SSLError` (a bad
handshake or record), after which the session is unusable and the caller closes the connection.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Callable


class TlsSession:
    def __init__(self, context: ssl.SSLContext, *, server_side: bool, send: Callable[[bytes], None]) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._send = send
        self.established = False
        self.closed_by_peer = False

    def start(self) -> None:
        """A client's first flight (ClientHello); a server waits for it."""
        self._handshake()
        self._flush()

    def feed(self, data: bytes) -> bytes:
        """Records in; the plaintext they complete out. Raises `ssl.SSLError` on a bad handshake or record."""
        self._incoming.write(data)
        if not self.established and not self._handshake():
            self._flush()
            return b""
        chunks = []
        while True:
            try:
                chunk = self.ssl_object.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify from the peer
                self.closed_by_peer = True
                break
            if not chunk:
                self.closed_by_peer = True
                break
            chunks.append(chunk)
        self._flush()  # a TLS 1.3 server's session tickets, or a key update
        return b"".join(chunks)

    def write(self, plaintext: bytes) -> None:
        if plaintext:
            self.ssl_object.write(plaintext)
            self._flush()

    def close(self) -> None:
        """Send close_notify (best effort)."""
        with contextlib.suppress(ssl.SSLError, ValueError):
            self.ssl_object.unwrap()
        self._flush()

    def peer_certificate(self) -> bytes | None:
        """The peer's certificate (DER), if it presented one."""
        return self.ssl_object.getpeercert(binary_form=True) if self.established else None

    def _handshake(self) -> bool:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.established = True
        return True

    def _flush(self) -> None:
        data = self._outgoing.read()
        if data:
            self._send(data)
