"""
The state of each upstream account as the provider sees it, beyond its token: held
(blocked by provider, SMTP AUTH disabled, app not authorised for the mailbox, daily
limit reached, throttled, upstream unreachable) or ok, as an explicit state machine::

    ok ──hold──▶ held(kind) ──probe──▶ probing ──probe_failed──▶ held(kind, longer wait)
     ▲                                   │
     └────────────resume─────────────────┘   (the probe delivered, or an operator)

A held account keeps all its mail queued (nothing of it is bounced for the hold's sake
before C{max_age}), keeps its token, sends nothing until the hold's time, then sends
exactly one message (the probe); the probe's success resumes it and makes its whole
queue due.  Changes are logged once each (never per message) and written under
C{state_dir} (L{xrelay.delivery.accountstore}) so that a restart forgets neither a hold
nor the daily recipient budget.

The delivery engine asks this object before and after every attempt
(L{AccountStates.started}, L{AccountStates.judge}); all policy about provider replies is
in L{xrelay.replies}.  No secrets here: reply texts and fixes only.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Iterable, Iterator

import attrs
from twisted.logger import Logger

from xrelay.clocksteps import ClockWatch, watch_for
from xrelay.config import AccountConfig
from xrelay.delivery.accountstore import DayBudget, HoldStore, run_here
from xrelay.delivery.accounttrouble import (account_fix, account_trouble, delivered_any,
                                            temporary)
from xrelay.delivery.retry import RetryPolicy
from xrelay.delivery.scheduler import DAY, FairQueue
from xrelay.envelope import DeliveryResult, FailureKind, Reply
from xrelay.replies import Hold, KnownReply
from xrelay.statemachine import NoTransition, StateTable
from xrelay.statefiles import prepare_folder

log = Logger()

OK = "ok"
#: Every state an account can show (the metric's label values).
STATES: tuple[str, ...] = (OK,) + tuple(h.value for h in Hold)

HELD: tuple[str, ...] = STATES[1:]


def _rows() -> Iterator[tuple[str, str, str]]:
    """
    The one table of account transitions (L{xrelay.statemachine}): "hold: <kind>" from
    any state into that hold; "probe" (one message goes out while held) leaves it held;
    "probe_failed: <kind>" holds it again (the wait doubled up to max_retry_interval);
    "resume" makes it ok.
    """
    for kind in HELD:
        for state in STATES:
            yield state, f"hold: {kind}", kind
    for state in HELD:
        yield state, "probe", state
        for kind in HELD:
            yield state, f"probe_failed: {kind}", kind
        yield state, "resume", OK


TABLE: StateTable[str] = StateTable("account", _rows())

#: The budget journal is rewritten with only the rolling day's records after this many
#: appends, so that it never grows without bound on a relay that is never restarted.
JOURNAL_COMPACT_EVERY = 20000

#: When the provider reports a daily limit and xrelay has no record of when the rolling
#: day began (mail sent by another client): probe again after this long.
UNKNOWN_DAY_PROBE = 3600.0


#: The one error of every state table, under the name this module's callers know.
InvalidTransition = NoTransition


#: Saving the holds is tried again this long after it failed (a full disk).
SAVE_RETRY = 60.0


def clock_text(at: float, now: float | None = None) -> str:
    """
    A time for an operator: "14:05" today, "2026-12-09 14:05" on another day (a
    "resumes at 17:07" two days away must say so).  Never raises, even for a time no
    clock can show.
    """
    if now is None:
        now = time.time()
    try:
        when = time.localtime(at)
        if when[:3] == time.localtime(now)[:3]:
            return time.strftime("%H:%M", when)
        return time.strftime("%Y-%m-%d %H:%M", when)
    except (OverflowError, ValueError, OSError):
        return "(no valid time)"


@attrs.frozen
class AccountStatus:
    """What C{xrelay accounts}, the admin page and the metrics show for one account."""

    account: str
    state: str
    #: The state with its time, e.g. "daily limit reached (resumes at 14:05)".
    label: str
    since: float | None = None
    next_probe: float | None = None
    reason: str | None = None
    fix: str | None = None
    recipients_today: int = 0
    recipients_per_day: int = 0
    held_senders: tuple[str, ...] = ()

    @property
    def held(self) -> bool:
        return self.state != OK

    @property
    def recipients_left(self) -> int | None:
        if not self.recipients_per_day:
            return None
        return max(self.recipients_per_day - self.recipients_today, 0)

    def as_json(self) -> dict[str, Any]:
        return {"account_state": self.state, "account_state_label": self.label,
                "held_since": self.since, "next_probe": self.next_probe,
                "held_reason": self.reason, "held_fix": self.fix,
                "recipients_today": self.recipients_today,
                "recipients_per_day": self.recipients_per_day,
                "recipients_left": self.recipients_left,
                "held_senders": list(self.held_senders)}


@attrs.define
class AccountHold:
    """One account's provider state; every change goes through L{_move}."""

    account: str
    state: str = OK
    since: float | None = None
    until: float = 0.0
    backoff: float = 0.0
    reason: str | None = None
    fix: str | None = None
    probe: str | None = None

    def _move(self, event: str, kind: str | None = None) -> None:
        """Move by L{TABLE}; C{kind} names the hold of a "hold" or "probe_failed"."""
        name = f"{event}: {kind}" if kind is not None else event
        self.state = TABLE.next(self.state, name, self.account)


