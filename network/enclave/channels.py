"""Node-to-node channels: mutual TLS terminated in the enclave, length-prefixed CBOR frames (`wire`).

The host carries each channel's TLS records over a TCP connection it opens or accepts (`boundary.HostCalls`);
everything else is here. Both ends present their service-endorsed node certificate and accept only
certificates issued by the service identity; on top of that, a frame is accepted only if its sender is the
node the certificate belongs to (a node id is the digest of the node's public key), and an outgoing channel
only if the server is the node it was meant for. So one node cannot speak for another.

Each peer has a bounded queue of frames waiting for its channel: when it is full, new messages are dropped
and counted (consensus tolerates loss). With `defer` (the node's loop), frames sent to a connected peer are
gathered and written together once the loop's ready work is done (`flush`): one TLS record and one send for
what a turn of the loop addressed to that peer (the answers to a batch of forwarded requests, say) rather than
one each. A lost channel is opened again with exponential backoff (50 ms
doubling to 2 s), kept by the host's ticks. Consensus never waits on a channel.
"""

from __future__ import annotations

import ssl
from collections import deque
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from loguru import logger

from ledger.identity import key_id
from network.boundary import HostCalls
from network.enclave.tls_session import TlsSession
from network.enclave.wire import Envelope, WireError, decode, encode, frame_length

BACKOFF_START = 0.05
BACKOFF_MAX = 2.0


def _node_id_of(der: bytes | None) -> str | None:
    if der is None:
        return None
    key = x509.load_der_x509_certificate(der).public_key()
    return key_id(key) if isinstance(key, ec.EllipticCurvePublicKey) else None


class _Link:
    """One TLS connection carrying frames, in either direction."""

    def __init__(self, conn: int, session: TlsSession, peer: _Peer | None) -> None:
        self.conn = conn
        self.session = session
        self.peer = peer  # the peer this node opened the link to; None for a link a peer opened
        self.sender: str | None = None  # the authenticated node at the other end, once established
        self.buffer = bytearray()


class _Peer:
    def __init__(self, node_id: str, address: str, queue_limit: int) -> None:
        self.node_id = node_id
        self.address = address
        self.queue: deque[bytes] = deque()
        self.queue_limit = queue_limit
        self.link: _Link | None = None
        self.pending: list[bytes] = []  # frames for the connected link, written at the next flush
        self.connected = False
        self.backoff = BACKOFF_START
        self.retry_at = 0.0


