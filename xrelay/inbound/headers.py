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

import attrs

__all__ = ["HeaderBlock", "MAX_KEPT", "WATCHED"]

#: The fields whose values are kept (lower case).  Every field name is remembered.
WATCHED = frozenset({"from", "sender", "subject", "message-id", "date", "content-type"})

#: At most this many bytes of watched field values are kept, whatever the message holds.
MAX_KEPT = 16 * 1024


@attrs.define
class HeaderBlock:
    """
    What the header block of one message holds, fed line by line (CRLF-terminated wire
    lines, dot-stuffing already removed).
    """

    #: Every field name seen, lower case.
    names: set[str] = attrs.field(factory=set)
    #: Unfolded raw values of the L{WATCHED} fields, in order of appearance.
    values: dict[str, list[str]] = attrs.field(factory=dict)
    #: The empty line ending the header block was seen (or a line that cannot be a
    #: header field, which ends it the same way for a lenient reader).
    done: bool = False
    #: Watched fields with a value (or part of one) not kept, past L{MAX_KEPT}: a rule
    #: over such a field must not take what was kept for the whole of it.
    dropped: set[str] = attrs.field(factory=set)
    _current: str | None = None
    _kept: int = 0

    def feed(self, data: bytes) -> None:
        """Look at one or more complete lines of the message."""
        if self.done:
            return
        for line in data.splitlines():
            self._line(line)
            if self.done:
                return

    def _line(self, line: bytes) -> None:
        if not line.strip(b" \t"):
            if not line:
                self.done = True
                return
            if self._current is None:  # whitespace before any field: not a header
                self.done = True
            return
        if line[:1] in (b" ", b"\t"):
            if self._current is not None and self._current in WATCHED:
                self._keep(self._current, line.decode("utf-8", "replace"), continued=True)
            return
        name, colon, value = line.partition(b":")
        if not colon or not name or b" " in name.strip() or b"\t" in name:
            # Not a field: RFC 5322 readers take it as the start of the body.
            self.done = True
            self._current = None
            return
        key = name.strip().decode("ascii", "replace").lower()
        self.names.add(key)
        self._current = key
        if key in WATCHED:
            self._keep(key, value.decode("utf-8", "replace").strip(), continued=False)

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
