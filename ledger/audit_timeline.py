"""The timeline of a ledger, for people: chunks, signatures and governance events, by seqno.

`collect_timeline(paths)` scans the chunk files (as the auditor does, `ledger.audit_scan`) and turns the
public service maps into events, in seqno order:
- `chunk`: each chunk file (first and last seqno, size, committed or not);
- `signature`: each signature transaction (txid, signing node);
- `service`: service status changes and service identity changes (`public:ccf.gov.service.info`);
- `recovery`: each disaster recovery, the transaction that set a new service identity (its txid, the
  `recovery_count` it sets, the fingerprints of the previous certificate, of the one the transaction names as
  `public:ccf.gov.service.previous_service_identity`, and of the new one, in `Event.data` too);
- `node`, `member`, `user`: nodes' status changes, members added, removed or changing status (Accepted,
  Active), users added and removed (`nodes.info`, `members.certs` / `members.info`, `users.certs`);
- `proposal`: proposals created and each change of their state (Open, Accepted, Rejected, Failed, Dropped,
  Withdrawn), with their actions' names and final ballots (`proposals_info`, `proposals`);
- `rekey`: ledger rekeys (`public:ccf.internal.historical_encrypted_ledger_secret` records that wrap a previous
  secret, including the record by which a recovered service continues its predecessor's chain);
  `constitution`: the constitution being set.
Everything shown comes from the ledger and is not trusted: the timeline describes, the auditor verifies. A
malformed value yields an event saying so rather than an exception; damage that stops the scan of a chunk is
returned in `scan_error` (with the events found before it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography import x509

from ledger.audit_scan import chunk_range, ledger_chunk_paths, scan_chunks
from ledger.errors import LocatedError
from ledger.identity import cert_id
from ledger.kv import WriteSet
from ledger.tables import (
    CONSTITUTION,
    HISTORICAL_SECRETS,
    MEMBERS_CERTS,
    MEMBERS_INFO,
    NODES_INFO,
    PREVIOUS_SERVICE_IDENTITY,
    SERVICE_INFO,
    SIGNATURES,
    SINGLETON_KEY,
    USERS_CERTS,
)

# governance's maps (named here: the ledger core does not import governance)
PROPOSALS = "public:ccf.gov.proposals"
PROPOSALS_INFO = "public:ccf.gov.proposals_info"
TIMELINE_TABLES = frozenset({SIGNATURES, SERVICE_INFO, PREVIOUS_SERVICE_IDENTITY, NODES_INFO, MEMBERS_CERTS,
                             MEMBERS_INFO, USERS_CERTS, PROPOSALS, PROPOSALS_INFO, HISTORICAL_SECRETS, CONSTITUTION})
KINDS = ("chunk", "signature", "service", "recovery", "node", "member", "user", "proposal", "rekey",
         "constitution", "failure")


@dataclass(frozen=True)
class Event:
    seqno: int
    kind: str  # one of KINDS
    title: str
    detail: str = ""
    file: str | None = None
    offset: int | None = None
    data: dict[str, Any] | None = None  # machine-readable fields (recovery events)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seqno": self.seqno, "kind": self.kind, "title": self.title, "detail": self.detail,
                               "file": self.file, "offset": self.offset}
        if self.data is not None:
            out["data"] = self.data
        return out


@dataclass(frozen=True)
class ChunkInfo:
    file: str
    start: int
    end: int  # last seqno held
    size: int
    committed: bool


@dataclass
class Timeline:
    paths: list[str]
    chunks: list[ChunkInfo] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    scan_error: LocatedError | None = None

    @property
    def first_seqno(self) -> int:
        return self.chunks[0].start if self.chunks else 0

    @property
    def last_seqno(self) -> int:
        return self.chunks[-1].end if self.chunks else 0

    def count(self, kind: str) -> int:
        return sum(1 for e in self.events if e.kind == kind)

    @property
    def recoveries(self) -> list[Event]:
        return [e for e in self.events if e.kind == "recovery"]


def short(entity_id: str) -> str:
    return entity_id[:12] + "…" if len(entity_id) > 13 else entity_id


def fingerprint_of_pem(pem: object) -> str | None:
    """hex SHA-256 of a PEM certificate's DER, None if it is not one."""
    if not isinstance(pem, str):
        return None
    try:
        return cert_id(x509.load_pem_x509_certificate(pem.encode()))
    except ValueError:
        return None


