"""Node-to-node channels over real mutual TLS on 127.0.0.1, and the wire format's refusal of bad frames."""

from __future__ import annotations

import asyncio

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, key_pem
from network.consensus.raft import AppendEntries, AppendEntriesResponse, EntryMeta, RequestVote, RequestVoteResponse
from network.enclave.channels import Channels, tls_contexts
from network.enclave.wire import Envelope, ForwardedRequest, ForwardedResponse, WireError, decode, encode

pytestmark = pytest.mark.unit

SERVICE = ServiceIdentity.create()


def _node(service: ServiceIdentity = SERVICE) -> tuple[NodeIdentity, Channels, list[Envelope]]:
    identity = NodeIdentity.create().endorsed_by(service)
    assert identity.endorsed is not None
    server, client = tls_contexts(cert_pem(identity.endorsed), key_pem(identity.key), service.pem)
    received: list[Envelope] = []
    return identity, Channels(identity.node_id, server, client, received.append), received


MESSAGES = [
    Envelope(AppendEntries(3, "a", "b", 10, 2, (EntryMeta(11, 3, False), EntryMeta(12, 3, True)), 9),
             (b"entry-11", b"entry-12")),
    Envelope(AppendEntriesResponse(3, "b", "a", True, 12)),
    Envelope(RequestVote(4, "a", "b", 12, 3, True)),
    Envelope(RequestVoteResponse(4, "b", "a", False)),
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
    {"t": "zz", "term": 1, "from": "a", "to": "b"},
    [1, 2, 3],
])
def test_malformed_messages_are_refused(body: object) -> None:
    with pytest.raises(WireError):
        decode(cbor2.dumps(body))


async def _wait_for(predicate: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():  # type: ignore[operator]
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.01)


def test_two_nodes_exchange_messages_over_mutual_tls() -> None:
    async def run() -> None:
        a_id, a, a_got = _node()
        b_id, b, b_got = _node()
        a_addr = await a.listen("127.0.0.1", 0)
        b_addr = await b.listen("127.0.0.1", 0)
        a.set_peer(b_id.node_id, b_addr)
        b.set_peer(a_id.node_id, a_addr)
        vote = Envelope(RequestVote(1, a_id.node_id, b_id.node_id, 0, 0))
        answer = Envelope(RequestVoteResponse(1, b_id.node_id, a_id.node_id, True))
        assert a.send(vote)
        await _wait_for(lambda: b_got == [vote])
        assert b.send(answer)
        await _wait_for(lambda: a_got == [answer])
        await a.close()
        await b.close()

    asyncio.run(run())


def test_a_node_cannot_speak_for_another_or_join_from_another_service() -> None:
    async def run() -> None:
        a_id, a, a_got = _node()
        b_id, b, b_got = _node()
        other_service = ServiceIdentity.create()
        c_id, c, _ = _node(other_service)
        b_addr = await b.listen("127.0.0.1", 0)
        # a claims to be c: the frame is dropped (a's certificate says a)
        a.set_peer(b_id.node_id, b_addr)
        a.send(Envelope(RequestVote(1, c_id.node_id, b_id.node_id, 0, 0)))
        genuine = Envelope(RequestVote(1, a_id.node_id, b_id.node_id, 0, 0))
        a.send(genuine)
        await _wait_for(lambda: b_got == [genuine])
        assert b.rejected == 1
        # c's certificate is not endorsed by this service: its connection never delivers anything
        c.set_peer(b_id.node_id, b_addr)
        c.send(Envelope(RequestVote(1, c_id.node_id, b_id.node_id, 0, 0)))
        await asyncio.sleep(0.3)
        assert b_got == [genuine] and not c.peers[b_id.node_id].connected
        for ch in (a, b, c):
            await ch.close()

    asyncio.run(run())


def test_a_peer_that_comes_back_is_reconnected_and_a_full_queue_drops() -> None:
    async def run() -> None:
        a_id, a, _ = _node()
        b_id, b, b_got = _node()
        a.queue_limit = 3
        port_holder = await b.listen("127.0.0.1", 0)
        await b.close()  # b is down: a queues, then drops past its limit
        a.set_peer(b_id.node_id, port_holder)
        sent = [a.send(Envelope(RequestVoteResponse(1, a_id.node_id, b_id.node_id, True))) for _ in range(5)]
        assert sent == [True, True, True, False, False] and a.dropped == 2
        b2 = Channels(b_id.node_id, b.server_context, b.client_context, b_got.append)
        host, _, port = port_holder.rpartition(":")
        await b2.listen(host, int(port))
        await _wait_for(lambda: len(b_got) == 3)
        await a.close()
        await b2.close()

    asyncio.run(run())
