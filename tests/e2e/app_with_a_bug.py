"""The logging sample plus one endpoint with a bug, for the end-to-end tests of how a node survives a failing
handler (loaded by a node as `tests.e2e.app_with_a_bug:app`).

`POST /app/log/private/buggy` takes a record like `POST /app/log/private`, writes it, then fails with an
unhandled exception while the message is in its local variables: the node must answer 500 `InternalError`,
commit nothing, keep serving, and log the failure without the request's data.
"""

from __future__ import annotations

from app.logging import PRIVATE
from app.logging import app as logging_app
from network.enclave.auth import UserCert
from network.enclave.endpoints import EndpointContext, Mode

app = logging_app.copy()


@app.endpoint("POST", "/log/private/buggy", mode=Mode.READWRITE, auth=(UserCert(),))
def buggy(ctx: EndpointContext) -> object:
    """Write a private record, then fail."""
    body = ctx.json()
    msg = str(body["msg"])
    ctx.tx.put(PRIVATE, int(body["id"]).to_bytes(8, "little"), msg.encode())
    per_part = len(msg) // body.get("parts", 0)  # the bug: ZeroDivisionError with the message in scope
    return {"per_part": per_part, "msg": msg}
