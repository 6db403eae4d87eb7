"""Disaster recovery, the ledger's part (`ledger.recovery`, the secret chain, shares, restoring earlier state).

A service A is built on disk as a node would have left it (opened, recovery shares dealt, private and public
writes, signatures, rekeys, an unsigned tail); a recovering node of a new service B then gathers and replays its
public part, creates B, takes the members' shares back, unwraps A's secret chain, decrypts A's private ledger and
hands that state to its store, as `network/host/node.py` `_start_recovery` and `network/enclave/recovery.py` drive it.
"""

from __future__ import annotations

import base64
import copy
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given
from hypothesis import strategies as st

from governance.errors import AuthorizationFailed, InvalidRequest
from governance.recovery_shares import (
    RECOVERY_SHARES,
    SUBMITTED_SHARES,
    RecoverySharesError,
    clear_submitted_shares,
    deal_shares,
    decrypt_share,
    parse_share,
    recover_latest_secret,
    submit_share,
    unwrap_ledger_secret,
)
from governance.shamir import SHARE_SIZE, combine
from ledger import service_ledger as service_ledger_module
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.entry import decode_entry, serialise_entry
from ledger.errors import LedgerError, LedgerSecretError, ReceiptEndorsementError, RecoveryError, VersionUnavailable
from ledger.files import LedgerFiles, parse_chunk_name
from ledger.framing import FLAG_FORCE_CHUNK_BEFORE
from ledger.gather import gather_previous_ledger
from ledger.genesis import GenesisMember, GenesisNode, NodeNetwork, VirtualQuote
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_pem
from ledger.kv import PACK_MAX, ZERO_CLAIMS, LastWrites, Store, WriteSet, is_public, last_write, last_write_history
from ledger.receipts import verify_json_receipt
from ledger.recovery import (
    PrivateReplay,
    PublicRecovery,
    choose_snapshot,
    recovery_create_writes,
    replay_public,
    restore_secrets,
    secret_records,
)
from ledger.secrets import (
    LedgerSecret,
    LedgerSecrets,
    node_secrets_entries,
    opening_secret_record,
    recovery_secret_record,
    secrets_for_node,
    unwrap_secret_chain,
)
from ledger.service_ledger import DEFAULT_CHUNK_SIZE, ServiceLedger
from ledger.signatures import signature_writes
from ledger.snapshots import summarise_snapshot
from ledger.tables import (
    COSE_SIGNATURES,
    HISTORICAL_SECRETS,
    MEMBERS_ENCRYPTION_KEYS,
    MEMBERS_INFO,
    NODE_SECRETS,
    NODES_ENDORSED_CERTS,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_CONFIG,
    SERVICE_INFO,
    SINGLETON_KEY,
    SNAPSHOT_EVIDENCE,
    VIRTUAL_HOST_DATA,
    VIRTUAL_MEASUREMENTS,
    dump_json,
)
from tests.ledger_helpers import flip_byte, sign_and_commit

pytestmark = pytest.mark.unit

CONSTITUTION = "export function validate(input) { return { valid: true }; }"
PRIVATE = "app.private"
OTHER_PRIVATE = "private:app.other"
PUBLIC = "public:app.public"

# RSA keys are slow to make: three recovery members' and one for every node of every service here.
_MEMBER_KEYS = [rsa.generate_private_key(public_exponent=65537, key_size=2048) for _ in range(3)]
_NODE_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
_MEMBER = PartyIdentity.create("member0")
MEMBER_IDS = [f"m{i}" for i in range(3)]


def _public_pem(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _current_record(ledger: ServiceLedger) -> tuple[int, dict[str, Any]]:
    """The latest record of public:ccf.internal.historical_encrypted_ledger_secret, with the seqno it was written."""
    state = ledger.read_tx()
    record = state.get_json(HISTORICAL_SECRETS, SINGLETON_KEY)
    assert isinstance(record, dict)
    return state.get_version(HISTORICAL_SECRETS, SINGLETON_KEY), record


def _raws(secrets: list[LedgerSecret]) -> list[tuple[int, bytes]]:
    return [(s.start, s.raw) for s in secrets]


def _private_write(ledger: ServiceLedger, i: int) -> None:
    tx = ledger.begin()
    tx.put(PRIVATE, b"k%d" % (i % 3), b"private value %d" % i)
    ledger.commit(tx)


# --- 1, 2. the secret chain ------------------------------------------------------------------------------


class ChainLedger:
    """A ledger (optionally on disk) whose secret records are tracked as a recovering node would read them."""

    def __init__(self, directory: str | None = None) -> None:
        service = ServiceIdentity.create()
        files = LedgerFiles.open(directory)[0] if directory is not None else None
        self.ledger = ServiceLedger(node=NodeIdentity.create().endorsed_by(service), service=service,
                                    secrets=LedgerSecrets.fresh(1), files=files)
        _private_write(self.ledger, 0)
        # the service opens: the chain's first record names the first secret
        self.ledger.commit_writes({HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(
            opening_secret_record(self.ledger.secrets.latest))}})
        self.records = [_current_record(self.ledger)]
        assert self.records[0][1] == {"next_version": 1}

    def rekey(self) -> None:
        previous_record_seqno = self.records[-1][0]
        txid = self.ledger.rekey()
        seqno, record = _current_record(self.ledger)
        assert seqno == txid.seqno
        assert record["previous_ledger_secret"]["previous_secret_stored_version"] == previous_record_seqno
        self.records.append((seqno, record))
        _private_write(self.ledger, seqno)

    def recover(self) -> None:
        """What a recovered service leaves in the chain: its own secret from its first seqno (its create
        transaction), and once the predecessor's secrets are back, a record wrapping the predecessor's latest
        under it with `next_version` (network/enclave/recovery.py `open_writes`)."""
        first = self.ledger.last_seqno + 1
        self.ledger.secrets.add(LedgerSecret.create(first))
        _private_write(self.ledger, first)  # the create transaction, under the new secret
        _private_write(self.ledger, first + 1)
        state = self.ledger.read_tx()
        record = recovery_secret_record(self.ledger.secrets.for_seqno(first - 1),
                                        self.ledger.secrets.for_seqno(first),
                                        state.get_version(HISTORICAL_SECRETS, SINGLETON_KEY) or None)
        txid = self.ledger.commit_writes({HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(record)}})
        self.records.append((txid.seqno, record))
        assert record["next_version"] == first


def test_secret_chain_of_an_opened_service_rekeyed_twice_unwraps_every_secret() -> None:
    chain = ChainLedger()
    chain.rekey()
    chain.rekey()
    used = chain.ledger.secrets.all()
    assert [s.start for s in used] == [1, chain.records[1][0] + 1, chain.records[2][0] + 1]
    unwrapped = unwrap_secret_chain(chain.records, chain.ledger.secrets.latest.raw)
    assert _raws(unwrapped) == _raws(used)


def test_secret_chain_refuses_a_wrong_latest_secret() -> None:
    chain = ChainLedger()
    chain.rekey()
    chain.rekey()
    with pytest.raises(LedgerSecretError):
        unwrap_secret_chain(chain.records, os.urandom(32))
    # the secret before the latest is not the latest either
    with pytest.raises(LedgerSecretError):
        unwrap_secret_chain(chain.records, chain.ledger.secrets.all()[-2].raw)


@pytest.mark.parametrize("which", [1, 2])
@pytest.mark.parametrize("where", ["tag", "iv", "ciphertext"])
def test_secret_chain_refuses_a_record_with_a_flipped_byte(which: int, where: str) -> None:
    chain = ChainLedger()
    chain.rekey()
    chain.rekey()
    records = copy.deepcopy(chain.records)
    wrapped = records[which][1]["previous_ledger_secret"]
    data = bytearray(base64.b64decode(wrapped["encrypted_data"]))
    data[{"tag": 3, "iv": 16 + 5, "ciphertext": 28 + 7}[where]] ^= 0x01
    wrapped["encrypted_data"] = base64.b64encode(bytes(data)).decode()
    with pytest.raises(LedgerSecretError):
        unwrap_secret_chain(records, chain.ledger.secrets.latest.raw)
    # the untouched records still unwrap
    assert _raws(unwrap_secret_chain(chain.records, chain.ledger.secrets.latest.raw)) == \
        _raws(chain.ledger.secrets.all())


def test_secret_chain_refuses_no_records_and_a_gap_it_cannot_cross() -> None:
    with pytest.raises(LedgerSecretError):
        unwrap_secret_chain([], os.urandom(32))
    chain = ChainLedger()
    chain.rekey()
    chain.rekey()
    chain.recover()
    # the second rekey's record is lost: the recovery record gives its secret, but nothing then unwraps the
    # secret the first rekey's record was encrypted under
    with pytest.raises(LedgerSecretError, match="not in the chain"):
        unwrap_secret_chain(chain.records[:2] + chain.records[3:], chain.ledger.secrets.latest.raw)


def test_secret_chain_goes_back_through_two_recoveries_to_the_first_secret() -> None:
    chain = ChainLedger()
    chain.rekey()
    chain.rekey()
    chain.recover()  # service B: recovery record, then a rekey
    chain.rekey()
    chain.recover()  # service C, straight after
    used = chain.ledger.secrets.all()
    assert len(used) == 6
    unwrapped = unwrap_secret_chain(chain.records, chain.ledger.secrets.latest.raw)
    assert _raws(unwrapped) == _raws(used)
    assert unwrapped[0].start == 1 and unwrapped[0].raw == used[0].raw


