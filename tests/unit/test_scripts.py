"""The command-line tools: the auditor's verify_ledger.py and the benchmark script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest

from ledger.service_ledger import ServiceLedger
from tests.ledger_helpers import sign_and_commit

pytestmark = pytest.mark.unit

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "scripts")


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, os.path.join(SCRIPTS, name), *args], capture_output=True, text=True,
                          timeout=300)


def finished_ledger(new_service: Callable[..., ServiceLedger]) -> ServiceLedger:
    ledger = new_service(chunk_size=2000)
    for i in range(20):
        tx = ledger.begin()
        tx.put("public:log", b"%d" % i, b"x" * 200)
        ledger.commit(tx)
    sign_and_commit(ledger)
    return ledger


def test_verify_ledger_prints_a_json_report_and_exits_0(new_service: Callable[..., ServiceLedger],
                                                        tmp_path: os.PathLike[str]) -> None:
    ledger = finished_ledger(new_service)
    cert = os.path.join(tmp_path, "service_cert.pem")
    with open(cert, "w") as f:
        f.write(ledger.service.pem)
    proc = run_script("verify_ledger.py", ledger.files.directory, "--service-cert", cert)  # type: ignore[union-attr]
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["last_seqno"] == ledger.last_seqno
    assert report["signatures"] == len(ledger.signature_seqnos())
    assert report["last_verified_txid"] == str(ledger.txid(ledger.last_seqno))


def test_verify_ledger_reports_damage_in_one_line_and_exits_1(new_service: Callable[..., ServiceLedger]) -> None:
    ledger = finished_ledger(new_service)
    directory = ledger.files.directory  # type: ignore[union-attr]
    chunk = sorted(f for f in os.listdir(directory) if f.endswith(".committed"))[-1]
    with open(os.path.join(directory, chunk), "r+b") as f:
        f.seek(300)
        byte = f.read(1)
        f.seek(300)
        f.write(bytes([byte[0] ^ 0xFF]))
    proc = run_script("verify_ledger.py", directory)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and chunk in lines[0] and "seqno" in lines[0]


def test_verify_ledger_refuses_a_missing_directory_and_a_foreign_service_cert(
    new_service: Callable[..., ServiceLedger], tmp_path: os.PathLike[str]
) -> None:
    from ledger.identity import ServiceIdentity

    proc = run_script("verify_ledger.py", os.path.join(tmp_path, "nope"))
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    ledger = finished_ledger(new_service)
    foreign = os.path.join(tmp_path, "foreign.pem")
    with open(foreign, "w") as f:
        f.write(ServiceIdentity.create().pem)
    proc = run_script("verify_ledger.py", ledger.files.directory, "--service-cert", foreign)  # type: ignore[union-attr]
    assert proc.returncode == 1 and "not the trusted one" in proc.stderr


def test_bench_script_prints_the_agreed_keys() -> None:
    proc = run_script("bench_ledger.py", "--transactions", "3000", "--signature-interval", "500", "--repeat", "1",
                      "--verify-repeat", "1", "--receipt-seconds", "0.1", "--receipt-rounds", "1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    figures = json.loads(proc.stdout)
    assert figures["commit_path_tx_per_s"] > 0
    assert figures["verify_speedup_vs_read_ledger"] > 0
    for key in ("audit_ledger_mb_per_s", "audit_speedup_vs_read_ledger", "receipts_verified_per_s",
                "p384_verifies_per_s", "receipts_vs_p384"):
        assert figures[key] > 0, key
    ratio = figures["receipts_verified_per_s"] / figures["p384_verifies_per_s"]
    assert abs(figures["receipts_vs_p384"] - ratio) < 0.01
    # genesis and the first signature, 3000 writes, a signature every 500, the final signature
    assert figures["verified_transactions"] == 2 + 3000 + 3000 // 500 + 1
    assert figures["verified_signatures"] == 1 + 3000 // 500 + 1


# --- member.py: the recovery tooling (argument handling that needs no node) ---------------------------------


def member_files(tmp_path: os.PathLike[str]) -> dict[str, str]:
    """A member's certificate and signing key, its RSA encryption key, and two service certificates."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    from ledger.identity import PartyIdentity, ServiceIdentity, key_pem

    member = PartyIdentity.create("member0")
    enc = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    contents = {
        "cert": member.pem,
        "key": key_pem(member.key),
        "enc_key": enc.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption()).decode(),
        "service_cert": ServiceIdentity.create().pem,
        "previous_service_cert": ServiceIdentity.create().pem,
        "member_id": member.id,
    }
    paths = {}
    for name, text in contents.items():
        if name == "member_id":
            continue
        paths[name] = os.path.join(tmp_path, f"{name}.pem")
        with open(paths[name], "w") as f:
            f.write(text)
    paths["member_id"] = contents["member_id"]
    return paths


