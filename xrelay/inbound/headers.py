"""
The header block of a message being received, as the DATA lines stream past.

Several decisions need a few header fields of the message, not the message: the sender
rules (C{From:} and C{Sender:} of a restricted user), the submission fixes of RFC 6409
section 8 (is there a C{Date:} and a C{Message-ID:}?) and the message trace (C{Subject:}
and C{Message-ID:}).  L{HeaderBlock} watches the lines until the empty line that ends
the header block and keeps only the fields asked for, unfolded.

This module must never hold more than L{MAX_KEPT} bytes of header text, never change
the bytes that are stored, and never raise on malformed input: a message with a broken
header block is still the device's message, and the policy decides what to do with it.
"""

from __future__ import annotations

import email.header
import email.utils
import re

import attrs

__all__ = ["HeaderBlock", "MAX_KEPT", "WATCHED"]

#: The fields whose values are kept (lower case); only their names are remembered, so
#: that a block of a million distinct names costs nothing.
WATCHED = frozenset({"from", "sender", "subject", "message-id", "date", "content-type"})

#: RFC 5322 3.6.8 ftext: printable US-ASCII except the colon.
_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+")

#: At most this many bytes of watched field values are kept, whatever the message holds.
MAX_KEPT = 16 * 1024


@attrs.define
class HeaderBlock:
    """
    What the header block of one message holds, fed line by line (CRLF-terminated wire
    lines, dot-stuffing already removed).
    """

    #: Every L{WATCHED} field name seen, lower case.
    names: set[str] = attrs.field(factory=set)
    #: Unfolded raw values of the L{WATCHED} fields, in order of appearance.
    values: dict[str, list[str]] = attrs.field(factory=dict)
    #: The empty line ending the header block was seen (or a line that cannot be a
    #: header field, which ends it for an RFC 5322 reader: see L{malformed}).
    done: bool = False
    #: When the block ended at a line that is not a field rather than at the empty
    #: line: which line and why.  Readers disagree about such a block (Python's
    #: C{email} takes C{":x"} for a field and reads the fields after it), so a rule
    #: over C{From:} must refuse it rather than trust the fields seen before.
    malformed: str | None = None
    #: Watched fields with a value (or part of one) not kept, past L{MAX_KEPT}: a rule
    #: over such a field must not take what was kept for the whole of it.
    dropped: set[str] = attrs.field(factory=set)
    _current: str | None = None
    _kept: int = 0
    _lines: int = 0

    def feed(self, data: bytes) -> None:
        """Look at one or more complete lines of the message."""
        if self.done:
            return
        for line in data.splitlines():
            self._line(line)
            if self.done:
                return

    def _line(self, line: bytes) -> None:
        self._lines += 1
        if not line:
            self.done = True
            return
        if line[:1] in (b" ", b"\t"):
            if self._current is None:
                # Before any field: one parser skips it, another takes it for the body,
                # a third for a field with the spaces stripped.
                self._malformed("is a continuation line before any field")
            elif self._current in WATCHED and line.strip(b" \t"):
                self._keep(self._current, line.decode("utf-8", "replace"), continued=True)
            return
        name, colon, value = line.partition(b":")
        # RFC 5322 3.6.8 field name, and 4.5 (obsolete syntax): spaces may stand
        # between the name and the colon, so "From :" and "From\t:" are From: fields.
        name = name.rstrip(b" \t")
        if not colon:
            if self._lines == 1 and not line.startswith(b"From "):
                # The message starts with its body (no header block at all): there is
                # nothing a reader could take for a field before it, and the relay
                # puts its Date:, Message-ID: and the empty line in front of it.  (A
                # first "From " line is an mbox envelope line to Python's email, which
                # then reads the fields after it.)
                self.done = True
            else:
                self._malformed("has no colon (it is not a header field)")
            return
        if not name:
            self._malformed("has an empty field name")
            return
        if not _FIELD_NAME.fullmatch(name):
            self._malformed("has a field name with a space or a character outside "
                            "printable US-ASCII")
            return
        key = name.decode("ascii").lower()
        self._current = key
        if key in WATCHED:
            self.names.add(key)
            self._keep(key, value.decode("utf-8", "replace").strip(), continued=False)

    def _malformed(self, why: str) -> None:
        """
        A line that is not a header field ends the block here (RFC 5322 readers take it
        as the start of the body), but lenient readers go on reading fields past it, so
        what it was is kept: a rule about header fields cannot trust the block.
        """
        self.done = True
        self._current = None
        self.malformed = f"line {self._lines} of the header block {why}"

    def _keep(self, key: str, text: str, continued: bool) -> None:
        if self._kept + len(text) > MAX_KEPT:
            self.dropped.add(key)
            return
        self._kept += len(text)
        fields = self.values.setdefault(key, [])
        if continued and fields:
            fields[-1] = f"{fields[-1]} {text.strip()}".strip()
        elif not continued:
            fields.append(text)

    def has(self, name: str) -> bool:
        """Whether the header block holds a field of this name (any case)."""
        return name.lower() in self.names

    def first(self, name: str) -> str | None:
        """The first value of a watched field, unfolded, undecoded; None when absent."""
        values = self.values.get(name.lower())
        return values[0] if values else None

    def decoded(self, name: str) -> str | None:
        """The first value of a watched field with RFC 2047 encoded words decoded."""
        raw = self.first(name)
        if raw is None:
            return None
        try:
            return str(email.header.make_header(email.header.decode_header(raw)))
        except Exception:
            return raw

    def addresses(self, name: str) -> list[str]:
        """
        The addresses named in every field of this name (C{From:} may hold several),
        lower-cased; an unparseable field gives its raw text, so that a rule comparing
        addresses refuses it rather than skipping it.
        """
        found: list[str] = []
        for raw in self.values.get(name.lower(), []):
            parsed = [address for _, address in email.utils.getaddresses([raw])
                      if address]
            found.extend(a.lower() for a in parsed) if parsed else found.append(raw)
        return found