def test_secret_chain_after_a_recovery_not_yet_rekeyed_starts_at_the_recovered_secret() -> None:
    chain = ChainLedger()
    chain.rekey()
    chain.recover()
    unwrapped = unwrap_secret_chain(chain.records, chain.ledger.secrets.latest.raw)
    assert _raws(unwrapped) == _raws(chain.ledger.secrets.all())
    assert unwrapped[-1].start == chain.records[-1][1]["next_version"] < chain.records[-1][0]


@pytest.mark.property
@given(rekeys=st.integers(min_value=0, max_value=5), writes=st.lists(st.integers(0, 3), min_size=6, max_size=6))
def test_property_the_chain_unwraps_exactly_the_secrets_the_ledger_used(rekeys: int, writes: list[int]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        chain = ChainLedger(directory)
        ledger = chain.ledger
        for i in range(rekeys):
            for j in range(writes[i]):
                _private_write(ledger, j)
            chain.rekey()
        ledger.flush()
        assert ledger.files is not None
        # what a recovering node reads: the latest record from the state, the others through the files
        assert secret_records(ledger, ledger.files) == chain.records
        unwrapped = unwrap_secret_chain(chain.records, ledger.secrets.latest.raw)
        assert _raws(unwrapped) == _raws(ledger.secrets.all())
        assert len(unwrapped) == rekeys + 1
        # and they are the secrets the entries were written with: every entry decrypts under them
        recovered = LedgerSecrets(unwrapped)
        for seqno in range(1, ledger.last_seqno + 1):
            decode_entry(ledger.files.read(seqno), recovered)
        ledger.files.close()


@pytest.mark.property
@given(events=st.lists(st.sampled_from(["rekey", "recovery"]), max_size=6))
def test_property_the_chain_unwraps_every_secret_across_rekeys_and_recoveries(events: list[str]) -> None:
    chain = ChainLedger()
    for event in events:
        chain.rekey() if event == "rekey" else chain.recover()
    unwrapped = unwrap_secret_chain(chain.records, chain.ledger.secrets.latest.raw)
    assert _raws(unwrapped) == _raws(chain.ledger.secrets.all())


# --- 3. recovery shares ----------------------------------------------------------------------------------


def _share_state(threshold: int = 2) -> Store:
    """A governance-like state: three active recovery members with RSA encryption keys."""
    store = Store()
    tx = store.begin()
    tx.put_json(SERVICE_CONFIG, SINGLETON_KEY, {"recovery_threshold": threshold})
    for member_id, key in zip(MEMBER_IDS, _MEMBER_KEYS, strict=True):
        tx.put(MEMBERS_ENCRYPTION_KEYS, member_id, _public_pem(key))
        tx.put_json(MEMBERS_INFO, member_id, {"status": "Active"})
    store.commit(tx)
    return store


def _dealt(store: Store, secret: bytes) -> dict[str, bytes]:
    tx = store.begin()
    record = deal_shares(tx, secret)
    store.commit(tx)
    assert sorted(record["encrypted_shares"]) == MEMBER_IDS
    return {m: decrypt_share(record["encrypted_shares"][m], key) for m, key in zip(MEMBER_IDS, _MEMBER_KEYS,
                                                                                   strict=True)}


def _submit(store: Store, shares: dict[str, bytes]) -> Any:
    """A transaction holding `shares` submitted (as the members' requests would)."""
    tx = store.begin()
    for count, (member_id, share) in enumerate(shares.items(), start=1):
        body = {"share": base64.b64encode(share).decode()}
        assert submit_share(tx, member_id, parse_share(body)) == (count, 2, False)
    return tx


@pytest.mark.parametrize("pair", [("m0", "m1"), ("m0", "m2"), ("m1", "m2"), ("m2", "m0")])
def test_any_two_of_three_shares_recover_the_latest_secret(pair: tuple[str, str]) -> None:
    store = _share_state()
    secret = os.urandom(32)
    shares = _dealt(store, secret)
    tx = _submit(store, {m: shares[m] for m in pair})
    assert recover_latest_secret(tx) == secret


@pytest.mark.parametrize("member", MEMBER_IDS)
def test_one_share_below_the_threshold_never_gives_a_secret(member: str) -> None:
    store = _share_state()
    shares = _dealt(store, os.urandom(32))
    tx = _submit(store, {member: shares[member]})
    with pytest.raises(RecoverySharesError):
        recover_latest_secret(tx)


@pytest.mark.parametrize("byte", [1, 30, SHARE_SIZE - 1])
def test_a_corrupted_share_of_valid_format_is_refused_by_the_authenticated_unwrap(byte: int) -> None:
    store = _share_state()
    secret = os.urandom(32)
    shares = _dealt(store, secret)
    bad = bytearray(shares["m1"])
    bad[byte] ^= 0x01  # still 67 bytes with index 2: passes parse_share
    assert parse_share({"share": base64.b64encode(bytes(bad)).decode()}) == bytes(bad)
    tx = _submit(store, {"m0": shares["m0"], "m1": bytes(bad)})
    with pytest.raises(RecoverySharesError):
        recover_latest_secret(tx)
    # cleared, the right shares still recover it
    clear_submitted_shares(tx)
    assert tx.size(SUBMITTED_SHARES) == 0
    for member_id in ("m0", "m1"):
        submit_share(tx, member_id, shares[member_id])
    assert recover_latest_secret(tx) == secret


def test_shares_of_an_earlier_dealing_combine_to_a_key_that_the_authenticated_unwrap_refuses() -> None:
    store = _share_state()
    earlier = _dealt(store, os.urandom(32))
    secret = os.urandom(32)
    _dealt(store, secret)  # dealt again (a rekey or a refresh): the earlier shares no longer apply
    # they still combine to a 32-byte key: only AES-GCM tells it is the wrong one
    assert len(combine([earlier["m0"], earlier["m1"]], 32)) == 32
    tx = _submit(store, {"m0": earlier["m0"], "m1": earlier["m1"]})
    with pytest.raises(RecoverySharesError, match="do not unwrap"):
        recover_latest_secret(tx)


def test_a_wrapped_secret_under_another_key_is_refused_even_with_the_right_shares() -> None:
    store = _share_state()
    shares = _dealt(store, os.urandom(32))
    record = store.read_tx().get_json(RECOVERY_SHARES, SINGLETON_KEY)
    wrapped = bytearray(base64.b64decode(record["wrapped_latest_ledger_secret"]))
    wrapped[-1] ^= 0x01
    record["wrapped_latest_ledger_secret"] = base64.b64encode(bytes(wrapped)).decode()
    with pytest.raises(RecoverySharesError):
        unwrap_ledger_secret(record, [shares["m0"], shares["m2"]])


@pytest.mark.parametrize("body", [
    {"share": "not base64 !!"},
    {"share": base64.b64encode(bytes([1]) + bytes(SHARE_SIZE - 2)).decode()},  # one byte short
    {"share": base64.b64encode(bytes([1]) + bytes(SHARE_SIZE)).decode()},  # one byte long
    {"share": 42},
    {"shares": "AAAA"},
    ["share"],
])
def test_parse_share_refuses_anything_but_a_base64_share_of_its_size(body: Any) -> None:
    with pytest.raises(InvalidRequest):
        parse_share(body)


def test_submit_share_refuses_a_member_without_a_dealt_share_and_a_second_submission() -> None:
    store = _share_state()
    shares = _dealt(store, os.urandom(32))
    tx = store.begin()
    with pytest.raises(AuthorizationFailed):
        submit_share(tx, "stranger", shares["m0"])
    assert submit_share(tx, "m0", shares["m0"]) == (1, 2, False)
    with pytest.raises(InvalidRequest):
        submit_share(tx, "m0", shares["m0"])
    assert tx.size(SUBMITTED_SHARES) == 1


def test_no_wrapped_secret_to_recover_is_a_shares_error() -> None:
    with pytest.raises(RecoverySharesError):
        recover_latest_secret(Store().begin())


# --- the previous service, on disk ------------------------------------------------------------------------


@dataclass
class OldService:
    """Service A as its node left it: everything up to `last_signature` committed, `tail` unsigned entries."""

    ledger: ServiceLedger
    directory: str
    last_signature: int
    private: dict[str, dict[bytes, bytes | None]]  # each private key's last value up to the last signature
    public: dict[str, dict[bytes, tuple[int, bytes]]]  # the public state at the last signature
    shares: dict[str, bytes]  # each recovery member's decrypted share

    @property
    def cert(self) -> Any:
        return self.ledger.service.cert


def build_old_service(base: Path, *, rekeys: int = 2, tail: int = 3, chunk_size: int = 3000,
                      end_chunk: bool = True) -> OldService:
    ledger = start_new_service(str(base / "ledger"), [GenesisMember(_MEMBER.pem, member_data={"name": "m"})],
                               CONSTITUTION, node=NodeKeys(NodeIdentity.create(), _NODE_RSA),
                               chunk_size=chunk_size, snapshot_dir=str(base / "snapshots"))
    state = ledger.read_tx()
    # opened by governance, with three recovery members and a threshold of two, shares dealt
    config = state.get_json(SERVICE_CONFIG, SINGLETON_KEY)
    info = state.get_json(SERVICE_INFO, SINGLETON_KEY)
    ledger.commit_writes({
        SERVICE_CONFIG: {SINGLETON_KEY: dump_json({**config, "recovery_threshold": 2})},
        MEMBERS_INFO: {m.encode(): dump_json({"status": "Active"}) for m in MEMBER_IDS},
        MEMBERS_ENCRYPTION_KEYS: {m.encode(): _public_pem(k) for m, k in zip(MEMBER_IDS, _MEMBER_KEYS, strict=True)},
        SERVICE_INFO: {SINGLETON_KEY: dump_json({**info, "status": "Open"})},
        HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(opening_secret_record(ledger.secrets.latest))},
    })
    tx = ledger.begin()
    deal_shares(tx, ledger.secrets.latest.raw)
    ledger.commit(tx)
    private: dict[str, dict[bytes, bytes | None]] = {PRIVATE: {}, OTHER_PRIVATE: {}}
    for i in range(24):
        tx = ledger.begin()
        key = b"k%d" % (i % 5)
        if i % 7 == 6:
            tx.remove(PRIVATE, key)
            private[PRIVATE][key] = None
        else:
            value = b"private %d " % i + b"." * 60
            tx.put(PRIVATE, key, value)
            private[PRIVATE][key] = value
        if i % 4 == 0:
            tx.put(OTHER_PRIVATE, b"o%d" % (i % 3), b"other %d" % i)
            private[OTHER_PRIVATE][b"o%d" % (i % 3)] = b"other %d" % i
        tx.put(PUBLIC, b"p%d" % (i % 4), b"public %d" % i)
        ledger.commit(tx)
        if i % 8 == 7:
            ledger.emit_signature()
        if i in (9, 17)[:rekeys]:
            rekey = ledger.rekey()
            tx = ledger.begin()
            deal_shares(tx, ledger.secrets.latest.raw, previous_record_seqno=rekey.seqno)
            ledger.commit(tx)
    if end_chunk:
        ledger.request_chunk()
    last = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(last.seqno)
    # a tail the service wrote but never signed
    for i in range(tail):
        tx = ledger.begin()
        tx.put(PRIVATE, b"k0", b"unsigned private %d" % i)
        tx.put(PUBLIC, b"p0", b"unsigned public %d" % i)
        tx.put(PUBLIC, b"tail%d" % i, b"never signed")
        ledger.commit(tx)
    ledger.flush()
    assert ledger.files is not None
    ledger.files.close()
    public = {name: entries for name, entries in ledger.store.snapshot(last.seqno).items() if is_public(name)}
    record = ledger.read_tx().get_json(RECOVERY_SHARES, SINGLETON_KEY)
    shares = {m: decrypt_share(record["encrypted_shares"][m], k) for m, k in zip(MEMBER_IDS, _MEMBER_KEYS,
                                                                                 strict=True)}
    return OldService(ledger, str(base / "ledger"), last.seqno, private, public, shares)


