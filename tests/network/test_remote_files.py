"""The enclave process's view of the host's ledger files (`RemoteLedgerFiles`): it mirrors the entries not yet
committed, so a primary reading back what it just wrote (to replicate it) asks the host nothing; committed
entries, older ones, and anything after a truncation are asked for."""

from __future__ import annotations

from typing import Any

import pytest

from network.enclave.process import RemoteLedgerFiles

pytestmark = pytest.mark.unit


class _HostFiles:
    """Stands for the host end of the link: a list of entries, and a log of the questions asked."""

    def __init__(self) -> None:
        self.entries: list[bytes] = []
        self.asked: list[str] = []

    def _call(self, name: str, *args: Any) -> None:
        if name == "files.append":
            self.entries.append(args[0])
        elif name != "files.commit":
            raise AssertionError(name)

    def ask(self, name: str, *args: Any) -> Any:
        self.asked.append(name)
        if name == "files.state":
            return 1 if self.entries else 0, len(self.entries), 0, "/ledger"
        if name == "files.read_range":
            return self.entries[args[0] - 1: args[1]]
        if name in ("files.truncate", "files.discard_after"):
            del self.entries[args[0]:]
            return [] if name == "files.discard_after" else None
        if name == "files.start_after":  # a node starting from a snapshot: the host's entries are others now
            self.entries = [b"host-%d" % (i + 1) for i in range(len(self.entries))]
            return None
        raise AssertionError(name)


def test_the_newest_entries_are_read_back_without_asking_the_host() -> None:
    host = _HostFiles()
    files = RemoteLedgerFiles(host)  # type: ignore[arg-type]
    for i in range(1, 6):
        files.append(b"entry-%d" % i)
    host.asked.clear()
    assert files.read_range(2, 5) == [b"entry-2", b"entry-3", b"entry-4", b"entry-5"]
    assert host.asked == []


def test_entries_older_than_the_mirror_and_after_a_truncation_are_asked_for() -> None:
    host = _HostFiles()
    files = RemoteLedgerFiles(host)  # type: ignore[arg-type]
    files.RECENT_BYTES = 16  # two entries of 7 bytes
    for i in range(1, 6):
        files.append(b"entry-%d" % i)
    host.asked.clear()
    assert files.read_range(4, 5) == [b"entry-4", b"entry-5"] and host.asked == []
    assert files.read_range(3, 5) == [b"entry-3", b"entry-4", b"entry-5"] and host.asked == ["files.read_range"]
    files.truncate(3)
    files.append(b"other-4")
    host.asked.clear()
    assert files.read_range(4, 4) == [b"other-4"] and host.asked == []  # mirrored again from the append
    assert files.read_range(3, 4) == [b"entry-3", b"other-4"] and host.asked == ["files.read_range"]


def test_committed_entries_are_read_from_the_host() -> None:
    host = _HostFiles()
    files = RemoteLedgerFiles(host)  # type: ignore[arg-type]
    for i in range(1, 6):
        files.append(b"entry-%d" % i)
    files.commit(3)
    host.asked.clear()
    assert files.read_range(4, 5) == [b"entry-4", b"entry-5"] and host.asked == []
    assert files.read_range(3, 3) == [b"entry-3"] and host.asked == ["files.read_range"]


@pytest.mark.parametrize("change", ["discard_after", "start_after"])
def test_a_change_the_host_makes_to_its_files_empties_the_mirror(change: str) -> None:
    host = _HostFiles()
    files = RemoteLedgerFiles(host)  # type: ignore[arg-type]
    for i in range(1, 6):
        files.append(b"entry-%d" % i)
    getattr(files, change)(5)
    host.asked.clear()
    assert files.read_range(5, 5) == [host.entries[4]] and host.asked == ["files.read_range"]
