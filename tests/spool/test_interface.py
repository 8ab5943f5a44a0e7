"""
The promises of L{ISpool}, checked against every implementation: the real spool on
disk and the in-memory one of L{xrelay.testing}.  A test here that needs to know which
spool it runs on is a promise missing from the interface.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from zope.interface.verify import verifyObject

from xrelay.envelope import Envelope, Reply
from xrelay.interfaces import (IIncomingMessage, ISpool, ISpoolEntry, NotAnEntryId,
                               SpoolFull, TransitionRefused, UnknownEntry)
from xrelay.lifecycle import (ACTIVE, CORRUPT, DEFERRED, FAILED, LIFECYCLE, QUEUED,
                              STATES, is_entry_id)
from xrelay.spool import Spool, run_inline
from xrelay.testing import MemorySpool

ENVELOPE = Envelope(sender="scanner@example.com",
                    recipients=("a@example.org", "b@example.org"),
                    client_address="192.168.10.7", account="main",
                    received_at=1700000000.0)
MESSAGE = b"From: scanner@example.com\r\nSubject: scan\r\n\r\nline 1\r\n.dot\r\n"
BUSY = Reply(451, "4.7.500 Server busy. Please try again later.")

NOT_IDS = ["", "../queued/x", "20261201T232515.123456-4242-000001/../x", "*",
           "20261201T232515.123456-4242-00000\x00", "entry1", 42, None,
           "20261201T232515.123456-4242-000001.json"]


@pytest.fixture(params=["disk", "memory"])
def spool(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    if request.param == "disk":
        made: Any = Spool(str(tmp_path / "spool"), run_blocking=run_inline)
    else:
        made = MemorySpool(directory=str(tmp_path / "memory"))
    made.recover()
    return made


def result(d: "Deferred[Any]") -> Any:
    """The result of a Deferred both spools fire at once in these tests."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "the spool did not finish synchronously"
    if hasattr(box[0], "raiseException"):
        box[0].raiseException()
    return box[0]


def commit(spool: Any, data: bytes = MESSAGE, envelope: Envelope = ENVELOPE,
           bounce_of: str | None = None) -> str:
    message = spool.incoming(envelope, bounce_of)
    for i in range(0, len(data), 5):
        message.write(data[i:i + 5])
    return str(result(message.commit()))


def test_provides_the_interface(spool: Any) -> None:
    assert verifyObject(ISpool, spool)
    message = spool.incoming(ENVELOPE)
    assert verifyObject(IIncomingMessage, message)
    message.write(MESSAGE)
    entry = spool.get(result(message.commit()))
    assert verifyObject(ISpoolEntry, entry)
    assert os.path.isdir(spool.directory)


def test_commit_then_get(spool: Any) -> None:
    entry_id = commit(spool)
    assert is_entry_id(entry_id)
    entry = spool.get(entry_id)
    assert (entry.entry_id, entry.state, entry.sender, entry.recipients) == (
        entry_id, QUEUED, ENVELOPE.sender, ENVELOPE.recipients)
    assert entry.size == len(MESSAGE) and entry.attempts == 0
    assert entry.received_at == ENVELOPE.received_at and entry.bounce_of is None
    assert entry.envelope.account == "main"
    with open(entry.data_path, "rb") as f:
        assert f.read() == MESSAGE  # what a transport streams
    assert spool.read_data(entry_id) == MESSAGE
    assert spool.find(entry_id) == entry
    # The engine's first look needs no read, and only the first attempt takes it.
    assert spool.committed(entry_id) == entry
    assert spool.take_committed(entry_id) == entry
    assert spool.committed(entry_id) is None and spool.take_committed(entry_id) is None


def test_a_bounce_knows_its_original(spool: Any) -> None:
    original = commit(spool)
    bounce = commit(spool, envelope=Envelope("relay@example.com", ("scanner@example.com",)),
                    bounce_of=original)
    assert spool.get(bounce).bounce_of == original
    assert spool.ids(QUEUED) == sorted([original, bounce])


