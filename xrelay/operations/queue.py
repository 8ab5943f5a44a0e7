"""
What an operator may do to queued mail: list, show, retry, delete, bounce.

One implementation for the admin page, the control channel (the daemon answering the
C{xrelay queue} command) and the C{xrelay} command working on a stopped daemon's spool.
With a running delivery engine, an entry is first taken out of the engine's schedule
and only then changed on disk, and an entry being delivered right now is never touched:
the operator is told to try again in a moment.  Without an engine the caller must hold
the spool lock (L{xrelay.operations.control.SpoolLock}).

This module decides what is allowed and says why not in words for the operator; it
never deletes message data except through the spool.
"""

from __future__ import annotations

import time
from typing import Any

import attrs

from xrelay.config import Config
from xrelay.delivery.bounce import (BounceNotSpooled, FailedRecipient, spool_bounce,
                                    withdraw_bounce)
from xrelay.envelope import DeliveryResult, Reply
from xrelay.history.records import BOUNCED, DELETED
from xrelay.history.sink import history_for
from xrelay.interfaces import IQueueControl, ISpool, NotAnEntryId, SpoolFull, UnknownEntry
from xrelay.lifecycle import ACTIVE, CORRUPT, DEFERRED, FAILED, QUEUED, check_entry_id
from xrelay.routing import entry_account
from xrelay.records import SpoolEntry

__all__ = ["QueueOperations", "QueueProblem", "QueueSlice", "OPERATOR_BOUNCE",
           "PAGE_SIZE", "queue_slice"]

#: Rows on one page of the admin page's queue.
PAGE_SIZE = 100
#: The states the queue page shows, in its order.
SHOWN_STATES = (ACTIVE, QUEUED, DEFERRED, FAILED, CORRUPT)

#: The reply a bounce made by an operator reports for each recipient.
OPERATOR_BOUNCE = Reply(554, "5.3.0 Returned to the sender by the relay's operator")


class QueueProblem(Exception):
    """An operation that cannot be done, phrased for the operator."""


