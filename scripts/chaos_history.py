"""The operation history a chaos run records, and its file format (JSON lines, one event per line).

Each operation is an `invoke` event followed, for the same `op`, by one completion: `ok` (it happened: a read
answered, or a write reported Committed by `/app/tx`), `fail` (it certainly did not happen: the service refused
it, or `/app/tx` said Invalid) or `info` (unknown: the connection broke after sending, or the write's fate was
still unknown at the end). Fields of every event:

- `op`: the operation's number (invoke and completion share it); `process`: the client that ran it;
  `session`: that client's connection (it opens a new one after an error), for the session checks;
- `type`: `invoke`, `ok`, `fail` or `info`; `f`: `write` or `read`; `key`: the record id;
- `value`: a write's message (unique in a run), a read's answer, null for a read's invoke and for a read of no
  record; `time`: seconds since the run began; `txid`: `view.seqno` the service answered with (a write's
  execution, a read's state), or null; `node`: the node index the request went to; `error`: why, on fail/info;
  `realtime` (on a read's completion, when true): the read was taken once its node's commit point covered every
  write reported Committed before it, so it is held to real time.

Guarantees: `Recorder` is safe to use from many threads and writes events in the order they were recorded;
`read_history` refuses a malformed line naming it. Not here: what a history means (`chaos_check`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import orjson

EventType = Literal["invoke", "ok", "fail", "info"]
Function = Literal["write", "read"]
EVENT_TYPES = ("invoke", "ok", "fail", "info")
FUNCTIONS = ("write", "read")


class HistoryError(Exception):
    """A history file that is not a history (the line and the reason are named)."""


@dataclass(frozen=True, slots=True)
class Event:
    op: int
    process: int
    session: int
    type: EventType
    f: Function
    key: int
    value: str | None
    time: float
    txid: str | None = None
    node: int | None = None
    error: str | None = None
    realtime: bool = False

    def to_json(self) -> bytes:
        return orjson.dumps({k: v for k, v in asdict(self).items()
                             if (v is not None and v is not False) or k in ("value", "txid")})


def parse_txid(txid: str | None) -> tuple[int, int] | None:
    """(view, seqno) of `view.seqno`, None for None or anything else."""
    if not txid:
        return None
    view, dot, seqno = txid.partition(".")
    if not dot or not view.isdigit() or not seqno.isdigit():
        return None
    return int(view), int(seqno)


def event_from(record: Any, line: int = 0) -> Event:
    if not isinstance(record, dict):
        raise HistoryError(f"line {line}: an event is a JSON object")
    try:
        event = Event(op=int(record["op"]), process=int(record["process"]), session=int(record.get("session", 0)),
                      type=record["type"], f=record["f"], key=int(record["key"]), value=record.get("value"),
                      time=float(record["time"]), txid=record.get("txid"), node=record.get("node"),
                      error=record.get("error"), realtime=bool(record.get("realtime", False)))
    except (KeyError, TypeError, ValueError) as e:
        raise HistoryError(f"line {line}: missing or malformed field ({e})") from None
    if event.type not in EVENT_TYPES or event.f not in FUNCTIONS:
        raise HistoryError(f"line {line}: type must be one of {EVENT_TYPES} and f one of {FUNCTIONS}")
    if event.value is not None and not isinstance(event.value, str):
        raise HistoryError(f"line {line}: value must be a string or null")
    if event.txid is not None and parse_txid(event.txid) is None:
        raise HistoryError(f"line {line}: txid {event.txid!r} is not view.seqno")
    return event


def read_history(path: str) -> Iterator[Event]:
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            if line.strip():
                try:
                    record = orjson.loads(line)
                except orjson.JSONDecodeError as e:
                    raise HistoryError(f"line {number}: not JSON ({e})") from None
                yield event_from(record, number)


def write_history(path: str, events: Iterable[Event]) -> None:
    with open(path, "wb") as f:
        for event in events:
            f.write(event.to_json() + b"\n")


class Recorder:
    """Records events with times relative to its creation; thread-safe."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.events: list[Event] = []
        self._lock = threading.Lock()
        self._next_op = 0

    def now(self) -> float:
        return round(time.monotonic() - self.started, 6)

    def invoke(self, process: int, session: int, f: Function, key: int, value: str | None,
               node: int | None) -> int:
        with self._lock:
            op = self._next_op
            self._next_op += 1
            self.events.append(Event(op, process, session, "invoke", f, key, value, self.now(), None, node))
        return op

    def complete(self, op: int, process: int, session: int, type_: EventType, f: Function, key: int,
                 value: str | None, txid: str | None, node: int | None, error: str | None = None, *,
                 realtime: bool = False) -> None:
        with self._lock:
            self.events.append(Event(op, process, session, type_, f, key, value, self.now(), txid, node, error,
                                     realtime))
