"""Proofs for transactions whose in-memory records were dropped, rebuilt from the ledger's bytes.

A node keeps the Merkle nodes and write-set digests of its recent transactions only (as CCF, which flushes its
tree). For an older one, a receipt's two facts and a historical read's Merkle leaf come from the ledger files:
the write-set digest is the SHA-256 of the entry as stored, and the leaf and path come from the tree the covering
signature transaction stored in `public:ccf.internal.tree` (leaves from the previous signature on, and the peaks
of everything before it).

The files are the host's, so nothing read from them is trusted on its own. The node keeps, for every signature
transaction, the SHA-256 of the entry it verified (32 bytes a signature): `SignatureEntry.read` accepts the
entry read back only if it hashes to that digest, which pins the signed root, both signatures and the stored tree
at once. A tree is accepted only if it is the size of its signature's seqno and its root is the signed root, and
a transaction's entry only if the leaf it makes is that tree's leaf.

Guarantees: every function here is pure; anything the host changed is refused with `LedgerError`, never turned
into a receipt or a historical entry. Not guaranteed: anything about entries outside the covering signature's
tree (they raise `LedgerError`).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from hashlib import sha256

import orjson

from ledger.entry import decode_entry
from ledger.errors import LedgerError, MerkleError
from ledger.merkle import MerkleHistory, PathStep
from ledger.signatures import PrimarySignature, parse_primary_signature
from ledger.tables import COSE_SIGNATURES, SIGNATURES, SINGLETON_KEY, TREE


@dataclass(frozen=True, slots=True)
class SignatureEntry:
    """A signature transaction read back from the files and matched against the digest the node kept."""

    seqno: int
    primary: PrimarySignature
    cose: bytes
    tree: MerkleHistory

    @classmethod
    def read(cls, entry: bytes, seqno: int, verified_digest: bytes) -> SignatureEntry:
        """The signature transaction `entry` at `seqno`, if it is the entry whose SHA-256 the node recorded."""
        if sha256(entry).digest() != verified_digest:
            raise LedgerError(f"the signature transaction at {seqno} read from the ledger files is not the one "
                              "this node verified (the files are damaged or were altered)")
        writes = decode_entry(entry, None).writes
        raw_signature = writes.get(SIGNATURES, {}).get(SINGLETON_KEY)
        raw_cose = writes.get(COSE_SIGNATURES, {}).get(SINGLETON_KEY)
        tree_bytes = writes.get(TREE, {}).get(SINGLETON_KEY)
        if raw_signature is None or tree_bytes is None:
            raise LedgerError(f"the entry at {seqno} is not a signature transaction with a stored tree")
        try:  # (signatures from before the service had an identity carry no COSE signature, as in the replay)
            cose = base64.b64decode(orjson.loads(raw_cose), validate=True) if raw_cose is not None else b""
        except (orjson.JSONDecodeError, TypeError, binascii.Error) as e:
            raise LedgerError(f"the COSE signature at {seqno} cannot be read: {e}") from None
        primary = parse_primary_signature(raw_signature, seqno)
        try:
            tree = MerkleHistory.deserialise(tree_bytes)
            if tree.size != seqno or tree.root() != primary.root:
                raise LedgerError(f"the tree stored at {seqno} is not the one its signature signed")
        except MerkleError as e:
            raise LedgerError(f"the tree stored at {seqno} cannot be read: {e}") from None
        return cls(seqno, primary, cose, tree)

    def leaf(self, seqno: int) -> bytes:
        """The Merkle leaf of the transaction at `seqno`, one of those this signature's stored tree holds."""
        try:
            return self.tree.leaf(seqno)
        except MerkleError as e:
            raise LedgerError(f"the tree stored at {self.seqno} holds no leaf {seqno}: {e}") from None

    def proof(self, entry: bytes, seqno: int, commit_evidence_digest: bytes,
              claims_digest: bytes) -> tuple[bytes, list[PathStep]]:
        """(write-set digest, path to this signature's root) of the transaction whose stored entry is `entry`."""
        write_set_digest = sha256(entry).digest()
        if self.leaf(seqno) != sha256(write_set_digest + commit_evidence_digest + claims_digest).digest():
            raise LedgerError(f"the ledger's entry at {seqno} is not the transaction this node recorded")
        try:
            return write_set_digest, self.tree.path(seqno, self.seqno)
        except MerkleError as e:
            raise LedgerError(f"no proof of {seqno} in the tree stored at {self.seqno}: {e}") from None
