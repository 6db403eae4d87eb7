"""Node-to-node channels over real mutual TLS on 127.0.0.1, and the wire format's refusal of bad frames."""

from __future__ import annotations

import itertools
import ssl
from collections.abc import Callable

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, key_pem
from network.boundary import OUTGOING_CONNECTIONS
from network.consensus.raft import AppendEntries, AppendEntriesResponse, EntryMeta, RequestVote, RequestVoteResponse
from network.enclave.channels import BACKOFF_START, Channels
from network.enclave.tls import node_to_node_contexts
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse, WireError, decode, encode
from tests.network.memory_hosts import MemoryHost, MemoryNet

pytestmark = pytest.mark.unit

SERVICE = ServiceIdentity.create()


class _ChannelHandler:
    """What the enclave runtime does with connection events, for a node that has only channels."""

    def __init__(self, channels: Channels) -> None:
        self.channels = channels

    def connection_opened(self, conn: int, interface: str, peer: str) -> None:
        self.channels.opened(conn)

    def received(self, conn: int, data: bytes) -> None:
        self.channels.received(conn, data)

    def connection_closed(self, conn: int) -> None:
        self.channels.closed(conn)


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _node(net: MemoryNet, address: str, service: ServiceIdentity = SERVICE, clock: _Clock | None = None,
          defer: Callable[[Callable[[], None]], None] | None = None) -> tuple[NodeIdentity, Channels, list[Envelope]]:
    identity = NodeIdentity.create().endorsed_by(service)
    assert identity.endorsed is not None
    server, client = node_to_node_contexts(cert_pem(identity.endorsed), key_pem(identity.key), service.pem)
    received: list[Envelope] = []
    host = MemoryHost(net, address)
    ids = itertools.count(OUTGOING_CONNECTIONS)
    channels = Channels(identity.node_id, server, client, received.append, host,  # type: ignore[arg-type]
                        lambda: next(ids), clock or _Clock(), defer=defer)
    host.handler = _ChannelHandler(channels)
    return identity, channels, received


MESSAGES = [
    Envelope(AppendEntries(3, "a", "b", 10, 2, (EntryMeta(11, 3, False), EntryMeta(12, 3, True)), 9),
             (b"entry-11", b"entry-12")),
    Envelope(AppendEntriesResponse(3, "b", "a", True, 12)),
    Envelope(RequestVote(4, "a", "b", 12, 3, True)),
    Envelope(RequestVoteResponse(4, "b", "a", False)),
    Envelope(RequestVote(5, "a", "b", 12, 3, pre_vote=True)),
    Envelope(RequestVoteResponse(5, "b", "a", True, pre_vote=True)),
    Envelope(ForwardedRequest("b", "a", 7, "POST", "/app/log/private", (("content-type", "application/json"),),
                              b'{"id": 1}', b"\x30\x82 certificate")),
    Envelope(ForwardedRequest("b", "a", 8, "GET", "/app/commit", (), b"", None)),
    Envelope(ForwardedResponse("a", "b", 7, 200, (("x-ms-ccf-transaction-id", "2.9"),), b"true")),
]


@pytest.mark.parametrize("envelope", MESSAGES)
def test_every_message_round_trips(envelope: Envelope) -> None:
    assert decode(encode(envelope)[4:]) == envelope


@given(st.binary(max_size=200))
def test_garbage_never_decodes_to_anything_but_a_wire_error(data: bytes) -> None:
    try:
        result = decode(data)
    except WireError:
        return
    assert isinstance(result, Envelope)  # the rare garbage that is a well-formed message


@pytest.mark.parametrize("body", [
    {"t": "ae", "term": 1, "from": "a", "to": "b", "prev": 0, "prev_term": 0, "commit": 0, "entries": [[1, 1, True]]},
    {"t": "aer", "term": -1, "from": "a", "to": "b", "ok": True, "last": 0},
    {"t": "rv", "term": 1, "from": "a", "to": "b", "idx": 0, "idx_term": 0, "transfer": "yes"},
    {"t": "rv", "term": 1, "from": "a", "to": "b", "idx": 0, "idx_term": 0, "transfer": False, "pre": 1},
    {"t": "zz", "term": 1, "from": "a", "to": "b"},
    [1, 2, 3],
])
def test_malformed_messages_are_refused(body: object) -> None:
    with pytest.raises(WireError):
        decode(cbor2.dumps(body))


