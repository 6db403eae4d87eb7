"""The auditor on a ledger that spans disaster recoveries (`scripts/audit.py ledger` and `report`).

A service A is built on disk (opened, private and public writes, a rekey, signatures), then recovered in
process as `network/host/node.py` `_start_recovery` does it (the files replayed public-only, a new identity, the
create transaction in a new chunk in the view after next, its signature), and the recovered service goes on as
`network/enclave/recovery.py` drives it (WaitingForRecoveryShares, then Open with the secret chain continued); B is then
recovered the same way into C. The auditor is given only the newest certificate and must follow the previous
identities back, refuse an unrelated or an older certificate (unless --prefix), refuse a recovery that names
the wrong previous identity, and show each recovery as an event in the report.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from ledger.audit import TRUST_GIVEN, TRUST_NAMED, TRUST_NOT_SIGNED, audit_ledger
from ledger.audit_secrets import dump_secrets
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.errors import VerificationError
from ledger.files import LedgerFiles
from ledger.framing import FLAG_FORCE_CHUNK_BEFORE
from ledger.genesis import GenesisMember, GenesisNode, NodeNetwork, VirtualQuote
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, cert_id, cert_pem
from ledger.kv import WriteSet
from ledger.recovery import recovery_create_writes, replay_public
from ledger.secrets import LedgerSecret, LedgerSecrets, opening_secret_record, recovery_secret_record
from ledger.service_ledger import ServiceLedger
from ledger.tables import HISTORICAL_SECRETS, PREVIOUS_SERVICE_IDENTITY, SERVICE_INFO, SINGLETON_KEY, dump_json
from tests.ccf_tools import assert_read_ledger_accepts
from tests.ledger_helpers import flip_byte, sign_and_commit
from tests.unit.test_audit_cli import one_error_line, run

pytestmark = pytest.mark.unit

CONSTITUTION = "export function validate(input) { return { valid: true }; }"
CHUNK_SIZE = 2500
_NODE_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # slow to make: one for every node
_NODE_RSA_PEM = _NODE_RSA.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo).decode()
_MEMBER = PartyIdentity.create("member0")


@dataclass
class Service:
    """One service of the ledger: its identity, its first node, the secrets it wrote with, where it starts."""

    identity: ServiceIdentity
    node: NodeIdentity
    secrets: list[LedgerSecret]
    first_seqno: int  # its genesis, or its recovery (create) transaction
    first_txid: str
    recovery_count: int

    @property
    def fingerprint(self) -> str:
        return cert_id(self.identity.cert)


@dataclass
class Built:
    directory: str
    services: list[Service] = field(default_factory=list)
    last_seqno: int = 0

    def cert_file(self, index: int, tmp: Path) -> str:
        path = tmp / f"service{index}_cert.pem"
        path.write_text(self.services[index].identity.pem)
        return str(path)

    def secrets_file(self, tmp: Path) -> str:
        path = tmp / "secrets.json"
        path.write_bytes(dump_secrets(LedgerSecrets([s for service in self.services for s in service.secrets])))
        return str(path)


def _writes(ledger: ServiceLedger, n: int, tag: str) -> None:
    for i in range(n):
        tx = ledger.begin()
        tx.put("app.private", b"k%d" % (i % 3), f"{tag} private {i} ".encode() + b"." * 80)
        tx.put("public:app.log", b"p%d" % (i % 4), f"{tag} public {i}".encode())
        ledger.commit(tx)
        if i % 4 == 3:
            ledger.emit_signature()


def _service_info(ledger: ServiceLedger, status: str) -> bytes:
    info = ledger.read_tx().get_json(SERVICE_INFO, SINGLETON_KEY)
    return dump_json({**info, "status": status})


def start_service(directory: str) -> Built:
    """Service A: genesis, opened (the secret chain started), writes, a rekey, more writes, all signed."""
    node = NodeIdentity.create()
    ledger = start_new_service(directory, [GenesisMember(_MEMBER.pem, member_data={"name": "member0"})],
                               CONSTITUTION, node=NodeKeys(node, _NODE_RSA), chunk_size=CHUNK_SIZE)
    ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: _service_info(ledger, "Open")},
                          HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(opening_secret_record(ledger.secrets.latest))}})
    _writes(ledger, 10, "A")
    ledger.rekey()
    _writes(ledger, 6, "A")
    sign_and_commit(ledger)
    assert ledger.files is not None
    ledger.files.close()
    built = Built(directory)
    built.services.append(Service(ledger.service, ledger.node, ledger.secrets.all(), 1, str(ledger.txid(1)), 0))
    built.last_seqno = ledger.last_seqno
    return built


def recover(built: Built, *, mutate: Callable[[WriteSet], None] | None = None, sign: bool = True,
            after: Callable[[ServiceLedger, Service], None] | None = None) -> Service:
    """What `_start_recovery` does with the files of `built` (whose newest service is lost), then the recovered
    service's life: opened by the members, shares, the private replay, Open. `mutate` changes the create
    transaction's writes before they are written; without `sign` the files end with the create transaction."""
    previous = built.services[-1]
    files, _ = LedgerFiles.open(built.directory)
    service = ServiceIdentity.create()
    identity = NodeIdentity.create().endorsed_by(service)
    public = replay_public(files, node=identity, service=service, previous_service_cert=previous.identity.cert,
                           chunk_size=CHUNK_SIZE)
    ledger = public.ledger
    secret = LedgerSecret.create(ledger.last_seqno + 1)
    ledger.secrets.add(secret)
    ledger.set_view(ledger.view + 2)
    seqno = ledger.last_seqno + 1
    node = GenesisNode(identity, VirtualQuote("00" * 32, "00" * 32, identity.node_id), _NODE_RSA_PEM, NodeNetwork())
    writes = recovery_create_writes(ledger.read_tx(), service, node, f"{ledger.view}.{seqno}")
    if mutate is not None:
        mutate(writes)
    ledger.commit_writes(writes, flags=FLAG_FORCE_CHUNK_BEFORE)
    new = Service(service, identity, [secret], seqno, str(ledger.txid(seqno)), previous.recovery_count + 1)
    built.services.append(new)
    if sign:
        ledger.emit_signature()
        ledger.flush()
        ledger.commit_to(ledger.last_seqno)
        _writes(ledger, 3, f"recovered {new.recovery_count}")
        # the members open it with the previous identity: WaitingForRecoveryShares
        ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: _service_info(ledger, "WaitingForRecoveryShares")}})
        ledger.emit_signature()
        # the shares gave the previous secrets back, the private replay is done: Open, the secret chain continued
        state = ledger.read_tx()
        record = recovery_secret_record(previous.secrets[-1], secret,
                                        state.get_version(HISTORICAL_SECRETS, SINGLETON_KEY) or None)
        ledger.commit_writes({SERVICE_INFO: {SINGLETON_KEY: _service_info(ledger, "Open")},
                              HISTORICAL_SECRETS: {SINGLETON_KEY: dump_json(record)}})
        _writes(ledger, 6, f"recovered {new.recovery_count}")
        if after is not None:
            after(ledger, new)
        sign_and_commit(ledger)
    ledger.flush()
    built.last_seqno = ledger.last_seqno
    files.close()
    return new


