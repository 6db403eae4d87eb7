"""CCF's reference sample, the logging app (samples/apps/logging/logging.cpp): private and public records.

Loaded by a node as `app.logging:app`. Current state: record, read, delete, count and delete-all on
`/log/private` (map `records`, encrypted in the ledger) and `/log/public` (`public:records`), with `record_claim`
binding SHA-256(msg) into the receipt. Keys are CCF's blit encoding of a size_t (8 bytes little-endian), values
the message's UTF-8 bytes. As in CCF's sample, every write also keeps `first_write_version` /
`public:first_write_version` (id -> seqno of the id's first write, recorded by its next write), from which the
range endpoints start by default.

Historical endpoints (mode HISTORICAL, on the node's `network.enclave.historical` machinery reached through `ctx.node`),
with CCF's behaviour (samples/apps/logging/logging.cpp):
- `GET /log/{private,public}/historical?id=N`, header `x-ms-ccf-transaction-id: <view>.<seqno>` (400
  `MissingRequiredHeader` / `InvalidHeaderValue`): `{"msg"}` as written by that transaction; 204 if that
  transaction did not write the key (or removed it); 404 `TransactionPendingOrUnknown` / `TransactionInvalid`
  for a transaction that is not committed; 202 + `Retry-After: 3` while the node reads it from its ledger files.
- `GET /log/{private,public}/historical_receipt?id=N` (+ header): `{"msg", "receipt"}` with the transaction's
  JSON receipt; the public variant drops `leaf_components.claims_digest`, so a verifier recomputes it as
  SHA-256(msg) (for a message recorded with `record_claim`).
- `GET /log/{public,private}/historical/range?id=N[&from_seqno=&to_seqno=]`: `{"entries": [{"seqno", "id",
  "msg"}], "@nextLink"?}`, the writes of key N in from..min(to, from + 10 000) (removals skipped); while the
  range goes on, `@nextLink` is `/app/log/<scope>/historical/range?from_seqno=<page end + 1>&to_seqno=<to>&id=N`
  and the next page is prefetched. Defaults: from_seqno = the id's first write (its last write if it was
  written once; `{"entries": []}` if never written), to_seqno = the id's last write (the commit point if it is
  deleted now). 400 `InvalidInput` if to < from or to_seqno is not committed.
- `GET /log/private/historical/sparse?id=N&seqnos=1,5,9`: the same entries for those seqnos (sorted, no
  repeats); the largest must be committed (400 `InvalidInput`); no pagination (as in CCF).
- `GET /log/public/cose_receipt` (+ header): the transaction's COSE receipt (CCF 6.x), `application/cbor`.

Deviations from CCF's sample: no `jwt` policy (user_cert only); ranges scan the ledger page by page instead of
using an index, so a page with no write of the key still costs a read of its entries, and `@nextLink` is set
whenever the range goes on (CCF leaves it out when its index shows no write in the next page); malformed
`from_seqno` / `to_seqno` are 400 `InvalidQueryParameterValue` (CCF falls back to the default); `from_seqno=0`
reads from seqno 1; `/log/public/cose_receipt` is served from the node's records without a ledger fetch (never
202), and is 404 `ResourceNotFound` for a signature transaction; sparse queries are limited to 10 001 seqnos.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from network.enclave.auth import UserCert
from network.enclave.endpoints import EndpointContext, EndpointError, Endpoints, Mode
from network.enclave.historical import (
    RANGE_PAGE,
    HistoricalEntry,
    HistoricalQueries,
    historical_queries,
    requested_txid,
)
from network.enclave.http import Response

app = Endpoints("/app")

PRIVATE = "records"
PUBLIC = "public:records"
FIRST_WRITES = {PRIVATE: "first_write_version", PUBLIC: "public:first_write_version"}
USER = (UserCert(),)
MAX_SPARSE_SEQNOS = RANGE_PAGE + 1


MAX_U64 = 2**64 - 1  # ids are CCF's size_t keys


def _uint_param(ctx: EndpointContext, name: str) -> int | None:
    raw = ctx.query.get(name, [None])[0]
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_U64:
        raise EndpointError(400, "InvalidQueryParameterValue",
                            f"Query parameter '{name}' must be an unsigned 64-bit integer")
    return int(raw)


def _id_param(ctx: EndpointContext) -> int:
    value = _uint_param(ctx, "id")
    if value is None:
        raise EndpointError(400, "InvalidQueryParameterValue", "Query parameter 'id' must be an unsigned integer")
    return value


def _key(record_id: int) -> bytes:
    return record_id.to_bytes(8, "little")  # CCF's blit encoding of a size_t key


def _seqno_value(seqno: int) -> bytes:
    return seqno.to_bytes(8, "little", signed=True)  # CCF's blit encoding of a SeqNo (int64)


def _update_first_write(ctx: EndpointContext, table: str, key: bytes) -> None:
    """CCF's update_first_write: the first write of a key is only known (as a version) to the next write."""
    first_writes = FIRST_WRITES[table]
    if not ctx.tx.has(first_writes, key):
        previous = ctx.tx.get_version(table, key)
        if previous:
            ctx.tx.put(first_writes, key, _seqno_value(previous))


