"""
L{Spool}: the spool folder and every operation on it (receiving, reading, listing,
transitions, removal), composed of its parts: the spare pairs (L{xrelay.spool.spares}),
the commit and its thread pool (L{xrelay.spool.commit}), recovery and setting aside
(L{xrelay.spool.recovery}).  The layout is described in L{xrelay.spool}.
"""

from __future__ import annotations

import collections
import itertools
import os
import shutil
from typing import Any, Callable, Iterator, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from xrelay.durable import fsync_directory, write_durably
from xrelay.envelope import Envelope
from xrelay.interfaces import ISpool, SpoolFull, UnknownEntry
from xrelay.lifecycle import (ACTIVE, CORRUPT, DELIVERED, QUEUED, STATES, check_entry_id,
                              is_entry_id, new_entry_id)
from xrelay.lifecycle import allow as _allow
from xrelay.spool import recovery
from xrelay.spool.commit import Committer
from xrelay.spool.entry import (CorruptEntry, InterruptedCommit, SpoolEntry,
                                    corrupt_entry, parse_record)
from xrelay.spool.incoming import Incoming, full, unlink_quietly
from xrelay.spool.record import encode_record, split_record
from xrelay.spool.spares import Spares

__all__ = ["Spool", "run_inline"]

log = Logger()

T = TypeVar("T")

#: Committed entries kept for the delivery engine to take without reading them back;
#: more than this are not taken by anyone (no engine running) and are dropped.
_HANDOVER = 1024

#: Bytes kept in the write buffer of an incoming message before they go to the kernel.
_BUFFER = 64 * 1024


def run_inline(f: Callable[..., T], *args: Any) -> "Deferred[T]":
    """
    Run blocking spool work on the calling thread: for tests on a L{task.Clock}, where
    there is no reactor to hand the result back from a thread.
    """
    return defer.maybeDeferred(f, *args)


