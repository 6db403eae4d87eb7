"""The endpoints every frontend has (ccf-api.md §3, "common"): `/commit`, `/tx`, `/api`.

Transaction status, as CCF reports it to clients polling after a write:
- `Committed`: the seqno is at or below the commit point and was written in the view asked about;
- `Pending`: held but not committed, in that view;
- `Invalid`: the seqno was taken by another view (the write was lost in an election or a rollback), or a
  committed seqno belongs to another view;
- `Unknown`: not held (yet) in that view.
"""

from __future__ import annotations

import enum
from typing import Protocol

from ledger.service_ledger import TxID
from network.endpoints import EndpointContext, EndpointError, Endpoints


class TxStatus(enum.Enum):
    UNKNOWN = "Unknown"
    PENDING = "Pending"
    COMMITTED = "Committed"
    INVALID = "Invalid"


class LedgerView(Protocol):
    """What the status needs from the ledger (ServiceLedger provides it)."""

    @property
    def last_seqno(self) -> int: ...

    @property
    def committed_seqno(self) -> int: ...

    @property
    def view(self) -> int: ...

    def view_of(self, seqno: int) -> int | None: ...


def tx_status(ledger: LedgerView, txid: TxID) -> TxStatus:
    held_view = ledger.view_of(txid.seqno)
    if held_view is None:  # not (or no longer) held
        if txid.view < ledger.view and txid.seqno <= ledger.last_seqno + 1:
            return TxStatus.INVALID  # an older view's seqno that this ledger never kept
        return TxStatus.UNKNOWN
    if held_view != txid.view:
        return TxStatus.INVALID if held_view > txid.view or txid.seqno <= ledger.committed_seqno \
            else TxStatus.UNKNOWN
    return TxStatus.COMMITTED if txid.seqno <= ledger.committed_seqno else TxStatus.PENDING


def parse_txid(text: str | None) -> TxID:
    if text is None:
        raise EndpointError(400, "InvalidQueryParameterValue", "Query parameter 'transaction_id' is required")
    try:
        return TxID.parse(text)
    except ValueError:
        raise EndpointError(400, "InvalidQueryParameterValue",
                            f"The value '{text}' passed to query parameter 'transaction_id' is not a valid "
                            "transaction ID") from None


def add_common_endpoints(frontend: Endpoints, ledger: LedgerView, title: str) -> None:
    """Register `/commit`, `/tx` and `/api` on a frontend reading `ledger`."""

    @frontend.endpoint("GET", "/commit")
    def commit(ctx: EndpointContext) -> object:
        """The latest committed transaction id."""
        seqno = ledger.committed_seqno
        view = ledger.view_of(seqno) if seqno else None
        return {"transaction_id": f"{view or 0}.{seqno}"}

    @frontend.endpoint("GET", "/tx")
    def tx(ctx: EndpointContext) -> object:
        """The status of a transaction id."""
        txid = parse_txid(ctx.query.get("transaction_id", [None])[0])
        return {"status": tx_status(ledger, txid).value, "transaction_id": str(txid)}

    @frontend.endpoint("GET", "/api")
    def api(ctx: EndpointContext) -> object:
        """This frontend's OpenAPI document."""
        return frontend.openapi(title)
