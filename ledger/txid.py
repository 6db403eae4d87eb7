"""Transaction ids: `<view>.<seqno>`, as CCF writes them."""

from __future__ import annotations

from typing import NamedTuple


class TxID(NamedTuple):
    """A transaction id, `<view>.<seqno>` (a NamedTuple: one is made per committed transaction)."""

    view: int
    seqno: int

    def __str__(self) -> str:
        return f"{self.view}.{self.seqno}"

    @classmethod
    def parse(cls, text: str) -> TxID:
        view, _, seqno = text.partition(".")
        if not (view.isdigit() and seqno.isdigit()):
            raise ValueError(f"{text!r} is not a transaction id <view>.<seqno>")
        return cls(int(view), int(seqno))
