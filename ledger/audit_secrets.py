"""The auditor's ledger secrets file: what `audit ledger --secrets FILE` reads to check private domains.

Format (JSON, UTF-8): an array of objects, one per ledger secret, with strictly increasing starts:

    [{"start": 1, "secret": "<base64 of 32 bytes>"}, {"start": 74, "secret": "..."}]

`start` is the first seqno the secret encrypts (1 for the service's first secret; R + 1 for the secret a rekey
at seqno R introduced). Guarantees: `load_secrets` accepts exactly this shape and raises `LedgerSecretError`
with a one-line reason otherwise; `dump_secrets` writes it (`load_secrets(dump_secrets(s))` holds the same
secrets). The file holds keys that decrypt every private record of the service: keep it as secret as they are.
"""

from __future__ import annotations

import base64
import binascii

import orjson

from ledger.errors import LedgerSecretError
from ledger.secrets import SECRET_SIZE, LedgerSecret, LedgerSecrets


def load_secrets(data: bytes) -> LedgerSecrets:
    """Parse a secrets file; `LedgerSecretError` says what is wrong with it."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        raise LedgerSecretError(f"secrets file is not JSON: {e}") from None
    if not isinstance(items, list) or not items:
        raise LedgerSecretError('secrets file must be a non-empty JSON array of {"start": seqno, "secret": base64}')
    secrets: list[LedgerSecret] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"start", "secret"}:
            raise LedgerSecretError(f'secret {i}: expected exactly the keys "start" and "secret"')
        start, secret = item["start"], item["secret"]
        if not isinstance(start, int) or isinstance(start, bool) or start < 1:
            raise LedgerSecretError(f"secret {i}: start must be a seqno (an integer >= 1)")
        if secrets and start <= secrets[-1].start:
            raise LedgerSecretError(f"secret {i}: starts must increase ({start} after {secrets[-1].start})")
        if not isinstance(secret, str):
            raise LedgerSecretError(f"secret {i}: secret must be a base64 string")
        try:
            raw = base64.b64decode(secret, validate=True)
        except (binascii.Error, ValueError):
            raise LedgerSecretError(f"secret {i}: secret is not base64") from None
        if len(raw) != SECRET_SIZE:
            raise LedgerSecretError(f"secret {i}: a ledger secret is {SECRET_SIZE} bytes, got {len(raw)}")
        secrets.append(LedgerSecret.create(start, raw))
    return LedgerSecrets(secrets)


def dump_secrets(secrets: LedgerSecrets) -> bytes:
    return orjson.dumps([{"start": s.start, "secret": base64.b64encode(s.raw).decode()} for s in secrets.all()],
                        option=orjson.OPT_INDENT_2) + b"\n"