@pytest.fixture
def old(tmp_path: Path) -> OldService:
    return build_old_service(tmp_path / "old")


@dataclass
class Recovering:
    """A node of the new service B, after the public replay of A's ledger."""

    files: LedgerFiles
    public: PublicRecovery
    service: ServiceIdentity
    identity: NodeIdentity

    @property
    def ledger(self) -> ServiceLedger:
        return self.public.ledger


def start_recovery(directory: str, previous_cert: Any, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                   snapshot: bytes | None = None) -> Recovering:
    files, _ = LedgerFiles.open(directory)
    service = ServiceIdentity.create()
    identity = NodeIdentity.create().endorsed_by(service)
    public = replay_public(files, node=identity, service=service, previous_service_cert=previous_cert,
                           chunk_size=chunk_size, snapshot=snapshot)
    return Recovering(files, public, service, identity)


def create_recovered_service(rec: Recovering) -> int:
    """The rest of `_start_recovery`: B's own secret, its create transaction in a new chunk, a signature,
    committed. Returns the create seqno (B's first)."""
    ledger = rec.ledger
    ledger.secrets.add(LedgerSecret.create(ledger.last_seqno + 1))
    ledger.set_view(ledger.view + 2)
    seqno = ledger.last_seqno + 1
    node = GenesisNode(rec.identity, VirtualQuote("00" * 32, "00" * 32, rec.identity.node_id),
                       _public_pem(_NODE_RSA).decode(), NodeNetwork())
    ledger.commit_writes(recovery_create_writes(ledger.read_tx(), rec.service, node, f"{ledger.view}.{seqno}"),
                         flags=FLAG_FORCE_CHUNK_BEFORE)
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    return seqno


def _chunk_start(name: str) -> int:
    parsed = parse_chunk_name(name)
    assert parsed is not None
    return parsed[0]


def chunk_bytes(directory: str) -> dict[str, bytes]:
    """The files directly in `directory`, by name."""
    out = {}
    for name in sorted(os.listdir(directory)):
        if not os.path.isfile(os.path.join(directory, name)):
            continue
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def replay_private(files: LedgerFiles, secrets: LedgerSecrets, end: int, budget: int = 7) -> PrivateReplay:
    replay = PrivateReplay(files, secrets, files.first_seqno, end)
    steps = 0
    while not replay.done:
        replay.step(budget)
        steps += 1
        assert replay.progress[0] == min(end, files.first_seqno - 1 + steps * budget)
    assert steps == -(-(end - files.first_seqno + 1) // budget)
    return replay


# --- 4. public replay ---------------------------------------------------------------------------------------


def test_public_replay_rebuilds_the_public_state_without_private_maps_cut_at_the_last_signature(
    old: OldService,
) -> None:
    files, _ = LedgerFiles.open(old.directory)
    tail_chunk = os.path.basename(files.chunk_file_of(old.last_signature + 1))
    files.close()
    rec = start_recovery(old.directory, old.cert)
    ledger = rec.ledger
    assert ledger.last_seqno == ledger.committed_seqno == old.last_signature
    assert rec.files.last_seqno == old.last_signature
    assert rec.public.dropped_after == old.last_signature
    assert len(rec.public.warnings) == 1
    assert f"dropped 3 entries after seqno {old.last_signature}" in rec.public.warnings[0]
    # the unsigned tail is gone from the files too (its chunk held nothing else)
    assert tail_chunk not in os.listdir(old.directory)
    state = ledger.store.snapshot()
    assert {name: entries for name, entries in state.items() if is_public(name)} == old.public
    assert not [name for name in state if not is_public(name)]
    tx = ledger.read_tx()
    assert tx.get(PRIVATE, b"k1") is None and tx.get(PUBLIC, b"tail0") is None
    assert tx.get(PUBLIC, b"p0") == old.public[PUBLIC][b"p0"][1]
    # every signature of A up to its last was verified and kept, with the same Merkle tree under it
    assert ledger.signature_seqnos() == old.ledger.signature_seqnos()
    assert ledger.merkle.size == old.last_signature + 1
    assert rec.public.previous_service_info["cert"] == cert_pem(old.cert)
    assert rec.public.previous_service_info["status"] == "Open"
    # nothing of A is readable privately, and no receipt is given for it yet
    assert not ledger.secrets.covers(1)


def test_public_replay_of_a_ledger_ending_at_a_signature_drops_nothing(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0)
    rec = start_recovery(old.directory, old.cert)
    assert rec.public.dropped_after is None and rec.public.warnings == []
    assert rec.ledger.last_seqno == old.last_signature


def test_public_replay_refuses_a_wrong_previous_service_certificate(old: OldService) -> None:
    before = chunk_bytes(old.directory)
    with pytest.raises(RecoveryError, match="previous service identity"):
        start_recovery(old.directory, ServiceIdentity.create().cert)
    committed = {name: data for name, data in before.items() if name.endswith(".committed")}
    after = chunk_bytes(old.directory)
    assert {name: after.get(name) for name in committed} == committed


@pytest.mark.parametrize("where", ["private ciphertext", "public value"])
def test_public_replay_refuses_a_flipped_byte_in_a_committed_chunk_naming_the_chunk(
    old: OldService, where: str
) -> None:
    files, _ = LedgerFiles.open(old.directory)
    # an application transaction inside a committed chunk other than the first two
    target = next(seqno for seqno in range(10, old.last_signature) if b"public " in files.read(seqno))
    raw = files.read(target)
    chunk = files.chunk_file_of(target)
    files.close()
    assert chunk.endswith(".committed")
    with open(chunk, "rb") as f:
        offset = f.read().index(raw)
    relative = raw.index(b"public ") + 3 if where == "public value" else len(raw) - 20
    flip_byte(chunk, offset + relative)
    with pytest.raises(RecoveryError) as error:
        start_recovery(old.directory, old.cert)
    # public-only, the damage shows at the signature ending the chunk (the Merkle root no longer matches)
    assert os.path.basename(chunk) in str(error.value)
    assert "seqno" in str(error.value)


def test_public_replay_drops_an_abandoned_earlier_recovery(old: OldService) -> None:
    """A recovering node killed after writing its create transaction and signature, before sealing, recovers
    again from the same files and the same previous identity (network/host/node.py `_start_recovery`)."""
    first = start_recovery(old.directory, old.cert)
    create = create_recovered_service(first)
    abandoned = os.path.basename(first.files.chunk_file_of(create))
    assert abandoned == f"ledger_{create}"  # B started a chunk of its own, still open
    first.files.close()
    again = start_recovery(old.directory, old.cert)  # B's identity was lost: recovered from A again
    assert again.ledger.last_seqno == old.last_signature
    assert again.public.dropped_after == old.last_signature
    assert abandoned not in os.listdir(old.directory)


def test_the_recovered_services_first_chunk_is_sized_from_its_own_entries(tmp_path: Path) -> None:
    # A's chunks are large: everything after genesis is still in one open chunk of well over 10 kB
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1_000_000, end_chunk=False)
    assert sorted(os.listdir(old.directory)) == ["ledger_1-2.committed", "ledger_3"]
    rec = start_recovery(old.directory, old.cert, chunk_size=10_000)
    create = create_recovered_service(rec)
    sizes = [len(rec.files.read(s)) for s in (create, create + 1)]
    assert sum(sizes) < 10_000  # B's chunk holds less than chunk_size ...
    assert os.path.basename(rec.files.chunk_file_of(create)) == f"ledger_{create}"  # ... so it stays open


