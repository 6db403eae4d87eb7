"""CCF's reference sample, the logging app (ccf-api.md §4.1): private and public records.

Loaded by a node as `app.logging:app`. This part holds the current-state endpoints: record, read, delete,
count and delete-all on `/log/private` (map `records`, encrypted in the ledger) and `/log/public`
(`public:records`), with `record_claim` binding the message into the receipt. The historical endpoints
need the node's historical-query machinery and come with it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from network.auth import UserCert
from network.endpoints import EndpointContext, EndpointError, Endpoints, Mode

app = Endpoints("/app")

PRIVATE = "records"
PUBLIC = "public:records"
USER = (UserCert(),)


def _id_param(ctx: EndpointContext) -> int:
    raw = ctx.query.get("id", [None])[0]
    if raw is None or not raw.isdigit():
        raise EndpointError(400, "InvalidQueryParameterValue", "Query parameter 'id' must be an unsigned integer")
    return int(raw)


def _key(record_id: int) -> bytes:
    return record_id.to_bytes(8, "little")  # CCF's blit encoding of a size_t key


def _record(ctx: EndpointContext, table: str) -> bool:
    """Record a message under an id (record_claim: bind SHA-256(msg) into the receipt)."""
    body: Any = ctx.json()
    if not isinstance(body, dict) or not isinstance(body.get("id"), int) or body["id"] < 0:
        raise EndpointError(400, "InvalidInput", 'Body must be {"id": unsigned integer, "msg": string}')
    msg = body.get("msg")
    if not isinstance(msg, str) or not msg:
        raise EndpointError(400, "InvalidInput", "Cannot record an empty log message.")
    ctx.tx.put(table, _key(body["id"]), msg.encode())
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
    key = _key(_id_param(ctx))
    existed = ctx.tx.has(table, key)
    ctx.tx.remove(table, key)
    return existed


def _delete_all(ctx: EndpointContext, table: str) -> bool:
    ctx.tx.clear(table)
    return True


def _count(ctx: EndpointContext, table: str) -> int:
    return ctx.tx.size(table)


def _bind(handler: Callable[[EndpointContext, str], Any], table: str) -> Callable[[EndpointContext], Any]:
    def bound(ctx: EndpointContext) -> Any:
        return handler(ctx, table)

    bound.__doc__ = handler.__doc__
    return bound


for _prefix, _table in (("/log/private", PRIVATE), ("/log/public", PUBLIC)):
    app.endpoint("POST", _prefix, mode=Mode.READWRITE, auth=USER)(_bind(_record, _table))
    app.endpoint("GET", _prefix, auth=USER)(_bind(_read, _table))
    app.endpoint("DELETE", _prefix, mode=Mode.READWRITE, auth=USER)(_bind(_delete, _table))
    app.endpoint("DELETE", f"{_prefix}/all", mode=Mode.READWRITE, auth=USER)(_bind(_delete_all, _table))
    app.endpoint("GET", f"{_prefix}/count", auth=USER)(_bind(_count, _table))
