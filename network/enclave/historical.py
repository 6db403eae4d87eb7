"""Historical queries, as CCF serves them: past state read back from the ledger files, verified, then served.

A handler asks for the entry of a committed transaction (`entry(txid)`), for a range of committed seqnos
(`entries(start, end)`) or for a set of them (`entries_at(seqnos)`). If the node does not hold them yet, the
call raises `HistoricalPending` (202 `Retry-After: 3`, text body, as CCF answers) after asking the host to read
them from its ledger files (`schedule`); the client asks again and gets them once read. Only committed
transactions are served: a pending or unknown id is 404 `TransactionPendingOrUnknown` (with `Cache-Control:
no-cache`), an id that lost its seqno to another view 404 `TransactionInvalid`, a range reaching past the commit
point 400 `InvalidInput`.

Verification: each entry read is decrypted with the ledger secret of its seqno (its GCM tag authenticates the
whole entry), and its Merkle leaf, recomputed from the bytes read, must equal the leaf this node holds for that
seqno (the leaf the signatures signed); its seqno and view must be the ones asked for. Anything else (damaged
or altered file, missing file, framing error) fails the whole request with 500 `InternalError` naming the
seqno: a tampered value is never served. A failure is answered for `hold_seconds`, then the read is tried
again (the file may have been restored). Entries this node holds no Merkle leaf for (before a snapshot it
started from, or flushed) cannot be verified and are refused the same way.

The state "at" a transaction is, as in CCF, that transaction's own writes (`HistoricalEntry`).

Memory and concurrency:
- a request (a set of seqnos) is fetched once however many clients ask for it; its result is held for the
  client that asked until it asks again (then handed over), or for `hold_seconds` if it never does;
- at most `max_requests` requests are in flight or held; past that the oldest held results are dropped, and
  if every slot is in flight a new request is answered 202 without being started (the client retries);
- held results beyond `hold_bytes` are dropped oldest first (never the one just fetched);
- fetched entries also go to an LRU cache bounded by `cache_entries` and `cache_bytes` (the entries' size as
  stored), which answers repeated and overlapping queries without reading the files again;
so what historical queries keep is bounded by `cache_bytes + hold_bytes` plus the one request being read.
Requests do not starve each other through the LRU: a result, once fetched, is held for its client.

Fetches run on the host's loop (one at a time); a request is read in one go. Not here: indexing (a range
query scans its range, as the logging app's range endpoint does page by page).
"""

from __future__ import annotations

import base64
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from loguru import logger

from ledger.entry import decode_entry, merkle_leaf
from ledger.errors import LedgerError, ReceiptNotAvailable
from ledger.kv import WriteSet
from ledger.service_ledger import ServiceLedger
from ledger.txid import TxID
from network.enclave.common_endpoints import TxStatus, parse_txid, tx_status
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints
from network.enclave.http import Response

RETRY_AFTER_SECONDS = 3  # CCF's historical adapter and the logging sample both answer Retry-After: 3
RANGE_PAGE = 10_000  # CCF's max_seqno_per_page: a page is from..from+RANGE_PAGE (inclusive)
TXID_REQUEST_HEADER = "x-ms-ccf-transaction-id"

Runs = tuple[tuple[int, int], ...]  # a request: sorted, disjoint, non-adjacent inclusive seqno ranges


class HistoricalPending(EndpointError):
    """The entries asked for are being fetched: 202 with Retry-After and a text body, as CCF answers."""

    def __init__(self, message: str = "Historical transaction is not currently available.") -> None:
        super().__init__(202, "", message)

    def response(self) -> Response:
        return Response(202, self.message.encode(), (("content-type", "text/plain"),
                                                      ("retry-after", str(RETRY_AFTER_SECONDS))))


@dataclass(frozen=True)
class HistoricalEntry:
    """One committed transaction as read back from the ledger files: its id and its own writes."""

    txid: TxID
    writes: WriteSet
    size: int = field(default=0, compare=False)  # bytes of the entry as stored (what the cache accounts)

    def get(self, table: str, key: bytes) -> bytes | None:
        """The value this transaction wrote under key (None if it wrote none, or removed it)."""
        return self.writes.get(table, {}).get(key)

    def wrote(self, table: str, key: bytes) -> bool:
        """Whether this transaction wrote or removed key."""
        return key in self.writes.get(table, {})


