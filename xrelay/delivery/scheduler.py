"""
Which spooled message may start now: per-account sending limits and fairness.

Exchange Online allows about 30 messages a minute and 10,000 recipients a day per
mailbox and throttles (or blocks) a mailbox that goes faster, so a burst of 5,000
invoices must be I{spread}: each account starts messages at most every
C{60 / messages_per_minute} seconds, keeps at most C{max_connections} attempts in flight,
counts recipients over a sliding day, and pauses when the upstream says "slow down".
Accounts take turns, so one account's burst never starves another's mail.

Pure bookkeeping over times it is given (no clock, no reactor, no I/O): the engine asks
and acts.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math

from typing import Any, Callable, Iterable

import attrs

from xrelay.config import AccountConfig

DAY = 86400.0


@attrs.define
class AccountPace:
    """
    The sending limits of one account and what it has used of them.
    """

    name: str
    messages_per_minute: int = 0
    recipients_per_day: int = 0
    max_connections: int = 3
    in_flight: int = 0
    #: Earliest start of the next message (even pacing).
    next_slot: float = 0.0
    #: The upstream asked us to wait until then (throttling, Retry-After).
    paused_until: float = 0.0
    #: (start time, recipients) of messages started in the last day.
    _day: collections.deque[tuple[float, int]] = attrs.field(factory=collections.deque)
    #: The sum of the recipients in C{_day}, kept as it changes: summing the deque on
    #: every scheduling decision cost O(messages sent today) per message.
    _day_total: int = attrs.field(init=False, default=0)
    #: The account is held (L{xrelay.delivery.accounts}): one attempt at a time, the probe.
    probing: bool = False
    #: Told of every start, to keep the day's count across restarts.
    journal: Callable[[float, int], Any] | None = attrs.field(default=None, eq=False)

    def __attrs_post_init__(self) -> None:
        self._day_total = sum(n for _, n in self._day)

    @classmethod
    def from_config(cls, account: AccountConfig) -> "AccountPace":
        return cls(account.name, account.messages_per_minute, account.recipients_per_day,
                   account.max_connections)

    def update(self, account: AccountConfig) -> None:
        """New limits from a reloaded configuration; what was used stays counted."""
        self.messages_per_minute = account.messages_per_minute
        self.recipients_per_day = account.recipients_per_day
        self.max_connections = account.max_connections

    def recipients_today(self, now: float) -> int:
        while self._day and self._day[0][0] <= now - DAY:
            self._day_total -= self._day.popleft()[1]
        return self._day_total

    def ready_at(self, now: float, recipients: int) -> float:
        """
        The earliest time a message with this many recipients may start;
        C{math.inf} while all connections are busy (a finishing attempt wakes us).
        """
        if self.in_flight >= self.max_connections or (self.probing and self.in_flight):
            return math.inf
        at = max(now, self.next_slot, self.paused_until)
        if self.recipients_per_day:
            used = self.recipients_today(now)
            if used and used + recipients > self.recipients_per_day:
                # Wait until enough of the day's recipients have aged out.
                for started, n in self._day:
                    used -= n
                    if used + recipients <= self.recipients_per_day or not used:
                        at = max(at, started + DAY)
                        break
        return at

    def start(self, now: float, recipients: int) -> None:
        self.in_flight += 1
        if self.messages_per_minute:
            self.next_slot = max(now, self.next_slot) + 60.0 / self.messages_per_minute
        self._day.append((now, recipients))
        self._day_total += recipients
        if self.journal is not None:
            self.journal(now, recipients)

    def refund(self, started: float, recipients: int) -> None:
        """
        Recipients of the attempt started at C{started} that the upstream did not take
        (refused, bounced, or deferred: a retry counts them when it starts) leave the
        day's count: the provider's limit counts what it accepted.  The journal gets the
        negative record at the same time, so a restart adds up the same.
        """
        for i in range(len(self._day) - 1, -1, -1):
            at, n = self._day[i]
            if at == started and n > 0:
                taken = min(recipients, n)
                self._day[i] = (at, n - taken)
                self._day_total -= taken
                if self.journal is not None and taken:
                    self.journal(at, -taken)
                return

    def restore(self, records: Iterable[tuple[float, int]]) -> None:
        """The day's starts remembered from before a restart (oldest first)."""
        for at, n in records:
            self._day.append((at, n))
            self._day_total += n

    def day_records(self, now: float) -> list[tuple[float, int]]:
        """The (start, recipients) records of the rolling day, oldest first."""
        self.recipients_today(now)
        return list(self._day)

    def oldest_start(self, now: float) -> float | None:
        """The oldest start still counted in the rolling day."""
        self.recipients_today(now)
        return self._day[0][0] if self._day else None

    def budget_resumes_at(self, now: float) -> float | None:
        """When the day's budget has room for one more recipient, if it has none now."""
        if not self.recipients_per_day or self.recipients_today(now) < self.recipients_per_day:
            return None
        used = self._day_total
        for started, n in self._day:
            used -= n
            if used < self.recipients_per_day:
                return started + DAY
        return now

    def finish(self) -> None:
        self.in_flight = max(self.in_flight - 1, 0)

    def shift(self, step: float) -> None:
        """The wall clock stepped: every time here was stamped on the old clock."""
        if self.next_slot:
            self.next_slot += step
        if self.paused_until:
            self.paused_until += step
        self._day = collections.deque((at + step, n) for at, n in self._day)

    def throttle(self, until: float) -> None:
        """The upstream asked us to slow down: start nothing before C{until}."""
        self.paused_until = max(self.paused_until, until)