def test_incoming_abort_leaves_nothing(spool: Any) -> None:
    message = spool.incoming(ENVELOPE)
    message.write(MESSAGE)
    message.abort()
    assert spool.counts() == {state: 0 for state in STATES}
    assert list(spool.entries()) == []
    assert [n for n in os.listdir(os.path.join(spool.directory, "data"))] == []


def test_every_transition_of_the_lifecycle_is_allowed(spool: Any) -> None:
    for old in STATES:
        for new in sorted(LIFECYCLE[old] & set(STATES)):
            entry = spool.get(commit(spool))
            if old != QUEUED:
                path = {ACTIVE: [ACTIVE], DEFERRED: [DEFERRED], FAILED: [FAILED]}[old]
                for state in path:
                    entry = result(spool.move(entry, state))
            moved = result(spool.move(entry, new, attempts=3, last_reply=BUSY))
            assert (moved.state, moved.attempts, moved.last_reply) == (new, 3, BUSY)
            assert spool.get(entry.entry_id) == moved


def test_transitions_outside_the_lifecycle_are_refused(spool: Any) -> None:
    entry = result(spool.move(spool.get(commit(spool)), FAILED, recipients=()))
    for state in (QUEUED, ACTIVE, DEFERRED, FAILED):
        assert state not in LIFECYCLE[FAILED]
        with pytest.raises(TransitionRefused):
            spool.move(entry, state)
    with pytest.raises(ValueError):
        spool.move(entry, CORRUPT)  # only readers set aside
    with pytest.raises(ValueError):
        spool.move(entry, "hold")
    assert spool.get(entry.entry_id) == entry  # nothing changed
    queued = spool.get(commit(spool))
    with pytest.raises(TransitionRefused):
        spool.move(queued, QUEUED)  # queued -> queued is no rewrite


def test_move_of_a_stale_entry_fails_with_unknown_entry(spool: Any) -> None:
    entry = spool.get(commit(spool))
    active = result(spool.move(entry, ACTIVE))
    with pytest.raises(UnknownEntry):
        result(spool.move(entry, DEFERRED))  # it is not queued any more
    assert spool.get(entry.entry_id) == active


def test_remove(spool: Any) -> None:
    keep, gone = commit(spool), commit(spool)
    entry = result(spool.move(spool.get(gone), ACTIVE))
    assert result(spool.remove(entry)) is None
    with pytest.raises(UnknownEntry):
        spool.get(gone)
    with pytest.raises(UnknownEntry):
        spool.find(gone)
    assert not os.path.exists(entry.data_path)
    assert spool.ids(QUEUED) == [keep] and spool.ids(ACTIVE) == []


def test_counts_ids_and_entries(spool: Any) -> None:
    ids = [commit(spool) for _ in range(5)]
    assert ids == sorted(ids)  # ids sort by arrival
    result(spool.move(spool.get(ids[1]), DEFERRED, next_attempt=5.0))
    result(spool.move(spool.get(ids[3]), DEFERRED, next_attempt=6.0))
    result(spool.move(spool.get(ids[4]), FAILED, recipients=()))
    assert spool.counts() == {QUEUED: 2, ACTIVE: 0, DEFERRED: 2, FAILED: 1}
    assert spool.ids(QUEUED) == [ids[0], ids[2]]
    assert spool.ids(DEFERRED) == [ids[1], ids[3]]
    assert [e.entry_id for e in spool.entries(DEFERRED)] == [ids[1], ids[3]]
    assert [e.next_attempt for e in spool.entries(DEFERRED)] == [5.0, 6.0]
    # In lifecycle order, oldest first within a state.
    assert [(e.state, e.entry_id) for e in spool.entries()] == [
        (QUEUED, ids[0]), (QUEUED, ids[2]), (DEFERRED, ids[1]), (DEFERRED, ids[3]),
        (FAILED, ids[4])]


