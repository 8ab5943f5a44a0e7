"""
The submission fixes of RFC 6409 section 8: a message handed in without C{Date:} or
without C{Message-ID:} gets the missing field, so that no upstream refuses or files it
as malformed (devices and simple scripts often leave both out).

The fields go at the end of the message's own header block, found by the one header
scanner (L{xrelay.inbound.headers.HeaderBlock}) as the DATA lines stream past: the
lines are handed to the spool as they come, so the fields are inserted in front of the
line that ends the header block (normally the empty line), or appended when the
message ends without one.  Nothing is buffered beyond the lines of one packet.

This module must never change a message that has both fields (byte-identical), and
never add a field the message already has.
"""

from __future__ import annotations

import email.utils
import secrets
import time
from typing import Callable

from xrelay.inbound.headers import HeaderBlock

__all__ = ["missing_fields", "feed_header_lines", "header_block_never_ended"]

CRLF = b"\r\n"


def missing_fields(headers: HeaderBlock, hostname: str, transaction_id: str,
                   when: float | None = None) -> bytes:
    """
    The C{Date:} and C{Message-ID:} fields this header block lacks, in wire format
    (empty when it has both); they are also recorded in C{headers}, so that what reads
    the header block later (the trace, the sender rules) sees the message as sent on.
    """
    out = b""
    if not headers.has("date"):
        date = email.utils.formatdate(time.time() if when is None else when,
                                      localtime=True)
        out += b"Date: " + date.encode("ascii") + CRLF
        _record(headers, "date", date)
    if not headers.has("message-id"):
        message_id = f"<{transaction_id}.{secrets.token_hex(6)}@{hostname}>"
        out += b"Message-ID: " + message_id.encode("ascii", "replace") + CRLF
        _record(headers, "message-id", message_id)
    return out


def _record(headers: HeaderBlock, name: str, value: str) -> None:
    headers.names.add(name)
    headers.values.setdefault(name, []).append(value)


def feed_header_lines(headers: HeaderBlock, data: bytes,
                      fields: Callable[[], bytes]) -> bytes:
    """
    Show complete CRLF lines (as stored) to the header scanner; when the header block
    ends inside them, the missing fields (C{fields()}, asked only then) are inserted in
    front of the line that ends it.  Returns the bytes to store.
    """
    position = 0
    while position < len(data) and not headers.done:
        end = data.find(b"\n", position) + 1 or len(data)
        headers.feed(data[position:end])
        if headers.done:
            added = fields()
            if not added:
                return data
            if data[position:end] != CRLF:
                # The block ended on a line that is not a field (a body without the
                # empty line, as every lenient reader takes it): the empty line makes
                # that explicit now that fields come first.
                added += CRLF
            return data[:position] + added + data[position:]
        position = end
    return data


def header_block_never_ended(headers: HeaderBlock, fields: Callable[[], bytes]) -> bytes:
    """At the end of DATA: the fields to append when the message had no empty line."""
    if headers.done:
        return b""
    headers.done = True
    return fields()
