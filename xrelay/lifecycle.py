"""
The life of a spool entry, shared by every L{xrelay.interfaces.ISpool}: its states, the
one table of transitions between them, and the syntax of entry ids.

Values and pure functions only: this module never touches a file.
"""

from __future__ import annotations

import calendar
import os
import re
import time

from xrelay.statemachine import NoTransition, StateTable

__all__ = [
    "ACTIVE", "CORRUPT", "DEFERRED", "DELIVERED", "ENTRY_ID", "FAILED", "LIFECYCLE",
    "NotAnEntryId", "QUEUED", "RECEIVED", "STATES", "TABLE", "TransitionRefused", "allow",
    "check_entry_id", "entry_received_at", "is_entry_id", "new_entry_id",
]


class NotAnEntryId(ValueError):
    """Text given as an entry id that is not one; C{str()} is the operator's message."""

    def __init__(self, text: object) -> None:
        shown = repr(text if not isinstance(text, str) or len(text) <= 80
                     else text[:80] + "...")
        super().__init__(f"{shown} is not an entry id (ids look like "
                         "20261201T232515.123456-4242-000001; see `xrelay queue list`)")


#: A state change that the lifecycle does not have: the one L{NoTransition} error of
#: every state table, under the name the spool's callers know.
TransitionRefused = NoTransition

#: The live states, in the order an entry normally passes through them.
QUEUED, ACTIVE, DEFERRED, FAILED = "queued", "active", "deferred", "failed"
STATES = (QUEUED, ACTIVE, DEFERRED, FAILED)
#: Where unreadable entries are set aside (not a live state: nothing in it is
#: delivered).
CORRUPT = "corrupt"
#: The two ends of the lifecycle that are not states of an entry: being received, and
#: gone from the spool (delivered, or deleted by the operator, or handed back to a
#: pass-through client).
RECEIVED, DELIVERED = "received", "delivered"

#: The message lifecycle: received -> queued -> active -> deferred -> delivered | failed
#: | corrupt.  Every change of state is one of these; L{ISpool.move} and
#: L{ISpool.remove} refuse anything else.  A state to itself is a rewrite of the record
#: in place (an entry left C{active} by a failed write is taken again from there).
LIFECYCLE: dict[str, frozenset[str]] = {
    RECEIVED: frozenset({QUEUED}),
    QUEUED: frozenset({ACTIVE, DEFERRED, FAILED, DELIVERED, CORRUPT}),
    ACTIVE: frozenset({ACTIVE, QUEUED, DEFERRED, FAILED, DELIVERED, CORRUPT}),
    DEFERRED: frozenset({ACTIVE, QUEUED, DEFERRED, FAILED, DELIVERED, CORRUPT}),
    FAILED: frozenset({DELIVERED, CORRUPT}),
    CORRUPT: frozenset({DELIVERED}),
}

#: The same transitions as a L{StateTable} whose events are named after the state they
#: lead to ("move to active"): L{allow} and every spool ask it.
TABLE: StateTable[str] = StateTable(
    "spool entry", ((old, new, new) for old, news in LIFECYCLE.items() for new in news))

#: Entry ids: UTC time, microseconds, pid, counter (L{new_entry_id}).  Anything else
#: given as an entry id (a path, a NUL, a glob) is refused before storage is touched.
ENTRY_ID = re.compile(r"[0-9]{8}T[0-9]{6}\.[0-9]{6}-[0-9]{1,10}-[0-9]{6}")


def new_entry_id(serial: int) -> str:
    """
    An id sortable by arrival (UTC time first), unique across restarts and processes
    (the pid, and C{serial}: the caller's own counter).
    """
    now = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    micros = int((now % 1) * 1_000_000)
    return f"{stamp}.{micros:06d}-{os.getpid()}-{serial % 1_000_000:06d}"


def is_entry_id(text: object) -> bool:
    return isinstance(text, str) and ENTRY_ID.fullmatch(text) is not None


def check_entry_id(text: object) -> str:
    """
    The text, if it is an entry id.

    @raise NotAnEntryId: otherwise (nothing has been looked at).
    """
    if not is_entry_id(text):
        raise NotAnEntryId(text)
    assert isinstance(text, str)
    return text


def allow(old: str, new: str, entry_id: str) -> None:
    """
    @raise TransitionRefused: when L{LIFECYCLE} has no transition from C{old} to C{new}.
    """
    if not TABLE.allows(old, new):
        raise TransitionRefused(f"{entry_id}: no transition from {old} to {new}", old, new)


def entry_received_at(entry_id: str) -> float | None:
    """
    When a spool entry was received, from its id (C{YYYYmmddTHHMMSS.ffffff-...}, UTC),
    for records that carry the id but not the time.
    """
    try:
        stamp, rest = entry_id.split(".", 1)
        micros = int(rest[:6])
        return calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%S")) + micros / 1e6
    except (ValueError, IndexError):
        return None