def test_a_recovery_killed_before_sealing_can_start_again_from_the_same_files(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1_000_000, end_chunk=False)
    first = start_recovery(old.directory, old.cert, chunk_size=10_000)
    create_recovered_service(first)
    first.files.close()
    again = start_recovery(old.directory, old.cert, chunk_size=10_000)
    assert again.ledger.last_seqno == old.last_signature



@pytest.mark.parametrize(("committed", "swapped"), [(False, False), (True, False), (False, True)])
def test_a_signature_by_a_node_the_previous_service_never_endorsed_vouches_for_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, committed: bool, swapped: bool) -> None:
    """Whoever can write the files can append entries declaring a node of their own trusted, then a signature by
    it: without the service's COSE signature, or (`swapped`) with one by a service key of their own, named in
    service info meanwhile and the previous certificate put back by the signature transaction itself. Neither
    vouches for the ledger: the recovery stops at the last signature that does (the appended entries dropped, or
    set aside if their chunk is named committed), and never takes what they wrote."""
    old = build_old_service(tmp_path / "old", tail=0)
    ledger, previous_cert = old.ledger, old.cert  # (`old.cert` is its ledger's, which the intruder replaces)
    previous_info = ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    other_service = ServiceIdentity.create()
    intruder = NodeIdentity.create().endorsed_by(other_service)  # not endorsed by the old service
    assert intruder.endorsed is not None
    node_id = intruder.node_id.encode()
    planted: WriteSet = {NODES_INFO: {node_id: dump_json({"status": "Trusted", "cert": intruder.pem})},
                         NODES_ENDORSED_CERTS: {node_id: cert_pem(intruder.endorsed).encode()},
                         PUBLIC: {b"planted": b"by the intruder"}}
    if swapped:
        planted[SERVICE_INFO] = {SINGLETON_KEY: dump_json({**previous_info, "cert": other_service.pem})}
    ledger.commit_writes(planted)

    def forged(*args: Any) -> tuple[Any, Any, bytes]:
        writes, primary, cose_sig = signature_writes(*args)
        if swapped:
            writes[SERVICE_INFO] = {SINGLETON_KEY: dump_json(previous_info)}
            return writes, primary, cose_sig
        return {name: changes for name, changes in writes.items() if name != COSE_SIGNATURES}, primary, b""

    monkeypatch.setattr(service_ledger_module, "signature_writes", forged)
    ledger.node = intruder
    if swapped:
        ledger.service = other_service
    sig = sign_and_commit(ledger, end_chunk=committed)
    assert ledger.files is not None
    ledger.files.close()
    monkeypatch.undo()
    rec = start_recovery(old.directory, previous_cert)
    assert rec.ledger.last_seqno == old.last_signature < sig.seqno
    assert rec.ledger.read_tx().get(PUBLIC, b"planted") is None

# --- 5. private replay and the restored state ----------------------------------------------------------


def test_private_replay_gives_each_private_key_its_last_value(old: OldService) -> None:
    rec = start_recovery(old.directory, old.cert)
    secrets = old.ledger.secrets.all()
    assert len(secrets) == 3
    replay = replay_private(rec.files, LedgerSecrets(secrets), old.last_signature)
    state = replay.state()
    assert {name: {k: last_write(h)[1] for k, h in entries.items()} for name, entries in state.maps.items()} \
        == old.private
    at_signature = old.ledger.read_tx(old.last_signature)
    for name, entries in state.maps.items():
        for key, history in entries.items():
            seqno, value = last_write(history)
            assert 1 <= seqno <= old.last_signature
            if value is not None:  # each value comes with the seqno that wrote it, as A's store had it
                assert at_signature.get_version(name, key) == seqno


def test_private_replay_is_not_done_until_every_step_ran(old: OldService) -> None:
    rec = start_recovery(old.directory, old.cert)
    replay = PrivateReplay(rec.files, LedgerSecrets(old.ledger.secrets.all()), 1, old.last_signature)
    replay.step(5)
    assert not replay.done and replay.progress == (5, old.last_signature)
    with pytest.raises(RecoveryError, match="not finished"):
        replay.state()


@pytest.mark.parametrize("wrong", [0, 1, 2])
def test_private_replay_with_a_wrong_secret_raises_at_the_first_seqno_it_covers(old: OldService, wrong: int) -> None:
    rec = start_recovery(old.directory, old.cert)
    secrets = old.ledger.secrets.all()
    secrets[wrong] = LedgerSecret.create(secrets[wrong].start)  # same start, other bytes
    replay = PrivateReplay(rec.files, LedgerSecrets(secrets), 1, old.last_signature)
    with pytest.raises(RecoveryError, match=f"at seqno {secrets[wrong].start} "):
        while not replay.done:
            replay.step(4)


def test_private_replay_without_the_earliest_secrets_raises(old: OldService) -> None:
    rec = start_recovery(old.directory, old.cert)
    replay = PrivateReplay(rec.files, LedgerSecrets(old.ledger.secrets.all()[1:]), 1, old.last_signature)
    with pytest.raises(RecoveryError, match="at seqno 1 "):
        replay.step()


def test_private_replay_refuses_an_entry_damaged_after_the_public_replay(old: OldService) -> None:
    """Only the GCM tag checks the private domain of an entry the public replay read: a byte flipped there since
    is found by the private replay, naming the seqno, and nothing is handed over."""
    rec = start_recovery(old.directory, old.cert)
    target = old.last_signature - 2
    raw = rec.files.read(target)
    chunk = rec.files.chunk_file_of(target)
    with open(chunk, "rb") as f:
        offset = f.read().index(raw)
    flip_byte(chunk, offset + len(raw) - 10)
    files, _ = LedgerFiles.open(old.directory)
    replay = PrivateReplay(files, LedgerSecrets(old.ledger.secrets.all()), 1, old.last_signature)
    with pytest.raises(RecoveryError, match=f"at seqno {target} "):
        replay.step(1000)


def test_restored_earlier_state_makes_the_private_values_readable_under_later_writes(old: OldService) -> None:
    rec = start_recovery(old.directory, old.cert)
    create = create_recovered_service(rec)
    ledger = rec.ledger
    # B writes one of A's private keys before A's state is back
    tx = ledger.begin()
    tx.put(PRIVATE, b"k1", b"written by B")
    ledger.commit(tx)
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    replay = replay_private(rec.files, LedgerSecrets(old.ledger.secrets.all()), create - 1)
    ledger.store.restore_earlier_state(replay.state(), create)
    tx = ledger.read_tx()
    for name, values in old.private.items():
        for key, value in values.items():
            if (name, key) == (PRIVATE, b"k1"):
                assert tx.get(name, key) == b"written by B"
            else:
                assert tx.get(name, key) == value, (name, key)
    live = {k for k, v in old.private[PRIVATE].items() if v is not None} | {b"k1"}
    assert set(tx.keys(PRIVATE)) == live


def _written(maps: dict[str, dict[bytes, tuple[int, bytes | None]]]) -> LastWrites:
    state = LastWrites()
    writes = sorted((version, name, key, value) for name, entries in maps.items()
                    for key, (version, value) in entries.items())
    for version, name, key, value in writes:  # in version order, as `note` takes them
        state.note({name: {key: value}}, version)
    return state


def test_restore_earlier_state_refuses_entries_at_or_above_the_bound_and_a_bound_past_compaction() -> None:
    store = Store()
    tx = store.begin()
    tx.put("public:x", b"k", b"v")
    store.commit(tx)
    store.compact(1)
    with pytest.raises(ValueError):
        store.restore_earlier_state(_written({PRIVATE: {b"k": (2, b"v")}}), 2)
    with pytest.raises(VersionUnavailable):
        store.restore_earlier_state(_written({PRIVATE: {b"k": (1, b"v")}}), 3)
    with pytest.raises(ValueError, match="without the version"):
        store.restore_earlier_state(LastWrites({PRIVATE: {b"k": last_write_history(1, b"v")}}), 2)
    store.restore_earlier_state(_written({PRIVATE: {b"k": (1, b"v"), b"gone": (1, None)}}), 2)
    assert store.read_tx().get(PRIVATE, b"k") == b"v"
    assert store.read_tx().keys(PRIVATE) == [b"k"]


