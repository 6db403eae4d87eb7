"""Ledger secrets: the AES-256-GCM keys that encrypt private maps, and the commit evidence they derive.

Guarantees (as CCF's src/node/ledger_secrets.h):
- A secret applies from its start seqno until the next secret's start; `for_seqno` finds it.
- Rekeying at seqno R keeps the old secret for R itself; the new one applies from R + 1.
- Commit evidence for (view, seqno) is `ce:<view>.<seqno>:<hex nonce>` with
  nonce = HMAC-SHA256(HMAC-SHA256(secret, "Commit S"), "<view>.<seqno>"), as CCF derives it.
- The records written to `public:ccf.internal.historical_encrypted_ledger_secret` chain the secrets
  the way `verify_ledger_secrets_chain.py` checks.

Not provided here: wrapping secrets for other nodes or for recovery shares (governance and the node).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ledger.errors import LedgerSecretError

SECRET_SIZE = 32


def _hmac_pads(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states after absorbing key^ipad and key^opad (RFC 2104), to copy per message.

    `hmac.digest` re-derives these for every call (about 4 us with OpenSSL 3); copying two hash
    states costs a third of that, and the commit path computes one HMAC per transaction.
    """
    block = key.ljust(64, b"\0")
    return (hashlib.sha256(bytes(b ^ 0x36 for b in block)), hashlib.sha256(bytes(b ^ 0x5C for b in block)))


@dataclass(frozen=True)
class LedgerSecret:
    """One ledger secret, with its cipher object and commit secret computed once."""

    start: int
    raw: bytes = field(repr=False)
    aead: AESGCM = field(repr=False, compare=False)
    commit_secret: bytes = field(repr=False, compare=False)
    _pads: tuple[Any, Any] = field(repr=False, compare=False)

    @classmethod
    def create(cls, start: int, raw: bytes | None = None) -> LedgerSecret:
        raw = os.urandom(SECRET_SIZE) if raw is None else raw
        if len(raw) != SECRET_SIZE:
            raise LedgerSecretError(f"a ledger secret is {SECRET_SIZE} bytes, got {len(raw)}")
        commit_secret = hmac.digest(raw, b"Commit S", "sha256")
        return cls(start, raw, AESGCM(raw), commit_secret, _hmac_pads(commit_secret))

    def commit_nonce(self, view: int, seqno: int) -> bytes:
        return self._nonce(f"{view}.{seqno}".encode())

    def _nonce(self, txid: bytes) -> bytes:
        inner, outer = self._pads
        h = inner.copy()
        h.update(txid)
        o = outer.copy()
        o.update(h.digest())
        return bytes(o.digest())

    def commit_evidence(self, view: int, seqno: int) -> str:
        return f"ce:{view}.{seqno}:{self.commit_nonce(view, seqno).hex()}"

    def commit_evidence_digest(self, view: int, seqno: int) -> bytes:
        """SHA-256 of the commit evidence string: what the entry and the Merkle leaf carry."""
        txid = b"%d.%d" % (view, seqno)
        return hashlib.sha256(b"ce:" + txid + b":" + self._nonce(txid).hex().encode()).digest()


def commit_evidence_digest(commit_evidence: str) -> bytes:
    return hashlib.sha256(commit_evidence.encode()).digest()


class LedgerSecrets:
    """The ordered set of ledger secrets of a service, by start seqno."""

    def __init__(self, secrets: list[LedgerSecret] | None = None) -> None:
        self._secrets: list[LedgerSecret] = sorted(secrets or [], key=lambda s: s.start)
        self._starts = [s.start for s in self._secrets]

    @classmethod
    def fresh(cls, start: int = 1) -> LedgerSecrets:
        return cls([LedgerSecret.create(start)])

    def __len__(self) -> int:
        return len(self._secrets)

    def all(self) -> list[LedgerSecret]:
        return list(self._secrets)

    @property
    def latest(self) -> LedgerSecret:
        if not self._secrets:
            raise LedgerSecretError("no ledger secret")
        return self._secrets[-1]

    def covers(self, seqno: int) -> bool:
        """Whether a secret held applies to `seqno` (a recovering service holds none for the old ledger
        until the members' shares are in)."""
        return bool(self._starts) and self._starts[0] <= seqno

    def for_seqno(self, seqno: int) -> LedgerSecret:
        i = bisect_right(self._starts, seqno)
        if i == 0:
            raise LedgerSecretError(f"no ledger secret applies to seqno {seqno}")
        return self._secrets[i - 1]

    def add(self, secret: LedgerSecret) -> None:
        if self._secrets and secret.start <= self._secrets[-1].start:
            raise LedgerSecretError(
                f"a new secret must start after {self._secrets[-1].start}, not at {secret.start}"
            )
        self._secrets.append(secret)
        self._starts.append(secret.start)

    def restore_earlier(self, earlier: list[LedgerSecret]) -> None:
        """Add the secrets of an earlier service (disaster recovery): each must start before every secret
        held now, so the secrets held keep applying where they did."""
        first = self._starts[0] if self._starts else None
        for secret in earlier:
            if first is not None and secret.start >= first:
                raise LedgerSecretError(f"a restored secret must start before {first}, not at {secret.start}")
        merged = {s.start: s for s in earlier}
        if len(merged) != len(earlier):
            raise LedgerSecretError("two restored secrets start at the same seqno")
        self._secrets = sorted(merged.values(), key=lambda s: s.start) + self._secrets
        self._starts = [s.start for s in self._secrets]

    def rekey(self, rekey_seqno: int, raw: bytes | None = None) -> LedgerSecret:
        """Add a secret applying from `rekey_seqno + 1`; the rekey transaction keeps the old one."""
        new = LedgerSecret.create(rekey_seqno + 1, raw)
        self.add(new)
        return new

    def rollback(self, seqno: int) -> None:
        """Forget secrets introduced by rekeys rolled back (rekey tx above `seqno`)."""
        while len(self._secrets) > 1 and self._secrets[-1].start > seqno + 1:
            self._secrets.pop()
            self._starts.pop()


