"""
The delivery engine: takes committed spool entries to their upstream account, within
the account's limits, and decides what each result means for the entry.

For every attempt: queued/deferred -> active -> (delivered: removed | deferred with the
next attempt time | failed and bounced).  Per recipient: delivered ones leave the entry,
temporary ones are retried with back-off, permanent ones are bounced (one DSN per attempt
listing them, spooled like any message and sent through the same account, never to the
null sender, never for a bounce, copies to C{[delivery] bounce_to}).  A token problem
(needs sign-in, refused token) defers and never bounces.  A message queued longer than
C{max_age} is bounced.

This module never talks SMTP or HTTP itself (transports do) and never decides policy for
the inbound side; it must never lose an entry: an entry leaves the spool only after its
last recipient was delivered or reported in a bounce.
"""

from __future__ import annotations

import collections
import math
import os
from typing import Any, Callable, Iterable, Mapping

import attrs
from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xrelay.config import AccountConfig, Config
from xrelay.delivery.accounts import AccountStates, AccountStatus
from xrelay.delivery.bounce import (BounceNotSpooled, FailedRecipient, spool_bounce,
                                    withdraw_bounce)
from xrelay.delivery.retry import RetryPolicy
from xrelay.delivery.rewrite import rewrite_from
from xrelay.delivery.scheduler import FairQueue
from xrelay.delivery.settlement import NO_RESULT, TOKEN_TROUBLE, Settlement, settle
from xrelay.envelope import (DeliveryResult, FailureKind, OutboundMessage,
                             Outcome, Reply)
from xrelay.history.sink import NullHistory
from xrelay.interfaces import (IQueueControl, ISpool, ITransport, SpoolFull,
                               UnknownEntry)
from xrelay.lifecycle import ACTIVE, DEFERRED, FAILED, QUEUED
from xrelay.events import guarded, report_outcome
from xrelay.records import OutcomeRecord, SpoolEntry
from xrelay.routing import entry_account

log = Logger()

NO_ACCOUNT = Reply(451, "4.3.5 No upstream account can send as this sender; add it to "
                   "an account's senders in xrelay.toml")
INTERNAL_ERROR = Reply(451, "4.3.0 Internal error while delivering; will retry")
SHUTTING_DOWN = Reply(421, "4.3.2 The relay is shutting down; the message is queued")


@attrs.frozen
class EngineStatus:
    counts: dict[str, int]
    oldest_age: float | None
    in_flight: dict[str, int]
    paused_until: dict[str, float]
    recent: tuple[OutcomeRecord, ...]
    totals: dict[str, int]
    #: account name -> its provider state (held or ok, daily budget).
    accounts: dict[str, AccountStatus] = attrs.field(factory=dict)


