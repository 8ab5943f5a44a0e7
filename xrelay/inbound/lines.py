"""
Splitting the client's byte stream into SMTP lines, with a hard bound on memory, and
turning DATA lines into what the spool stores.

This is where SMTP smuggling is defeated, so the rules are written down here:

 - A line is everything up to a LF.  It is "CRLF-terminated" only when the LF is
   preceded by a CR; a bare LF also ends a line (legacy devices send them), but is
   remembered as bare.
 - For a strict client the end of DATA is exactly C{CRLF "." CRLF}: a line that is a
   single dot, ended by CRLF, after a line that was itself ended by CRLF (or right
   after the DATA command).  C{"\\n.\\n"}, C{"\\r.\\n"}, C{"\\n.\\r\\n"}, C{"\\r.\\r\\n"} and
   friends are message content, never the end.  A lenient reading (a trusted device,
   see L{xrelay.inbound.leniency}) also ends DATA at a single-dot line whose own or
   previous line end is a bare LF (C{LF.LF}, C{CRLF.LF}, C{LF.CRLF}); a bare CR never
   ends a line, so C{"\\r.\\r\\n"} stays content in every reading.  Either way the
   spool gets CRLF lines only, so the upstream sees the messages we saw and no more.
 - Inside DATA every bare LF and every bare CR is normalised to CRLF (Postfix's
   C{smtpd_forbid_bare_newline = normalize}, extended to bare CR).  We normalise
   rather than reject because the printers and scanners this relay serves do send bare
   LFs, and a rejected scan is a support call; normalising is safe because afterwards
   the spool holds only CRLF-terminated lines, so the transport's dot-stuffing (which
   works on CRLF lines) stuffs every dot line, and no upstream can find an
   end-of-data sequence inside a message.
 - Dot-stuffing is removed only from the client's real lines (RFC 5321 4.5.2); a lone
   dot that did not end DATA is kept as content.
 - A line longer than the limit is never buffered: its bytes are dropped as they
   arrive and the line is reported as over-long when its LF finally comes, so that the
   caller stays in the same state (a long DATA line never spills into command mode).

This module must never hold more than one line limit's worth of a line in memory, and
never produce spool bytes containing a CR or LF that is not part of a CRLF.
"""

from __future__ import annotations

import re

import attrs

__all__ = ["Line", "LineBuffer", "data_line_bytes", "ends_data"]


def _long_line(max_length: int) -> "re.Pattern[bytes]":
    """A line (after a LF) of at least C{max_length} bytes before its own LF."""
    return re.compile(rb"\n[^\n]{%d}" % max_length)


@attrs.frozen
class Line:
    """
    One line from the client.

    @ivar content: the bytes before the terminator (bare CRs inside kept); empty for an
        over-long line, whose bytes were dropped.
    @ivar crlf: ended by CRLF rather than a bare LF.
    @ivar overlong: longer than the limit (terminator included).
    """

    content: bytes
    crlf: bool
    overlong: bool = False


class LineBuffer:
    """
    A bounded line splitter: C{feed} bytes, then take complete lines with C{next}.

    @param max_length: longest line accepted, terminator included (RFC 5321 counts the
        CRLF in its 1000).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._buffer = b""
        self._position = 0
        self._discarding = False
        self._last_dropped = b""
        self._long_line = _long_line(max_length)
        #: Where the lines that L{plain_lines} found not plain end (a buffer position):
        #: until L{next} has taken them, they are not looked at again.
        self._not_plain_until = 0

    @property
    def pending(self) -> int:
        """Bytes received but not yet returned as lines."""
        return len(self._buffer) - self._position

    def feed(self, data: bytes) -> None:
        if self._position:
            self._buffer = self._buffer[self._position:]
            self._not_plain_until = max(self._not_plain_until - self._position, 0)
            self._position = 0
        self._buffer += data

    def clear(self) -> int:
        """Forget everything not yet returned (after STARTTLS); how many bytes that was."""
        dropped = self.pending
        self._buffer = b""
        self._position = 0
        self._discarding = False
        self._not_plain_until = 0
        return dropped

    def plain_lines(self) -> bytes:
        """
        As many complete lines as possible at once, as long as each is a plain DATA line:
        ended by CRLF, with no other CR or LF, not starting with a dot, within the limit.
        For such lines L{data_line_bytes} is the identity, so DATA can store them in one
        piece instead of one Python call per line; the first line that is not plain (the
        end of data among them) is left for L{next}, which applies every rule.  Empty when
        the next line is not plain or not complete.
        """
        buffer, start = self._buffer, self._position
        if self._discarding or start < self._not_plain_until:
            return b""
        last = buffer.rfind(b"\n", start)
        if last < 0 or buffer[start:start + 1] == b".":
            return b""
        # Up to the first line that starts with a dot (stuffed, or the end of data).
        dot = buffer.find(b"\n.", start, last)
        end = dot + 1 if dot >= 0 else last + 1
        crlf = buffer.count(b"\r\n", start, end)
        if (buffer.count(b"\n", start, end) != crlf or buffer.count(b"\r", start, end) != crlf
                or buffer.find(b"\n", start) - start >= self.max_length
                or self._long_line.search(buffer, start, end) is not None):
            # A bare CR or LF, or an over-long line, somewhere in there: those lines
            # go one by one (rare, so no effort to find the exact spot).
            self._not_plain_until = end
            return b""
        self._position = end
        return buffer[start:end]

    def next(self) -> Line | None:
        """The next complete line, or C{None} until more bytes arrive."""
        start = self._position
        end = self._buffer.find(b"\n", start)
        if end < 0:
            if len(self._buffer) - start > self.max_length:
                # Drop the partial line now rather than hold it: only whether it ended
                # in CR matters once its LF comes.
                self._discarding = True
                self._last_dropped = self._buffer[-1:]
                self._buffer = b""
                self._position = 0
                self._not_plain_until = 0
            return None
        raw = self._buffer[start:end]
        self._position = end + 1
        if self._discarding:
            self._discarding = False
            crlf = raw.endswith(b"\r") or (not raw and self._last_dropped == b"\r")
            return Line(b"", crlf, overlong=True)
        crlf = raw.endswith(b"\r")
        if crlf:
            raw = raw[:-1]
        if len(raw) + 2 > self.max_length:
            return Line(b"", crlf, overlong=True)
        return Line(raw, crlf)


def data_line_bytes(line: Line) -> bytes:
    """
    What the spool stores for one (not over-long, not end-of-data) DATA line: dot-
    stuffing removed, bare CRs turned into line breaks, CRLF at the end of every piece.
    """
    content = line.content
    if content[:1] == b"." and len(content) > 1:
        content = content[1:]
    if b"\r" in content:
        return b"".join(piece + b"\r\n" for piece in content.split(b"\r"))
    return content + b"\r\n"


def ends_data(line: Line, previous_crlf: bool, lenient: bool) -> bool:
    """
    Whether this line ends DATA: a single dot with CRLF on both sides, or (C{lenient})
    a single dot whatever its line ends.
    """
    if line.content != b"." or line.overlong:
        return False
    return lenient or (line.crlf and previous_crlf)
