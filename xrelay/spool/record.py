"""
The on-disk form of a spool record (C{<state>/<id>.json}): a check line, then the
record's JSON.  Two lines of JSON, so C{jq . queued/<id>.json} shows both::

    {"xrelay_record": 1, "length": 412, "crc32": 2865121443, "data_size": 10240, "data_crc32": 91823}
    {
     "sender": "scanner@example.com",
     ...
    }

- C{length} and C{crc32} (zlib's CRC-32) are those of everything after the check
  line's newline: a record cut short (a crash while it was written, before it was
  acknowledged) is told from a damaged one, and neither is ever delivered.
- C{data_size} and C{data_crc32} describe C{data/<id>.eml} as committed; only the
  record written by the commit carries them (state changes rewrite the record without
  them: by then the data has long been durable).  Recovery checks them for entries
  still in C{queued/} with that first record, the only ones a crash can have caught
  half-written.

A record without a check line (the spool's format before issue 28, or one an operator
wrote by hand) is read as plain JSON, without checks.  The check line comes first so
that a record cut anywhere still says what it should have been.
"""

from __future__ import annotations

import json
import zlib
from typing import Any


__all__ = ["CHECK_PREFIX", "CorruptEntry", "InterruptedCommit", "encode_record", "split_record",
           "data_matches"]


class CorruptEntry(Exception):
    """A record that cannot be read; C{str()} is the reason, for the log line."""


class InterruptedCommit(CorruptEntry):
    """
    A commit that never finished: an empty or cut-short record in C{queued/}, or data
    shorter than (or different from) what the record's check line says.  Such an entry
    was never acknowledged (the acknowledgement waits for both fdatasyncs), so it is
    owed to nobody: recovery removes it with an info line, and it is never delivered.
    """

#: How every record with a check line begins (also how a cut-short one is recognised).
CHECK_PREFIX = b'{"xrelay_record": 1, '

#: Bytes read at a time when checking message data.
_CHUNK = 1 << 20


def encode_record(record: dict[str, Any], data_size: int | None = None,
                  data_crc32: int | None = None) -> bytes:
    """The bytes of a record file: the check line, then the JSON."""
    body = json.dumps(record, indent=1).encode() + b"\n"
    check = (f'{{"xrelay_record": 1, "length": {len(body)}, '
             f'"crc32": {zlib.crc32(body)}')
    if data_size is not None and data_crc32 is not None:
        check += f', "data_size": {data_size}, "data_crc32": {data_crc32}'
    return check.encode() + b"}\n" + body


def split_record(raw: bytes, strict: bool = True) -> tuple[bytes, dict[str, int]]:
    """
    The JSON of a record and its check line's figures (empty for a record without one).

    @param strict: check length and checksum (C{False}: whatever body there is, for
        showing what is known of a record set aside).
    @raise InterruptedCommit: the record is empty or cut short.
    @raise CorruptEntry: the check line is damaged or the checksum differs.
    """
    if not raw:
        raise InterruptedCommit("empty record (a commit that never finished)")
    if not raw.startswith(CHECK_PREFIX):
        if CHECK_PREFIX.startswith(raw):
            raise InterruptedCommit("the record is cut short inside its check line")
        return raw, {}
    end = raw.find(b"\n")
    if end < 0:
        raise InterruptedCommit("the record is cut short inside its check line")
    try:
        check = json.loads(raw[:end])
    except ValueError:
        raise CorruptEntry("the record's check line is damaged") from None
    figures = {k: v for k, v in check.items() if isinstance(v, int)
               and not isinstance(v, bool)} if isinstance(check, dict) else {}
    if "length" not in figures or "crc32" not in figures:
        raise CorruptEntry("the record's check line has no length or checksum")
    body = raw[end + 1:]
    if not strict:
        return body, figures
    if len(body) < figures["length"]:
        raise InterruptedCommit(f"the record is cut short ({len(body)} of "
                                f"{figures['length']} bytes)")
    if len(body) > figures["length"]:
        raise CorruptEntry(f"the record is longer than its check line says "
                           f"({len(body)}, not {figures['length']} bytes)")
    if zlib.crc32(body) != figures["crc32"]:
        raise CorruptEntry("the record's checksum does not match its contents")
    return body, figures


def data_matches(path: str, figures: dict[str, int], size: int) -> str | None:
    """
    Why the message data at C{path} is not what its commit wrote (cut short, or other
    bytes), or C{None} when it is (or the record says nothing about it).
    """
    if "data_size" not in figures or "data_crc32" not in figures:
        return None
    if size != figures["data_size"]:
        return (f"its message data is {size} bytes, the commit wrote "
                f"{figures['data_size']}")
    crc = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                crc = zlib.crc32(chunk, crc)
    except OSError as e:
        return f"its message data cannot be read ({e.strerror})"
    if crc != figures["data_crc32"]:
        return "its message data differs from what the commit wrote (checksum)"
    return None