def run_member(files: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_script("member.py", "--cert", files["cert"], "--key", files["key"], *args)


def assert_one_error_line(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    assert proc.stdout == ""
    return lines[0]


# a URL nothing listens on: every refusal below must happen before the script tries to reach a node
NO_NODE = "https://127.0.0.1:9"


def test_member_recovery_share_needs_a_url(tmp_path: os.PathLike[str]) -> None:
    files = member_files(tmp_path)
    proc = run_member(files, "recovery-share", "--enc-key", files["enc_key"])
    assert_one_error_line(proc, "recovery-share needs --url")
    # and the --json flag does not change that
    proc = run_member(files, "--json", "recovery-share", "--enc-key", files["enc_key"])
    assert_one_error_line(proc, "recovery-share needs --url")


def test_member_recovery_share_needs_an_enc_key(tmp_path: os.PathLike[str]) -> None:
    files = member_files(tmp_path)
    proc = run_member(files, "--url", NO_NODE, "--service-cert", files["service_cert"], "recovery-share")
    assert proc.returncode != 0 and "--enc-key" in proc.stderr


@pytest.mark.parametrize(("enc_key", "words"), [
    ("missing", ["No such file or directory", "missing.pem"]),
    ("key", ["key.pem", "EC private key", "not the member's RSA encryption key"]),
    ("service_cert", ["service_cert.pem", "not a PEM private key"]),
    ("garbage", ["garbage.pem", "not a PEM private key"]),
    ("encrypted", ["encrypted.pem", "password-protected"]),
])
def test_member_recovery_share_refuses_a_bad_enc_key_in_one_line(tmp_path: os.PathLike[str], enc_key: str,
                                                                 words: list[str]) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    files = member_files(tmp_path)
    with open(os.path.join(tmp_path, "garbage.pem"), "wb") as f:
        f.write(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    with open(os.path.join(tmp_path, "encrypted.pem"), "wb") as f:
        f.write(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret")))
    path = files.get(enc_key, os.path.join(tmp_path, f"{enc_key}.pem"))
    proc = run_member(files, "--url", NO_NODE, "--service-cert", files["service_cert"], "recovery-share",
                      "--enc-key", path)
    assert_one_error_line(proc, *words)


def test_member_propose_open_with_the_previous_service_identity(tmp_path: os.PathLike[str]) -> None:
    from ledger import cose
    from ledger.identity import load_cert

    files = member_files(tmp_path)
    out = os.path.join(tmp_path, "open.cose")
    proc = run_member(files, "--out", out, "propose", "--transition-service-to-open", files["service_cert"],
                      "--previous-service-cert", files["previous_service_cert"])
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        envelope = cose.decode(f.read())
    with open(files["cert"]) as f:
        envelope.verify(load_cert(f.read()).public_key())  # type: ignore[arg-type]
    assert envelope.protected[cose.HDR_KID] == files["member_id"].encode()
    assert envelope.payload is not None
    actions = json.loads(envelope.payload)["actions"]
    with open(files["service_cert"]) as f, open(files["previous_service_cert"]) as g:
        new_pem, old_pem = f.read(), g.read()
    assert actions == [{"name": "transition_service_to_open",
                        "args": {"next_service_identity": new_pem, "previous_service_identity": old_pem}}]

    # without --previous-service-cert the action is as it was: the next identity only
    proc = run_member(files, "--out", out, "propose", "--transition-service-to-open", files["service_cert"])
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        payload = cose.decode(f.read()).payload
    assert payload is not None
    assert json.loads(payload)["actions"] == [{"name": "transition_service_to_open",
                                               "args": {"next_service_identity": new_pem}}]


def test_member_propose_set_member_as_a_recovery_owner(tmp_path: os.PathLike[str]) -> None:
    from cryptography.hazmat.primitives import serialization

    from ledger import cose

    files = member_files(tmp_path)
    with open(files["enc_key"], "rb") as f:
        public = serialization.load_pem_private_key(f.read(), None).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    public_path = os.path.join(tmp_path, "enc_pub.pem")
    with open(public_path, "w") as f:
        f.write(public)
    out = os.path.join(tmp_path, "owner.cose")
    proc = run_member(files, "--out", out, "propose", "--set-member", files["cert"], "--encryption-key", public_path,
                      "--recovery-role", "Owner")
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        payload = cose.decode(f.read()).payload
    assert payload is not None
    [proposed] = json.loads(payload)["actions"]
    assert proposed["name"] == "set_member"
    assert (proposed["args"]["recovery_role"], proposed["args"]["encryption_pub_key"]) == ("Owner", public)
    lone = run_member(files, "propose", "--trigger", "trigger_snapshot", "--recovery-role", "Owner")
    assert_one_error_line(lone, "--recovery-role goes with --set-member")


def test_member_propose_refuses_a_lone_or_bad_previous_service_cert(tmp_path: os.PathLike[str]) -> None:
    files = member_files(tmp_path)
    lone = run_member(files, "propose", "--trigger", "trigger_snapshot", "--previous-service-cert",
                      files["previous_service_cert"])
    assert_one_error_line(lone, "--previous-service-cert goes with --transition-service-to-open")
    not_a_cert = run_member(files, "propose", "--transition-service-to-open", files["service_cert"],
                            "--previous-service-cert", files["enc_key"])
    assert_one_error_line(not_a_cert, "enc_key.pem is not a PEM certificate")
    missing = run_member(files, "propose", "--transition-service-to-open", files["service_cert"],
                         "--previous-service-cert", os.path.join(tmp_path, "old.pem"))
    assert_one_error_line(missing, "old.pem")


ANSWERS = {
    "partial": {"message": "1/2 recovery shares successfully submitted", "submittedCount": 1,
                "recoveryThreshold": 2},
    "last": {"message": "2/2 recovery shares successfully submitted\nEnd of recovery procedure initiated",
             "submittedCount": 2, "recoveryThreshold": 2, "fullKeySubmitted": False},
}


@pytest.mark.parametrize(("answer", "printed"), [
    ("partial", "1/2 shares submitted\n"),
    ("last", "2/2 shares submitted\nend of recovery procedure initiated\n"),
])
def test_member_recovery_share_prints_the_count_or_the_json_answer(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], answer: str,
    printed: str,
) -> None:
    """The node's answer as the script prints it (the node itself is replaced: no request is sent)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    from network.client.member_api import MemberApi
    from scripts import member

    files = member_files(tmp_path)
    given: list[object] = []

    def submit(api: MemberApi, key: rsa.RSAPrivateKey) -> dict[str, object]:
        given.append(key)
        assert api.member_id == files["member_id"]
        return ANSWERS[answer]

    monkeypatch.setattr(MemberApi, "submit_recovery_share", submit)
    common = ["--cert", files["cert"], "--key", files["key"], "--url", NO_NODE, "--service-cert",
              files["service_cert"]]
    assert member.main([*common, "recovery-share", "--enc-key", files["enc_key"]]) == 0
    assert capsys.readouterr().out == printed
    assert member.main([*common, "recovery-share", "--enc-key", files["enc_key"], "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == ANSWERS[answer]
    assert len(given) == 2 and all(isinstance(key, rsa.RSAPrivateKey) for key in given)


def test_member_recovery_share_with_the_wrong_rsa_key_says_so_in_one_line(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    import base64

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    from network.client.member_api import MemberApi
    from scripts import member

    files = member_files(tmp_path)
    # the share as the node deals it (RSA-OAEP-SHA256), but to another member's encryption key
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    share = base64.b64encode(other.encrypt(b"s" * 33, oaep)).decode()
    monkeypatch.setattr(MemberApi, "encrypted_recovery_share", lambda api: share)

    def no_post(api: MemberApi, path: str, body: bytes) -> None:
        raise AssertionError(f"nothing is submitted when the share does not decrypt (POST {path})")

    monkeypatch.setattr(MemberApi, "_post", no_post)
    assert member.main(["--cert", files["cert"], "--key", files["key"], "--url", NO_NODE, "--service-cert",
                        files["service_cert"], "recovery-share", "--enc-key", files["enc_key"]]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot decrypt member "), lines
    assert "enc_key.pem" in lines[0], lines


def test_the_service_client_gives_members_submit_recovery_share(tmp_path: os.PathLike[str]) -> None:
    from network.client.member_api import MemberApi
    from network.client.service import Client

    files = member_files(tmp_path)
    api = Client(NO_NODE, files["service_cert"], cert=files["cert"], key=files["key"]).member()
    assert isinstance(api, MemberApi) and callable(api.submit_recovery_share)
    assert api.member_id == files["member_id"]


def test_member_propose_set_js_app_reads_a_bundle_directory(tmp_path: os.PathLike[str]) -> None:
    from ledger import cose

    files = member_files(tmp_path)
    bundle_dir = os.path.join(tmp_path, "app")
    os.makedirs(os.path.join(bundle_dir, "src", "lib"))
    metadata = {"endpoints": {"/hi": {"get": {"js_module": "main.js", "js_function": "hi", "mode": "readonly",
                                              "forwarding_required": "sometimes", "authn_policies": ["no_auth"]}}}}
    with open(os.path.join(bundle_dir, "app.json"), "w") as f:
        json.dump(metadata, f)
    with open(os.path.join(bundle_dir, "src", "main.js"), "w") as f:
        f.write('import { x } from "./lib/x.js";\nexport function hi() { return { body: x }; }\n')
    with open(os.path.join(bundle_dir, "src", "lib", "x.js"), "w") as f:
        f.write("export const x = 1;\n")
    out = os.path.join(tmp_path, "app.cose")
    proc = run_member(files, "--out", out, "propose", "--set-js-app", bundle_dir)
    assert proc.returncode == 0, proc.stderr
    with open(out, "rb") as f:
        payload = cose.decode(f.read()).payload
    assert payload is not None
    [proposed] = json.loads(payload)["actions"]
    assert proposed["name"] == "set_js_app" and proposed["args"]["bundle"]["metadata"] == metadata
    assert sorted(m["name"] for m in proposed["args"]["bundle"]["modules"]) == ["lib/x.js", "main.js"]

    # a bundle CCF would refuse is refused here, in one line naming the endpoint
    metadata["endpoints"]["/hi"]["get"]["js_module"] = "missing.js"
    with open(os.path.join(bundle_dir, "app.json"), "w") as f:
        json.dump(metadata, f)
    assert_one_error_line(run_member(files, "--out", out, "propose", "--set-js-app", bundle_dir),
                          "GET /hi", "missing.js")
    assert_one_error_line(run_member(files, "--out", out, "propose", "--set-js-app", str(tmp_path) + "/nowhere"),
                          "not a directory")
