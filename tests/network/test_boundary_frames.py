"""The boundary as frames (an enclave in its own process): declared calls and types only, in both directions."""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from network.boundary import (
    ANSWER,
    ASK,
    CALL,
    ENCLAVE_CALLS,
    FILE_CALLS,
    HOST_CALLS,
    BoundaryError,
    EnclaveSettings,
    EnclaveStart,
    GenesisMember,
    HttpLimits,
    NewService,
    SignaturePolicy,
    decode_frames,
    encode_call,
)

pytestmark = pytest.mark.unit

FROM_HOST = frozenset(ENCLAVE_CALLS)
FROM_ENCLAVE = frozenset(HOST_CALLS) | frozenset(FILE_CALLS)

START = EnclaveStart(
    data_dir="/d", rpc_address="127.0.0.1:8000", node_to_node_address="127.0.0.1:9000",
    published_node_to_node_address=None, snapshot_dir="/d/snapshots", host_data="", app="app.logging:app",
    settings=EnclaveSettings(SignaturePolicy(100, 5), 0, 50), http=HttpLimits(max_body_bytes=10),
    election_ticks=20, heartbeat_ticks=2, chunk_size=1000, sealed=b"\x00sealed", consensus=(3, "abc"),
    new=NewService((GenesisMember("CERT", None, {"k": [1, 2]}),), "export function validate() {}", {"a": 1}))


def test_a_start_crosses_whole_with_its_nested_declared_types() -> None:
    buffer = bytearray(encode_call(CALL, 0, "start", (START,)))
    [(kind, ident, name, args)] = decode_frames(buffer, FROM_HOST)
    assert (kind, ident, name, args) == (CALL, 0, "start", [START])
    assert buffer == bytearray()


def test_frames_split_anywhere_are_taken_only_once_complete() -> None:
    data = encode_call(CALL, 0, "received", (7, b"tls records")) + encode_call(ASK, 5, "files.read", (3,))
    buffer = bytearray()
    got = []
    for i in range(len(data)):
        buffer.append(data[i])
        got += decode_frames(buffer, FROM_HOST | FROM_ENCLAVE)
    assert got == [(CALL, 0, "received", [7, b"tls records"]), (ASK, 5, "files.read", [3])]


def test_answers_carry_no_call_name_and_any_value() -> None:
    buffer = bytearray(encode_call(ANSWER, 9, "", ("ok", [["a", 1]])))
    assert decode_frames(buffer, frozenset()) == [(ANSWER, 9, "", ["ok", [["a", 1]]])]


@pytest.mark.parametrize("frame", [
    encode_call(CALL, 0, "run_arbitrary_code", ()),  # not a declared call
    encode_call(CALL, 0, "store_sealed", (b"x",)),  # a host call, sent to the enclave
    encode_call(7, 0, "tick", ()),  # not a frame kind
    b"\x00\x00\x00\x03abc",  # not CBOR
    b"\x00\x00\x00\x02" + cbor2.dumps({"t": 1})[:2],
    b"\xff\xff\xff\xff",  # larger than any frame may be
    b"\x00\x00\x00\x06" + cbor2.dumps([0, 0, [1], []]),  # a name that is not a string
])
def test_anything_else_from_the_host_is_refused(frame: bytes) -> None:
    with pytest.raises(BoundaryError):
        decode_frames(bytearray(frame), FROM_HOST)


def test_undeclared_types_are_refused() -> None:
    body = cbor2.dumps([CALL, 0, "start", [{"$t": "Popen", "args": ["sh"]}]])
    with pytest.raises(BoundaryError, match="undeclared type"):
        decode_frames(bytearray(len(body).to_bytes(4, "big") + body), FROM_HOST)
    body = cbor2.dumps([CALL, 0, "start", [{"$t": "HttpLimits", "no_such_field": 1}]])
    with pytest.raises(BoundaryError, match="bad HttpLimits"):
        decode_frames(bytearray(len(body).to_bytes(4, "big") + body), FROM_HOST)


@given(st.binary(max_size=300))
def test_garbage_is_a_boundary_error_or_waits_for_more(data: bytes) -> None:
    buffer = bytearray(data)
    try:
        frames = decode_frames(buffer, FROM_HOST)
    except BoundaryError:
        return
    assert all(name in FROM_HOST or kind == ANSWER for kind, _, name, _ in frames)
