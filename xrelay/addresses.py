"""
Envelope address patterns, shared by relay policy (which senders a user may use) and
routing (which account carries which sender).

A pattern is a case-insensitive glob over the whole address: C{"scanner@example.com"},
C{"*@example.com"}, C{"*@*.example.com"}, C{"*"}.  Matching never decides whether an
address is well formed; the inbound side refuses malformed and tricky addresses first.
"""

from __future__ import annotations

import fnmatch
import re

import attrs

# Only the glob characters we document; brackets would let "[" in a pattern written as
# a literal address silently mean something else.
_PATTERN_CHARS = re.compile(r"^[^\s\[\]<>]+$")


#: The pattern that stands for the null reverse-path, C{MAIL FROM:<>}.
NULL_SENDER = "<>"


class InvalidPattern(ValueError):
    """A sender pattern that cannot be used."""


@attrs.frozen
class SenderPattern:
    """One compiled sender pattern."""

    text: str
    _regex: "re.Pattern[str]" = attrs.field(repr=False, eq=False)

    @classmethod
    def parse(cls, text: str) -> "SenderPattern":
        if text == NULL_SENDER:
            # The null sender, allowed only where it is named: it matches nothing else.
            return cls(text, re.compile(r"\Z"))
        if not text or not _PATTERN_CHARS.match(text):
            raise InvalidPattern(
                f"{text!r} is not a sender pattern; write an address such as "
                '"scanner@example.com", "*@example.com" or "*"'
            )
        if text != "*" and "@" not in text:
            raise InvalidPattern(
                f"{text!r} has no @; write \"*@{text}\" to allow a whole domain"
            )
        return cls(text, re.compile(fnmatch.translate(text.lower())))

    def matches(self, address: str) -> bool:
        return self._regex.match(address.lower()) is not None


def matches_any(patterns: "tuple[SenderPattern, ...]", address: str) -> bool:
    """Whether the address matches at least one of the patterns."""
    return any(p.matches(address) for p in patterns)
