"""Shamir secret sharing over the prime field of the Mersenne prime 2^521 - 1.

`split(secret, threshold, count)` gives `count` shares, any `threshold` of which rebuild the secret with
`combine`; fewer give an unrelated value (information-theoretically nothing about the secret). A share is
`x (1 byte, 1..255) || y (66 bytes, big-endian)`. The point at x = 0 is the secret itself: `full_share` gives it
(as CCF deals the whole wrapping key to recovery owners, a share whose index is zero) and `full_share_secret` reads
it back. Secrets are at most 64 bytes. Randomness comes from
`secrets.randbelow` (the dealer's, not the consensus's, so determinism across nodes does not apply: the
dealt shares are written to the ledger and replicated as data).
"""

from __future__ import annotations

import secrets as random_source

from governance.errors import GovernanceError

PRIME = 2**521 - 1
_Y_BYTES = 66
SHARE_SIZE = 1 + _Y_BYTES
MAX_SHARES = 255


class SharingError(GovernanceError):
    """Shares cannot be made or combined (bad parameters, malformed or duplicate shares)."""


def _eval(coefficients: list[int], x: int) -> int:
    acc = 0
    for c in reversed(coefficients):
        acc = (acc * x + c) % PRIME
    return acc


def split(secret: bytes, threshold: int, count: int) -> list[bytes]:
    if not 1 <= threshold <= count <= MAX_SHARES:
        raise SharingError(f"need 1 <= threshold ({threshold}) <= shares ({count}) <= {MAX_SHARES}")
    if len(secret) > 64:
        raise SharingError("a secret is at most 64 bytes")
    coefficients = [int.from_bytes(secret, "big")] + [random_source.randbelow(PRIME) for _ in range(threshold - 1)]
    return [bytes([x]) + _eval(coefficients, x).to_bytes(_Y_BYTES, "big") for x in range(1, count + 1)]


def combine(shares: list[bytes], secret_size: int) -> bytes:
    """The secret (of `secret_size` bytes) the shares interpolate to at x = 0."""
    if not isinstance(secret_size, int) or not 1 <= secret_size <= 64:
        raise SharingError("a secret is 1 to 64 bytes")
    points: dict[int, int] = {}
    for share in shares:
        if not isinstance(share, bytes | bytearray) or len(share) != SHARE_SIZE or share[0] == 0:
            raise SharingError(f"a share is {SHARE_SIZE} bytes starting with a non-zero index")
        if share[0] in points:
            raise SharingError(f"share {share[0]} given twice")
        y = int.from_bytes(share[1:], "big")
        if y >= PRIME:
            raise SharingError("share value out of range")
        points[share[0]] = y
    if not points:
        raise SharingError("no shares")
    secret = 0
    for xi, yi in points.items():
        num, den = 1, 1
        for xj in points:
            if xj != xi:
                num = num * -xj % PRIME
                den = den * (xi - xj) % PRIME
        secret = (secret + yi * num * pow(den, -1, PRIME)) % PRIME
    if secret >= 1 << (8 * secret_size):
        raise SharingError("the shares do not combine to a secret of that size (too few or wrong shares)")
    return secret.to_bytes(secret_size, "big")


def full_share(secret: bytes) -> bytes:
    """The share at x = 0, which is the secret: one is enough (what a recovery owner holds)."""
    if len(secret) > 64:
        raise SharingError("a secret is at most 64 bytes")
    return bytes([0]) + int.from_bytes(secret, "big").to_bytes(_Y_BYTES, "big")


def is_full_share(share: bytes) -> bool:
    return len(share) == SHARE_SIZE and share[0] == 0


def full_share_secret(share: bytes, secret_size: int) -> bytes:
    """The secret (of `secret_size` bytes) a full share holds."""
    if not is_full_share(share):
        raise SharingError(f"a full share is {SHARE_SIZE} bytes starting with index 0")
    y = int.from_bytes(share[1:], "big")
    if y >= 1 << (8 * secret_size):
        raise SharingError("the full share does not hold a secret of that size")
    return y.to_bytes(secret_size, "big")
