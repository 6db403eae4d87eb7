"""ledger/entry.py: serialising CCF transaction entries and parsing/decrypting them back.

Covers CCF's entry byte layout (header, GCM IV, public domain, encrypted private
domain), the round trip, tamper detection through the GCM tag, the robustness contract of the parser
(only `EntryFormatError`, with offset and seqno) and that the `ccf` package reads our public domain.
"""

from __future__ import annotations

import hashlib
import struct
import time

import ccf.ledger
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.entry import TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS, decode_entry, merkle_leaf, serialise_entry
from ledger.errors import DecryptionError, EntryFormatError
from ledger.framing import (
    ENTRY_FORMAT_V1,
    FLAG_FORCE_CHUNK_AFTER,
    FLAG_FORCE_CHUNK_BEFORE,
    frame_entry,
    read_entry_size,
)
from ledger.kv import WriteSet
from ledger.secrets import LedgerSecret, LedgerSecrets

pytestmark = pytest.mark.unit

SECRET = LedgerSecret.create(1, bytes(range(32)))
SECRETS = LedgerSecrets([SECRET])
OTHER_SECRETS = LedgerSecrets([LedgerSecret.create(1, bytes(32))])
CLAIMS = hashlib.sha256(b"claims").digest()
CE = hashlib.sha256(b"ce:7.42:nonce").digest()

PRIVATE_NAME = "zz.private_records_xyzzy"
PRIVATE_VALUE = b"TOP-SECRET-PRIVATE-VALUE"
PRIVATE_KEY = b"private-key-plugh"

# Deliberately inserted out of order: maps and keys must come out sorted.
WRITES: WriteSet = {
    "public:b.second": {b"k2": b"v2", b"k1": b"v1", b"gone": None},
    PRIVATE_NAME: {PRIVATE_KEY: PRIVATE_VALUE, b"removed-private": None},
    "public:a.first": {b"zeta": b"public-zeta-value", b"alpha": b"public-alpha-value"},
    "aa.other_private": {b"x": b"another-private-value"},
    "public:c.unchanged": {},
}


def _entry(seqno: int = 42, view: int = 7, writes: WriteSet | None = None, flags: int = 0) -> bytes:
    return serialise_entry(seqno, view, WRITES if writes is None else writes, CLAIMS, CE, SECRET, flags)


def _public(writes: WriteSet) -> WriteSet:
    return {name: changes for name, changes in writes.items() if name.startswith("public:") and changes}


def _nonempty(writes: WriteSet) -> WriteSet:
    return {name: changes for name, changes in writes.items() if changes}


def _u64(buf: bytes, pos: int) -> int:
    return int(struct.unpack_from("<Q", buf, pos)[0])


def _walk_maps(domain: bytes, pos: int) -> list[tuple[str, list[bytes], list[bytes]]]:
    """An independent reader of the per-map format: (name, written keys, removed keys) in order."""
    out = []
    while pos < len(domain):
        n = _u64(domain, pos)
        name = domain[pos + 8 : pos + 8 + n].decode()
        pos += 8 + n
        assert _u64(domain, pos) == 0 and _u64(domain, pos + 8) == 0  # read version, read count
        writes = _u64(domain, pos + 16)
        pos += 24
        written = []
        for _ in range(writes):
            n = _u64(domain, pos)
            written.append(domain[pos + 8 : pos + 8 + n])
            pos += 8 + n
            pos += 8 + _u64(domain, pos)
        removed = []
        for _ in range(_u64(domain, pos)):
            pos += 8
            n = _u64(domain, pos)
            removed.append(domain[pos + 8 : pos + 8 + n])
            pos += n
        pos += 8
        out.append((name, written, removed))
    assert pos == len(domain)
    return out


# --- layout and round trip ---------------------------------------------------------------------------


def test_round_trip_restores_public_and_private_maps_seqno_view_flags_claims_and_commit_evidence() -> None:
    buf = _entry(flags=FLAG_FORCE_CHUNK_AFTER)
    decoded = decode_entry(buf, SECRETS)
    assert decoded.seqno == 42
    assert decoded.view == 7
    assert decoded.flags == FLAG_FORCE_CHUNK_AFTER
    assert decoded.entry_type == TYPE_WITH_COMMIT_EVIDENCE_AND_CLAIMS == 4
    assert decoded.claims_digest == CLAIMS
    assert decoded.commit_evidence_digest == CE
    assert decoded.writes == _nonempty(WRITES)
    assert decoded.writes["public:b.second"][b"gone"] is None
    assert decoded.writes[PRIVATE_NAME][b"removed-private"] is None
    assert decoded.write_set_digest == hashlib.sha256(buf).digest()


