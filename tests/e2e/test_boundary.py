"""The trust boundary at run time: everything the host receives from the enclave is ciphertext or public.

Two nodes run with their hosts in this process (the second joins the first), in both modes: with the enclave in
the same process, seen by it only through a recorder of `boundary.HostCalls`, and with the enclave in its own
process, where the recorder is on the frames the host reads from it. Clients write private records with values
unique to the run, through both nodes (the backup forwards its writes to the primary over the node-to-node
channel), and the nodes take snapshots. Then every byte that crossed to a host is scanned: what the enclaves
asked the hosts to send (TLS records of client sessions, node-to-node channels and the join), every ledger entry
appended to the hosts' files, the snapshots, the sealed secrets and the consensus state. None may contain a
private value, a node or service private key, the nodes' encryption keys or a ledger secret, as raw bytes or
base64.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ledger.files import LedgerFiles
from network.client.connection import ServiceClient
from network.enclave.runtime import EnclaveRuntime
from network.enclave.sealing import unseal_data_dir
from network.host import enclave_process
from network.host.config import load_config
from network.host.node import NodeHost
from scripts.sandbox import make_identities, node_config, open_service
from tests.e2e.harness import free_port, write_committed

pytestmark = pytest.mark.e2e


class RecordingHost:
    """Passes every call of the enclave to the real host, and keeps what each call carried."""

    def __init__(self, host: NodeHost, crossed: list[tuple[str, bytes]]) -> None:
        self._host = host
        self._crossed = crossed

    def __getattr__(self, name: str) -> Callable[..., Any]:
        target = getattr(self._host, name)

        def call(*args: Any) -> Any:
            for arg in args:
                if isinstance(arg, bytes | str):
                    self._crossed.append((name, arg.encode() if isinstance(arg, str) else arg))
            result = target(*args)
            if name in ("latest_snapshot", "snapshot_at") and result is not None:
                self._crossed.append((name, result[1] if isinstance(result, tuple) else result))
            return result

        return call


def _forms(secret: bytes) -> list[bytes]:
    """A secret as raw bytes and as base64 (whole, and in PEM's 64-character lines)."""
    encoded = base64.b64encode(secret)
    forms = [secret, encoded] + [encoded[i:i + 64] for i in range(0, len(encoded) - 63, 64)]
    return [f for f in forms if len(f) >= 16]


def _key_material(data_dir: Path) -> dict[str, list[bytes]]:
    """What the node's enclave holds, read back from its sealed state with the virtual platform's key."""
    state = unseal_data_dir(str(data_dir))
    found: dict[str, list[bytes]] = {}
    keys: dict[str, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey] = {
        "node key": state.node.identity.key, "encryption key": state.node.encryption_key,
        "service key": state.service.key}
    for name, key in keys.items():
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        numbers = key.private_numbers()
        scalar = numbers.private_value if isinstance(numbers, ec.EllipticCurvePrivateNumbers) else numbers.d
        found[name] = _forms(der) + _forms(scalar.to_bytes((scalar.bit_length() + 7) // 8, "big"))
    for secret in state.secrets.all():
        found[f"ledger secret {secret.start}"] = _forms(secret.raw)
    return found


def _leaks(blobs: list[tuple[str, bytes]], needles: dict[str, list[bytes]]) -> list[str]:
    return [f"{what} in {where}" for where, data in blobs for what, forms in needles.items()
            if any(form in data for form in forms)]


def test_the_scan_finds_what_it_looks_for() -> None:
    """The checker itself: a value in raw or base64 form, or a key's PEM line, is found."""
    value = b"confidential-0123456789"
    assert _leaks([("raw", b"x" + value + b"y")], {"v": _forms(value)}) == ["v in raw"]
    assert _leaks([("b64", b"{" + base64.b64encode(value) + b"}")], {"v": _forms(value)}) == ["v in b64"]
    key = ec.generate_private_key(ec.SECP384R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    assert _leaks([("pem", pem)], {"k": _forms(der)}) == ["k in pem"]
    assert _leaks([("other", os.urandom(4096))], {"v": _forms(value), "k": _forms(der)}) == []


@pytest.mark.parametrize("mode", ["in-process", "enclave-process"])
def test_the_host_receives_no_plaintext_private_value_and_no_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                 mode: str) -> None:
    common = str(tmp_path / "sandbox_common")
    make_identities(common)
    crossed: list[tuple[str, bytes]] = []
    original_append = LedgerFiles.append

    def recording_append(files: LedgerFiles, entry: bytes) -> int:
        crossed.append(("ledger entry", entry))
        return original_append(files, entry)

    monkeypatch.setattr(LedgerFiles, "append", recording_append)
    original_frames = enclave_process._Link.data_received

    def recording_frames(link: enclave_process._Link, data: bytes) -> None:
        crossed.append(("frames from the enclave process", data))
        original_frames(link, data)

    monkeypatch.setattr(enclave_process._Link, "data_received", recording_frames)
    ports = [free_port(), free_port()]
    configs = [node_config(str(tmp_path), ports[0], index=0, snapshots={"every_tx": 10},
                           node_to_node_address=f"127.0.0.1:{free_port()}"),
               node_config(str(tmp_path), ports[1], index=1, join=f"https://127.0.0.1:{ports[0]}",
                           snapshots={"every_tx": 10}, node_to_node_address=f"127.0.0.1:{free_port()}")]
    values = [f"confidential-{secrets.token_hex(12)}" for _ in range(30)]
    hosts: list[NodeHost] = []

    def clients() -> None:
        url = f"https://127.0.0.1:{ports[0]}"
        open_service(url, common)
        # the backup opens its frontend once the opening has replicated to it
        backup = ServiceClient(f"https://127.0.0.1:{ports[1]}", os.path.join(common, "service_cert.pem"))
        deadline = time.monotonic() + 30
        while backup.call("GET", "/node/ready/app").status != 204:
            assert time.monotonic() < deadline, "the backup never opened its application frontend"
            time.sleep(0.05)
        backup.close()
        for i, value in enumerate(values):
            port = ports[i % 2]  # the backup forwards its share of the writes to the primary
            client = ServiceClient(f"https://127.0.0.1:{port}", os.path.join(common, "service_cert.pem"),
                                   cert=os.path.join(common, "user0_cert.pem"),
                                   key=os.path.join(common, "user0_privk.pem"))
            write_committed(client, i, value)
            assert client.json_ok("GET", f"/app/log/private?id={i}") == {"msg": value}
            client.close()

    async def run() -> None:
        tasks = []
        for config_path in configs:
            host = NodeHost(load_config(config_path))
            if mode == "in-process":
                host.attach(EnclaveRuntime(RecordingHost(host, crossed)))  # type: ignore[arg-type]
            else:
                host.attach(enclave_process.EnclaveProcess(host))
            hosts.append(host)
            tasks.append(asyncio.create_task(host.run()))
            while not os.path.exists(os.path.join(os.path.dirname(config_path), "node.json")):
                assert not tasks[-1].done(), tasks[-1].exception()
                await asyncio.sleep(0.05)
        try:
            await asyncio.get_running_loop().run_in_executor(None, clients)
        finally:
            for host in hosts:
                host.stopping.set()
            await asyncio.gather(*tasks)

    asyncio.run(run())

    kinds = {name for name, _ in crossed}
    expected = {"send", "store_sealed", "persist_consensus"} if mode == "in-process" else \
        {"frames from the enclave process"}
    assert expected | {"ledger entry"} <= kinds, kinds
    assert sum(1 for name, _ in crossed if name == "ledger entry") > len(values)
    at_rest: list[tuple[str, bytes]] = []
    for node in (0, 1):
        data_dir = Path(configs[node]).parent
        for path in sorted(p for p in data_dir.rglob("*") if p.is_file() and p.name not in ("config.json", "out",
                                                                                            "err", "sealing.key")):
            at_rest.append((str(path.relative_to(tmp_path)), path.read_bytes()))
    assert any("snapshots/snapshot_" in where for where, _ in at_rest), "no snapshot was taken"
    needles = {f"private value {i}": _forms(v.encode()) for i, v in enumerate(values)}
    for node in (0, 1):
        needles.update({f"node {node} {k}": v for k, v in _key_material(Path(configs[node]).parent).items()})
    assert _leaks(crossed + at_rest, needles) == []
