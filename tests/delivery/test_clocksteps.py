"""
L{xrelay.clocksteps.ClockWatch} on a fake wall and monotonic clock: a step moves every
pending timer by it (each keeps its remaining delay), tells the subscribers, is logged
once, and ages stamped before it are measured on the clock that stamped them.  The
engine's part: due times and holds move with the step.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from xrelay.clocksteps import ClockWatch
from xrelay.delivery.scheduler import FairQueue


class SteppingReactor(Clock):
    """A task.Clock whose wall clock can be stepped (its timers run on it)."""

    def callFromThread(self, f, *args, **kwargs):
        f(*args, **kwargs)


def test_a_step_moves_timers_and_tells_subscribers() -> None:
    reactor = SteppingReactor()
    reactor.advance(1_000_000)
    monotonic = [500.0]
    watch = ClockWatch(reactor, wall=reactor.seconds, monotonic=lambda: monotonic[0])
    watch._offset = reactor.seconds() - monotonic[0]
    fired: list[float] = []
    reactor.callLater(10, lambda: fired.append(monotonic[0]))
    steps: list[float] = []
    watch.subscribe(steps.append)
    # The wall clock steps back an hour; the monotonic clock does not move.
    reactor.rightNow -= 3600
    watch.check()
    assert steps == [-3600]
    assert watch.steps == [(reactor.seconds(), -3600)]
    # 10 s later (on both clocks) the timer fires: not an hour and 10 s later.
    monotonic[0] += 10
    reactor.advance(10)
    assert fired == [510.0]
    watch.check()  # nothing new: logged and handled once
    assert steps == [-3600]


def test_ages_are_measured_on_the_clock_that_stamped_them() -> None:
    reactor = SteppingReactor()
    reactor.advance(1_000_000)
    watch = ClockWatch(reactor, wall=reactor.seconds, monotonic=lambda: 0.0)
    watch._offset = reactor.seconds()
    received = reactor.seconds() - 60  # a minute before the step
    reactor.rightNow += 6 * 86400
    watch.check()
    assert abs((reactor.seconds() - watch.corrected(received)) - 60) < 1
    later = reactor.seconds() + 5  # stamped after the step: unchanged
    assert watch.corrected(later) == later


def test_the_queue_moves_due_times_not_due_now() -> None:
    now = 1_800_000_000.0
    queue = FairQueue()
    queue.add("now", "main", 0.0, 1)
    queue.add("later", "main", now + 1000, 1)
    queue.pace("main").paused_until = now + 900
    queue.shift(-3600)  # the wall clock stepped back an hour
    now -= 3600
    assert queue.pace("main").paused_until == now + 900  # still 900 s away
    assert queue.take(now + 899) == []
    assert [entry for entry, _ in queue.take(now + 900)] == ["now"]  # due now stays so
    assert queue.next_wake(now + 900) == now + 1000  # the retry keeps its delay