def _b64(b: bytes) -> str:
    return base64.b64encode(b).decode()


def opening_secret_record(current: LedgerSecret) -> dict[str, Any]:
    """The record written when a service opens: the next rekey will name `current.start`."""
    return {"next_version": current.start}


def rekey_secret_record(
    previous: LedgerSecret, new: LedgerSecret, previous_record_seqno: int | None
) -> dict[str, Any]:
    """The record a rekey transaction writes: the previous secret, encrypted under the new one."""
    iv = os.urandom(12)
    ct_tag = new.aead.encrypt(iv, previous.raw, None)
    encrypted = ct_tag[-16:] + iv + ct_tag[:-16]
    entry: dict[str, Any] = {"encrypted_data": _b64(encrypted), "version": previous.start}
    if previous_record_seqno is not None:
        entry["previous_secret_stored_version"] = previous_record_seqno
    return {"previous_ledger_secret": entry}


def recovery_secret_record(
    previous: LedgerSecret, new: LedgerSecret, previous_record_seqno: int | None
) -> dict[str, Any]:
    """The record a recovered service writes once it has its predecessor's secrets back: the predecessor's
    latest secret encrypted under the recovered service's secret, and `next_version`, where that secret
    starts, so the chain goes on from it (CCF writes both fields at the end of a recovery)."""
    record = rekey_secret_record(previous, new, previous_record_seqno)
    record["next_version"] = new.start
    return record


def latest_secret_start(record: dict[str, Any], record_seqno: int) -> int:
    """Where the secret in force after the record written at `record_seqno` starts: `next_version` when the
    record names it (opening, recovery), else just after the rekey that wrote it."""
    next_version = record.get("next_version")
    return int(next_version) if isinstance(next_version, int) else record_seqno + 1


def unwrap_secret_chain(records: list[tuple[int, dict[str, Any]]], latest_raw: bytes) -> list[LedgerSecret]:
    """Every ledger secret of a service, from its latest secret (unwrapped with the recovery shares) and the
    records of `public:ccf.internal.historical_encrypted_ledger_secret` as (seqno written, record), oldest
    first: each record holds the secret it replaced, encrypted under the one that followed. Raises
    `LedgerSecretError` if a record does not decrypt (wrong latest secret, or a damaged record)."""
    if not records:
        raise LedgerSecretError("no ledger secret record to start the chain from")
    last_seqno, last_record = records[-1]
    latest = LedgerSecret.create(latest_secret_start(last_record, last_seqno), latest_raw)
    by_start = {latest.start: latest}
    for seqno, record in reversed(records):
        if "previous_ledger_secret" not in record:
            continue
        encrypting = by_start.get(latest_secret_start(record, seqno))
        if encrypting is None:
            raise LedgerSecretError(f"the ledger secret record at seqno {seqno} names a secret not in the chain")
        previous = decrypt_previous_secret(record, encrypting)
        by_start.setdefault(previous.start, previous)
    return [by_start[start] for start in sorted(by_start)]


def decrypt_previous_secret(record: dict[str, Any], new: LedgerSecret) -> LedgerSecret:
    """Recover the previous secret from a rekey record, given the secret that followed it."""
    try:
        prev = record["previous_ledger_secret"]
        data = base64.b64decode(prev["encrypted_data"])
        tag, iv, ct = data[:16], data[16:28], data[28:]
        raw = new.aead.decrypt(iv, ct + tag, None)
        return LedgerSecret.create(int(prev["version"]), raw)
    except (KeyError, TypeError, ValueError, InvalidTag) as e:
        raise LedgerSecretError(f"cannot decrypt previous ledger secret: {e!r}") from e


_OAEP = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


def node_secrets_record(nodes: dict[str, rsa.RSAPublicKey], new: LedgerSecret) -> dict[str, Any]:
    """What a rekey writes to `public:ccf.internal.encrypted_ledger_secrets`: the new secret encrypted to each
    trusted node's encryption key (RSA-OAEP-SHA256), so backups can switch to it."""
    return {node_id: [{"encrypted_secret": _b64(key.encrypt(new.raw, _OAEP)), "version": new.start}]
            for node_id, key in sorted(nodes.items())}


def node_secrets_entries(nodes: dict[str, rsa.RSAPublicKey], secrets: list[LedgerSecret]) -> dict[str, Any]:
    """Several secrets encrypted to each node (a recovered service hands its predecessor's secrets to its nodes
    this way), in the format of `node_secrets_record`."""
    return {node_id: [{"encrypted_secret": _b64(key.encrypt(s.raw, _OAEP)), "version": s.start} for s in secrets]
            for node_id, key in sorted(nodes.items())}


def secrets_for_node(record: dict[str, Any], node_id: str, key: rsa.RSAPrivateKey) -> list[LedgerSecret]:
    """Every secret a record of `public:ccf.internal.encrypted_ledger_secrets` gives `node_id` (none if it
    names other nodes)."""
    entries = record.get(node_id)
    if not isinstance(entries, list):
        return []
    out = []
    for entry in entries:
        try:
            raw = key.decrypt(base64.b64decode(entry["encrypted_secret"]), _OAEP)
            out.append(LedgerSecret.create(int(entry["version"]), raw))
        except (KeyError, TypeError, ValueError) as e:
            raise LedgerSecretError(f"a ledger secret for node {node_id} cannot be decrypted: {e}") from None
    return out
