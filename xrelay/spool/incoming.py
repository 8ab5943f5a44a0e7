"""
A message being received: its bytes go straight to a file (never kept in memory), with
a running CRC-32 for the record's check line, until it is committed or aborted.
"""

from __future__ import annotations

import errno
import os
import zlib
from typing import Any

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from zope.interface import implementer

from xrelay.durable import write_all, write_durably
from xrelay.envelope import Envelope
from xrelay.interfaces import IIncomingMessage, SpoolFull
from xrelay.spool.entry import SpoolEntry
from xrelay.spool.host import SpoolHost
from xrelay.spool.record import encode_record


__all__ = ["Incoming", "full", "unlink_quietly"]

#: errno values that mean "no room": the client is told to try again later.
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT}


def full(e: OSError) -> bool:
    return e.errno in _NO_SPACE


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


@implementer(IIncomingMessage)
@attrs.define(eq=False)
class Incoming:
    """
    A message being received, in one of two places:

    - into a spare pair (C{spare=True}): C{data/<id>.eml} and C{queued/<id>.json},
      both made empty ahead of time with their names durable (L{xrelay.spool.spares}).
      Its commit writes the record into its place and fdatasyncs both files, in one
      round and without a name change;
    - into C{tmp/<id>.eml} when no spare was ready: its commit writes C{tmp/<id>.json},
      fsyncs both, renames them into C{data/} and C{queued/} and fsyncs those folders.
    """

    spool: SpoolHost
    entry_id: str
    envelope: Envelope
    bounce_of: str | None
    _file: Any = attrs.field(repr=False)
    spare: bool = False
    size: int = 0
    #: CRC-32 of the bytes written so far (for the record's check line).
    crc: int = 0
    finished: bool = False
    #: The entry as committed, handed to the delivery engine without a re-read.
    entry: "SpoolEntry | None" = attrs.field(default=None, repr=False)

    @property
    def data_tmp(self) -> str:
        """Where the data is written (its final place for a spare)."""
        if self.spare:
            return self.spool._data_path(self.entry_id)
        return os.path.join(self.spool.directory, "tmp", self.entry_id + ".eml")

    @property
    def json_tmp(self) -> str:
        """Where the record is written (its final place for a spare)."""
        if self.spare:
            return self.spool._json_path("queued", self.entry_id)
        return os.path.join(self.spool.directory, "tmp", self.entry_id + ".json")

    def write(self, data: bytes) -> None:
        if self.finished:
            raise RuntimeError("message already committed or aborted")
        try:
            self._file.write(data)
        except OSError as e:
            self.abort()
            if full(e):
                self.spool._out_of_space()
                raise SpoolFull(str(e.strerror)) from None
            raise
        self.size += len(data)
        self.crc = zlib.crc32(data, self.crc)

    def commit(self) -> "Deferred[str]":
        if self.finished:
            return defer.fail(RuntimeError("message already committed or aborted"))
        self.finished = True
        return self.spool._committer.enqueue(self)

    def abort(self) -> None:
        self.finished = True
        self.discard()
        self.spool._unlisted.discard(self.entry_id)

    def discard(self) -> None:
        """Remove what this message wrote (record first: data alone is owed to nobody)."""
        try:
            self._file.close()
        except OSError:
            pass  # a failed flush on close: the file is removed anyway
        unlink_quietly(self.json_tmp)
        unlink_quietly(self.data_tmp)

    def record(self) -> bytes:
        """The record file's bytes (check line with the data's size and CRC, JSON)."""
        self.entry = SpoolEntry.received(self.entry_id, self.envelope, self.size,
                                         self.spool._data_path(self.entry_id),
                                         self.bounce_of)
        return encode_record(self.entry.to_json(), self.size, self.crc)

    # -- thread side -------------------------------------------------------------

    def sync_data(self) -> None:
        """Flush the buffered bytes and fdatasync the data (its name is durable)."""
        self._file.flush()
        os.fdatasync(self._file.fileno())
        self._file.close()

    def sync_record(self) -> None:
        """Write the record into its spare file and fdatasync it."""
        payload = self.record()
        fd = os.open(self.json_tmp, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            write_all(fd, payload)
            os.fdatasync(fd)
        finally:
            os.close(fd)

    def prepare(self) -> None:
        """
        Without a spare, first half of the commit: flush and fsync the data, write and
        fsync the record.  Both still live in C{tmp/}.
        """
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        write_durably(self.json_tmp, self.record())
