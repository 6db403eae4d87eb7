"""The chaos checker fails when it should: hand-made histories, one per anomaly kind, each detected and named
with the operations involved; a valid history with rolled-back reads and unknown writes passes; the history
file round-trips and a malformed line is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from scripts.chaos_check import CommittedLedger, check
from scripts.chaos_history import Event, HistoryError, read_history, write_history

pytestmark = pytest.mark.unit


class H:
    """A tiny history builder: each call adds an invoke and its completion."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self.clock = 0.0

    def _tick(self) -> float:
        self.clock += 1.0
        return self.clock

    def write(self, key: int, value: str, outcome: str = "ok", txid: str | None = None, process: int = 0,
              session: int = 0) -> int:
        op = len({e.op for e in self.events})
        self.events.append(Event(op, process, session, "invoke", "write", key, value, self._tick()))
        self.events.append(Event(op, process, session, outcome, "write", key, value, self._tick(), txid))  # type: ignore[arg-type]
        return op

    def read(self, key: int, value: str | None, txid: str | None, outcome: str = "ok", process: int = 1,
             session: int = 0, invoked: float | None = None, realtime: bool = False) -> int:
        op = len({e.op for e in self.events})
        self.events.append(Event(op, process, session, "invoke", "read", key, None,
                                 invoked if invoked is not None else self._tick()))
        self.events.append(Event(op, process, session, outcome, "read", key, value, self._tick(), txid,  # type: ignore[arg-type]
                                 realtime=realtime))
        return op


def ledger(last: int, view: int = 2, records: list[tuple[int, int, str | None]] | None = None) -> CommittedLedger:
    return CommittedLedger([0] + [view] * last, records or [])


def kinds(events: list[Event], committed: CommittedLedger) -> list[tuple[str, tuple[int, ...]]]:
    return [(a.kind, a.ops) for a in check(events, committed).anomalies]


def test_a_valid_history_passes_with_unknown_writes_and_rolled_back_reads() -> None:
    h = H()
    h.write(1, "a", txid="2.5")
    h.read(1, "a", "2.6")
    h.write(1, "b", "info")  # unknown fate, and in fact committed
    h.write(2, "c", "info")  # unknown fate, never committed
    h.write(2, "d", "fail")  # refused
    h.read(2, "zzz", "3.9")  # a read of a state that was rolled back (seqno 9 is in view 2) is not held to anything
    h.read(1, "b", "2.8")
    h.read(3, None, "2.8")  # no record, rightly
    result = check(h.events, ledger(10, records=[(5, 1, "a"), (7, 1, "b")]))
    assert result.valid, result.anomalies
    assert result.ops == 8 and result.counts["read-unchecked"] == 1 and result.lost_committed_writes == 0


def test_a_lost_commit_is_named() -> None:
    h = H()
    w = h.write(1, "a", txid="2.5")
    assert kinds(h.events, ledger(10)) == [("lost-commit", (w,))]
    # committed in another view than reported: lost too
    assert kinds(h.events, CommittedLedger([0, 2, 2, 2, 2, 3], [(5, 1, "a")])) == [("lost-commit", (w,))]


def test_a_ghost_write_and_a_ghost_read_are_named() -> None:
    h = H()
    w = h.write(1, "a", "fail")
    assert kinds(h.events, ledger(10, records=[(4, 1, "a")])) == [("ghost-write", (w,))]
    h = H()
    w = h.write(1, "a", "info")
    r = h.read(1, "a", "2.6")
    assert kinds(h.events, ledger(10)) == [("ghost-read", (r, w))]


def test_stale_and_future_reads_are_named() -> None:
    h = H()
    w1 = h.write(1, "old", txid="2.3")
    w2 = h.write(1, "new", txid="2.6")
    # each on its own connection, invoked before any write was reported: only the order is broken
    stale = h.read(1, "old", "2.7", process=2, invoked=0.5)
    future = h.read(1, "new", "2.4", process=3, invoked=0.5)
    missing = h.read(1, None, "2.8", process=4, invoked=0.5)
    committed = ledger(10, records=[(3, 1, "old"), (6, 1, "new")])
    assert kinds(h.events, committed) == [("stale-read", (stale, w1, w2)), ("future-read", (future, w2, w1)),
                                         ("stale-read", (missing, w2))]


def test_a_value_nobody_wrote_is_named_in_a_read_and_in_the_ledger() -> None:
    h = H()
    r = h.read(1, "invented", "2.4")
    assert kinds(h.events, ledger(5)) == [("invented-value", (r,))]
    assert kinds([], ledger(5, records=[(2, 1, "from nowhere")])) == [("unknown-write", ())]


def test_a_value_committed_twice_is_named() -> None:
    h = H()
    w = h.write(1, "a", "info")
    assert kinds(h.events, ledger(6, records=[(2, 1, "a"), (4, 1, "a")])) == [("duplicate-write", (w,))]


