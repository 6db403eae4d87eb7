"""Receipts: every committed transaction's JSON and COSE receipts pass the `ccf` package's verifiers,
and our own verifier rejects mutated or bit-flipped receipts with the error of the check that failed."""

from __future__ import annotations

import base64
import copy
import hashlib
from collections.abc import Callable
from typing import Any

import cbor2
import ccf.cose
import ccf.receipt
import pytest
from cryptography.hazmat.primitives import serialization
from hypothesis import given
from hypothesis import strategies as st

from ledger.errors import (
    ReceiptClaimsMismatch,
    ReceiptEndorsementError,
    ReceiptError,
    ReceiptFormatError,
    ReceiptNotAvailable,
    ReceiptSignatureError,
)
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem, endorse, load_cert
from ledger.receipts import verify_cose_receipt, verify_json_receipt
from ledger.service_ledger import ServiceLedger
from tests.ccf_tools import ccf_check_json_receipt

pytestmark = pytest.mark.unit

CLAIMS = hashlib.sha256(b"application claims").digest()


@pytest.fixture(scope="module")
def signed_ledger(tmp_path_factory: pytest.TempPathFactory) -> ServiceLedger:
    """A ledger of 60 transactions, some with claims, signed at irregular intervals, all committed."""
    from ledger.bootstrap import start_new_service
    from ledger.genesis import GenesisMember
    from ledger.identity import PartyIdentity

    member = PartyIdentity.create("m")
    ledger = start_new_service(str(tmp_path_factory.mktemp("receipts") / "ledger"), [GenesisMember(member.pem)], "c")
    for i in range(60):
        tx = ledger.begin()
        tx.put("app.secret", b"k%d" % (i % 5), b"v%d" % i)
        tx.put("public:app.log", b"%d" % i, b"entry %d" % i)
        if i % 4 == 0:
            tx.set_claims_digest(CLAIMS)
        ledger.commit(tx)
        if i in (0, 7, 8, 30, 59) or i % 13 == 0:
            ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_signature_seqno)
    return ledger


def test_every_committed_transaction_has_json_and_cose_receipts_that_ccf_accepts(signed_ledger: ServiceLedger) -> None:
    service_cert = signed_ledger.service.cert
    last = signed_ledger.committed_seqno
    for seqno in range(1, last + 1):
        receipt = signed_ledger.receipt(seqno)
        ccf_check_json_receipt(receipt, service_cert)
        ours = verify_json_receipt(receipt, service_cert)
        assert ours.is_signature == signed_ledger.is_signature(seqno)
        if not ours.is_signature:
            assert (ours.view, ours.seqno) == tuple(signed_ledger.txid(seqno))
        if seqno == last:
            continue  # no later signature covers the last one in a COSE receipt
        claims = ours.claims_digest if ours.claims_digest is not None else bytes(32)
        cose = signed_ledger.cose_receipt(seqno)
        ccf.cose.verify_receipt(cose, service_cert.public_key(), claims)
        assert verify_cose_receipt(cose, service_cert, expected_claims_digest=claims).seqno == seqno


def test_application_claims_are_bound_into_receipts(signed_ledger: ServiceLedger) -> None:
    seqno = next(s for s in range(3, 60) if signed_ledger.receipt(s).get("leaf_components", {})
                 .get("claims_digest") == CLAIMS.hex())
    cose = signed_ledger.cose_receipt(seqno)
    service_cert = signed_ledger.service.cert
    ccf.cose.verify_receipt(cose, service_cert.public_key(), CLAIMS)
    with pytest.raises(ValueError, match="Claim digest mismatch"):
        ccf.cose.verify_receipt(cose, service_cert.public_key(), bytes(32))
    with pytest.raises(ReceiptClaimsMismatch):
        verify_cose_receipt(cose, service_cert, expected_claims_digest=bytes(32))
    with pytest.raises(ReceiptClaimsMismatch):
        verify_json_receipt(signed_ledger.receipt(seqno), service_cert, expected_claims_digest=bytes(32))