@implementer(IQueueControl)
class DeliveryEngine(Service):
    """
    @param transports: account name -> the transport that delivers through it.  The
        engine does not close them: whoever made them does.
    @param clock: the time source and scheduler (a L{task.Clock} in tests); the reactor
        by default.
    @param random: for the retry jitter (tests pin it).
    @param state_dir: where account holds and daily recipient counts are kept across
        restarts (C{server.state_dir}); memory only when C{None}.
    @param events: the relay's L{xrelay.interfaces.IRelayEvents} sink (outcomes,
        latency, bounces sent); nothing is counted by default.
    """

    name = "delivery"

    def __init__(self, config: Config, spool: ISpool, transports: Mapping[str, ITransport],
                 reactor: Any = None, clock: Any = None,
                 random: Callable[[], float] | None = None,
                 state_dir: str | None = None, history: Any = None,
                 events: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.spool = spool
        self.clock = clock if clock is not None else reactor
        self._random = random
        self.transports: dict[str, ITransport] = dict(transports)
        self.queue = FairQueue()
        self.recent: collections.deque[OutcomeRecord] = collections.deque(maxlen=100)
        self.totals = {"delivered": 0, "deferred": 0, "failed": 0, "bounces": 0}
        self._in_flight: dict[str, Deferred[DeliveryResult]] = {}
        #: When each attempt in flight started (its record in the day's budget).
        self._started_at: dict[str, float] = {}
        #: Results waiting to be recorded (the disk was full): entry id -> the timer.
        self._unsettled: dict[str, Any] = {}
        self._timer: Any = None
        self._stopping = False
        self.accounts = AccountStates(self.queue, self.clock, lambda: self.policy,
                                      lambda: self._pump(), state_dir)
        #: Where each attempt's result goes for the message trace (IMessageHistory).
        self.history = history if history is not None else NullHistory()
        #: Where outcomes are counted (IRelayEvents).
        self.events = guarded(events)
        self.reconfigure(config)

    # -- configuration -------------------------------------------------------------

    def reconfigure(self, config: Config,
                    transports: Mapping[str, ITransport] | None = None) -> None:
        """Take a reloaded configuration; limits already used stay counted."""
        self.config = config
        self.policy = RetryPolicy.from_config(config.delivery, self._random)
        self.accounts.hold_refused_senders = config.delivery.send_as_denied == "hold"
        if transports is not None:
            self.transports = dict(transports)
        for account in config.accounts:
            self.queue.pace(account.name).update(account)
        #: What the last reload did to held accounts (for the C{reload} command's answer).
        self.lifted: list[str] = []
        if self.running:
            self.accounts.attach(config.accounts)
            self.lifted = self.lift_holds(None, "the configuration was reloaded")

    def _account(self, entry: SpoolEntry) -> AccountConfig | None:
        return entry_account(self.config, entry.account, entry.sender)

    def _key(self, entry: SpoolEntry) -> str:
        account = self._account(entry)
        return account.name if account else ""

    # -- service -------------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        self.spool.recover()
        self.accounts.restore(self.config.accounts)
        # A retry time further than max_retry_interval away is from a clock that ran
        # ahead (or was stepped back since): L{AccountStates.retry_time} clamps it.
        for state in (QUEUED, DEFERRED):
            for entry in self.spool.entries(state):
                self._enqueue(entry, self.accounts.retry_time(entry.next_attempt)
                              if state == DEFERRED else 0.0)
        self.accounts.watch_clock()
        log.info("delivery started with {count} messages waiting", count=len(self.queue))
        self._pump()

    def stopService(self) -> "Deferred[None]":
        """
        Start nothing new; wait (at most C{server.shutdown_timeout}) for attempts in
        flight.  Whatever is still active is back in the queue at the next start.
        """
        super().stopService()
        self._stopping = True
        self.accounts.close()
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for pending in self._unsettled.values():
            if pending.active():
                pending.cancel()  # still active on disk: queued again at the next start
        self._unsettled.clear()
        waiting = list(self._in_flight.values())
        if not waiting:
            return defer.succeed(None)
        done: Deferred[None] = Deferred()
        all_done = defer.DeferredList([_shadow(d) for d in waiting])
        timeout = self.clock.callLater(self.config.server.shutdown_timeout,
                                       lambda: None if done.called else done.callback(None))

        def finished(_: object) -> None:
            if timeout.active():
                timeout.cancel()
            if not done.called:
                done.callback(None)
        all_done.addCallback(finished)
        return done

    # -- IDelivery -----------------------------------------------------------------

    def submitted(self, entry_id: str) -> None:
        if not self.running or self._stopping:
            return  # it is on disk: the next start picks it up
        try:
            entry = self.spool.committed(entry_id) or self.spool.get(entry_id)
        except UnknownEntry:
            log.warn("submitted entry {entry_id} is not in the spool", entry_id=entry_id)
            return
        self._enqueue(entry, 0.0)
        self._pump()

    def deliver_now(self, entry_id: str) -> "Deferred[DeliveryResult]":
        """
        Pass-through: attempt at once, ahead of the account's pacing (a device is waiting
        for the answer), though it counts against the limits like any attempt.

        When nothing is delivered the entry is handed back: removed, neither retried
        nor bounced, since the device hears the upstream's reply and keeps the message
        (a 4xx it retries, a 5xx it reports).  Anything else settles as usual.
        """
        if entry_id in self._in_flight:
            return _shadow(self._in_flight[entry_id])
        try:
            entry = self.spool.committed(entry_id) or self.spool.get(entry_id)
        except UnknownEntry:
            return defer.succeed(DeliveryResult((), detail="already delivered"))
        if not self.running or self._stopping:
            return defer.succeed(DeliveryResult.for_all(entry.recipients, Outcome.TEMPORARY,
                                                        SHUTTING_DOWN))
        self.queue.discard(entry_id)
        key = self._key(entry)
        self._started_at[entry_id] = self.clock.seconds()
        self.queue.pace(key).start(self._started_at[entry_id], len(entry.recipients))
        return _shadow(self._start(entry_id, key, hand_back=True))

    def resume_account(self, name: str) -> None:
        """
        The account works again (an operator signed in, the token endpoint is back):
        its deferred messages are due now.
        """
        self.accounts.resume(name, "asked")
        pace = self.queue.pace(name)
        pace.paused_until = 0.0
        moved = self.queue.make_due(name, self.clock.seconds())
        log.info("account {account} resumed; {count} messages due now", account=name,
                 count=moved)
        self._pump()

    def lift_holds(self, accounts: Iterable[str] | None, why: str) -> list[str]:
        """An operator asked (retry, reload): each held account of these (C{None}: all)
        probes now; a sentence per held account, for the operator."""
        said = self.accounts.probe_now(
            [a.name for a in self.config.accounts] if accounts is None else accounts, why)
        self._pump()
        return said

    # -- scheduling ----------------------------------------------------------------

    def _enqueue(self, entry: SpoolEntry, due: float) -> None:
        if entry.entry_id in self._in_flight:
            return
        self.queue.add(entry.entry_id, self._key(entry), due, max(len(entry.recipients), 1))

    def _pump(self) -> None:
        if not self.running or self._stopping:
            return
        now = self.clock.seconds()
        for entry_id, account in self.queue.take(now):
            self._started_at[entry_id] = now  # the budget's record of this start
            self._start(entry_id, account)
        self.accounts.check_budgets(now)
        wake = self.queue.next_wake(now)
        if self._timer is not None and self._timer.active():
            if wake is not None and self._timer.getTime() <= wake:
                return
            self._timer.cancel()
        self._timer = None
        if wake is not None:
            self._timer = self.clock.callLater(max(wake - now, 0.0), self._wake)

    def _wake(self) -> None:
        self._timer = None
        self._pump()

    def _start(self, entry_id: str, account: str,
               hand_back: bool = False) -> "Deferred[DeliveryResult]":
        released = False

        def release() -> None:
            # The account's connection is free as soon as the transport has answered;
            # the spool work that settles the result need not hold it, so the next
            # message goes out while this one is being recorded.
            nonlocal released
            if not released:
                released = True
                self.queue.pace(account).finish()
                self._pump()

        self.accounts.started(account, entry_id)
        d = defer.ensureDeferred(self._attempt(entry_id, release, hand_back))
        self._in_flight[entry_id] = d

        def done(result: Any) -> Any:
            del self._in_flight[entry_id]
            self._started_at.pop(entry_id, None)
            self.accounts.finished(account, entry_id)
            if released:
                self._pump()  # settling may have scheduled a retry: set the timer
            else:
                release()
            return result
        d.addBoth(done)
        return d

    # -- one attempt ---------------------------------------------------------------

    async def _attempt(self, entry_id: str, release: Callable[[], None] = lambda: None,
                       hand_back: bool = False) -> DeliveryResult:
        try:
            entry = self.spool.take_committed(entry_id) or self.spool.get(entry_id)
        except UnknownEntry:
            return DeliveryResult((), detail="no longer in the spool")
        try:
            entry = await self.spool.move(entry, ACTIVE)
            account = self._account(entry)
            transport = self.transports.get(account.name) if account else None
            if account is None or transport is None:
                result = DeliveryResult.for_all(entry.recipients, Outcome.TEMPORARY,
                                                NO_ACCOUNT)
            else:
                result = await self._send(entry, account, transport)
                result = self.accounts.judge(account, entry.entry_id, entry.sender, result)
            self._refund_budget(entry, result)
            release()
            if hand_back and not any(r.outcome is Outcome.DELIVERED
                                     for r in result.recipients):
                return await self._hand_back(entry, account, result)
            try:
                await self._settle(entry, account, result)
            except Exception as e:
                # The upstream has answered; only recording it failed (a full disk).
                # Sending again would repeat what was delivered: record it later.
                self._settle_later(entry_id, account, result, e, 1)
            return result
        except Exception as e:
            # The entry stays on disk (active: requeued at the next start); try again
            # later in this run too, backing off like any retry.
            if isinstance(e, SpoolFull):
                log.error("delivery of {entry_id}: the disk is full ({error}); the "
                          "message stays queued; free space in server.state_dir",
                          entry_id=entry_id, error=str(e))
            else:
                log.failure("delivery of {entry_id} failed unexpectedly",
                            entry_id=entry_id)
            self.queue.add(entry_id, self._key(entry),
                           self.clock.seconds() + self.policy.delay(entry.attempts + 1), 1)
            return DeliveryResult.for_all(entry.recipients, Outcome.TEMPORARY,
                                          INTERNAL_ERROR)

    def _refund_budget(self, entry: SpoolEntry, result: DeliveryResult) -> None:
        """The recipients this attempt did not deliver leave the day's budget (issue 23:
        bounced and deferred recipients are not the provider's count)."""
        started = self._started_at.pop(entry.entry_id, None)
        undelivered = sum(1 for r in result.recipients if r.outcome is not Outcome.DELIVERED)
        if started is not None and undelivered:
            self.queue.pace(self._key(entry)).refund(started, undelivered)

    def _settle_later(self, entry_id: str, account: AccountConfig | None,
                      result: DeliveryResult, error: BaseException | None, tries: int) -> None:
        """
        Record an attempt's result again after a back-off, until the disk takes it.
        The entry stays C{active} meanwhile (operators are told it is in flight; a
        restart puts it back in the queue).
        """
        delay = self.policy.delay(tries)
        if isinstance(error, SpoolFull):
            log.error("{entry_id}: the result of its delivery cannot be recorded: the "
                      "disk is full ({error}); trying again in {delay:.0f} s; free space "
                      "in server.state_dir", entry_id=entry_id, error=str(error),
                      delay=delay)
        else:
            log.failure("{entry_id}: the result of its delivery cannot be recorded; "
                        "trying again in {delay:.0f} s", failure=Failure(error),
                        entry_id=entry_id, delay=delay)

        def again() -> None:
            self._unsettled.pop(entry_id, None)
            try:
                entry = self.spool.get(entry_id)
            except UnknownEntry:
                return  # recorded after all (removed: delivered)
            if entry.state != ACTIVE:
                return  # the record was written before the failure
            d = defer.ensureDeferred(self._settle(entry, account, result))
            d.addCallback(lambda _: self._pump())
            d.addErrback(lambda f: self._settle_later(entry_id, account, result,
                                                      f.value, tries + 1))
        self._unsettled[entry_id] = self.clock.callLater(delay, again)

    async def _send(self, entry: SpoolEntry, account: AccountConfig,
                    transport: ITransport) -> DeliveryResult:
        sender, data_path, size = entry.sender, entry.data_path, entry.size
        scratch = None
        if account.rewrite_from and entry.bounce_of is None:
            scratch = self.spool.scratch_path(entry.entry_id, "rewritten.eml")
            size = rewrite_from(entry.data_path, scratch, account.user, entry.sender)
            sender, data_path = account.user, scratch
        message = OutboundMessage(entry.entry_id, sender, entry.recipients, data_path, size,
                                  entry.smtputf8, entry.body_8bitmime)
        try:
            return await transport.deliver(message)
        except Exception:
            log.failure("transport for {account} failed on {entry_id}",
                        account=account.name, entry_id=entry.entry_id)
            return DeliveryResult.for_all(entry.recipients, Outcome.TEMPORARY,
                                          INTERNAL_ERROR)
        finally:
            if scratch is not None:
                try:
                    os.unlink(scratch)
                except FileNotFoundError:
                    pass

    async def _hand_back(self, entry: SpoolEntry, account: AccountConfig | None,
                         result: DeliveryResult) -> DeliveryResult:
        """Pass-through, nothing delivered: the device takes the message back."""
        await self.spool.remove(entry)
        key = account.name if account else ""
        first = result.recipients[0].reply if result.recipients else NO_RESULT
        self.recent.append(OutcomeRecord(entry.entry_id, entry.sender, key,
                                         self.clock.seconds(), "handed back", 0, 0, 0,
                                         str(first)))
        self.history.attempted(self.recent[-1], (), (), result.recipients)
        log.info(
            "{entry_id} from <{sender}> via {account}: handed back to the client "
            "(pass-through; {recipient_count} recipients); upstream: {upstream_reply}",
            entry_id=entry.entry_id, sender=entry.sender, account=key or "(none)",
            outcome="handed back", recipient_count=len(entry.recipients),
            upstream_reply=str(first), failure=result.failure.value)
        report_outcome(self.events, "handed back", key, result.failure.value, entry,
                       self.clock.seconds())
        return attrs.evolve(result, handed_back=True)

    async def _settle(self, entry: SpoolEntry, account: AccountConfig | None,
                      result: DeliveryResult) -> None:
        """Apply what the attempt came to (L{settle}): record, bounce, schedule, report."""
        now = self.clock.seconds()
        settled = settle(entry.recipients, result,
                         self.policy.expired(self.accounts.received_at(entry.received_at),
                                             now))
        key = account.name if account else ""
        attempts = entry.attempts + 1
        delay = self.policy.delay(attempts, result.retry_after)
        self._pace_after(key, result, delay, now)
        bounce_id = None
        if settled.permanent:
            # The bounce and the entry's new record are one step (no lost bounce, no
            # second one): the bounce is committed but not released, the record is
            # written, and only then is the bounce sent; if the record cannot be
            # written the bounce is withdrawn.
            try:
                bounce_id = await self._bounce(entry, account, result,
                                               list(settled.permanent), now)
            except BounceNotSpooled:
                settled = settled.without_bounce()
        last_reply = settled.last_reply(entry.last_reply)
        changes = dict(attempts=attempts, last_attempt=now, last_reply=last_reply,
                       failed_recipients=entry.failed_recipients + tuple(
                           (f.recipient, f.reply) for f in settled.permanent))
        try:
            outcome = await self._record(entry, key, settled, now + delay, changes)
        except Exception:
            if bounce_id is not None:
                await self._withdraw_bounce(entry.entry_id, bounce_id)
            raise
        if bounce_id is not None:
            self._release_bounce(bounce_id)
        record = OutcomeRecord(entry.entry_id, entry.sender, key, now, outcome,
                               len(settled.delivered), len(settled.temporary),
                               len(settled.permanent), str(last_reply) if last_reply else "")
        self._report(entry, record, settled, result, attempts)

    def _pace_after(self, key: str, result: DeliveryResult, delay: float,
                    now: float) -> None:
        """Slow the account down after throttling or credential trouble."""
        pace = self.queue.pace(key)
        if result.failure is FailureKind.THROTTLED or result.retry_after is not None:
            pace.throttle(now + (result.retry_after or self.policy.first_retry))
        if result.failure in TOKEN_TROUBLE:
            # Nothing of this account can go until the token works: hold all of it.
            pace.throttle(now + delay)

    async def _record(self, entry: SpoolEntry, key: str, settled: Settlement,
                      next_attempt: float, changes: dict[str, Any]) -> str:
        """The entry's new record (deferred, failed, or gone); returns the outcome."""
        if settled.temporary:
            moved = await self.spool.move(
                entry, DEFERRED, recipients=tuple(r.recipient for r in settled.temporary),
                next_attempt=next_attempt, **changes)
            self.queue.add(moved.entry_id, key, next_attempt, len(settled.temporary))
            self.totals["deferred"] += 1
            return "partial" if settled.delivered else "deferred"
        if changes["failed_recipients"]:
            await self.spool.move(entry, FAILED, recipients=(), **changes)
            self.totals["failed"] += 1
            return "failed"
        await self.spool.remove(entry)
        self.totals["delivered"] += 1
        return "delivered"

    def _report(self, entry: SpoolEntry, record: OutcomeRecord, settled: Settlement,
                result: DeliveryResult, attempts: int) -> None:
        """The attempt for the admin page, the history, the log and the metrics."""
        self.recent.append(record)
        self.history.attempted(record, list(settled.delivered), list(settled.temporary),
                               list(settled.permanent))
        log.info(
            "{entry_id} from <{sender}> via {account}: {outcome} ({delivered} delivered, "
            "{deferred} deferred, {failed} failed; {recipient_count} recipients); "
            "upstream: {upstream_reply}",
            entry_id=entry.entry_id, sender=entry.sender, account=record.account or "(none)",
            outcome=record.outcome, delivered=record.delivered, deferred=record.deferred,
            failed=record.failed, recipient_count=len(entry.recipients),
            upstream_reply=record.reply, failure=result.failure.value,
            attempts=attempts, bounce_of=entry.bounce_of)
        report_outcome(self.events, record.outcome, record.account, result.failure.value,
                       entry, record.at)

    async def _bounce(self, entry: SpoolEntry, account: AccountConfig | None,
                      result: DeliveryResult, failed: list[FailedRecipient],
                      now: float) -> str | None:
        """
        Spool a DSN for these recipients (L{spool_bounce}); it is not sent until
        L{_release_bounce}: the caller first makes the original's new record durable.

        @raise BounceNotSpooled: it could not be stored (full disk); nothing remains.
        """
        return await spool_bounce(self.spool, self.config, entry, account, result, failed,
                                  now, self.history)

    def _release_bounce(self, bounce_id: str) -> None:
        """The original's record is durable: the bounce may go."""
        self.totals["bounces"] += 1
        self.submitted(bounce_id)

    async def _withdraw_bounce(self, entry_id: str, bounce_id: str) -> None:
        """The original's record could not be written: its bounce must not exist."""
        await withdraw_bounce(self.spool, entry_id, bounce_id)

    # -- what operators may do (IQueueControl) ---------------------------------------

    def in_flight(self, entry_id: str) -> bool:
        return entry_id in self._in_flight

    def hold(self, entry_id: str) -> None:
        self.queue.discard(entry_id)

    def reschedule(self, entry: SpoolEntry) -> None:
        if entry.state not in (QUEUED, DEFERRED):
            return
        self._enqueue(entry, entry.next_attempt if entry.state == DEFERRED else 0.0)
        self._pump()

    def release_bounce(self, bounce_id: str) -> None:
        self._release_bounce(bounce_id)

    # -- what operators see --------------------------------------------------------

    def status(self) -> EngineStatus:
        now = self.clock.seconds()
        oldest = math.inf
        for state in (QUEUED, ACTIVE, DEFERRED):
            for entry in self.spool.entries(state):
                oldest = min(oldest, self.accounts.received_at(entry.received_at))
                break  # ids sort by arrival: the first is the oldest
        return EngineStatus(
            counts=self.spool.counts(),
            oldest_age=None if oldest == math.inf else max(now - oldest, 0.0),
            in_flight={n: p.in_flight for n, p in self.queue.paces.items() if p.in_flight},
            paused_until={n: p.paused_until for n, p in self.queue.paces.items()
                          if p.paused_until > now},
            recent=tuple(self.recent),
            totals=dict(self.totals),
            accounts={a.name: self.accounts.status(a) for a in self.config.accounts},
        )


def _shadow(d: "Deferred[Any]") -> "Deferred[Any]":
    """A Deferred that fires with C{d}'s result without taking it from C{d}."""
    shadow: Deferred[Any] = Deferred()

    def copy(result: Any) -> Any:
        if isinstance(result, Failure):
            shadow.errback(result)
        else:
            shadow.callback(result)
        return result
    d.addBoth(copy)
    return shadow
