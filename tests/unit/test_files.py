"""ledger/files.py: the host side of the ledger (chunk files), directly and through a ServiceLedger.

Covers CCF's chunk file format: appends and reads by seqno across chunks, when chunks are completed
(positions table, header offset, rename) and committed, truncation (in the open chunk and into a
completed chunk), recovery on open (torn tails cut, structural damage in committed chunks refused,
gaps refused), fsync policies, and a restart of a whole ServiceLedger judged by read_ledger.py.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from ledger.entry import decode_entry, serialise_entry
from ledger.errors import CorruptedCommittedChunk, DecryptionError, LedgerFileError
from ledger.files import FsyncPolicy, LedgerFiles
from ledger.framing import FLAG_FORCE_CHUNK_AFTER, FLAG_FORCE_CHUNK_BEFORE
from ledger.replay import recover
from ledger.secrets import LedgerSecret, LedgerSecrets
from ledger.service_ledger import ServiceLedger
from tests.ccf_tools import assert_read_ledger_accepts

pytestmark = pytest.mark.unit

SECRET = LedgerSecret.create(1, bytes(range(32)))
SECRETS = LedgerSecrets([SECRET])
APP = "public:app.records"
PRIVATE = "app.secrets"


def entry(seqno: int, *, flags: int = 0, tag: bytes = b"", size: int = 40) -> bytes:
    """A deterministic entry for `seqno` (different `tag` -> different bytes)."""
    value = (tag + b"value-%d-" % seqno).ljust(size, b".")
    return serialise_entry(
        seqno, 2, {APP: {b"k%d" % seqno: value}, PRIVATE: {b"p": tag + b"private"}},
        bytes(32), hashlib.sha256(b"%d" % seqno).digest(), SECRET, flags,
    )


# Chunks 1-3 and 4-7 end on a FORCE_CHUNK_AFTER entry; 8-9 stay in the open chunk.
CHUNK_ENDS = (3, 7)


def build(directory: Path, last: int = 9, *, chunk_ends: tuple[int, ...] = CHUNK_ENDS,
          fsync: FsyncPolicy = FsyncPolicy.BATCH) -> tuple[LedgerFiles, dict[int, bytes]]:
    files, report = LedgerFiles.open(str(directory), fsync=fsync)
    assert report.last_seqno == 0
    written = {}
    for s in range(1, last + 1):
        written[s] = entry(s, flags=FLAG_FORCE_CHUNK_AFTER if s in chunk_ends else 0)
        assert files.append(written[s]) == s
    files.flush()
    return files, written


def names(directory: Path) -> list[str]:
    return sorted(os.listdir(directory), key=lambda n: int(n.split("_")[1].split("-")[0].split(".")[0]))


def u64(data: bytes, pos: int = 0) -> int:
    return int(struct.unpack_from("<Q", data, pos)[0])


def committed_template(tmp_path: Path) -> tuple[Path, dict[int, bytes]]:
    """ledger_1-3.committed, ledger_4-7.committed, open ledger_8 (8, 9): closed."""
    directory = tmp_path / "template"
    files, written = build(directory)
    files.commit(7)
    files.close()
    assert names(directory) == ["ledger_1-3.committed", "ledger_4-7.committed", "ledger_8"]
    return directory, written


def copy_of(template: Path, tmp_path: Path, label: str) -> Path:
    target = tmp_path / label
    shutil.copytree(template, target)
    return target


# --- appending and reading ---------------------------------------------------------------------------


def test_reads_by_seqno_return_the_exact_bytes_across_chunk_boundaries(tmp_path: Path) -> None:
    files, written = build(tmp_path / "l", last=10, chunk_ends=(3, 4, 7))
    assert files.chunk_names() == ["ledger_1-3", "ledger_4-4", "ledger_5-7", "ledger_8"]
    files.append(entry(11))  # pending (not yet handed to the OS) is readable too
    written[11] = entry(11)
    for s in range(1, 12):
        assert files.read(s) == written[s]
    assert files.read_range(1, 11) == [written[s] for s in range(1, 12)]
    for a, b in [(2, 5), (3, 4), (4, 4), (4, 8), (6, 11), (7, 8), (11, 11)]:
        assert files.read_range(a, b) == [written[s] for s in range(a, b + 1)]
    assert files.read_range(5, 4) == []
    for missing in (0, 12):
        with pytest.raises(LedgerFileError):
            files.read(missing)
    assert files.first_seqno == 1 and files.last_seqno == 11
    files.close()


def test_the_newest_entries_are_read_from_memory_before_they_reach_the_file(tmp_path: Path) -> None:
    """A primary replicates entries as it writes them: reading them back costs no write or read of the file."""
    files, written = build(tmp_path / "l", last=8, chunk_ends=(3,))
    on_disk = os.path.getsize(tmp_path / "l" / "ledger_4")
    new = {s: entry(s, tag=b"new") for s in (9, 10, 11)}
    for s in (9, 10, 11):
        files.append(new[s])
    assert files.read_range(10, 11) == [new[10], new[11]]
    assert files.read_range(9, 9) == [new[9]]
    assert os.path.getsize(tmp_path / "l" / "ledger_4") == on_disk  # still only in memory
    assert files.read_range(8, 10) == [written[8], new[9], new[10]]  # a range reaching the file: written first
    assert os.path.getsize(tmp_path / "l" / "ledger_4") > on_disk
    with pytest.raises(LedgerFileError):
        files.read_range(10, 12)
    files.close()


def test_completed_chunk_has_header_offset_entries_and_positions_table(tmp_path: Path) -> None:
    files, written = build(tmp_path / "l", last=5, chunk_ends=(3,))
    files.close()
    data = (tmp_path / "l" / "ledger_1-3").read_bytes()
    body = written[1] + written[2] + written[3]
    table = 8 + len(body)
    assert u64(data) == table
    assert data[8:table] == body
    assert list(struct.unpack(f"<{3}I", data[table:])) == [8, 8 + len(written[1]), 8 + len(written[1] + written[2])]
    open_chunk = (tmp_path / "l" / "ledger_4").read_bytes()
    assert open_chunk == bytes(8) + written[4] + written[5]


def test_force_chunk_before_completes_the_chunk_ahead_of_the_entry(tmp_path: Path) -> None:
    files, _ = build(tmp_path / "l", last=4, chunk_ends=())
    files.append(entry(5, flags=FLAG_FORCE_CHUNK_BEFORE))
    assert files.chunk_names() == ["ledger_1-4", "ledger_5"]
    files.close()


def test_service_ledger_completes_a_chunk_only_at_a_signature_after_chunk_size_bytes(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = new_service(chunk_size=4000)
    files = ledger.files
    assert files is not None
    directory = Path(files.directory)
    assert names(directory) == ["ledger_1-2.committed"]

    def put(i: int) -> None:
        tx = ledger.begin()
        tx.put(APP, b"key-%d" % i, b"%03d" % i + b"x" * 500)
        ledger.commit(tx)

    for i in range(3):  # ~1.7 kB: below the chunk size
        put(i)
    small_sig = ledger.emit_signature().seqno
    assert files.chunk_names()[-1] == "ledger_3"
    assert files.read(small_sig)[1] == 0  # no FORCE_CHUNK_AFTER
    for i in range(3, 10):  # now well past 4000 bytes, but no signature yet: the chunk stays open
        put(i)
    assert files.chunk_names() == ["ledger_1-2.committed", "ledger_3"]
    sig = ledger.emit_signature().seqno
    assert files.read(sig)[1] == FLAG_FORCE_CHUNK_AFTER
    ledger.flush()
    assert names(directory) == ["ledger_1-2.committed", f"ledger_3-{sig}"]
    data = (directory / f"ledger_3-{sig}").read_bytes()
    table = u64(data)
    assert len(data) - table == 4 * (sig - 3 + 1)
    assert data[8:table] == b"".join(files.read_range(3, sig))

    # request_chunk: the next signature ends the chunk however small it is; plain txs do not.
    put(100)
    ledger.request_chunk()
    put(101)
    assert files.chunk_names()[-1] == f"ledger_{sig + 1}"
    sig2 = ledger.emit_signature().seqno
    assert files.chunk_names()[-1] == f"ledger_{sig + 1}-{sig2}"
    put(102)
    sig3 = ledger.emit_signature().seqno  # small again: no chunk
    ledger.flush()
    assert names(directory) == ["ledger_1-2.committed", f"ledger_3-{sig}", f"ledger_{sig + 1}-{sig2}",
                                f"ledger_{sig2 + 1}"]

    # complete chunks become .committed only once commit reaches their last entry
    ledger.commit_to(sig - 1)
    assert names(directory)[1] == f"ledger_3-{sig}"
    ledger.commit_to(sig)
    assert names(directory)[1] == f"ledger_3-{sig}.committed"
    assert names(directory)[2] == f"ledger_{sig + 1}-{sig2}"
    ledger.commit_to(sig3)
    assert names(directory) == ["ledger_1-2.committed", f"ledger_3-{sig}.committed",
                                f"ledger_{sig + 1}-{sig2}.committed", f"ledger_{sig2 + 1}"]
    files.close()
    assert_read_ledger_accepts(str(directory), signatures=4)  # 2, small_sig, sig, sig2
    assert_read_ledger_accepts(str(directory), "--uncommitted", signatures=5)


def test_commit_renames_complete_chunks_only_when_commit_reaches_their_end(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, _ = build(directory)
    assert names(directory) == ["ledger_1-3", "ledger_4-7", "ledger_8"]
    files.commit(2)
    assert names(directory) == ["ledger_1-3", "ledger_4-7", "ledger_8"]
    files.commit(3)
    assert names(directory) == ["ledger_1-3.committed", "ledger_4-7", "ledger_8"]
    files.commit(6)
    assert names(directory) == ["ledger_1-3.committed", "ledger_4-7", "ledger_8"]
    files.commit(9)  # the open chunk is never renamed by commit
    assert names(directory) == ["ledger_1-3.committed", "ledger_4-7.committed", "ledger_8"]
    assert files.committed_seqno == 9
    files.commit(5)  # commit never goes back
    assert files.committed_seqno == 9
    with pytest.raises(LedgerFileError):
        files.commit(10)
    assert files.read_range(1, 9) == [entry(s, flags=FLAG_FORCE_CHUNK_AFTER if s in CHUNK_ENDS else 0)
                                      for s in range(1, 10)]
    files.close()


# --- truncation --------------------------------------------------------------------------------------


def test_truncate_in_the_open_chunk_then_append_different_entries(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9)
    files.append(entry(10))  # still pending when truncating
    files.commit(3)
    files.truncate(8)
    assert files.last_seqno == 8
    assert files.read(8) == written[8]
    with pytest.raises(LedgerFileError):
        files.read(9)
    assert (directory / "ledger_8").read_bytes() == bytes(8) + written[8]
    new9 = entry(9, tag=b"fork")
    assert files.append(new9) == 9
    assert files.read_range(7, 9) == [written[7], written[8], new9]
    files.truncate(9)  # no-op at the end
    assert files.last_seqno == 9
    files.close()
    reopened, report = LedgerFiles.open(str(directory))
    assert report.last_seqno == 9 and report.warnings == ()
    assert reopened.read(9) == new9
    reopened.close()


def test_truncate_to_the_end_of_the_previous_chunk_deletes_the_open_chunk_file(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9)
    files.truncate(8)  # keeps only the first entry of the open chunk
    assert (directory / "ledger_8").read_bytes() == bytes(8) + written[8]
    files.truncate(7)  # drops the whole open chunk
    assert files.chunk_names() == ["ledger_1-3", "ledger_4-7"]
    assert names(directory) == ["ledger_1-3", "ledger_4-7"]
    assert files.read(7) == written[7]
    assert files.append(entry(8, tag=b"new")) == 8
    assert files.chunk_names() == ["ledger_1-3", "ledger_4-7", "ledger_8"]
    assert files.read(8) == entry(8, tag=b"new")
    files.close()


def test_truncate_into_a_completed_uncommitted_chunk_reopens_it_and_deletes_later_chunks(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9)
    files.commit(3)
    files.truncate(5)
    assert names(directory) == ["ledger_1-3.committed", "ledger_4"]
    assert files.chunk_names() == ["ledger_1-3.committed", "ledger_4"]
    assert files.last_seqno == 5
    assert (directory / "ledger_4").read_bytes() == bytes(8) + written[4] + written[5]
    assert files.read_range(3, 5) == [written[3], written[4], written[5]]
    with pytest.raises(LedgerFileError):
        files.read(6)
    new = {s: entry(s, tag=b"fork", flags=FLAG_FORCE_CHUNK_AFTER if s == 8 else 0) for s in (6, 7, 8, 9)}
    for s in (6, 7, 8, 9):
        assert files.append(new[s]) == s
    assert files.chunk_names() == ["ledger_1-3.committed", "ledger_4-8", "ledger_9"]
    assert files.read_range(4, 9) == [written[4], written[5], new[6], new[7], new[8], new[9]]
    files.close()
    reopened, report = LedgerFiles.open(str(directory))
    assert report.warnings == () and report.last_seqno == 9 and report.committed_seqno == 3
    assert reopened.read_range(1, 9) == [written[1], written[2], written[3], written[4], written[5],
                                         new[6], new[7], new[8], new[9]]
    reopened.close()


def test_truncate_at_a_chunk_end_keeps_that_chunk_complete(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9)
    files.truncate(7)
    assert names(directory) == ["ledger_1-3", "ledger_4-7"]
    files.truncate(3)
    assert names(directory) == ["ledger_1-3"]
    assert files.append(entry(4, tag=b"x")) == 4
    assert files.chunk_names() == ["ledger_1-3", "ledger_4"]
    files.close()


def test_truncate_below_the_commit_point_raises_and_changes_nothing(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9)
    files.commit(5)
    with pytest.raises(LedgerFileError):
        files.truncate(4)
    with pytest.raises(LedgerFileError):
        files.truncate(0)
    assert files.last_seqno == 9
    assert names(directory) == ["ledger_1-3.committed", "ledger_4-7", "ledger_8"]
    assert files.read_range(1, 9) == [written[s] for s in range(1, 10)]
    files.truncate(5)  # exactly at the commit point is allowed
    assert files.last_seqno == 5
    files.close()


def test_service_ledger_rollback_into_a_completed_chunk_then_new_signatures_pass_read_ledger(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = new_service(chunk_size=4000)
    files = ledger.files
    assert files is not None
    directory = Path(files.directory)
    sigs = []
    for round_ in range(3):
        for i in range(9):
            tx = ledger.begin()
            tx.put(APP, b"k%d" % i, b"round%d-" % round_ + b"y" * 500)
            tx.put(PRIVATE, b"p%d" % i, b"private-round%d" % round_)
            ledger.commit(tx)
        sigs.append(ledger.emit_signature().seqno)
    ledger.flush()
    first_end = sigs[0]
    assert names(directory) == ["ledger_1-2.committed", f"ledger_3-{sigs[0]}", f"ledger_{sigs[0] + 1}-{sigs[1]}",
                                f"ledger_{sigs[1] + 1}-{sigs[2]}"]
    keep_bytes = files.read_range(1, 6)
    ledger.rollback(6)  # inside ledger_3-<sigs[0]>, which is complete but not committed
    assert names(directory) == ["ledger_1-2.committed", "ledger_3"]
    assert files.last_seqno == 6 and ledger.last_seqno == 6
    assert files.read_range(1, 6) == keep_bytes
    assert ledger.read_tx().get(APP, b"k3") == b"round0-" + b"y" * 500
    assert ledger.read_tx().get(APP, b"k4") is None
    with pytest.raises(LedgerFileError):
        files.read(first_end)

    tx = ledger.begin()
    tx.put(APP, b"after", b"rollback")
    tx.put(PRIVATE, b"after", b"private")
    ledger.commit(tx)
    sig = ledger.emit_signature().seqno
    ledger.flush()
    assert names(directory) == ["ledger_1-2.committed", "ledger_3"]
    assert_read_ledger_accepts(str(directory), "--uncommitted", signatures=2)
    assert decode_entry(files.read(7), ledger.secrets).writes[PRIVATE] == {b"after": b"private"}

    ledger.request_chunk()
    sig2 = ledger.emit_signature().seqno
    ledger.commit_to(sig2)
    files.close()
    assert names(directory) == ["ledger_1-2.committed", f"ledger_3-{sig2}.committed"]
    assert sig2 == sig + 1
    assert_read_ledger_accepts(str(directory), signatures=3)


# --- reopening and recovery --------------------------------------------------------------------------


def test_open_recovers_last_seqno_committed_seqno_and_chunk_names(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory)
    files.commit(7)
    files.close()
    reopened, report = LedgerFiles.open(str(directory))
    assert (report.last_seqno, report.committed_seqno, report.cut_bytes, report.warnings) == (9, 7, 0, ())
    assert (reopened.last_seqno, reopened.committed_seqno, reopened.first_seqno) == (9, 7, 1)
    assert reopened.chunk_names() == ["ledger_1-3.committed", "ledger_4-7.committed", "ledger_8"]
    assert reopened.read_range(1, 9) == [written[s] for s in range(1, 10)]
    assert reopened.append(entry(10, flags=FLAG_FORCE_CHUNK_AFTER)) == 10
    assert reopened.chunk_names()[-1] == "ledger_8-10"
    with pytest.raises(LedgerFileError):
        reopened.truncate(6)
    reopened.close()


def test_open_of_an_empty_directory_starts_at_seqno_1(tmp_path: Path) -> None:
    files, report = LedgerFiles.open(str(tmp_path / "new"))
    assert (report.last_seqno, report.committed_seqno, files.chunk_names()) == (0, 0, [])
    assert files.append(entry(1)) == 1
    assert files.chunk_names() == ["ledger_1"]
    files.close()


def test_open_finishes_the_rename_of_a_chunk_completed_before_a_crash(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=7)
    files.close()
    os.rename(directory / "ledger_4-7", directory / "ledger_4")  # header and table written, rename lost
    reopened, report = LedgerFiles.open(str(directory))
    assert report.last_seqno == 7 and report.warnings == ()
    assert names(directory) == ["ledger_1-3", "ledger_4-7"]
    assert reopened.read_range(4, 7) == [written[s] for s in range(4, 8)]
    assert reopened.append(entry(8)) == 8
    assert reopened.chunk_names()[-1] == "ledger_8"
    reopened.close()


@pytest.mark.parametrize("cut_into", ["header of 9", "gcm iv of 9", "public domain of 9", "last byte of 9",
                                      "first entry of the chunk"])
def test_torn_tail_of_the_open_chunk_is_cut_back_to_the_last_whole_entry(tmp_path: Path, cut_into: str) -> None:
    template, written = committed_template(tmp_path)
    directory = copy_of(template, tmp_path, "torn")
    pos9 = 8 + len(written[8])
    size9 = len(written[9])
    cut_at, survivors = {
        "header of 9": (pos9 + 3, 8),
        "gcm iv of 9": (pos9 + 30, 8),
        "public domain of 9": (pos9 + 60, 8),
        "last byte of 9": (pos9 + size9 - 1, 8),
        "first entry of the chunk": (8 + 20, 7),
    }[cut_into]
    path = directory / "ledger_8"
    assert path.stat().st_size == pos9 + size9
    os.truncate(path, cut_at)

    files, report = LedgerFiles.open(str(directory))
    kept_size = 8 + sum(len(written[s]) for s in range(8, survivors + 1))
    assert report.last_seqno == files.last_seqno == survivors
    assert report.committed_seqno == 7
    assert report.cut_bytes == cut_at - kept_size
    assert len(report.warnings) == 1 and "ledger_8" in report.warnings[0]
    if survivors == 8:
        assert path.stat().st_size == kept_size
    else:
        assert not path.exists()
    assert files.read_range(1, survivors) == [written[s] for s in range(1, survivors + 1)]
    new = entry(survivors + 1, tag=b"after-crash")
    assert files.append(new) == survivors + 1
    assert files.read(survivors + 1) == new
    files.close()
    again, report2 = LedgerFiles.open(str(directory))
    assert report2.warnings == () and report2.cut_bytes == 0 and report2.last_seqno == survivors + 1
    assert again.read(survivors + 1) == new
    again.close()


@pytest.mark.parametrize("remaining", [0, 3, 7])
def test_open_chunk_cut_inside_its_8_byte_header_is_dropped_and_reported(tmp_path: Path, remaining: int) -> None:
    template, written = committed_template(tmp_path)
    directory = copy_of(template, tmp_path, "torn")
    os.truncate(directory / "ledger_8", remaining)
    files, report = LedgerFiles.open(str(directory))
    assert report.last_seqno == files.last_seqno == 7
    assert len(report.warnings) == 1 and "ledger_8" in report.warnings[0]
    assert report.cut_bytes == remaining  # every byte of the torn file was discarded
    assert files.chunk_names() == ["ledger_1-3.committed", "ledger_4-7.committed"]
    assert files.append(entry(8, tag=b"new")) == 8
    assert files.read(8) == entry(8, tag=b"new")
    files.close()


def test_only_chunk_cut_inside_its_header_leaves_an_empty_ledger(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, _ = build(directory, last=2, chunk_ends=())
    files.close()
    os.truncate(directory / "ledger_1", 5)
    files, report = LedgerFiles.open(str(directory))
    assert report.last_seqno == 0 and len(report.warnings) == 1
    assert files.append(entry(1)) == 1
    assert files.chunk_names() == ["ledger_1"]
    files.close()


def _damaged(tmp_path: Path, label: str) -> tuple[Path, Path, dict[int, bytes]]:
    template, written = committed_template(tmp_path)
    directory = copy_of(template, tmp_path, label)
    return directory, directory / "ledger_4-7.committed", written


def _open_expecting_corruption(directory: Path) -> CorruptedCommittedChunk:
    with pytest.raises(CorruptedCommittedChunk) as info:
        LedgerFiles.open(str(directory))
    assert "ledger_4-7.committed" in str(info.value)
    assert info.value.file == "ledger_4-7.committed"
    return info.value


@pytest.mark.parametrize(("damaged", "new_size"), [(5, "larger"), (5, "smaller"), (5, "tiny"), (5, "huge"),
                                                  (7, "larger"), (7, "smaller")])
def test_overwritten_entry_size_field_in_a_committed_chunk_names_file_and_seqno(
    tmp_path: Path, damaged: int, new_size: str
) -> None:
    directory, path, written = _damaged(tmp_path, "size")
    data = bytearray(path.read_bytes())
    pos = 8 + sum(len(written[s]) for s in range(4, damaged))
    body = len(written[damaged]) - 8
    size = {"larger": body + 100, "smaller": body - 40, "tiny": 3, "huge": 2**48 - 1}[new_size]
    data[pos + 2 : pos + 8] = size.to_bytes(6, "little")
    path.write_bytes(bytes(data))
    assert _open_expecting_corruption(directory).seqno == damaged


def test_a_recovery_defers_checking_committed_chunks_to_their_first_read(tmp_path: Path) -> None:
    """`defer_committed_tables` (a recovery, whose replay reads every entry in worker processes) opens a damaged
    committed chunk without reading it; the first read of it then refuses it as an open would have."""
    directory, path, written = _damaged(tmp_path, "deferred")
    data = bytearray(path.read_bytes())
    pos6 = 8 + len(written[4]) + len(written[5])
    data[pos6 + 24] ^= 0xFF  # IV seqno byte 0
    path.write_bytes(bytes(data))
    files, _ = LedgerFiles.open(str(directory), defer_committed_tables=True)
    assert files.read(2) == written[2] and files.last_seqno >= 7
    with pytest.raises(CorruptedCommittedChunk) as info:
        files.read(4)
    assert info.value.file == "ledger_4-7.committed" and info.value.seqno == 6
    files.close()


def test_committed_chunk_entry_with_a_wrong_iv_seqno_names_that_seqno(tmp_path: Path) -> None:
    directory, path, written = _damaged(tmp_path, "iv")
    data = bytearray(path.read_bytes())
    pos6 = 8 + len(written[4]) + len(written[5])
    data[pos6 + 24] ^= 0xFF  # IV seqno byte 0
    path.write_bytes(bytes(data))
    assert _open_expecting_corruption(directory).seqno == 6


@pytest.mark.parametrize("cut", ["inside the table", "the whole table", "inside an entry"])
def test_truncated_committed_chunk_is_refused_naming_the_chunk_start(tmp_path: Path, cut: str) -> None:
    directory, path, written = _damaged(tmp_path, "cut")
    size = path.stat().st_size
    new_size = {"inside the table": size - 2, "the whole table": size - 16,
                "inside an entry": 8 + len(written[4]) + 10}[cut]
    os.truncate(path, new_size)
    assert _open_expecting_corruption(directory).seqno == 4


def test_corrupt_positions_table_offset_in_header_names_the_chunk_start(tmp_path: Path) -> None:
    directory, path, _ = _damaged(tmp_path, "header")
    data = bytearray(path.read_bytes())
    data[0:8] = struct.pack("<Q", u64(data) + 4)
    path.write_bytes(bytes(data))
    assert _open_expecting_corruption(directory).seqno == 4


def test_positions_table_with_a_wrong_row_is_refused(tmp_path: Path) -> None:
    directory, path, _ = _damaged(tmp_path, "row")
    data = bytearray(path.read_bytes())
    table = u64(data)
    row = table + 4 * 2  # the position of seqno 6
    struct.pack_into("<I", data, row, struct.unpack_from("<I", data, row)[0] + 1)
    path.write_bytes(bytes(data))
    assert _open_expecting_corruption(directory).seqno == 6  # the entry whose row is wrong


def test_extra_bytes_after_a_committed_positions_table_are_refused(tmp_path: Path) -> None:
    directory, path, _ = _damaged(tmp_path, "extra")
    path.write_bytes(path.read_bytes() + struct.pack("<I", 8))
    assert _open_expecting_corruption(directory).seqno == 4


def test_content_damage_in_a_committed_chunk_is_left_to_the_enclave(tmp_path: Path) -> None:
    directory, path, written = _damaged(tmp_path, "content")
    data = bytearray(path.read_bytes())
    data[8 + len(written[4]) - 1] ^= 0x01  # last ciphertext byte of seqno 4
    path.write_bytes(bytes(data))
    files, report = LedgerFiles.open(str(directory))  # structure intact: the host accepts it
    assert report.last_seqno == 9
    with pytest.raises(DecryptionError):
        decode_entry(files.read(4), SECRETS)
    files.close()


def test_a_gap_between_chunk_files_is_refused(tmp_path: Path) -> None:
    template, _ = committed_template(tmp_path)
    directory = copy_of(template, tmp_path, "gap")
    os.remove(directory / "ledger_4-7.committed")
    with pytest.raises(LedgerFileError) as info:
        LedgerFiles.open(str(directory))
    assert "ledger_8" in str(info.value)
    assert info.value.seqno == 4


def test_an_open_chunk_followed_by_another_chunk_is_refused(tmp_path: Path) -> None:
    directory = tmp_path / "l"
    files, written = build(directory, last=9, chunk_ends=(3, 7, 9))
    files.close()
    # turn the complete ledger_4-7 back into an open chunk ledger_4 (no table, zero header)
    os.remove(directory / "ledger_4-7")
    (directory / "ledger_4").write_bytes(bytes(8) + b"".join(written[s] for s in range(4, 8)))
    assert names(directory) == ["ledger_1-3", "ledger_4", "ledger_8-9"]
    with pytest.raises(LedgerFileError) as info:
        LedgerFiles.open(str(directory))
    assert "ledger_4" in str(info.value)


# --- durability policies -----------------------------------------------------------------------------


def _scripted_history(directory: Path, policy: FsyncPolicy) -> dict[str, bytes]:
    files, _ = build(directory, last=9, fsync=policy)
    files.commit(3)
    files.truncate(5)
    for s in range(6, 12):
        files.append(entry(s, tag=b"again", flags=FLAG_FORCE_CHUNK_AFTER if s == 10 else 0))
    files.commit(10)
    files.close()
    return {name: (directory / name).read_bytes() for name in os.listdir(directory)}


def test_fsync_policies_always_batch_and_never_produce_the_same_bytes(tmp_path: Path) -> None:
    results = {policy: _scripted_history(tmp_path / policy.value, policy) for policy in FsyncPolicy}
    reference = results[FsyncPolicy.BATCH]
    assert sorted(reference) == ["ledger_1-3.committed", "ledger_11", "ledger_4-10.committed"]
    for policy, got in results.items():
        assert got == reference, policy


def test_fsync_policy_decides_when_data_is_fsynced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    counts = {}
    for policy in FsyncPolicy:
        files, _ = LedgerFiles.open(str(tmp_path / policy.value), fsync=policy)
        calls.clear()
        for s in range(1, 5):
            files.append(entry(s))
        appended = len(calls)
        files.flush()
        counts[policy] = (appended, len(calls))
        files.close()
    assert counts[FsyncPolicy.ALWAYS][0] >= 4
    # batch: nothing while appending; on flush, the chunk file and (as it is new) its directory
    assert counts[FsyncPolicy.BATCH] == (0, 2)
    assert counts[FsyncPolicy.NEVER] == (0, 0)


def test_a_flush_in_background_writes_now_and_syncs_when_its_function_runs(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    files, _ = LedgerFiles.open(str(tmp_path / "ledger"), fsync=FsyncPolicy.BATCH)
    for s in range(1, 4):
        files.append(entry(s))
    make_durable = files.flush_in_background()
    assert make_durable is not None and synced == []
    on_disk = (tmp_path / "ledger" / "ledger_1").read_bytes()
    assert all(entry(s) in on_disk for s in range(1, 4))  # in the operating system's hands already
    files.append(entry(4))  # the loop goes on writing (and may complete or close the chunk) meanwhile
    files.flush()  # a blocking flush of what came since: the chunk file and, still unsynced, nothing else
    make_durable()  # its own duplicate of the descriptor, and the new chunk's directory
    assert len(synced) == 3
    assert files.flush_in_background() is None  # nothing appended since
    files.close()
    never, _ = LedgerFiles.open(str(tmp_path / "never"), fsync=FsyncPolicy.NEVER)
    never.append(entry(1))
    assert never.flush_in_background() is None and (tmp_path / "never" / "ledger_1").stat().st_size > 8
    never.close()


def test_a_failed_background_sync_stops_the_files(tmp_path: Path) -> None:
    files, _ = LedgerFiles.open(str(tmp_path), fsync=FsyncPolicy.BATCH)
    files.append(entry(1))
    assert files.flush_in_background() is not None
    error = files.background_flush_failed(OSError(5, "Input/output error"))
    assert isinstance(error, LedgerFileError) and "Input/output error" in str(error)
    with pytest.raises(LedgerFileError, match="stopped after a failed write"):
        files.append(entry(2))
    with pytest.raises(LedgerFileError, match="stopped after a failed write"):
        files.flush_in_background()


# --- a whole ServiceLedger restart --------------------------------------------------------------------


def test_service_ledger_recovers_from_files_with_a_torn_tail_and_keeps_committing(
    new_service: Callable[..., ServiceLedger],
) -> None:
    old = new_service(chunk_size=4000)
    files = old.files
    assert files is not None
    directory = Path(files.directory)
    for i in range(14):
        tx = old.begin()
        tx.put(APP, b"k%d" % (i % 5), b"v%d-" % i + b"z" * 500)
        tx.put(PRIVATE, b"p%d" % (i % 3), b"private-%d" % i)
        if i == 12:  # k0 was last put at i == 10
            tx.remove(APP, b"k0")
        old.commit(tx)
        if i % 4 == 3:
            old.emit_signature()
    last_sig = old.emit_signature().seqno
    old.commit_to(last_sig)
    for i in range(3):  # an uncommitted suffix, the last entry of which will be torn
        tx = old.begin()
        tx.put(APP, b"late%d" % i, b"late")
        old.commit(tx)
    old.flush()
    files.close()
    open_chunk = directory / names(directory)[-1]
    assert not open_chunk.name.endswith(".committed") and "-" not in open_chunk.name
    os.truncate(open_chunk, open_chunk.stat().st_size - 5)

    reopened, report = LedgerFiles.open(str(directory))
    assert report.cut_bytes > 0 and report.last_seqno == old.last_seqno - 1
    recovered = recover(reopened, secrets=old.secrets, node=old.node, service=old.service,
                                      chunk_size=4000)
    assert recovered.last_seqno == old.last_seqno - 1
    assert recovered.committed_seqno == reopened.committed_seqno
    assert recovered.signature_seqnos() == old.signature_seqnos()
    old_view, new_view = old.read_tx(recovered.last_seqno), recovered.read_tx()
    for name in (APP, PRIVATE):
        assert dict(new_view.items(name)) == dict(old_view.items(name)), name
    assert new_view.get(APP, b"k0") is None
    assert new_view.get(APP, b"late1") == b"late" and new_view.get(APP, b"late2") is None

    tx = recovered.begin()
    tx.put(APP, b"after-restart", b"yes")
    tx.put(PRIVATE, b"after-restart", b"private-yes")
    recovered.commit(tx)
    sig = recovered.emit_signature().seqno
    recovered.request_chunk()
    sig2 = recovered.emit_signature().seqno
    recovered.commit_to(sig2)
    assert recovered.files is reopened
    reopened.close()
    assert names(directory)[-1].endswith(f"-{sig2}.committed")
    assert decode_entry(reopened.read(sig - 1), old.secrets).writes[PRIVATE] == {b"after-restart": b"private-yes"}
    assert_read_ledger_accepts(str(directory), signatures=len(old.signature_seqnos()) + 2)


def test_a_ledger_can_start_after_a_snapshot_point_and_reopens_there(tmp_path: Path) -> None:
    files, _ = LedgerFiles.open(str(tmp_path / "from_snapshot"))
    files.start_after(41)
    assert files.last_seqno == 41 and files.committed_seqno == 41
    with pytest.raises(LedgerFileError, match="expects 42"):
        files.append(entry(7))
    files.append(entry(42))
    files.flush()
    files.close()
    again, _ = LedgerFiles.open(str(tmp_path / "from_snapshot"))
    assert (again.first_seqno, again.last_seqno) == (42, 42)
    with pytest.raises(LedgerFileError, match="already holds"):
        again.start_after(100)
