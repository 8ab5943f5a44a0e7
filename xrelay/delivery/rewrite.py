"""
C{rewrite_from}: send a message as the account's own mailbox when it may not send as
the device's address.

Exchange Online refuses a sender the mailbox has no Send As right for (554 5.2.252).
Rather than granting it, an operator may set C{rewrite_from = true}: the envelope sender
and the C{From:} header become the account's C{user}, and the original C{From:} moves
to C{Reply-To:} (unless the message already has one) so that answers still reach the
right person.

Streams: only the header section is held in memory; the body is copied as it is.  Never
touches the spooled original: the rewritten copy is a separate file.
"""

from __future__ import annotations

import shutil
from typing import BinaryIO

#: A header section larger than this is passed through untouched after this point.
MAX_HEADER_BYTES = 256 * 1024


def _headers(source: BinaryIO) -> list[bytes]:
    """The header lines (with their CRLF) up to and including the empty line."""
    lines: list[bytes] = []
    total = 0
    while total < MAX_HEADER_BYTES:
        line = source.readline(MAX_HEADER_BYTES)
        if not line:
            break
        lines.append(line)
        total += len(line)
        if line in (b"\r\n", b"\n"):
            break
    return lines


def _fields(lines: list[bytes]) -> list[list[bytes]]:
    """Group physical lines into fields (a field and its folded continuation lines)."""
    fields: list[list[bytes]] = []
    for line in lines:
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        else:
            fields.append([line])
    return fields


def _name(field: list[bytes]) -> bytes:
    return field[0].split(b":", 1)[0].strip().lower()


def rewrite_from(source_path: str, target_path: str, user: str, sender: str) -> int:
    """
    Write a copy of the message at C{source_path} to C{target_path} with C{From:}
    replaced by C{user} and the original kept in C{Reply-To:}.

    @param sender: the original envelope sender, for C{Reply-To:} when the message has
        no C{From:} at all.
    @return: the size of the copy.
    """
    with open(source_path, "rb") as source, open(target_path, "wb") as target:
        lines = _headers(source)
        has_body_separator = bool(lines) and lines[-1] in (b"\r\n", b"\n")
        fields = _fields(lines[:-1] if has_body_separator else lines)
        original_from = [f for f in fields if _name(f) == b"from"]
        has_reply_to = any(_name(f) == b"reply-to" for f in fields)
        new_from = b"From: " + user.encode("utf-8") + b"\r\n"
        out: list[bytes] = []
        for field in fields:
            if _name(field) != b"from":
                out.extend(field)
            elif field is original_from[0]:
                out.append(new_from)
                if not has_reply_to:
                    # The original field's value, folding and all.
                    value = b"".join(field).split(b":", 1)[1]
                    out.append(b"Reply-To:" + value)
        if not original_from:
            out.append(new_from)
            if not has_reply_to and sender:
                out.append(b"Reply-To: " + sender.encode("utf-8") + b"\r\n")
        if has_body_separator:
            out.append(b"\r\n")
        target.writelines(out)
        shutil.copyfileobj(source, target, 64 * 1024)
        return target.tell()
