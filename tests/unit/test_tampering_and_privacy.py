"""Tampering is caught by read_ledger.py and by our auditor (which names the seqno); private values
never reach the disk in plaintext, in ledger chunks or snapshots."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from ledger.audit import audit_ledger
from ledger.errors import CorruptedCommittedChunk, VerificationError
from ledger.files import LedgerFiles
from ledger.replay import recover
from ledger.service_ledger import ServiceLedger
from tests.ccf_tools import assert_read_ledger_accepts, read_ledger
from tests.ledger_helpers import flip_byte

pytestmark = pytest.mark.unit

SECRET_MARKER = b"TOP-SECRET-PLAINTEXT-"
PUBLIC_MARKER = b"public-visible-"


def write_ledger(new_service: Callable[..., ServiceLedger], n: int = 40) -> ServiceLedger:
    ledger = new_service(chunk_size=6000)
    for i in range(n):
        tx = ledger.begin()
        tx.put("app.private", b"key%d" % i, SECRET_MARKER + b"%04d" % i + b"." * 100)
        tx.put("private:with:colons", b"k", SECRET_MARKER + b"colon %d" % i)
        tx.put("public:app.public", b"key%d" % i, PUBLIC_MARKER + b"%04d" % i)
        ledger.commit(tx)
        if i % 9 == 8:
            ledger.emit_signature()
    ledger.request_chunk()
    last = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(last.seqno)
    assert ledger.files is not None
    ledger.files.close()
    return ledger


def committed_chunks(directory: str) -> list[str]:
    return sorted((f for f in os.listdir(directory) if f.endswith(".committed")),
                  key=lambda f: int(f.split("_")[1].split("-")[0]))


def test_private_values_never_appear_in_plaintext_in_ledger_or_snapshot_files(
    new_service: Callable[..., ServiceLedger],
) -> None:
    ledger = write_ledger(new_service)
    files, _ = LedgerFiles.open(ledger.files.directory)  # type: ignore[union-attr]
    ledger.files = files
    ledger.snapshot()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    written = []
    for directory in (files.directory, ledger.snapshot_dir):
        assert directory is not None
        for name in os.listdir(directory):
            with open(os.path.join(directory, name), "rb") as f:
                written.append((name, f.read()))
    assert any(name.startswith("snapshot_") and name.endswith(".committed") for name, _ in written)
    for name, data in written:
        assert SECRET_MARKER not in data, f"private plaintext found in {name}"
        assert b"app.private" not in data, f"private map name found in {name}"
    # the test would see plaintext if there were any: public values are there in clear
    assert any(PUBLIC_MARKER in data for name, data in written if name.startswith("ledger_"))
    assert any(PUBLIC_MARKER in data for name, data in written if name.startswith("snapshot_"))



@pytest.mark.parametrize("where", ["public value", "private ciphertext", "gcm tag", "claims digest"])
def test_a_flipped_byte_in_a_committed_chunk_fails_read_ledger_and_our_audit_naming_the_seqno(
    new_service: Callable[..., ServiceLedger], where: str
) -> None:
    ledger = write_ledger(new_service)
    directory = ledger.files.directory  # type: ignore[union-attr]
    assert_read_ledger_accepts(directory)
    audit_ledger([directory], service_cert=ledger.service.cert)
    target_seqno = 7
    raw = ledger.files.read(target_seqno)  # type: ignore[union-attr]
    chunk = ledger.files.chunk_file_of(target_seqno)  # type: ignore[union-attr]
    with open(chunk, "rb") as f:
        data = f.read()
    entry_offset = data.index(raw)
    relative = {
        "public value": raw.index(PUBLIC_MARKER) + 3,
        "private ciphertext": len(raw) - 20,
        "gcm tag": 8 + 3,
        "claims digest": 44 + 9 + 5,
    }[where]
    flip_byte(chunk, entry_offset + relative)

    proc = read_ledger(directory, "-q")
    assert proc.returncode != 0 or "Ledger verification complete" not in proc.stdout
    assert "Exception" in proc.stdout + proc.stderr

    with pytest.raises(VerificationError) as info:
        audit_ledger([directory], service_cert=ledger.service.cert)
    error = info.value
    assert error.file == os.path.basename(chunk)
    # Without the ledger secrets the auditor can only name the signature that no longer matches
    # and the range it covers, which holds the damaged transaction.
    previous_signature = max(s for s in ledger.signature_seqnos() if s < target_seqno)
    assert error.seqno == min(s for s in ledger.signature_seqnos() if s > target_seqno)
    assert f"{previous_signature + 1}..{error.seqno - 1}" in str(error)

    # With the ledger secrets (a node's own replay or an auditor holding them) it is the exact seqno.
    with pytest.raises(VerificationError) as exact:
        audit_ledger([directory], secrets=ledger.secrets)
    assert exact.value.seqno == target_seqno
    files, _ = LedgerFiles.open(directory)
    with pytest.raises(CorruptedCommittedChunk) as replay:
        recover(files, secrets=ledger.secrets, node=ledger.node, service=ledger.service)
    assert replay.value.seqno == target_seqno
    assert os.path.basename(chunk) in str(replay.value)


def test_a_removed_committed_chunk_breaks_contiguity(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = write_ledger(new_service)
    directory = ledger.files.directory  # type: ignore[union-attr]
    chunks = committed_chunks(directory)
    assert len(chunks) >= 3
    os.remove(os.path.join(directory, chunks[1]))
    with pytest.raises(VerificationError, match="not contiguous"):
        audit_ledger([directory])
    assert read_ledger(directory, "-q").returncode != 0


def test_a_signature_by_a_stranger_node_is_refused(new_service: Callable[..., ServiceLedger]) -> None:
    from ledger.identity import NodeIdentity

    ledger = new_service()
    stranger = NodeIdentity.create().endorsed_by(ledger.service)
    ledger.node = stranger  # a node never recorded in nodes.info / endorsed_certificates signs
    tx = ledger.begin()
    tx.put("public:x", b"k", b"v")
    ledger.commit(tx)
    last = ledger.emit_signature()
    ledger.request_chunk()
    last = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(last.seqno)
    directory = ledger.files.directory  # type: ignore[union-attr]
    with pytest.raises(VerificationError, match="no endorsed certificate"):
        audit_ledger([directory])
    assert read_ledger(directory, "-q").returncode != 0


def test_service_tables_of_the_wrong_type_are_verification_errors(new_service: Callable[..., ServiceLedger]) -> None:
    from ledger.tables import SERVICE_INFO, SINGLETON_KEY, dump_json

    ledger = new_service()
    ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: dump_json({"cert": 42, "status": "Opening"})}})
    ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    with pytest.raises(VerificationError, match="malformed service table"):
        audit_ledger([ledger.files.directory])  # type: ignore[union-attr]


def test_recovery_cuts_an_uncommitted_malformed_signature_and_trusts_commit_only_at_verified_signatures(
    new_service: Callable[..., ServiceLedger],
) -> None:
    from ledger.signatures import signature_writes
    from ledger.tables import COSE_SIGNATURES, SINGLETON_KEY

    ledger = new_service()
    tx = ledger.begin()
    tx.put("public:app", b"k", b"v")
    ledger.commit(tx)
    ledger.request_chunk()  # so that the good signature ends a chunk the file names show as committed
    good = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(good.seqno)
    # an uncommitted signature, valid but for its COSE value, which is not base64
    writes, _, _ = signature_writes(ledger.node, ledger.service, ledger.view, ledger.last_seqno + 1,
                                    ledger.merkle.root(), ledger.merkle.serialise(), 0)
    writes[COSE_SIGNATURES] = {SINGLETON_KEY: b'"%%% not base64 %%%"'}
    ledger.commit_writes(writes)
    ledger.flush()
    assert ledger.files is not None
    ledger.files.close()
    files, _ = LedgerFiles.open(ledger.files.directory)
    recovered = recover(files, secrets=ledger.secrets, node=ledger.node, service=ledger.service)
    assert recovered.last_seqno == good.seqno
    assert recovered.committed_seqno == good.seqno