def test_recover_puts_active_entries_back_and_runs_once(spool: Any) -> None:
    entry_id = commit(spool)
    result(spool.move(spool.get(entry_id), ACTIVE))
    scratch = spool.scratch_path(entry_id, "rewritten.eml")
    with open(scratch, "wb") as f:
        f.write(b"derived")
    # A restart: a new spool over the same folder, or (in memory) the same records.
    if isinstance(spool, Spool):
        fresh: Any = Spool(spool.directory, run_blocking=run_inline)
    else:
        fresh, spool.recovered = spool, False
    fresh.recover()
    assert fresh.get(entry_id).state == QUEUED
    assert not os.path.exists(scratch)
    fresh.recover()
    assert fresh.counts()[QUEUED] == 1


def test_read_data_is_the_exact_bytes(spool: Any) -> None:
    data = b"Subject: x\r\n\r\n" + bytes(range(256)) + b"\r\n" * 3000
    assert spool.read_data(commit(spool, data)) == data


def test_unknown_entry(spool: Any) -> None:
    unknown = "20261201T232515.123456-4242-000001"
    with pytest.raises(UnknownEntry):
        spool.get(unknown)
    with pytest.raises(UnknownEntry):
        spool.find(unknown)
    with pytest.raises(UnknownEntry):
        spool.read_data(unknown)
    assert spool.committed(unknown) is None


@pytest.mark.parametrize("text", NOT_IDS)
def test_malformed_entry_ids_are_refused(spool: Any, text: Any) -> None:
    commit(spool)
    with pytest.raises(NotAnEntryId):
        spool.find(text)
    with pytest.raises(UnknownEntry):
        spool.get(text)
    assert spool.counts()[QUEUED] == 1


def test_corrupt_entries_are_set_aside_and_only_removable(spool: Any) -> None:
    bad, good = commit(spool), commit(spool)
    if isinstance(spool, Spool):
        with open(os.path.join(spool.directory, QUEUED, bad + ".json"), "w") as f:
            f.write("{not json")
    else:
        spool.set_aside(bad, "not JSON")
    # Whoever reads it first sets it aside; the listing goes on.
    assert [e.entry_id for e in spool.entries(QUEUED)] == [good]
    with pytest.raises(UnknownEntry):
        spool.get(bad)
    corrupt = spool.find(bad)
    assert corrupt.state == CORRUPT and "JSON" in corrupt.problem
    assert spool.counts()[CORRUPT] == 1 and spool.ids(CORRUPT) == [bad]
    assert [e.state for e in spool.entries()][-1] == CORRUPT
    with pytest.raises(TransitionRefused):
        spool.move(corrupt, QUEUED)
    result(spool.remove(corrupt))
    with pytest.raises(UnknownEntry):
        spool.find(bad)
    assert CORRUPT not in spool.counts()


def test_full_spool_refuses_and_keeps_nothing(tmp_path: Any) -> None:
    # Only the memory spool can be filled on demand; the real one's full disk is
    # tests/spool/test_spool_full.py.  The promise is the same: SpoolFull, nothing kept.
    spool = MemorySpool(full_after=10, directory=str(tmp_path))
    message = spool.incoming(ENVELOPE)
    with pytest.raises(SpoolFull):
        message.write(MESSAGE)
    message.abort()
    assert spool.counts()[QUEUED] == 0 and spool.stored == {}


def test_the_errors_are_the_interface_s_under_their_old_names() -> None:
    import xrelay.inbound.errors
    import xrelay.spool
    from xrelay import interfaces, lifecycle

    for name in ("SpoolFull", "UnknownEntry", "NotAnEntryId", "TransitionRefused"):
        assert getattr(xrelay.spool, name) is getattr(interfaces, name)
    assert xrelay.inbound.errors.SpoolFull is interfaces.SpoolFull
    assert xrelay.spool.LIFECYCLE is lifecycle.LIFECYCLE
    assert xrelay.spool.check_entry_id is lifecycle.check_entry_id
