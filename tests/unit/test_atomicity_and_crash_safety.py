"""Failures half-way: a commit that cannot be serialised or written, a crash between a file's
content and its name, hooks and rollbacks that must leave consistent state behind."""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.errors import CorruptedCommittedChunk, LedgerError, LedgerFileError, ReceiptNotAvailable
from ledger.files import LedgerFiles
from ledger.service_ledger import ServiceLedger
from ledger.tables import HISTORICAL_SECRETS, SINGLETON_KEY
from tests.ccf_tools import assert_read_ledger_accepts

pytestmark = pytest.mark.unit


def commit_public(ledger: ServiceLedger, key: bytes, value: bytes = b"v") -> int:
    tx = ledger.begin()
    tx.put("public:app", key, value)
    txid = ledger.commit(tx)
    assert txid is not None
    return txid.seqno


def test_a_transaction_that_wrote_nothing_gets_no_seqno(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service()
    before = ledger.last_seqno
    tx = ledger.begin()
    assert tx.get("public:app", b"k") is None
    assert ledger.commit(tx) is None
    assert ledger.last_seqno == before and ledger.files is not None and ledger.files.last_seqno == before


def test_bad_keys_and_values_are_refused_before_anything_changes(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service()
    tx = ledger.begin()
    with pytest.raises(TypeError):
        tx.put("public:app", 42, b"v")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        tx.put("public:app", b"k", "not bytes")  # type: ignore[arg-type]
    before = (ledger.last_seqno, ledger.merkle.size)
    with pytest.raises((TypeError, AttributeError)):
        ledger.commit_writes({"public:app": {b"k": "not bytes"}})  # type: ignore[dict-item]
    with pytest.raises(ValueError):
        ledger.commit_writes({"public:app": {b"k": b"v"}}, claims_digest=b"short")
    assert (ledger.last_seqno, ledger.merkle.size) == before
    assert ledger.read_tx().get("public:app", b"k") is None
    seqno = commit_public(ledger, b"k")
    sig = ledger.emit_signature()  # the tree and the store still agree
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    assert seqno == before[0] + 1
    assert_read_ledger_accepts(ledger.files.directory)  # type: ignore[union-attr]


def test_a_failed_write_to_the_files_stops_the_ledger_without_recording_the_entry(
    new_service: Callable[..., ServiceLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = new_service()
    files = ledger.files
    assert files is not None
    commit_public(ledger, b"ok")
    before = (ledger.last_seqno, ledger.merkle.size, files.last_seqno)

    def disk_full(self: LedgerFiles) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(LedgerFiles, "_write_pending", disk_full)
    monkeypatch.setattr("ledger.files._WRITE_BATCH_BYTES", 0)  # write at once
    tx = ledger.begin()
    tx.put("public:app", b"lost", b"v")
    with pytest.raises(LedgerFileError, match="No space left"):
        ledger.commit(tx)
    assert ledger.last_seqno == before[0] and ledger.merkle.size == before[1]
    assert ledger.read_tx().get("public:app", b"lost") is None
    with pytest.raises(LedgerError, match="stopped"):
        commit_public(ledger, b"after")
    with pytest.raises(LedgerFileError):
        files.flush()


def test_the_host_refuses_an_entry_with_the_wrong_seqno(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service()
    files = ledger.files
    assert files is not None
    seqno = commit_public(ledger, b"k")
    with pytest.raises(LedgerFileError, match="expects"):
        files.append(files.read(seqno))  # the same entry again: seqno seqno, not seqno + 1
    with pytest.raises(LedgerFileError, match="malformed"):
        files.append(b"\x01\x00garbage")
    assert files.last_seqno == seqno


def test_truncating_into_a_complete_chunk_is_safe_if_the_rename_never_happens(
    new_service: Callable[..., ServiceLedger], monkeypatch: pytest.MonkeyPatch
) -> None:
    ledger = new_service()
    for i in range(6):
        commit_public(ledger, b"k%d" % i)
    ledger.request_chunk()
    end = ledger.emit_signature().seqno
    ledger.flush()
    files = ledger.files
    assert files is not None
    directory = files.directory
    assert f"ledger_3-{end}" in files.chunk_names()

    def crash(src: str, dst: str) -> None:
        raise OSError("power lost before the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        files.truncate(5)
    monkeypatch.undo()
    # On disk: the old name, but header and dropped entries already gone. Reopening must not bring
    # seqnos 6..end back.
    reopened, report = LedgerFiles.open(directory)
    assert reopened.last_seqno == 5
    assert reopened.chunk_names() == ["ledger_1-2.committed", "ledger_3"]
    assert report.warnings


def test_a_torn_positions_table_behind_a_written_header_reopens_as_an_open_chunk(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = new_service()
    for i in range(3):
        commit_public(ledger, b"k%d" % i)
    ledger.flush()
    files = ledger.files
    assert files is not None
    files.close()
    path = Path(files.directory) / "ledger_3"
    data = path.read_bytes()
    positions, pos = [], 8
    while pos < len(data):
        positions.append(pos)
        pos += 8 + (struct.unpack_from("<Q", data, pos)[0] >> 16)
    torn = struct.pack("<Q", len(data)) + data[8:] + struct.pack(f"<{len(positions)}I", *positions)[:-3]
    path.write_bytes(torn)
    reopened, report = LedgerFiles.open(files.directory)
    assert reopened.last_seqno == 5
    assert reopened.chunk_names() == ["ledger_1-2.committed", "ledger_3"]
    assert reopened.read(5) == data[positions[-1]:]


def test_a_damaged_uncommitted_chunk_never_takes_committed_chunks_with_it(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = new_service()
    for round_ in range(2):
        for i in range(3):
            commit_public(ledger, b"r%dk%d" % (round_, i))
        ledger.request_chunk()
        ledger.emit_signature()
    ledger.flush()
    files = ledger.files
    assert files is not None
    names = files.chunk_names()
    files.close()
    # renames reached the disk out of order: the later chunk is committed, the earlier is not
    directory = Path(files.directory)
    first, second = names[1], names[2]
    os.replace(directory / second, directory / (second + ".committed"))
    data = bytearray((directory / first).read_bytes())
    table = struct.unpack_from("<Q", data)[0]
    struct.pack_into("<I", data, table + 4, 7)  # a wrong row
    (directory / first).write_bytes(bytes(data))
    with pytest.raises(CorruptedCommittedChunk, match="committed chunks follow"):
        LedgerFiles.open(str(directory))
    assert (directory / (second + ".committed")).exists()


def test_rekey_records_point_at_the_previous_record_even_after_a_rollback(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = new_service()
    first = ledger.rekey().seqno
    second = ledger.rekey().seqno

    def record_at(seqno: int) -> dict[str, object]:
        raw = ledger.store.write_set(seqno)[HISTORICAL_SECRETS][SINGLETON_KEY]
        assert raw is not None
        return json.loads(raw)["previous_ledger_secret"]  # type: ignore[no-any-return]

    assert record_at(second)["previous_secret_stored_version"] == first
    ledger.rollback(second - 1)
    third = ledger.rekey().seqno
    assert record_at(third)["previous_secret_stored_version"] == first


def test_receipts_never_rest_on_an_uncommitted_signature(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    seqno = commit_public(ledger, b"k")
    committed_sig = ledger.emit_signature().seqno
    ledger.commit_to(committed_sig)
    commit_public(ledger, b"later")
    ledger.emit_signature()  # not committed
    ledger.receipt(committed_sig)  # a signature's own JSON receipt needs only itself
    with pytest.raises(ReceiptNotAvailable):
        ledger.cose_receipt(committed_sig)  # would rest on the uncommitted next signature
    ledger.receipt(seqno)
    tail = commit_public(ledger, b"tail")
    ledger.emit_signature()
    ledger.commit_to(tail)  # commit at a non-signature seqno
    with pytest.raises(ReceiptNotAvailable):
        ledger.receipt(tail)


def test_a_snapshot_of_a_resumed_ledger_keeps_the_view_history(new_service: Callable[..., ServiceLedger]) -> None:
    from ledger.snapshot_files import latest_committed_snapshot
    from ledger.snapshots import load_snapshot

    ledger = new_service()
    commit_public(ledger, b"a")
    ledger.set_view(6)
    commit_public(ledger, b"b")
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    ledger.snapshot()
    s2 = ledger.emit_signature()
    ledger.commit_to(s2.seqno)
    path = latest_committed_snapshot(ledger.snapshot_dir or "")
    assert path is not None
    data = Path(path).read_bytes()
    original = load_snapshot(data, ledger.secrets).view_history
    assert original == [1, 1, 4, 4, 4, 4]
    resumed = ServiceLedger.from_snapshot(data, secrets=ledger.secrets, node=ledger.node, service=ledger.service,
                                          files=None, snapshot_dir=str(Path(path).parent / "again"))
    commit_public(resumed, b"c")
    s3 = resumed.emit_signature()
    resumed.commit_to(s3.seqno)
    resumed.snapshot()
    s4 = resumed.emit_signature()
    resumed.commit_to(s4.seqno)
    again = latest_committed_snapshot(str(Path(path).parent / "again"))
    assert again is not None
    assert load_snapshot(Path(again).read_bytes(), ledger.secrets).view_history == original