@implementer(ISpool)
class Spool:
    """
    The spool folder and every operation on it.

    @param directory: the spool folder (normally C{<state_dir>/spool}); created if absent.
    @param reactor: for handing thread results back; the global reactor by default.
    @param run_blocking: runs a blocking callable and returns a Deferred of its result;
        by default the spool's own thread pool (shut down by L{close}).  Tests on a
        L{task.Clock} pass L{run_inline}.
    """

    def __init__(
        self,
        directory: str,
        reactor: Any = None,
        run_blocking: Callable[..., "Deferred[Any]"] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.directory = os.path.abspath(directory)
        self._reactor = reactor
        self._committer = Committer(self, reactor, run_blocking)
        threaded = run_blocking is None
        self._run: Callable[..., Deferred[Any]] = (
            self._committer.in_thread if threaded else run_blocking)  # type: ignore[assignment]
        self._counter = itertools.count()
        #: Ids in C{queued/} that are not entries yet (spare pairs, commits in flight):
        #: listings skip them.
        self._unlisted: set[str] = set()
        self._spares = Spares(self.directory, self._run, reactor, self._new_id,
                              self._unlisted)
        #: Only with the spool's own threads: with work run inline there is no reactor
        #: thread to spare, and tests see exactly the files they made.
        if not threaded:
            self._spares.broken = True
        self._shutdown_registered = False
        #: Messages that found no spare pair ready (metrics, benchmarks).
        self.created_in_place = 0
        #: Removals waiting for the one in progress (see L{remove}).
        self._removals: list[tuple[SpoolEntry, Deferred[None]]] = []
        self._removing = False
        #: Entries just committed, taken once by L{take_committed}.
        self._handover: collections.OrderedDict[str, SpoolEntry] = collections.OrderedDict()
        self.recovered = False
        #: Entries read by L{recover}, handed once to the first L{entries} call for
        #: their state (the engine's start), so that start-up reads each record once.
        self._recovered: dict[str, list[SpoolEntry]] = {}
        for sub in ("tmp", "data") + STATES + (CORRUPT,):
            os.makedirs(os.path.join(self.directory, sub), mode=0o700, exist_ok=True)

    def __repr__(self) -> str:
        return f"<Spool {self.directory}>"

    @property
    def commit_batches(self) -> int:
        """How many hand-backs of commits there were (metrics)."""
        return self._committer.batches

    @property
    def committed_messages(self) -> int:
        return self._committer.messages

    def close(self) -> None:
        """
        Remove the spares, wait for commits in flight and stop the spool's threads.
        Work asked for afterwards runs on the calling thread, without spares.
        """
        self._spares.broken = True
        self._spares.drop()
        self._committer.close()

    # -- paths -------------------------------------------------------------------

    def _data_path(self, entry_id: str) -> str:
        return os.path.join(self.directory, "data", entry_id + ".eml")

    def _json_path(self, state: str, entry_id: str) -> str:
        return os.path.join(self.directory, state, entry_id + ".json")

    def _new_id(self) -> str:
        """
        Sortable by arrival (UTC time first), unique across restarts and processes (pid
        and a counter; files are also created exclusively).
        """
        return new_entry_id(next(self._counter))

    # -- receiving ---------------------------------------------------------------

    def incoming(self, envelope: Envelope, bounce_of: str | None = None) -> Incoming:
        """
        Begin receiving a message: into a spare pair when one is ready, else into a
        file created now in C{tmp/}.

        @raise SpoolFull: when not even the empty file can be created.
        """
        self._register_shutdown()
        spare = self._spares.take()
        if spare is not None:
            entry_id, fd = spare
            f = os.fdopen(fd, "wb", buffering=_BUFFER)
            return Incoming(self, entry_id, envelope, bounce_of, f, spare=True)
        self.created_in_place += 1
        entry_id = self._new_id()
        path = os.path.join(self.directory, "tmp", entry_id + ".eml")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            if full(e):
                log.warn("spool full, refusing message from {sender}", sender=envelope.sender)
                self._out_of_space()
                raise SpoolFull(str(e.strerror)) from None
            raise
        f = os.fdopen(fd, "wb", buffering=_BUFFER)
        return Incoming(self, entry_id, envelope, bounce_of, f)

    def _register_shutdown(self) -> None:
        if self._shutdown_registered or self._spares.broken:
            return
        # A clean stop leaves no spares behind and no thread running: after the
        # services have stopped (the engine records its last results until then).
        self._shutdown_registered = True
        self._reactor.addSystemEventTrigger("after", "shutdown", self.close)

    def drop_spares(self) -> None:
        """Remove the spares now (they are made again as needed)."""
        self._spares.drop()

    def _out_of_space(self) -> None:
        """The disk is full: give back the spares (inodes, and nothing left over)."""
        self._spares.out_of_space()

    def _hand_over(self, entry: SpoolEntry) -> None:
        self._handover[entry.entry_id] = entry
        if len(self._handover) > _HANDOVER:
            self._handover.popitem(last=False)

    def committed(self, entry_id: str) -> "SpoolEntry | None":
        """
        The entry just committed under C{entry_id}, as it was written, while no
        transition has changed it: the delivery engine uses it instead of reading back
        the JSON it was just given.  C{None}: read it with L{get}.
        """
        return self._handover.get(entry_id)

    def take_committed(self, entry_id: str) -> "SpoolEntry | None":
        """L{committed}, for the last time (the first attempt takes it)."""
        return self._handover.pop(entry_id, None)

    # -- recovery ----------------------------------------------------------------

    def recover(self) -> None:
        """
        Discard what was never acknowledged (or was delivered already), put
        interrupted attempts back in the queue, and set aside what cannot be read
        (L{xrelay.spool.recovery}).  Runs once, at start, before anything is received
        or delivered; it blocks (start-up work, with nothing else to serve yet).  Then
        the first spare pairs are made, so that the first message does not wait.
        """
        if self.recovered:
            return
        self.recovered = True
        # Only what the engine reads at its start (once each); nothing else is served
        # from memory, so a listing never shows a stale record.
        self._recovered = recovery.recover(self)
        if not self._spares.broken:
            self._register_shutdown()
            self._spares.refill()

    def _set_aside(self, path: str, name: str, reason: str) -> str | None:
        return recovery.set_aside(self.directory, path, name, reason)

    def _quarantine(self, state: str, entry_id: str, reason: str,
                    with_data: bool = True) -> None:
        recovery.quarantine(self, state, entry_id, reason, with_data)

    def _read_record(self, state: str, entry_id: str,
                     data_sizes: dict[str, int] | None = None,
                     data_names: set[str] | None = None
                     ) -> tuple[SpoolEntry, dict[str, int]]:
        """
        Read and check one record; the entry and its check line's figures.

        @param data_sizes: the sizes of the data files, when already known (recovery).
        @param data_names: the names in C{data/}, listed after the state folder (a
            listing): only whether the data exists is checked then, not its size.
        @raise UnknownEntry: it is not there (moved on meanwhile).
        @raise InterruptedCommit: a commit that never finished (C{queued/} only).
        @raise CorruptEntry: it cannot be trusted.
        """
        # os.open/os.read rather than open(): a listing reads tens of thousands of
        # small records, and the buffered file object was the largest cost per entry.
        path = f"{self.directory}/{state}/{entry_id}.json"
        try:
            # No symlinks: a record is a file the spool wrote, never a link elsewhere.
            fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0)
                         | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            raise UnknownEntry(entry_id) from None
        except OSError as e:
            raise CorruptEntry(f"cannot be read ({e.strerror})") from None
        try:
            chunks = [os.read(fd, 1 << 16)]
            while len(chunks[-1]) == 1 << 16:  # a regular file gives all it has
                chunks.append(os.read(fd, 1 << 16))
        except IsADirectoryError:
            raise CorruptEntry("a folder, not a record") from None
        except OSError as e:
            raise CorruptEntry(f"cannot be read ({e.strerror})") from None
        finally:
            os.close(fd)
        raw = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            body, figures = split_record(raw)
        except InterruptedCommit as e:
            if state != QUEUED:
                raise CorruptEntry(str(e)) from None
            raise
        data_path = f"{self.directory}/data/{entry_id}.eml"
        size: int | None
        if data_sizes is not None:
            size = data_sizes.get(entry_id)
        elif data_names is not None and entry_id + ".eml" in data_names:
            size = 1  # exists; its size is checked at start and before each delivery
        else:
            try:
                size = os.stat(data_path).st_size
            except FileNotFoundError:
                size = None
        if (state == QUEUED and "data_size" in figures and data_names is None
                and size is not None and size != figures["data_size"]):
            # Shorter (or longer) than the commit wrote: a power cut before the
            # fdatasync returned.  No data file at all is another matter: its name was
            # durable before the commit, so it was lost since (corruption, set aside).
            raise InterruptedCommit(f"its message data is {size} bytes, the commit "
                                    f"wrote {figures['data_size']}")
        return parse_record(body, state, entry_id, data_path, size), figures

    def _read(self, state: str, entry_id: str,
              data_sizes: dict[str, int] | None = None,
              data_names: set[str] | None = None) -> SpoolEntry:
        return self._read_record(state, entry_id, data_sizes, data_names)[0]

    # -- reading -----------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        """Entry ids in one state (or set aside in C{corrupt/}), oldest first."""
        names = os.listdir(os.path.join(self.directory, state))
        if state == CORRUPT:
            return sorted({n.rsplit(".", 1)[0] for n in names if not n.endswith(".reason")}
                          | {n[:-7] for n in names if n.endswith(".reason")})
        ids = [n[:-5] for n in names if n.endswith(".json")]
        if state == QUEUED and self._unlisted:
            unlisted = self._unlisted
            ids = [i for i in ids if i not in unlisted]
        return sorted(ids)

    def entries(self, state: str | None = None) -> Iterator[SpoolEntry]:
        """
        Every entry (or those in one state), oldest first within a state; those set
        aside in C{corrupt/} come last.  Unreadable entries met on the way are set
        aside and skipped.
        """
        for s in (state,) if state else STATES + (CORRUPT,):
            if s == CORRUPT:
                for stem in self.ids(CORRUPT):
                    yield corrupt_entry(self.directory, stem)
                continue
            preloaded = self._recovered.pop(s, None)
            if preloaded is not None:
                yield from preloaded
                continue
            ids = self.ids(s)
            # Listed after the state folder: data is in data/ before its record is
            # complete in a state folder, and removed after it.
            data_names = set(os.listdir(os.path.join(self.directory, "data")))
            for entry_id in ids:
                try:
                    yield self._load(s, entry_id, data_names)
                except UnknownEntry:
                    continue  # moved on while we were listing

    def counts(self) -> dict[str, int]:
        """Entries per state; C{corrupt} appears only when something was set aside."""
        counts = {state: len(self.ids(state)) for state in STATES}
        corrupt = len(self.ids(CORRUPT))
        if corrupt:
            counts[CORRUPT] = corrupt
        return counts

    def get(self, entry_id: str) -> SpoolEntry:
        """
        A live entry (not one set aside).

        @raise UnknownEntry: when the entry is not (or no longer) in the spool, or was
            set aside as corrupt.
        """
        if not is_entry_id(entry_id) or entry_id in self._unlisted:
            raise UnknownEntry(entry_id)
        for state in STATES:
            try:
                return self._load(state, entry_id)
            except UnknownEntry:
                continue
        raise UnknownEntry(entry_id)

    def find(self, entry_id: str) -> SpoolEntry:
        """
        Like L{get}, but also what is known of an entry set aside in C{corrupt/}.

        @raise NotAnEntryId: for text that is not an entry id (nothing is touched).
        """
        check_entry_id(entry_id)
        try:
            return self.get(entry_id)
        except UnknownEntry:
            pass
        folder = os.path.join(self.directory, CORRUPT)
        if any(os.path.lexists(os.path.join(folder, entry_id + suffix))
               for suffix in (".json", ".eml", ".reason")):
            return corrupt_entry(self.directory, entry_id)
        raise UnknownEntry(entry_id)

    def _load(self, state: str, entry_id: str,
              data_names: set[str] | None = None) -> SpoolEntry:
        """
        @raise UnknownEntry: not in this state; also when it was unreadable (it is
            then set aside, with a log line) or a commit not finished (left to
            recovery, never set aside by a reader: it may be finishing now).
        """
        try:
            return self._read(state, entry_id, data_names=data_names)
        except InterruptedCommit:
            raise UnknownEntry(entry_id) from None
        except CorruptEntry as e:
            self._quarantine(state, entry_id, str(e))
            raise UnknownEntry(entry_id) from None

    def read_data(self, entry_id: str) -> bytes:
        """The whole message (for operators and small tests; delivery streams the file)."""
        if not is_entry_id(entry_id):
            raise UnknownEntry(entry_id)
        try:
            with open(self._data_path(entry_id), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise UnknownEntry(entry_id) from None

    # -- transitions -------------------------------------------------------------

    def move(self, entry: SpoolEntry, state: str, **changes: Any) -> "Deferred[SpoolEntry]":
        """
        Change an entry's record and/or state durably: the record is rewritten in its
        current folder (temporary file, fsync, rename), then renamed into the new one.
        Fires with the new entry.  With the spool's own threads, taking an entry for
        an attempt (to C{active/}, the record unchanged) is one rename, not durable,
        done on the calling thread: the returned Deferred has already fired.
        """
        if state not in STATES:
            raise ValueError(state)
        _allow(entry.state, state, entry.entry_id)
        self._recovered.clear()
        self._handover.pop(entry.entry_id, None)
        new = attrs.evolve(entry, state=state, **changes)
        if state == ACTIVE and not changes and self._run == self._committer.in_thread:
            # A bare rename, not durable (see L{_move}), done here: through the pool,
            # the upstream connection it is for would wait idle for a hand-off to a
            # worker (behind the fdatasyncs of every message being accepted) and
            # another back to the reactor, 1-2 ms per message per connection (issue 28).
            # A runner given by a test still gets it, to hold or order it.
            return defer.maybeDeferred(self._move, entry, new)
        return self._run(self._move, entry, new)

    def _move(self, old: SpoolEntry, new: SpoolEntry) -> SpoolEntry:
        source = self._json_path(old.state, old.entry_id)
        if not os.path.exists(source):
            raise UnknownEntry(old.entry_id)
        changed = attrs.evolve(new, state=old.state) != old
        if changed:
            tmp = source + ".tmp"
            try:
                write_durably(tmp, encode_record(new.to_json()))
            except OSError as e:
                # A full disk: the old record is untouched, so nothing happened.
                unlink_quietly(tmp)
                if full(e):
                    raise SpoolFull(str(e.strerror)) from None
                raise
            os.rename(tmp, source)
        if new.state != old.state:
            os.rename(source, self._json_path(new.state, new.entry_id))
            if new.state == ACTIVE and not changed:
                # Taking an entry for an attempt need not be durable: recovery puts
                # active entries back in the queue, so after a crash it does not matter
                # whether this rename survived (the next transition's fsyncs make it
                # durable anyway).  The rename itself is what counts: it tells operators
                # the entry is in flight.  Two fsyncs less per delivery.
                return new
            fsync_directory(os.path.join(self.directory, new.state))
        fsync_directory(os.path.join(self.directory, old.state))
        return new

    def remove(self, entry: SpoolEntry) -> "Deferred[None]":
        """
        Delivered: the entry leaves the spool (record first, then data).  With the
        spool's own threads, removals asked for while one is running go together:
        their records unlinked, each folder fsynced once for all of them, then their
        data (one folder fsync for many settles).
        """
        _allow(entry.state, DELIVERED, entry.entry_id)
        self._recovered.clear()
        self._handover.pop(entry.entry_id, None)
        if entry.state == CORRUPT or self._run != self._committer.in_thread:
            return self._run(self._remove, entry)
        d: Deferred[None] = Deferred()
        self._removals.append((entry, d))
        self._next_removals()
        return d

    def _next_removals(self) -> None:
        if self._removing or not self._removals:
            return
        batch, self._removals = self._removals, []
        self._removing = True
        self._run(self._remove_together, [e for e, _ in batch]).addBoth(
            self._removed, batch)

    def _removed(self, result: Any, batch: list[tuple[SpoolEntry, "Deferred[None]"]]
                 ) -> None:
        self._removing = False
        self._next_removals()
        for _, d in batch:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(None)

    def _remove_together(self, entries: list[SpoolEntry]) -> None:
        folders = set()
        for entry in entries:
            unlink_quietly(self._json_path(entry.state, entry.entry_id))
            folders.add(entry.state)
        for state in sorted(folders):
            fsync_directory(os.path.join(self.directory, state))
        for entry in entries:
            unlink_quietly(self._data_path(entry.entry_id))

    def _remove(self, entry: SpoolEntry) -> None:
        if entry.state == CORRUPT:
            # The operator deletes what was set aside: every file of that name.
            folder = os.path.join(self.directory, CORRUPT)
            for suffix in (".json", ".eml", ".reason"):
                path = os.path.join(folder, entry.entry_id + suffix)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    unlink_quietly(path)
            fsync_directory(folder)
            return
        # The record's removal is durable before the data goes: data without a record
        # is then always owed to nobody (recovery removes it quietly), never a
        # delivered message that a crash would resurrect or call corrupt.
        unlink_quietly(self._json_path(entry.state, entry.entry_id))
        fsync_directory(os.path.join(self.directory, entry.state))
        unlink_quietly(self._data_path(entry.entry_id))

    def scratch_path(self, entry_id: str, suffix: str) -> str:
        """A temporary file for derived data (a rewritten copy); recovery removes it."""
        return os.path.join(self.directory, "tmp", f"{entry_id}.{suffix}")