def test_header_is_version_1_with_flags_and_body_size_of_length_minus_8() -> None:
    for flags in (0, FLAG_FORCE_CHUNK_AFTER, FLAG_FORCE_CHUNK_BEFORE):
        buf = _entry(flags=flags)
        assert buf[0] == ENTRY_FORMAT_V1 == 1
        assert buf[1] == flags
        assert int.from_bytes(buf[2:8], "little") == len(buf) - 8
        assert read_entry_size(buf, 0) == len(buf)


def test_gcm_iv_holds_seqno_u64_and_view_u32_little_endian() -> None:
    seqno, view = 0x0102030405060708, 0x11223344
    buf = _entry(seqno=seqno, view=view)
    assert buf[24:36] == seqno.to_bytes(8, "little") + view.to_bytes(4, "little")
    frame = frame_entry(buf)
    assert (frame.seqno, frame.view, frame.is_snapshot) == (seqno, view, False)
    gcm = ccf.ledger.GcmHeader(buf[8:36])
    assert (gcm.seqno, gcm.view) == (seqno, view)


def test_public_domain_starts_with_type_seqno_claims_then_commit_evidence_then_zero_conflict_version() -> None:
    frame = frame_entry(_entry())
    public = frame.public_domain
    assert public[0] == 4
    assert _u64(public, 1) == 42
    assert public[9:41] == CLAIMS
    assert public[41:73] == CE
    assert public[73:81] == bytes(8)
    assert _u64(_entry(), 36) == len(public)
    # private ciphertext is exactly as long as the private plaintext (the tag sits in the body prefix)
    plain = SECRET.aead.decrypt(frame.iv, frame.private_ciphertext + frame.tag, public)
    assert len(frame.private_ciphertext) == len(plain) == len(_entry()) - 8 - 36 - len(public)


def test_maps_are_sorted_by_name_and_keys_sorted_writes_before_removals() -> None:
    frame = frame_entry(_entry())
    public = _walk_maps(frame.public_domain, 81)
    assert public == [
        ("public:a.first", [b"alpha", b"zeta"], []),
        ("public:b.second", [b"k1", b"k2"], [b"gone"]),
    ]
    plain = SECRET.aead.decrypt(frame.iv, frame.private_ciphertext + frame.tag, frame.public_domain)
    assert _walk_maps(plain, 0) == [
        ("aa.other_private", [b"x"], []),
        (PRIVATE_NAME, [PRIVATE_KEY], [b"removed-private"]),
    ]


def test_multiple_removals_in_one_map_are_sorted() -> None:
    writes: WriteSet = {"public:m": {b"c": None, b"a": None, b"b": b"kept"}}
    assert _walk_maps(frame_entry(_entry(writes=writes)).public_domain, 81) == [("public:m", [b"b"], [b"a", b"c"])]


def test_private_names_keys_and_values_are_encrypted_while_public_ones_are_in_clear() -> None:
    buf = _entry()
    for secret_bytes in (PRIVATE_NAME.encode(), PRIVATE_KEY, PRIVATE_VALUE, b"another-private-value",
                         b"aa.other_private", b"removed-private"):
        assert secret_bytes not in buf
    for clear in (b"public:a.first", b"public:b.second", b"public-alpha-value", b"public-zeta-value", b"gone"):
        assert clear in frame_entry(buf).public_domain


def test_entry_without_private_writes_still_carries_a_tag_over_the_public_domain() -> None:
    buf = _entry(writes={"public:only": {b"k": b"v"}})
    frame = frame_entry(buf)
    assert frame.private_ciphertext == b""
    assert decode_entry(buf, SECRETS).writes == {"public:only": {b"k": b"v"}}
    tampered = bytearray(buf)
    value_at = len(buf) - 9  # the value "v", followed only by the 8-byte remove count
    assert tampered[value_at : value_at + 1] == b"v"
    tampered[value_at] ^= 0x01
    with pytest.raises(DecryptionError):
        decode_entry(bytes(tampered), SECRETS)


def test_decoding_without_secrets_returns_only_public_maps() -> None:
    decoded = decode_entry(_entry(), None)
    assert decoded.writes == _public(WRITES)
    assert decoded.seqno == 42 and decoded.claims_digest == CLAIMS and decoded.commit_evidence_digest == CE


def test_decoding_with_a_different_secret_raises_decryption_error_naming_the_seqno() -> None:
    with pytest.raises(DecryptionError) as info:
        decode_entry(_entry(seqno=1234), OTHER_SECRETS)
    assert isinstance(info.value, EntryFormatError)
    assert info.value.seqno == 1234
    assert "1234" in str(info.value)
    assert info.value.offset == 0


def test_decoding_a_seqno_no_secret_covers_raises_decryption_error() -> None:
    late = LedgerSecrets([LedgerSecret.create(100, bytes(32))])
    with pytest.raises(DecryptionError) as info:
        decode_entry(_entry(seqno=5), late)
    assert info.value.seqno == 5


