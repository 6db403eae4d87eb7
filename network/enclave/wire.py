"""The node-to-node wire format: consensus messages (and the entry bytes they carry) as CBOR.

A frame on a channel is a 4-byte big-endian length then one CBOR map `{"t": <kind>, ...}`. Decoding checks
every field's type and raises `WireError` (never another exception) on anything malformed, so a peer's bad
bytes cannot crash a node.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import cbor2

from network.consensus.raft import (
    AppendEntries,
    AppendEntriesResponse,
    EntryMeta,
    Message,
    RequestVote,
    RequestVoteResponse,
)

MAX_FRAME = 64 * 1024 * 1024
_LENGTH = struct.Struct(">I")


class WireError(Exception):
    """A frame or message that does not decode."""


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    """A request a backup received and sends on to the primary, with its caller's TLS certificate."""

    sender: str
    to: str
    id: int
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    peer_cert: bytes | None


@dataclass(frozen=True, slots=True)
class ForwardedResponse:
    """The primary's answer to a forwarded request."""

    sender: str
    to: str
    id: int
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


@dataclass(frozen=True)
class Envelope:
    """A message between nodes and, for AppendEntries, the bytes of its entries (one per entry, in order)."""

    message: Message | ForwardedRequest | ForwardedResponse
    payloads: tuple[bytes, ...] = ()


def _int(obj: dict[Any, Any], key: str) -> int:
    value = obj.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise WireError(f"field {key!r} must be a non-negative integer")
    return value


def _str(obj: dict[Any, Any], key: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise WireError(f"field {key!r} must be a string")
    return value


def _bool(obj: dict[Any, Any], key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise WireError(f"field {key!r} must be a boolean")
    return value


def _optional_bool(obj: dict[Any, Any], key: str) -> bool:
    """A flag added after the first release: absent in what older nodes send, which meant False."""
    return _bool(obj, key) if key in obj else False


def encode(envelope: Envelope) -> bytes:
    m = envelope.message
    body: dict[str, Any]
    if isinstance(m, AppendEntries):
        if len(envelope.payloads) != len(m.entries):
            raise WireError("an AppendEntries needs one payload per entry")
        body = {"t": "ae", "term": m.term, "from": m.sender, "to": m.to, "prev": m.prev_index,
                "prev_term": m.prev_term, "commit": m.commit,
                "entries": [[e.index, e.term, e.signature, p] for e, p in zip(m.entries, envelope.payloads,
                                                                             strict=True)]}
    elif isinstance(m, AppendEntriesResponse):
        body = {"t": "aer", "term": m.term, "from": m.sender, "to": m.to, "ok": m.success, "last": m.last_index}
    elif isinstance(m, RequestVote):
        body = {"t": "rv", "term": m.term, "from": m.sender, "to": m.to, "idx": m.last_committable_index,
                "idx_term": m.last_committable_term, "transfer": m.transfer, "pre": m.pre_vote}
    elif isinstance(m, ForwardedRequest):
        body = {"t": "fwd", "term": 0, "from": m.sender, "to": m.to, "id": m.id, "method": m.method,
                "target": m.target, "headers": [list(h) for h in m.headers], "body": m.body, "cert": m.peer_cert}
    elif isinstance(m, ForwardedResponse):
        body = {"t": "fwdr", "term": 0, "from": m.sender, "to": m.to, "id": m.id, "status": m.status,
                "headers": [list(h) for h in m.headers], "body": m.body}
    else:
        body = {"t": "rvr", "term": m.term, "from": m.sender, "to": m.to, "granted": m.granted, "pre": m.pre_vote}
    data = cbor2.dumps(body)
    return _LENGTH.pack(len(data)) + data


def decode(data: bytes) -> Envelope:
    """Decode one frame's body (without its length prefix)."""
    try:
        obj = cbor2.loads(data)
    except Exception as e:  # cbor2 raises several types on garbage; all mean the same here
        raise WireError(f"not CBOR: {e}") from None
    if not isinstance(obj, dict):
        raise WireError("a message is a CBOR map")
    kind = obj.get("t")
    term, sender, to = _int(obj, "term"), _str(obj, "from"), _str(obj, "to")
    if kind == "ae":
        raw_entries = obj.get("entries")
        if not isinstance(raw_entries, list):
            raise WireError("field 'entries' must be a list")
        metas, payloads = [], []
        for item in raw_entries:
            if not (isinstance(item, list) and len(item) == 4 and isinstance(item[3], bytes)):
                raise WireError("an entry is [index, term, signature, bytes]")
            entry = {"i": item[0], "t": item[1], "s": item[2]}
            metas.append(EntryMeta(_int(entry, "i"), _int(entry, "t"), _bool(entry, "s")))
            payloads.append(item[3])
        return Envelope(AppendEntries(term, sender, to, _int(obj, "prev"), _int(obj, "prev_term"), tuple(metas),
                                      _int(obj, "commit")), tuple(payloads))
    if kind == "aer":
        return Envelope(AppendEntriesResponse(term, sender, to, _bool(obj, "ok"), _int(obj, "last")))
    if kind == "rv":
        return Envelope(RequestVote(term, sender, to, _int(obj, "idx"), _int(obj, "idx_term"),
                                    _bool(obj, "transfer"), _optional_bool(obj, "pre")))
    if kind == "rvr":
        return Envelope(RequestVoteResponse(term, sender, to, _bool(obj, "granted"), _optional_bool(obj, "pre")))
    if kind in ("fwd", "fwdr"):
        headers = obj.get("headers")
        body = obj.get("body")
        if not (isinstance(headers, list) and all(isinstance(h, list) and len(h) == 2 and all(
                isinstance(x, str) for x in h) for h in headers) and isinstance(body, bytes)):
            raise WireError("a forwarded message has headers [[name, value]...] and a bytes body")
        pairs = tuple((str(h[0]), str(h[1])) for h in headers)
        if kind == "fwdr":
            return Envelope(ForwardedResponse(sender, to, _int(obj, "id"), _int(obj, "status"), pairs, body))
        cert = obj.get("cert")
        if cert is not None and not isinstance(cert, bytes):
            raise WireError("field 'cert' must be bytes or null")
        return Envelope(ForwardedRequest(sender, to, _int(obj, "id"), _str(obj, "method"), _str(obj, "target"),
                                         pairs, body, cert))
    raise WireError(f"unknown message kind {kind!r}")


def frame_length(header: bytes) -> int:
    length: int = _LENGTH.unpack(header)[0]
    if length > MAX_FRAME:
        raise WireError(f"frame of {length} bytes exceeds {MAX_FRAME}")
    return length