@dataclass
class _Request:
    runs: Runs
    done: bool = False
    entries: list[HistoricalEntry] | None = None
    error: str | None = None
    finished_at: float = 0.0
    size: int = 0


def runs_of(seqnos: Iterable[int]) -> Runs:
    """Seqnos as sorted, merged inclusive ranges."""
    out: list[tuple[int, int]] = []
    for s in sorted(set(seqnos)):
        if out and s == out[-1][1] + 1:
            out[-1] = (out[-1][0], s)
        else:
            out.append((s, s))
    return tuple(out)


def _describe(runs: Runs) -> str:
    text = ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in runs[:4])
    return text + (", ..." if len(runs) > 4 else "")


class HistoricalQueries:
    """Fetch, verify, hold and cache past entries; `schedule` runs a fetch later on the host's loop."""

    def __init__(self, ledger: ServiceLedger, read_range: Callable[[int, int], list[bytes]],
                 schedule: Callable[[Callable[[], None]], None], cache_entries: int = 20_000, *,
                 cache_bytes: int = 128 * 1024 * 1024, hold_bytes: int = 128 * 1024 * 1024,
                 max_requests: int = 64, hold_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ledger = ledger
        self.read_range = read_range
        self.schedule = schedule
        self.cache_entries = cache_entries
        self.cache_bytes = cache_bytes
        self.hold_bytes = hold_bytes
        self.max_requests = max_requests
        self.hold_seconds = hold_seconds
        self.clock = clock
        self._cache: OrderedDict[int, HistoricalEntry] = OrderedDict()
        self._cache_size = 0
        self._requests: OrderedDict[Runs, _Request] = OrderedDict()  # in flight, or done and held

    # --- what handlers call ---------------------------------------------------------------------------

    def check_committed(self, txid: TxID) -> None:
        status = tx_status(self.ledger, txid)
        if status is TxStatus.INVALID:
            raise EndpointError(404, "TransactionInvalid", f"Transaction {txid} is invalid.")
        if status is not TxStatus.COMMITTED:
            raise EndpointError(404, "TransactionPendingOrUnknown",
                                f"Transaction {txid} is pending or unknown: only committed transactions can be "
                                "queried.", (("cache-control", "no-cache"),))

    def check_committed_seqno(self, seqno: int) -> None:
        """400 `InvalidInput` unless `seqno` is committed (CCF's range and sparse endpoints' check)."""
        view = self.ledger.view_of(seqno)
        txid = TxID(self.ledger.view if view is None else view, seqno)
        status = tx_status(self.ledger, txid)
        if status is not TxStatus.COMMITTED:
            raise EndpointError(400, "InvalidInput", f"Only committed transactions can be queried. Transaction "
                                                     f"{txid} is {status.value}")

    @property
    def committed_seqno(self) -> int:
        return self.ledger.committed_seqno

    def entry(self, txid: TxID) -> HistoricalEntry:
        """The committed transaction `txid`'s entry, or `HistoricalPending` while it is fetched."""
        self.check_committed(txid)
        return self._get(((txid.seqno, txid.seqno),),
                         f"Historical transaction {txid} is not currently available.")[0]

    def entries(self, start: int, end: int) -> list[HistoricalEntry]:
        """Entries start..end (all committed), or `HistoricalPending` while they are fetched."""
        if start > end:
            return []
        self._check_range(start, end)
        return self._get(((start, end),),
                         f"Historical transactions from {start} to {end} are not yet available, fetching now")

    def entries_at(self, seqnos: Iterable[int]) -> list[HistoricalEntry]:
        """The entries at these committed seqnos (sorted, without repeats), or `HistoricalPending`."""
        runs = runs_of(seqnos)
        if not runs:
            return []
        self._check_range(runs[0][0], runs[-1][1])
        return self._get(runs, "Historical transactions are not yet available, fetching now")

    def prefetch(self, start: int, end: int) -> None:
        """Start fetching start..end if a slot is free and it is not held or cached already (CCF prefetches the
        next page of a range); never at the cost of another client's held result."""
        if start > end or start < 1 or end > self.ledger.committed_seqno or len(self._requests) >= self.max_requests:
            return
        runs = ((start, end),)
        if runs in self._requests or self._cached(runs) is not None:
            return
        self._start(runs)

    def receipt(self, txid: TxID) -> dict[str, object]:
        """The JSON receipt of a committed transaction (CCF's describe_receipt_v1)."""
        self.check_committed(txid)
        try:
            return self.ledger.receipt(txid.seqno)
        except ReceiptNotAvailable as e:  # e.g. before the snapshot a node started from: another node has it
            raise EndpointError(404, "ResourceNotFound", f"This node cannot issue a receipt for {txid}: {e}") from None
        except LedgerError as e:
            raise EndpointError(500, "InternalError", f"No receipt can be issued for {txid}: {e}") from None

    def cose_receipt(self, txid: TxID) -> bytes:
        """The COSE receipt of a committed transaction; 404 for a signature transaction (none exists)."""
        self.check_committed(txid)
        if self.ledger.is_signature(txid.seqno):
            raise EndpointError(404, "ResourceNotFound",
                                f"No COSE receipt is available for {txid}: it is a signature transaction.")
        try:
            return self.ledger.cose_receipt(txid.seqno)
        except LedgerError as e:
            raise EndpointError(500, "InternalError", f"No COSE receipt can be issued for {txid}: {e}") from None

    def clear_cache(self) -> None:
        """Forget every fetched entry and held result (requests in flight carry on)."""
        self._cache.clear()
        self._cache_size = 0
        for runs in [r for r, req in self._requests.items() if req.done]:
            del self._requests[runs]

    # --- machinery ----------------------------------------------------------------------------------------

    def _check_range(self, start: int, end: int) -> None:
        if start < 1:
            raise EndpointError(400, "InvalidInput", f"Seqnos start at 1, not {start}")
        if end > self.ledger.committed_seqno:
            self.check_committed_seqno(end)

    def _get(self, runs: Runs, pending: str) -> list[HistoricalEntry]:
        self._expire()
        request = self._requests.get(runs)
        if request is None:
            found = self._cached(runs)
            if found is not None:
                return found
            request = self._start(runs)
            if request is None:
                raise HistoricalPending(pending)
        if not request.done:
            raise HistoricalPending(pending)
        if request.error is not None:  # answered until it expires, then read again
            raise EndpointError(500, "InternalError", request.error)
        del self._requests[runs]  # handed over to this client: it holds no memory any more
        assert request.entries is not None
        return request.entries

    def _start(self, runs: Runs) -> _Request | None:
        """Register and schedule a fetch; None if every slot is taken by a fetch in flight."""
        while len(self._requests) >= self.max_requests:
            oldest_done = next((r for r, req in self._requests.items() if req.done), None)
            if oldest_done is None:
                logger.warning(f"{len(self._requests)} historical fetches in flight: {_describe(runs)} must wait")
                return None
            del self._requests[oldest_done]
        request = _Request(runs)
        self._requests[runs] = request
        self.schedule(lambda: self._fetch(request))
        return request

    def _expire(self) -> None:
        now = self.clock()
        expired = [r for r, req in self._requests.items() if req.done and now - req.finished_at > self.hold_seconds]
        for runs in expired:
            del self._requests[runs]

    def _cached(self, runs: Runs) -> list[HistoricalEntry] | None:
        cache = self._cache
        for start, end in runs:
            for seqno in range(start, end + 1):
                if seqno not in cache:
                    return None
        out = []
        for start, end in runs:
            for seqno in range(start, end + 1):
                cache.move_to_end(seqno)
                out.append(cache[seqno])
        return out

    def _fetch(self, request: _Request) -> None:
        """On the host's loop: read, verify, then hold the result for the client and cache its entries."""
        if self._requests.get(request.runs) is not request:
            return  # dropped (cache cleared) before it ran
        try:
            entries = [e for start, end in request.runs for e in self._read_verified(start, end)]
        except Exception as e:  # anything read from disk that does not verify is refused, whatever the cause
            request.error = f"Historical entries {_describe(request.runs)} cannot be served: {e}"
            logger.error(request.error)
        else:
            request.entries = entries
            request.size = sum(e.size for e in entries)
            self._remember(entries)
        request.done = True
        request.finished_at = self.clock()
        self._bound_held(request)

    def _read_verified(self, start: int, end: int) -> list[HistoricalEntry]:
        raws = self.read_range(start, end)
        if len(raws) != end - start + 1:
            raise LedgerError(f"the host returned {len(raws)} entries for {start}..{end}")
        out = []
        for seqno, raw in enumerate(raws, start):
            try:
                decoded = decode_entry(raw, self.ledger.secrets)
            except LedgerError as e:
                raise LedgerError(f"entry {seqno} read from the ledger files does not verify: {e}") from e
            try:
                expected = self.ledger.leaf(seqno)
            except LedgerError as e:
                raise LedgerError(f"entry {seqno} cannot be verified: this node holds no Merkle leaf for it "
                                  f"({e})") from e
            leaf = merkle_leaf(decoded.write_set_digest, decoded.commit_evidence_digest, decoded.claims_digest)
            if decoded.seqno != seqno or leaf != expected:
                raise LedgerError(f"entry {seqno} read from the ledger files does not match this node's Merkle "
                                  "tree (the ledger files are damaged or were altered)")
            if decoded.view != self.ledger.view_of(seqno):
                raise LedgerError(f"entry {seqno} read from the ledger files is of view {decoded.view}, this node "
                                  f"committed it in view {self.ledger.view_of(seqno)}")
            out.append(HistoricalEntry(TxID(decoded.view, seqno), decoded.writes, len(raw)))
        return out

    def _remember(self, entries: list[HistoricalEntry]) -> None:
        cache = self._cache
        for entry in entries:
            old = cache.pop(entry.txid.seqno, None)
            if old is not None:
                self._cache_size -= old.size
            cache[entry.txid.seqno] = entry
            self._cache_size += entry.size
        while cache and (len(cache) > self.cache_entries or self._cache_size > self.cache_bytes):
            _, evicted = cache.popitem(last=False)
            self._cache_size -= evicted.size

    def _bound_held(self, keep: _Request) -> None:
        held = sum(req.size for req in self._requests.values() if req.done)
        for runs, req in list(self._requests.items()):
            if held <= self.hold_bytes:
                break
            if req.done and req is not keep:
                held -= req.size
                del self._requests[runs]


@runtime_checkable
class HistoricalNode(Protocol):
    """What historical endpoints need from `ctx.node` (the `Enclave` provides it)."""

    @property
    def historical(self) -> HistoricalQueries: ...


def historical_queries(ctx: EndpointContext) -> HistoricalQueries:
    """The node's historical queries, for a handler (500 when the frontend runs without a node)."""
    node = ctx.node
    if not isinstance(node, HistoricalNode) or not isinstance(node.historical, HistoricalQueries):
        raise EndpointError(500, "InternalError", "Historical queries need a node; this frontend runs without one")
    return node.historical


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
        return self.historical.receipt(txid)

    def cose_endorsements(self, txid: TxID) -> list[bytes]:
        if txid.seqno > self.ledger.committed_seqno or self.ledger.view_of(txid.seqno) != txid.view:
            raise EndpointError(404, "TransactionPendingOrUnknown", f"{txid} is not a committed transaction")
        return self.ledger.cose_endorsements(txid.seqno)


def add_receipt_endpoint(frontend: Endpoints, source: ReceiptSource) -> None:
    @frontend.endpoint("GET", "/receipt")
    def receipt(ctx: EndpointContext) -> object:
        """The JSON receipt of a committed transaction (?transaction_id=)."""
        return source.receipt(parse_txid(ctx.query.get("transaction_id", [None])[0]))

    @frontend.endpoint("GET", "/receipt/cose_endorsements")
    def cose_endorsements(ctx: EndpointContext) -> object:
        """The COSE endorsements (base64 COSE_Sign1, newest first) from the current service key to the key that
        signed the COSE receipt of a transaction of an earlier service (empty in the current one)."""
        chain = source.cose_endorsements(parse_txid(ctx.query.get("transaction_id", [None])[0]))
        return {"endorsements": [base64.b64encode(e).decode() for e in chain]}