def test_votes_from_nodes_that_predate_pre_vote_are_real_votes() -> None:
    vote = {"t": "rv", "term": 4, "from": "a", "to": "b", "idx": 12, "idx_term": 3, "transfer": False}
    answer = {"t": "rvr", "term": 4, "from": "b", "to": "a", "granted": True}
    assert decode(cbor2.dumps(vote)).message == RequestVote(4, "a", "b", 12, 3)
    assert decode(cbor2.dumps(answer)).message == RequestVoteResponse(4, "b", "a", True)


def test_two_nodes_exchange_messages_over_mutual_tls_and_the_host_sees_only_records() -> None:
    net = MemoryNet()
    a_id, a, a_got = _node(net, "a:1")
    b_id, b, b_got = _node(net, "b:1")
    a.set_peer(b_id.node_id, "b:1")
    b.set_peer(a_id.node_id, "a:1")
    vote = Envelope(RequestVote(1, a_id.node_id, b_id.node_id, 0, 0))
    answer = Envelope(RequestVoteResponse(1, b_id.node_id, a_id.node_id, True))
    assert a.send(vote)
    net.pump()
    assert b_got == [vote]
    assert b.send(answer)
    net.pump()
    assert a_got == [answer]
    relayed = b"".join(net.listeners["a:1"].sent + net.listeners["b:1"].sent)
    assert encode(vote)[4:] not in relayed and a_id.node_id.encode() not in relayed  # TLS records only


def test_a_node_cannot_speak_for_another_or_join_from_another_service() -> None:
    net = MemoryNet()
    a_id, a, a_got = _node(net, "a:1")
    b_id, b, b_got = _node(net, "b:1")
    c_id, c, _ = _node(net, "c:1", ServiceIdentity.create())
    # a claims to be c: the frame is dropped (a's certificate says a)
    a.set_peer(b_id.node_id, "b:1")
    a.send(Envelope(RequestVote(1, c_id.node_id, b_id.node_id, 0, 0)))
    genuine = Envelope(RequestVote(1, a_id.node_id, b_id.node_id, 0, 0))
    a.send(genuine)
    net.pump()
    assert b_got == [genuine]
    assert b.rejected == 1
    # c's certificate is not endorsed by this service: its connection never delivers anything
    c.set_peer(b_id.node_id, "b:1")
    c.send(Envelope(RequestVote(1, c_id.node_id, b_id.node_id, 0, 0)))
    net.pump()
    assert b_got == [genuine] and not c.peers[b_id.node_id].connected
    # and a node that answers at an address as another node is refused by the one that called it
    a.set_peer(c_id.node_id, "b:1")
    net.pump()
    assert not a.peers[c_id.node_id].connected


def test_a_peer_that_comes_back_is_reconnected_with_backoff_and_a_full_queue_drops() -> None:
    net = MemoryNet()
    clock = _Clock()
    a_id, a, _ = _node(net, "a:1", clock=clock)
    a.queue_limit = 3
    b_id = NodeIdentity.create().endorsed_by(SERVICE)  # not listening yet: a queues, then drops past its limit
    a.set_peer(b_id.node_id, "b:1")
    a.peers[b_id.node_id].queue_limit = 3
    sent = [a.send(Envelope(RequestVoteResponse(1, a_id.node_id, b_id.node_id, True))) for _ in range(5)]
    assert sent == [True, True, True, False, False] and a.dropped == 2
    net.pump()
    assert a.peers[b_id.node_id].link is None  # the connection failed; a retries after its backoff
    assert a.peers[b_id.node_id].backoff == 2 * BACKOFF_START
    server, client = node_to_node_contexts(cert_pem(b_id.endorsed), key_pem(b_id.key), SERVICE.pem)  # type: ignore[arg-type]
    b_got: list[Envelope] = []
    b_host = MemoryHost(net, "b:1")
    ids = itertools.count(OUTGOING_CONNECTIONS)
    b = Channels(b_id.node_id, server, client, b_got.append, b_host, lambda: next(ids), _Clock())  # type: ignore[arg-type]
    b_host.handler = _ChannelHandler(b)
    a.tick()
    net.pump()
    assert b_got == []  # too early: the backoff has not passed
    clock.now += BACKOFF_START
    a.tick()
    net.pump()
    assert len(b_got) == 3 and a.peers[b_id.node_id].connected
    b_host.go_down("b:1")
    net.pump()
    assert not a.peers[b_id.node_id].connected