def test_every_flipped_byte_of_iv_public_domain_or_ciphertext_is_detected_with_secrets() -> None:
    buf = _entry()
    frame = frame_entry(buf)
    start_of_tag = 8
    assert frame.public_end < len(buf)  # there is ciphertext to flip
    for i in range(start_of_tag, len(buf)):
        tampered = bytearray(buf)
        tampered[i] ^= 0x5A
        with pytest.raises(EntryFormatError):  # DecryptionError is a subclass
            decode_entry(bytes(tampered), SECRETS)


def test_decode_at_an_offset_reports_errors_at_that_offset() -> None:
    first, second = _entry(seqno=42), _entry(seqno=43)
    both = first + second
    assert decode_entry(both, SECRETS, len(first)).seqno == 43
    with pytest.raises(DecryptionError) as info:
        decode_entry(both, OTHER_SECRETS, len(first), file="ledger_42")
    assert info.value.offset == len(first)
    assert info.value.seqno == 43
    assert info.value.file == "ledger_42" and "ledger_42" in str(info.value)


def test_read_entry_size_on_a_short_buffer_raises_entry_format_error() -> None:
    buf = _entry()
    for cut in (0, 1, 7, 8, 20, len(buf) - 1):
        with pytest.raises(EntryFormatError) as info:
            read_entry_size(buf[:cut], 0)
        assert info.value.offset == 0
    with pytest.raises(EntryFormatError):
        read_entry_size(buf, 0, limit=len(buf) - 1)


def test_every_truncation_of_an_entry_raises_entry_format_error() -> None:
    buf = _entry()
    for cut in range(len(buf)):
        for secrets in (SECRETS, None):
            with pytest.raises(EntryFormatError) as info:
                decode_entry(buf[:cut], secrets)
            assert info.value.offset == 0


def test_unknown_version_and_too_small_body_are_rejected() -> None:
    buf = bytearray(_entry())
    buf[0] = 2
    with pytest.raises(EntryFormatError, match="version"):
        decode_entry(bytes(buf), None)
    small = struct.pack("<Q", 1 | (10 << 16)) + bytes(10)
    with pytest.raises(EntryFormatError):
        decode_entry(small, None)


def test_public_seqno_disagreeing_with_iv_seqno_is_rejected() -> None:
    buf = bytearray(_entry(seqno=42))
    frame = frame_entry(bytes(buf))
    buf[frame.public_start + 1] = 43  # public domain seqno 42 -> 43, IV still 42
    with pytest.raises(EntryFormatError) as info:
        decode_entry(bytes(buf), None)
    assert info.value.seqno == 42


@pytest.mark.parametrize("field", ["map name length", "key length", "value length"])
def test_length_field_with_top_bit_set_raises_entry_format_error_not_overflow_error(field: str) -> None:
    # public domain: 81-byte head, then lp(name) | 24-byte map prefix | lp(key) | lp(value) | remove count
    buf = bytearray(_entry(writes={"public:m": {b"k": b"v"}}))
    frame = frame_entry(bytes(buf))
    name_len = frame.public_start + 81
    key_len = name_len + 8 + len(b"public:m") + 24
    value_len = key_len + 8 + 1
    pos = {"map name length": name_len, "key length": key_len, "value length": value_len}[field]
    assert _u64(buf, pos) in (len(b"public:m"), 1)
    buf[pos + 7] |= 0x80  # a length of 2**63 + n: past any Python slice index
    for secrets in (None, SECRETS):
        with pytest.raises(EntryFormatError) as info:
            decode_entry(bytes(buf), secrets)
        assert info.value.seqno == 42 and info.value.offset == 0


def test_merkle_leaf_is_sha256_of_write_set_digest_commit_evidence_and_claims() -> None:
    wsd = hashlib.sha256(_entry()).digest()
    assert merkle_leaf(wsd, CE, CLAIMS) == hashlib.sha256(wsd + CE + CLAIMS).digest()
    assert merkle_leaf(wsd, CE, CLAIMS) != merkle_leaf(wsd, CLAIMS, CE)  # order matters: ce before claims
    assert merkle_leaf(wsd, None, None) == wsd
    decoded = decode_entry(_entry(), SECRETS)
    assert merkle_leaf(decoded.write_set_digest, decoded.commit_evidence_digest, decoded.claims_digest) == (
        hashlib.sha256(hashlib.sha256(_entry()).digest() + CE + CLAIMS).digest()
    )


def test_ccf_public_domain_parser_reads_our_tables_seqno_claims_and_commit_evidence() -> None:
    frame = frame_entry(_entry(seqno=42))
    public = ccf.ledger.PublicDomain(frame.public_domain)
    assert public.get_seqno() == 42
    assert public.get_claims_digest() == CLAIMS
    assert public.get_commit_evidence_digest() == CE
    assert public.get_tables() == _public(WRITES)
    assert PRIVATE_NAME not in public.get_tables()


