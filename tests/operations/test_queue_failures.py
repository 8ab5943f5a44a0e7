"""
Queue operations that fail leave the entry as it was and still scheduled (a full disk
during `queue retry` used to drop it from the schedule for good), a bounce by the
operator is all or nothing, and `queue retry --all` never aborts because a delivery
runs at the same time.
"""

from __future__ import annotations

import errno
import os
from typing import Any

import pytest

from tests.delivery.delivery_harness import Harness, config
from xrelay.delivery.testing import fail_all
from xrelay.envelope import Reply
from xrelay.operations.queue import QueueOperations, QueueProblem
from xrelay.spool import ACTIVE, DEFERRED, FAILED, QUEUED

BUSY = Reply(451, "4.7.500 Server busy. Please try again later.")


def full_disk(monkeypatch: pytest.MonkeyPatch) -> None:
    def fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", fsync)


def deferred_entry(harness: Harness) -> str:
    harness.transport.script = [fail_all(BUSY)]
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).state == DEFERRED
    return entry_id


@pytest.fixture
def harness(tmp_path: Any) -> Harness:
    h = Harness(tmp_path)
    h.start(config(first_retry=60))
    return h


def ops(harness: Harness) -> QueueOperations:
    return QueueOperations(harness.spool, harness.engine.config, harness.engine)


def test_a_failed_retry_leaves_the_entry_scheduled(harness: Harness,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    entry_id = deferred_entry(harness)
    with monkeypatch.context() as m:
        full_disk(m)
        d = ops(harness).retry(entry_id).__await__()
        with pytest.raises(QueueProblem, match=r"could not retry .*: the disk is full; "
                           r"free space in server.state_dir and try again; the entry is "
                           r"unchanged and stays scheduled"):
            d.send(None)
    assert harness.spool.get(entry_id).state == DEFERRED
    assert entry_id in harness.engine.queue
    harness.clock.advance(61)  # its retry time: it goes out as planned
    assert harness.spool.ids(DEFERRED) == [] and harness.spool.ids(QUEUED) == []
    assert len(harness.transport.sent) == 2


def test_a_failed_bounce_is_all_or_nothing(harness: Harness,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    entry_id = deferred_entry(harness)
    with monkeypatch.context() as m:
        full_disk(m)
        with pytest.raises(QueueProblem, match="could not bounce"):
            ops(harness).bounce(entry_id).__await__().send(None)
    assert harness.spool.get(entry_id).state == DEFERRED
    assert harness.spool.ids(QUEUED) == []  # no bounce was left behind
    assert entry_id in harness.engine.queue
    harness.transport.script = [fail_all(BUSY)]
    # With space, the same bounce works: one DSN, the entry kept under failed/.
    done = ops(harness).bounce(entry_id).__await__()
    with pytest.raises(StopIteration):
        done.send(None)
    assert harness.spool.get(entry_id).state == FAILED
    bounces = [s for s in harness.transport.sent if s.message.sender.startswith("relay-")]
    assert len(bounces) == 1


def test_retry_all_while_a_delivery_runs(harness: Harness) -> None:
    harness.transport.script = [fail_all(BUSY)] * 3
    waiting = [harness.receive() for _ in range(3)]
    harness.transport.hold = True
    harness.transport.script = []
    harness.clock.advance(61)  # all three are being delivered right now (held)
    assert [harness.spool.get(e).state for e in waiting] == [ACTIVE] * 3
    later = harness.receive(submit=False)  # and one that waits
    done = ops(harness).retry_all().__await__()
    with pytest.raises(StopIteration) as result:
        done.send(None)
    assert result.value.value == 1  # the waiting one; the busy ones are skipped
    harness.transport.hold = False
    while harness.transport.held:  # the three, and the one retried
        harness.transport.release()
    harness.clock.advance(1)
    assert harness.spool.ids(QUEUED) == [] and harness.spool.ids(ACTIVE) == []
    assert later in [s.message.entry_id for s in harness.transport.sent]


def test_retry_all_racing_an_attempt_that_is_just_starting(tmp_path: Any) -> None:
    """
    The engine has taken a deferred entry, but its move to active is still in the
    spool's thread when `retry --all` gets to it: skipped, never an abort.
    """
    from tests.delivery.delivery_harness import account
    from tests.spool.test_spool import HeldRunner
    from xrelay.delivery import DeliveryEngine
    from xrelay.envelope import Envelope
    from xrelay.spool import Spool

    harness = Harness(tmp_path)
    runner = HeldRunner()
    spool = Spool(str(tmp_path / "spool"), run_blocking=runner)
    ids = []
    for _ in range(2):
        incoming = spool.incoming(Envelope("scanner@example.com", ("a@example.org",),
                                           account="main"))
        incoming.write(b"Subject: x\r\n\r\nbody\r\n")
        d = incoming.commit()
        runner.run_one()
        ids.append(d.result)
    for entry_id in ids:  # both deferred, due in a minute
        d = spool.move(spool.get(entry_id), DEFERRED,
                       next_attempt=harness.clock.seconds() + 60)
        runner.run_one()
    engine = DeliveryEngine(config(account(max_connections=1)), spool,
                            harness.transports, clock=harness.clock, random=lambda: 0.5)
    engine.startService()
    harness.clock.advance(61)
    assert [f.__name__ for f, _, _ in runner.calls] == ["_move"]  # the first, to active
    first, second = ids
    assert engine.in_flight(first) and spool.get(first).state == DEFERRED

    done = QueueOperations(spool, engine.config, engine).retry_all()
    step = done.__await__()
    step.send(None)  # the second's move to queued is now in the spool's thread too
    while runner.calls:
        runner.run_one()
    with pytest.raises(StopIteration) as result:
        step.send(None)
    assert result.value.value == 1
    while runner.calls:
        runner.run_one()
    assert sorted(s.message.entry_id for s in harness.transport.sent) == ids
