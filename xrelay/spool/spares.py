"""
Spare pairs: empty C{data/<id>.eml} and C{queued/<id>.json} files made ahead of time by a
thread, their names made durable (both folders fsynced) before one is handed out.  A
commit into a spare pair then changes no name: it writes the record into its place and
fdatasyncs the two files in one round (C{bench/commit_rounds.py}: name changes are what
the file system's journal makes expensive), and the reactor thread never waits for the
journal to create a file.

A few (L{STANDBY}) are made at start and kept, so that a lone printer never waits for
one; while messages arrive in quick succession there are up to L{BUSY}.  Their ids say
when they were made, so unused ones older than L{RENEW} are replaced.  Until
committed, a spare pair is owed to nobody: recovery removes what a crash leaves of
one (an empty record, or data without a record), quietly when it is empty.  After running
out of space there are none until a commit succeeds again: the spool then creates each
message's file in place, which reports a full disk before the 354.
"""

from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from xrelay.durable import fsync_directory
from xrelay.lifecycle import QUEUED
from xrelay.spool.incoming import full, unlink_quietly

__all__ = ["BUSY", "RENEW", "STANDBY", "Spares"]

log = Logger()

#: Spare pairs kept ready at all times (made at start) ...
STANDBY = 8
#: ... and while messages arrive less than L{BUSY_GAP} seconds apart.
BUSY = 128
BUSY_GAP = 0.5
#: Unused spares older than this are replaced (an id says when its message arrived).
RENEW = 60.0


class Spares:
    """
    The spare pairs of one spool.

    @param run: runs a blocking callable in a thread, returning a Deferred.
    @param new_id: a fresh entry id.
    @param unlisted: the spool's set of ids listings skip; spares are added to it.
    """

    def __init__(self, directory: str, run: Callable[..., "Deferred[Any]"], reactor: Any,
                 new_id: Callable[[], str], unlisted: set[str]) -> None:
        self.directory = directory
        self._run = run
        self._reactor = reactor
        self._new_id = new_id
        self._unlisted = unlisted
        #: (id, when made, an open write descriptor of its data file): the reactor
        #: thread makes no system call to open one (0.3 ms each under load).
        self._ready: collections.deque[tuple[str, float, int]] = collections.deque()
        self._stale: list[str] = []
        self._making = False
        self._last_take = float("-inf")
        self._renewal: Any = None
        #: The most asked for since the last batch was started.
        self._target = STANDBY
        #: Set when making them failed for lack of space, or for good.
        self.full = False
        self.broken = False

    def __len__(self) -> int:
        return len(self._ready)

    def take(self) -> tuple[str, int] | None:
        """
        The id of a ready spare pair and its data file open for writing, or C{None}
        (then the caller creates in place).
        """
        now = time.monotonic()
        busy, self._last_take = now - self._last_take < BUSY_GAP, now
        taken = None
        if self._ready and not self.full:
            entry_id, _, fd = self._ready.popleft()
            taken = entry_id, fd
        self.refill(BUSY if busy else STANDBY)
        return taken

    def refill(self, target: int = STANDBY) -> None:
        """Make spares in a thread up to C{target} (one batch at a time)."""
        self._target = max(self._target, target)
        if self._making or self.broken:
            return  # asked again when the batch being made is there
        target, self._target = self._target, STANDBY
        count = 0 if self.full or len(self._ready) > target // 2 else target - len(
            self._ready)
        if not count and not self._stale:
            return
        self._making = True
        stale, self._stale = self._stale, []
        # Named here, before the files exist: listings skip them from the first instant.
        ids = [self._new_id() for _ in range(count)]
        self._unlisted.update(ids)
        self._run(self._create, ids, stale).addBoth(self._made, ids)

    def _paths(self, entry_id: str) -> tuple[str, str]:
        return (os.path.join(self.directory, "data", entry_id + ".eml"),
                os.path.join(self.directory, QUEUED, entry_id + ".json"))

    def _create(self, ids: list[str], stale: list[str]
                ) -> tuple[list[tuple[str, float, int]], bool]:
        """Thread side: remove stale pairs, make those of C{ids}, fsync both folders."""
        for entry_id in stale:
            record, data = self._paths(entry_id)[::-1]
            unlink_quietly(record)
            unlink_quietly(data)
        made: list[tuple[str, float, int]] = []
        no_room = False
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
        for entry_id in ids:
            data, record = self._paths(entry_id)
            try:
                fd = os.open(data, flags, 0o600)
                try:
                    os.close(os.open(record, flags, 0o600))
                except OSError:
                    os.close(fd)
                    unlink_quietly(data)
                    raise
            except OSError as e:
                if not full(e):
                    raise
                no_room = True
                break
            made.append((entry_id, time.monotonic(), fd))
        if made:
            fsync_directory(os.path.join(self.directory, "data"))
            fsync_directory(os.path.join(self.directory, QUEUED))
        return made, no_room

    def _made(self, result: Any, ids: list[str]) -> None:
        self._making = False
        made_ids = {entry_id for entry_id, _, _ in result[0]} if isinstance(
            result, tuple) else set()
        self._unlisted.difference_update(set(ids) - made_ids)
        if not isinstance(result, tuple):
            log.failure("cannot make spare spool files; creating them as needed",
                        failure=result)
            self.broken = True  # stop trying; the spool works without
            return
        made, no_room = result
        self._ready.extend(made)
        if no_room or self.full:
            self.out_of_space()
        elif made:
            self._schedule_renewal()
            self.refill(self._target)

    def _schedule_renewal(self) -> None:
        if self._renewal is None or not self._renewal.active():
            self._renewal = self._reactor.callLater(RENEW, self._renew)

    def _renew(self) -> None:
        """Replace the spares made more than L{RENEW} ago (their ids would say so)."""
        self._renewal = None
        if not os.path.isdir(os.path.join(self.directory, QUEUED)):
            self.broken = True  # the spool folder is gone: nothing to make spares for
            self.drop()
            return
        cutoff = time.monotonic() - RENEW
        while self._ready and self._ready[0][1] <= cutoff:
            entry_id, _, fd = self._ready.popleft()
            os.close(fd)
            self._unlisted.discard(entry_id)
            self._stale.append(entry_id)
        self.refill(STANDBY)
        if self._ready:
            self._schedule_renewal()

    def out_of_space(self) -> None:
        """The disk is full: give back the spares (inodes, and nothing left over)."""
        self.full = True
        self.drop()

    def room_again(self) -> None:
        if self.full:
            self.full = False
            self.refill(STANDBY)

    def drop(self) -> None:
        """Remove the spares now (at shutdown, or out of space)."""
        for _, _, fd in self._ready:
            os.close(fd)
        ids = [entry_id for entry_id, _, _ in self._ready] + self._stale
        self._ready.clear()
        self._stale = []
        for entry_id in ids:
            self._unlisted.discard(entry_id)
            data, record = self._paths(entry_id)
            unlink_quietly(record)
            unlink_quietly(data)
        if self._renewal is not None and self._renewal.active():
            self._renewal.cancel()
        self._renewal = None
