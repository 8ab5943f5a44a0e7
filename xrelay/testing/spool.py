"""
An in-memory L{ISpool}: the whole interface, the same lifecycle table and entry-id
syntax as the real spool (L{xrelay.lifecycle}), for tests of anything that talks to a
spool (the inbound side, the delivery engine, the queue operations) and for embedders'
own tests.  It can be told to run out of space or to hold its commits.

Records live in memory only: nothing survives the process, so the durability promise
of L{ISpool} holds only within it.  The message bytes are kept in memory and also
written, without fsync, to C{<directory>/data/<id>.eml}, because an entry's
C{data_path} is what a transport opens.  Never use it in production.
"""

from __future__ import annotations

import itertools
import os
import tempfile
from typing import Any, Iterator

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.envelope import Envelope
from xrelay.interfaces import IIncomingMessage, ISpool, SpoolFull, UnknownEntry
from xrelay.lifecycle import (ACTIVE, CORRUPT, DELIVERED, QUEUED, RECEIVED, STATES, allow,
                              check_entry_id, is_entry_id)
from xrelay.spool import SpoolEntry

__all__ = ["FIRST_ID", "MemoryMessage", "MemorySpool", "memory_entry_id"]

log = Logger()


def memory_entry_id(serial: int) -> str:
    """
    The memory spool's ids: the real syntax (L{xrelay.lifecycle.ENTRY_ID}), sortable by
    arrival, and the same in every run, so that tests can name them.
    """
    return f"19700101T000000.000000-0-{serial % 1_000_000:06d}"


#: The id of the first message a L{MemorySpool} commits.
FIRST_ID = memory_entry_id(1)


@implementer(IIncomingMessage)
@attrs.define(eq=False)
class MemoryMessage:
    """A message being received into a L{MemorySpool}."""

    spool: "MemorySpool"
    envelope: Envelope
    bounce_of: str | None = None
    data: bytearray = attrs.field(factory=bytearray)
    writes: int = 0
    aborted: bool = False
    committed: bool = False

    def write(self, data: bytes) -> None:
        assert not self.aborted and not self.committed, "write after the end"
        limit = self.spool.full_after
        if limit is not None and self.spool.stored_bytes() + len(self.data) + len(data) > limit:
            raise SpoolFull("No space left on device")
        self.data += data
        self.writes += 1

    def commit(self) -> "Deferred[str]":
        assert not self.aborted and not self.committed, "commit after the end"
        if self.spool.fail_commit is not None:
            return defer.fail(self.spool.fail_commit)
        if self.spool.hold_commits:
            d: Deferred[Any] = Deferred()
            self.spool.held.append(d)
            return d.addCallback(lambda _: self.spool._store(self))
        return defer.succeed(self.spool._store(self))

    def abort(self) -> None:
        self.aborted = True
        self.data = bytearray()
        self.spool.aborted.append(self)