@pytest.fixture(scope="module")
def two_recoveries(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A's ledger recovered into B, B's into C: one directory, three service identities. Read only."""
    built = start_service(str(tmp_path_factory.mktemp("two-recoveries") / "ledger"))
    recover(built)
    recover(built)
    return built


def copy_of(built: Built, tmp_path: Path) -> Built:
    target = str(tmp_path / "ledger-copy")
    shutil.copytree(built.directory, target)
    return Built(target, list(built.services), built.last_seqno)


def chunk_and_offset(directory: str, seqno: int) -> tuple[str, int]:
    files, _ = LedgerFiles.open(directory)
    try:
        raw = files.read(seqno)
        chunk = files.chunk_file_of(seqno)
    finally:
        files.close()
    with open(chunk, "rb") as f:
        return chunk, f.read().index(raw)


# --- the ledger spanning two recoveries verifies with the newest certificate ---------------------------


def test_the_test_ledger_is_what_a_recovered_node_leaves(two_recoveries: Built) -> None:
    """read_ledger.py (the ccf package's judge) accepts it; each recovered service starts a chunk of its own."""
    a, b, c = two_recoveries.services
    assert_read_ledger_accepts(two_recoveries.directory, "--uncommitted")
    starts = sorted(int(name.split("_")[1].split("-")[0]) for name in os.listdir(two_recoveries.directory))
    assert b.first_seqno in starts and c.first_seqno in starts
    assert a.first_txid.split(".")[0] < b.first_txid.split(".")[0] < c.first_txid.split(".")[0]


def test_two_recoveries_verify_with_the_newest_certificate_and_list_the_epochs(two_recoveries: Built,
                                                                                tmp_path: Path) -> None:
    a, b, c = two_recoveries.services
    d = two_recoveries.directory
    code, out, err = run("ledger", d, "--service-cert", two_recoveries.cert_file(2, tmp_path), "--json")
    assert code == 0, err
    (one,) = orjson.loads(out)["ledgers"]
    assert one["ok"] is True and one["service_cert_checked"] is True and one["not_audited_from"] is None
    assert one["last_seqno"] == two_recoveries.last_seqno
    epochs = one["epochs"]
    assert [e["index"] for e in epochs] == [0, 1, 2]
    assert [e["first_seqno"] for e in epochs] == [1, b.first_seqno, c.first_seqno]
    assert [e["last_seqno"] for e in epochs] == [b.first_seqno - 1, c.first_seqno - 1, two_recoveries.last_seqno]
    assert [e["first_txid"] for e in epochs] == [a.first_txid, b.first_txid, c.first_txid]
    assert [e["cert_fingerprint"] for e in epochs] == [a.fingerprint, b.fingerprint, c.fingerprint]
    assert [e["previous_cert_fingerprint"] for e in epochs] == [None, a.fingerprint, b.fingerprint]
    assert [e["recovery_count"] for e in epochs] == [0, 1, 2]
    assert [e["trust"] for e in epochs] == [TRUST_NAMED, TRUST_NAMED, TRUST_GIVEN]
    assert all(e["signatures"] > 0 for e in epochs)
    assert sum(e["signatures"] for e in epochs) == one["signatures"]
    assert epochs[-1]["last_verified_txid"] == one["last_verified_txid"]

    code, out, err = run("ledger", d, "--service-cert", two_recoveries.cert_file(2, tmp_path))
    assert code == 0, err
    assert "service identities: 3 (2 recoveries): the newest is the trusted certificate" in out
    assert f"recovery 2 at {c.first_txid}: seqnos {c.first_seqno}..{two_recoveries.last_seqno}" in out
    assert f"recovery 1 at {b.first_txid}: seqnos {b.first_seqno}..{c.first_seqno - 1}" in out


def test_with_the_secrets_every_private_domain_and_the_chain_across_recoveries_verify(two_recoveries: Built,
                                                                                     tmp_path: Path) -> None:
    d = two_recoveries.directory
    secrets = two_recoveries.secrets_file(tmp_path)
    code, out, err = run("ledger", d, "--service-cert", two_recoveries.cert_file(2, tmp_path), "--secrets", secrets,
                         "--json")
    assert code == 0, err
    assert orjson.loads(out)["ledgers"][0]["ledger_secrets"] == 4  # A's two, B's, C's
    # without the recovered service's own secret, its first entry does not decrypt
    partial = tmp_path / "partial.json"
    partial.write_bytes(dump_secrets(LedgerSecrets(two_recoveries.services[0].secrets)))
    code, _, err = run("ledger", d, "--secrets", str(partial))
    assert code == 1 and f"seqno {two_recoveries.services[1].first_seqno})" in one_error_line(err)


def test_without_a_certificate_the_epochs_are_listed_but_not_trusted(two_recoveries: Built) -> None:
    code, out, err = run("ledger", two_recoveries.directory, "--json")
    assert code == 0, err
    one = orjson.loads(out)["ledgers"][0]
    assert one["service_cert_checked"] is False
    assert [e["trust"] for e in one["epochs"]] == ["not_checked"] * 3
    code, out, _ = run("ledger", two_recoveries.directory)
    assert "service identities: 3 (2 recoveries), not checked against a trusted certificate" in out


# --- certificates that are not the newest ----------------------------------------------------------------


def test_an_unrelated_certificate_fails_naming_the_newest_identity(two_recoveries: Built, tmp_path: Path) -> None:
    c = two_recoveries.services[2]
    foreign = tmp_path / "foreign.pem"
    foreign.write_text(ServiceIdentity.create().pem)
    for extra in ([], ["--prefix"]):
        code, out, err = run("ledger", two_recoveries.directory, "--service-cert", str(foreign), *extra)
        assert code == 1, out
        line = one_error_line(err)
        assert "not the trusted one" in line and c.fingerprint in line, line
        assert "nor is any of the 2 identities before it" in line
        where = rf"\(file ledger_{c.first_seqno}-\d+\.committed, offset 8, seqno {c.first_seqno}\)$"
        assert re.search(where, line), line
    code, out, _ = run("ledger", two_recoveries.directory, "--service-cert", str(foreign), "--json")
    error = orjson.loads(out)["ledgers"][0]["error"]
    assert error["seqno"] == c.first_seqno and error["file"].startswith(f"ledger_{c.first_seqno}-")


@pytest.mark.parametrize("index", [0, 1])
def test_an_older_certificate_fails_unless_prefix_which_audits_only_its_part(two_recoveries: Built, tmp_path: Path,
                                                                           index: int) -> None:
    services = two_recoveries.services
    after = services[index + 1]
    cert = two_recoveries.cert_file(index, tmp_path)
    code, _, err = run("ledger", two_recoveries.directory, "--service-cert", cert)
    assert code == 1
    line = one_error_line(err)
    assert "the newest service identity in the ledger is not the trusted one" in line
    assert f"before the recovery at seqno {after.first_seqno}" in line and "--prefix" in line
    assert services[2].fingerprint in line and f"seqno {after.first_seqno})" in line

    code, out, err = run("ledger", two_recoveries.directory, "--service-cert", cert, "--prefix", "--json")
    assert code == 0, err
    one = orjson.loads(out)["ledgers"][0]
    assert one["last_seqno"] == after.first_seqno - 1 and one["not_audited_from"] == after.first_seqno
    assert one["transactions"] == after.first_seqno - 1
    assert [e["cert_fingerprint"] for e in one["epochs"]] == [s.fingerprint for s in services[: index + 1]]
    assert [e["trust"] for e in one["epochs"]] == [TRUST_NAMED] * index + [TRUST_GIVEN]
    code, out, _ = run("ledger", two_recoveries.directory, "--service-cert", cert, "--prefix")
    assert code == 0 and f"not audited (--prefix): seqnos from {after.first_seqno} on" in out
    # --prefix with the newest certificate is the whole audit
    code, out, _ = run("ledger", two_recoveries.directory, "--service-cert", two_recoveries.cert_file(2, tmp_path),
                       "--prefix", "--json")
    assert code == 0 and orjson.loads(out)["ledgers"][0]["not_audited_from"] is None


def test_prefix_without_a_certificate_is_a_usage_error(two_recoveries: Built) -> None:
    assert run("ledger", two_recoveries.directory, "--prefix")[0] == 2


def test_prefix_ignores_damage_after_the_given_identity_but_not_before(two_recoveries: Built, tmp_path: Path) -> None:
    copy = copy_of(two_recoveries, tmp_path)
    a, b, c = copy.services
    chunk, offset = chunk_and_offset(copy.directory, c.first_seqno + 2)
    flip_byte(chunk, offset + 60)
    assert run("ledger", copy.directory, "--service-cert", copy.cert_file(2, tmp_path))[0] == 1
    code, _, err = run("ledger", copy.directory, "--service-cert", copy.cert_file(1, tmp_path), "--prefix")
    assert code == 0, err
    chunk, offset = chunk_and_offset(copy.directory, b.first_seqno + 2)
    flip_byte(chunk, offset + 60)
    code, _, err = run("ledger", copy.directory, "--service-cert", copy.cert_file(1, tmp_path), "--prefix")
    assert code == 1 and f"seqno {b.first_seqno + 2} at offset {offset}" in one_error_line(err)
    code, _, err = run("ledger", copy.directory, "--service-cert", copy.cert_file(0, tmp_path), "--prefix")
    assert code == 0, err


# --- recoveries that do not name the previous identity, and other forgeries --------------------------------


def _named(pem: str) -> Callable[[WriteSet], None]:
    def mutate(writes: WriteSet) -> None:
        writes[PREVIOUS_SERVICE_IDENTITY] = {SINGLETON_KEY: dump_json(pem)}
    return mutate


def _info(**changes: Any) -> Callable[[WriteSet], None]:
    def mutate(writes: WriteSet) -> None:
        raw = writes[SERVICE_INFO][SINGLETON_KEY]
        assert raw is not None
        info = orjson.loads(raw)
        writes[SERVICE_INFO] = {SINGLETON_KEY: dump_json({**info, **changes})}
    return mutate


def _without_previous_identity(writes: WriteSet) -> None:
    del writes[PREVIOUS_SERVICE_IDENTITY]


@pytest.mark.parametrize("case,mutate,message", [
    ("a foreign previous identity", _named(ServiceIdentity.create().pem),
     "names as previous service identity a certificate"),
    ("no previous identity", _without_previous_identity, "changes at seqno {create} without a recovery"),
    ("recovery_count not one more", _info(recovery_count=5), "sets recovery_count 5, expected 1"),
    ("status not Recovering", _info(status="Open"), "sets the service status Open, not Recovering"),
    ("previous_service_identity_version", _info(previous_service_identity_version=2),
     "names previous_service_identity_version 2, but the previous service info was written at seqno 3"),
    ("current_service_create_txid", _info(current_service_create_txid="2.1"),
     "names current_service_create_txid '2.1', not its own transaction id"),
])
def test_a_recovery_that_does_not_continue_the_previous_identity_fails(tmp_path: Path, case: str,
                                                                     mutate: Callable[[WriteSet], None],
                                                                     message: str) -> None:
    built = start_service(str(tmp_path / "ledger"))
    b = recover(built, mutate=mutate)
    expected = message.format(create=b.first_seqno)
    for cert in ([], ["--service-cert", built.cert_file(1, tmp_path)]):
        code, out, err = run("ledger", built.directory, *cert)
        assert code == 1, (case, out)
        line = one_error_line(err)
        assert expected in line, (case, line)
        assert line.endswith(f"offset 8, seqno {b.first_seqno})"), (case, line)  # the recovery transaction
    # what the previous service signed is still its own: the prefix verifies with its certificate
    code, _, err = run("ledger", built.directory, "--service-cert", built.cert_file(0, tmp_path), "--prefix")
    assert code == 0, err


def test_the_recovery_transaction_is_covered_by_the_new_services_signature(tmp_path: Path) -> None:
    """A byte flipped in the recovery transaction: in the recorded previous certificate it no longer names the
    previous identity; anywhere else (a retired node's status) it breaks the root the recovered service signed,
    and the auditor names the recovery transaction as the altered entry."""
    built = start_service(str(tmp_path / "ledger"))
    b = recover(built)
    pristine = str(tmp_path / "pristine")
    shutil.copytree(built.directory, pristine)
    cert = built.cert_file(1, tmp_path)
    chunk, offset = chunk_and_offset(built.directory, b.first_seqno)
    with open(chunk, "rb") as f:
        data = f.read()
    pem_line = cert_pem(built.services[0].identity.cert).splitlines()[5]
    flip_byte(chunk, data.index(pem_line.encode(), offset) + 10)
    code, _, err = run("ledger", built.directory, "--service-cert", cert)
    line = one_error_line(err)
    # the flipped character may still be base64 (another certificate, not the previous identity) or not (a PEM
    # that does not parse): either way the recovery transaction is refused, and named
    assert code == 1, line
    assert f"the recovery at seqno {b.first_seqno} names as previous service identity" in line \
        or ("malformed service table" in line and f"seqno {b.first_seqno})" in line), line

    shutil.rmtree(built.directory)
    shutil.copytree(pristine, built.directory)
    flip_byte(chunk, data.index(b"Retired", offset))
    code, out, err = run("ledger", built.directory, "--service-cert", cert, "--json")
    assert code == 1, err
    error = orjson.loads(out)["ledgers"][0]["error"]
    assert error["altered"] == {"file": os.path.basename(chunk), "offset": offset, "seqno": b.first_seqno}
    assert error["seqno"] == b.first_seqno + 1  # the recovered service's first signature


def test_an_old_node_signing_after_the_recovery_is_refused(tmp_path: Path) -> None:
    built = start_service(str(tmp_path / "ledger"))
    old_node = built.services[0].node

    def old_node_signs(ledger: ServiceLedger, _: Service) -> None:
        ledger.node = old_node  # still in endorsed_certificates (Retired): endorsed by A, not by B
        ledger.emit_signature()

    recover(built, after=old_node_signs)
    code, _, err = run("ledger", built.directory)
    line = one_error_line(err)
    assert code == 1 and f"signing node {old_node.node_id} is not endorsed by the service identity in force" in line
    assert f"set at seqno {built.services[1].first_seqno}" in line


def test_a_forged_continuation_of_the_ledger_is_not_the_trusted_service(tmp_path: Path) -> None:
    """Anyone holding a copy can 'recover' it under an identity of their own; the auditor, trusting the real
    service's certificate, refuses the whole ledger, and --prefix still verifies the genuine part."""
    built = start_service(str(tmp_path / "ledger"))
    genuine = built.cert_file(0, tmp_path)
    forged = recover(built)
    code, _, err = run("ledger", built.directory, "--service-cert", genuine)
    assert code == 1 and f"before the recovery at seqno {forged.first_seqno}" in one_error_line(err)
    code, _, err = run("ledger", built.directory, "--service-cert", genuine, "--prefix")
    assert code == 0, err


def test_a_recovery_no_signature_covers_yet(tmp_path: Path) -> None:
    """The create transaction written but not its signature (a torn write): nothing vouches for the new
    identity yet. The previous certificate verifies what was signed; the new one has nothing to verify."""
    built = start_service(str(tmp_path / "ledger"))
    b = recover(built, sign=False)
    code, out, err = run("ledger", built.directory, "--uncommitted", "--service-cert", built.cert_file(0, tmp_path),
                         "--json")
    assert code == 0, err
    one = orjson.loads(out)["ledgers"][0]
    assert [e["trust"] for e in one["epochs"]] == [TRUST_GIVEN, TRUST_NOT_SIGNED]
    assert one["last_seqno"] == b.first_seqno and one["last_verified_txid"].endswith(f".{b.first_seqno - 1}")
    code, _, err = run("ledger", built.directory, "--uncommitted", "--service-cert", built.cert_file(1, tmp_path))
    line = one_error_line(err)
    assert code == 1 and f"set by the recovery at seqno {b.first_seqno}, which no signature covers yet" in line


def test_the_library_call_raises_with_the_same_reasons(two_recoveries: Built) -> None:
    a, _, c = two_recoveries.services
    report = audit_ledger([two_recoveries.directory], service_cert=c.identity.cert, workers=1)
    assert [e.trust for e in report.epochs] == [TRUST_NAMED, TRUST_NAMED, TRUST_GIVEN]
    assert len(report.recoveries) == 2
    with pytest.raises(VerificationError, match="not the trusted one"):
        audit_ledger([two_recoveries.directory], service_cert=a.identity.cert)
    prefix = audit_ledger([two_recoveries.directory], service_cert=a.identity.cert, prefix=True, workers=2)
    assert prefix.not_audited_from == two_recoveries.services[1].first_seqno


# --- the report ------------------------------------------------------------------------------------------


def test_report_json_and_html_show_each_recovery(two_recoveries: Built, tmp_path: Path) -> None:
    a, b, c = two_recoveries.services
    cert = two_recoveries.cert_file(2, tmp_path)
    code, out, err = run("report", two_recoveries.directory, "--service-cert", cert, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["ok"] is True and report["verdict"]["ok"] is True
    assert report["counts"]["recovery"] == 2
    assert report["recoveries"] == [
        {"seqno": b.first_seqno, "txid": b.first_txid, "recovery_count": 1, "previous_cert_fingerprint": a.fingerprint,
         "named_previous_fingerprint": a.fingerprint, "cert_fingerprint": b.fingerprint,
         "previous_service_identity_version": report["recoveries"][0]["previous_service_identity_version"]},
        {"seqno": c.first_seqno, "txid": c.first_txid, "recovery_count": 2, "previous_cert_fingerprint": b.fingerprint,
         "named_previous_fingerprint": b.fingerprint, "cert_fingerprint": c.fingerprint,
         "previous_service_identity_version": report["recoveries"][1]["previous_service_identity_version"]},
    ]
    events = [e for e in report["events"] if e["kind"] == "recovery"]
    assert [e["seqno"] for e in events] == [b.first_seqno, c.first_seqno]
    assert all(e["file"].startswith(f"ledger_{e['seqno']}-") and e["offset"] == 8 for e in events)
    assert [e["data"]["txid"] for e in events] == [b.first_txid, c.first_txid]
    assert "recovery_count 2" in events[1]["title"] and b.fingerprint in events[1]["detail"]
    assert [e["trust"] for e in report["epochs"]] == [TRUST_NAMED, TRUST_NAMED, TRUST_GIVEN]
    assert [e["seqno"] for e in report["events"]] == sorted(e["seqno"] for e in report["events"])

    page_path = tmp_path / "report.html"
    code, out, err = run("report", two_recoveries.directory, "--service-cert", cert, "--out", str(page_path))
    assert code == 0, err
    assert "2 recoveries" in out
    page = page_path.read_text(encoding="utf-8")
    assert page.count('<tr class="ev ev-recovery"') == 2
    for service in (b, c):
        assert '<tr class="ev ev-recovery" id="ev-' in page and f'data-seqno="{service.first_seqno}"' in page
        assert f"service recovered at {service.first_txid}" in page
    assert page.count('<tr class="identity"') == 3
    for service in (a, b, c):
        assert service.fingerprint in page
    assert "each of the 2 recoveries names the one before it" in page


def test_report_of_a_wrong_previous_identity_marks_the_recovery_and_exits_1(tmp_path: Path) -> None:
    built = start_service(str(tmp_path / "ledger"))
    foreign = ServiceIdentity.create()
    b = recover(built, mutate=_named(foreign.pem))
    code, out, err = run("report", built.directory, "--json", "--out", str(tmp_path / "r.html"))
    assert code == 1 and "report written to" in one_error_line(err)
    report = orjson.loads(out)
    assert report["ok"] is False and report["verdict"]["error"]["seqno"] == b.first_seqno
    (recovery,) = report["recoveries"]
    assert recovery["named_previous_fingerprint"] == cert_id(foreign.cert) != recovery["previous_cert_fingerprint"]
    failure = [e for e in report["events"] if e["kind"] == "failure"]
    assert [e["seqno"] for e in failure] == [b.first_seqno]
    page = (tmp_path / "r.html").read_text(encoding="utf-8")
    assert "Verification FAILED" in page and "another previous service identity" in page


def test_report_needs_out_or_json(two_recoveries: Built) -> None:
    assert run("report", two_recoveries.directory)[0] == 2
