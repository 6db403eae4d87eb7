"""Virtual attestation: the code measurement, the quote's binding to the node key, the join check."""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path

import pytest

import ledger
from ledger.identity import NodeIdentity
from ledger.kv import Store
from ledger.tables import VIRTUAL_HOST_DATA, VIRTUAL_MEASUREMENTS, dump_json
from network.enclave.attestation import AttestationError, code_measurement, host_data, make_quote, verify_quote

pytestmark = pytest.mark.unit


def test_the_measurement_is_deterministic_and_changes_with_any_code_file(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    assert code_measurement() == code_measurement()
    copy = tmp_path / "ledger"
    shutil.copytree(Path(ledger.__file__).parent, copy,
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "ledger" or m.startswith("ledger.")]:
        monkeypatch.delitem(sys.modules, name)
    same = code_measurement(["ledger"])
    (copy / "kv.py").write_text((copy / "kv.py").read_text() + "\n# one more line\n")
    assert code_measurement(["ledger"]) != same


def store_allowing(measurement: str, host: str) -> Store:
    store = Store()
    tx = store.begin()
    tx.put(VIRTUAL_MEASUREMENTS, measurement, dump_json("AllowedToJoin"))
    tx.put(VIRTUAL_HOST_DATA, host, dump_json(""))
    store.commit(tx)
    return store


def test_a_quote_binding_the_node_key_with_allowed_code_and_host_is_accepted() -> None:
    node = NodeIdentity.create()
    measurement, host = code_measurement(), host_data(b"virtual host, 2 cores")
    quote = make_quote(node.key.public_key(), measurement, host)
    tx = store_allowing(measurement, host).read_tx()
    assert verify_quote(tx, quote.quote_info(), node.key.public_key()) == quote


def test_quotes_are_refused_with_invalid_quote_reasons() -> None:
    node, other = NodeIdentity.create(), NodeIdentity.create()
    measurement, host = code_measurement(), host_data(b"h")
    tx = store_allowing(measurement, host).read_tx()
    good = make_quote(node.key.public_key(), measurement, host).quote_info()
    cases = {
        "report data": (good, other.key.public_key()),
        "enclave measurement": (make_quote(node.key.public_key(), "00" * 32, host).quote_info(), node.key.public_key()),
        "host data": (make_quote(node.key.public_key(), measurement, "11" * 32).quote_info(), node.key.public_key()),
        "format": ({**good, "format": "AMD_SEV_SNP_v1"}, node.key.public_key()),
        "parsed": ({**good, "quote": base64.b64encode(b"not json").decode()}, node.key.public_key()),
    }
    for reason, (info, key) in cases.items():
        with pytest.raises(AttestationError, match=reason) as e:
            verify_quote(tx, info, key)
        assert e.value.code == "InvalidQuote"