def test_restored_small_and_large_values_read_back_with_their_versions_and_the_map_s_latest_write() -> None:
    store = Store()
    for _ in range(3):  # the predecessor's entries, read public-only
        tx = store.begin()
        tx.put("public:x", b"k", b"v")
        store.commit(tx)
    store.compact(3)
    large = b"L" * (PACK_MAX + 1)
    state = LastWrites()
    state.note({PRIVATE: {b"small": b"s"}}, 1)
    state.note({PRIVATE: {b"large": large}}, 2)
    store.restore_earlier_state(state, 4)
    tx = store.begin()
    tx.put(PRIVATE, b"new", b"n")  # the recovered service's own write comes after every restored one
    store.commit(tx)
    read = store.read_tx()
    assert (read.get(PRIVATE, b"small"), read.get_version(PRIVATE, b"small")) == (b"s", 1)
    assert (read.get(PRIVATE, b"large"), read.get_version(PRIVATE, b"large")) == (large, 2)
    assert read.map_version(PRIVATE) == 4
    assert store.read_tx(3).map_version(PRIVATE) == 2


@pytest.mark.parametrize("put_first", [False, True])
def test_restore_earlier_state_keeps_a_later_committed_removal(put_first: bool) -> None:
    store = Store()
    store.hold_removals_from(3)  # what a recovering node asks: its own writes start at 3
    for version in (1, 2):  # the predecessor's entries, read public-only
        tx = store.begin()
        tx.put("public:x", b"k", b"%d" % version)
        store.commit(tx)
    if put_first:
        tx = store.begin()
        tx.put(PRIVATE, b"k", b"written by the recovered service")
        store.commit(tx)
    tx = store.begin()
    tx.remove(PRIVATE, b"k")
    store.commit(tx)
    store.compact(store.version)
    store.restore_earlier_state(_written({PRIVATE: {b"k": (2, b"the predecessor's value")}}), 3)
    assert store.read_tx().get(PRIVATE, b"k") is None


def test_restore_earlier_state_keeps_a_later_uncompacted_removal() -> None:
    store = Store()
    for version in (1, 2):
        tx = store.begin()
        tx.put("public:x", b"k", b"%d" % version)
        store.commit(tx)
    store.compact(2)
    tx = store.begin()
    tx.remove(PRIVATE, b"k")
    store.commit(tx)
    store.restore_earlier_state(_written({PRIVATE: {b"k": (2, b"the predecessor's value")}}), 3)
    assert store.read_tx().get(PRIVATE, b"k") is None
    assert store.read_tx(2).get(PRIVATE, b"k") == b"the predecessor's value"


# --- the whole ledger-level recovery, shares included ---------------------------------------------------


def test_recovered_service_gets_its_predecessors_secrets_and_private_state_back_through_the_shares(
    old: OldService,
) -> None:
    rec = start_recovery(old.directory, old.cert)
    create = create_recovered_service(rec)
    ledger = rec.ledger
    files = rec.files
    assert os.path.basename(files.chunk_file_of(create)).startswith(f"ledger_{create}")
    state = ledger.read_tx()
    info = state.get_json(SERVICE_INFO, SINGLETON_KEY)
    assert info["status"] == "Recovering" and info["recovery_count"] == 1
    assert info["cert"] == rec.service.pem
    assert info["previous_service_identity_version"] == rec.public.previous_service_info_seqno
    assert state.get_json(PREVIOUS_SERVICE_IDENTITY, SINGLETON_KEY) == cert_pem(old.cert)
    assert state.get_json(NODES_INFO, old.ledger.node.node_id)["status"] == "Retired"
    assert state.get_json(NODES_INFO, rec.identity.node_id)["status"] == "Trusted"
    assert state.get(NODES_ENDORSED_CERTS, rec.identity.node_id) == cert_pem(rec.identity.cert).encode()
    # two members submit their shares; the latest secret comes back, then the chain from the files
    tx = ledger.begin()
    for member_id in ("m2", "m0"):
        submit_share(tx, member_id, old.shares[member_id])
    latest = recover_latest_secret(tx)
    assert latest == old.ledger.secrets.latest.raw
    secrets = restore_secrets(ledger, files, latest)
    assert _raws(secrets) == _raws(old.ledger.secrets.all())
    clear_submitted_shares(tx)
    ledger.commit(tx)
    replay = replay_private(files, LedgerSecrets(secrets), create - 1, budget=10)
    ledger.restore_previous_service(secrets, replay.state())
    assert [s.start for s in ledger.secrets.all()] == [s.start for s in secrets] + [create]
    tx = ledger.read_tx()
    for name, values in old.private.items():
        for key, value in values.items():
            assert tx.get(name, key) == value, (name, key)
    assert tx.get(SUBMITTED_SHARES, "m0") is None


def test_a_recovering_node_keeps_the_digests_its_private_replay_checks_while_new_transactions_commit(
    old: OldService,
) -> None:
    """The private replay checks each entry of the predecessor against the write-set digest the public replay
    verified. The recovered service commits transactions meanwhile (the shares, other members' steps), and a
    ledger drops the records of old transactions as it commits: not these, until the private replay is done."""
    from network.enclave.recovery import NodeRecovery, Phase

    rec = start_recovery(old.directory, old.cert)
    create = create_recovered_service(rec)
    ledger = rec.ledger
    turns: list[Any] = []
    recovery = NodeRecovery(ledger, turns.append, lambda: None)
    assert recovery.phase is Phase.PUBLIC and recovery.wants_shares()
    tx = ledger.begin()
    for member_id in ("m2", "m0"):
        submit_share(tx, member_id, old.shares[member_id])
    secrets = restore_secrets(ledger, rec.files, recover_latest_secret(tx))
    ledger.commit(tx)
    recovery.take_secrets(secrets)  # the replay in steps waits for its turns of the loop
    assert recovery.phase is Phase.PRIVATE and turns and not recovery.wants_shares()

    def commit_signed_writes(count: int) -> None:
        for i in range(count):
            ledger.commit_writes({"public:app.recovered": {b"k%d" % i: b"v"}})
            ledger.emit_signature()
        ledger.flush()
        ledger.commit_to(ledger.last_signature_seqno)

    ledger.retained_records = 4
    commit_signed_writes(20)
    while turns:
        turns.pop(0)()
    assert recovery.phase is Phase.DONE
    assert not recovery.wants_shares()  # read, and the service not open yet: a share now is refused all the same
    state = ledger.read_tx()
    for name, values in old.private.items():
        for key, value in values.items():
            assert state.get(name, key) == value, (name, key)
    commit_signed_writes(20)  # done: old records go as on any node, and their receipts still verify
    with pytest.raises(LedgerError):
        ledger.write_set_digests(1, 1)
    assert ledger.merkle.first_retained > create
    verify_json_receipt(ledger.receipt(create + 1), ledger.service.cert)


def test_the_opening_of_a_recovered_service_leaves_no_decrypted_share_behind_and_hands_the_secrets_again(
        old: OldService) -> None:
    """A share that came in after the threshold (or that a rollback brought back) is cleared by the opening, as
    CCF's opening clears the submitted shares: a decrypted share of the predecessor is not kept. The opening hands
    the predecessor's secrets to every trusted node again, in case the transaction that first did was rolled
    back by an election after this node took them."""
    from network.enclave.recovery import NodeRecovery, Phase

    rec = start_recovery(old.directory, old.cert)
    create_recovered_service(rec)
    ledger = rec.ledger
    turns: list[Any] = []
    recovery = NodeRecovery(ledger, turns.append, lambda: None)
    tx = ledger.begin()
    for member_id in ("m2", "m0"):
        submit_share(tx, member_id, old.shares[member_id])
    secrets = recovery.shares_complete(tx)
    ledger.commit(tx)
    recovery.take_secrets(secrets)
    while turns:
        turns.pop(0)()
    assert recovery.phase is Phase.DONE
    tx = ledger.begin()
    tx.put(SUBMITTED_SHARES, "m1", old.shares["m1"])
    ledger.commit(tx)
    tx = ledger.begin()
    recovery.open_writes(tx)
    opening = ledger.commit(tx)
    assert opening is not None
    state = ledger.read_tx()
    assert state.get_json(SERVICE_INFO, SINGLETON_KEY)["status"] == "Open"
    assert list(state.keys(SUBMITTED_SHARES)) == []
    assert state.get_version(NODE_SECRETS, SINGLETON_KEY) == opening.seqno
    handed = secrets_for_node(state.get_json(NODE_SECRETS, SINGLETON_KEY), rec.identity.node_id, _NODE_RSA)
    assert _raws(handed) == _raws(old.ledger.secrets.all())


