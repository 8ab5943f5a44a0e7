"""
The history sinks the stages report to: L{SqliteHistory} (the relay's: a queue and one
writer thread in front of L{HistoryStore}) and L{NullHistory} (history off, tests,
embedding programs that keep none).

The reactor thread only puts small tuples on a queue; the writer thread takes whatever
has gathered (up to L{MAX_BATCH}) and writes it in one transaction, prunes what is older
than C{delivery.history_days} at start and every L{PRUNE_EVERY} seconds, and reports
problems back on the reactor thread.  Nothing here may block the reactor or raise into
the caller: the history is never in the path of a 250.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from typing import Any, Callable, Sequence

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.config import Config
from xrelay.history.records import DELIVERED, EXPIRED, AcceptedMessage
from xrelay.history.store import HistoryStore
from xrelay.interfaces import IMessageHistory

__all__ = ["NullHistory", "SqliteHistory", "history_for", "history_path", "open_history",
           "MAX_BATCH", "PRUNE_EVERY"]

log = Logger(namespace="xrelay.history")

#: Records written in one transaction at most.
MAX_BATCH = 1000
#: After the first record of a batch, the writer waits this long for more: a burst of
#: mail then costs one transaction per interval, not one per message (measured: 53 us
#: of the writer's CPU per message one at a time, 13 us in batches of 100).
GATHER = 0.1
#: Seconds between prunes of old records (and at every start).
PRUNE_EVERY = 3600.0
#: Records that could not be written (a full disk) are tried again this often ...
RETRY_EVERY = 30.0
#: ... and at most this many are kept meanwhile (the oldest are dropped first).
MAX_KEPT = 100_000
DAY = 86400.0

_STOP = object()


def history_path(state_dir: str) -> str:
    """Where the relay keeps its message history."""
    return os.path.join(state_dir, "history.sqlite")


def _recipients(delivered: Sequence[Any], deferred: Sequence[Any],
                failed: Sequence[Any]) -> list[tuple[str, str, str]]:
    out = [(r.recipient, DELIVERED, str(r.reply)) for r in delivered]
    out += [(r.recipient, "deferred", str(r.reply)) for r in deferred]
    out += [(r.recipient, EXPIRED if getattr(r, "expired", False) else "failed",
             str(r.reply)) for r in failed]
    return out


@implementer(IMessageHistory)
class NullHistory(Service):
    """Keeps nothing (C{delivery.history_days = 0}, or no history wired in)."""

    name = "history"

    def received(self, message: AcceptedMessage) -> None:
        pass

    def attempted(self, record: Any, delivered: Sequence[Any], deferred: Sequence[Any],
                  failed: Sequence[Any]) -> None:
        pass

    def bounced(self, entry_id: str, bounce_id: str, to: Sequence[str], account: str,
                at: float) -> None:
        pass

    def finished(self, entry_id: str, outcome: str, at: float) -> None:
        pass


class _Recording:
    """The record-building half shared by the threaded and the direct sink."""

    def _put(self, kind: str, arguments: tuple[Any, ...]) -> None:
        raise NotImplementedError

    def received(self, message: AcceptedMessage) -> None:
        self._put("received", (message,))

    def attempted(self, record: Any, delivered: Sequence[Any], deferred: Sequence[Any],
                  failed: Sequence[Any]) -> None:
        self._put("attempted", (record.entry_id, record.sender, record.account, record.at,
                                record.outcome, record.reply,
                                _recipients(delivered, deferred, failed)))

    def bounced(self, entry_id: str, bounce_id: str, to: Sequence[str], account: str,
                at: float) -> None:
        self._put("bounced", (entry_id, bounce_id, list(to), account, "", at))

    def finished(self, entry_id: str, outcome: str, at: float) -> None:
        self._put("finished", (entry_id, outcome, at))


@implementer(IMessageHistory)
class SqliteHistory(_Recording, Service):
    """
    The relay's message history in the SQLite file at C{path}.

    @param days: records older than this many days are pruned (C{delivery.history_days}).
    @param clock: seconds since the epoch, for pruning (tests move it).
    @ivar written: records written so far (for tests and the benchmark).
    @ivar cpu_seconds: CPU time the writer thread spent writing (for the benchmark).
    """

    name = "history"

    def __init__(self, path: str, days: int, subjects: bool = True,
                 message_ids: bool = True, reactor: Any = None,
                 clock: Callable[[], float] = time.time, max_mb: int = 0) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.path = path
        self.days = days
        #: C{delivery.history_max_mb}: the oldest messages go first beyond it.
        self.max_mb = max_mb
        self.reactor = reactor
        self.clock = clock
        self.store = HistoryStore(path, self._warn_from_thread, subjects, message_ids)
        self.written = 0
        self.cpu_seconds = 0.0
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred[None] | None = None
        #: Records not written yet (no space), oldest first; the writer thread's own.
        self._kept: list[tuple[str, tuple[Any, ...]]] = []
        self._kept_since = 0.0
        self._dropped = 0
        #: Writing fails (logged once when it starts, once when it works again).
        self._failing = False

    def _put(self, kind: str, arguments: tuple[Any, ...]) -> None:
        self._queue.put((kind, arguments))

    # -- service -----------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._thread = threading.Thread(target=self._run, name="xrelay-history",
                                        daemon=True)
        self._thread.start()

    def stopService(self) -> "Deferred[None]":
        """Write what is queued, then close the database."""
        super().stopService()
        if self._thread is None:
            return defer.succeed(None)
        self._stopped = Deferred()
        self._queue.put(_STOP)
        self._thread = None
        return self._stopped

    def flush(self) -> "Deferred[None]":
        """Fires (on the reactor thread) once everything recorded so far is written."""
        d: Deferred[None] = Deferred()
        self._queue.put(d)
        return d

    # -- the writer thread ---------------------------------------------------------

    def _warn_from_thread(self, text: str) -> None:
        self.reactor.callFromThread(log.warn, "message history: {problem}", problem=text)

    def _run(self) -> None:
        self._open()
        last_prune = self.clock() if self._failing else self._prune()
        stop = False
        while not stop:
            records, waiting, stop = self._gather()
            if records or self._retry_due():
                started = time.thread_time()
                self._write(records, final=stop)
                self.cpu_seconds += time.thread_time() - started
            if self.clock() - last_prune >= PRUNE_EVERY and not self._failing:
                last_prune = self._prune()
            for d in waiting:
                self.reactor.callFromThread(d.callback, None)
        self.store.close()
        stopped = self._stopped
        if stopped is not None:
            self.reactor.callFromThread(stopped.callback, None)

    def _open(self) -> None:
        try:
            self.store.open()
        except Exception as e:  # a file system that refuses us: keep trying per batch
            self._failing = True
            self._warn_from_thread(f"cannot open {self.path} ({e}); mail is not "
                                   f"affected; records are kept in memory (up to "
                                   f"{MAX_KEPT}) and written when it opens (check the "
                                   "free space in server.state_dir)")

    def _gather(self) -> tuple[list[tuple[str, tuple[Any, ...]]], list[Deferred[None]],
                               bool]:
        """
        The next batch from the queue: (records, flushes waiting for them, whether the
        sink was stopped).  Waits for the first item (up to the next retry or prune),
        lets a record's companions arrive for L{GATHER} seconds, then takes what is
        there, up to L{MAX_BATCH} records.
        """
        try:
            item = self._queue.get(timeout=RETRY_EVERY if self._kept else PRUNE_EVERY)
        except queue.Empty:
            item = None
        records: list[tuple[str, tuple[Any, ...]]] = []
        waiting: list[Deferred[None]] = []
        stop = False
        if item is not None and item is not _STOP and not isinstance(item, Deferred):
            time.sleep(GATHER)
        while item is not None:
            if item is _STOP:
                stop = True
            elif isinstance(item, Deferred):
                waiting.append(item)
            else:
                records.append(item)
            if len(records) >= MAX_BATCH:
                break
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                item = None
        return records, waiting, stop

    def _retry_due(self) -> bool:
        """Records are kept from a failed write, and their next try is due."""
        return bool(self._kept) and time.monotonic() - self._kept_since >= RETRY_EVERY

    def _write(self, records: list[tuple[str, tuple[Any, ...]]], final: bool) -> None:
        """
        Write these records after any kept from before; when there is no room, keep
        them all (bounded) and try again every L{RETRY_EVERY} seconds: one warning when
        that starts, one when they are written, so that C{xrelay trace} shows delivered
        mail as delivered once the disk has room again.
        """
        batch = self._kept + records
        if self._failing and not final and \
                time.monotonic() - self._kept_since < RETRY_EVERY:
            self._keep(batch)  # not yet: one try per RETRY_EVERY, not one per batch
            return
        try:
            problem = self.store.write(batch)
        except Exception as e:  # never let the writer die
            self._warn_from_thread(f"{len(batch)} records lost: {e!r}")
            problem = None
        if problem is None:
            if self._failing:
                self._info_from_thread(
                    f"{len(self._kept)} records kept while they could not be written "
                    f"are now written to {self.path}" + (
                        f" ({self._dropped} of the oldest were dropped)"
                        if self._dropped else ""))
            self.written += len(batch)
            self._kept = []
            self._dropped = 0
            self._failing = False
            return
        if not self._failing:
            self._failing = True
            self._warn_from_thread(
                f"records cannot be written to {self.path} ({problem}); mail is not "
                f"affected; they are kept in memory (up to {MAX_KEPT}) and written "
                "when that works again (free space in server.state_dir)")
        self._keep(batch)
        self._kept_since = time.monotonic()
        if final:
            self._warn_from_thread(f"{len(self._kept)} records could not be written "
                                   "before the stop and are lost")

    def _keep(self, batch: list[tuple[str, tuple[Any, ...]]]) -> None:
        if len(batch) > MAX_KEPT:
            self._dropped += len(batch) - MAX_KEPT
            batch = batch[-MAX_KEPT:]
        self._kept = batch

    def _info_from_thread(self, text: str) -> None:
        self.reactor.callFromThread(log.info, "message history: {problem}", problem=text)

    def _prune(self) -> float:
        """Forget what is older than history_days, then the oldest beyond
        history_max_mb (in the writer thread: never on the reactor)."""
        now = self.clock()
        self.store.prune(now - self.days * DAY)
        if self.max_mb:
            forgotten = self.store.prune_to_size(self.max_mb * 1024 * 1024)
            if forgotten:
                self._info_from_thread(
                    f"{forgotten} of the oldest messages forgotten to keep {self.path} "
                    f"within delivery.history_max_mb = {self.max_mb}")
        return now


@implementer(IMessageHistory)
class _DirectHistory(_Recording):
    """
    Writes each record at once, on the calling thread: for the C{xrelay} command acting
    on a stopped daemon's queue.  Only an existing history is written to: a command run
    as another user must not create a file the daemon cannot open.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    def _put(self, kind: str, arguments: tuple[Any, ...]) -> None:
        if not os.path.exists(self.path):
            return
        store = HistoryStore(self.path, lambda text: log.warn(
            "message history: {problem}", problem=text))
        try:
            store.write([(kind, arguments)])
        finally:
            store.close()


def open_history(config: Config, reactor: Any = None) -> Any:
    """The relay's history service for this configuration (wired by C{makeService})."""
    if config.delivery.history_days <= 0:
        return NullHistory()
    return SqliteHistory(history_path(config.server.state_dir),
                         config.delivery.history_days, config.delivery.history_subject,
                         config.delivery.history_message_id, reactor=reactor,
                         max_mb=config.delivery.history_max_mb)


def history_for(delivery: Any, config: Config) -> Any:
    """
    The history to report an operator's action to: the running engine's, or (the daemon
    stopped) the file itself.
    """
    history = getattr(delivery, "history", None)
    if history is not None:
        return history
    if config.delivery.history_days <= 0:
        return NullHistory()
    return _DirectHistory(history_path(config.server.state_dir))
