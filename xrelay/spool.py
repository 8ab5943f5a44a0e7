"""
The durable spool: accepted messages on disk until they are delivered or bounced.

Layout under the spool folder, readable with ordinary tools::

    tmp/<id>.eml, tmp/<id>.json      being received or committed; never an entry
    data/<id>.eml                    message bytes exactly as received (CRLF wire format);
                                     while busy, also a few empty ones made ahead for
                                     messages about to arrive (no entry yet)
    queued/<id>.json                 envelope + delivery record, ready to be sent
    active/<id>.json                 an attempt is in flight
    deferred/<id>.json               waiting for its next attempt (see next_attempt)
    failed/<id>.json                 permanently failed and bounced; kept for inspection
    corrupt/<name>                   set aside: records that cannot be read, their data,
                                     data files without a record (never deleted here)

An entry exists exactly when its C{.json} is in one of the state folders.  A commit is
acknowledged only once the C{.eml} is fsynced under its name in C{data/}, that name is
durable (C{data/} fsynced in the same round as C{queued/}, or, for a spare, before it
was handed out) and the C{.json} is fsynced, renamed into C{queued/} and that folder
fsynced.  So a crash at any instant leaves every acknowledged entry complete; what was
never acknowledged (data without an entry, or an entry whose data is missing) is what
L{Spool.recover} removes.  A state transition is one C{rename} of the
C{.json}; a changed record is first rewritten in place (temporary file, fsync, rename).
Which transitions exist is one table, L{LIFECYCLE}, and L{Spool.move} refuses any other.

A record that cannot be read (not JSON, not an object, missing or mistyped keys, an id
that differs from its file name, a folder named C{*.json}, no or empty message data) is
moved to C{corrupt/} with an error log line naming the file and the reason, by recovery
and by every reader (the engine, C{xrelay queue}, the control socket, the admin page):
one bad file never stops the relay or a listing.  Folders the spool does not know (an
operator's C{hold/}) are left alone, with a warning.

Commits of messages arriving together are fsynced as one batch in a thread (group
commit): acceptance is not capped at one fsync per message, and the reactor thread never
waits for the disk to sync.

This module must never acknowledge (fire a commit) before the bytes are durable, never
keep a message's bytes in memory, and never leave a half-written message behind when
the disk is full.
"""

from __future__ import annotations

import collections
import concurrent.futures
import errno
import itertools
import json
import os
import shutil
import time
from typing import Any, Callable, Iterator, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.durable import fsync_directory as _fsync_directory
from xrelay.durable import write_durably as _write_durably
from xrelay.envelope import Envelope
from xrelay.interfaces import (IIncomingMessage, ISpool, NotAnEntryId,
                               SpoolFull, TransitionRefused, UnknownEntry)
from xrelay.lifecycle import (ACTIVE, CORRUPT, DEFERRED, DELIVERED, ENTRY_ID, FAILED,
                              LIFECYCLE, QUEUED, RECEIVED, STATES, check_entry_id,
                              is_entry_id, new_entry_id)
from xrelay.lifecycle import allow as _allow
from xrelay.records import SpoolEntry

__all__ = [
    "ACTIVE",
    "CORRUPT",
    "DEFERRED",
    "DELIVERED",
    "ENTRY_ID",
    "FAILED",
    "LIFECYCLE",
    "NotAnEntryId",
    "QUEUED",
    "RECEIVED",
    "Spool",
    "SpoolEntry",
    "SpoolFull",
    "STATES",
    "TransitionRefused",
    "UnknownEntry",
    "check_entry_id",
    "is_entry_id",
    "run_inline",
]

log = Logger()

T = TypeVar("T")

#: The states, the one table of transitions and the id syntax are every spool's
#: (L{xrelay.lifecycle}); the state folders are named after the states.

#: errno values that mean "no room": the client is told to try again later.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}

#: Empty message files kept ready in data/ while busy (see Spool._make_spares).
_SPARES = 64
#: Spares are made only when messages arrive less than this many seconds apart ...
_BUSY = 0.5
#: ... and not used when older than this (their ids carry the time they were made).
_SPARE_AGE = 2.0