@implementer(ISpool)
@attrs.define(eq=False)
class MemorySpool:
    """
    @ivar full_after: raise L{SpoolFull} once this many bytes are stored in total.
    @ivar fail_commit: an exception every commit fails with.
    @ivar hold_commits: commits wait until L{release} (for pipelining tests).
    @ivar full_at_incoming: L{incoming} itself raises L{SpoolFull}.
    @ivar started: every message begun, in order.
    @ivar stored: every message committed, by entry id, in commit order (also those
        delivered or removed since: what the inbound side handed over).
    @ivar aborted: every message aborted.
    """

    full_after: int | None = None
    fail_commit: Exception | None = None
    hold_commits: bool = False
    full_at_incoming: bool = False
    started: list[MemoryMessage] = attrs.field(factory=list)
    stored: dict[str, MemoryMessage] = attrs.field(factory=dict)
    aborted: list[MemoryMessage] = attrs.field(factory=list)
    held: list["Deferred[Any]"] = attrs.field(factory=list)
    recovered: bool = False
    _directory: str | None = attrs.field(default=None, alias="directory")
    _ids: Any = attrs.field(factory=lambda: itertools.count(1))
    _entries: dict[str, SpoolEntry] = attrs.field(factory=dict)
    _handover: dict[str, SpoolEntry] = attrs.field(factory=dict)

    @property
    def directory(self) -> str:
        """Where data files and scratch files go: a new temporary folder by default."""
        if self._directory is None:
            self._directory = tempfile.mkdtemp(prefix="xrelay-memory-spool-")
        for sub in ("data", "tmp"):
            os.makedirs(os.path.join(self._directory, sub), mode=0o700, exist_ok=True)
        return self._directory

    # -- test controls -----------------------------------------------------------

    def stored_bytes(self) -> int:
        return sum(len(m.data) for m in self.stored.values())

    def release(self) -> None:
        """Let held commits complete, in order."""
        held, self.held = self.held, []
        for d in held:
            d.callback(None)

    def messages(self) -> list[tuple[Envelope, bytes]]:
        """Committed messages in commit order: envelope and exact bytes."""
        return [(m.envelope, bytes(m.data)) for m in self.stored.values()]

    def set_aside(self, entry_id: str, problem: str) -> None:
        """Treat this entry as a record that could not be read (as the real spool does)."""
        entry = self._entries[entry_id]
        allow(entry.state, CORRUPT, entry_id)
        log.error("memory spool: set aside {entry_id}: {problem}", entry_id=entry_id,
                  problem=problem)
        self._handover.pop(entry_id, None)
        self._entries[entry_id] = attrs.evolve(entry, state=CORRUPT, problem=problem)

    # -- ISpool ------------------------------------------------------------------

    def incoming(self, envelope: Envelope, bounce_of: str | None = None) -> MemoryMessage:
        if self.full_at_incoming:
            raise SpoolFull("No space left on device")
        message = MemoryMessage(self, envelope, bounce_of)
        self.started.append(message)
        return message

    def _store(self, message: MemoryMessage) -> str:
        allow(RECEIVED, QUEUED, "(new)")
        entry_id = memory_entry_id(next(self._ids))
        data_path = os.path.join(self.directory, "data", entry_id + ".eml")
        with open(data_path, "wb") as f:
            f.write(message.data)
        message.committed = True
        self.stored[entry_id] = message
        entry = SpoolEntry.received(entry_id, message.envelope, len(message.data),
                                    data_path, message.bounce_of)
        self._entries[entry_id] = self._handover[entry_id] = entry
        return entry_id

    def recover(self) -> None:
        if self.recovered:
            return
        self.recovered = True
        for entry_id, entry in list(self._entries.items()):
            if entry.state == ACTIVE:
                allow(ACTIVE, QUEUED, entry_id)
                self._entries[entry_id] = attrs.evolve(entry, state=QUEUED)
        tmp = os.path.join(self.directory, "tmp")
        for name in os.listdir(tmp):
            os.unlink(os.path.join(tmp, name))

    def committed(self, entry_id: str) -> SpoolEntry | None:
        return self._handover.get(entry_id)

    def take_committed(self, entry_id: str) -> SpoolEntry | None:
        return self._handover.pop(entry_id, None)

    def get(self, entry_id: str) -> SpoolEntry:
        entry = self._entries.get(entry_id) if is_entry_id(entry_id) else None
        if entry is None or entry.state == CORRUPT:
            raise UnknownEntry(entry_id)
        return entry

    def find(self, entry_id: str) -> SpoolEntry:
        check_entry_id(entry_id)
        try:
            return self._entries[entry_id]
        except KeyError:
            raise UnknownEntry(entry_id) from None

    def ids(self, state: str) -> list[str]:
        return sorted(i for i, e in self._entries.items() if e.state == state)

    def entries(self, state: str | None = None) -> Iterator[SpoolEntry]:
        for s in (state,) if state else STATES + (CORRUPT,):
            for entry_id in self.ids(s):
                entry = self._entries.get(entry_id)
                if entry is not None and entry.state == s:
                    yield entry

    def counts(self) -> dict[str, int]:
        counts = {state: len(self.ids(state)) for state in STATES}
        corrupt = len(self.ids(CORRUPT))
        if corrupt:
            counts[CORRUPT] = corrupt
        return counts

    def read_data(self, entry_id: str) -> bytes:
        self.find(entry_id)
        return bytes(self.stored[entry_id].data)

    def move(self, entry: SpoolEntry, state: str, **changes: Any) -> "Deferred[SpoolEntry]":
        if state not in STATES:
            raise ValueError(state)
        allow(entry.state, state, entry.entry_id)
        self._handover.pop(entry.entry_id, None)
        current = self._entries.get(entry.entry_id)
        if current is None or current.state != entry.state:
            return defer.fail(UnknownEntry(entry.entry_id))
        new = attrs.evolve(entry, state=state, **changes)
        self._entries[entry.entry_id] = new
        return defer.succeed(new)

    def remove(self, entry: SpoolEntry) -> "Deferred[None]":
        allow(entry.state, DELIVERED, entry.entry_id)
        self._handover.pop(entry.entry_id, None)
        current = self._entries.get(entry.entry_id)
        if current is not None and current.state == entry.state:
            del self._entries[entry.entry_id]
            try:
                os.unlink(entry.data_path)
            except FileNotFoundError:
                pass
        return defer.succeed(None)

    def scratch_path(self, entry_id: str, suffix: str) -> str:
        return os.path.join(self.directory, "tmp", f"{entry_id}.{suffix}")
