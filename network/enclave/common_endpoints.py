"""The endpoints every frontend has (CCF's src/endpoints/common_endpoint_registry.cpp): `/commit`, `/tx`, `/api`.

Transaction status, as CCF reports it to clients polling after a write:
- `Committed`: the seqno is at or below the commit point and was written in the view asked about;
- `Pending`: held but not committed, in that view;
- `Invalid`: the seqno is committed in another view, or it is not held in that view and a later view has
  committed something (the write was lost in an election or a rollback and can never commit);
- `Unknown`: not held (yet) in that view, and no later view has committed.
"""

from __future__ import annotations

import enum
from typing import Protocol

from ledger.txid import TxID
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints


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
    """CCF's evaluation (src/node/tx_status.h): compare the view this ledger holds the seqno in with the
    asked view; a seqno not held is Invalid once a later view has been committed (it can never commit)."""
    held_view = ledger.view_of(txid.seqno)
    committed = txid.seqno <= ledger.committed_seqno
    if held_view == txid.view:
        return TxStatus.COMMITTED if committed else TxStatus.PENDING
    if committed:
        return TxStatus.INVALID  # committed in another view
    committed_view = ledger.view_of(ledger.committed_seqno) or 0
    if committed_view > txid.view:
        return TxStatus.INVALID
    return TxStatus.UNKNOWN


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
