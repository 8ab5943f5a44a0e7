"""
The commit: a message becomes an entry only once its data and its record are durable,
and only then is it acknowledged (the C{250}).

Into a spare pair (the usual case) that is one round: the record is written into its
place and both files are fdatasynced, each on a worker thread of the spool's own pool,
so that the fdatasyncs of every message committing at that moment are issued together
and the file system's journal commits them as one transaction.  Nothing waits for a
batch before it: a second message commits while a first one syncs.  The workers hand
their results back to the reactor together (one wake-up for all that finished
meanwhile).

Without a spare (the first messages after a start on a full disk, or work run inline
in tests) the commit is the older two rounds: both files written and fsynced in
C{tmp/}, renamed into C{data/} and C{queued/}, both folders fsynced.

With C{run_blocking} given (tests on a L{task.Clock}), commits run in batches, one
batch at a time, through it.
"""

from __future__ import annotations

import concurrent.futures
import os
import threading
from typing import Any, Callable

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from xrelay.durable import fsync_directory
from xrelay.interfaces import SpoolFull
from xrelay.spool.host import SpoolHost
from xrelay.lifecycle import QUEUED
from xrelay.spool.incoming import Incoming, full, unlink_quietly


__all__ = ["Committer", "WORKERS"]

log = Logger()

#: Worker threads of a spool's pool: enough for the fdatasyncs of a burst to overlap.
WORKERS = 16


def _as_error(e: BaseException) -> BaseException:
    return SpoolFull(str(e.strerror)) if isinstance(e, OSError) and full(e) else e