def _recovered_holding_secrets(old: OldService) -> tuple[Recovering, int, list[LedgerSecret]]:
    """A recovered service of `old` whose node holds the predecessor's secrets (two members' shares unwrapped them),
    its create seqno, and those secrets."""
    rec = start_recovery(old.directory, old.cert)
    created = create_recovered_service(rec)
    ledger = rec.ledger
    tx = ledger.begin()
    for member_id in ("m2", "m0"):
        submit_share(tx, member_id, old.shares[member_id])
    secrets = restore_secrets(ledger, rec.files, recover_latest_secret(tx))
    ledger.secrets.restore_earlier([s for s in secrets if s.start < ledger.secrets.latest.start])
    return rec, created, secrets


def _private_values_read(old: OldService, ledger: ServiceLedger) -> list[bytes | None]:
    """What `ledger` holds of each private key's last value in `old` (None where it holds nothing)."""
    state = ledger.read_tx()
    private = [(name, key) for name, values in old.private.items() for key, value in values.items()
               if value is not None]
    assert private
    return [state.get(name, key) for name, key in private]


def _follow_recovery(ledger: ServiceLedger, *, just_replicated: bool) -> Any:
    """A node's `NodeRecovery` given the secrets that cover its predecessor's entries, driven to its end."""
    from network.enclave.recovery import NodeRecovery

    turns: list[Any] = []
    recovery = NodeRecovery(ledger, turns.append, lambda: None, secrets_just_replicated=just_replicated)
    recovery.secrets_arrived()
    while turns:
        turns.pop(0)()
    return recovery


def _private_values(old: OldService) -> list[bytes]:
    return [value for values in old.private.values() for value in values.values() if value is not None]


@pytest.mark.parametrize("just_replicated", [True, False])
def test_a_backup_that_learns_of_the_recovery_with_the_secrets_still_reads_the_private_ledger(
    old: OldService, just_replicated: bool,
) -> None:
    """A backup that catches up late may take in, in one batch of entries, the recovery's first entries and the
    entry handing it the predecessor's secrets: it follows the recovery only then, with secrets that already
    cover the predecessor's entries, which it held public-only. It still reads their private part; a node that
    had the secrets when it read the entries (a restart) does not read them again."""
    from network.enclave.recovery import Phase

    rec, _, _ = _recovered_holding_secrets(old)
    ledger = rec.ledger
    recovery = _follow_recovery(ledger, just_replicated=just_replicated)
    assert recovery.phase is Phase.DONE
    assert not recovery.wants_shares()  # read, and the service not open yet: a share now is refused all the same
    expected = _private_values(old)
    assert _private_values_read(old, ledger) == (expected if just_replicated else [None] * len(expected))


def test_a_backup_that_first_gets_the_predecessors_secrets_in_the_opening_reads_the_private_ledger(
    old: OldService, tmp_path: Path,
) -> None:
    """If an election rolled back the transaction that first handed the predecessor's secrets to the nodes, a
    backup gets them only from the opening, which hands them again: it catches up to an Open service, having read
    the predecessor's entries public-only. `receive_entry` says the secrets it took are earlier ones, the node then
    follows the recovery although the service is Open, and reads the private ledger."""
    from ledger.replay import SecretsTaken, receive_entry
    from network.enclave.recovery import Phase, follows_recovery

    rec, created, predecessor = _recovered_holding_secrets(old)
    primary = rec.ledger
    backup_rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    backup_identity = NodeIdentity.create().endorsed_by(rec.service)
    # the opening as the backup receives it: status Open, and the predecessor's secrets encrypted to it
    tx = primary.begin()
    info = dict(tx.get_json(SERVICE_INFO, SINGLETON_KEY))
    tx.put_json(SERVICE_INFO, SINGLETON_KEY, {**info, "status": "Open"})
    tx.put(NODE_SECRETS, SINGLETON_KEY, orjson.dumps(node_secrets_entries(
        {backup_identity.node_id: backup_rsa.public_key()}, [s for s in predecessor if s.start < created])))
    opening = primary.commit(tx)
    assert opening is not None
    primary.commit_to(primary.emit_signature().seqno)
    primary.flush()
    # the backup: the recovered service's own secret only, every entry received from the primary in one go
    files, _ = LedgerFiles.open(str(tmp_path / "backup"))
    backup = ServiceLedger(node=backup_identity, service=rec.service, files=files,
                           secrets=LedgerSecrets([primary.secrets.for_seqno(created)]))
    taken = {seqno: receive_entry(backup, rec.files.read(seqno), seqno, node_id=backup_identity.node_id,
                                  encryption_key=backup_rsa) for seqno in range(1, primary.last_seqno + 1)}
    assert {seqno: t for seqno, t in taken.items() if t} == {opening.seqno: SecretsTaken.EARLIER}
    # handed again (as an opening does after a first hand-over that stood): a node holding them takes nothing
    tx = primary.begin()
    handed = primary.read_tx().get(NODE_SECRETS, SINGLETON_KEY)
    assert handed is not None
    tx.put(NODE_SECRETS, SINGLETON_KEY, handed)
    again = primary.commit(tx)
    assert again is not None
    primary.flush()
    assert receive_entry(backup, rec.files.read(again.seqno), again.seqno, node_id=backup_identity.node_id,
                         encryption_key=backup_rsa) == SecretsTaken.NONE
    backup.commit_to(opening.seqno + 1)
    assert not follows_recovery(backup)  # the service is Open...
    assert follows_recovery(backup, predecessor_secrets_arrived=True)  # ...but its private ledger was not read
    assert _follow_recovery(backup, just_replicated=True).phase is Phase.DONE
    assert _private_values_read(old, backup) == _private_values(old)


