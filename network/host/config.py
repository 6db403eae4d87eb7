"""A node's configuration: one JSON file, read once at start, every field checked with a clear message.

```json
{
  "data_dir": "workspace/sandbox_0",
  "rpc_address": "127.0.0.1:8000",
  "service_certificate_file": "workspace/sandbox_common/service_cert.pem",
  "start": {
    "members": [{"certificate_file": "member0_cert.pem", "encryption_public_key_file": "member0_enc_pubk.pem",
                 "data_json_file": null}],
    "constitution": "majority",            // or "sandbox", "veto"; or "constitution_files": [...]
    "service_configuration": {"recovery_threshold": 1}
  },
  // or, to recover a lost service from its ledger: "recover": {"previous_service_identity_file": "old.pem",
  //   "previous_ledger_dirs": ["old/ledger"], "previous_snapshot_dirs": ["old/snapshots"]}
  "app": "app.logging:app",
  "signatures": {"every_tx": 5000, "every_ms": 20, "group_commit": true},
  "snapshots": {"every_tx": 10000},  // and, after each, 3x as long as it took (a large state's snapshots)
  "ledger": {"chunk_size": 5000000, "fsync": "batch", "retained_records": 65536},
  "node_certificate": {"curve_id": "Secp256R1"},  // or "Secp384R1" (CCF's default): the node's key, and the
                                                  // service identity's when this node starts or recovers one
  "http": {"max_body_bytes": 1048576, "max_header_bytes": 16384, "idle_timeout": 60,
           "max_open_sessions_soft": 1000, "max_open_sessions_hard": 1010,
           "tls_handshake_timeout": 10, "request_timeout": 30, "max_pipelined": 64, "max_unsent_bytes": 262144},
  "log": {"format": "text", "level": "INFO"}
}
```

Relative paths are relative to the configuration file's directory. The data directory holds everything the
node keeps: `ledger/`, `snapshots/`, the sealed secrets, and `node.json` (written once the node listens:
its address, id and pid).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import orjson

from ledger.files import FsyncPolicy
from network.boundary import DEFAULT_IDENTITY_CURVE_ID, IDENTITY_CURVE_IDS, EnclaveSettings, HttpLimits, SignaturePolicy


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


@dataclass(frozen=True)
class MemberConfig:
    certificate_file: str
    encryption_public_key_file: str | None = None
    data_json_file: str | None = None


@dataclass(frozen=True)
class StartConfig:
    members: tuple[MemberConfig, ...]
    constitution: str = "majority"
    constitution_files: tuple[str, ...] = ()
    service_configuration: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RecoverConfig:
    """Start a new service from a lost one's ledger (disaster recovery)."""

    previous_service_identity_file: str
    previous_ledger_dirs: tuple[str, ...] = ()  # read only; the node's own ledger/ is used as well
    previous_snapshot_dirs: tuple[str, ...] = ()  # read only; the node's own snapshots/ is used as well
    # start from the latest committed snapshot even when the whole ledger is there (faster; receipts and
    # historical queries of transactions before the snapshot are then not served by this node)
    start_from_snapshot: bool = False


@dataclass(frozen=True)
class LogConfig:
    format: str = "text"
    level: str = "INFO"