#: Committed entries kept for the delivery engine to take without reading them back;
#: more than this are not taken by anyone (no engine running) and are dropped.
_HANDOVER = 1024

#: Bytes kept in the write buffer of an incoming message before they go to the kernel.
_BUFFER = 64 * 1024


class CorruptEntry(Exception):
    """A record that cannot be read; C{str()} is the reason, for the log line."""


def run_inline(f: Callable[..., T], *args: Any) -> "Deferred[T]":
    """
    Run blocking spool work on the calling thread: for tests on a L{task.Clock}, where
    there is no reactor to hand the result back from a thread.
    """
    return defer.maybeDeferred(f, *args)


#: One decoder for every record (json.loads on bytes first guesses their encoding).
_decode = json.JSONDecoder().decode

#: Keys every record has, and their JSON types.
_REQUIRED = {"id": str, "sender": str, "recipients": list, "size": int}


def _parse_record(raw: bytes, state: str, entry_id: str, data_path: str,
                  data_size: int | None) -> SpoolEntry:
    """
    The entry a record's bytes describe.

    @param data_size: the size of its message data file, C{None} when there is none.
    @raise CorruptEntry: with the reason, when the record cannot be trusted.
    """
    try:
        record = _decode(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptEntry("not JSON" if raw.strip() else "empty record") from e
    if not isinstance(record, dict):
        raise CorruptEntry(f"the record is a JSON {type(record).__name__}, not an object")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise CorruptEntry(f"the record has no {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise CorruptEntry(f"{key!r} in the record is not a {kind.__name__}")
    if record["id"] != entry_id:
        raise CorruptEntry(f"the record's id {str(record['id'])[:80]!r} differs from its "
                           "file name")
    if not all(isinstance(r, str) for r in record["recipients"]):
        raise CorruptEntry("'recipients' in the record are not all strings")
    if data_size is None:
        raise CorruptEntry("its message data is missing")
    if data_size == 0:
        raise CorruptEntry("its message data is empty (zero bytes)")
    try:
        return SpoolEntry.from_json(record, state, data_path)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptEntry(f"the record does not parse ({type(e).__name__}: "
                           f"{str(e)[:80]})") from None


def _corrupt_entry(directory: str, stem: str) -> SpoolEntry:
    """What is known of an entry set aside in C{corrupt/}: whatever its record gives."""
    folder = os.path.join(directory, CORRUPT)
    record: Any = None
    try:
        with open(os.path.join(folder, stem + ".json"), "rb") as f:
            record = json.loads(f.read())
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    if not isinstance(record, dict):
        record = {}
    try:
        problem = open(os.path.join(folder, stem + ".reason"), encoding="utf-8",
                       errors="replace").read().strip()
    except OSError:
        problem = "set aside (no reason recorded)"
    data_path = os.path.join(folder, stem + ".eml")
    try:
        size = os.stat(data_path).st_size
    except OSError:
        size = 0

    def text(key: str) -> str:
        value = record.get(key)
        return value if isinstance(value, str) else ""

    recipients = record.get("recipients")
    number = record.get("received_at")
    return SpoolEntry(
        entry_id=stem, state=CORRUPT, sender=text("sender"),
        recipients=tuple(r for r in recipients if isinstance(r, str))
        if isinstance(recipients, list) else (),
        data_path=data_path, size=size, account=text("account"),
        client_address=text("client_address"),
        received_at=float(number) if isinstance(number, (int, float)) else 0.0,
        problem=problem)


_workers: concurrent.futures.ThreadPoolExecutor | None = None


def _fsync_workers() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that fsync one batch's files concurrently (created on first use)."""
    global _workers
    if _workers is None:
        _workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix="xrelay-spool-fsync")
    return _workers


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _full(e: OSError) -> bool:
    return e.errno in _NO_SPACE


@implementer(IIncomingMessage)
@attrs.define(eq=False)
class _Incoming:
    """
    A message being received into C{tmp/}: buffered appends, then a group commit.
    """

    spool: "Spool"
    entry_id: str
    envelope: Envelope
    bounce_of: str | None
    _file: Any = attrs.field(repr=False)
    size: int = 0
    finished: bool = False
    #: A spare's C{data/<id>.eml}, made ahead (see L{Spool._make_spares}); else the
    #: message is written to C{tmp/<id>.eml} and renamed into C{data/} at commit.
    spare_path: str = ""
    #: The entry as committed, handed to the delivery engine without a re-read.
    entry: "SpoolEntry | None" = attrs.field(default=None, repr=False)

    @property
    def data_tmp(self) -> str:
        if self.spare_path:
            return self.spare_path
        return os.path.join(self.spool.directory, "tmp", self.entry_id + ".eml")

    @property
    def json_tmp(self) -> str:
        return os.path.join(self.spool.directory, "tmp", self.entry_id + ".json")

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("message already committed or aborted")
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            if _full(e):
                self.spool._out_of_space()
                raise SpoolFull(str(e.strerror)) from None
            raise
        self.size += len(data)

    def commit(self) -> "Deferred[str]":
        if self.finished:
            return defer.fail(RuntimeError("message already committed or aborted"))
        self.finished = True
        return self.spool._enqueue_commit(self)

    def abort(self) -> None:
        self.finished = True
        self.discard()

    def discard(self) -> None:
        try:
            self._file.close()
        except OSError:
            pass  # a failed flush on close: the file is removed anyway
        _unlink_quietly(self.data_tmp)
        _unlink_quietly(self.json_tmp)

    def record(self) -> dict[str, Any]:
        self.entry = SpoolEntry.received(self.entry_id, self.envelope, self.size,
                                         self.spool._data_path(self.entry_id),
                                         self.bounce_of)
        return self.entry.to_json()

    def prepare(self) -> None:
        """
        Thread side, first half of a group commit: flush and fsync the data, write and
        fsync the envelope.  Both still live in C{tmp/}.
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        _write_durably(self.json_tmp, json.dumps(self.record(), indent=1).encode())


@implementer(ISpool)
class Spool:
    """
    The spool folder and every operation on it.

    @param directory: the spool folder (normally C{<state_dir>/spool}); created if absent.
    @param reactor: for handing thread results back; the global reactor by default.
    @param run_blocking: runs a blocking callable and returns a Deferred of its result;
        by default the reactor's thread pool.  Tests on a L{task.Clock} pass
        L{run_inline}.
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
        if run_blocking is None:
            run_blocking = self._in_thread
        self._run = run_blocking
        self._counter = itertools.count()
        self._pending: list[tuple[_Incoming, Deferred[str]]] = []
        self._committing = 0
        #: Empty files made in C{tmp/} ahead of time by a thread, so that the reactor
        #: thread never waits for the journal to create one (see L{incoming}).
        self._spares: collections.deque[tuple[str, str, float]] = collections.deque()
        self._stale_spares: list[str] = []
        self._last_incoming = float("-inf")
        self._cleanup_registered = False
        #: Only with a thread pool: with work run inline there is no reactor thread
        #: to spare, and tests see exactly the files they made.
        self._spares_wanted = self._run == self._in_thread
        self._making_spares = False
        #: The last attempt to make spares ran out of space: create in place instead,
        #: which reports the full disk before the 354.
        self._spares_full = False
        #: Entries just committed, taken once by L{take_committed}.
        self._handover: collections.OrderedDict[str, SpoolEntry] = collections.OrderedDict()
        self.recovered = False
        #: How many group commits ran, and how many messages they carried (metrics).
        self.commit_batches = 0
        self.committed_messages = 0
        #: Entries read by L{recover}, handed once to the first L{entries} call for
        #: their state (the engine's start), so that start-up reads each record once.
        self._recovered: dict[str, list[SpoolEntry]] = {}
        for sub in ("tmp", "data") + STATES + (CORRUPT,):
            os.makedirs(os.path.join(self.directory, sub), mode=0o700, exist_ok=True)

    def _in_thread(self, f: Callable[..., T], *args: Any) -> "Deferred[T]":
        return deferToThreadPool(self._reactor, self._reactor.getThreadPool(), f, *args)

    def __repr__(self) -> str:
        return f"<Spool {self.directory}>"

    # -- paths -------------------------------------------------------------------

    def _data_path(self, entry_id: str) -> str:
        return os.path.join(self.directory, "data", entry_id + ".eml")

    def _json_path(self, state: str, entry_id: str) -> str:
        return os.path.join(self.directory, state, entry_id + ".json")

    def _new_id(self) -> str:
        """
        Sortable by arrival (UTC time first), unique across restarts and processes (pid
        and a counter; the tmp file is also created exclusively).
        """
        return new_entry_id(next(self._counter))

    # -- receiving ---------------------------------------------------------------

    def incoming(self, envelope: Envelope, bounce_of: str | None = None) -> _Incoming:
        """
        Begin receiving a message.

        @raise SpoolFull: when not even the empty file can be created.
        """
        now = time.monotonic()
        busy, self._last_incoming = now - self._last_incoming < _BUSY, now
        if self._spares and now - self._spares[0][2] > _SPARE_AGE:
            self._drop_spares()  # ids stamped too long ago for the time of arrival
        while self._spares and not self._spares_full:
            entry_id, path, _ = self._spares.popleft()
            self._make_spares()
            try:
                # Opening an existing empty file does not wait for the journal.
                fd = os.open(path, os.O_WRONLY)
            except OSError:
                continue  # removed under us (recovery of another process): make one
            f = os.fdopen(fd, "wb", buffering=_BUFFER)
            return _Incoming(self, entry_id, envelope, bounce_of, f, spare_path=path)
        entry_id = self._new_id()
        path = os.path.join(self.directory, "tmp", entry_id + ".eml")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as e:
            if _full(e):
                log.warn("spool full, refusing message from {sender}", sender=envelope.sender)
                self._out_of_space()
                raise SpoolFull(str(e.strerror)) from None
            raise
        if busy:
            self._make_spares()
        f = os.fdopen(fd, "wb", buffering=_BUFFER)
        return _Incoming(self, entry_id, envelope, bounce_of, f)

    def _make_spares(self) -> None:
        """
        While messages arrive in quick succession, keep a few empty message files
        ready: C{data/<id>.eml} under the id of a message still to come, made by a
        thread, with C{data/} fsynced, before L{incoming} hands one out.  The reactor
        thread then never waits for the journal to create a file (0.4-1 ms under load,
        14 % of it at 100 clients), and a commit needs no rename of the data and no
        fsync of C{data/}: only the envelope gets a new name (bench/commit_rounds.py:
        name changes are what the journal makes expensive).  Until committed, a spare
        is data without an entry, which recovery removes, as it removes any.  Ids of
        spares older than L{_SPARE_AGE} are not used (an id says when its message
        arrived).  After running out of space there are none until a commit succeeds
        again: L{incoming} creates in place, so a full disk is refused before the 354
        as it always was.
        """
        if (not self._spares_wanted or self._making_spares or self._spares_full
                or len(self._spares) >= _SPARES // 2):
            return
        if not self._cleanup_registered:
            # A clean stop leaves no spares behind for recovery to report at the start.
            self._cleanup_registered = True
            self._reactor.addSystemEventTrigger("before", "shutdown", self.drop_spares)
        self._making_spares = True
        self._run(self._create_spares, _SPARES - len(self._spares),
                  self._stale_spares).addBoth(self._spares_made)
        self._stale_spares = []

    def _create_spares(self, count: int, stale: list[str]
                       ) -> tuple[list[tuple[str, str, float]], bool]:
        for path in stale:
            _unlink_quietly(path)
        made: list[tuple[str, str, float]] = []
        full = False
        for _ in range(count):
            entry_id = self._new_id()
            path = self._data_path(entry_id)
            try:
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            except OSError as e:
                if not _full(e):
                    raise
                full = True
                break
            made.append((entry_id, path, time.monotonic()))
        if made:
            _fsync_directory(os.path.join(self.directory, "data"))
        return made, full

    def _spares_made(self, result: Any) -> None:
        self._making_spares = False
        if not isinstance(result, tuple):
            log.failure("cannot make spare spool files; creating them as needed",
                        failure=result)
            self._spares_wanted = False  # stop trying; incoming() works without
            return
        made, full = result
        self._spares.extend(made)
        if full or self._spares_full:
            self._out_of_space()

    def drop_spares(self) -> None:
        """Remove the spares now (at shutdown; they are made again when busy)."""
        spares, self._spares = list(self._spares), collections.deque()
        for path in [p for _, p, _ in spares] + self._stale_spares:
            _unlink_quietly(path)
        self._stale_spares = []

    def _drop_spares(self) -> None:
        """Forget the spares; a thread removes them with the next ones it makes."""
        self._stale_spares += [path for _, path, _ in self._spares]
        self._spares.clear()

    def _out_of_space(self) -> None:
        """The disk is full: give back the spares (inodes, and nothing left over)."""
        self._spares_full = True
        self.drop_spares()

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

    def _enqueue_commit(self, message: _Incoming) -> "Deferred[str]":
        self._recovered.clear()  # a new entry: recovery's listing is no longer whole
        d: Deferred[str] = Deferred()
        self._pending.append((message, d))
        if not self._committing:
            self._next_batch()
        return d

    def _next_batch(self) -> None:
        # One batch at a time: letting a second one start while one syncs was slower
        # in A/B runs (bench/README.md), since both then wait on the same journal.
        if not self._pending or self._committing:
            return
        batch, self._pending = self._pending, []
        self._committing = 1
        self._run(self._commit_batch, [m for m, _ in batch]).addBoth(
            self._batch_done, batch
        )

    def _commit_batch(self, messages: list[_Incoming]) -> list[BaseException | None]:
        """
        Thread side of a group commit, in two rounds of fsyncs: every message's files
        (concurrently), then, after renaming the data into C{data/} and the envelopes
        into C{queued/}, both folders (concurrently).  Returns one error (or None) per
        message; failed ones are removed.
        """
        def prepare(m: _Incoming) -> BaseException | None:
            try:
                m.prepare()
                return None
            except Exception as e:
                m.discard()
                return SpoolFull(str(e.strerror)) if isinstance(e, OSError) and _full(
                    e) else e

        # The files' fsyncs are issued together: the filesystem's journal commits
        # concurrent fsyncs as one transaction, which is where the batching pays.
        if len(messages) == 1:
            errors = [prepare(messages[0])]
        else:
            errors = list(_fsync_workers().map(prepare, messages))
        good = [m for m, e in zip(messages, errors, strict=True) if e is None]
        if not good:
            return errors
        try:
            renamed = False
            for m in good:
                if not m.spare_path:  # a spare is in data/ already, durably named
                    os.rename(m.data_tmp, self._data_path(m.entry_id))
                    renamed = True
                os.rename(m.json_tmp, self._json_path(QUEUED, m.entry_id))
            # Both folders in one round: their fsyncs are issued together, so the
            # journal commits them as one transaction.  Until both return nothing is
            # acknowledged; a crash in between leaves at most an entry without data
            # or data without an entry, which recovery removes (never acknowledged).
            if not renamed:
                _fsync_directory(os.path.join(self.directory, QUEUED))
            else:
                data_synced = _fsync_workers().submit(
                    _fsync_directory, os.path.join(self.directory, "data"))
                _fsync_directory(os.path.join(self.directory, QUEUED))
                data_synced.result()
        except OSError as e:
            # Renames and directory fsyncs do not normally fail; if they do, none of
            # this batch is acknowledged, so none of it may stay.
            for m in good:
                for path in (self._json_path(QUEUED, m.entry_id),
                             self._data_path(m.entry_id), m.data_tmp, m.json_tmp):
                    _unlink_quietly(path)
            failure = SpoolFull(str(e.strerror)) if _full(e) else e
            return [failure if err is None else err for err in errors]
        return errors

    def _batch_done(self, result: Any, batch: list[tuple[_Incoming, Deferred[str]]]) -> None:
        self.commit_batches += 1
        self._committing = 0
        if not isinstance(result, list):
            # The thread work itself blew up: nothing of the batch is trustworthy.
            for m, _ in batch:
                m.discard()
            result = [result.value] * len(batch)
        if any(error is None for error in result):
            self._spares_full = False  # there is room again
        elif any(isinstance(error, SpoolFull) for error in result):
            self._out_of_space()
        try:
            self._next_batch()
        finally:
            for (m, d), error in zip(batch, result, strict=True):
                if error is None:
                    self.committed_messages += 1
                    if m.entry is not None:
                        self._handover[m.entry_id] = m.entry
                        if len(self._handover) > _HANDOVER:
                            self._handover.popitem(last=False)
                    d.callback(m.entry_id)
                else:
                    if isinstance(error, SpoolFull):
                        log.warn("spool full, message from {sender} not stored",
                                 sender=m.envelope.sender)
                    else:
                        log.failure("commit of {entry_id} failed",
                                    failure=_as_failure(error), entry_id=m.entry_id)
                    d.errback(error)

    # -- recovery ----------------------------------------------------------------

    def recover(self) -> None:
        """
        Discard what was never acknowledged, put interrupted attempts back in the queue,
        and set aside what cannot be read.  Runs once, at start, before anything is
        received or delivered; it blocks (it is start-up work, with nothing else to
        serve yet).  One pass over each folder: linear in the number of entries.
        """
        if self.recovered:
            return
        self.recovered = True
        tmp = os.path.join(self.directory, "tmp")
        for name in os.listdir(tmp):
            path = os.path.join(tmp, name)
            if os.path.isdir(path) and not os.path.islink(path):
                self._set_aside(path, name, "a folder in tmp/")
                continue
            _unlink_quietly(path)
            log.info("discarded incomplete spool file {name}", name=name)
        self._warn_about_strangers()
        moved = 0
        for name in os.listdir(os.path.join(self.directory, ACTIVE)):
            if name.endswith(".json"):
                _allow(ACTIVE, QUEUED, name[:-5])
                os.rename(os.path.join(self.directory, ACTIVE, name),
                          os.path.join(self.directory, QUEUED, name))
                moved += 1
        data_sizes = self._data_sizes()
        found: dict[str, SpoolEntry] = {}
        for state in STATES:
            folder = os.path.join(self.directory, state)
            for item in os.scandir(folder):
                name = item.name
                if name.endswith(".json.tmp"):
                    _unlink_quietly(item.path)
                    continue
                if not name.endswith(".json"):
                    log.warn("spool: {path} is not a spool record; left alone",
                             path=item.path)
                    continue
                entry_id = name[:-5]
                if entry_id in found:
                    # A crash between the two renames of a transition: keep one.
                    self._quarantine(state, entry_id, f"a second record of {entry_id} "
                                     f"(the one in {found[entry_id].state}/ is kept)",
                                     with_data=False)
                    continue
                try:
                    entry = self._read(state, entry_id, data_sizes)
                except CorruptEntry as e:
                    self._quarantine(state, entry_id, str(e))
                    continue
                found[entry_id] = entry
        for stem, size in data_sizes.items():
            if stem not in found and size == 0:
                # A spare file made ahead for a message that never came (the relay
                # stopped while busy): it holds nothing, so nothing is set aside.
                _unlink_quietly(self._data_path(stem))
                continue
            if stem not in found:
                target = self._set_aside(self._data_path(stem), stem + ".eml",
                                         "message data without a record")
                if target is not None:  # None: set aside with its record already
                    self._write_reason(
                        os.path.basename(target)[:-4] if target.endswith(".eml")
                        else stem, "message data without a record (was in data/)")
        self._withdraw_unreleased_bounces(found)
        for sub in ("data", QUEUED, CORRUPT):
            _fsync_directory(os.path.join(self.directory, sub))
        # Only what the engine reads at its start (once each); nothing else is served
        # from memory, so a listing never shows a stale record.
        by_state: dict[str, list[SpoolEntry]] = {QUEUED: [], DEFERRED: []}
        for entry_id in sorted(found):
            entry = found[entry_id]
            if entry.state in by_state:
                by_state[entry.state].append(entry)
        self._recovered = by_state
        if moved:
            log.info("{count} interrupted deliveries back in the queue", count=moved)

    def _data_sizes(self) -> dict[str, int]:
        """Size of every message data file, by entry id (other names: left alone)."""
        sizes = {}
        for item in os.scandir(os.path.join(self.directory, "data")):
            if item.name.endswith(".eml") and item.is_file(follow_symlinks=False):
                sizes[item.name[:-4]] = item.stat(follow_symlinks=False).st_size
            else:
                log.warn("spool: {path} is not message data; left alone", path=item.path)
        return sizes

    def _warn_about_strangers(self) -> None:
        known = {"tmp", "data", CORRUPT} | set(STATES)
        for item in os.scandir(self.directory):
            if item.name not in known:
                log.warn("spool: {path} is not part of the spool (the folders are tmp, "
                         "data, {states}, corrupt); left alone and never delivered from",
                         path=item.path, states=", ".join(STATES))

    def _withdraw_unreleased_bounces(self, found: dict[str, SpoolEntry]) -> None:
        """
        A bounce is committed before its original's record changes, and released only
        after (L{xrelay.delivery.engine}): a crash in between leaves a bounce whose
        original never recorded that attempt (its C{last_attempt} is older than the
        bounce).  That original is tried again and bounced again, so this copy goes.
        """
        for entry_id, bounce in list(found.items()):
            if bounce.bounce_of is None or bounce.attempts or bounce.state != QUEUED:
                continue
            original = found.get(bounce.bounce_of)
            if original is None or original.state not in (QUEUED, DEFERRED):
                continue
            if (original.last_attempt or 0.0) < bounce.received_at:
                log.info("spool: bounce {entry_id} of {original} was never released "
                         "(interrupted); removed, the original is retried",
                         entry_id=entry_id, original=original.entry_id)
                del found[entry_id]
                _unlink_quietly(self._json_path(QUEUED, entry_id))
                _unlink_quietly(self._data_path(entry_id))

    # -- corrupt entries ---------------------------------------------------------

    def _set_aside(self, path: str, name: str, reason: str) -> str | None:
        """Move one file (or folder) into C{corrupt/} under a free name; never delete."""
        folder = os.path.join(self.directory, CORRUPT)
        target = os.path.join(folder, name)
        stem, dot, suffix = name.rpartition(".")
        n = 0
        while os.path.lexists(target):
            # Another one of that name was set aside before: X~1.json, X~2.json...
            n += 1
            target = os.path.join(folder, f"{stem}~{n}{dot}{suffix}" if stem
                                  else f"{name}~{n}")
        try:
            os.rename(path, target)
        except FileNotFoundError:
            return None  # moved on meanwhile (another reader set it aside)
        log.error("spool: set aside {path} as {target}: {reason}; inspect it, then "
                  "delete it or repair and move it back", path=path, target=target,
                  reason=reason)
        return target

    def _quarantine(self, state: str, entry_id: str, reason: str,
                    with_data: bool = True) -> None:
        """Set an unreadable entry aside: its record, its data, and why."""
        target = self._set_aside(self._json_path(state, entry_id), entry_id + ".json",
                                 f"{reason} (was in {state}/)")
        if target is None:
            return  # another reader got there first
        stem = os.path.basename(target)[:-5] if target.endswith(".json") else entry_id
        if with_data and os.path.exists(self._data_path(entry_id)):
            self._set_aside(self._data_path(entry_id), stem + ".eml",
                            f"the message data of {entry_id} (now {stem}.eml)")
        self._write_reason(stem, f"{reason} (was in {state}/)")

    def _write_reason(self, stem: str, reason: str) -> None:
        """Why C{corrupt/<stem>.*} is there, for C{xrelay queue show}."""
        try:
            with open(os.path.join(self.directory, CORRUPT, stem + ".reason"), "w",
                      encoding="utf-8") as f:
                f.write(reason + "\n")
        except OSError:
            pass  # a full disk: the log line says why

    def _read(self, state: str, entry_id: str,
              data_sizes: dict[str, int] | None = None,
              data_names: set[str] | None = None) -> SpoolEntry:
        """
        Read and check one record.

        @param data_sizes: the sizes of the data files, when already known (recovery).
        @param data_names: the names in C{data/}, listed after the state folder (a
            listing): only whether the data exists is checked then, not its size.
        @raise UnknownEntry: it is not there (moved on meanwhile).
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
        return _parse_record(raw, state, entry_id, data_path, size)

    # -- reading -----------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        """Entry ids in one state (or set aside in C{corrupt/}), oldest first."""
        names = os.listdir(os.path.join(self.directory, state))
        if state == CORRUPT:
            return sorted({n.rsplit(".", 1)[0] for n in names if not n.endswith(".reason")}
                          | {n[:-7] for n in names if n.endswith(".reason")})
        return sorted(n[:-5] for n in names if n.endswith(".json"))

    def entries(self, state: str | None = None) -> Iterator[SpoolEntry]:
        """
        Every entry (or those in one state), oldest first within a state; those set
        aside in C{corrupt/} come last.  Unreadable entries met on the way are set
        aside and skipped.
        """
        for s in (state,) if state else STATES + (CORRUPT,):
            if s == CORRUPT:
                for stem in self.ids(CORRUPT):
                    yield _corrupt_entry(self.directory, stem)
                continue
            preloaded = self._recovered.pop(s, None)
            if preloaded is not None:
                yield from preloaded
                continue
            ids = self.ids(s)
            # Listed after the state folder: data is renamed into data/ before its
            # record reaches a state folder, and removed after it; a name missing here
            # is checked once more with stat before anything is set aside.
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
        if not is_entry_id(entry_id):
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
            return _corrupt_entry(self.directory, entry_id)
        raise UnknownEntry(entry_id)

    def _load(self, state: str, entry_id: str,
              data_names: set[str] | None = None) -> SpoolEntry:
        """
        @raise UnknownEntry: not in this state; also when it was unreadable (it is
            then set aside, with a log line).
        """
        try:
            return self._read(state, entry_id, data_names=data_names)
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
        Fires with the new entry.
        """
        if state not in STATES:
            raise ValueError(state)
        _allow(entry.state, state, entry.entry_id)
        self._recovered.clear()
        self._handover.pop(entry.entry_id, None)
        new = attrs.evolve(entry, state=state, **changes)
        return self._run(self._move, entry, new)

    def _move(self, old: SpoolEntry, new: SpoolEntry) -> SpoolEntry:
        source = self._json_path(old.state, old.entry_id)
        if not os.path.exists(source):
            raise UnknownEntry(old.entry_id)
        changed = attrs.evolve(new, state=old.state) != old
        if changed:
            tmp = source + ".tmp"
            try:
                _write_durably(tmp, json.dumps(new.to_json(), indent=1).encode())
            except OSError as e:
                # A full disk: the old record is untouched, so nothing happened.
                _unlink_quietly(tmp)
                if _full(e):
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
            _fsync_directory(os.path.join(self.directory, new.state))
        _fsync_directory(os.path.join(self.directory, old.state))
        return new

    def remove(self, entry: SpoolEntry) -> "Deferred[None]":
        """Delivered: the entry leaves the spool (record first, then data)."""
        _allow(entry.state, DELIVERED, entry.entry_id)
        self._recovered.clear()
        self._handover.pop(entry.entry_id, None)
        return self._run(self._remove, entry)

    def _remove(self, entry: SpoolEntry) -> None:
        if entry.state == CORRUPT:
            # The operator deletes what was set aside: every file of that name.
            folder = os.path.join(self.directory, CORRUPT)
            for suffix in (".json", ".eml", ".reason"):
                path = os.path.join(folder, entry.entry_id + suffix)
                if os.path.isdir(path) and not os.path.islink(path):
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    _unlink_quietly(path)
            _fsync_directory(folder)
            return
        _unlink_quietly(self._json_path(entry.state, entry.entry_id))
        _fsync_directory(os.path.join(self.directory, entry.state))
        _unlink_quietly(self._data_path(entry.entry_id))

    def scratch_path(self, entry_id: str, suffix: str) -> str:
        """A temporary file for derived data (a rewritten copy); recovery removes it."""
        return os.path.join(self.directory, "tmp", f"{entry_id}.{suffix}")


def _as_failure(error: BaseException) -> Any:
    from twisted.python.failure import Failure

    return Failure(error, type(error), error.__traceback__)
