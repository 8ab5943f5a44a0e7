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

An entry exists exactly when its C{.json} is in one of the state folders.  A commit is
acknowledged only once the C{.eml} is fsynced under its name in C{data/}, that name is
durable (C{data/} fsynced in the same round as C{queued/}, or, for a spare, before it
was handed out) and the C{.json} is fsynced, renamed into C{queued/} and that folder
fsynced.  So a crash at any instant leaves every acknowledged entry complete; what was
never acknowledged (data without an entry, or an entry whose data is missing) is what
L{Spool.recover} removes.  A state transition is one C{rename} of the
C{.json}; a changed record is first rewritten in place (temporary file, fsync, rename).

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
import time
from typing import Any, Callable, Iterator, TypeVar

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.envelope import Envelope, Reply
from xrelay.interfaces import IIncomingMessage, ISpool

__all__ = [
    "Spool",
    "SpoolEntry",
    "SpoolFull",
    "STATES",
    "run_inline",
]

log = Logger()

T = TypeVar("T")

#: The state folders, in the order an entry normally passes through them.
QUEUED, ACTIVE, DEFERRED, FAILED = "queued", "active", "deferred", "failed"
STATES = (QUEUED, ACTIVE, DEFERRED, FAILED)

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


class SpoolFull(Exception):
    """
    The spool cannot store the message now (disk full or quota exceeded).

    The inbound side answers C{452 4.3.1 Insufficient system storage}; nothing of the
    message remains on disk.
    """


class UnknownEntry(KeyError):
    """No entry with this id exists in the spool (already delivered or removed)."""


def run_inline(f: Callable[..., T], *args: Any) -> "Deferred[T]":
    """
    Run blocking spool work on the calling thread: for tests on a L{task.Clock}, where
    there is no reactor to hand the result back from a thread.
    """
    return defer.maybeDeferred(f, *args)


@attrs.frozen
class SpoolEntry:
    """
    One spooled message as the delivery engine and operators see it.

    @ivar recipients: those still to be delivered (delivered and permanently failed ones
        are removed as results come in).
    @ivar failed_recipients: C{(recipient, Reply)} pairs that failed permanently.
    @ivar bounce_of: for a bounce (DSN) we generated, the id of the entry it reports on;
        a bounce is never itself bounced.
    """

    entry_id: str
    state: str
    sender: str
    recipients: tuple[str, ...]
    data_path: str
    size: int
    account: str = ""
    client_address: str = ""
    client_helo: str = ""
    authenticated_user: str | None = None
    received_at: float = 0.0
    smtputf8: bool = False
    body_8bitmime: bool = False
    original_recipients: tuple[str, ...] = ()
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_reply: Reply | None = None
    failed_recipients: tuple[tuple[str, Reply], ...] = ()
    bounce_of: str | None = None

    @property
    def envelope(self) -> Envelope:
        return Envelope(
            sender=self.sender,
            recipients=self.recipients,
            client_address=self.client_address,
            client_helo=self.client_helo,
            authenticated_user=self.authenticated_user,
            account=self.account,
            received_at=self.received_at,
            smtputf8=self.smtputf8,
            body_8bitmime=self.body_8bitmime,
        )

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self, recurse=False)
        for transient in ("entry_id", "state", "data_path"):
            del record[transient]
        record["id"] = self.entry_id
        record["recipients"] = list(self.recipients)
        record["original_recipients"] = list(self.original_recipients)
        record["last_reply"] = _reply_json(self.last_reply)
        record["failed_recipients"] = [
            {"recipient": r, "reply": _reply_json(reply)}
            for r, reply in self.failed_recipients
        ]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any], state: str, data_path: str) -> "SpoolEntry":
        return cls(
            entry_id=record["id"],
            state=state,
            sender=record["sender"],
            recipients=tuple(record["recipients"]),
            data_path=data_path,
            size=record["size"],
            account=record.get("account", ""),
            client_address=record.get("client_address", ""),
            client_helo=record.get("client_helo", ""),
            authenticated_user=record.get("authenticated_user"),
            received_at=record.get("received_at", 0.0),
            smtputf8=record.get("smtputf8", False),
            body_8bitmime=record.get("body_8bitmime", False),
            original_recipients=tuple(record.get("original_recipients", ())),
            attempts=record.get("attempts", 0),
            next_attempt=record.get("next_attempt", 0.0),
            last_attempt=record.get("last_attempt"),
            last_reply=_reply_from(record.get("last_reply")),
            failed_recipients=tuple(
                (f["recipient"], _reply_from(f["reply"]) or Reply(554, ""))
                for f in record.get("failed_recipients", ())
            ),
            bounce_of=record.get("bounce_of"),
        )


def _reply_json(reply: Reply | None) -> dict[str, Any] | None:
    return None if reply is None else {"code": reply.code, "text": reply.text}


def _reply_from(record: dict[str, Any] | None) -> Reply | None:
    return None if record is None else Reply(record["code"], record["text"])


_workers: concurrent.futures.ThreadPoolExecutor | None = None


def _fsync_workers() -> concurrent.futures.ThreadPoolExecutor:
    """Threads that fsync one batch's files concurrently (created on first use)."""
    global _workers
    if _workers is None:
        _workers = concurrent.futures.ThreadPoolExecutor(
            max_workers=16, thread_name_prefix="xrelay-spool-fsync")
    return _workers