def test_frames_sent_in_one_turn_go_out_together_and_wait_for_the_next_link_if_it_drops() -> None:
    """With `defer` (the node's loop), what a turn sends to a peer is written at its end as one TLS record and one
    send, in order; frames whose link went down before that wait in the peer's queue for the next link."""
    net = MemoryNet()
    turn: list[Callable[[], None]] = []
    a_id, a, _ = _node(net, "a:1", defer=turn.append)
    b_id, b, b_got = _node(net, "b:1")
    a.set_peer(b_id.node_id, "b:1")
    net.pump()
    assert a.peers[b_id.node_id].connected
    host = a.host
    assert isinstance(host, MemoryHost)
    sends_before = len(host.sent)
    votes = [Envelope(RequestVote(term, a_id.node_id, b_id.node_id, 0, 0)) for term in range(1, 6)]
    assert all(a.send(vote) for vote in votes)
    assert len(host.sent) == sends_before and len(turn) == 1  # nothing written yet; one flush scheduled
    turn.pop()()
    assert len(host.sent) == sends_before + 1
    net.pump()
    assert b_got == votes
    later = [Envelope(RequestVote(term, a_id.node_id, b_id.node_id, 0, 0)) for term in (6, 7)]
    for vote in later:
        a.send(vote)
    host.go_down("b:1")
    net.pump()
    assert not a.peers[b_id.node_id].connected
    after = Envelope(RequestVote(8, a_id.node_id, b_id.node_id, 0, 0))  # sent once the link is down
    a.send(after)
    turn.pop()()
    assert list(a.peers[b_id.node_id].queue) == [encode(vote) for vote in [*later, after]]  # in the order sent


def test_gathered_frames_reach_a_peer_that_is_removed_and_a_failed_session_holds_up_no_other_peer() -> None:
    net = MemoryNet()
    turn: list[Callable[[], None]] = []
    a_id, a, _ = _node(net, "a:1", defer=turn.append)
    b_id, b, b_got = _node(net, "b:1")
    c_id, c, c_got = _node(net, "c:1")
    a.set_peer(b_id.node_id, "b:1")
    a.set_peer(c_id.node_id, "c:1")
    net.pump()
    to_b = Envelope(AppendEntriesResponse(3, a_id.node_id, b_id.node_id, True, 12))
    a.send(to_b)
    a.remove_peer(b_id.node_id)  # e.g. the answer that commits b's retirement, then b leaves the configuration
    net.pump()
    assert b_got == [to_b]
    # a session that fails when the gathered frames are written is closed; the other peers' frames still go
    a.set_peer(b_id.node_id, "b:1")
    net.pump()
    assert a.peers[b_id.node_id].connected

    def broken(plaintext: bytes) -> None:
        raise ssl.SSLEOFError("EOF occurred in violation of protocol")

    link = a.peers[b_id.node_id].link
    assert link is not None
    link.session.write = broken  # type: ignore[method-assign]
    a.send(Envelope(RequestVote(4, a_id.node_id, b_id.node_id, 0, 0)))
    to_c = Envelope(RequestVote(4, a_id.node_id, c_id.node_id, 0, 0))
    a.send(to_c)
    while turn:
        turn.pop()()
    net.pump()
    assert c_got == [to_c] and not a.peers[b_id.node_id].connected