def _json(raw: bytes | None) -> Any:
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


class _Collector:
    def __init__(self) -> None:
        self.events: list[Event] = []
        self.service: tuple[str | None, str | None] = (None, None)  # status, certificate
        self.nodes: dict[str, str] = {}
        self.members: dict[str, str] = {}
        self.proposals: dict[str, str] = {}
        self.actions: dict[str, list[str]] = {}

    def add(self, seqno: int, kind: str, title: str, detail: str, file: str, offset: int,
            data: dict[str, Any] | None = None) -> None:
        self.events.append(Event(seqno, kind, title, detail, file, offset, data))

    def entry(self, t: WriteSet, seqno: int, file: str, offset: int, view: int = 0) -> None:
        def ev(kind: str, title: str, detail: str = "") -> None:
            self.add(seqno, kind, title, detail, file, offset)

        if SERVICE_INFO in t:
            info = _json(t[SERVICE_INFO].get(SINGLETON_KEY))
            if isinstance(info, dict):
                status, cert = info.get("status"), info.get("cert")
                if cert != self.service[1] and self.service[1] is not None:
                    self.recovery(t, info, seqno, view, file, offset)
                if (status, cert) != self.service:
                    changed = "service identity set" if cert != self.service[1] else ""
                    ev("service", f"service status {status}", changed)
                self.service = (status, cert)
            else:
                ev("service", "service info removed or malformed")
        for key, raw in t.get(NODES_INFO, {}).items():
            node = key.decode(errors="replace")
            info = _json(raw)
            status = str(info.get("status")) if isinstance(info, dict) else ("removed" if raw is None else "?")
            if self.nodes.get(node) != status:
                ev("node", f"node {short(node)} {status}", f"node id {node}")
                self.nodes[node] = status
        for key, raw in t.get(MEMBERS_CERTS, {}).items():
            member = key.decode(errors="replace")
            ev("member", f"member {short(member)} {'removed' if raw is None else 'added'}", f"member id {member}")
        for key, raw in t.get(MEMBERS_INFO, {}).items():
            member = key.decode(errors="replace")
            info = _json(raw)
            status = str(info.get("status")) if isinstance(info, dict) else ("removed" if raw is None else "?")
            if self.members.get(member) != status and raw is not None:
                ev("member", f"member {short(member)} {status}", f"member id {member}")
            self.members[member] = status
        for key, raw in t.get(USERS_CERTS, {}).items():
            user = key.decode(errors="replace")
            ev("user", f"user {short(user)} {'removed' if raw is None else 'added'}", f"user id {user}")
        for key, raw in t.get(PROPOSALS, {}).items():
            body = _json(raw)
            actions = body.get("actions") if isinstance(body, dict) else None
            if isinstance(actions, list):
                self.actions[key.decode(errors="replace")] = [
                    str(a.get("name")) for a in actions if isinstance(a, dict)]
        for key, raw in t.get(PROPOSALS_INFO, {}).items():
            self.proposal(key.decode(errors="replace"), raw, ev)
        if HISTORICAL_SECRETS in t:
            record = _json(t[HISTORICAL_SECRETS].get(SINGLETON_KEY))
            if isinstance(record, dict) and "previous_ledger_secret" in record:
                if "next_version" in record:
                    ev("rekey", "ledger secret chain continued after the recovery",
                       f"the previous service's latest secret, wrapped under the secret that encrypts from seqno "
                       f"{record.get('next_version')}")
                else:
                    ev("rekey", "ledger rekey", f"a new ledger secret encrypts from seqno {seqno + 1}")
        if CONSTITUTION in t:
            ev("constitution", "constitution set" if t[CONSTITUTION].get(SINGLETON_KEY) is not None
               else "constitution removed")
        if SIGNATURES in t:
            sig = _json(t[SIGNATURES].get(SINGLETON_KEY))
            if isinstance(sig, dict):
                node = str(sig.get("node", "?"))
                ev("signature", f"signature {sig.get('view')}.{sig.get('seqno')}",
                   f"by node {short(node)}, root {str(sig.get('root', ''))[:16]}…")
            else:
                ev("signature", "malformed signature")

    def recovery(self, t: WriteSet, info: dict[str, Any], seqno: int, view: int, file: str, offset: int) -> None:
        """The service identity changes at `seqno`: a recovery (the auditor judges whether it is a valid one)."""
        named_raw = t.get(PREVIOUS_SERVICE_IDENTITY, {}).get(SINGLETON_KEY)
        count = info.get("recovery_count")
        data: dict[str, Any] = {
            "seqno": seqno,
            "txid": f"{view}.{seqno}",
            "recovery_count": count,
            "previous_cert_fingerprint": fingerprint_of_pem(self.service[1]),
            "named_previous_fingerprint": fingerprint_of_pem(_json(named_raw)),
            "cert_fingerprint": fingerprint_of_pem(info.get("cert")),
            "previous_service_identity_version": info.get("previous_service_identity_version"),
        }
        previous, named, new = (data[k] or "?" for k in ("previous_cert_fingerprint", "named_previous_fingerprint",
                                                           "cert_fingerprint"))
        if named_raw is None:
            names = "; the transaction names no previous service identity"
        elif named == previous:
            names = " (named as previous service identity)"
        else:
            names = f"; the transaction names another previous service identity: sha256 {named}"
        self.add(seqno, "recovery", f"service recovered at {view}.{seqno}: recovery_count {count}",
                 f"previous certificate sha256 {previous}{names}; new certificate sha256 {new}; "
                 f"previous_service_identity_version {data['previous_service_identity_version']}",
                 file, offset, data)

    def proposal(self, pid: str, raw: bytes | None, ev: Any) -> None:
        if raw is None:
            self.proposals.pop(pid, None)
            return  # closed proposals are forgotten after a while; nothing happened to them then
        info = _json(raw)
        if not isinstance(info, dict):
            ev("proposal", f"proposal {short(pid)}: malformed record", f"proposal id {pid}")
            return
        state = str(info.get("state"))
        if self.proposals.get(pid) == state:
            return
        actions = ", ".join(self.actions.get(pid, [])) or "?"
        if pid not in self.proposals:
            proposer = short(str(info.get("proposer_id", "?")))
            title = f"proposal {short(pid)} ({actions}) by member {proposer}: {state}"
        else:
            title = f"proposal {short(pid)} ({actions}): {state}"
        votes = info.get("final_votes")
        detail = f"proposal id {pid}"
        if isinstance(votes, dict) and votes:
            detail += "; final votes: " + ", ".join(f"{short(str(m))} {'for' if v else 'against'}"
                                                    for m, v in votes.items())
        failure = info.get("failure")
        if isinstance(failure, dict) and failure.get("reason"):
            detail += f"; failure: {failure.get('reason')}"
        self.proposals[pid] = state
        ev("proposal", title, detail)


def collect_timeline(paths: list[str], *, committed_only: bool = True, workers: int | None = None) -> Timeline:
    """The events of the ledger made of the chunk files under `paths` (raises `VerificationError` only when
    there are no chunk files or they are not contiguous)."""
    chunk_paths = ledger_chunk_paths(paths, committed_only)
    timeline = Timeline(list(paths))
    collector = _Collector()
    for path, scan in scan_chunks(chunk_paths, None, TIMELINE_TABLES, workers):
        name = os.path.basename(path)
        start, end = chunk_range(path)
        if isinstance(scan, tuple):
            timeline.scan_error = LocatedError(scan[0], file=name, offset=scan[1], seqno=scan[2])
            break
        last = scan.start + scan.count - 1
        timeline.chunks.append(ChunkInfo(name, start, last, scan.size, end is not None))
        collector.add(start, "chunk", f"chunk {name}",
                      f"seqnos {start}..{last}, {scan.size:,} bytes, {'committed' if end is not None else 'open'}",
                      name, 0)
        for kept in scan.kept:
            collector.entry(kept.tables, scan.start + kept.index, name, kept.offset, kept.view)
    timeline.events = collector.events
    return timeline