def _record(ctx: EndpointContext, table: str) -> bool:
    """Record a message under an id (record_claim: bind SHA-256(msg) into the receipt)."""
    body: Any = ctx.json()
    record_id = body.get("id") if isinstance(body, dict) else None
    if not isinstance(record_id, int) or isinstance(record_id, bool) or not 0 <= record_id <= MAX_U64:
        raise EndpointError(400, "InvalidInput", 'Body must be {"id": unsigned integer, "msg": string}')
    msg = body.get("msg")
    if not isinstance(msg, str) or not msg:
        raise EndpointError(400, "InvalidInput", "Cannot record an empty log message.")
    key = _key(body["id"])
    ctx.tx.put(table, key, msg.encode())
    _update_first_write(ctx, table, key)
    if body.get("record_claim") is True:
        ctx.set_claims_digest(hashlib.sha256(msg.encode()).digest())
    return True


def _read(ctx: EndpointContext, table: str) -> dict[str, str]:
    """Read the message recorded under ?id=."""
    record_id = _id_param(ctx)
    value = ctx.tx.get(table, _key(record_id))
    if value is None:
        raise EndpointError(400, "ResourceNotFound", f"No such record: {record_id}.")
    return {"msg": value.decode()}


def _delete(ctx: EndpointContext, table: str) -> bool:
    """Remove the record under ?id= (true if there was one)."""
    key = _key(_id_param(ctx))
    existed = ctx.tx.has(table, key)
    ctx.tx.remove(table, key)
    _update_first_write(ctx, table, key)
    return existed


def _delete_all(ctx: EndpointContext, table: str) -> bool:
    """Remove every record."""
    for key, _ in list(ctx.tx.items(table)):
        _update_first_write(ctx, table, key)
    ctx.tx.clear(table)
    return True


def _count(ctx: EndpointContext, table: str) -> int:
    """The number of records."""
    return ctx.tx.size(table)


# --- historical ---------------------------------------------------------------------------------------------


def _historical_entry(ctx: EndpointContext) -> tuple[HistoricalQueries, HistoricalEntry]:
    """CCF's historical adapter: the header's transaction id, committed, fetched (else 400/404/202)."""
    historical = historical_queries(ctx)
    txid = requested_txid(ctx)
    return historical, historical.entry(txid)


def _historical(ctx: EndpointContext, table: str) -> Any:
    """The message recorded under ?id= by the transaction named in x-ms-ccf-transaction-id (204 if none)."""
    _, entry = _historical_entry(ctx)
    value = entry.get(table, _key(_id_param(ctx)))
    if value is None:
        return Response(204)
    return {"msg": value.decode()}


def _historical_receipt(ctx: EndpointContext, table: str) -> Any:
    """That message with the transaction's receipt (public: without claims_digest, recompute it from msg)."""
    historical, entry = _historical_entry(ctx)
    value = entry.get(table, _key(_id_param(ctx)))
    if value is None:
        return Response(204)
    receipt = dict(historical.receipt(entry.txid))
    leaf_components = receipt.get("leaf_components")
    if table == PUBLIC and isinstance(leaf_components, dict):
        receipt["leaf_components"] = {k: v for k, v in leaf_components.items() if k != "claims_digest"}
    return {"msg": value.decode(), "receipt": receipt}


def _entries_of(entries: list[HistoricalEntry], table: str, record_id: int) -> list[dict[str, Any]]:
    """The writes of the key among entries (removals skipped, as CCF's sample does)."""
    key = _key(record_id)
    out = []
    for entry in entries:
        value = entry.get(table, key)
        if value is not None:
            out.append({"seqno": entry.txid.seqno, "id": record_id, "msg": value.decode()})
    return out


def _default_from(ctx: EndpointContext, table: str, key: bytes) -> int | None:
    first = ctx.tx.get(FIRST_WRITES[table], key)
    if first is not None:
        return int.from_bytes(first, "little", signed=True)
    return ctx.tx.get_version(table, key) or None


