"""The scanner shared by the audit and the replays refuses what the sequential replay refuses."""

from __future__ import annotations

import pytest

from ledger.audit_scan import scan_chunk
from ledger.entry import serialise_entry
from ledger.errors import EntryFormatError
from ledger.files import FILE_HEADER_SIZE
from ledger.kv import LastWrites
from ledger.secrets import LedgerSecret

pytestmark = pytest.mark.unit

SECRET = LedgerSecret.create(1, bytes(32))


def _open_chunk(*entries: bytes) -> bytes:
    return bytes(FILE_HEADER_SIZE) + b"".join(entries)  # no positions table: an open chunk


def test_a_map_whose_name_is_not_public_is_refused_in_the_public_domain() -> None:
    entry = serialise_entry(1, 2, {"public:ab": {b"k": b"v"}}, bytes(32), bytes(32), SECRET)
    state = LastWrites()
    scan_chunk(_open_chunk(entry), "ledger_1", 1, None, public_state=state)
    assert state.maps == {"public:ab": {b"k": (1).to_bytes(8, "little") + b"v"}}
    renamed = entry.replace(b"public:ab", b"private.x")  # same length: only the name changes
    with pytest.raises(EntryFormatError, match="'private.x' is in the public domain") as raised:
        scan_chunk(_open_chunk(renamed), "ledger_1", 1, None)
    assert (raised.value.file, raised.value.seqno, raised.value.offset) == ("ledger_1", 1, FILE_HEADER_SIZE)


def test_a_replays_records_hold_each_entrys_leaf_digest_and_size_back_to_back() -> None:
    entries = [serialise_entry(seqno, 2, {"public:ab": {b"k%d" % seqno: b"v" * seqno}}, bytes(32), bytes(32), SECRET)
               for seqno in (1, 2, 3)]
    chunk = _open_chunk(*entries)
    leaves = scan_chunk(chunk, "ledger_1", 1, None, keep_leaves=True).leaves
    records = scan_chunk(chunk, "ledger_1", 1, None, records=True, summaries=False).records
    assert leaves is not None and records is not None
    assert bytes(records.leaves) == b"".join(leaves)
    assert list(records.sizes) == [len(entry) for entry in entries]
    assert len(records.wsd) == 3 * 32
    with pytest.raises(ValueError, match="records hold the leaves"):
        scan_chunk(chunk, "ledger_1", 1, None, records=True)  # (summaries too: the leaves would be in two places)