@dataclass(frozen=True)
class NodeConfig:
    data_dir: str
    service_certificate_file: str
    start: StartConfig | None
    rpc_address: str = "127.0.0.1:8000"
    node_to_node_address: str | None = None  # default: the RPC port + 1000
    node_to_node_published_address: str | None = None  # where others reach it (e.g. a proxy), if elsewhere
    join_target: str | None = None  # "https://host:port" of a node of the service to join
    recover: RecoverConfig | None = None
    election_timeout_ms: int = 1000  # a backup that hears no primary for 1-2x this stands for election
    heartbeat_ms: int = 50
    app: str = "app.logging:app"
    enclave: EnclaveSettings = field(default_factory=EnclaveSettings)
    chunk_size: int = 5_000_000
    fsync: FsyncPolicy = FsyncPolicy.BATCH
    http: HttpLimits = field(default_factory=HttpLimits)
    log: LogConfig = field(default_factory=LogConfig)
    host_data: str = ""

    @property
    def ledger_dir(self) -> str:
        return os.path.join(self.data_dir, "ledger")

    @property
    def snapshot_dir(self) -> str:
        return os.path.join(self.data_dir, "snapshots")

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.rpc_address.rpartition(":")
        return host, int(port)

    @property
    def tick_ms(self) -> int:
        """The host's timer: signatures and consensus both keep time by it."""
        return max(1, min(self.enclave.signatures.every_ms // 2, self.heartbeat_ms, 10))

    @property
    def n2n_address(self) -> str:
        if self.node_to_node_address is not None:
            return self.node_to_node_address
        host, port = self.host_port
        return f"{host}:{port + 1000}"


def _get(obj: dict[str, Any], name: str, kind: type | tuple[type, ...], default: Any = None, *,
         where: str) -> Any:
    value = obj.get(name, default)
    if value is None and default is None:
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise ConfigError(f"{where}{name} must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _section(obj: dict[str, Any], name: str) -> dict[str, Any]:
    value = obj.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be an object")
    return value


def _is_address(text: str) -> bool:
    host, _, port = text.rpartition(":")
    return bool(host) and port.isdigit() and int(port) <= 65535


def parse_config(obj: Any, base_dir: str = ".") -> NodeConfig:
    if not isinstance(obj, dict):
        raise ConfigError("the configuration must be a JSON object")

    def path(value: str | None) -> str | None:
        return None if value is None else os.path.normpath(os.path.join(base_dir, value))

    data_dir = _get(obj, "data_dir", str, where="")
    cert_file = _get(obj, "service_certificate_file", str, where="")
    if data_dir is None or cert_file is None:
        raise ConfigError("data_dir and service_certificate_file are required")
    rpc = _get(obj, "rpc_address", str, "127.0.0.1:8000", where="")
    if not _is_address(rpc):
        raise ConfigError(f"rpc_address must be host:port, got {rpc!r}")
    n2n = _get(obj, "node_to_node_address", str, where="")
    if n2n is not None and not _is_address(n2n):
        raise ConfigError(f"node_to_node_address must be host:port, got {n2n!r}")
    join = _section(obj, "join")
    target = _get(join, "target", str, where="join.")
    if "join" in obj and (target is None or not target.startswith("https://")):
        raise ConfigError("join.target must be the https:// URL of a node of the service")
    if "join" in obj and "start" in obj:
        raise ConfigError("a node either starts a service ('start') or joins one ('join'), not both")
    if "recover" in obj and ("start" in obj or "join" in obj):
        raise ConfigError("a node either starts a service ('start'), joins one ('join') or recovers one "
                          "('recover'), only one of them")
    recover = None
    if "recover" in obj:
        r = _section(obj, "recover")
        previous = _get(r, "previous_service_identity_file", str, where="recover.")
        if previous is None:
            raise ConfigError("recover.previous_service_identity_file is required: the lost service's certificate")
        dirs = {}
        for name in ("previous_ledger_dirs", "previous_snapshot_dirs"):
            value = _get(r, name, list, [], where="recover.")
            if not all(isinstance(d, str) for d in value):
                raise ConfigError(f"recover.{name} must be a list of paths")
            dirs[name] = tuple(str(path(d)) for d in value)
        recover = RecoverConfig(str(path(previous)), **dirs,
                                start_from_snapshot=_get(r, "start_from_snapshot", bool, False, where="recover."))
    start = None
    if "start" in obj:
        s = _section(obj, "start")
        members_raw = s.get("members")
        if not isinstance(members_raw, list) or not members_raw:
            raise ConfigError("start.members must be a non-empty list")
        members = []
        for i, m in enumerate(members_raw):
            if not isinstance(m, dict) or not isinstance(m.get("certificate_file"), str):
                raise ConfigError(f"start.members[{i}].certificate_file is required")
            members.append(MemberConfig(
                str(path(m["certificate_file"])),
                path(_get(m, "encryption_public_key_file", str, where=f"start.members[{i}].")),
                path(_get(m, "data_json_file", str, where=f"start.members[{i}].")),
            ))
        files = _get(s, "constitution_files", list, [], where="start.")
        if not all(isinstance(f, str) for f in files):
            raise ConfigError("start.constitution_files must be a list of paths")
        start = StartConfig(tuple(members), _get(s, "constitution", str, "majority", where="start."),
                            tuple(str(path(f)) for f in files),
                            _get(s, "service_configuration", dict, {}, where="start."))
    sig = _section(obj, "signatures")
    snaps = _section(obj, "snapshots")
    ledger = _section(obj, "ledger")
    http = _section(obj, "http")
    log = _section(obj, "log")
    every_tx = _get(sig, "every_tx", int, 5000, where="signatures.")
    every_ms = _get(sig, "every_ms", int, 20, where="signatures.")
    if every_tx < 1 or every_ms < 1:
        raise ConfigError("signatures.every_tx and signatures.every_ms must be at least 1")
    group_commit = _get(sig, "group_commit", bool, True, where="signatures.")
    retained_records = _get(ledger, "retained_records", int, 65_536, where="ledger.")
    if retained_records < 1:
        raise ConfigError("ledger.retained_records must be at least 1")
    fsync_name = _get(ledger, "fsync", str, "batch", where="ledger.")
    try:
        fsync = FsyncPolicy(fsync_name)
    except ValueError:
        raise ConfigError(f"ledger.fsync must be one of {[p.value for p in FsyncPolicy]}") from None
    identity_curve = _get(_section(obj, "node_certificate"), "curve_id", str, DEFAULT_IDENTITY_CURVE_ID,
                      where="node_certificate.")
    if identity_curve not in IDENTITY_CURVE_IDS:
        raise ConfigError(f"node_certificate.curve_id must be one of {list(IDENTITY_CURVE_IDS)}, "
                          f"not {identity_curve!r}")
    log_format = _get(log, "format", str, "text", where="log.")
    if log_format not in ("text", "json"):
        raise ConfigError("log.format must be 'text' or 'json'")
    return NodeConfig(
        data_dir=str(path(data_dir)),
        service_certificate_file=str(path(cert_file)),
        start=start,
        rpc_address=rpc,
        node_to_node_address=n2n,
        node_to_node_published_address=_get(obj, "node_to_node_published_address", str, where=""),
        join_target=target,
        recover=recover,
        election_timeout_ms=_get(_section(obj, "consensus"), "election_timeout_ms", int, 1000, where="consensus."),
        heartbeat_ms=_get(_section(obj, "consensus"), "heartbeat_ms", int, 50, where="consensus."),
        app=_get(obj, "app", str, "app.logging:app", where=""),
        enclave=EnclaveSettings(SignaturePolicy(every_tx, every_ms, group_commit),
                                _get(snaps, "every_tx", int, 10_000, where="snapshots."),
                                _get(_section(obj, "consensus"), "max_uncommitted_tx", int, 10_000,
                                     where="consensus."),
                                _get(_section(obj, "consensus"), "node_to_node_queue_limit", int, 10_000,
                                     where="consensus."),
                                retained_records, identity_curve),
        chunk_size=_get(ledger, "chunk_size", int, 5_000_000, where="ledger."),
        fsync=fsync,
        http=_http_limits(http),
        log=LogConfig(log_format, _get(log, "level", str, "INFO", where="log.")),
        host_data=_get(obj, "host_data", str, "", where=""),
    )


def _http_limits(http: dict[str, Any]) -> HttpLimits:
    default = HttpLimits()
    ints = {name: _get(http, name, int, getattr(default, name), where="http.")
            for name in ("max_header_bytes", "max_body_bytes", "max_open_sessions_soft", "max_open_sessions_hard",
                         "max_pipelined", "max_unsent_bytes")}
    seconds = {name: float(_get(http, name, (int, float), getattr(default, name), where="http."))
               for name in ("idle_timeout", "tls_handshake_timeout", "request_timeout")}
    if any(v < 1 for v in ints.values()) or any(v <= 0 for v in seconds.values()):
        raise ConfigError("http limits must be positive")
    if ints["max_open_sessions_hard"] < ints["max_open_sessions_soft"]:
        raise ConfigError("http.max_open_sessions_hard must be at least http.max_open_sessions_soft")
    return HttpLimits(max_header_bytes=ints["max_header_bytes"], max_body_bytes=ints["max_body_bytes"],
                      idle_timeout=seconds["idle_timeout"], max_open_sessions_soft=ints["max_open_sessions_soft"],
                      max_open_sessions_hard=ints["max_open_sessions_hard"],
                      tls_handshake_timeout=seconds["tls_handshake_timeout"],
                      request_timeout=seconds["request_timeout"], max_pipelined=ints["max_pipelined"],
                      max_unsent_bytes=ints["max_unsent_bytes"])


def load_config(path: str) -> NodeConfig:
    try:
        with open(path, "rb") as f:
            obj = orjson.loads(f.read())
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except orjson.JSONDecodeError as e:
        raise ConfigError(f"{path} is not JSON: {e}") from None
    return parse_config(obj, os.path.dirname(os.path.abspath(path)))
