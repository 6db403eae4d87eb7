"""Virtual attestation (CCF's `Insecure_Virtual`): what a node claims about its code, and the join check.

A virtual quote is `{measurement, host_data, report_data}`:
- `measurement` = hex SHA-256 over the code the node runs: every `.py` and `.js` file of the project's
  packages, in sorted path order, each as `path NUL length NUL bytes` (so renames and moves change it);
  deterministic for identical installs;
- `host_data` = hex SHA-256 of the host's configuration statement (what the operator asserts about the host);
- `report_data` = hex SHA-256 of the node's public key (SubjectPublicKeyInfo DER), binding the quote to it.

Nothing here is secure: anyone can write such a quote. It exists so that the join path, governance of
measurements and host data, and the ledger records are exercised exactly as on real hardware.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import os
from collections.abc import Iterable

import orjson
from cryptography.hazmat.primitives.asymmetric import ec

from ledger.genesis import VIRTUAL_FORMAT, VirtualQuote
from ledger.identity import key_id
from ledger.kv import Tx
from ledger.tables import VIRTUAL_HOST_DATA, VIRTUAL_MEASUREMENTS

PACKAGES = ("ledger", "governance", "network", "app")


class AttestationError(Exception):
    """A quote is malformed, not bound to the node's key, or not allowed by governance."""

    code = "InvalidQuote"


def _package_root(package: str) -> str:
    path = importlib.import_module(package).__file__
    if path is None:
        raise AttestationError(f"package {package} has no files")
    return os.path.dirname(os.path.abspath(path))


def code_measurement(packages: Iterable[str] = PACKAGES) -> str:
    """hex SHA-256 over the code files of `packages` (see the module docstring)."""
    digest = hashlib.sha256()
    for package in sorted(packages):
        root = _package_root(package)
        files = []
        for directory, subdirs, names in os.walk(root):
            subdirs[:] = sorted(d for d in subdirs if d != "__pycache__")
            files += [os.path.join(directory, n) for n in names if n.endswith((".py", ".js"))]
        for path in sorted(files):
            relative = f"{package}/{os.path.relpath(path, root)}".replace(os.sep, "/").encode()
            with open(path, "rb") as f:
                content = f.read()
            digest.update(relative + b"\0" + str(len(content)).encode() + b"\0" + content)
    return digest.hexdigest()


def host_data(statement: bytes) -> str:
    return hashlib.sha256(statement).hexdigest()


def make_quote(node_public_key: ec.EllipticCurvePublicKey, measurement: str, host: str) -> VirtualQuote:
    return VirtualQuote(measurement=measurement, host_data=host, report_data=key_id(node_public_key))


def verify_quote(tx: Tx, quote_info: dict[str, object], node_public_key: ec.EllipticCurvePublicKey) -> VirtualQuote:
    """Check a joining node's quote: well formed, bound to its key, measurement and host data allowed."""
    if not isinstance(quote_info, dict) or quote_info.get("format") != VIRTUAL_FORMAT:
        raise AttestationError(f"Quote format must be {VIRTUAL_FORMAT}")
    try:
        raw = base64.b64decode(str(quote_info["quote"]), validate=True)
        quote = VirtualQuote.parse(raw)
    except (KeyError, ValueError, TypeError, orjson.JSONDecodeError) as e:
        raise AttestationError(f"Quote could not be parsed: {e!r}") from None
    if quote.report_data != key_id(node_public_key):
        raise AttestationError("Quote report data does not contain node's public key hash")
    if tx.get(VIRTUAL_MEASUREMENTS, quote.measurement) is None:
        raise AttestationError(f"Quote does not contain known enclave measurement: {quote.measurement}")
    if tx.get(VIRTUAL_HOST_DATA, quote.host_data) is None:
        raise AttestationError(f"Quote host data is not authorised: {quote.host_data}")
    return quote
