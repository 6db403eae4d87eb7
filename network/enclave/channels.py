"""Node-to-node channels: TCP with mutual TLS, length-prefixed CBOR frames (`network.enclave.wire`).

Both ends present their service-endorsed node certificate and accept only certificates issued by the
service identity; on top of that, a frame is accepted only if its sender is the node the certificate
belongs to (a node id is the digest of the node's public key), and an outgoing connection only if the
server is the node it was meant for. So one node cannot speak for another.

Each peer has a bounded outgoing queue: when it is full, new messages are dropped and counted
(consensus tolerates loss; the primary's backpressure to clients is decided elsewhere). A lost connection
is re-established with exponential backoff (50 ms doubling to 2 s). Consensus never waits on a channel.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from loguru import logger

from ledger.identity import key_id
from network.enclave.wire import Envelope, WireError, decode, encode, frame_length

BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


def tls_contexts(cert_pem: str, key_pem: str, service_pem: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """(server, client) contexts presenting this node's certificate and trusting only the service."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False  # peers are checked by node id below, not by host name
    with tempfile.TemporaryDirectory() as private:
        cert_path, key_path = os.path.join(private, "cert.pem"), os.path.join(private, "key.pem")
        with open(cert_path, "w") as f:
            f.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(key_pem)
        for context in (server, client):
            context.minimum_version = ssl.TLSVersion.TLSv1_2
            context.load_cert_chain(cert_path, key_path)
            context.load_verify_locations(cadata=service_pem)
            context.verify_mode = ssl.CERT_REQUIRED
    return server, client


def _peer_id(writer: asyncio.StreamWriter) -> str | None:
    ssl_object = writer.get_extra_info("ssl_object")
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    if der is None:
        return None
    key = x509.load_der_x509_certificate(der).public_key()
    return key_id(key) if isinstance(key, ec.EllipticCurvePublicKey) else None


class _Peer:
    def __init__(self, address: str, queue_limit: int) -> None:
        self.address = address
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(queue_limit)
        self.task: asyncio.Task[None] | None = None
        self.connected = False


class Channels:
    def __init__(self, node_id: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext,
                 on_message: Callable[[Envelope], None], *, queue_limit: int = 10_000,
                 source_host: str | None = None) -> None:
        self.node_id = node_id
        self.server_context = server_context
        self.client_context = client_context
        self.on_message = on_message
        self.queue_limit = queue_limit
        self.source_host = source_host  # outgoing connections leave from this address (the node's own)
        self.peers: dict[str, _Peer] = {}
        self.dropped = 0
        self.rejected = 0
        self._server: asyncio.Server | None = None
        self._incoming: set[asyncio.Task[None]] = set()

    async def listen(self, host: str, port: int) -> str:
        self._server = await asyncio.start_server(self._serve, host, port, ssl=self.server_context)
        bound = self._server.sockets[0].getsockname()
        return f"{bound[0]}:{bound[1]}"

    def set_peer(self, node_id: str, address: str) -> None:
        """Connect to `node_id` at host:port (replacing an older address)."""
        peer = self.peers.get(node_id)
        if peer is not None and peer.address == address:
            return
        if peer is not None and peer.task is not None:
            peer.task.cancel()
        peer = _Peer(address, self.queue_limit)
        self.peers[node_id] = peer
        peer.task = asyncio.get_running_loop().create_task(self._run_peer(node_id, peer))

    def remove_peer(self, node_id: str) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is not None and peer.task is not None:
            peer.task.cancel()

    def send(self, envelope: Envelope) -> bool:
        """Queue a message for its recipient; False if it was dropped (unknown peer or full queue)."""
        peer = self.peers.get(envelope.message.to)
        if peer is None:
            self.dropped += 1
            return False
        try:
            peer.queue.put_nowait(encode(envelope))
            return True
        except asyncio.QueueFull:
            self.dropped += 1
            return False

    async def _run_peer(self, node_id: str, peer: _Peer) -> None:
        backoff = BACKOFF_START
        host, _, port = peer.address.rpartition(":")
        while True:
            writer: asyncio.StreamWriter | None = None
            try:
                local = (self.source_host, 0) if self.source_host else None
                _, writer = await asyncio.open_connection(host, int(port), ssl=self.client_context,
                                                          local_addr=local)
                if _peer_id(writer) != node_id:
                    raise ConnectionError(f"{peer.address} is not node {node_id[:12]}")
                peer.connected = True
                backoff = BACKOFF_START
                while True:
                    frame = await peer.queue.get()
                    writer.write(frame)
                    if peer.queue.empty():
                        await writer.drain()
            except asyncio.CancelledError:
                raise
            except (OSError, ssl.SSLError, ConnectionError) as e:
                if peer.connected:
                    logger.info(f"channel to {node_id[:12]} lost: {e}")
                peer.connected = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
            finally:
                if writer is not None:
                    writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._incoming.add(task)
        sender = _peer_id(writer)
        try:
            while True:
                header = await reader.readexactly(4)
                body = await reader.readexactly(frame_length(header))
                envelope = decode(body)
                if envelope.message.sender != sender or envelope.message.to != self.node_id:
                    self.rejected += 1
                    logger.warning(f"dropped a message claiming to be from {envelope.message.sender[:12]} on a "
                                   f"channel authenticated as {str(sender)[:12]}")
                    continue
                self.on_message(envelope)
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError, OSError):
            pass
        except WireError as e:
            self.rejected += 1
            logger.warning(f"closing a channel from {str(sender)[:12]}: {e}")
        finally:
            writer.close()
            if task is not None:
                self._incoming.discard(task)

    async def close(self) -> None:
        for node_id in list(self.peers):
            self.remove_peer(node_id)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._incoming):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
