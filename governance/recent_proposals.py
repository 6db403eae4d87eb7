"""Replay protection for proposals, and proposal ids, as CCF computes them (src/node/gov/handlers/proposals.h).

A proposal's replay key is `<created_at, 10 digits>:<hex SHA-256 of the COSE signature>`, kept in
`public:ccf.gov.cose_recent_proposals` (value: the proposal id). A key already there is a replay; a
`created_at` older than the median kept key is too old; the table keeps the newest `window` keys
(`recent_cose_proposals_window_size` in the service configuration, default 100). There is no check
against a clock: only against the window, so that every node decides the same.
"""

from __future__ import annotations

import hashlib

from governance.errors import InvalidCreatedAt, ProposalCreatedTooLongAgo, ProposalReplay
from governance.tables import COSE_RECENT_PROPOSALS, DEFAULT_RECENT_PROPOSALS_WINDOW
from ledger.kv import Tx
from ledger.tables import SERVICE_CONFIG, SINGLETON_KEY

MAX_CREATED_AT = 9_999_999_999


def proposal_id(root_at_read: bytes, cose_signature: bytes) -> str:
    """hex SHA-256(Merkle root at the transaction's read version || SHA-256(COSE signature))."""
    return hashlib.sha256(root_at_read + hashlib.sha256(cose_signature).digest()).hexdigest()


def window_size(tx: Tx) -> int:
    config = tx.get_json(SERVICE_CONFIG, SINGLETON_KEY)
    if isinstance(config, dict) and isinstance(config.get("recent_cose_proposals_window_size"), int):
        return max(int(config["recent_cose_proposals_window_size"]), 1)
    return DEFAULT_RECENT_PROPOSALS_WINDOW


def record_proposal_submission(tx: Tx, created_at: int, cose_signature: bytes, new_proposal_id: str) -> None:
    """Refuse a replayed or too-old proposal, else remember it (dropping the oldest beyond the window)."""
    if created_at > MAX_CREATED_AT:
        raise InvalidCreatedAt("Header parameter created_at value is too large")
    key = f"{created_at:010d}:{hashlib.sha256(cose_signature).hexdigest()}"
    existing = tx.get_str(COSE_RECENT_PROPOSALS, key)
    if existing is not None:
        raise ProposalReplay(f"Proposal submission replay, already exists as proposal {existing}")
    keys = sorted(k.decode() for k in tx.keys(COSE_RECENT_PROPOSALS))
    if keys:
        median_created_at = keys[len(keys) // 2].split(":", 1)[0]
        if key.split(":", 1)[0] < median_created_at:
            raise ProposalCreatedTooLongAgo(
                f"Proposal created too long ago, created_at must be greater than {median_created_at}")
    tx.put_str(COSE_RECENT_PROPOSALS, key, new_proposal_id)
    window = window_size(tx)
    if len(keys) >= window - 1:  # one was just added
        for old in keys[: len(keys) - (window - 1)]:
            tx.remove(COSE_RECENT_PROPOSALS, old)