@attrs.define
class QueueOperations:
    """
    @param spool: the spool (any L{ISpool}).
    @param delivery: the running delivery engine (its L{IQueueControl}), or C{None} when
        the daemon is down.
    @param config: the configuration (accounts, for bounces made without a daemon).
    """

    spool: ISpool
    config: Config
    delivery: IQueueControl | None = None
    #: What the last L{retry} or L{retry_all} did to held accounts, for the operator
    #: ("account x was held (...): one probe now, ...").
    notes: list[str] = attrs.field(factory=list)

    def entries(self, state: str | None = None) -> list[SpoolEntry]:
        return list(self.spool.entries(state))

    def get(self, entry_id: Any) -> SpoolEntry:
        """
        The entry, live or set aside in C{corrupt/}.

        @raise QueueProblem: "not an entry id" for anything but the spool's own id
            syntax (checked before any file is touched), or no such entry.
        """
        try:
            check_entry_id(entry_id)
            return self.spool.find(entry_id)
        except NotAnEntryId as e:
            raise QueueProblem(str(e)) from None
        except UnknownEntry:
            raise QueueProblem(f"no entry {entry_id} in the queue (delivered, removed, "
                               "or a mistyped id; see `xrelay queue list`)") from None

    def headers(self, entry_id: str, limit: int = 64 * 1024) -> str:
        """The message's header section, for C{show} (never the whole body)."""
        entry = self.get(entry_id)
        try:
            with open(entry.data_path, "rb") as f:
                head = f.read(limit)
        except OSError as e:
            return f"(no message data to show: {e.strerror})"
        end = head.find(b"\r\n\r\n")
        return head[: end if end >= 0 else len(head)].decode("utf-8", "replace").replace(
            "\r\n", "\n")

    def _hold(self, entry: SpoolEntry, doing: str) -> None:
        """Take the entry out of the engine's schedule, unless it is being sent now."""
        if entry.state == ACTIVE or (self.delivery is not None
                                     and self.delivery.in_flight(entry.entry_id)):
            # (active also while its result waits to be recorded on a full disk)
            raise QueueProblem(f"{entry.entry_id} is being delivered right now; "
                               f"cannot {doing} it; try again in a moment")
        if entry.state == CORRUPT and doing != "delete":
            raise QueueProblem(f"{entry.entry_id} was set aside as corrupt "
                               f"({entry.problem}); cannot {doing} it; inspect its "
                               "files in the spool's corrupt/ folder, then delete it")
        if self.delivery is not None:
            self.delivery.hold(entry.entry_id)

    def _unhold(self, entry: SpoolEntry, doing: str, error: BaseException) -> QueueProblem:
        """
        The change failed: the entry goes back into the engine's schedule as it was,
        and the operator is told why.
        """
        if self.delivery is not None:
            self.delivery.reschedule(entry)
        if isinstance(error, SpoolFull):
            why = ("the disk is full; free space in server.state_dir and try again")
        elif isinstance(error, UnknownEntry):
            why = "it was delivered or removed meanwhile"
        else:
            why = f"{type(error).__name__}: {error}; see the log"
        return QueueProblem(f"could not {doing} {entry.entry_id}: {why}; the entry is "
                            "unchanged and stays scheduled")

    async def retry(self, entry_id: str, lift: bool = True) -> SpoolEntry:
        """Make a waiting entry due now (its account, if held, probes now: L{notes})."""
        entry = self.get(entry_id)
        if entry.state == FAILED:
            raise QueueProblem(f"{entry_id} has failed for good and was bounced; "
                               "it cannot be retried")
        self._hold(entry, "retry")
        if entry.state == DEFERRED:
            try:
                entry = await self.spool.move(entry, QUEUED, next_attempt=0.0)
            except Exception as e:
                raise self._unhold(entry, "retry", e) from None
        if self.delivery is not None:
            self.delivery.submitted(entry.entry_id)
            if lift:
                self._lift_holds([entry])
        return entry

    def _lift_holds(self, entries: list[SpoolEntry]) -> None:
        """A retry asked by an operator is obeyed now, even for a held account: it
        sends one probe at once (the rest follows when that goes through)."""
        lift = getattr(self.delivery, "lift_holds", None)
        if lift is None:
            return
        names = {account.name for entry in entries
                 if (account := entry_account(self.config, entry.account, entry.sender))}
        for note in lift(sorted(names), "retry asked by the operator"):
            if note not in self.notes:
                self.notes.append(note)

    async def retry_all(self) -> int:
        """
        Every queued and deferred entry due now; returns how many.  Entries that are
        being delivered, or go away, while this runs are skipped, never an abort.
        """
        retried: list[SpoolEntry] = []
        for entry in self.entries(DEFERRED) + self.entries(QUEUED):
            try:
                retried.append(await self.retry(entry.entry_id, lift=False))
            except QueueProblem:
                continue  # delivered or started meanwhile: nothing to retry
        if self.delivery is not None:
            self._lift_holds(retried)
        return len(retried)

    async def delete(self, entry_id: str) -> SpoolEntry:
        """Remove the entry and its data without telling anyone."""
        entry = self.get(entry_id)
        self._hold(entry, "delete")
        try:
            await self.spool.remove(entry)
        except Exception as e:
            raise self._unhold(entry, "delete", e) from None
        history_for(self.delivery, self.config).finished(entry_id, DELETED, time.time())
        return entry

    async def bounce(self, entry_id: str) -> SpoolEntry:
        """
        Give up on the entry: a bounce (DSN) to its sender for every recipient still
        waiting, and the entry kept under C{failed/} for inspection.  The bounce and
        the move are one step: if either cannot be stored, neither happened.
        """
        entry = self.get(entry_id)
        if entry.state == FAILED:
            raise QueueProblem(f"{entry_id} has already failed and been bounced")
        self._hold(entry, "bounce")
        account = entry_account(self.config, entry.account, entry.sender)
        failed = [FailedRecipient(r, OPERATOR_BOUNCE) for r in entry.recipients]
        now = time.time()
        history = history_for(self.delivery, self.config)
        try:
            bounce_id = await spool_bounce(
                self.spool, self.config, entry, account,
                DeliveryResult((), detail="The relay's operator returned this message."),
                failed, now, history)
        except BounceNotSpooled:
            raise self._unhold(entry, "bounce", SpoolFull("bounce not stored")) from None
        try:
            moved = await self.spool.move(
                entry, FAILED, recipients=(), last_reply=OPERATOR_BOUNCE,
                last_attempt=now, failed_recipients=entry.failed_recipients + tuple(
                    (r, OPERATOR_BOUNCE) for r in entry.recipients))
        except Exception as e:
            if bounce_id is not None:
                await withdraw_bounce(self.spool, entry.entry_id, bounce_id)
            raise self._unhold(entry, "bounce", e) from None
        if bounce_id is not None and self.delivery is not None:
            self.delivery.release_bounce(bounce_id)
        # (Without a daemon the bounce waits in the queue: sent when it starts.)
        history.finished(entry_id, BOUNCED, time.time())
        return moved


