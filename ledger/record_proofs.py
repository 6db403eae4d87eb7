"""A receipt's proof for a transaction whose in-memory records were dropped, rebuilt from the ledger's bytes.

A node keeps the Merkle nodes and write-set digests of its recent transactions only (as CCF, which flushes its
tree). For an older one, the receipt's two facts come from the ledger files: the write-set digest is the SHA-256
of the entry as stored, and the path comes from the tree the covering signature transaction stored in
`public:ccf.internal.tree` (leaves from the previous signature on, and the peaks of everything before it).

Guarantees: `proof_from_entries` is pure; it returns a digest and a path only if the leaf they make (with the
commit evidence and claims the caller holds) is the tree's leaf, and the tree's root is the root the signature
signed, so bytes the host changed are refused with `LedgerError`, never turned into a receipt that does not
verify. Not guaranteed: anything about entries outside the covering signature's tree.
"""

from __future__ import annotations

from hashlib import sha256

from ledger.entry import decode_entry
from ledger.errors import LedgerError, MerkleError
from ledger.merkle import MerkleHistory, PathStep
from ledger.tables import SINGLETON_KEY, TREE


def proof_from_entries(entry: bytes, signature_entry: bytes, seqno: int, signature_seqno: int,
                       commit_evidence_digest: bytes, claims_digest: bytes,
                       signed_root: bytes) -> tuple[bytes, list[PathStep]]:
    """(write-set digest, path to the root signed at `signature_seqno`) of the transaction at `seqno`."""
    try:
        tree_bytes = decode_entry(signature_entry, None).writes.get(TREE, {}).get(SINGLETON_KEY)
        if tree_bytes is None:
            raise LedgerError(f"the signature at {signature_seqno} holds no tree")
        tree = MerkleHistory.deserialise(tree_bytes)
        if tree.size != signature_seqno or tree.root() != signed_root:
            raise LedgerError(f"the tree stored at {signature_seqno} is not the one its signature signed")
        write_set_digest = sha256(entry).digest()
        if tree.leaf(seqno) != sha256(write_set_digest + commit_evidence_digest + claims_digest).digest():
            raise LedgerError(f"the ledger's entry at {seqno} is not the transaction this node recorded")
        return write_set_digest, tree.path(seqno, signature_seqno)
    except MerkleError as e:
        raise LedgerError(f"no proof of {seqno} in the tree stored at {signature_seqno}: {e}") from None
