"""
Steps of the wall clock (an NTP step, a Raspberry Pi without a real-time clock setting
the date at boot), noticed and absorbed so that delays keep their length.

Twisted's reactor schedules C{callLater} on C{time.time()} (twisted/twisted#2424): a
step back of an hour delays every pending timer by that hour, a step forward fires them
all at once.  L{ClockWatch} compares the wall clock with the monotonic clock at every
turn of the reactor, before due timers run, and from a thread (which sleeps on the
monotonic clock, so a step cannot put it to sleep, and wakes the reactor); when they
part by more than L{THRESHOLD} the reactor thread

  - moves every pending timer by the step (C{IDelayedCall.reset}, public API), so each
    fires after the delay it was set for;
  - tells its subscribers, which move their own absolute times the same way (the
    delivery queue's due times, account holds, the day's recipient records);
  - logs the step once;
  - remembers it, so that the age of a message stamped before the step is measured on
    the clock it was stamped with (L{ClockWatch.corrected}): a +6-day step does not make
    fresh mail six days old.

The reactor keeps running on the wall clock otherwise: times shown and stored stay wall
times.  Only steps seen while running are known; a step while the relay was stopped is
met by clamping (records from the future count as now).

This module must never change the time of anything it was not told about, and never
block the reactor thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

import attrs
from twisted.logger import Logger

__all__ = ["THRESHOLD", "ClockWatch", "watch_for"]

log = Logger(namespace="xrelay.clock")

#: A disagreement between the wall and the monotonic clock larger than this, between two
#: looks one L{INTERVAL} apart, is a step (slewing by NTP is 0.5 ms/s at most).
THRESHOLD = 2.0
#: How often the watching thread looks.
INTERVAL = 1.0

Stepped = Callable[[float], Any]


@attrs.define(eq=False)
class ClockWatch:
    """
    Watches one reactor's wall clock for steps.

    @ivar steps: (wall time when noticed, step in seconds) of each step, oldest first.
    """

    reactor: Any
    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    steps: list[tuple[float, float]] = attrs.field(factory=list)
    _subscribers: list[Stepped] = attrs.field(factory=list)
    _offset: float = 0.0
    _thread: threading.Thread | None = None
    _stop: threading.Event = attrs.field(factory=threading.Event)
    _users: int = 0

    def subscribe(self, stepped: Stepped) -> None:
        self._subscribers.append(stepped)

    def unsubscribe(self, stepped: Stepped) -> None:
        if stepped in self._subscribers:
            self._subscribers.remove(stepped)

    def start(self) -> None:
        """Start watching (counted: the last L{stop} ends it)."""
        self._users += 1
        if self._thread is not None:
            return
        self._offset = self.wall() - self.monotonic()
        self._hook()
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="xrelay-clock",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._users = max(self._users - 1, 0)
        if self._users == 0 and self._thread is not None:
            self._stop.set()
            self._thread = None
            if getattr(self.reactor.__dict__.get("runUntilCurrent"), "clock_watch",
                       None) is self:
                del self.reactor.runUntilCurrent  # the reactor's own method again

    def _hook(self) -> None:
        """
        Look for a step at every turn of the reactor, before it runs the timers that
        are due: after a step forward, nothing may run on the jumped clock before the
        step is handled (a retry deferred then would be moved six days on).
        C{runUntilCurrent} is the reactor's public method that runs due timers.
        """
        original = getattr(self.reactor, "runUntilCurrent", None)
        if original is None or getattr(original, "clock_watch", None) is not None:
            return

        def runUntilCurrent() -> None:
            self.check()
            original()

        runUntilCurrent.clock_watch = self  # type: ignore[attr-defined]
        self.reactor.runUntilCurrent = runUntilCurrent

    def _watch(self) -> None:
        stop = self._stop
        while not stop.wait(INTERVAL):
            if abs(self.wall() - self.monotonic() - self._offset) > THRESHOLD:
                self.reactor.callFromThread(self.check)

    # -- on the reactor thread ---------------------------------------------------

    def check(self) -> None:
        """Handle a step if the clock has stepped since the last look (the watching
        thread asks for this; L{corrected} does it first, so that an age is never
        judged between a step and its notice)."""
        offset = self.wall() - self.monotonic()
        step = offset - self._offset
        if abs(step) > THRESHOLD:
            self._offset = offset
            self.stepped(step)

    def stepped(self, step: float) -> None:
        """The wall clock jumped by C{step} seconds: keep every delay's length."""
        now = self.wall()
        self.steps.append((now, step))
        moved = 0
        for call in list(self.reactor.getDelayedCalls()):
            if call.active():
                # Set before the step: it was due (time - (now - step)) from now.
                call.reset(max(call.getTime() + step - now, 0.0))
                moved += 1
        for subscriber in list(self._subscribers):
            try:
                subscriber(step)
            except Exception:
                log.failure("moving times by the clock step")
        log.warn("the wall clock stepped {direction} by {size}; retries, probes and holds "
                 "keep their delays ({moved} timers moved), and messages keep their age",
                 direction="forward" if step > 0 else "back", size=_duration(abs(step)),
                 moved=moved)

    def corrected(self, stamped: float) -> float:
        """
        A wall time stamped before the steps seen since, on the clock now running: a
        message received just before a +6-day step is still young after it.
        """
        if self._thread is not None:
            self.check()
        for noticed, step in self.steps:
            # Forward: every stamp before the step is at most (noticed - step), every
            # stamp after at least (noticed - INTERVAL).  Back: the two overlap; the
            # stamps in the overlap are not moved (they look younger: never bounced
            # early), all older ones are.
            before = noticed - step + INTERVAL + 1.0 if step > 0 else \
                noticed - INTERVAL - 1.0
            if stamped < before:
                stamped += step
        return stamped


def _duration(seconds: float) -> str:
    if seconds >= 86400:
        return f"{seconds / 86400:.1f} days"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds:.0f} s"


_watches: dict[int, ClockWatch] = {}


def watch_for(reactor: Any) -> ClockWatch | None:
    """The reactor's one watch (C{None} for a clock that is not a real reactor, such
    as the tests' L{twisted.internet.task.Clock}, whose time never steps)."""
    if not (hasattr(reactor, "callFromThread") and hasattr(reactor, "getDelayedCalls")):
        return None
    watch = _watches.get(id(reactor))
    if watch is None:
        watch = _watches[id(reactor)] = ClockWatch(reactor)
    return watch
