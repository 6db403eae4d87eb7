"""The chaos checker: a recorded history against the committed ledger, for what CCF promises. Pure, linear.

Transaction ids give the serialisation order. The committed ledger (`CommittedLedger`: each committed seqno's
view, and the writes to the records map in seqno order) is the ground truth: a transaction id `view.seqno` is
committed when the ledger holds seqno in that view. Checked (each anomaly names its kind and operations):

- `lost-commit`: a write reported Committed (`ok`) whose transaction id is not committed with its value;
- `ghost-write`: a write that certainly failed (`fail`) whose value is in the committed ledger;
- `duplicate-write`: a value (unique per run) committed more than once;
- `unknown-write`: a committed value no client wrote;
- reads that name a committed transaction id T must return the last committed write to their key at or before
  T: else `stale-read` (an older value, or none), `future-read` (a value committed after T), `ghost-read` (a
  value never committed), `invented-value` (a value nobody wrote);
- `real-time`: a read held to real time (`realtime`: taken once its node's commit point covered every write
  reported Committed) that was invoked after a write to its key was reported Committed names a transaction id
  before that write's. Other reads are not: CCF serves reads on a backup from its replicated state, which may
  lag the primary's, and promises session order and serialisability rather than linearisable reads;
- `session-backwards`: on one connection, the committed transaction ids of successive operations go back.

Reads whose own transaction id is not committed (they ran on a state later rolled back) are not held to
the order, and are counted. Not here: agreement between the nodes' ledgers and `read_ledger.py` (the caller
reads the ledgers, `chaos_ledger`), and liveness (the runner times it).
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from scripts.chaos_history import Event, parse_txid


@dataclass
class CommittedLedger:
    """What the committed ledger says: `views[s]` is the view of committed seqno s (index 0 unused), and
    `records` the writes to the records map, (seqno, key, value or None for a removal), in seqno order."""

    views: list[int]
    records: list[tuple[int, int, str | None]]

    @property
    def last_seqno(self) -> int:
        return len(self.views) - 1

    def committed(self, txid: tuple[int, int] | None) -> bool:
        return txid is not None and 0 < txid[1] < len(self.views) and self.views[txid[1]] == txid[0]


@dataclass(frozen=True)
class Anomaly:
    kind: str
    ops: tuple[int, ...]
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "ops": list(self.ops), "detail": self.detail}


@dataclass
class CheckResult:
    ops: int
    anomalies: list[Anomaly] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return not self.anomalies

    @property
    def lost_committed_writes(self) -> int:
        return sum(1 for a in self.anomalies if a.kind == "lost-commit")


@dataclass
class _Op:
    op: int
    process: int
    session: int
    f: str
    key: int
    value: str | None  # a write's value; a read's answer (once completed)
    invoked: float
    outcome: str = "info"  # no completion recorded: unknown
    completed: float | None = None
    txid: tuple[int, int] | None = None
    realtime: bool = False


def _operations(events: Iterable[Event]) -> dict[int, _Op]:
    ops: dict[int, _Op] = {}
    for e in events:
        if e.type == "invoke":
            ops[e.op] = _Op(e.op, e.process, e.session, e.f, e.key, e.value, e.time)
            continue
        o = ops.get(e.op)
        if o is None:
            continue  # a completion without its invoke: not an operation of this history
        o.outcome, o.completed, o.txid, o.realtime = e.type, e.time, parse_txid(e.txid), e.realtime
        if e.f == "read":
            o.value = e.value
    return ops


def check(events: Iterable[Event], ledger: CommittedLedger) -> CheckResult:
    ops = _operations(events)
    result = CheckResult(len(ops))
    anomalies = result.anomalies
    counts: dict[str, int] = defaultdict(int)

    writes_by_value: dict[str, _Op] = {}
    for o in ops.values():
        if o.f == "write" and o.value is not None:
            writes_by_value[o.value] = o
        counts[f"{o.f}-{o.outcome}"] += 1

    # the committed writes: every place each value is at, and each key's values in seqno order
    places: dict[str, list[tuple[int, int]]] = defaultdict(list)  # value -> every (seqno, key) it is committed at
    by_key: dict[int, tuple[list[int], list[str | None]]] = defaultdict(lambda: ([], []))
    for seqno, key, value in ledger.records:
        seqnos, values = by_key[key]
        seqnos.append(seqno)
        values.append(value)
        if value is None:
            continue
        places[value].append((seqno, key))
        if len(places[value]) > 1:
            writer = writes_by_value.get(value)
            anomalies.append(Anomaly("duplicate-write", (writer.op,) if writer else (),
                                     f"value {value!r} committed at seqnos {places[value][0][0]} and {seqno}"))
        elif value not in writes_by_value:
            anomalies.append(Anomaly("unknown-write", (), f"value {value!r} committed at seqno {seqno} (key {key}) "
                                                          "was written by no client of this run"))
    committed_at = {value: at[0] for value, at in places.items()}  # value -> (seqno, key), its first place

    for o in ops.values():
        if o.f != "write" or o.value is None:
            continue
        place = committed_at.get(o.value)
        if o.outcome == "ok":
            if o.txid is None or not ledger.committed(o.txid) or (o.txid[1], o.key) not in places.get(o.value, ()):
                where = f"at seqno {place[0]}" if place else "nowhere"
                anomalies.append(Anomaly("lost-commit", (o.op,), f"write of {o.value!r} to key {o.key} reported "
                                         f"Committed at {_fmt(o.txid)}, but the committed ledger holds it {where}"))
        elif o.outcome == "fail" and place is not None:
            anomalies.append(Anomaly("ghost-write", (o.op,), f"write of {o.value!r} failed, yet it is committed at "
                                     f"seqno {place[0]}"))

    _check_reads(ops, ledger, committed_at, writes_by_value, by_key, anomalies, counts)
    _check_real_time(ops, ledger, committed_at, by_key, anomalies)
    _check_sessions(ops, ledger, anomalies)
    result.counts = dict(counts)
    return result


def _fmt(txid: tuple[int, int] | None) -> str:
    return f"{txid[0]}.{txid[1]}" if txid else "no transaction id"


def _check_reads(ops: dict[int, _Op], ledger: CommittedLedger, committed_at: dict[str, tuple[int, int]],
                 writes_by_value: dict[str, _Op], by_key: dict[int, tuple[list[int], list[str | None]]],
                 anomalies: list[Anomaly], counts: dict[str, int]) -> None:
    for o in ops.values():
        if o.f != "read" or o.outcome != "ok":
            continue
        if not ledger.committed(o.txid):
            counts["read-unchecked"] += 1  # it read a state that was rolled back (or never committed)
            continue
        assert o.txid is not None
        t = o.txid[1]
        seqnos, values = by_key.get(o.key, ([], []))
        i = bisect.bisect_right(seqnos, t)
        expected = values[i - 1] if i else None
        if o.value == expected:
            continue
        writer = writes_by_value.get(o.value) if o.value is not None else None
        expected_writer = writes_by_value.get(expected) if expected is not None else None
        involved = tuple(x.op for x in (o, writer, expected_writer) if x is not None)
        said = f"read of key {o.key} at {_fmt(o.txid)} returned {o.value!r}, the committed value then is {expected!r}"
        if o.value is None:
            anomalies.append(Anomaly("stale-read", involved, said))
        elif writer is None:
            anomalies.append(Anomaly("invented-value", involved, said + "; no client wrote that value"))
        elif (place := committed_at.get(o.value)) is None:
            anomalies.append(Anomaly("ghost-read", involved, said + "; that value was never committed"))
        elif place[0] > t:
            anomalies.append(Anomaly("future-read", involved, said + f"; that value was committed later, at seqno "
                                                                     f"{place[0]}"))
        else:
            anomalies.append(Anomaly("stale-read", involved, said + f"; that value was committed earlier, at seqno "
                                                                    f"{place[0]}"))


def _check_real_time(ops: dict[int, _Op], ledger: CommittedLedger, committed_at: dict[str, tuple[int, int]],
                     by_key: dict[int, tuple[list[int], list[str | None]]], anomalies: list[Anomaly]) -> None:
    """A sweep in time order: per key, the latest committed write reported Committed before a read held to real
    time was invoked bounds the transaction id the read names. A report and an invoke at the same recorded
    instant are not ordered (the invoke is taken first). A read of no record names no transaction id (the
    service answers an error): it is wrong if such a write was reported and nothing removed the key since."""
    moments: list[tuple[float, int, _Op]] = []  # (time, 0 = a read's invoke / 1 = a write's Committed report)
    for o in ops.values():
        if o.f == "write" and o.outcome == "ok" and o.completed is not None and o.value in committed_at:
            moments.append((o.completed, 1, o))
        elif o.f == "read" and o.outcome == "ok" and o.realtime and (
                ledger.committed(o.txid) or (o.txid is None and o.value is None)):
            moments.append((o.invoked, 0, o))
    moments.sort(key=lambda m: (m[0], m[1]))
    latest: dict[int, tuple[int, _Op]] = {}
    for moment, kind, o in moments:
        if kind == 1:
            seqno = committed_at[o.value][0] if o.value is not None else 0
            if seqno > latest.get(o.key, (0, o))[0]:
                latest[o.key] = (seqno, o)
            continue
        bound = latest.get(o.key)
        if bound is None:
            continue
        reported = bound[1].completed or 0.0
        if o.txid is None:
            seqnos, values = by_key.get(o.key, ([], []))
            removed_since = any(v is None for v in values[bisect.bisect_right(seqnos, bound[0]):])
            if not removed_since:
                anomalies.append(Anomaly("stale-read", (o.op, bound[1].op),
                                         f"read of key {o.key} invoked at {moment:.3f} s found no record, after the "
                                         f"write at seqno {bound[0]} was reported Committed at {reported:.3f} s"))
        elif o.txid[1] < bound[0]:
            anomalies.append(Anomaly("real-time", (o.op, bound[1].op),
                                     f"read of key {o.key} invoked at {moment:.3f} s names {_fmt(o.txid)}, before the "
                                     f"write at seqno {bound[0]} reported Committed at {reported:.3f} s"))


def _check_sessions(ops: dict[int, _Op], ledger: CommittedLedger, anomalies: list[Anomaly]) -> None:
    last: dict[tuple[int, int], _Op] = {}
    for o in sorted(ops.values(), key=lambda x: x.op):  # op numbers follow each client's issue order
        if o.outcome != "ok" or not ledger.committed(o.txid):
            continue
        assert o.txid is not None
        session = (o.process, o.session)
        before = last.get(session)
        if before is not None and before.txid is not None and o.txid[1] < before.txid[1]:
            anomalies.append(Anomaly("session-backwards", (before.op, o.op),
                                     f"process {o.process} session {o.session}: {_fmt(o.txid)} after "
                                     f"{_fmt(before.txid)}"))
        if before is None or before.txid is None or o.txid[1] >= before.txid[1]:
            last[session] = o
