"""
The queue listing served from memory (L{xrelay.operations.listing.ListedSpool}): the
same entries, in the same order and states, as reading the spool, through moves and
removals; and nothing read from disk for an entry it already knows.
"""

from __future__ import annotations

from pathlib import Path

from twisted.internet import defer

from xrelay.envelope import Envelope
from xrelay.lifecycle import DEFERRED, QUEUED
from xrelay.operations.listing import ListedSpool
from xrelay.spool import Spool


def inline(f, *args):
    return defer.maybeDeferred(f, *args)


def receive(spool, n: int) -> list[str]:
    ids = []
    for i in range(n):
        message = spool.incoming(Envelope("printer@example.com", (f"r{i}@example.net",),
                                          account="main", received_at=1.0))
        message.write(b"Subject: listed\r\n\r\nhi\r\n")
        message.commit().addCallback(ids.append)
    return ids


def summary(entries) -> list[tuple[str, str, int]]:
    return [(e.entry_id, e.state, e.attempts) for e in entries]


def test_the_listing_is_the_spool_through_moves_and_removals(tmp_path: Path) -> None:
    real = Spool(str(tmp_path / "spool"), run_blocking=inline)
    spool = ListedSpool(real)
    ids = receive(spool, 5)
    entries = {e.entry_id: e for e in spool.entries()}  # as the engine does at start
    spool.move(entries[ids[0]], DEFERRED, attempts=1, next_attempt=99.0)
    spool.remove(entries[ids[1]])
    spool.move(spool.get(ids[0]), QUEUED, attempts=2)  # deferred, and due again
    assert summary(spool.listing()) == summary(real.entries())
    assert summary(spool.listing(QUEUED)) == summary(real.entries(QUEUED))
    assert dict((i, a) for i, _, a in summary(spool.listing()))[ids[0]] == 2

    reads: list[str] = []
    real_find = real.find
    real.find = lambda entry_id: reads.append(entry_id) or real_find(entry_id)
    spool.listing()
    assert reads == []  # every entry known: only the folders were listed
