"""The public replay on every core gives exactly the ledger the sequential replay gives, and gives up (changing
nothing) wherever the ledger does not verify, so that the sequential replay names the damage."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ledger import recovery as ledger_recovery
from ledger.errors import EntryFormatError, VerificationError
from ledger.files import LedgerFiles
from ledger.identity import NodeIdentity, ServiceIdentity
from ledger.kv import WriteSet, last_write
from ledger.parallel_replay import merge_private, private_replay_jobs, replay_public_in_parallel
from ledger.recovery import PrivateReplay, RecoveryError
from ledger.replay import recover, verify_signature_writes
from ledger.secrets import LedgerSecret, LedgerSecrets
from ledger.service_ledger import ServiceLedger
from ledger.tables import SERVICE_INFO, SIGNATURES, SINGLETON_KEY
from tests.ledger_helpers import flip_byte
from tests.unit.test_recovery_ledger import build_old_service, chunk_bytes, start_recovery

pytestmark = pytest.mark.unit


def _fresh() -> tuple[NodeIdentity, ServiceIdentity]:
    service = ServiceIdentity.create()
    return NodeIdentity.create().endorsed_by(service), service


def _sequential(directory: str) -> ServiceLedger:
    files, _ = LedgerFiles.open(directory)
    node, service = _fresh()
    return recover(files, secrets=LedgerSecrets([]), node=node, service=service)


def _parallel(directory: str, workers: int = 2, *, rest: bool = True) -> tuple[bool, ServiceLedger]:
    """The parallel replay, then (`rest`) the sequential one of what it left, as a recovery runs them."""
    files, _ = LedgerFiles.open(directory)
    node, service = _fresh()
    ledger = ServiceLedger(node=node, service=service, secrets=LedgerSecrets([]), files=None)
    done = replay_public_in_parallel(files, ledger, workers=workers, min_entries=0)
    if rest:
        ledger = recover(files, secrets=LedgerSecrets([]), node=node, service=service, base=ledger)
    return done, ledger


def _facts(ledger: ServiceLedger) -> dict[str, object]:
    last = ledger.last_seqno
    return {
        "last": last, "committed": ledger.committed_seqno, "root": ledger.merkle.root(),
        "leaves": [ledger.merkle.leaf(i) for i in range(1, last + 1)],
        "paths": [ledger.merkle.path(i) for i in range(1, last + 1, 7)],
        "views": [ledger.view_of(s) for s in range(1, last + 1)], "view": ledger.view,
        "state": ledger.store.snapshot(), "signatures": ledger.signature_seqnos(),
        "records": [ledger._signatures[s] for s in ledger.signature_seqnos()],
        "wsd": bytes(ledger._wsd), "sizes": list(ledger._sizes), "claims": dict(ledger._claims),
        "chunk_ends": list(ledger._chunk_ends), "bytes_since_chunk": ledger._bytes_since_chunk,
        "service_certs": list(ledger.service_certs),
    }


@pytest.mark.parametrize("end_chunk", [True, False])
def test_the_parallel_replay_gives_the_sequential_replays_ledger(tmp_path: Path, end_chunk: bool) -> None:
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1500, end_chunk=end_chunk)
    copy = str(tmp_path / "copy")
    shutil.copytree(old.directory, copy)
    assert len(chunk_bytes(old.directory)) >= 5
    sequential = _sequential(old.directory)
    done, parallel = _parallel(copy)
    assert done
    assert _facts(parallel) == _facts(sequential)
    # and it goes on as a recovering node's ledger does: its own secret, a new entry and a signature
    parallel.secrets.add(LedgerSecret.create(parallel.last_seqno + 1))
    tx = parallel.begin()
    tx.put("public:after", b"k", b"v")
    parallel.commit(tx)
    parallel.commit_to(parallel.emit_signature().seqno)
    assert parallel.read_tx().get("public:after", b"k") == b"v"


def test_it_gives_up_without_changing_the_ledger_where_a_byte_was_flipped(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1500)
    names = sorted(chunk_bytes(old.directory), key=lambda n: int(n.split("_")[1].split("-")[0].split(".")[0]))
    target = Path(old.directory) / names[len(names) // 2]
    flip_byte(str(target), len(target.read_bytes()) // 3)
    done, ledger = _parallel(old.directory, rest=False)
    assert not done
    assert ledger.last_seqno == 0 and ledger.merkle.size == 1 and ledger.signature_seqnos() == []


def test_an_unsigned_tail_is_replayed_as_the_sequential_replay_does(tmp_path: Path) -> None:
    """Entries after the last signature are replayed (the caller cuts back to the signature it trusts), exactly as
    the sequential replay leaves them."""
    old = build_old_service(tmp_path / "old", tail=3, chunk_size=1500)
    copy = str(tmp_path / "copy")
    shutil.copytree(old.directory, copy)
    sequential = _sequential(old.directory)
    done, parallel = _parallel(copy)
    assert done
    assert _facts(parallel) == _facts(sequential)


def test_the_private_replay_in_jobs_gives_the_stepwise_replays_state(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1500)
    files, _ = LedgerFiles.open(old.directory)
    secrets = LedgerSecrets(old.ledger.secrets.all())
    digests = old.ledger.write_set_digests
    jobs = private_replay_jobs(files, secrets, digests, 1, old.last_signature, min_entries=0)
    assert jobs is not None and len(jobs) >= 5
    merged = merge_private([job() for job in jobs])
    stepwise = PrivateReplay(files, secrets, 1, old.last_signature, verified_digests=digests)
    while not stepwise.done:
        stepwise.step(5)
    assert merged == stepwise.state()
    for name, values in old.private.items():  # each private key's last value, removals included
        assert {key: last_write(history)[1] for key, history in merged.maps[name].items()} == values
    # a wrong secret: the job names the damage (the node then replays in steps, which names it too)
    wrong = LedgerSecrets([LedgerSecret.create(s.start) for s in secrets.all()])
    wrong_jobs = private_replay_jobs(files, wrong, digests, 1, old.last_signature, min_entries=0)
    assert wrong_jobs is not None
    with pytest.raises(EntryFormatError):
        wrong_jobs[0]()
    # a range that does not end with a chunk is left to the replay in steps
    inside = next(start for _, start, last, _ in files.chunk_spans() if last > start)
    assert private_replay_jobs(files, secrets, digests, 1, inside, min_entries=0) is None


def test_the_private_replay_reads_only_the_entries_the_public_replay_verified(tmp_path: Path) -> None:
    """Between the two replays the host could swap an entry for another one the same secret encrypted (a rolled
    back one): its GCM tag and commit evidence would pass, so each entry is checked to be, byte for byte, the one
    whose write-set digest the public replay verified."""
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1500)
    files, _ = LedgerFiles.open(old.directory)
    secrets = LedgerSecrets(old.ledger.secrets.all())
    swapped = 7

    def digests(first: int, last: int) -> bytes:
        real = bytearray(old.ledger.write_set_digests(first, last))
        if first <= swapped <= last:
            real[32 * (swapped - first)] ^= 1
        return bytes(real)

    jobs = private_replay_jobs(files, secrets, digests, 1, old.last_signature, min_entries=0)
    assert jobs is not None
    with pytest.raises(EntryFormatError, match="not the one the public replay verified") as raised:
        for job in jobs:
            job()
    assert raised.value.seqno == swapped
    stepwise = PrivateReplay(files, secrets, 1, old.last_signature, verified_digests=digests)
    with pytest.raises(RecoveryError, match=f"seqno {swapped}.*not the one the public replay verified"):
        while not stepwise.done:
            stepwise.step(5)


def test_a_recovery_replayed_in_parallel_cuts_an_unsigned_tail_back_to_the_last_signature(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The parallel replay takes the committed chunks (the store compacted at their end, a signature) and leaves
    the rest to the sequential replay, so the recovery can still roll the unsigned tail back."""
    taken: list[bool] = []

    def parallel(files: LedgerFiles, ledger: ServiceLedger) -> bool:
        taken.append(replay_public_in_parallel(files, ledger, workers=2, min_entries=0))
        return taken[-1]

    monkeypatch.setattr(ledger_recovery, "replay_public_in_parallel", parallel)
    old = build_old_service(tmp_path / "old", tail=3, chunk_size=1500)
    recovered = start_recovery(old.directory, old.cert).ledger
    assert taken == [True]
    assert recovered.last_seqno == recovered.committed_seqno == old.last_signature


@pytest.mark.parametrize("writes", [
    {SIGNATURES: {SINGLETON_KEY: None}},  # the signature removed
    {SIGNATURES: {SINGLETON_KEY: b"{}", b"another": b"{}"}},  # the map written otherwise
    {SIGNATURES: {SINGLETON_KEY: b"{}"}, SERVICE_INFO: {SINGLETON_KEY: b"{}"}},  # something else besides
])
def test_a_signature_transaction_writes_its_signature_and_nothing_else(writes: WriteSet) -> None:
    """As CCF's deserialisation: both replays and the backups refuse any other shape, before anything is parsed."""
    with pytest.raises(VerificationError, match="signature transaction"):
        verify_signature_writes(lambda table, key: None, bytes(32), 7, writes)
