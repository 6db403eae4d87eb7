"""Governance's own maps (proposals, their state, replay keys); the service maps it shares are in `ledger.tables`."""

from __future__ import annotations

COSE_HISTORY = "public:ccf.gov.cose_history"
COSE_RECENT_PROPOSALS = "public:ccf.gov.cose_recent_proposals"
PROPOSALS = "public:ccf.gov.proposals"
PROPOSALS_INFO = "public:ccf.gov.proposals_info"

DEFAULT_RECENT_PROPOSALS_WINDOW = 100
