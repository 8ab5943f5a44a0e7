"""
The layout of a spooled MIME message, found by reading it once from disk: where each
leaf part (its delimiter line, its header fields, its body) starts and ends, and what
its header fields say (type, encoding, file name, Content-ID).

The Graph transport's upload sessions use it to send the message as a draft without
its large attachments (their byte ranges cut out) and to stream each attachment's
decoded bytes from the spool.  Never holds more than one line, or one block, of the
message in memory; never changes the spooled file.
"""

from __future__ import annotations

import binascii
import email.message
import email.parser
import email.policy
import re
from typing import BinaryIO, Iterator

import attrs

__all__ = ["Part", "scan_parts", "decoded_blocks", "decoded_size", "without_spans"]

#: Bytes read at a time when streaming a part's body.
BLOCK = 256 * 1024
_WHITESPACE = re.compile(rb"[ \t\r\n]+")


@attrs.frozen
class Part:
    """
    One leaf part of a multipart message.

    @ivar start: offset of the delimiter line that opens the part.
    @ivar body_start: offset of the first byte of its body.
    @ivar body_end: offset just after its body (the CRLF before the next delimiter
        belongs to the delimiter, RFC 2046 5.1.1).
    @ivar end: offset of the next delimiter line: C{[start, end)} is the whole part.
    """

    start: int
    body_start: int
    body_end: int
    end: int
    content_type: str
    encoding: str
    disposition: str
    filename: str
    content_id: str

    @property
    def span(self) -> int:
        return self.end - self.start

    @property
    def is_attachment(self) -> bool:
        """A file rather than the message's text: named, or disposed as attachment,
        or an inline image referred to by Content-ID."""
        if self.disposition == "attachment" or self.filename:
            return True
        return bool(self.content_id) and not self.content_type.startswith("text/")


def _headers(raw: bytes) -> email.message.Message:
    return email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)


def _boundary(headers: email.message.Message) -> bytes | None:
    if headers.get_content_maintype() != "multipart":
        return None
    boundary = headers.get_boundary()
    return boundary.encode("utf-8", "replace") if boundary else None


def _leaf(start: int, body_start: int, headers: email.message.Message) -> dict[str, object]:
    disposition = (headers.get("Content-Disposition") or "").split(";")[0].strip().lower()
    filename = headers.get_filename() or headers.get_param("name") or ""
    if isinstance(filename, tuple):  # an RFC 2231 value email could not decode
        filename = str(filename[2])
    content_id = (headers.get("Content-ID") or "").strip().strip("<>")
    return dict(start=start, body_start=body_start, content_type=headers.get_content_type(),
                encoding=(headers.get("Content-Transfer-Encoding") or "7bit").strip().lower(),
                disposition=disposition, filename=str(filename), content_id=content_id)


def scan_parts(f: BinaryIO) -> list[Part]:
    """
    The leaf parts of the message in C{f} (read from its start), in order; empty when
    the message is not multipart.  Nested multiparts are walked; their own delimiter
    lines stay outside every leaf.
    """
    f.seek(0)
    offset = 0
    head = b""
    for line in f:
        offset += len(line)
        if line in (b"\r\n", b"\n"):
            break
        head += line
    top = _boundary(_headers(head))
    if top is None:
        return []
    stack: list[bytes] = [top]
    parts: list[Part] = []
    state = "preamble"  # preamble | headers | body
    current: dict[str, object] = {}
    part_head = b""
    previous_ending = 2  # the length of the line end of the line before this one
    for line in f:
        line_start, offset = offset, offset + len(line)
        stripped = line.rstrip(b"\r\n").rstrip(b" \t")
        hit = None
        if stripped.startswith(b"--"):
            for depth in range(len(stack) - 1, -1, -1):
                b = stack[depth]
                if stripped == b"--" + b or stripped == b"--" + b + b"--":
                    hit = depth
                    break
        if hit is not None:
            closing = stripped.endswith(b"--") and stripped == b"--" + stack[hit] + b"--"
            if state == "body" and current:
                # The line end in front of the delimiter belongs to the delimiter.
                body_start = int(str(current["body_start"]))
                body_end = max(line_start - previous_ending, body_start)
                parts.append(Part(end=line_start, body_end=body_end,
                                  **current))  # type: ignore[arg-type]
            current = {}
            del stack[hit + 1:]
            if closing:
                stack.pop()
                state = "preamble"
                if not stack:
                    break
            else:
                state, part_head = "headers", b""
                current = {"start": line_start}
            previous_ending = len(line) - len(line.rstrip(b"\r\n"))
            continue
        if state == "headers":
            if line in (b"\r\n", b"\n"):
                headers = _headers(part_head)
                inner = _boundary(headers)
                if inner is not None:
                    stack.append(inner)
                    state, current = "preamble", {}
                else:
                    current = _leaf(int(str(current["start"])), offset, headers)
                    state = "body"
            else:
                part_head += line
        previous_ending = len(line) - len(line.rstrip(b"\r\n"))
    return parts


def _raw_blocks(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    f.seek(start)
    left = end - start
    while left > 0:
        block = f.read(min(BLOCK, left))
        if not block:
            return
        left -= len(block)
        yield block


def decoded_blocks(f: BinaryIO, part: Part) -> Iterator[bytes]:
    """The part's body, decoded (base64, quoted-printable or as is), block by block."""
    if part.encoding == "base64":
        carry = b""
        for block in _raw_blocks(f, part.body_start, part.body_end):
            data = carry + _WHITESPACE.sub(b"", block)
            usable = len(data) - len(data) % 4
            carry = data[usable:]
            if usable:
                yield binascii.a2b_base64(data[:usable])
        if carry.rstrip(b"="):
            yield binascii.a2b_base64(carry + b"=" * (-len(carry) % 4))
        return
    if part.encoding == "quoted-printable":
        carry = b""
        for block in _raw_blocks(f, part.body_start, part.body_end):
            data = carry + block
            cut = data.rfind(b"\n") + 1
            carry = data[cut:]
            if cut:
                yield binascii.a2b_qp(data[:cut])
        if carry:
            yield binascii.a2b_qp(carry)
        return
    yield from _raw_blocks(f, part.body_start, part.body_end)


def decoded_size(f: BinaryIO, part: Part) -> int:
    """The size of the part's decoded body (one streaming pass)."""
    return sum(len(block) for block in decoded_blocks(f, part))


def without_spans(f: BinaryIO, size: int, cut: list[Part]) -> bytes:
    """The whole message with the byte ranges of the C{cut} parts left out."""
    out: list[bytes] = []
    position = 0
    for part in sorted(cut, key=lambda p: p.start):
        out.extend(_raw_blocks(f, position, part.start))
        position = part.end
    out.extend(_raw_blocks(f, position, size))
    return b"".join(out)
