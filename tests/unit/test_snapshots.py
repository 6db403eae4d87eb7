"""Snapshots in CCF's format: accepted by ccf.ledger.Snapshot and read_ledger.py -s, and loadable."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

import ccf.ledger
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import SnapshotError
from ledger.kv import PACK_MAX, LastWrites, MapRecords, SnapshotRecords, SnapshotState, last_write_history
from ledger.secrets import LedgerSecrets
from ledger.service_ledger import ServiceLedger
from ledger.snapshot_files import latest_committed_snapshot
from ledger.snapshots import _serialise_snapshot_maps, load_snapshot, read_snapshot_maps
from ledger.tables import SINGLETON_KEY, SNAPSHOT_EVIDENCE
from tests.ccf_tools import assert_read_ledger_accepts, read_ledger

pytestmark = pytest.mark.unit


def busy_ledger(new_service: Callable[..., ServiceLedger]) -> ServiceLedger:
    ledger = new_service()
    for i in range(30):
        tx = ledger.begin()
        tx.put("app.private", b"k%d" % (i % 7), b"secret %d" % i)
        tx.put("public:app.public", b"k%d" % (i % 5), b"public %d" % i)
        if i % 6 == 5:
            tx.remove("public:app.public", b"k%d" % ((i + 1) % 5))
        ledger.commit(tx)
        if i == 12:
            ledger.rekey()
        if i % 10 == 9:
            ledger.emit_signature()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    return ledger


def test_snapshot_becomes_committed_only_after_its_evidence_is_committed(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = busy_ledger(new_service)
    assert ledger.snapshot_dir is not None
    seqno, evidence = ledger.snapshot()
    assert seqno == ledger.signature_seqnos()[-1]
    assert os.listdir(ledger.snapshot_dir) == [f"snapshot_{seqno}_{evidence}"]
    assert ledger.read_tx().get_json(SNAPSHOT_EVIDENCE, SINGLETON_KEY)["version"] == seqno
    sig = ledger.emit_signature()
    assert latest_committed_snapshot(ledger.snapshot_dir) is None  # signed, not yet committed
    ledger.commit_to(sig.seqno)
    path = latest_committed_snapshot(ledger.snapshot_dir)
    assert path is not None and path.endswith(f"snapshot_{seqno}_{evidence}.committed")


def test_committed_snapshot_is_accepted_by_ccf_and_matches_our_public_state(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = busy_ledger(new_service)
    seqno, _ = ledger.snapshot()
    ours = {name: {k: v for k, (_, v) in entries.items()}
            for name, entries in ledger.store.snapshot(seqno).items() if name.startswith("public:")}
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    path = latest_committed_snapshot(ledger.snapshot_dir or "")
    assert path is not None
    with ccf.ledger.Snapshot(path) as snapshot:  # parses it and verifies the appended receipt
        public = snapshot.get_public_domain()
        assert public.get_seqno() == seqno
        tables = public.get_tables()
    assert {name: records for name, records in tables.items() if records} == ours
    proc = read_ledger(path, "-s")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]


def test_ledger_resumed_from_a_snapshot_has_the_same_state_and_keeps_a_valid_ledger(
    new_service: Callable[..., ServiceLedger], tmp_path: os.PathLike[str],
) -> None:
    ledger = busy_ledger(new_service)
    seqno, _ = ledger.snapshot()
    state_at_snapshot = ledger.store.snapshot(seqno)
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    path = latest_committed_snapshot(ledger.snapshot_dir or "")
    assert path is not None
    with open(path, "rb") as f:
        data = f.read()
    loaded = load_snapshot(data, ledger.secrets)
    assert loaded.seqno == seqno
    assert loaded.receipt is not None and "leaf_components" in loaded.receipt

    resumed = ServiceLedger.from_snapshot(data, secrets=ledger.secrets, node=ledger.node, service=ledger.service,
                                          files=None)
    assert resumed.store.snapshot(seqno) == state_at_snapshot
    assert resumed.merkle.root(seqno + 1) == ledger.merkle.root(seqno + 1)
    assert resumed.read_tx().get("app.private", b"k3") == state_at_snapshot["app.private"][b"k3"][1]
    # The resumed ledger continues the same tree, so its receipts verify against the same service.
    tx = resumed.begin()
    tx.put("app.private", b"after", b"snapshot")
    resumed.commit(tx)
    resumed_sig = resumed.emit_signature()
    resumed.commit_to(resumed_sig.seqno)
    receipt = resumed.receipt(seqno + 1)
    from ledger.receipts import verify_json_receipt

    assert verify_json_receipt(receipt, ledger.service.cert).seqno == seqno + 1


def test_snapshot_with_the_wrong_secret_or_damage_is_refused(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = busy_ledger(new_service)
    ledger.snapshot()
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    path = latest_committed_snapshot(ledger.snapshot_dir or "")
    assert path is not None
    with open(path, "rb") as f:
        data = f.read()
    with pytest.raises(SnapshotError):
        load_snapshot(data, LedgerSecrets.fresh(1))
    damaged = bytearray(data)
    damaged[60] ^= 0x40  # inside the public domain, authenticated by the tag
    with pytest.raises(SnapshotError):
        load_snapshot(bytes(damaged), ledger.secrets)
    for cut in (0, 7, 30, len(data) // 2):
        with pytest.raises(SnapshotError):
            load_snapshot(data[:cut], ledger.secrets)


def test_ledger_after_snapshot_and_rekey_still_passes_read_ledger(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = busy_ledger(new_service)
    ledger.snapshot()
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    assert_read_ledger_accepts(ledger.files.directory, signatures=len(ledger.signature_seqnos()))  # type: ignore[union-attr]


@pytest.mark.property
@given(data=st.data())
def test_damaged_snapshot_bytes_raise_only_snapshot_error(new_service: Callable[..., ServiceLedger],
                                                          data: st.DataObject) -> None:
    ledger = _SNAPSHOT_CACHE.get("ledger") or busy_ledger(new_service)
    if "bytes" not in _SNAPSHOT_CACHE:
        ledger.snapshot()
        sig = ledger.emit_signature()
        ledger.commit_to(sig.seqno)
        path = latest_committed_snapshot(ledger.snapshot_dir or "")
        assert path is not None
        with open(path, "rb") as f:
            _SNAPSHOT_CACHE.update(ledger=ledger, bytes=f.read())
    blob = bytearray(_SNAPSHOT_CACHE["bytes"])
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(blob)))
    for secrets in (None, ledger.secrets):
        with contextlib.suppress(SnapshotError):  # anything else fails the test
            load_snapshot(bytes(blob[:cut]) if data.draw(st.booleans()) else bytes(blob), secrets)


_SNAPSHOT_CACHE: dict[str, Any] = {}


def _records(state: SnapshotState) -> SnapshotRecords:
    """Maps' records as a store holds them: small values packed, large ones in a history list (their records
    then come in `unpacked`)."""
    records: SnapshotRecords = {}
    for name, entries in state.items():
        held = {k: last_write_history(ver, val) for k, (ver, val) in entries.items()}
        unpacked = {k: ver.to_bytes(8, "little") + val for k, (ver, val) in entries.items()
                    if not isinstance(held[k], bytes)}
        records[name] = MapRecords(held, unpacked, len(entries))
    return records


def test_snapshot_maps_read_into_the_store_s_packed_records_in_batches_or_at_once() -> None:
    large = b"L" * (PACK_MAX + 1)
    state = {"records": {b"a": (3, b"small"), b"b": (7, large), b"c": (5, b"")}, "other": {b"x": (2, b"y")},
             "zero": {b"z": (0, b"written at version 0")}}
    body = _serialise_snapshot_maps(_records(state), ["other", "records", "zero"])
    whole = LastWrites()
    assert list(read_snapshot_maps(body, 0, len(body), whole, public=False)) == [5]
    assert whole.maps == {"records": {b"a": last_write_history(3, b"small"), b"b": last_write_history(7, large),
                                      b"c": last_write_history(5, b"")},
                          "other": {b"x": last_write_history(2, b"y")},
                          "zero": {b"z": last_write_history(0, b"written at version 0")}}
    assert isinstance(whole.maps["records"][b"a"], bytes) and isinstance(whole.maps["records"][b"b"], list)
    assert (whole.newest, whole.removals) == ({"records": 7, "other": 2, "zero": 0}, set())
    stepped = LastWrites()
    assert list(read_snapshot_maps(body, 0, len(body), stepped, public=False, batch=3)) == [3, 2]
    assert stepped == whole


def _map_versions(body: bytes) -> dict[str, int]:
    """Each map's version field, read from serialised maps."""
    versions, pos = {}, 0
    while pos < len(body):
        name_size = int.from_bytes(body[pos : pos + 8], "little")
        name = body[pos + 8 : pos + 8 + name_size].decode()
        pos += 8 + name_size
        versions[name] = int.from_bytes(body[pos : pos + 8], "little")
        pos += 16 + int.from_bytes(body[pos + 8 : pos + 16], "little")
    return versions


def test_a_snapshot_map_s_version_is_its_newest_record_s_packed_or_not() -> None:
    large = b"L" * (PACK_MAX + 1)
    state = {"packed": {b"a": (300, b"x"), b"b": (2**40 + 1, b"y"), b"c": (256, b"z")},
             "mixed": {b"a": (9, large), b"b": (70000, b"small"), b"c": (65536, large)},
             "large": {b"a": (5, large), b"b": (4, large)}}
    body = _serialise_snapshot_maps(_records(state), ["large", "mixed", "packed"])
    assert _map_versions(body) == {"large": 5, "mixed": 70000, "packed": 2**40 + 1}