class AccountStates:
    """
    The provider state of every account of one delivery engine.

    @param queue: the engine's queue: a hold pauses the account's pace there and lets
        one attempt through at a time; a resume makes its queue due.
    @param policy: the retry policy in force (called: it changes on reload).
    @param on_resume: called after a resume, so that the engine starts the queue.
    @param state_dir: where holds and daily budgets are kept; C{None}: memory only.
    """

    def __init__(self, queue: FairQueue, clock: Any, policy: Callable[[], RetryPolicy],
                 on_resume: Callable[[], None], state_dir: str | None = None) -> None:
        self.queue = queue
        self.clock = clock
        self.policy = policy
        self.on_resume = on_resume
        directory = os.path.join(state_dir, "accounts") if state_dir else None
        self.directory = directory
        self.budget = DayBudget(directory, _in_thread(clock)) if directory else None
        self.store = HoldStore(directory) if directory else None
        self.holds: dict[str, AccountHold] = {}
        self.senders: dict[str, dict[str, str]] = {}
        #: C{delivery.send_as_denied = "hold"}: a Send As refusal holds that sender's
        #: mail instead of letting it bounce (set by the engine on every reload).
        self.hold_refused_senders = False
        self._budget_held: dict[str, float] = {}
        self._save_retry: Any = None
        self._watch: ClockWatch | None = None
        self._far_retries = 0

    # -- start-up --------------------------------------------------------------

    def attach(self, accounts: Iterable[AccountConfig]) -> None:
        """Count each account's recipients on disk, from what was counted before (once
        per account: a reload or a service restart must not count a record twice)."""
        if self.budget is None:
            return
        now = self.clock.seconds()
        for account in accounts:
            pace = self.queue.pace(account.name)
            if pace.journal is None:
                pace.restore(self.budget.load(account.name, now))
                pace.journal = (lambda at, n, name=account.name:
                                self._journal(name, at, n))

    def _journal(self, account: str, at: float, recipients: int) -> None:
        assert self.budget is not None
        self.budget.record(account, at, recipients)
        if account in self.budget.unwritten:
            return  # no space: the rewrite waits until an append succeeds again
        if self.budget.appended.get(account, 0) >= JOURNAL_COMPACT_EVERY or \
                account in self.budget.stale:
            # Off the reactor thread (0.9 s at 500k records on the reactor was a stall).
            self.budget.compact(account, self.queue.pace(account).day_records(at))

    def restore(self, accounts: Iterable[AccountConfig]) -> None:
        """The budgets and holds written before a restart."""
        now = self.clock.seconds()
        accounts = list(accounts)
        if self.directory is not None and not prepare_folder(
                self.directory, "account holds and daily recipient counts are kept in "
                "memory only"):
            self.budget = None
            self.store = None
        self.attach(accounts)
        saved = self.store.load() if self.store is not None else {}
        names = {a.name for a in accounts}
        policy = self.policy()
        for name, data in saved.items():
            if name not in names or data.get("state") not in STATES[1:]:
                continue
            hold = self._hold(name)
            hold._move("hold", str(data["state"]))
            # Times from a clock that ran ahead (or a step back since): never a hold
            # longer than it can have been set for, never a "since" in the future.
            longest = DAY if data["state"] == Hold.DAILY_LIMIT.value else \
                policy.max_retry_interval
            until = float(data.get("until") or now)
            since = data.get("since")
            if until > now + longest or (since is not None and since > now + 300):
                log.warn("account {account}: the saved hold runs until {until}, later "
                         "than it can have been set for (the clock was ahead, or was "
                         "stepped back): probing at once", account=name,
                         until=clock_text(until, now))
                until = now
                since = min(since, now) if since is not None else None
            hold.since = float(since) if since is not None else None
            hold.until = until
            hold.backoff = min(float(data.get("backoff") or 0.0), policy.max_retry_interval)
            hold.reason = data.get("reason")
            hold.fix = data.get("fix")
            self._pause(name, hold)
            log.warn("account {account} is still held after the restart: {state}; next "
                     "probe at {at}", account=name, state=self._label(name, hold, now),
                     at=clock_text(hold.until, now))

    def close(self) -> None:
        """Close the budget journals, stop watching the clock (at stop)."""
        if self._watch is not None:
            self._watch.unsubscribe(self._stepped)
            self._watch.stop()
            self._watch = None
        if self._save_retry is not None and self._save_retry.active():
            self._save_retry.cancel()
        self._save_retry = None
        if self.budget is not None:
            self.budget.close()

    def shift(self, step: float) -> None:
        """The wall clock stepped: holds keep their length (the queue's paces are the
        queue's to move)."""
        for hold in self.holds.values():
            if hold.until:
                hold.until += step
            if hold.since is not None:
                hold.since += step
        self._budget_held = {name: at + step for name, at in self._budget_held.items()}
        if any(h.state != OK for h in self.holds.values()):
            self._save()

    # -- around each attempt ---------------------------------------------------

    def started(self, account: str, entry_id: str) -> None:
        """An attempt starts: while the account is held it is the probe."""
        hold = self.holds.get(account)
        if hold is not None and hold.state != OK and hold.probe is None:
            hold._move("probe")
            hold.probe = entry_id

    def finished(self, account: str, entry_id: str) -> None:
        """An attempt is over; a probe that ended without a verdict (an internal
        error) must not leave the account waiting for it for ever."""
        hold = self.holds.get(account)
        if hold is not None and hold.probe == entry_id:
            hold.probe = None
            hold.until = self.clock.seconds() + self.policy().first_retry
            self._pause(account, hold)

    def judge(self, account: AccountConfig, entry_id: str, sender: str,
              result: DeliveryResult) -> DeliveryResult:
        """
        What the result says about the account, and the result the engine must
        settle: while the account (or this sender) is held, nothing of it is
        permanent.
        """
        now = self.clock.seconds()
        hold = self._hold(account.name)
        was_probe = hold.probe == entry_id
        if was_probe:
            hold.probe = None
        kind, row, reply = account_trouble(account, result)
        if kind is not None:
            return self._held_by(account, hold, kind, row, reply, result, now, was_probe)
        if row is not None:
            return self._send_as_refused(account, hold, sender, row, reply, result,
                                         was_probe)
        if hold.state != OK and (was_probe or delivered_any(result)):
            self.resume(account.name, "the probe went through" if was_probe else
                        "a message went through")
        if delivered_any(result):
            self._sender_ok(account.name, sender)
        return result

    def _send_as_refused(self, account: AccountConfig, hold: AccountHold, sender: str,
                         row: KnownReply, reply: Reply, result: DeliveryResult,
                         was_probe: bool) -> DeliveryResult:
        """Send As refused: bounced (the default; the bounce names the fix), or this
        sender held.  Either way the probe reached the upstream."""
        if not self.hold_refused_senders:
            if hold.state != OK and was_probe:
                self.resume(account.name, "the probe reached the upstream")
            return result
        fix = row.advice(user=account.user, sender=sender, client_id=account.client_id
                         or "", account=account.name)
        self._hold_sender(account.name, sender, reply, fix)
        if hold.state != OK and was_probe:
            self.resume(account.name, "the probe reached the upstream")
        return temporary(result, FailureKind.SEND_AS_DENIED, fix)

    def _held_by(self, account: AccountConfig, hold: AccountHold, kind: Hold,
                 row: KnownReply | None, reply: Reply, result: DeliveryResult, now: float,
                 was_probe: bool) -> DeliveryResult:
        """The result is about the account: hold it (again), and keep its mail."""
        fix = account_fix(account, row)
        if hold.state == OK or hold.state != kind.value or was_probe:
            self._enter(account.name, hold, kind, reply, fix, now, result.retry_after,
                        again=was_probe and hold.state == kind.value)
        failure = result.failure if result.failure is not FailureKind.NONE else \
            FailureKind.ACCOUNT_HELD
        return temporary(result, failure, f"{result.detail}  {fix}".strip()
                         if fix not in result.detail else result.detail)

    def resume(self, account: str, why: str) -> None:
        """The account works again: its whole queue is due now."""
        hold = self.holds.get(account)
        if hold is None or hold.state == OK:
            return
        held_for = self.clock.seconds() - (hold.since or self.clock.seconds())
        was = hold.state
        hold._move("resume")
        hold.since = hold.reason = hold.fix = None
        hold.until = hold.backoff = 0.0
        hold.probe = None
        pace = self.queue.pace(account)
        pace.probing = False
        pace.paused_until = 0.0
        moved = self.queue.make_due(account, self.clock.seconds())
        self._save()
        log.info("account {account} resumed ({why}) after {held:.0f} s {state}; {count} "
                 "messages due now", account=account, why=why, held=held_for, state=was,
                 count=moved, account_state=OK)
        self.on_resume()

    def probe_now(self, accounts: Iterable[str], why: str) -> list[str]:
        """
        An operator asked (retry, reload, the admin page's Retry): each held account
        of these sends its probe now instead of at the hold's time; the rest of its mail
        follows as soon as the probe goes through (L{judge} resumes it).  Returns what
        to tell the operator, a sentence per held account.
        """
        said = []
        for account in dict.fromkeys(accounts):
            hold = self.holds.get(account)
            if hold is None or hold.state == OK:
                continue
            now = self.clock.seconds()
            label = self._label(account, hold, now)
            if hold.probe is not None:
                said.append(f"account {account} is held ({label}); its probe is under "
                            "way, the rest of its mail follows when it goes through")
                continue
            hold.until = now
            self.queue.pace(account).paused_until = now
            self.queue.make_due(account, now)  # one starts (the probe), the rest wait
            self._save()
            log.info("account {account}: hold ({state}) lifted for one probe now ({why}); "
                     "the rest of its mail follows when the probe goes through",
                     account=account, state=label, why=why)
            said.append(f"account {account} was held ({label}): one probe now, the rest "
                        "of its mail follows when it goes through")
        return said

    # -- the wall clock's steps (L{xrelay.clocksteps}) ---------------------------

    def watch_clock(self) -> None:
        """At start: a step of the wall clock moves the queue's due times and the
        holds with it, so retries, probes and holds keep their delays."""
        self._watch = watch_for(self.clock)
        if self._watch is not None:
            self._watch.subscribe(self._stepped)
            self._watch.start()

    def _stepped(self, step: float) -> None:
        self.queue.shift(step)
        self.shift(step)
        self.on_resume()  # the engine looks at its queue again

    def received_at(self, stamped: float) -> float:
        """When a message arrived, on the clock now running: its age never jumps by a
        step of the wall clock seen since."""
        return self._watch.corrected(stamped) if self._watch is not None else stamped

    def retry_time(self, next_attempt: float) -> float:
        """A retry time read at start: never further away than max_retry_interval (one
        that is was set by a clock that ran ahead, or the clock was stepped back)."""
        latest: float = self.clock.seconds() + self.policy().max_retry_interval
        if next_attempt > latest:
            self._far_retries += 1
            if self._far_retries == 1:
                log.warn("deferred messages have retry times further away than "
                         "max_retry_interval (the clock was ahead when they were set, or "
                         "was stepped back since): retried within max_retry_interval")
            return latest
        return next_attempt

    # -- the daily budget ------------------------------------------------------

    def check_budgets(self, now: float) -> None:
        """Log once when an account's own recipient budget starts holding it, and when
        delivery resumes (called by the engine whenever it schedules)."""
        for name, pace in self.queue.paces.items():
            if not pace.recipients_per_day:
                continue
            at = pace.budget_resumes_at(now)
            held_until = self._budget_held.get(name)
            if at is not None and held_until is None:
                self._budget_held[name] = at
                log.warn("account {account}: daily limit reached ({used} of "
                         "recipients_per_day = {limit} in the last 24 h); delivery "
                         "resumes at {at}; until then mail stays queued",
                         account=name, used=pace.recipients_today(now),
                         limit=pace.recipients_per_day, at=clock_text(at, now),
                         account_state=Hold.DAILY_LIMIT.value)
            elif at is None and held_until is not None:
                del self._budget_held[name]
                log.info("account {account}: the daily recipient budget allows delivery "
                         "again", account=name, account_state=OK)

    # -- what operators see ----------------------------------------------------

    def status(self, account: AccountConfig) -> AccountStatus:
        now = self.clock.seconds()
        hold = self.holds.get(account.name) or AccountHold(account.name)
        pace = self.queue.pace(account.name)
        senders = tuple(sorted(self.senders.get(account.name, {})))
        used = pace.recipients_today(now)
        state, label = hold.state, self._label(account.name, hold, now)
        reason, fix, next_probe = hold.reason, hold.fix, hold.until or None
        if state == OK and pace.recipients_per_day:
            at = pace.budget_resumes_at(now)
            if at is not None:
                state = Hold.DAILY_LIMIT.value
                label = f"{state} (resumes at {clock_text(at, now)})"
                reason = f"{used} of recipients_per_day = {pace.recipients_per_day} used"
                fix = ("xrelay's own budget (recipients_per_day); delivery resumes by "
                       "itself as the rolling day allows")
                next_probe = at
        return AccountStatus(account.name, state, label, hold.since, next_probe, reason,
                             fix, used, pace.recipients_per_day, senders)

    # -- internals -------------------------------------------------------------

    def _hold(self, name: str) -> AccountHold:
        if name not in self.holds:
            self.holds[name] = AccountHold(name)
        return self.holds[name]

    def _label(self, name: str, hold: AccountHold, now: float) -> str:
        if hold.state == Hold.DAILY_LIMIT.value:
            return f"{hold.state} (resumes at {clock_text(hold.until, now)})"
        return hold.state

    def _enter(self, name: str, hold: AccountHold, kind: Hold, reply: Reply, fix: str,
               now: float, retry_after: float | None, again: bool) -> None:
        policy = self.policy()
        first = hold.state == OK or hold.state != kind.value
        hold.backoff = (min(max(hold.backoff * 2, policy.first_retry),
                            policy.max_retry_interval) if again else policy.first_retry)
        until = now + max(hold.backoff, retry_after or 0.0)
        if kind is Hold.DAILY_LIMIT:
            until = max(until, self._day_frees_at(name, now))
        hold._move("probe_failed" if again else "hold", kind.value)
        hold.until = until
        hold.reason = str(reply)
        hold.fix = fix
        if first:
            hold.since = now
        self._pause(name, hold)
        self._save()
        if first:
            log.warn("account {account} held: {state}: {upstream_reply}.  {fix}  Next "
                     "probe at {at}.", account=name,
                     state=self._label(name, hold, now), upstream_reply=str(reply),
                     fix=fix, at=clock_text(until, now), account_state=kind.value)

    def _day_frees_at(self, name: str, now: float) -> float:
        """When the rolling day the provider counts frees up: a day after the oldest
        start xrelay remembers, or (nothing remembered) a probe in an hour."""
        oldest = self.queue.pace(name).oldest_start(now)
        return oldest + DAY if oldest is not None else now + UNKNOWN_DAY_PROBE

    def _pause(self, name: str, hold: AccountHold) -> None:
        pace = self.queue.pace(name)
        pace.probing = True
        pace.paused_until = hold.until

    def _hold_sender(self, account: str, sender: str, reply: Reply, fix: str) -> None:
        held = self.senders.setdefault(account, {})
        if sender.lower() not in held:
            held[sender.lower()] = fix
            log.warn("account {account}: sender <{sender}> held: {upstream_reply}.  {fix}",
                     account=account, sender=sender, upstream_reply=str(reply), fix=fix)

    def _sender_ok(self, account: str, sender: str) -> None:
        held = self.senders.get(account, {})
        if held.pop(sender.lower(), None) is not None:
            log.info("account {account}: sender <{sender}> may send again",
                     account=account, sender=sender)

    def _save(self) -> None:
        """Write the holds; when that fails (a full disk), once more a minute later,
        and so on until it works: one timer at a time, one log line per episode."""
        if self._save_retry is not None and self._save_retry.active():
            self._save_retry.cancel()
        self._save_retry = None
        if self.store is not None and not self.store.save(self.holds):
            self._save_retry = self.clock.callLater(SAVE_RETRY, self._save)


def _in_thread(clock: Any) -> Any:
    """Blocking work off the reactor thread when the clock is a reactor with threads
    (tests' L{task.Clock}: at once)."""
    if hasattr(clock, "getThreadPool"):
        from twisted.internet import threads

        return lambda f: threads.deferToThreadPool(clock, clock.getThreadPool(), f)
    return run_here