def test_no_receipt_for_uncommitted_or_unsigned_transactions(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = new_service(with_files=False)
    tx = ledger.begin()
    tx.put("x", b"k", b"v")
    txid = ledger.commit(tx)
    with pytest.raises(ReceiptNotAvailable):
        ledger.receipt(txid.seqno)  # not committed
    with pytest.raises(ReceiptNotAvailable):
        ledger.receipt(txid.seqno + 5)  # unknown
    sig = ledger.emit_signature()
    with pytest.raises(ReceiptNotAvailable):
        ledger.cose_receipt(txid.seqno)  # signed but not committed
    ledger.commit_to(sig.seqno)
    verify_json_receipt(ledger.receipt(txid.seqno), ledger.service.cert)
    with pytest.raises(ReceiptNotAvailable):
        ledger.cose_receipt(sig.seqno)  # nothing signs after the last signature yet


# --- mutations of JSON receipt fields ----------------------------------------------------------------


def _other_hex(hex_value: str) -> str:
    raw = bytearray(bytes.fromhex(hex_value))
    raw[0] ^= 0x01
    return raw.hex()


def _mutations(receipt: dict[str, Any], other_node_pem: str) -> list[tuple[str, Callable[[dict[str, Any]], None],
                                                                       type[ReceiptError]]]:
    def set_lc(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
        return lambda r: r["leaf_components"].__setitem__(key, value)

    lc = receipt["leaf_components"]
    view_seqno, nonce = lc["commit_evidence"][3:].rsplit(":", 1)
    first_side = next(iter(receipt["proof"][0]))
    other_side = "right" if first_side == "left" else "left"
    return [
        ("write_set_digest changed", set_lc("write_set_digest", _other_hex(lc["write_set_digest"])),
         ReceiptSignatureError),
        ("claims_digest changed", set_lc("claims_digest", _other_hex(lc["claims_digest"])), ReceiptSignatureError),
        ("commit evidence nonce changed", set_lc("commit_evidence", f"ce:{view_seqno}:{_other_hex(nonce)}"),
         ReceiptSignatureError),
        ("commit evidence malformed", set_lc("commit_evidence", "ce:nonsense"), ReceiptFormatError),
        ("write_set_digest not hex", set_lc("write_set_digest", "zz" * 32), ReceiptFormatError),
        ("write_set_digest short", set_lc("write_set_digest", "00" * 31), ReceiptFormatError),
        ("leaf_components missing", lambda r: r.pop("leaf_components"), ReceiptFormatError),
        ("proof step changed", lambda r: r["proof"][0].__setitem__(first_side, _other_hex(r["proof"][0][first_side])),
         ReceiptSignatureError),
        ("proof step side swapped",
         lambda r: r["proof"].__setitem__(0, {other_side: r["proof"][0][first_side]}),
         ReceiptSignatureError),
        ("proof step dropped", lambda r: r["proof"].pop(), ReceiptSignatureError),
        ("proof step added", lambda r: r["proof"].append({"left": "00" * 32}), ReceiptSignatureError),
        ("proof step malformed", lambda r: r["proof"].__setitem__(0, {"up": "00" * 32}), ReceiptFormatError),
        ("proof not a list", lambda r: r.__setitem__("proof", "none"), ReceiptFormatError),
        ("signature of other bytes",
         lambda r: r.__setitem__("signature", base64.b64encode(b"\x30\x06\x02\x01\x01\x02\x01\x01").decode()),
         ReceiptSignatureError),
        ("signature not base64", lambda r: r.__setitem__("signature", "!!!"), ReceiptFormatError),
        ("node_id changed", lambda r: r.__setitem__("node_id", "ab" * 32), ReceiptFormatError),
        ("cert replaced", lambda r: r.__setitem__("cert", other_node_pem), ReceiptFormatError),
        ("cert not PEM", lambda r: r.__setitem__("cert", "hello"), ReceiptFormatError),
        ("bogus service endorsement", lambda r: r.__setitem__("service_endorsements", [other_node_pem]),
         ReceiptEndorsementError),
    ]


def test_each_field_mutation_is_rejected_with_the_right_error(signed_ledger: ServiceLedger) -> None:
    seqno = next(s for s in range(3, 60)
                 if not signed_ledger.is_signature(s) and len(signed_ledger.receipt(s)["proof"]) > 2)
    receipt = signed_ledger.receipt(seqno)
    service_cert = signed_ledger.service.cert
    other = NodeIdentity.create().endorsed_by(signed_ledger.service)
    verify_json_receipt(receipt, service_cert)
    for name, mutate, error in _mutations(receipt, cert_pem(other.cert)):
        mutated = copy.deepcopy(receipt)
        mutate(mutated)
        with pytest.raises(error):
            verify_json_receipt(mutated, service_cert)
        print("rejected:", name)


def test_receipt_from_another_service_is_not_endorsed(signed_ledger: ServiceLedger) -> None:
    receipt = signed_ledger.receipt(5)
    stranger = ServiceIdentity.create()
    with pytest.raises(ReceiptEndorsementError):
        verify_json_receipt(receipt, stranger.cert)
    with pytest.raises(ReceiptEndorsementError):
        verify_cose_receipt(signed_ledger.cose_receipt(5), stranger.cert)


def test_service_endorsements_chain_to_the_current_service_identity() -> None:
    """After a recovery, a node endorsed by the previous identity is trusted through an endorsement."""
    from ledger.merkle import MerkleHistory
    from ledger.receipts import json_receipt
    from ledger.signatures import PrimarySignature, sign_root

    old, new = ServiceIdentity.create(), ServiceIdentity.create()
    node = NodeIdentity.create().endorsed_by(old)
    previous_identity = endorse(new.key, new.cert, old.key.public_key(), "CCF Service", ca=True)
    tree = MerkleHistory()
    wsd, claims, ce = hashlib.sha256(b"tx").digest(), bytes(32), "ce:2.1:" + "ab" * 32
    tree.append(hashlib.sha256(wsd + hashlib.sha256(ce.encode()).digest() + claims).digest())
    root = tree.root()
    primary = PrimarySignature(node.node_id, 2, 2, root, sign_root(node.key, root), cert_pem(node.cert))
    receipt = json_receipt(write_set_digest=wsd, commit_evidence=ce, claims_digest=claims, path=tree.path(1),
                           signature=primary, service_endorsements=[cert_pem(previous_identity)])
    ccf_check_json_receipt(receipt, new.cert)
    assert verify_json_receipt(receipt, new.cert).seqno == 1
    without = {k: v for k, v in receipt.items() if k != "service_endorsements"}
    with pytest.raises(ReceiptEndorsementError):
        verify_json_receipt(without, new.cert)


# --- single-bit flips --------------------------------------------------------------------------------


@pytest.mark.property
@given(data=st.data())
def test_single_bit_flips_in_json_receipt_binary_fields_are_rejected(signed_ledger: ServiceLedger,
                                                                     data: st.DataObject) -> None:
    receipt = signed_ledger.receipt(9)
    service_cert = signed_ledger.service.cert
    field = data.draw(st.sampled_from(["write_set_digest", "claims_digest", "proof", "signature", "cert"]))
    mutated = copy.deepcopy(receipt)
    if field in ("write_set_digest", "claims_digest"):
        raw = bytearray(bytes.fromhex(mutated["leaf_components"][field]))
    elif field == "proof":
        step = data.draw(st.integers(0, len(mutated["proof"]) - 1))
        side = next(iter(mutated["proof"][step]))
        raw = bytearray(bytes.fromhex(mutated["proof"][step][side]))
    elif field == "signature":
        raw = bytearray(base64.b64decode(mutated["signature"]))
    else:
        raw = bytearray(load_cert(mutated["cert"]).public_bytes(serialization.Encoding.DER))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    if field in ("write_set_digest", "claims_digest"):
        mutated["leaf_components"][field] = raw.hex()
    elif field == "proof":
        mutated["proof"][step] = {side: raw.hex()}
    elif field == "signature":
        mutated["signature"] = base64.b64encode(raw).decode()
    else:
        pem = "-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(bytes(raw)).decode() + "-----END CERTIFICATE-----\n"
        mutated["cert"] = pem
    with pytest.raises(ReceiptError):
        verify_json_receipt(mutated, service_cert)


@pytest.mark.property
@given(data=st.data())
def test_single_bit_flips_anywhere_in_a_cose_receipt_are_rejected(signed_ledger: ServiceLedger,
                                                                  data: st.DataObject) -> None:
    cose = bytearray(signed_ledger.cose_receipt(9))
    bit = data.draw(st.integers(0, len(cose) * 8 - 1))
    cose[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(ReceiptError):
        verify_cose_receipt(bytes(cose), signed_ledger.service.cert)


def test_cose_receipt_structure_mutations_are_format_errors(signed_ledger: ServiceLedger) -> None:
    cert = signed_ledger.service.cert
    tagged = cbor2.loads(signed_ledger.cose_receipt(9))
    phdr, uhdr, payload, sig = tagged.value
    cases = {
        "no inclusion proof": {396: {-1: []}},
        "proof not bstr": {396: {-1: ["text"]}},
        "no vdp": {},
        "leaf wrong shape": {396: {-1: [cbor2.dumps({1: [b"x", "ce", b"y"], 2: []})]}},
        "path wrong shape": {396: {-1: [cbor2.dumps({1: uhdr_leaf(uhdr), 2: [[1, b"short"]]})]}},
    }
    for name, new_uhdr in cases.items():
        blob = cbor2.dumps(cbor2.CBORTag(18, [phdr, new_uhdr, payload, sig]))
        with pytest.raises(ReceiptFormatError):
            verify_cose_receipt(blob, cert)
        print("rejected:", name)
    with pytest.raises(ReceiptFormatError):
        verify_cose_receipt(b"\xff\x00garbage", cert)


def uhdr_leaf(uhdr: dict[Any, Any]) -> Any:
    return cbor2.loads(uhdr[396][-1][0])[1]


def test_receipts_from_before_a_service_identity_change_carry_service_endorsements(
    new_service: Callable[..., ServiceLedger],
) -> None:
    """After a recovery the service has a new identity that endorses the old one: receipts for old
    transactions (signed by a node endorsed by the old identity) chain to the new certificate."""
    ledger = new_service(with_files=False)
    tx = ledger.begin()
    tx.put("public:x", b"k", b"before")
    old_tx = ledger.commit(tx)
    sig = ledger.emit_signature()
    ledger.commit_to(sig.seqno)
    assert "service_endorsements" not in ledger.receipt(old_tx.seqno)

    old_service = ledger.service
    new_identity = ServiceIdentity.create()
    ledger.service = new_identity
    ledger.add_service_endorsement(
        endorse(new_identity.key, new_identity.cert, old_service.key.public_key(), "CCF Service", ca=True))
    for seqno in (old_tx.seqno, sig.seqno):
        receipt = ledger.receipt(seqno)
        assert len(receipt["service_endorsements"]) == 1
        ccf_check_json_receipt(receipt, new_identity.cert)
        verify_json_receipt(receipt, new_identity.cert)
        with pytest.raises(ReceiptEndorsementError):
            verify_json_receipt({k: v for k, v in receipt.items() if k != "service_endorsements"},
                                new_identity.cert)


def test_receipts_of_transactions_whose_records_were_dropped_are_rebuilt_from_the_files(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A node keeps the tree and digests of recent transactions only (`retained_records`); an older one's receipt
    comes from its entry and the tree its covering signature stored, and is the receipt it had before."""
    from ledger.bootstrap import start_new_service
    from ledger.errors import LedgerError
    from ledger.genesis import GenesisMember
    from ledger.identity import PartyIdentity

    member = PartyIdentity.create("m")
    ledger = start_new_service(str(tmp_path_factory.mktemp("dropped") / "ledger"), [GenesisMember(member.pem)], "c")

    def write(i: int) -> None:
        tx = ledger.begin()
        tx.put("app.secret", b"k%d" % i, b"v%d" % i)
        if i % 3 == 0:
            tx.set_claims_digest(CLAIMS)
        ledger.commit(tx)

    for i in range(40):
        write(i)
        if i % 7 == 6:
            ledger.emit_signature()
    ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_signature_seqno)
    old = ledger.committed_seqno
    before = {s: (ledger.receipt(s), None if ledger.is_signature(s) else ledger.cose_receipt(s))
              for s in range(1, old)}

    ledger.retained_records = 5
    for i in range(40, 52):
        write(i)
    ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_signature_seqno)
    assert ledger.merkle.first_retained > 30  # the records below it are gone from memory
    with pytest.raises(LedgerError):
        ledger.write_set_digests(1, 1)

    service_cert = ledger.service.cert
    for seqno, (receipt, cose) in before.items():
        assert ledger.receipt(seqno) == receipt, seqno
        ccf_check_json_receipt(ledger.receipt(seqno), service_cert)
        if cose is not None:
            assert ledger.cose_receipt(seqno) == cose, seqno
            claims = verify_json_receipt(receipt, service_cert).claims_digest or bytes(32)
            ccf.cose.verify_receipt(ledger.cose_receipt(seqno), service_cert.public_key(), claims)

    # bytes the host changed are refused, not made into a receipt that would not verify
    target = next(s for s in before if not ledger.is_signature(s) and s > 3)
    files = ledger.files
    assert files is not None
    genuine = files.read_range

    def tampered(start: int, end: int) -> list[bytes]:
        entries = genuine(start, end)
        return [e[:-1] + bytes([e[-1] ^ 1]) if start == target else e for e in entries]

    files.read_range = tampered  # type: ignore[method-assign]
    with pytest.raises(LedgerError, match=f"entry at {target}"):
        ledger.receipt(target)

    # the signature entry read back must be the one the node verified: a host that rewrites the node's signature
    # in it (still well-formed, the tree and root untouched) is refused rather than served as a receipt
    signature = ledger._covering_signature(target)
    ledger._read_back = None

    def resigned(start: int, end: int) -> list[bytes]:
        entries = genuine(start, end)
        if start != signature:
            return entries
        at = entries[0].index(b'"sig":"') + len(b'"sig":"')
        forged = b"B" if entries[0][at:at + 1] != b"B" else b"C"
        return [entries[0][:at] + forged + entries[0][at + 1:]]

    files.read_range = resigned  # type: ignore[method-assign]
    with pytest.raises(LedgerError, match=f"signature transaction at {signature} read from the ledger files is "
                                          "not the one this node verified"):
        ledger.receipt(target)


def test_a_ledger_signing_every_write_does_not_grow_with_its_signatures(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """At light load a node signs almost every write; each signature's record (the node's signature, the COSE
    one, the root) is about 700 B, so past the retained records they are dropped too and read back from the
    files when a receipt needs one; 32 B of each signature's digest stay. 600 signed writes over a few keys, 25
    records retained: far below 907 B a signed write (about 250 B measured: the open chunk's entry positions, freed
    when the chunk ends, the entry sizes and the signatures' digests), and the receipts of the oldest still verify."""
    import gc
    import tracemalloc

    from ledger.bootstrap import start_new_service
    from ledger.genesis import GenesisMember
    from ledger.identity import PartyIdentity

    member = PartyIdentity.create("m")
    ledger = start_new_service(str(tmp_path_factory.mktemp("signing") / "ledger"), [GenesisMember(member.pem)], "c")
    ledger.retained_records = 25

    def signed_write(i: int) -> None:
        tx = ledger.begin()
        tx.put("app.secret", b"k%d" % (i % 4), b"v%d" % i)
        ledger.commit(tx)
        ledger.emit_signature()
        ledger.flush()
        ledger.commit_to(ledger.last_signature_seqno)

    for i in range(100):
        signed_write(i)
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(100, 700):
        signed_write(i)
    gc.collect()
    per_write = (tracemalloc.get_traced_memory()[0] - before) / 600
    tracemalloc.stop()
    assert per_write < 400, per_write
    service_cert = ledger.service.cert
    for seqno in (3, 4, 5, 6):  # a write and a signature among the oldest, their records long dropped
        ccf_check_json_receipt(ledger.receipt(seqno), service_cert)
    assert ledger.is_signature(4) != ledger.is_signature(5)


def _write(ledger: ServiceLedger, key: bytes) -> None:
    tx = ledger.begin()
    tx.put("app.x", key, b"v")
    ledger.commit(tx)


def _sign_and_commit(ledger: ServiceLedger) -> None:
    ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_signature_seqno)


def test_a_replayed_ledger_serves_the_same_receipts_once_their_records_are_dropped(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A node that replayed its ledger (a restart, or a backup) records each signature with the signer's endorsed
    certificate at that point, which is not the one in the entry once governance re-endorsed the node. After the
    records are dropped, a receipt read back from the files still names the certificate it named before."""
    from ledger.bootstrap import start_new_service
    from ledger.files import LedgerFiles
    from ledger.genesis import GenesisMember
    from ledger.identity import PartyIdentity
    from ledger.replay import recover
    from ledger.tables import NODES_ENDORSED_CERTS

    directory = str(tmp_path_factory.mktemp("replayed") / "ledger")
    ledger = start_new_service(directory, [GenesisMember(PartyIdentity.create("m").pem)], "c")
    node = ledger.node
    renewed = endorse(ledger.service.key, ledger.service.cert, node.key.public_key(), "CCF Node", days=30)
    ledger.commit_writes({NODES_ENDORSED_CERTS: {node.node_id.encode(): cert_pem(renewed).encode()}})
    for i in range(5):
        _write(ledger, b"k%d" % i)
    _sign_and_commit(ledger)
    assert ledger.files is not None
    ledger.files.close()

    files, _ = LedgerFiles.open(directory)
    replayed = recover(files, secrets=ledger.secrets, node=node, service=ledger.service)
    replayed.commit_to(replayed.last_signature_seqno)
    old = range(1, replayed.last_signature_seqno + 1)
    before = {s: replayed.receipt(s) for s in old}
    assert before[old[-1]]["cert"] == cert_pem(renewed) != node.pem  # not the certificate in the entry
    replayed.retained_records = 3
    for i in range(20):
        _write(replayed, b"j%d" % i)
        _sign_and_commit(replayed)
    assert replayed.merkle.first_retained > old[-1]
    assert {s: replayed.receipt(s) for s in old} == before


def test_a_ledger_from_a_snapshot_gives_the_leaves_its_snapshot_tree_holds(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tree a snapshot carries holds leaves from before the ledger's first transaction (back to the signature
    before the snapshot's); `leaf` serves them as the full ledger does, and refuses what neither holds."""
    from ledger.bootstrap import start_new_service
    from ledger.errors import LedgerError
    from ledger.genesis import GenesisMember
    from ledger.identity import PartyIdentity

    base = tmp_path_factory.mktemp("snapshot_leaves")
    ledger = start_new_service(str(base / "ledger"), [GenesisMember(PartyIdentity.create("m").pem)], "c",
                               snapshot_dir=str(base / "snapshots"))
    for i in range(6):
        tx = ledger.begin()
        tx.put("public:app.x", b"k%d" % i, b"v")
        ledger.commit(tx)
        if i == 2:
            ledger.emit_signature()
    ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(ledger.last_signature_seqno)
    seqno, serialise = ledger.snapshot_job()
    resumed = ServiceLedger.from_snapshot(serialise(), secrets=ledger.secrets, node=ledger.node,
                                          service=ledger.service, files=None)
    held = range(resumed.merkle.first_retained, seqno + 1)
    assert held.start < seqno and [resumed.leaf(s) for s in held] == [ledger.leaf(s) for s in held]
    with pytest.raises(LedgerError):
        resumed.leaf(held.start - 1)