def _historical_range(ctx: EndpointContext, table: str, path: str) -> Any:
    """The writes of ?id= from from_seqno to to_seqno (paged, with @nextLink)."""
    record_id = _id_param(ctx)
    key = _key(record_id)
    from_seqno = _uint_param(ctx, "from_seqno")
    to_seqno = _uint_param(ctx, "to_seqno")
    historical = historical_queries(ctx)
    if from_seqno is None:
        from_seqno = _default_from(ctx, table, key)
        if from_seqno is None:
            return {"entries": []}  # never written
    if to_seqno is None:
        to_seqno = ctx.tx.get_version(table, key) or historical.committed_seqno
    if to_seqno < from_seqno:
        raise EndpointError(400, "InvalidInput", f"Invalid range: Starts at {from_seqno} but ends at {to_seqno}")
    historical.check_committed_seqno(to_seqno)
    begin = max(from_seqno, 1)
    end = min(to_seqno, begin + RANGE_PAGE)
    entries = historical.entries(begin, end)
    response: dict[str, Any] = {"entries": _entries_of(entries, table, record_id)}
    if end != to_seqno:
        historical.prefetch(end + 1, min(to_seqno, end + 1 + RANGE_PAGE))
        response["@nextLink"] = f"/app{path}?from_seqno={end + 1}&to_seqno={to_seqno}&id={record_id}"
    return response


def _historical_sparse(ctx: EndpointContext, table: str) -> Any:
    """The writes of ?id= at the seqnos listed in ?seqnos= (comma-separated)."""
    record_id = _id_param(ctx)
    raw = ctx.query.get("seqnos", [None])[0]
    if raw is None:
        raise EndpointError(400, "InvalidQueryParameterValue", "Missing query parameter 'seqnos'")
    seqnos = set()
    for term in raw.split(","):
        if not (term.isascii() and term.isdigit()):
            raise EndpointError(400, "InvalidQueryParameterValue", f"Unable to parse '{term}' as a seqno")
        seqnos.add(int(term))
    if len(seqnos) > MAX_SPARSE_SEQNOS:
        raise EndpointError(400, "InvalidQueryParameterValue", f"At most {MAX_SPARSE_SEQNOS} seqnos can be queried")
    historical = historical_queries(ctx)
    historical.check_committed_seqno(max(seqnos))
    return {"entries": _entries_of(historical.entries_at(seqnos), table, record_id)}


def _cose_receipt(ctx: EndpointContext) -> Response:
    """The COSE receipt (CBOR) of the transaction named in x-ms-ccf-transaction-id."""
    historical = historical_queries(ctx)
    receipt = historical.cose_receipt(requested_txid(ctx))
    return Response(200, receipt, (("content-type", "application/cbor"),))


def _bind(handler: Callable[[EndpointContext, str], Any], table: str) -> Callable[[EndpointContext], Any]:
    def bound(ctx: EndpointContext) -> Any:
        return handler(ctx, table)

    bound.__doc__ = handler.__doc__
    return bound


def _bind_range(table: str, path: str) -> Callable[[EndpointContext], Any]:
    def bound(ctx: EndpointContext) -> Any:
        return _historical_range(ctx, table, path)

    bound.__doc__ = _historical_range.__doc__
    return bound


HISTORICAL = Mode.HISTORICAL

for _prefix, _table in (("/log/private", PRIVATE), ("/log/public", PUBLIC)):
    app.endpoint("POST", _prefix, mode=Mode.READWRITE, auth=USER)(_bind(_record, _table))
    app.endpoint("GET", _prefix, auth=USER)(_bind(_read, _table))
    app.endpoint("DELETE", _prefix, mode=Mode.READWRITE, auth=USER)(_bind(_delete, _table))
    app.endpoint("DELETE", f"{_prefix}/all", mode=Mode.READWRITE, auth=USER)(_bind(_delete_all, _table))
    app.endpoint("GET", f"{_prefix}/count", auth=USER)(_bind(_count, _table))
    app.endpoint("GET", f"{_prefix}/historical", mode=HISTORICAL, auth=USER)(_bind(_historical, _table))
    app.endpoint("GET", f"{_prefix}/historical_receipt", mode=HISTORICAL, auth=USER)(
        _bind(_historical_receipt, _table))
    app.endpoint("GET", f"{_prefix}/historical/range", mode=HISTORICAL, auth=USER)(
        _bind_range(_table, f"{_prefix}/historical/range"))

app.endpoint("GET", "/log/private/historical/sparse", mode=HISTORICAL, auth=USER)(_bind(_historical_sparse, PRIVATE))
app.endpoint("GET", "/log/public/cose_receipt", mode=HISTORICAL, auth=USER)(_cose_receipt)
