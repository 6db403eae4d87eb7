"""The Python client against a running sandbox: the README's examples for users, members and auditors, run as
written, and the client's behaviours (commit waiting, typed errors, failover, safe retries)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from network.client.service import Client, CommitTimeout, ServiceError, TransactionInvalid, Unreachable
from tests.e2e.harness import Sandbox, free_port

pytestmark = pytest.mark.e2e

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _readme_examples() -> dict[str, str]:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = re.findall(r"```python\n(# example: (\w+)\n.*?)```", text, re.S)
    return {name: code for code, name in blocks}


def test_the_readme_has_an_example_for_each_role() -> None:
    assert set(_readme_examples()) == {"user", "member", "auditor"}


@pytest.mark.parametrize("role, expected", [("user", "committed and proven: 2"), ("member", "Accepted"),
                                            ("auditor", "claims match: True")])
def test_the_readme_examples_run_as_written(sandbox: Sandbox, role: str, expected: str) -> None:
    env = {**os.environ, "CCF_URL": sandbox.url, "CCF_DIR": os.path.dirname(sandbox.service_cert_path),
           "PYTHONPATH": ROOT}
    proc = subprocess.run([sys.executable, "-c", _readme_examples()[role]], capture_output=True, text=True,
                          timeout=120, env=env, cwd=ROOT, check=False)
    assert proc.returncode == 0, proc.stderr
    assert expected in proc.stdout, proc.stdout


def _user(sandbox: Sandbox, urls: list[str] | None = None) -> Client:
    d = os.path.dirname(sandbox.service_cert_path)
    return Client(urls or [sandbox.url], sandbox.service_cert_path, cert=f"{d}/user0_cert.pem",
                  key=f"{d}/user0_privk.pem", retries=2)


def test_commit_waiting_tells_invalid_from_not_yet(sandbox: Sandbox) -> None:
    user = _user(sandbox)
    txid = user.write("/app/log/private", {"id": 1, "msg": "x"})
    user.wait_for_commit(txid)
    with pytest.raises(TransactionInvalid):
        user.wait_for_commit(f"{txid.view + 1}.{txid.seqno}")  # that seqno committed in another view
    with pytest.raises(CommitTimeout):
        user.wait_for_commit(f"{txid.view}.{txid.seqno + 10_000}", timeout=0.3)


def test_errors_carry_ccf_codes_and_unreachable_nodes_fail_over(sandbox: Sandbox) -> None:
    dead = f"https://127.0.0.1:{free_port()}"
    user = _user(sandbox, [dead, sandbox.url])
    assert user.get("/app/log/private/count") >= 0  # the first node refuses connections: the next answers
    txid = user.write("/app/log/private", {"id": 2, "msg": "y"})  # refused before sending: safe to try the next
    user.wait_for_commit(txid)
    with pytest.raises(ServiceError) as e:
        user.get("/app/log/private?id=999999")
    assert (e.value.status, e.value.code) == (400, "ResourceNotFound")
    nobody = _user(sandbox, [dead])
    with pytest.raises(Unreachable):
        nobody.get("/app/commit")


def test_receipts_from_the_node_json_and_cose_verify_with_client_cli_and_ccf_and_fail_when_mutated(
        sandbox: Sandbox, tmp_path: object) -> None:
    import hashlib

    import ccf.cose
    import orjson

    from network.client.service import ReceiptInvalid, verify_receipt

    user = _user(sandbox)
    txid = user.write("/app/log/public", {"id": 77, "msg": "cose me", "record_claim": True})
    user.wait_for_commit(txid)
    answer = user.request("GET", "/app/log/public/cose_receipt", headers={"x-ms-ccf-transaction-id": str(txid)})
    for _ in range(100):
        if answer.status == 200:
            break
        answer = user.request("GET", "/app/log/public/cose_receipt", headers={"x-ms-ccf-transaction-id": str(txid)})
    assert answer.status == 200, answer.body
    cose_receipt = answer.body
    json_receipt = user.receipt(txid)
    claims = hashlib.sha256(b"cose me").digest()
    ccf.cose.verify_receipt(cose_receipt, user.service_cert.public_key(), claims)  # the ccf package's judge
    script = os.path.join(ROOT, "scripts", "audit.py")
    for name, receipt in (("r.json", orjson.dumps(json_receipt)), ("r.cose", cose_receipt)):
        assert verify_receipt(json_receipt if name.endswith("json") else cose_receipt, sandbox.service_cert_path,
                              claims_of=b"cose me").seqno == txid.seqno
        path = os.path.join(str(tmp_path), name)
        with open(path, "wb") as f:
            f.write(receipt)
        ok = subprocess.run([sys.executable, script, "receipt", path, "--service-cert", sandbox.service_cert_path,
                             "--claims-of-msg", "cose me"], capture_output=True, text=True, timeout=60, check=False)
        assert ok.returncode == 0, ok.stdout + ok.stderr
        for position in (len(receipt) // 3, len(receipt) - 5):  # mutations: the client and the CLI refuse them
            bad = bytearray(receipt)
            bad[position] ^= 0x01
            with open(path, "wb") as f:
                f.write(bytes(bad))
            refused = subprocess.run([sys.executable, script, "receipt", path, "--service-cert",
                                      sandbox.service_cert_path, "--claims-of-msg", "cose me"],
                                     capture_output=True, text=True, timeout=60, check=False)
            assert refused.returncode == 1, refused.stdout
            if name.endswith("cose"):
                with pytest.raises(ReceiptInvalid):
                    verify_receipt(bytes(bad), sandbox.service_cert_path, claims_of=b"cose me")