class Channels:
    def __init__(self, node_id: str, server_context: ssl.SSLContext, client_context: ssl.SSLContext,
                 on_message: Callable[[Envelope], None], host: HostCalls, new_conn: Callable[[], int],
                 clock: Callable[[], float], *, queue_limit: int = 10_000, source_host: str | None = None,
                 defer: Callable[[Callable[[], None]], None] | None = None) -> None:
        self.node_id = node_id
        self.server_context = server_context
        self.client_context = client_context
        self.on_message = on_message
        self.host = host
        self.new_conn = new_conn
        self.clock = clock
        self.queue_limit = queue_limit
        self.source_host = source_host  # outgoing connections leave from this address (the node's own)
        self.peers: dict[str, _Peer] = {}
        self.links: dict[int, _Link] = {}
        self.dropped = 0
        self.rejected = 0
        self._defer = defer
        self._flush_scheduled = False

    # --- peers -------------------------------------------------------------------------------------------

    def set_peer(self, node_id: str, address: str) -> None:
        """Keep a channel to `node_id` at host:port (replacing an older address)."""
        peer = self.peers.get(node_id)
        if peer is not None and peer.address == address:
            return
        if peer is not None:
            self._drop_link(peer)
        peer = _Peer(node_id, address, self.queue_limit)
        self.peers[node_id] = peer
        self._connect(peer)

    def remove_peer(self, node_id: str) -> None:
        peer = self.peers.pop(node_id, None)
        if peer is not None:
            self._drop_link(peer)

    def send(self, envelope: Envelope) -> bool:
        """Send, or queue until the channel is up; False if dropped (unknown peer or full queue)."""
        peer = self.peers.get(envelope.message.to)
        if peer is None:
            self.dropped += 1
            return False
        frame = encode(envelope)
        if peer.connected and peer.link is not None:
            if self._defer is None:
                peer.link.session.write(frame)
                return True
            peer.pending.append(frame)
            if not self._flush_scheduled:
                self._flush_scheduled = True
                self._defer(self.flush)
            return True
        return self._enqueue(peer, frame)

    def _enqueue(self, peer: _Peer, frame: bytes) -> bool:
        if len(peer.queue) >= peer.queue_limit:
            self.dropped += 1
            return False
        peer.queue.append(frame)
        return True

    def flush(self) -> None:
        """Write the frames gathered for each peer, together."""
        self._flush_scheduled = False
        for peer in list(self.peers.values()):  # (a removed or replaced peer's frames went out as it was dropped)
            self._write_pending(peer)

    def _write_pending(self, peer: _Peer) -> None:
        """The peer's gathered frames: to its link, or, if it is down, to the head of the queue for the next one
        (ahead of anything sent since, which the queue holds after them)."""
        frames, peer.pending = peer.pending, []
        if not frames:
            return
        link = peer.link
        if peer.connected and link is not None:
            try:
                link.session.write(b"".join(frames))
            except (ssl.SSLError, ValueError) as e:  # a session that failed: lost with it, as consensus allows
                self._fail(link, f"channel to {peer.node_id[:12]} failed: {e}")
            return
        for frame in frames:
            self._enqueue(peer, frame)

    def tick(self) -> None:
        """Open again the channels whose backoff has passed."""
        now = self.clock()
        for peer in self.peers.values():
            if peer.link is None and now >= peer.retry_at:
                self._connect(peer)

    def close(self) -> None:
        self.flush()  # what was sent goes out before the links close
        for node_id in list(self.peers):
            self.remove_peer(node_id)
        for conn in list(self.links):
            self.host.close(conn)
        self.links.clear()

    # --- connections (from the host) ---------------------------------------------------------------------

    def opened(self, conn: int) -> None:
        """A connection on the node-to-node interface: one a peer opened, or one this node asked for."""
        link = self.links.get(conn)
        if link is None:  # accepted: the peer speaks first
            self.links[conn] = _Link(conn, self._session(conn, server_side=True), None)
        else:
            link.session.start()

    def received(self, conn: int, data: bytes) -> None:
        link = self.links.get(conn)
        if link is None:
            return
        try:
            plaintext = link.session.feed(data)
        except ssl.SSLError as e:
            self._fail(link, f"TLS failed: {e}")
            return
        if link.sender is None and link.session.established and not self._authenticate(link):
            return
        if plaintext:
            link.buffer += plaintext
            self._read_frames(link)

    def closed(self, conn: int) -> None:
        link = self.links.pop(conn, None)
        if link is None or link.peer is None or link.peer.link is not link:
            return
        peer = link.peer
        if peer.connected:
            logger.info(f"channel to {peer.node_id[:12]} lost")
        peer.connected = False
        peer.link = None
        self._write_pending(peer)  # into the queue, ahead of what is sent from now on
        peer.retry_at = self.clock() + peer.backoff
        peer.backoff = min(peer.backoff * 2, BACKOFF_MAX)

    def owns(self, conn: int) -> bool:
        return conn in self.links

    # --- internals ---------------------------------------------------------------------------------------

    def _session(self, conn: int, *, server_side: bool) -> TlsSession:
        context = self.server_context if server_side else self.client_context
        return TlsSession(context, server_side=server_side, send=lambda data: self.host.send(conn, data))

    def _connect(self, peer: _Peer) -> None:
        conn = self.new_conn()
        peer.link = _Link(conn, self._session(conn, server_side=False), peer)
        self.links[conn] = peer.link
        self.host.connect(conn, peer.address, self.source_host)

    def _authenticate(self, link: _Link) -> bool:
        link.sender = _node_id_of(link.session.peer_certificate())
        peer = link.peer
        if peer is None:
            return True
        if link.sender != peer.node_id:
            self._fail(link, f"{peer.address} is not node {peer.node_id[:12]}")
            return False
        peer.connected = True
        peer.backoff = BACKOFF_START
        if peer.queue:
            link.session.write(b"".join(peer.queue))
            peer.queue.clear()
        return True

    def _read_frames(self, link: _Link) -> None:
        buffer = link.buffer
        pos = 0
        try:
            while len(buffer) - pos >= 4:
                length = frame_length(bytes(buffer[pos:pos + 4]))
                if len(buffer) - pos - 4 < length:
                    break
                envelope = decode(bytes(buffer[pos + 4:pos + 4 + length]))
                pos += 4 + length
                if link.peer is not None:
                    continue  # the peer this node opened the link to only answers at TLS level
                if envelope.message.sender != link.sender or envelope.message.to != self.node_id:
                    self.rejected += 1
                    logger.warning(f"dropped a message claiming to be from {envelope.message.sender[:12]} on a "
                                   f"channel authenticated as {str(link.sender)[:12]}")
                    continue
                self.on_message(envelope)
        except WireError as e:
            self.rejected += 1
            self._fail(link, f"closing a channel from {str(link.sender)[:12]}: {e}")
            return
        finally:
            del buffer[:pos]

    def _fail(self, link: _Link, reason: str) -> None:
        if link.peer is None:
            logger.warning(reason)
        else:
            logger.info(reason)
        self.host.close(link.conn)

    def _drop_link(self, peer: _Peer) -> None:
        self._write_pending(peer)  # to the link being closed: the host sends what was written before closing
        if peer.link is not None:
            self.links.pop(peer.link.conn, None)
            self.host.close(peer.link.conn)
            peer.link = None
        peer.connected = False
