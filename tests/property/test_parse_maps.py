"""`parse_maps` reads well-formed maps in one quick pass and hands anything else to its careful pass: the two
must agree on every input, well formed or damaged (the same write set, or the same `EntryFormatError`)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.entry import _parse_maps_checked, parse_maps, serialise_maps
from ledger.errors import EntryFormatError
from ledger.kv import WriteSet

pytestmark = pytest.mark.property

_names = st.sampled_from(["public:a", "public:ccf.gov.b", "records", "private.c", "é"])
_changes = st.dictionaries(st.binary(max_size=12), st.one_of(st.none(), st.binary(max_size=40)), max_size=4)
_write_sets = st.dictionaries(_names, _changes, max_size=3)


def _outcome(parse: object, buf: bytes | memoryview, pos: int, end: int, public: bool | None) -> object:
    try:
        return parse(buf, pos, end, seqno=7, file="f", offset=3, public=public)  # type: ignore[operator]
    except EntryFormatError as e:
        return ("error", str(e))


def _serialised(maps: WriteSet) -> bytes:
    return serialise_maps(maps, sorted(maps))


@settings(max_examples=400, deadline=None)
@given(_write_sets, st.data())
def test_the_quick_and_careful_passes_agree_on_damaged_and_well_formed_maps(maps: WriteSet, data: st.DataObject
                                                                           ) -> None:
    body = bytearray(_serialised(maps))
    if data.draw(st.booleans()):  # every map named twice
        body.extend(bytes(body))
    for _ in range(data.draw(st.integers(0, 3))):  # flip bytes anywhere, lengths and counts included
        if body:
            body[data.draw(st.integers(0, len(body) - 1))] = data.draw(st.integers(0, 255))
    # mostly the whole domain (well formed or damaged inside), sometimes cut anywhere
    cut = len(body) if data.draw(st.integers(0, 3)) else data.draw(st.integers(0, len(body)))
    padded = b"\xff" * 5 + bytes(body) + b"\xfe" * 9  # the domain lies inside a larger buffer, as in an entry
    public = data.draw(st.sampled_from([None, True, False]))
    end = 5 + cut
    quick = _outcome(parse_maps, padded, 5, end, public)
    assert quick == _outcome(_parse_maps_checked, padded, 5, end, public)
    assert quick == _outcome(parse_maps, memoryview(padded), 5, end, public)


@given(_write_sets)
def test_well_formed_maps_read_back_as_written(maps: WriteSet) -> None:
    body = _serialised(maps)
    assert parse_maps(body, 0, len(body)) == maps
    parsed = parse_maps(memoryview(b"x" + body), 1, len(body) + 1)
    assert parsed == maps and all(type(v) is bytes for c in parsed.values() for v in c.values() if v is not None)