def _fsync_directory(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: str, payload: bytes) -> None:
    """Write a whole small file and fsync it (not its folder)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(payload)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


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
        env = self.envelope
        entry = SpoolEntry(
            entry_id=self.entry_id,
            state=QUEUED,
            sender=env.sender,
            recipients=tuple(env.recipients),
            data_path="",
            size=self.size,
            account=env.account,
            client_address=env.client_address,
            client_helo=env.client_helo,
            authenticated_user=env.authenticated_user,
            received_at=env.received_at or time.time(),
            smtputf8=env.smtputf8,
            body_8bitmime=env.body_8bitmime,
            original_recipients=tuple(env.recipients),
            bounce_of=self.bounce_of,
        )
        self.entry = attrs.evolve(entry, data_path=self.spool._data_path(self.entry_id))
        return entry.to_json()

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
        for sub in ("tmp", "data") + STATES:
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
        now = time.time()
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
        micros = int((now % 1) * 1_000_000)
        return f"{stamp}.{micros:06d}-{os.getpid()}-{next(self._counter) % 1_000_000:06d}"

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
        good = [m for m, e in zip(messages, errors) if e is None]
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
            for (m, d), error in zip(batch, result):
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
        Discard what was never acknowledged and put interrupted attempts back in the
        queue.  Runs once, at start, before anything is received or delivered; it blocks
        (it is start-up work, with nothing else to serve yet).
        """
        if self.recovered:
            return
        self.recovered = True
        tmp = os.path.join(self.directory, "tmp")
        for name in os.listdir(tmp):
            _unlink_quietly(os.path.join(tmp, name))
            log.info("discarded incomplete spool file {name}", name=name)
        moved = 0
        for name in os.listdir(os.path.join(self.directory, ACTIVE)):
            if name.endswith(".json"):
                os.rename(os.path.join(self.directory, ACTIVE, name),
                          os.path.join(self.directory, QUEUED, name))
                moved += 1
        known: set[str] = set()
        for state in STATES:
            for name in os.listdir(os.path.join(self.directory, state)):
                if name.endswith(".json.tmp"):
                    _unlink_quietly(os.path.join(self.directory, state, name))
                elif name.endswith(".json"):
                    entry_id = name[:-5]
                    if entry_id in known:
                        # A crash between the two renames of a transition: keep one.
                        _unlink_quietly(os.path.join(self.directory, state, name))
                        continue
                    known.add(entry_id)
                    if not os.path.exists(self._data_path(entry_id)):
                        log.error("spool entry {entry_id} has no message data; removed",
                                  entry_id=entry_id)
                        _unlink_quietly(os.path.join(self.directory, state, name))
        for name in os.listdir(os.path.join(self.directory, "data")):
            if name.endswith(".eml") and name[:-4] not in known:
                _unlink_quietly(os.path.join(self.directory, "data", name))
                log.info("discarded unacknowledged message data {name}", name=name)
        for sub in ("data", QUEUED):
            _fsync_directory(os.path.join(self.directory, sub))
        if moved:
            log.info("{count} interrupted deliveries back in the queue", count=moved)

    # -- reading -----------------------------------------------------------------

    def ids(self, state: str) -> list[str]:
        """Entry ids in one state, oldest first."""
        names = os.listdir(os.path.join(self.directory, state))
        return sorted(n[:-5] for n in names if n.endswith(".json"))

    def entries(self, state: str | None = None) -> Iterator[SpoolEntry]:
        """Every entry (or those in one state), oldest first within a state."""
        for s in (state,) if state else STATES:
            for entry_id in self.ids(s):
                try:
                    yield self._load(s, entry_id)
                except UnknownEntry:
                    continue  # moved on while we were listing

    def counts(self) -> dict[str, int]:
        return {state: len(self.ids(state)) for state in STATES}

    def get(self, entry_id: str) -> SpoolEntry:
        """
        @raise UnknownEntry: when the entry is not (or no longer) in the spool.
        """
        for state in STATES:
            try:
                return self._load(state, entry_id)
            except UnknownEntry:
                continue
        raise UnknownEntry(entry_id)

    def _load(self, state: str, entry_id: str) -> SpoolEntry:
        try:
            with open(self._json_path(state, entry_id), "rb") as f:
                record = json.load(f)
        except FileNotFoundError:
            raise UnknownEntry(entry_id) from None
        return SpoolEntry.from_json(record, state, self._data_path(entry_id))

    def read_data(self, entry_id: str) -> bytes:
        """The whole message (for operators and small tests; delivery streams the file)."""
        with open(self._data_path(entry_id), "rb") as f:
            return f.read()

    # -- transitions -------------------------------------------------------------

    def move(self, entry: SpoolEntry, state: str, **changes: Any) -> "Deferred[SpoolEntry]":
        """
        Change an entry's record and/or state durably: the record is rewritten in its
        current folder (temporary file, fsync, rename), then renamed into the new one.
        Fires with the new entry.
        """
        if state not in STATES:
            raise ValueError(state)
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
            _write_durably(tmp, json.dumps(new.to_json(), indent=1).encode())
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
        self._handover.pop(entry.entry_id, None)
        return self._run(self._remove, entry)

    def _remove(self, entry: SpoolEntry) -> None:
        _unlink_quietly(self._json_path(entry.state, entry.entry_id))
        _fsync_directory(os.path.join(self.directory, entry.state))
        _unlink_quietly(self._data_path(entry.entry_id))

    def scratch_path(self, entry_id: str, suffix: str) -> str:
        """A temporary file for derived data (a rewritten copy); recovery removes it."""
        return os.path.join(self.directory, "tmp", f"{entry_id}.{suffix}")


def _as_failure(error: BaseException) -> Any:
    from twisted.python.failure import Failure

    return Failure(error, type(error), error.__traceback__)
