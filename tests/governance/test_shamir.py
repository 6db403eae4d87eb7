"""Shamir sharing: any threshold of shares rebuilds the secret, fewer do not."""

from __future__ import annotations

import contextlib
import itertools
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from governance.shamir import SHARE_SIZE, SharingError, combine, full_share, full_share_secret, is_full_share, split

pytestmark = pytest.mark.property


@given(st.binary(min_size=32, max_size=32), st.integers(1, 6), st.integers(0, 4), st.data())
def test_any_threshold_of_shares_recovers_and_fewer_give_another_key(secret: bytes, threshold: int, extra: int,
                                                                      data: st.DataObject) -> None:
    shares = split(secret, threshold, threshold + extra)
    assert all(len(s) == SHARE_SIZE for s in shares)
    chosen = data.draw(st.permutations(shares)).copy()[:threshold]
    assert combine(chosen, 32) == secret
    if threshold > 1:
        fewer = chosen[: threshold - 1]
        # the interpolated value is another key, or does not even fit in 32 bytes: just as useless
        with contextlib.suppress(SharingError):
            assert combine(fewer, 32) != secret


@pytest.mark.unit
def test_every_subset_of_the_threshold_size_works() -> None:
    secret = os.urandom(32)
    shares = split(secret, 3, 5)
    for subset in itertools.combinations(shares, 3):
        assert combine(list(subset), 32) == secret


@pytest.mark.unit
def test_bad_parameters_and_shares_are_refused() -> None:
    for threshold, count in ((0, 3), (4, 3), (2, 256)):
        with pytest.raises(SharingError):
            split(b"x" * 32, threshold, count)
    shares = split(b"x" * 32, 2, 3)
    with pytest.raises(SharingError, match="twice"):
        combine([shares[0], shares[0]], 32)
    with pytest.raises(SharingError):
        combine([shares[0][:-1], shares[1]], 32)
    with pytest.raises(SharingError):
        combine([], 32)


@pytest.mark.unit
def test_shares_of_the_wrong_type_and_bad_sizes_are_sharing_errors() -> None:
    shares = split(b"y" * 32, 2, 2)
    for bad in (["text"], [None], [shares[0], 7]):
        with pytest.raises(SharingError):
            combine(bad, 32)  # type: ignore[arg-type]
    for size in (-1, 0, 65):
        with pytest.raises(SharingError):
            combine(shares, size)


@given(st.binary(min_size=32, max_size=32), st.integers(1, 6), st.integers(0, 4))
def test_the_full_share_is_the_sharings_point_at_zero(secret: bytes, threshold: int, extra: int) -> None:
    """An owner's full key is the point at x = 0 of the same sharing: it is the secret, alone, and no ordinary
    share is one."""
    full = full_share(secret)
    assert is_full_share(full) and len(full) == SHARE_SIZE
    assert full_share_secret(full, 32) == secret
    assert not any(is_full_share(share) for share in split(secret, threshold, threshold + extra))
    with pytest.raises(SharingError):
        full_share_secret(split(secret, threshold, threshold + extra)[0], 32)
    with pytest.raises(SharingError):
        full_share_secret(bytes([0]) + b"\xff" * (SHARE_SIZE - 1), 32)  # larger than a 32-byte secret