def test_a_read_behind_a_write_already_reported_committed_breaks_real_time() -> None:
    h = H()
    w1 = h.write(1, "a", txid="2.3")
    w2 = h.write(1, "b", txid="2.6")  # reported Committed at t=4
    late = h.read(1, "a", "2.4", process=5, realtime=True)  # invoked at t=5, after the report: 2.6 or later
    concurrent = h.read(1, "a", "2.4", process=6, invoked=3.5, realtime=True)  # invoked before the report
    lagging = h.read(1, "a", "2.4", process=7)  # a backup's read, not held to real time
    committed = ledger(10, records=[(3, 1, "a"), (6, 1, "b")])
    assert kinds(h.events, committed) == [("real-time", (late, w2))]
    assert lagging not in {op for a in check(h.events, committed).anomalies for op in a.ops}
    assert concurrent not in {op for a in check(h.events, committed).anomalies for op in a.ops}
    assert w1 not in {op for a in check(h.events, committed).anomalies for op in a.ops}


def test_a_session_going_backwards_is_named_but_a_new_session_may_start_anywhere() -> None:
    h = H()
    w = h.write(1, "a", txid="2.6", process=3, session=0)
    back = h.read(2, None, "2.4", process=3, session=0)
    h.read(2, None, "2.2", process=3, session=1)  # after reconnecting: a new session
    assert kinds(h.events, ledger(10, records=[(6, 1, "a")])) == [("session-backwards", (w, back))]


def test_the_history_file_round_trips_and_a_bad_line_is_named(tmp_path: Path) -> None:
    h = H()
    h.write(1, "a", txid="2.5")
    h.read(1, None, None, outcome="info")
    path = tmp_path / "history.jsonl"
    write_history(str(path), h.events)
    assert list(read_history(str(path))) == h.events
    path.write_bytes(path.read_bytes() + b'{"op": 9, "process": 0, "type": "maybe", "f": "read", "key": 1, '
                                         b'"time": 1}\n')
    with pytest.raises(HistoryError, match="line 5: type must be"):
        list(read_history(str(path)))


def test_a_long_history_checks_valid() -> None:
    """Many operations on few keys (the README gives the checking speed, measured with `chaos.py --check`)."""
    n = 50_000
    events: list[Event] = []
    records = []
    for i in range(n):
        key = i % 50
        events.append(Event(2 * i, i % 8, 0, "invoke", "write", key, f"v{i}", float(i)))
        events.append(Event(2 * i, i % 8, 0, "ok", "write", key, f"v{i}", i + 0.5, f"2.{i + 1}"))
        events.append(Event(2 * i + 1, 8, 0, "invoke", "read", key, None, i + 0.6))
        events.append(Event(2 * i + 1, 8, 0, "ok", "read", key, f"v{i}", i + 0.7, f"2.{i + 1}"))
        records.append((i + 1, key, f"v{i}"))
    result = check(events, ledger(n, records=records))
    assert result.valid and result.ops == 2 * n


def test_a_final_read_that_finds_no_record_after_a_reported_commit_is_named() -> None:
    """The service answers a read of no record with an error and no transaction id: held to real time, it is
    wrong once a write to its key was reported Committed, unless a committed removal came after that write."""
    h = H()
    w = h.write(1, "a", txid="2.3")
    lost = h.read(1, None, None, process=5, realtime=True)
    early = h.read(2, None, None, process=6, invoked=0.5, realtime=True)  # before any write to key 2
    assert kinds(h.events, ledger(5, records=[(3, 1, "a")])) == [("stale-read", (lost, w))]
    assert early not in {op for a in check(h.events, ledger(5, records=[(3, 1, "a")])).anomalies for op in a.ops}
    removed = ledger(5, records=[(3, 1, "a"), (4, 1, None)])
    assert kinds(h.events, removed) == []


def test_a_report_and_an_invoke_at_the_same_instant_keep_the_earlier_bound() -> None:
    """A write reported at the very instant a read is invoked does not bound the read, but the earlier reported
    write still does."""
    h = H()
    w1 = h.write(1, "a", txid="2.3")  # reported at t=2
    h.events.append(Event(10, 0, 0, "invoke", "write", 1, "b", 3.0))
    h.events.append(Event(10, 0, 0, "ok", "write", 1, "b", 5.0, "2.6"))
    h.events.append(Event(11, 5, 0, "invoke", "read", 1, None, 5.0))
    h.events.append(Event(11, 5, 0, "ok", "read", 1, None, 5.1, "2.2", realtime=True))  # before w1: wrong
    committed = ledger(8, records=[(3, 1, "a"), (6, 1, "b")])
    assert ("real-time", (11, w1)) in kinds(h.events, committed)


def test_a_write_committed_twice_is_not_also_called_lost() -> None:
    h = H()
    w = h.write(1, "a", txid="2.4")  # reported at the second place the value was committed
    assert kinds(h.events, ledger(6, records=[(2, 1, "a"), (4, 1, "a")])) == [("duplicate-write", (w,))]
