"""Small helpers the tests share: damaging a file on purpose, and finishing a ledger with a committed signature."""

from __future__ import annotations

from ledger.service_ledger import ServiceLedger
from ledger.txid import TxID


def flip_byte(path: str, offset: int) -> None:
    """Flip the lowest bit of the byte at `offset` in the file at `path`."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))


def sign_and_commit(ledger: ServiceLedger, *, end_chunk: bool = True) -> TxID:
    """End the chunk (by default) at a new signature, make it durable and commit up to it."""
    if end_chunk:
        ledger.request_chunk()
    sig = ledger.emit_signature()
    ledger.flush()
    ledger.commit_to(sig.seqno)
    return sig
