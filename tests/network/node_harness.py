"""An in-process node for tests: a real `Enclave` over a real service ledger (files in a temporary directory),
the default constitution, member0 with a recovery key, user0, and a host whose fetches run when told to."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.logging import app
from governance.constitution import default_constitution
from governance.member_client import MemberSigner
from ledger.bootstrap import NodeKeys, start_new_service
from ledger.genesis import GenesisMember, VirtualQuote
from ledger.identity import NodeIdentity, PartyIdentity, ServiceIdentity, key_pem
from ledger.snapshot_files import write_file
from network.boundary import EnclaveSettings, SignaturePolicy
from network.consensus.raft import HardState
from network.enclave.enclave import Enclave
from network.enclave.endpoints import Endpoints
from network.enclave.http import Request, Response
from network.enclave.replication import sync_in_place
from network.enclave.wire import Envelope, ForwardedResponse

API = "?api-version=2024-07-01"


class FakeHost:
    """HostServices in memory: `read_entries` reads through `read` (recording each range); a scheduled fetch
    runs at once (`immediate`) or at `run_scheduled()`."""

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.pending: list[Callable[[], None]] = []
        self.read: Callable[[int, int], list[bytes]] = lambda start, end: []
        self.reads: list[tuple[int, int]] = []
        self.sealed = 0
        self.sent: list[Envelope] = []
        self.sent_now_at: list[int] = []  # len(sent) at each send_now()
        self.hard_state: HardState | None = None
        self.peers: dict[str, str] = {}
        self.answers: list[ForwardedResponse] = []
        self.failures: list[str] = []

    def read_entries(self, start: int, end: int) -> list[bytes]:
        self.reads.append((start, end))
        return self.read(start, end)

    def schedule(self, fn: Callable[[], None]) -> None:
        if self.immediate:
            fn()
        else:
            self.pending.append(fn)

    def run_scheduled(self) -> int:
        ran = 0
        while self.pending:
            self.pending.pop(0)()
            ran += 1
        return ran

    def secrets_changed(self) -> None:
        self.sealed += 1

    def send(self, envelope: Envelope) -> None:
        self.sent.append(envelope)

    def send_now(self) -> None:
        self.sent_now_at.append(len(self.sent))

    def sync_off_loop(self, work: Callable[[], None], done: Callable[[BaseException | None], None]) -> None:
        sync_in_place(work, done)

    def persist_consensus(self, state: HardState) -> None:
        self.hard_state = state

    def set_peers(self, peers: dict[str, str]) -> None:
        self.peers = peers

    def forwarded(self, response: ForwardedResponse) -> None:
        self.answers.append(response)

    def failed(self, reason: str) -> None:
        self.failures.append(reason)

    def latest_snapshot(self) -> tuple[str, bytes] | None:
        return None

    def run_snapshot(self, serialise: Callable[[], bytes],
                     done: Callable[[str | None, Callable[[str], None]], None]) -> None:
        data = serialise()
        done(hashlib.sha256(data).hexdigest(), functools.partial(write_file, data=data))

    def run_in_workers(self, jobs: list[Callable[[], Any]],
                       done: Callable[[list[Any] | BaseException], None],
                       result_bytes: list[int] | None = None) -> None:
        try:
            results: list[Any] | BaseException = [job() for job in jobs]
        except Exception as e:
            results = e
        done(results)

    def session_metrics(self) -> dict[str, Any]:
        return {"active": 1, "peak": 1}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """One enclave with member0 (recovery member) and user0 identities."""

    def __init__(self, directory: str, *, every_tx: int = 5000, every_ms: int = 20, constitution: str = "majority",
                 snapshot_every_tx: int = 0, immediate: bool = True, group_commit: bool = True,
                 application: Endpoints = app) -> None:
        self.member = PartyIdentity.create("member0")
        self.user = PartyIdentity.create("user0")
        self.encryption_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        enc_pub = self.encryption_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        service = ServiceIdentity.create()
        identity = NodeIdentity.create().endorsed_by(service)
        self.keys = NodeKeys(identity, rsa.generate_private_key(public_exponent=65537, key_size=2048))
        quote = VirtualQuote("aa" * 32, "bb" * 32, identity.node_id)
        self.ledger = start_new_service(f"{directory}/ledger", [GenesisMember(self.member.pem, None, enc_pub)],
                                        default_constitution(constitution), quote, service=service, node=self.keys,
                                        snapshot_dir=f"{directory}/snapshots")
        self.host = FakeHost(immediate)
        self.host.read = self.ledger.files.read_range  # type: ignore[union-attr]
        self.clock = Clock()
        self.enclave = Enclave(self.ledger, self.keys, quote, application, self.host,
                               EnclaveSettings(SignaturePolicy(every_tx, every_ms, group_commit), snapshot_every_tx),
                               clock=self.clock)
        self.signer = MemberSigner.from_pem(key_pem(self.member.key), self.member.pem)
        self.member_der = self.member.cert.public_bytes(serialization.Encoding.DER)
        self.user_der = self.user.cert.public_bytes(serialization.Encoding.DER)

    def call(self, method: str, target: str, body: bytes | Any = None, *, cert: bytes | None = None,
             headers: dict[str, str] | None = None) -> Response:
        raw = b"" if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        return self.enclave.handle(Request(method, target, headers or {}, raw, cert))

    def user_call(self, method: str, target: str, body: Any = None, **kw: Any) -> Response:
        return self.call(method, target, body, cert=self.user_der, **kw)

    def gov(self, path: str, body: bytes) -> Response:
        return self.call("POST", f"/gov{path}{API}", body, headers={"content-type": "application/cose"})

    def activate_member(self) -> None:
        digests = f"/members/state-digests/{self.signer.member_id}"
        update = self.gov(f"{digests}:update", self.signer.state_digest_update())
        assert update.status == 200, update.body
        ack = self.gov(f"{digests}:ack", self.signer.ack(orjson.loads(update.body)))
        assert ack.status == 204, ack.body

    def pass_proposal(self, actions: list[dict[str, Any]]) -> dict[str, Any]:
        """Propose and vote as member0 (the only member, so its vote is the majority)."""
        created = self.gov("/members/proposals:create", self.signer.proposal(actions))
        assert created.status == 200, created.body
        proposal: dict[str, Any] = orjson.loads(created.body)
        if proposal["proposalState"] == "Open":
            voted = self.gov(f"/members/proposals/{proposal['proposalId']}/ballots/{self.signer.member_id}:submit",
                             self.signer.ballot(proposal["proposalId"]))
            assert voted.status == 200, voted.body
            proposal = orjson.loads(voted.body)
        return proposal

    def open_service(self) -> None:
        self.activate_member()
        proposal = self.pass_proposal([
            {"name": "set_user", "args": {"cert": self.user.pem}},
            {"name": "transition_service_to_open", "args": {"next_service_identity": self.ledger.service.pem}},
        ])
        assert proposal["proposalState"] == "Accepted", proposal