def test_a_private_replay_that_cannot_be_cut_into_worker_jobs_runs_in_steps(
    old: OldService, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Planning the worker jobs reads the verified digests of the predecessor's chunks; if that fails, the node
    replays in steps (which names what is missing if it fails too) rather than raising out of the entry that
    brought the secrets."""
    from network.enclave import recovery as node_recovery

    def unplannable(*args: Any, **kwargs: Any) -> None:
        raise LedgerError("no records of seqnos 1..40")

    monkeypatch.setattr(node_recovery, "private_replay_jobs", unplannable)
    rec = start_recovery(old.directory, old.cert)
    create_recovered_service(rec)
    ledger = rec.ledger
    turns: list[Any] = []
    recovery = node_recovery.NodeRecovery(ledger, turns.append, lambda: None,
                                          run_in_workers=lambda *args: pytest.fail("no jobs were planned"))
    tx = ledger.begin()
    for member_id in ("m2", "m0"):
        submit_share(tx, member_id, old.shares[member_id])
    secrets = restore_secrets(ledger, rec.files, recover_latest_secret(tx))
    ledger.commit(tx)
    recovery.take_secrets(secrets)
    while turns:
        turns.pop(0)()
    assert recovery.phase is node_recovery.Phase.DONE
    state = ledger.read_tx()
    for name, values in old.private.items():
        for key, value in values.items():
            assert state.get(name, key) == value, (name, key)


def test_secret_records_follow_the_chain_back_through_the_files_to_the_opening(old: OldService) -> None:
    rec = start_recovery(old.directory, old.cert)
    records = secret_records(rec.ledger, rec.files)
    assert len(records) == 3 and records[0][1] == {"next_version": 1}
    for (seqno, _), (_, later) in zip(records, records[1:], strict=False):
        assert later["previous_ledger_secret"]["previous_secret_stored_version"] == seqno
    assert [seqno for seqno, _ in records[1:]] == [s.start - 1 for s in old.ledger.secrets.all()[1:]]
    assert _raws(unwrap_secret_chain(records, old.ledger.secrets.latest.raw)) == _raws(old.ledger.secrets.all())


def test_a_recovery_from_an_unfinished_recovery_is_refused_or_completes(old: OldService) -> None:
    unfinished = start_recovery(old.directory, old.cert)
    create_b = create_recovered_service(unfinished)
    unfinished.files.close()
    rec = start_recovery(old.directory, unfinished.service.cert)  # B's identity as the previous one
    assert rec.ledger.last_seqno == create_b + 1
    try:
        create = create_recovered_service(rec)
    except RecoveryError:
        return  # refused up front: fine
    tx = rec.ledger.begin()
    for member_id in ("m0", "m1"):
        submit_share(tx, member_id, old.shares[member_id])
    secrets = restore_secrets(rec.ledger, rec.files, recover_latest_secret(tx))
    replay_private(rec.files, LedgerSecrets(secrets), create - 1)


# --- snapshots ------------------------------------------------------------------------------------------


@dataclass
class Snapshotted:
    old: OldService
    name: str
    seqno: int
    end: int  # A's last signature
    private: dict[str, dict[bytes, bytes | None]]


def snapshot_old_service(base: Path) -> Snapshotted:
    """A with a committed snapshot at its last signature and a few signed transactions after it."""
    old = build_old_service(base, tail=0)
    ledger = old.ledger
    ledger.files = LedgerFiles.open(old.directory)[0]
    seqno, evidence = ledger.snapshot()
    tx = ledger.begin()
    tx.put(PRIVATE, b"k1", b"after the snapshot")
    tx.put(PUBLIC, b"after", b"the snapshot")
    ledger.commit(tx)
    ledger.request_chunk()
    end = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(end.seqno)
    ledger.files.close()
    name = f"snapshot_{seqno}_{evidence}.committed"
    assert ledger.snapshot_dir is not None and name in os.listdir(ledger.snapshot_dir)
    private = copy.deepcopy(old.private)
    private[PRIVATE][b"k1"] = b"after the snapshot"
    return Snapshotted(old, name, seqno, end.seqno, private)


def _live(state: LastWrites) -> dict[str, dict[bytes, bytes]]:
    return {name: {k: v for k, h in entries.items() if (v := last_write(h)[1]) is not None}
            for name, entries in state.maps.items()}


def test_choose_snapshot_takes_a_committed_snapshot_the_files_continue_whose_receipt_verifies(
    tmp_path: Path,
) -> None:
    snap = snapshot_old_service(tmp_path / "old")
    directory = snap.old.ledger.snapshot_dir
    assert directory is not None
    # an uncommitted snapshot, and one the files do not continue, are not candidates
    with open(os.path.join(directory, snap.name), "rb") as f:
        data = f.read()
    (Path(directory) / f"snapshot_{snap.end}_{snap.end + 1}").write_bytes(data)
    (Path(directory) / f"snapshot_{snap.end + 5}_{snap.end + 6}.committed").write_bytes(data)
    files, _ = LedgerFiles.open(snap.old.directory)
    chosen = choose_snapshot([str(tmp_path / "missing"), directory], files, snap.old.cert)
    assert chosen == (snap.name, data)
    assert choose_snapshot([directory], files, ServiceIdentity.create().cert) is None


def test_a_recovery_from_a_snapshot_gives_the_same_state_as_from_the_whole_ledger(tmp_path: Path) -> None:
    snap = snapshot_old_service(tmp_path / "old")
    directory = snap.old.ledger.snapshot_dir
    assert directory is not None
    files, _ = LedgerFiles.open(snap.old.directory)
    chosen = choose_snapshot([directory], files, snap.old.cert)
    assert chosen is not None
    files.close()
    whole = start_recovery(snap.old.directory, snap.old.cert)
    whole.files.close()
    rec = start_recovery(snap.old.directory, snap.old.cert, snapshot=chosen[1])
    assert rec.ledger.last_seqno == whole.ledger.last_seqno == snap.end
    assert rec.ledger.store.snapshot() == whole.ledger.store.snapshot()
    secrets = LedgerSecrets(restore_secrets(rec.ledger, rec.files, snap.old.ledger.secrets.latest.raw))
    replay = PrivateReplay(rec.files, secrets, snap.seqno + 1, snap.end, snapshot=chosen[1])
    while not replay.done:
        replay.step(3)
    assert _live(replay.state()) == _live(_written({name: {k: (0, v) for k, v in values.items()}
                                                   for name, values in snap.private.items()}))
    # a snapshot read with secrets that do not cover it is refused, at the first step (not when set up: that
    # happens inside the member's request that brought the secrets)
    wrong = LedgerSecrets([LedgerSecret.create(s.start) for s in secrets.all()])
    wrong_replay = PrivateReplay(rec.files, wrong, snap.seqno + 1, snap.end, snapshot=chosen[1])
    with pytest.raises(RecoveryError, match="snapshot"):
        wrong_replay.step(3)


def _forge_snapshot(snap: Snapshotted) -> tuple[str, bytes]:
    """The snapshot's public record b"public 2" altered in its file: (snapshot directory, the altered bytes)."""
    directory = snap.old.ledger.snapshot_dir
    assert directory is not None
    path = Path(directory) / snap.name
    data = path.read_bytes()
    i = data.index(b"public 2")
    forged = data[:i] + b"forged 2" + data[i + 8:]
    path.write_bytes(forged)
    return directory, forged


def test_a_snapshot_altered_after_its_evidence_is_refused_before_its_state_is_used(tmp_path: Path) -> None:
    snap = snapshot_old_service(tmp_path / "old")
    directory, _ = _forge_snapshot(snap)
    files, _ = LedgerFiles.open(snap.old.directory)
    chosen = choose_snapshot([directory], files, snap.old.cert)
    files.close()
    assert chosen is not None  # its receipt proves the (genuine) evidence transaction: the state is what differs
    with pytest.raises(LedgerError):
        start_recovery(snap.old.directory, snap.old.cert, snapshot=chosen[1])


def test_evidence_after_the_last_signature_does_not_vouch_for_an_altered_snapshot(tmp_path: Path) -> None:
    """Whoever can write the files can append an unsigned entry with evidence for an altered snapshot; the
    recovery drops that entry, and its evidence does not vouch for the snapshot (nor could two evidence records
    naming different digests for one snapshot)."""
    snap = snapshot_old_service(tmp_path / "old")
    directory, forged = _forge_snapshot(snap)
    files, _ = LedgerFiles.open(snap.old.directory)
    record = dump_json({"hash": summarise_snapshot(forged).digest.hex(), "version": snap.seqno})
    tail = {SNAPSHOT_EVIDENCE: {SINGLETON_KEY: record}}
    files.append(serialise_entry(files.last_seqno + 1, snap.old.ledger.view, tail, ZERO_CLAIMS, bytes(32),
                                 LedgerSecret.create(1)))
    files.flush()
    chosen = choose_snapshot([directory], files, snap.old.cert)
    files.close()
    assert chosen is not None
    with pytest.raises(RecoveryError, match="does not match the digest its evidence"):
        start_recovery(snap.old.directory, snap.old.cert, snapshot=chosen[1])


def test_a_later_service_that_opened_is_not_taken_for_an_abandoned_recovery(old: OldService) -> None:
    """Given the certificate of a service that was recovered since (and whose successor opened), the recovery is
    refused, naming the later certificate, and nothing of the later service's history is moved or cut."""
    b = start_recovery(old.directory, old.cert)
    create_recovered_service(b)
    info = b.ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    b.ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: dump_json({**info, "status": "Open"})}})
    for i in range(5):
        b.ledger.commit_writes({PUBLIC: {b"b%d" % i: b"B committed %d" % i}})
    b.ledger.request_chunk()
    sig = b.ledger.emit_signature()
    b.ledger.flush()
    b.ledger.commit_to(sig.seqno)
    b.files.close()
    before = sorted(os.listdir(old.directory))
    with pytest.raises(RecoveryError, match="later service that opened") as error:
        start_recovery(old.directory, old.cert)
    assert cert_pem(b.service.cert).strip() in str(error.value)
    assert sorted(os.listdir(old.directory)) == before and "unused" not in before
    assert start_recovery(old.directory, b.service.cert).ledger.last_seqno == sig.seqno  # B's own: all of it

# --- ledger secrets of an earlier service ----------------------------------------------------------------


def test_ledger_secrets_cover_nothing_until_an_earlier_service_s_secrets_are_restored() -> None:
    secrets = LedgerSecrets([])
    assert not secrets.covers(1)
    secrets.add(LedgerSecret.create(40))
    assert not secrets.covers(39) and secrets.covers(40) and secrets.covers(1000)
    earlier = [LedgerSecret.create(1), LedgerSecret.create(12)]
    with pytest.raises(LedgerSecretError):
        secrets.restore_earlier([LedgerSecret.create(40)])
    with pytest.raises(LedgerSecretError):
        secrets.restore_earlier([LedgerSecret.create(5), LedgerSecret.create(5)])
    assert len(secrets) == 1
    secrets.restore_earlier(earlier)
    assert secrets.covers(1)
    assert [s.start for s in secrets.all()] == [1, 12, 40]
    assert secrets.for_seqno(11) is earlier[0] and secrets.for_seqno(39) is earlier[1]
    assert secrets.latest.start == 40


def test_previous_secrets_encrypted_to_each_node_are_given_to_that_node_only() -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    secrets = [LedgerSecret.create(1), LedgerSecret.create(17)]
    record = node_secrets_entries({"n1": _NODE_RSA.public_key(), "n2": other.public_key()}, secrets)
    assert sorted(record) == ["n1", "n2"]
    assert _raws(secrets_for_node(record, "n1", _NODE_RSA)) == _raws(secrets)
    assert secrets_for_node(record, "n3", _NODE_RSA) == []
    with pytest.raises(LedgerSecretError):
        secrets_for_node(record, "n2", _NODE_RSA)  # encrypted to another key


def test_recovery_create_writes_refuses_a_service_that_never_opened_and_an_unendorsed_node() -> None:
    ledger = start_new_service(None, [GenesisMember(_MEMBER.pem)], CONSTITUTION,
                               node=NodeKeys(NodeIdentity.create(), _NODE_RSA))
    service = ServiceIdentity.create()
    identity = NodeIdentity.create().endorsed_by(service)
    quote = VirtualQuote("11" * 32, "22" * 32, identity.node_id)
    node = GenesisNode(identity, quote, _public_pem(_NODE_RSA).decode())
    with pytest.raises(RecoveryError, match="never opened"):
        recovery_create_writes(ledger.read_tx(), service, node, "4.5")
    info = ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: dump_json({**info, "status": "Open"})}})
    unendorsed = GenesisNode(NodeIdentity.create(), quote, _public_pem(_NODE_RSA).decode())
    with pytest.raises(RecoveryError, match="endorsed"):
        recovery_create_writes(ledger.read_tx(), service, unendorsed, "4.5")
    writes = recovery_create_writes(ledger.read_tx(), service, node, "4.5")
    # a measurement and host data the previous service did not know are allowed for the recovering node
    assert VIRTUAL_MEASUREMENTS in writes and VIRTUAL_HOST_DATA in writes
    created = orjson.loads(writes[SERVICE_INFO][SINGLETON_KEY] or b"")
    assert created["current_service_create_txid"] == "4.5" and created["recovery_count"] == 1


