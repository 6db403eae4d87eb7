"""The auditor's command line (`scripts/audit.py`) on small ledgers written by the ledger core: what passes,
and every error path of each subcommand (exit codes, one-line messages naming file, offset and seqno)."""

from __future__ import annotations

import base64
import copy
import hashlib
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ccf.cose
import orjson
import pytest

from ledger.audit_secrets import dump_secrets, load_secrets
from ledger.errors import LedgerSecretError
from ledger.identity import NodeIdentity, ServiceIdentity, cert_pem
from ledger.secrets import LedgerSecret, LedgerSecrets
from ledger.service_ledger import ServiceLedger
from scripts import audit
from tests.ledger_helpers import flip_byte as flip
from tests.ledger_helpers import sign_and_commit

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "audit.py"
PROPOSAL_ID = "<img src=x onerror=alert(1)>"


def build(new_service: Callable[..., ServiceLedger], n: int = 30) -> ServiceLedger:
    """Public and private writes, claims, a rekey, signatures every 7 writes, a governance record, small
    chunks; everything committed and every chunk complete."""
    ledger = new_service(chunk_size=3000)
    for i in range(n):
        tx = ledger.begin()
        tx.put("public:log" if i % 2 else "log", b"%d" % i, b"x" * 150)
        if i % 5 == 0:
            tx.set_claims_digest(hashlib.sha256(b"msg %d" % i).digest())
        if i == 3:
            tx.put("public:ccf.gov.proposals", PROPOSAL_ID.encode(),
                   orjson.dumps({"actions": [{"name": "trigger_ledger_rekey"}]}))
            tx.put("public:ccf.gov.proposals_info", PROPOSAL_ID.encode(),
                   orjson.dumps({"proposer_id": "m0", "state": "Accepted", "ballots": {}, "final_votes": {"m0": True}}))
        ledger.commit(tx)
        if i % 7 == 6:
            ledger.emit_signature()
        if i == 15:
            ledger.rekey()
    sign_and_commit(ledger)
    assert ledger.files is not None
    return ledger


def run(*args: str) -> tuple[int, str, str]:
    """The CLI in this process (fast); exit code, stdout, stderr."""
    import contextlib
    import io

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = audit.main(list(args))
        except SystemExit as e:  # argparse
            code = int(e.code or 0)
    return code, out.getvalue(), err.getvalue()


def run_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


@pytest.fixture
def ledger(new_service: Callable[..., ServiceLedger]) -> ServiceLedger:
    return build(new_service)


@pytest.fixture
def service_pem(ledger: ServiceLedger, tmp_path: Path) -> str:
    path = tmp_path / "service_cert.pem"
    path.write_text(ledger.service.pem)
    return str(path)


def directory(ledger: ServiceLedger) -> str:
    assert ledger.files is not None
    return ledger.files.directory



def entry_offset(ledger: ServiceLedger, seqno: int) -> tuple[str, int]:
    assert ledger.files is not None
    chunk = ledger.files.chunk_file_of(seqno)
    with open(chunk, "rb") as f:
        return chunk, f.read().index(ledger.files.read(seqno))