# --- properties --------------------------------------------------------------------------------------

_keys = st.binary(max_size=24)
_changes = st.dictionaries(_keys, st.one_of(st.none(), st.binary(max_size=64)), min_size=1, max_size=5)
_public_names = st.text(max_size=12).map(lambda s: "public:" + s)
_private_names = st.text(max_size=12).filter(lambda s: not s.startswith("public:"))
_write_sets = st.dictionaries(st.one_of(_public_names, _private_names), _changes, max_size=5)
_seqnos = st.integers(1, 2**63 - 1)
_views = st.integers(0, 2**31 - 1)


@pytest.mark.property
@given(seqno=_seqnos, view=_views, writes=_write_sets, claims=st.binary(min_size=32, max_size=32),
       ce=st.binary(min_size=32, max_size=32), flags=st.integers(0, 255))
def test_property_round_trip_of_random_write_sets(
    seqno: int, view: int, writes: WriteSet, claims: bytes, ce: bytes, flags: int
) -> None:
    buf = serialise_entry(seqno, view, writes, claims, ce, SECRET, flags)
    decoded = decode_entry(buf, SECRETS)
    assert (decoded.seqno, decoded.view, decoded.flags, decoded.entry_type) == (seqno, view, flags, 4)
    assert (decoded.claims_digest, decoded.commit_evidence_digest) == (claims, ce)
    assert decoded.writes == writes
    assert decode_entry(buf, None).writes == _public(writes)
    public = ccf.ledger.PublicDomain(frame_entry(buf).public_domain)
    assert public.get_tables() == _public(writes)
    assert public.get_seqno() == seqno


def _assert_decodes_or_format_error(buf: bytes, *, known_seqnos: tuple[int, ...] = ()) -> None:
    """decode_entry either succeeds or raises EntryFormatError carrying the offset (and framed seqno)."""
    for secrets in (SECRETS, None):
        started = time.perf_counter()
        try:
            decode_entry(buf, secrets)
        except EntryFormatError as e:
            assert e.offset == 0
            try:
                frame = frame_entry(buf)
            except EntryFormatError:
                pass
            else:  # the IV could be read, so the seqno is known and must be reported
                assert e.seqno is not None
                if known_seqnos:
                    assert e.seqno in (*known_seqnos, frame.seqno)
        assert time.perf_counter() - started < 2.0


@pytest.mark.property
@given(data=st.binary(max_size=400))
def test_property_random_bytes_decode_or_raise_entry_format_error(data: bytes) -> None:
    _assert_decodes_or_format_error(data)


@pytest.mark.property
@given(data=st.binary(min_size=36, max_size=300), flags=st.integers(0, 255))
def test_property_random_body_behind_a_valid_header_decodes_or_raises_entry_format_error(
    data: bytes, flags: int
) -> None:
    _assert_decodes_or_format_error(struct.pack("<Q", 1 | (flags << 8) | (len(data) << 16)) + data)


@pytest.mark.property
@given(writes=_write_sets, position=st.integers(0, 10**6), mask=st.integers(1, 255))
def test_property_single_byte_flips_decode_or_raise_entry_format_error(
    writes: WriteSet, position: int, mask: int
) -> None:
    buf = bytearray(serialise_entry(42, 3, writes, CLAIMS, CE, SECRET))
    buf[position % len(buf)] ^= mask
    _assert_decodes_or_format_error(bytes(buf), known_seqnos=(42,))


@pytest.mark.property
@given(writes=_write_sets, cut=st.integers(0, 10**6))
def test_property_random_truncations_raise_entry_format_error(writes: WriteSet, cut: int) -> None:
    buf = serialise_entry(42, 3, writes, CLAIMS, CE, SECRET)
    truncated = buf[: cut % len(buf)]
    with pytest.raises(EntryFormatError) as info:
        decode_entry(truncated, SECRETS)
    assert info.value.offset == 0


def test_maps_in_the_wrong_domain_or_named_twice_are_refused() -> None:
    from ledger.entry import parse_maps, serialise_maps

    public = serialise_maps({"public:a": {b"k": b"v"}}, ["public:a"])
    private = serialise_maps({"secret": {b"k": b"v"}}, ["secret"])
    assert parse_maps(public, 0, len(public), public=True) == {"public:a": {b"k": b"v"}}
    with pytest.raises(EntryFormatError, match="public domain"):
        parse_maps(private, 0, len(private), public=True)
    with pytest.raises(EntryFormatError, match="private domain"):
        parse_maps(public, 0, len(public), public=False)
    twice = public + public
    with pytest.raises(EntryFormatError, match="twice"):
        parse_maps(twice, 0, len(twice))