@attrs.frozen
class QueueSlice:
    """One page of the queue: its rows, and the counts that place it."""

    entries: list[SpoolEntry]
    #: Entries per state, over the whole queue.
    counts: dict[str, int]
    #: The state shown (C{None}: all).
    state: str | None
    offset: int
    #: Entries in the state shown (or in all), that match the search.
    total: int
    size: int = PAGE_SIZE
    text: str | None = None


def queue_slice(spool: ISpool, state: str | None = None, offset: int = 0,
                size: int = PAGE_SIZE, text: str | None = None) -> QueueSlice:
    """
    One page of the queue, oldest first: only the ids are listed (one folder listing
    per state), only the rows shown are read.  Blocking file I/O: the admin page runs
    it in a thread, so that 40,000 entries cost neither the reactor nor a 68 MB page.

    @param text: only entries whose id, sender or a recipient contains it (any case);
        searched in what the daemon's spool remembers (L{ListedSpool.listing}).
    """
    ids = {s: spool.ids(s) for s in SHOWN_STATES}
    counts = {s: len(found) for s, found in ids.items() if found or s != CORRUPT}
    if text:
        needle = text.lower()
        listing = getattr(spool, "listing", None)
        everything = listing(state) if listing is not None else list(spool.entries(state))
        matching = [e for e in everything if needle in e.entry_id.lower()
                    or needle in e.sender.lower()
                    or any(needle in r.lower() for r in e.recipients)]
        offset = max(0, min(offset, max(len(matching) - 1, 0)))
        return QueueSlice(matching[offset:offset + size], counts, state, offset,
                          len(matching), size, text)
    shown = [(s, entry_id) for s in ((state,) if state else SHOWN_STATES)
             for entry_id in ids.get(s, ())]
    offset = max(0, min(offset, max(len(shown) - 1, 0)))
    rows: list[SpoolEntry] = []
    for _state, entry_id in shown[offset:offset + size]:
        try:
            rows.append(spool.find(entry_id))
        except (UnknownEntry, NotAnEntryId):
            continue  # delivered or moved on since the listing
    return QueueSlice(rows, counts, state, offset, len(shown), size)


#: What a listing row may hold: each field of L{describe_entry}, cheaply.
_ROW_FIELDS: dict[str, Any] = {
    "id": lambda e: e.entry_id,
    "state": lambda e: e.state,
    "sender": lambda e: e.sender,
    "recipients": lambda e: list(e.recipients),
    "attempts": lambda e: e.attempts,
    "last_reply": lambda e: str(e.last_reply) if e.last_reply else None,
    "problem": lambda e: e.problem or None,
}


def entry_rows(entries: list[SpoolEntry], fields: list[str]) -> list[list[Any]]:
    """
    The entries as rows of just these fields: what C{xrelay queue list} prints, a
    third of the bytes of L{describe_entry} at 40,000 entries.

    @raise QueueProblem: for a field a row cannot hold.
    """
    unknown = [f for f in fields if f not in _ROW_FIELDS]
    if unknown:
        raise QueueProblem(f"no field {unknown[0]!r} in a listing; the fields are: "
                           f"{', '.join(_ROW_FIELDS)}")
    getters = [_ROW_FIELDS[f] for f in fields]
    return [[get(e) for get in getters] for e in entries]


def describe_entry(entry: SpoolEntry) -> dict[str, Any]:
    """An entry as plain data for the control channel and C{--json} output."""
    return {
        "id": entry.entry_id,
        "state": entry.state,
        "sender": entry.sender,
        "recipients": list(entry.recipients),
        "account": entry.account,
        "size": entry.size,
        "received_at": entry.received_at,
        "attempts": entry.attempts,
        "next_attempt": entry.next_attempt,
        "last_reply": str(entry.last_reply) if entry.last_reply else None,
        "failed_recipients": [[r, str(reply)] for r, reply in entry.failed_recipients],
        "client_address": entry.client_address,
        "bounce_of": entry.bounce_of,
        "problem": entry.problem or None,
    }