def private_seqno(ledger: ServiceLedger) -> int:
    """A committed, non-signature transaction in the middle of the ledger."""
    return next(s for s in range(ledger.last_seqno // 2, ledger.last_seqno) if not ledger.is_signature(s))


# --- audit ledger ------------------------------------------------------------------------------------


def test_ledger_verifies_with_a_readable_summary_and_json(ledger: ServiceLedger, service_pem: str,
                                                          tmp_path: Path) -> None:
    d = directory(ledger)
    code, out, err = run("ledger", d, "--service-cert", service_pem)
    assert code == 0, err
    assert err == ""
    assert f"{d}: verified" in out
    assert f"{len(ledger.signature_seqnos())} signatures verified" in out
    assert f"the last one {ledger.txid(ledger.last_seqno)}" in out
    assert "service identity: the trusted certificate" in out

    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_bytes(dump_secrets(ledger.secrets))
    code, out, err = run("ledger", d, "--service-cert", service_pem, "--secrets", str(secrets_file), "--json")
    assert code == 0, err
    result = orjson.loads(out)
    assert result["ok"] is True
    (one,) = result["ledgers"]
    assert one["signatures"] == len(ledger.signature_seqnos())
    assert one["last_verified_txid"] == str(ledger.txid(ledger.last_seqno))
    assert one["last_seqno"] == ledger.last_seqno
    assert one["ledger_secrets"] == 2 and one["service_cert_checked"] is True
    assert one["bytes"] == sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def test_verify_ledger_script_is_still_the_same_audit(ledger: ServiceLedger) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT.parent / "verify_ledger.py"), directory(ledger)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    old = orjson.loads(proc.stdout)
    code, out, _ = run("ledger", directory(ledger), "--as-one", "--json")
    assert code == 0
    new = orjson.loads(out)["ledgers"][0]
    assert {k: new[k] for k in old} == old


def test_a_flipped_byte_fails_naming_the_entry_file_offset_and_seqno(ledger: ServiceLedger) -> None:
    target = private_seqno(ledger)
    chunk, offset = entry_offset(ledger, target)
    flip(chunk, offset + 60)  # inside the entry's public header (claims or commit evidence digest)
    proc = run_process("ledger", directory(ledger))  # a real process: real exit code and stderr
    assert proc.returncode == 1
    line = one_error_line(proc.stderr)
    name = os.path.basename(chunk)
    assert name in line and f"seqno {target} at offset {offset} of {name}" in line
    code, out, err = run("ledger", directory(ledger), "--json")
    assert code == 1
    error = orjson.loads(out)["ledgers"][0]["error"]
    assert error["altered"] == {"file": name, "offset": offset, "seqno": target}
    assert error["file"] == name and error["seqno"] > target and error["offset"] is not None


def test_with_the_secrets_damage_to_a_private_domain_is_named_exactly(ledger: ServiceLedger, tmp_path: Path) -> None:
    target = private_seqno(ledger)
    chunk, offset = entry_offset(ledger, target)
    assert ledger.files is not None
    flip(chunk, offset + len(ledger.files.read(target)) - 3)  # the private ciphertext
    secrets_file = tmp_path / "secrets.json"
    secrets_file.write_bytes(dump_secrets(ledger.secrets))
    code, _, err = run("ledger", directory(ledger), "--secrets", str(secrets_file))
    assert code == 1
    line = one_error_line(err)
    assert "GCM tag" in line and f"offset {offset}, seqno {target})" in line


def test_secrets_that_are_not_the_ledgers_are_refused(ledger: ServiceLedger, tmp_path: Path) -> None:
    d = directory(ledger)
    wrong = tmp_path / "wrong.json"
    wrong.write_bytes(dump_secrets(LedgerSecrets([LedgerSecret.create(1)])))
    code, _, err = run("ledger", d, "--secrets", str(wrong))
    assert code == 1 and "GCM tag" in one_error_line(err) and "seqno 1)" in err
    first_only = tmp_path / "first.json"
    first_only.write_bytes(dump_secrets(LedgerSecrets(ledger.secrets.all()[:1])))
    code, _, err = run("ledger", d, "--secrets", str(first_only))
    rekey = ledger.secrets.all()[1].start - 1
    line = one_error_line(err)
    # the first entry under the missing secret fails its GCM tag (or the rekey record names the missing secret)
    assert code == 1 and (f"rekeys at {rekey}" in line or f"seqno {rekey + 1})" in line), line


@pytest.mark.parametrize("content,message", [
    (b"{not json", "not JSON"),
    (b"{}", "non-empty JSON array"),
    (b'[{"start": 1}]', 'exactly the keys "start" and "secret"'),
    (b'[{"start": 0, "secret": "AA=="}]', "start must be a seqno"),
    (b'[{"start": 1, "secret": "!!"}]', "not base64"),
    (b'[{"start": 1, "secret": "AAAA"}]', "32 bytes"),
])
def test_a_malformed_secrets_file_is_one_line(ledger: ServiceLedger, tmp_path: Path, content: bytes,
                                              message: str) -> None:
    path = tmp_path / "secrets.json"
    path.write_bytes(content)
    code, _, err = run("ledger", directory(ledger), "--secrets", str(path))
    assert code == 1
    assert message in one_error_line(err) and str(path) in err
    with pytest.raises(LedgerSecretError):
        load_secrets(content)


def test_secrets_file_round_trips() -> None:
    secrets = LedgerSecrets([LedgerSecret.create(1), LedgerSecret.create(74)])
    again = load_secrets(dump_secrets(secrets))
    assert [(s.start, s.raw) for s in again.all()] == [(s.start, s.raw) for s in secrets.all()]
    with pytest.raises(LedgerSecretError, match="increase"):
        load_secrets(b'[{"start": 5, "secret": "%s"}, {"start": 5, "secret": "%s"}]'
                     % (base64.b64encode(bytes(32)), base64.b64encode(bytes(32))))


def test_missing_directory_bad_cert_and_foreign_cert(ledger: ServiceLedger, service_pem: str, tmp_path: Path) -> None:
    code, _, err = run("ledger", str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in one_error_line(err)
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run("ledger", str(empty))
    assert code == 1 and "no committed ledger chunks" in one_error_line(err)

    code, _, err = run("ledger", directory(ledger), "--service-cert", str(tmp_path / "missing.pem"))
    assert code == 1 and "cannot read service certificate" in one_error_line(err)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello")
    code, _, err = run("ledger", directory(ledger), "--service-cert", str(garbage))
    assert code == 1 and "is not a PEM certificate" in one_error_line(err)
    foreign = tmp_path / "foreign.pem"
    foreign.write_text(ServiceIdentity.create().pem)
    code, _, err = run("ledger", directory(ledger), "--service-cert", str(foreign))
    line = one_error_line(err)
    assert code == 1 and "not the trusted one" in line
    assert re.search(r"\(file ledger_1-\d+\.committed, offset \d+, seqno 1\)", line), line


def test_several_nodes_each_verified_and_each_failure_reported(ledger: ServiceLedger, tmp_path: Path) -> None:
    good = directory(ledger)
    bad = str(tmp_path / "node1")
    shutil.copytree(good, bad)
    chunks = sorted(f for f in os.listdir(bad) if f.endswith(".committed"))
    os.remove(os.path.join(bad, chunks[1]))
    code, out, err = run("ledger", good, bad)
    assert code == 1
    assert f"{good}: verified" in out and f"{bad}: FAILED" in out
    line = one_error_line(err)
    assert line.startswith(f"error: {bad}: ") and "not contiguous" in line
    code, out, _ = run("ledger", good, good, "--json")
    assert code == 0 and [x["ok"] for x in orjson.loads(out)["ledgers"]] == [True, True]


def test_progress_bar_only_when_asked_or_on_a_tty(ledger: ServiceLedger) -> None:
    code, _, err = run("ledger", directory(ledger))
    assert code == 0 and err == ""
    code, _, err = run("ledger", directory(ledger), "--progress", "--workers", "1")
    assert code == 0 and "100%" in err and "seqno" in err


def test_usage_errors_exit_2() -> None:
    assert run()[0] == 2
    assert run("ledger")[0] == 2
    assert run("receipt", "x.json")[0] == 2  # --service-cert is required
    assert run("frobnicate")[0] == 2


def test_uncommitted_chunks_are_only_read_when_asked(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = build(new_service)
    tx = ledger.begin()
    tx.put("log", b"late", b"y")
    ledger.commit(tx)
    ledger.emit_signature()
    ledger.flush()
    code, out, _ = run("ledger", directory(ledger), "--json")
    assert code == 0 and orjson.loads(out)["ledgers"][0]["last_seqno"] < ledger.last_seqno
    code, out, _ = run("ledger", directory(ledger), "--json", "--uncommitted")
    assert code == 0 and orjson.loads(out)["ledgers"][0]["last_seqno"] == ledger.last_seqno


# --- audit receipt -----------------------------------------------------------------------------------


def claims_seqno(ledger: ServiceLedger) -> int:
    return next(s for s in range(3, ledger.last_seqno) if not ledger.is_signature(s)
                and ledger.receipt(s)["leaf_components"]["claims_digest"] != "00" * 32)


def write_json(tmp_path: Path, receipt: Any, name: str = "receipt.json") -> str:
    path = tmp_path / name
    path.write_bytes(orjson.dumps(receipt))
    return str(path)


def test_json_receipt_verifies_and_binds_claims(ledger: ServiceLedger, service_pem: str, tmp_path: Path) -> None:
    seqno = claims_seqno(ledger)
    receipt = ledger.receipt(seqno)
    path = write_json(tmp_path, receipt)
    code, out, err = run("receipt", path, "--service-cert", service_pem)
    assert code == 0, err
    assert f"transaction {ledger.txid(seqno)} is in the ledger" in out and "not checked" in out
    claims = receipt["leaf_components"]["claims_digest"]
    code, out, _ = run("receipt", path, "--service-cert", service_pem, "--claims-digest", claims, "--json")
    assert code == 0 and orjson.loads(out)["claims_checked"] is True
    assert orjson.loads(out)["txid"] == str(ledger.txid(seqno))
    code, _, err = run("receipt", path, "--service-cert", service_pem, "--claims-digest", "00" * 32)
    assert code == 1 and "ReceiptClaimsMismatch" in one_error_line(err)
    code, _, err = run("receipt", path, "--service-cert", service_pem, "--claims-digest", "zz")
    assert code == 1 and "64 hex digits" in one_error_line(err)


def test_a_receipt_without_claims_digest_binds_the_message_given(ledger: ServiceLedger, service_pem: str,
                                                                 tmp_path: Path) -> None:
    """As the logging app's public historical receipts: the verifier recomputes the claim from the message."""
    seqno = claims_seqno(ledger)
    receipt = copy.deepcopy(ledger.receipt(seqno))
    del receipt["leaf_components"]["claims_digest"]
    message = next(f"msg {i}" for i in range(100)
                   if hashlib.sha256(f"msg {i}".encode()).hexdigest()
                   == ledger.receipt(seqno)["leaf_components"]["claims_digest"])
    path = write_json(tmp_path, {"msg": message, "receipt": receipt})
    code, out, err = run("receipt", path, "--service-cert", service_pem, "--claims-of-msg", message)
    assert code == 0, err
    code, _, err = run("receipt", path, "--service-cert", service_pem, "--claims-of-msg", "another message")
    assert code == 1 and "ReceiptSignatureError" in one_error_line(err)


def json_mutations(receipt: dict[str, Any], other_pem: str) -> dict[str, dict[str, Any]]:
    def flipped_hex(value: str) -> str:
        raw = bytearray(bytes.fromhex(value))
        raw[-1] ^= 0x01
        return raw.hex()

    out: dict[str, dict[str, Any]] = {}
    m = copy.deepcopy(receipt)
    sig = bytearray(base64.b64decode(m["signature"]))
    sig[-1] ^= 0x01
    m["signature"] = base64.b64encode(sig).decode()
    out["signature"] = m
    m = copy.deepcopy(receipt)
    side = next(iter(m["proof"][0]))
    m["proof"][0][side] = flipped_hex(m["proof"][0][side])
    out["proof element"] = m
    for component in ("write_set_digest", "claims_digest"):
        m = copy.deepcopy(receipt)
        m["leaf_components"][component] = flipped_hex(m["leaf_components"][component])
        out[component] = m
    m = copy.deepcopy(receipt)
    m["leaf_components"]["commit_evidence"] = m["leaf_components"]["commit_evidence"][:-1] + (
        "0" if m["leaf_components"]["commit_evidence"][-1] != "0" else "1")
    out["commit_evidence"] = m
    m = copy.deepcopy(receipt)
    m["cert"] = other_pem
    out["cert"] = m
    return out


def test_json_receipt_mutations_fail(ledger: ServiceLedger, service_pem: str, tmp_path: Path) -> None:
    receipt = ledger.receipt(private_seqno(ledger))
    other = NodeIdentity.create().endorsed_by(ledger.service)
    for name, mutated in json_mutations(receipt, cert_pem(other.cert)).items():
        code, _, err = run("receipt", write_json(tmp_path, mutated, f"{name}.json"), "--service-cert", service_pem)
        assert code == 1, name
        assert "receipt does not verify" in one_error_line(err), name


def test_cose_receipt_verifies_with_the_cli_and_ccf_and_mutations_fail(ledger: ServiceLedger, service_pem: str,
                                                                       tmp_path: Path) -> None:
    seqno = claims_seqno(ledger)
    cose = ledger.cose_receipt(seqno)
    path = tmp_path / "receipt.cose"
    path.write_bytes(cose)
    claims = bytes.fromhex(ledger.receipt(seqno)["leaf_components"]["claims_digest"])
    code, out, err = run("receipt", str(path), "--service-cert", service_pem, "--claims-digest", claims.hex())
    assert code == 0, err
    assert "(COSE)" in out and f"transaction {ledger.txid(seqno)}" in out
    ccf.cose.verify_receipt(cose, ledger.service.cert.public_key(), claims)
    # a flipped byte in the signature, in the inclusion proof (the last path hash), in the protected header
    for name, position in (("signature", len(cose) - 5), ("proof", cose.index(b"\x58\x20", 40) + 10),
                           ("kid", cose.index(ledger.service.kid.encode()) + 3)):
        mutated = bytearray(cose)
        mutated[position] ^= 0x01
        path.write_bytes(bytes(mutated))
        code, _, err = run("receipt", str(path), "--service-cert", service_pem)
        assert code == 1, name
        assert "receipt does not verify" in one_error_line(err), name
        with pytest.raises(Exception):  # noqa: B017 - ccf raises several types
            ccf.cose.verify_receipt(bytes(mutated), ledger.service.cert.public_key(), claims)


def test_receipt_error_paths(ledger: ServiceLedger, service_pem: str, tmp_path: Path) -> None:
    receipt_path = write_json(tmp_path, ledger.receipt(private_seqno(ledger)))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"cert": ')
    code, out, err = run("receipt", str(bad_json), "--service-cert", service_pem)
    assert code == 1 and "not a JSON receipt" in one_error_line(err)
    code, out, err = run("receipt", str(bad_json), "--service-cert", service_pem, "--json")
    assert code == 1 and orjson.loads(out)["ok"] is False
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    code, _, err = run("receipt", str(empty), "--service-cert", service_pem)
    assert code == 1 and "empty file" in one_error_line(err)
    garbage = tmp_path / "garbage.cose"
    garbage.write_bytes(b"\xff\x00garbage")
    code, _, err = run("receipt", str(garbage), "--service-cert", service_pem)
    assert code == 1 and "ReceiptFormatError" in one_error_line(err)
    code, _, err = run("receipt", str(tmp_path / "missing.json"), "--service-cert", service_pem)
    assert code == 1 and "cannot read receipt" in one_error_line(err)
    foreign = tmp_path / "foreign.pem"
    foreign.write_text(ServiceIdentity.create().pem)
    code, _, err = run("receipt", receipt_path, "--service-cert", str(foreign))
    assert code == 1 and "ReceiptEndorsementError" in one_error_line(err)
    code, _, err = run("receipt", receipt_path, "--service-cert", str(tmp_path / "nope.pem"))
    assert code == 1 and "cannot read service certificate" in one_error_line(err)
    proc = run_process("receipt", str(bad_json), "--service-cert", service_pem)
    assert proc.returncode == 1 and one_error_line(proc.stderr)


# --- audit compare -----------------------------------------------------------------------------------


def test_compare_identical_copies_and_a_planted_divergence(ledger: ServiceLedger, tmp_path: Path) -> None:
    a = directory(ledger)
    b = str(tmp_path / "node1")
    shutil.copytree(a, b)
    code, out, err = run("compare", a, b)
    assert code == 0, err
    assert f"seqnos 1..{ledger.last_seqno}" in out and "identical" in out
    target = private_seqno(ledger)
    chunk, offset = entry_offset(ledger, target)
    flip(os.path.join(b, os.path.basename(chunk)), offset + 50)
    code, out, err = run("compare", a, b, "--json")
    assert code == 1
    line = one_error_line(err)
    assert f"differ at seqno {target}" in line and f"{os.path.basename(chunk)} offset {offset}" in line
    difference = orjson.loads(out)["difference"]
    assert difference["seqno"] == target
    assert [loc["offset"] for loc in difference["locations"]] == [offset, offset]


def test_compare_stops_at_the_shortest_committed_prefix(new_service: Callable[..., ServiceLedger],
                                                        tmp_path: Path) -> None:
    ledger = build(new_service)
    early = str(tmp_path / "early")
    shutil.copytree(directory(ledger), early)
    early_end = ledger.last_seqno
    for i in range(20):
        tx = ledger.begin()
        tx.put("log", b"more%d" % i, b"z" * 200)
        ledger.commit(tx)
    sign_and_commit(ledger)
    code, out, err = run("compare", directory(ledger), early, "--json")
    assert code == 0, err
    result = orjson.loads(out)
    assert result["identical"] and result["last_seqno"] == early_end
    assert result["committed_ends"] == [ledger.last_seqno, early_end]


def test_compare_uncommitted_also_reads_the_open_chunks_up_to_their_last_whole_entry(
        ledger: ServiceLedger, tmp_path: Path) -> None:
    committed_end = ledger.last_seqno
    for i in range(5):  # written, not yet signed: they go to an open (uncommitted) chunk
        tx = ledger.begin()
        tx.put("public:log", b"open%d" % i, b"o" * 100)
        ledger.commit(tx)
    assert ledger.files is not None
    ledger.files.flush()
    b = str(tmp_path / "node1")
    shutil.copytree(directory(ledger), b)
    open_chunk = next(n for n in os.listdir(b) if not n.endswith(".committed"))
    with open(os.path.join(b, open_chunk), "ab") as f:
        f.write(b"\x40\x00\x00")  # a torn next entry, as a node in the middle of a write leaves it
    code, out, err = run("compare", directory(ledger), b)
    assert code == 0, err
    assert f"seqnos 1..{committed_end}" in out and "committed entries" in out
    code, out, err = run("compare", directory(ledger), b, "--uncommitted", "--json")
    assert code == 0, err
    result = orjson.loads(out)
    assert result["last_seqno"] == committed_end + 5 and result["committed_ends"] == [committed_end + 5] * 2
    # a difference in the open chunk is found only when it is read
    chunk, offset = entry_offset(ledger, committed_end + 3)
    flip(os.path.join(b, os.path.basename(chunk)), offset + 60)
    assert run("compare", directory(ledger), b)[0] == 0
    code, _, err = run("compare", directory(ledger), b, "--uncommitted")
    assert code == 1 and f"differ at seqno {committed_end + 3}" in one_error_line(err)


def test_compare_error_paths(ledger: ServiceLedger, tmp_path: Path) -> None:
    code, _, err = run("compare", directory(ledger))
    assert code == 1 and "at least two" in one_error_line(err)
    code, _, err = run("compare", directory(ledger), str(tmp_path / "nope"))
    assert code == 1 and "does not exist" in one_error_line(err)
    # damaged framing in one copy: reported as a difference at that entry
    b = str(tmp_path / "node1")
    shutil.copytree(directory(ledger), b)
    target = private_seqno(ledger)
    chunk, offset = entry_offset(ledger, target)
    flip(os.path.join(b, os.path.basename(chunk)), offset + 7)  # the size field's top byte
    code, _, err = run("compare", directory(ledger), b)
    assert code == 1 and f"differ at seqno {target}" in one_error_line(err)


# --- audit report ------------------------------------------------------------------------------------


def test_report_is_self_contained_escaped_and_lists_the_timeline(ledger: ServiceLedger, service_pem: str,
                                                                 tmp_path: Path) -> None:
    out_html = tmp_path / "report.html"
    code, out, err = run("report", directory(ledger), "--out", str(out_html), "--service-cert", service_pem)
    assert code == 0, err
    page = out_html.read_text(encoding="utf-8")
    assert "Verified up to" in page
    assert page.count('<tr class="ev ev-signature"') == len(ledger.signature_seqnos())
    assert page.count('<tr class="ev ev-chunk"') == len([f for f in os.listdir(directory(ledger))
                                                        if f.startswith("ledger_")])
    assert page.count('<tr class="ev ev-rekey"') == 1
    assert 'class="ev ev-proposal"' in page and "trigger_ledger_rekey" in page and "Accepted" in page
    assert 'class="ev ev-service"' in page and 'class="ev ev-member"' in page and 'class="ev ev-node"' in page
    assert "constitution set" in page
    # nothing fetched from anywhere, and the ledger's strings are escaped
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page, re.I)
    assert "@import" not in page and "url(" not in page
    assert PROPOSAL_ID not in page and "&lt;img src=x onerror=alert(1)&gt;"[:12] in page


def test_report_of_a_damaged_ledger_marks_the_failure_and_exits_1(ledger: ServiceLedger, tmp_path: Path) -> None:
    target = private_seqno(ledger)
    chunk, offset = entry_offset(ledger, target)
    flip(chunk, offset + 60)
    out_html = tmp_path / "report.html"
    code, _, err = run("report", directory(ledger), "--out", str(out_html))
    assert code == 1
    assert "report written to" in one_error_line(err)
    page = out_html.read_text(encoding="utf-8")
    assert "Verification FAILED" in page
    assert '<tr class="ev ev-failure" id="ev-' in page and f'data-seqno="{target}"' in page
    assert f"offset {offset}, seqno {target}" in page


def test_report_error_paths(ledger: ServiceLedger, tmp_path: Path) -> None:
    code, _, err = run("report", str(tmp_path / "nope"), "--out", str(tmp_path / "r.html"))
    assert code == 1 and "does not exist" in one_error_line(err)
    code, _, err = run("report", directory(ledger), "--out", str(tmp_path / "no" / "dir" / "r.html"))
    assert code == 1 and "cannot write" in one_error_line(err)
    assert run("report", directory(ledger))[0] == 2  # --out is required


def test_secrets_export_error_path(tmp_path: Path) -> None:
    code, _, err = run("secrets", str(tmp_path), "--out", str(tmp_path / "s.json"))
    assert code == 1 and "missing" in one_error_line(err)


def test_report_json_lists_the_same_events_as_the_page(ledger: ServiceLedger, service_pem: str,
                                                       tmp_path: Path) -> None:
    out_html = tmp_path / "report.html"
    code, out, err = run("report", directory(ledger), "--out", str(out_html), "--service-cert", service_pem, "--json")
    assert code == 0, err
    report = orjson.loads(out)
    assert report["ok"] is True and report["verdict"]["last_verified_txid"] == str(ledger.txid(ledger.last_seqno))
    page = out_html.read_text(encoding="utf-8")
    assert len(report["events"]) == page.count('<tr class="ev ev-')
    for kind, count in report["counts"].items():
        assert page.count(f'<tr class="ev ev-{kind}"') == count, kind
    assert report["counts"]["signature"] == len(ledger.signature_seqnos())
    assert report["recoveries"] == [] and report["counts"]["recovery"] == 0
    (epoch,) = report["epochs"]
    assert epoch["first_seqno"] == 1 and epoch["trust"] == "given" and epoch["previous_cert_fingerprint"] is None
    assert [e["seqno"] for e in report["events"]] == sorted(e["seqno"] for e in report["events"])
