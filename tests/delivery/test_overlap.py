"""
The account's connection is free once the transport has answered: the next message
goes out while the previous result is still being written to the spool, and the
settling still finishes (and still schedules retries) on its own.
"""

from __future__ import annotations

from typing import Any

from tests.delivery.delivery_harness import Harness, account, config
from tests.spool.test_spool import HeldRunner
from xrelay.delivery import DeliveryEngine
from xrelay.delivery.testing import fail_all
from xrelay.envelope import Envelope, Reply
from xrelay.spool import DEFERRED, Spool

MESSAGE = b"Subject: x\r\n\r\nbody\r\n"


def start(tmp_path: Any, harness: Harness) -> tuple[DeliveryEngine, Spool, HeldRunner, list]:
    runner = HeldRunner()
    spool = Spool(str(tmp_path), run_blocking=runner)
    engine = DeliveryEngine(config(account(max_connections=1)), spool, harness.transports,
                            clock=harness.clock, random=lambda: 0.5)
    ids = []
    for _ in range(2):
        incoming = spool.incoming(Envelope("scanner@example.com", ("a@example.org",),
                                           account="main"))
        incoming.write(MESSAGE)
        d = incoming.commit()
        runner.run_one()
        ids.append(d.result)
    engine.startService()
    return engine, spool, runner, ids


def test_next_message_starts_while_the_previous_result_is_recorded(tmp_path: Any) -> None:
    harness = Harness(tmp_path)
    engine, spool, runner, ids = start(tmp_path, harness)
    # One connection: only the first attempt started; it waits for its move to active.
    assert [f.__name__ for f, _, _ in runner.calls] == ["_move"]
    runner.run_one()  # first: queued -> active; the scripted transport answers at once
    # The first one's removal is pending, and the second is already on its way.
    assert sorted(f.__name__ for f, _, _ in runner.calls) == ["_move", "_remove"]
    assert len(harness.transport.sent) == 1
    while runner.calls:
        runner.run_one()
    assert [s.message.entry_id for s in harness.transport.sent] == ids
    assert spool.counts() == {"queued": 0, "active": 0, "deferred": 0, "failed": 0}
    assert engine.totals["delivered"] == 2


def test_a_retry_scheduled_after_the_slot_was_freed_still_happens(tmp_path: Any) -> None:
    harness = Harness(tmp_path)
    harness.transport.script = [fail_all(Reply(451, "4.3.0 busy")),
                                fail_all(Reply(451, "4.3.0 busy"))]
    engine, spool, runner, ids = start(tmp_path, harness)
    while runner.calls:
        runner.run_one()
    assert [e.entry_id for e in spool.entries(DEFERRED)] == ids
    harness.clock.advance(3600)
    while runner.calls:
        runner.run_one()
    assert [s.message.entry_id for s in harness.transport.sent] == ids * 2
    assert engine.totals["delivered"] == 2


def test_recipients_today_is_a_running_total_that_ages_out() -> None:
    from xrelay.delivery.scheduler import DAY, AccountPace

    pace = AccountPace("main", recipients_per_day=10, max_connections=100)
    for i in range(5):
        pace.start(float(i), 2)
        pace.finish()
    assert pace.recipients_today(4.0) == 10
    assert pace.ready_at(4.0, 1) == DAY + 0.0  # the first start must age out first
    assert pace.recipients_today(DAY + 1.5) == 6
    assert AccountPace("x", day=pace._day).recipients_today(DAY + 1.5) == 6
