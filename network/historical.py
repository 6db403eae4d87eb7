"""Historical queries (ccf-api.md §4.4): past state read back from the ledger files, verified, then served.

A handler asks for the state at a transaction id, or for a range of seqnos. If the node has not fetched it
yet, the request is answered 202 `Retry-After` (CCF's behaviour) while the host reads the entries from its
ledger files; once read, each entry is decrypted with the ledger secret of its seqno (its GCM tag
authenticates it) and its Merkle leaf recomputed and compared with the leaf this node holds for that seqno,
so a file altered on disk can never be served. Only committed transactions are served: a pending or unknown
id is 404 `TransactionPendingOrUnknown`, an id that lost its seqno to another view 404 `TransactionInvalid`.

The state "at" a transaction is, as in CCF, that transaction's own writes. Fetched entries are kept in a
small LRU cache.

Not here: indexing (a range query scans the range).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ledger.entry import decode_entry, merkle_leaf
from ledger.errors import LedgerError
from ledger.kv import WriteSet
from ledger.service_ledger import ServiceLedger, TxID
from network.common_endpoints import TxStatus, parse_txid, tx_status
from network.endpoints import EndpointContext, EndpointError, Endpoints
from network.http import Response

RETRY_AFTER_SECONDS = 1
RANGE_PAGE = 10_000
TXID_REQUEST_HEADER = "x-ms-ccf-transaction-id"


class HistoricalPending(EndpointError):
    """The entries asked for are being fetched: 202 with Retry-After, as CCF answers."""

    def __init__(self) -> None:
        super().__init__(202, "", "Historical transaction is not currently available.")

    def response(self) -> Response:
        return Response(202, self.message.encode(), (("content-type", "text/plain"),
                                                      ("retry-after", str(RETRY_AFTER_SECONDS))))


@dataclass(frozen=True)
class HistoricalEntry:
    txid: TxID
    writes: WriteSet

    def get(self, table: str, key: bytes) -> bytes | None:
        """The value this transaction wrote under key (None if it wrote none, or removed it)."""
        return self.writes.get(table, {}).get(key)

    def wrote(self, table: str, key: bytes) -> bool:
        return key in self.writes.get(table, {})


class HistoricalQueries:
    """Fetch, verify and cache past entries; `schedule` runs a fetch later on the host's loop."""

    def __init__(self, ledger: ServiceLedger, read_range: Callable[[int, int], list[bytes]],
                 schedule: Callable[[Callable[[], None]], None], cache_entries: int = 20_000) -> None:
        self.ledger = ledger
        self.read_range = read_range
        self.schedule = schedule
        self.cache_entries = cache_entries
        self._cache: OrderedDict[int, HistoricalEntry] = OrderedDict()
        self._fetching: set[tuple[int, int]] = set()
        self.failures: dict[tuple[int, int], str] = {}

    def check_committed(self, txid: TxID) -> None:
        status = tx_status(self.ledger, txid)
        if status is TxStatus.INVALID:
            raise EndpointError(404, "TransactionInvalid", f"Transaction {txid} is invalid.")
        if status is not TxStatus.COMMITTED:
            raise EndpointError(404, "TransactionPendingOrUnknown",
                                f"Transaction {txid} is pending or unknown: only committed transactions can be "
                                "queried.", (("cache-control", "no-cache"),))

    def entry(self, txid: TxID) -> HistoricalEntry:
        """The committed transaction `txid`'s entry, or `HistoricalPending` while it is fetched."""
        self.check_committed(txid)
        return self.entries(txid.seqno, txid.seqno)[0]

    def entries(self, start: int, end: int) -> list[HistoricalEntry]:
        """Entries start..end (committed), or `HistoricalPending` while any is fetched."""
        found = self._cached(start, end)
        if found is not None:
            return found
        key = (start, end)
        failure = self.failures.pop(key, None)
        if failure is not None:
            raise EndpointError(500, "InternalError", failure)
        if key not in self._fetching:
            self._fetching.add(key)
            self.schedule(lambda: self._fetch(start, end))
        found = self._cached(start, end)  # a synchronous schedule has already fetched it
        if found is None:
            raise HistoricalPending()
        return found

    def _cached(self, start: int, end: int) -> list[HistoricalEntry] | None:
        out = []
        for seqno in range(start, end + 1):
            entry = self._cache.get(seqno)
            if entry is None:
                return None
            self._cache.move_to_end(seqno)
            out.append(entry)
        return out

    def _fetch(self, start: int, end: int) -> None:
        try:
            for offset, raw in enumerate(self.read_range(start, end)):
                seqno = start + offset
                decoded = decode_entry(raw, self.ledger.secrets)
                leaf = merkle_leaf(decoded.write_set_digest, decoded.commit_evidence_digest, decoded.claims_digest)
                if decoded.seqno != seqno or leaf != self.ledger.merkle.leaf(seqno):
                    raise LedgerError(f"entry {seqno} read from the ledger files does not match this node's "
                                      "Merkle tree")
                self._cache[seqno] = HistoricalEntry(TxID(decoded.view, seqno), decoded.writes)
                self._cache.move_to_end(seqno)
            while len(self._cache) > max(self.cache_entries, end - start + 1):
                self._cache.popitem(last=False)
        except (LedgerError, IndexError, OSError) as e:
            self.failures[(start, end)] = f"Historical entries {start}..{end} cannot be served: {e}"
        finally:
            self._fetching.discard((start, end))


def requested_txid(ctx: EndpointContext) -> TxID:
    """The transaction id a historical endpoint is asked about (CCF's request header)."""
    raw = ctx.request.headers.get(TXID_REQUEST_HEADER)
    if raw is None:
        raise EndpointError(400, "MissingRequiredHeader", f"Missing required header {TXID_REQUEST_HEADER}")
    try:
        return TxID.parse(raw.strip())
    except ValueError:
        raise EndpointError(400, "InvalidHeaderValue",
                            f"'{raw}' in header {TXID_REQUEST_HEADER} is not a valid transaction id") from None


class ReceiptSource:
    """What the receipt endpoint needs (the enclave provides it)."""

    def __init__(self, ledger: ServiceLedger, historical: HistoricalQueries) -> None:
        self.ledger = ledger
        self.historical = historical

    def receipt(self, txid: TxID) -> dict[str, object]:
        self.historical.check_committed(txid)
        return self.ledger.receipt(txid.seqno)


def add_receipt_endpoint(frontend: Endpoints, source: ReceiptSource) -> None:
    @frontend.endpoint("GET", "/receipt")
    def receipt(ctx: EndpointContext) -> object:
        """The JSON receipt of a committed transaction (?transaction_id=)."""
        return source.receipt(parse_txid(ctx.query.get("transaction_id", [None])[0]))
