"""The one exception tree of the `ledger` package.

Every failure the ledger core reports is a `LedgerError`; callers (the node's frontends, CLIs) decide
how to present it. Errors about bytes on disk carry the file, offset and seqno they concern, when known,
so that an operator can find the damage.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base of every error raised by the ledger core."""


class LocatedError(LedgerError):
    """An error about stored bytes: says which file, offset and seqno, when known.

    `reason` is the message without the location, for wrapping in another located error.
    """

    def __init__(
        self, message: str, *, file: str | None = None, offset: int | None = None, seqno: int | None = None
    ) -> None:
        where = [f"{label} {value}" for label, value in (("file", file), ("offset", offset), ("seqno", seqno))
                 if value is not None]
        super().__init__(f"{message} ({', '.join(where)})" if where else message)
        self.reason = message
        self.file = file
        self.offset = offset
        self.seqno = seqno


# --- key-value store ---------------------------------------------------------------------------------


class KVError(LedgerError):
    """Misuse of the key-value store."""


class TransactionConflict(KVError):
    """A key (or map) this transaction read was changed by a transaction committed since; retry."""

    def __init__(self, map_name: str, key: bytes | None, read_version: int, changed_at: int) -> None:
        what = f"map {map_name!r}" if key is None else f"key {key!r} of map {map_name!r}"
        super().__init__(f"{what} read at version {read_version} was changed at version {changed_at}")
        self.map_name = map_name
        self.key = key
        self.read_version = read_version
        self.changed_at = changed_at


class VersionUnavailable(KVError):
    """A read at a version that is in the future or was compacted away."""


class TransactionClosed(KVError):
    """The transaction was already committed or abandoned."""


class ReadOnlyTransaction(KVError):
    """A write was attempted through a read-only transaction."""


class RollbackBelowCommit(KVError):
    """Rollback to a seqno below the committed (compacted) version."""


# --- serialised entries and secrets ------------------------------------------------------------------


class EntryFormatError(LocatedError):
    """A serialised entry (or snapshot) is malformed."""


class DecryptionError(EntryFormatError):
    """The GCM tag of an entry does not verify: wrong ledger secret or tampered bytes."""


class LedgerSecretError(LedgerError):
    """No ledger secret applies, or a secret is malformed."""


# --- Merkle history ----------------------------------------------------------------------------------


class MerkleError(LedgerError):
    """Invalid use of the Merkle history (index out of range, flushed leaf, bad serialisation)."""


# --- ledger files (host side) ------------------------------------------------------------------------


class LedgerFileError(LocatedError):
    """A ledger directory or chunk file cannot be used."""


class CorruptedCommittedChunk(LedgerFileError):
    """A committed chunk is damaged: the node must not start on it."""


# --- verification ------------------------------------------------------------------------------------


class VerificationError(LocatedError):
    """Verification of a ledger (offline audit or replay) failed."""


class ReceiptError(LedgerError):
    """A receipt does not verify. Subclasses say which check failed."""


class ReceiptFormatError(ReceiptError):
    """The receipt is malformed: missing or ill-typed fields, undecodable bytes."""


class ReceiptSignatureError(ReceiptError):
    """The signature over the recomputed root does not verify."""


class ReceiptEndorsementError(ReceiptError):
    """The signing certificate is not endorsed by the trusted service identity."""


class ReceiptClaimsMismatch(ReceiptError):
    """The receipt's claims digest differs from the expected one."""


class ReceiptNotAvailable(LedgerError):
    """No receipt can be issued yet (transaction unknown, not yet signed or not committed)."""


class SnapshotError(LedgerError):
    """A snapshot cannot be written or loaded."""


class RecoveryError(LedgerError):
    """The previous service's ledger cannot be recovered (the message names the file, seqno or reason)."""