class Committer:
    """
    The commits of one spool, and the thread pool that runs them (owned here, shut down
    with the spool by L{close}).

    @param run: C{None} for the spool's own threads; else a callable running blocking
        work and returning a Deferred (every commit then goes in batches, one at a
        time, through it).
    """

    def __init__(self, spool: SpoolHost, reactor: Any,
                 run: Callable[..., "Deferred[Any]"] | None) -> None:
        self.spool = spool
        self._reactor = reactor
        self._run = run
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        #: Commits finished on worker threads, not yet handed to the reactor.
        self._finished: list[tuple[Incoming, Deferred[str], BaseException | None]] = []
        #: With C{run}: commits waiting for the batch in progress.
        self._pending: list[tuple[Incoming, Deferred[str]]] = []
        self._committing = False
        self.closed = False
        #: How many hand-backs (batches) and messages were committed (metrics).
        self.batches = 0
        self.messages = 0

    # -- the pool ----------------------------------------------------------------

    def pool(self) -> concurrent.futures.ThreadPoolExecutor:
        """The spool's worker threads (made on first use)."""
        if self._pool is None:
            if self.closed:
                raise RuntimeError("the spool is closed")
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix="xrelay-spool")
        return self._pool

    def in_thread(self, f: Callable[..., Any], *args: Any) -> "Deferred[Any]":
        """
        Run blocking spool work on the pool; its result on the reactor thread.  After
        L{close} (a late state change while the process ends) it runs on this thread.
        """
        if self.closed:
            return defer.maybeDeferred(f, *args)
        d: Deferred[Any] = Deferred()

        def done(future: "concurrent.futures.Future[Any]") -> None:
            error = future.exception()
            if error is None:
                self._reactor.callFromThread(d.callback, future.result())
            else:
                self._reactor.callFromThread(d.errback, error)

        self.pool().submit(f, *args).add_done_callback(done)
        return d

    def close(self) -> None:
        """Wait for the commits in flight, then stop the threads."""
        self.closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # -- committing --------------------------------------------------------------

    def enqueue(self, message: Incoming) -> "Deferred[str]":
        self.spool._recovered.clear()  # a new entry: recovery's listing is no longer whole
        d: Deferred[str] = Deferred()
        if message.spare and self._run is None and not self.closed:
            self._start_pair(message, d)
        else:
            # Without a spare: in batches, one at a time (their rounds include folder
            # fsyncs, which concurrent batches would only make wait for each other).
            self._pending.append((message, d))
            self._next_batch()
        return d

    def _start_pair(self, message: Incoming, d: "Deferred[str]") -> None:
        """Data and record fdatasynced on two workers; the later one reports."""
        state: dict[str, Any] = {"left": 2, "error": None}

        def step(work: Callable[[], None]) -> None:
            try:
                work()
            except BaseException as e:  # noqa: BLE001 - reported as the commit's failure
                with self._lock:
                    state["error"] = state["error"] or _as_error(e)
            with self._lock:
                state["left"] -= 1
                if state["left"]:
                    return
            error = state["error"]
            if error is not None:
                message.discard()
            self._hand_back(message, d, error)

        pool = self.pool()
        pool.submit(step, message.sync_record)
        pool.submit(step, message.sync_data)

    def _hand_back(self, message: Incoming, d: "Deferred[str]",
                   error: BaseException | None) -> None:
        """Worker side: queue the result; the first one queued wakes the reactor."""
        with self._lock:
            self._finished.append((message, d, error))
            wake = len(self._finished) == 1
        if wake:
            self._reactor.callFromThread(self._deliver_finished)

    def _deliver_finished(self) -> None:
        with self._lock:
            finished, self._finished = self._finished, []
        self._report(finished)

    def _next_batch(self) -> None:
        if not self._pending or self._committing:
            return
        batch, self._pending = self._pending, []
        self._committing = True
        run = self._run or self.in_thread
        run(self.commit_batch, [m for m, _ in batch]).addBoth(self._batch_done, batch)

    def _batch_done(self, result: Any, batch: list[tuple[Incoming, "Deferred[str]"]]) -> None:
        self._committing = False
        if not isinstance(result, list):
            # The thread work itself blew up: nothing of the batch is trustworthy.
            for m, _ in batch:
                m.discard()
            result = [result.value] * len(batch)
        try:
            self._next_batch()
        finally:
            self._report([(m, d, error) for (m, d), error in zip(batch, result, strict=True)])

    def _report(self, results: list[tuple[Incoming, "Deferred[str]",
                                          BaseException | None]]) -> None:
        """Reactor side: acknowledge (or refuse) each message of a hand-back."""
        self.batches += 1
        spool = self.spool
        if any(error is None for _, _, error in results):
            spool._spares.room_again()
        elif any(isinstance(error, SpoolFull) for _, _, error in results):
            spool._out_of_space()
        for m, d, error in results:
            spool._unlisted.discard(m.entry_id)
            if error is None:
                self.messages += 1
                if m.entry is not None:
                    spool._hand_over(m.entry)
                d.callback(m.entry_id)
            else:
                if isinstance(error, SpoolFull):
                    log.warn("spool full, message from {sender} not stored",
                             sender=m.envelope.sender)
                else:
                    log.failure("commit of {entry_id} failed",
                                failure=_as_failure(error), entry_id=m.entry_id)
                d.errback(error)

    # -- thread side -------------------------------------------------------------

    def commit_batch(self, messages: list[Incoming]) -> list[BaseException | None]:
        """
        Commit messages in the calling thread: spare pairs in place (data, then record),
        the others in two rounds (files in C{tmp/}, then renames and both folders).
        Returns one error (or None) per message; failed ones are removed.
        """
        def prepare(m: Incoming) -> BaseException | None:
            try:
                if m.spare:
                    m.sync_data()
                    m.sync_record()
                else:
                    m.prepare()
                return None
            except Exception as e:
                m.discard()
                return _as_error(e)

        errors = [prepare(m) for m in messages]
        placed = [m for m, e in zip(messages, errors, strict=True)
                  if e is None and not m.spare]
        if not placed:
            return errors
        spool = self.spool
        try:
            for m in placed:
                os.rename(m.data_tmp, spool._data_path(m.entry_id))
                os.rename(m.json_tmp, spool._json_path(QUEUED, m.entry_id))
            # Until both folders are fsynced nothing is acknowledged; a crash in between
            # leaves at most data without an entry, which recovery removes (owed to
            # nobody: never acknowledged).
            fsync_directory(os.path.join(spool.directory, "data"))
            fsync_directory(os.path.join(spool.directory, QUEUED))
        except OSError as e:
            # Renames and directory fsyncs do not normally fail; if they do, none of
            # these is acknowledged, so none of them may stay.
            for m in placed:
                for path in (spool._json_path(QUEUED, m.entry_id),
                             spool._data_path(m.entry_id), m.data_tmp, m.json_tmp):
                    unlink_quietly(path)
            failure = _as_error(e)
            return [failure if m in placed else err
                    for m, err in zip(messages, errors, strict=True)]
        return errors


def _as_failure(error: BaseException) -> Any:
    from twisted.python.failure import Failure

    return Failure(error, type(error), error.__traceback__)