# --- 6. gathering the previous ledger ----------------------------------------------------------------------


def test_gather_copies_missing_chunks_from_two_sources_and_never_touches_them(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0)
    names = sorted(os.listdir(old.directory), key=_chunk_start)
    assert len(names) >= 4 and all(n.endswith(".committed") for n in names)
    data = chunk_bytes(old.directory)
    first, second, target = tmp_path / "first", tmp_path / "second", tmp_path / "target"
    for d in (first, second, target):
        d.mkdir()
    # the first source has the early chunks, the second all but the first, the target already one of them
    for name in names[:3]:
        (first / name).write_bytes(data[name])
    for name in names[1:]:
        (second / name).write_bytes(b"other copy: must not win" if name == names[2] else data[name])
    (second / "notes.txt").write_bytes(b"not a chunk")
    (target / names[1]).write_bytes(data[names[1]])
    sources_before = {str(d): chunk_bytes(str(d)) for d in (first, second)}
    copied = gather_previous_ledger([str(first), str(second)], str(target))
    assert copied == [names[0], names[2], *names[3:]]
    assert chunk_bytes(str(target)) == data
    assert {str(d): chunk_bytes(str(d)) for d in (first, second)} == sources_before
    # gathering again copies nothing; the target directory as a source is skipped
    assert gather_previous_ledger([str(first), str(second), str(target)], str(target)) == []
    assert chunk_bytes(str(target)) == data
    # and the gathered ledger replays
    rec = start_recovery(str(target), old.cert)
    assert rec.ledger.last_seqno == old.last_signature


def test_gather_creates_the_target_and_refuses_a_missing_source(tmp_path: Path) -> None:
    target = tmp_path / "new" / "ledger"
    assert gather_previous_ledger([], str(target)) == []
    assert target.is_dir()
    with pytest.raises(RecoveryError, match="cannot read"):
        gather_previous_ledger([str(tmp_path / "missing")], str(target))


def _lagging_copy(old: OldService, directory: Path, scratch: Path) -> tuple[list[str], int]:
    """`directory` as a lagging node of A left it: the first two chunks, then the first two entries of the third
    in an open chunk. Returns A's chunk names in order and the open chunk's start."""
    data = chunk_bytes(old.directory)
    names = sorted(data, key=_chunk_start)
    directory.mkdir(parents=True, exist_ok=True)
    for name in names[:2]:
        (directory / name).write_bytes(data[name])
    start = _chunk_start(names[2])
    full, _ = LedgerFiles.open(old.directory)
    files, _ = LedgerFiles.open(str(scratch))
    files.start_after(start - 1)
    for seqno in (start, start + 1):
        files.append(full.read(seqno))
    files.close()
    full.close()
    (directory / f"ledger_{start}").write_bytes((scratch / f"ledger_{start}").read_bytes())
    return names, start


@pytest.mark.parametrize("lagging_first", [True, False])
def test_gather_prefers_a_committed_chunk_to_an_uncommitted_one_starting_at_the_same_seqno(
    tmp_path: Path, lagging_first: bool
) -> None:
    old = build_old_service(tmp_path / "old", tail=0)
    lagging = tmp_path / "lagging"
    names, start = _lagging_copy(old, lagging, tmp_path / "scratch")
    sources = [str(lagging), old.directory] if lagging_first else [old.directory, str(lagging)]
    target = str(tmp_path / "target")
    gather_previous_ledger(sources, target)
    assert f"ledger_{start}" not in os.listdir(target)
    rec = start_recovery(target, old.cert)
    assert rec.ledger.last_seqno == old.last_signature


def test_gather_does_not_lose_a_chunk_of_the_target_that_a_committed_source_chunk_supersedes(
    tmp_path: Path,
) -> None:
    """The recovering node's own directory is a lagging node's: its open chunk gives way to the committed chunk
    another node holds, and is kept aside rather than deleted."""
    old = build_old_service(tmp_path / "old", tail=0)
    target = tmp_path / "target"
    _, start = _lagging_copy(old, target, tmp_path / "scratch")
    own = (target / f"ledger_{start}").read_bytes()
    gather_previous_ledger([old.directory], str(target))
    kept = [os.path.join(root, name) for root, _, names in os.walk(target) for name in names
            if name == f"ledger_{start}"]
    assert len(kept) == 1 and Path(kept[0]).read_bytes() == own
    rec = start_recovery(str(target), old.cert)
    assert rec.ledger.last_seqno == old.last_signature


def test_gather_refuses_a_ledger_with_a_missing_middle_chunk_naming_the_next(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0)
    data = chunk_bytes(old.directory)
    names = sorted(data, key=_chunk_start)
    source = tmp_path / "source"
    source.mkdir()
    for name in names[:2] + names[3:]:
        (source / name).write_bytes(data[name])
    with pytest.raises(RecoveryError, match="gap") as error:
        gather_previous_ledger([str(source)], str(tmp_path / "target"))
    assert names[3] in str(error.value)


def test_gather_takes_the_longest_of_two_open_chunks_starting_at_the_same_seqno(tmp_path: Path) -> None:
    # A never ended a chunk after genesis: everything signed is in one open chunk
    old = build_old_service(tmp_path / "old", tail=0, chunk_size=1_000_000, end_chunk=False)
    lagging = tmp_path / "lagging"
    lagging.mkdir()
    full, _ = LedgerFiles.open(old.directory)
    short, _ = LedgerFiles.open(str(lagging))
    for seqno in range(1, old.last_signature - 4):  # it misses A's last few entries, its last signature among them
        short.append(full.read(seqno))
    short.close()
    full.close()
    assert sorted(os.listdir(lagging)) == ["ledger_1-2", "ledger_3"]
    target = str(tmp_path / "target")
    gather_previous_ledger([str(lagging), old.directory], target)
    rec = start_recovery(target, old.cert)
    assert rec.ledger.last_seqno == old.last_signature


# --- 7. receipts across the recovery ---------------------------------------------------------------------


def test_receipts_of_the_previous_service_verify_against_the_new_certificate_once_endorsed(
    old: OldService,
) -> None:
    old_receipts = {}
    for seqno in (3, 10, old.last_signature):  # receipts A gave before it was lost
        old_receipts[seqno] = old.ledger.receipt(seqno)
        verify_json_receipt(old_receipts[seqno], old.cert)
    rec = start_recovery(old.directory, old.cert)
    create = create_recovered_service(rec)
    ledger = rec.ledger
    secrets = restore_secrets(ledger, rec.files, old.ledger.secrets.latest.raw)
    ledger.restore_previous_service(secrets, replay_private(rec.files, LedgerSecrets(secrets), create - 1).state())
    assert ledger.service_certs == [cert_pem(old.cert).strip(), rec.service.pem.strip()]
    before = ledger.receipt(10)
    assert before.get("service_endorsements", []) == []
    with pytest.raises(ReceiptEndorsementError):
        verify_json_receipt(before, rec.service.cert)
    ledger.endorse_previous_identities()
    ledger.endorse_previous_identities()  # once per identity
    for seqno, kept in old_receipts.items():
        receipt = ledger.receipt(seqno)
        assert len(receipt["service_endorsements"]) == 1
        verify_json_receipt(receipt, rec.service.cert)
        # the same proof A gave, now chained to B
        assert receipt["signature"] == kept["signature"] and receipt.get("proof") == kept.get("proof")
        verify_json_receipt(kept, old.cert)
    # B's own transactions need no endorsement
    fresh = ledger.receipt(create)
    assert fresh.get("service_endorsements", []) == []
    verify_json_receipt(fresh, rec.service.cert)
    with pytest.raises(ReceiptEndorsementError):
        verify_json_receipt(ledger.receipt(10), ServiceIdentity.create().cert)


def test_gathered_chunks_are_hard_linked_yet_cutting_them_never_changes_the_source(tmp_path: Path) -> None:
    old = build_old_service(tmp_path / "old", tail=0)
    before = chunk_bytes(old.directory)
    target = tmp_path / "target"
    gather_previous_ledger([old.directory], str(target))
    linked = [n for n in os.listdir(target) if os.stat(target / n).st_nlink > 1]
    assert linked, "complete chunks are hard-linked, not copied"
    files, _ = LedgerFiles.open(str(target))
    committed_chunks = sorted((n for n in os.listdir(target) if n.endswith(".committed")), key=_chunk_start)
    inside = _chunk_start(committed_chunks[-2]) + 1  # a seqno inside a committed, linked chunk
    files.discard_after(inside)
    files.close()
    assert chunk_bytes(old.directory) == before  # the source chunks, linked or not, are as they were
    assert files.last_seqno == inside
