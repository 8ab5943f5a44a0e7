"""
Account limits and fairness: a burst is spread within the provider's limits instead of
being throttled, and one account's burst never starves another.
"""

from __future__ import annotations

import math

from xrelay.delivery.scheduler import DAY, AccountPace, FairQueue

from tests.delivery.delivery_harness import START, account, config


def test_burst_of_100_at_30_per_minute_is_spread(harness) -> None:
    harness.start(config(account(messages_per_minute=30, max_connections=3)))
    for _ in range(100):
        harness.receive()
    starts = []
    while len(harness.transport.sent) < 100:
        before = len(harness.transport.sent)
        harness.clock.advance(0.5)
        starts += [harness.clock.seconds()] * (len(harness.transport.sent) - before)
    starts = [START] + starts  # the first went out at once
    # Evenly two seconds apart: never more than 30 in any minute, all within 198 s.
    assert all(b - a == 2 for a, b in zip(starts, starts[1:], strict=False))
    assert starts[-1] - START == 198
    assert max(sum(1 for t in starts if s <= t < s + 60) for s in starts) == 30
    assert list(harness.spool.entries()) == []  # nothing deferred: nothing throttled


def test_connection_cap(harness) -> None:
    harness.transport.hold = True
    harness.start(config(account(max_connections=3)))
    for _ in range(10):
        harness.receive()
    assert len(harness.transport.held) == 3
    harness.transport.release()
    assert len(harness.transport.held) == 3 and len(harness.transport.sent) == 4
    while harness.transport.held:
        harness.transport.release()
    assert len(harness.transport.sent) == 10


def test_fair_between_accounts(harness) -> None:
    from xrelay.delivery.testing import ScriptedTransport

    harness.transports["other"] = ScriptedTransport()
    harness.start(config(account(messages_per_minute=30),
                         account("other", senders="*@other.example", messages_per_minute=30)))
    for _ in range(50):
        harness.receive()
    for _ in range(5):
        harness.receive(sender="dev@other.example", account="other")
    harness.clock.pump([0.5] * 20)  # 10 s in small steps
    # The other account's five went out within 10 s despite 50 queued before them.
    assert len(harness.transports["other"].sent) == 5
    assert len(harness.transport.sent) == 6


def test_take_alternates_between_accounts() -> None:
    queue = FairQueue()
    queue.pace("a").max_connections = 100
    queue.pace("b").max_connections = 100
    for i in range(5):
        queue.add(f"a{i}", "a", 0.0, 1)
    for i in range(2):
        queue.add(f"b{i}", "b", 0.0, 1)
    taken = [entry for entry, _ in queue.take(10.0)]
    assert sorted(taken[:4]) == ["a0", "a1", "b0", "b1"]  # b is not left for last
    assert len(taken) == 7


def test_recipients_per_day(harness) -> None:
    harness.start(config(account(recipients_per_day=10)))
    four = ("a@example.org", "b@example.org", "c@example.org", "d@example.org")
    for _ in range(3):
        harness.receive(recipients=four)
    assert len(harness.transport.sent) == 2  # 8 of 10; 4 more would exceed the day
    harness.clock.advance(DAY - 1)
    assert len(harness.transport.sent) == 2
    harness.clock.advance(1)
    assert len(harness.transport.sent) == 3


def test_pace_arithmetic() -> None:
    pace = AccountPace("main", messages_per_minute=60, max_connections=2)
    assert pace.ready_at(100.0, 1) == 100.0
    pace.start(100.0, 1)
    assert pace.ready_at(100.0, 1) == 101.0
    pace.start(101.0, 1)
    assert pace.ready_at(101.0, 1) == math.inf  # both connections busy
    pace.finish()
    assert pace.ready_at(101.0, 1) == 102.0
    pace.throttle(500.0)
    assert pace.ready_at(101.0, 1) == 500.0


def test_make_due_and_discard() -> None:
    queue = FairQueue()
    queue.add("x", "a", 1000.0, 1)
    queue.add("y", "a", 2000.0, 1)
    assert queue.next_wake(0.0) == 1000.0
    queue.discard("x")
    assert queue.next_wake(0.0) == 2000.0
    assert queue.make_due("a", 5.0) == 1
    assert queue.take(5.0) == [("y", "a")]
    assert queue.next_wake(5.0) is None