@attrs.define
class FairQueue:
    """
    Entries waiting to be sent, per account, each with the time it becomes due.

    L{take} hands out startable entries round-robin over the accounts, so a full queue of
    one account never delays another's.
    """

    paces: dict[str, AccountPace] = attrs.field(factory=dict)
    _heaps: dict[str, list[tuple[float, str, int]]] = attrs.field(factory=dict)
    #: entry id -> (due, account) of its one live heap item; older items are stale.
    _where: dict[str, tuple[float, str]] = attrs.field(factory=dict)
    _turn: "itertools.count[int]" = attrs.field(factory=itertools.count)

    def pace(self, account: str) -> AccountPace:
        if account not in self.paces:
            # Unknown (unroutable) entries: no limits, they only get deferred.
            self.paces[account] = AccountPace(account, max_connections=1_000_000)
        return self.paces[account]

    def add(self, entry_id: str, account: str, due: float, recipients: int) -> None:
        self._where[entry_id] = (due, account)
        heapq.heappush(self._heaps.setdefault(account, []), (due, entry_id, recipients))

    def discard(self, entry_id: str) -> None:
        self._where.pop(entry_id, None)

    def __contains__(self, entry_id: str) -> bool:
        return entry_id in self._where

    def __len__(self) -> int:
        return len(self._where)

    def make_due(self, account: str, now: float) -> int:
        """Everything waiting for this account becomes due now (it works again)."""
        moved = 0
        for due, entry_id, recipients in list(self._heaps.get(account, ())):
            if self._where.get(entry_id) == (due, account) and due > now:
                self.add(entry_id, account, now, recipients)
                moved += 1
        return moved

    def shift(self, step: float) -> None:
        """
        The wall clock stepped by C{step} seconds: every due time (stamped on the old
        clock) moves with it, so a retry keeps its delay; "due now" (0) stays now.
        """
        for account, heap in self._heaps.items():
            moved = [(due + step if due > 0 else due, entry_id, recipients)
                     for due, entry_id, recipients in heap
                     if self._where.get(entry_id) == (due, account)]
            heapq.heapify(moved)
            self._heaps[account] = moved
            for due, entry_id, _ in moved:
                self._where[entry_id] = (due, account)
        for pace in self.paces.values():
            pace.shift(step)

    def _top(self, account: str) -> tuple[float, str, int] | None:
        heap = self._heaps.get(account)
        while heap:
            due, entry_id, recipients = heap[0]
            if self._where.get(entry_id) == (due, account):
                return heap[0]
            heapq.heappop(heap)
        return None

    def take(self, now: float) -> list[tuple[str, str]]:
        """
        Start every entry that may start now: C{(entry_id, account)} pairs, one account
        at a time in turn.
        """
        started: list[tuple[str, str]] = []
        accounts = sorted(self._heaps)
        if not accounts:
            return started
        offset = next(self._turn) % len(accounts)
        accounts = accounts[offset:] + accounts[:offset]
        progress = True
        while progress:
            progress = False
            for account in accounts:
                top = self._top(account)
                if top is None or top[0] > now:
                    continue
                pace = self.pace(account)
                if pace.ready_at(now, top[2]) > now:
                    continue
                heapq.heappop(self._heaps[account])
                del self._where[top[1]]
                pace.start(now, top[2])
                started.append((top[1], account))
                progress = True
        return started

    def next_wake(self, now: float) -> float | None:
        """When L{take} may next have something to start (C{None}: only on events)."""
        best = math.inf
        for account in self._heaps:
            top = self._top(account)
            if top is not None:
                best = min(best, max(top[0], self.pace(account).ready_at(now, top[2])))
        return None if best == math.inf else best
