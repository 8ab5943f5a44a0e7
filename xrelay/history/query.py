"""
Reading the message trace: a search (C{xrelay trace --from ... --since ...}, the admin
page's Trace page) and the whole story of one message (C{xrelay trace ID}).

Readers open the database read-only, so that they work beside a running daemon (WAL
lets a reader and the writer work at once) and on a stopped one's state directory
alike; they never create, change or repair the file (the writer does that).  Queries
are blocking: the admin page runs them in a thread.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import sqlite3
import time
import urllib.parse
from typing import Any, Iterator

import attrs

from xrelay.history.records import STATUS_GROUPS, status_group

__all__ = ["Attempt", "HistoryMissing", "MessageStory", "MessageTrace", "TraceQuery",
           "parse_since", "search", "story"]

#: Results of one search at most (newest first).
DEFAULT_LIMIT = 200

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.I)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_FORMATS = ("%Y-%m-%d", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M:%S",
                 "%Y-%m-%dT%H:%M:%S")


class HistoryMissing(Exception):
    """The history cannot be read; the text says why and what to do."""


def parse_since(text: str, now: float | None = None) -> float:
    """
    C{2h}, C{30m}, C{3d}, C{1w} (that long ago) or a date C{2026-12-01} / C{2026-12-01
    14:30} in the server's local time, as POSIX seconds.

    @raise ValueError: with a sentence naming the accepted forms.
    """
    now = time.time() if now is None else now
    match = _RELATIVE.match(text)
    if match:
        return now - float(match.group(1)) * _UNITS[match.group(2).lower()]
    for fmt in _DATE_FORMATS:
        try:
            return time.mktime(time.strptime(text.strip(), fmt))
        except ValueError:
            continue
    raise ValueError(f"--since {text!r}: give a duration (30m, 2h, 3d, 1w) or a local "
                     "date and time (2026-12-01 or 2026-12-01 14:30)")


def like_pattern(text: str) -> str:
    """
    An SQL LIKE pattern (escape C{\\}) for a user's pattern: C{*} and C{?} are wildcards
    when given (C{*@example.com}); plain text matches anywhere (C{scanner}).
    """
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if "*" in text or "?" in text:
        return escaped.replace("*", "%").replace("?", "_")
    return f"%{escaped}%"


@attrs.frozen
class TraceQuery:
    """What to look for; every field is optional and they all must match."""

    sender: str | None = None
    recipient: str | None = None
    subject: str | None = None
    since: float | None = None
    status: str | None = None
    limit: int = DEFAULT_LIMIT
    #: The client's address, exactly (a device's messages, from the Devices page).
    client: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.status is not None and self.status not in STATUS_GROUPS:
            raise ValueError(f"status {self.status!r}: one of "
                             f"{', '.join(STATUS_GROUPS)}")

    def where(self) -> tuple[str, list[Any]]:
        clauses: list[str] = ["m.bounce_of IS NULL"]
        values: list[str | float] = []
        if self.sender:
            clauses.append("m.sender LIKE ? ESCAPE '\\'")
            values.append(like_pattern(self.sender))
        if self.recipient:
            clauses.append("EXISTS (SELECT 1 FROM recipient r WHERE r.entry_id = m.entry_id"
                           " AND r.address LIKE ? ESCAPE '\\')")
            values.append(like_pattern(self.recipient))
        if self.subject:
            clauses.append("m.subject LIKE ? ESCAPE '\\'")
            values.append(like_pattern(self.subject))
        if self.client:
            clauses.append("m.client = ?")
            values.append(self.client)
        if self.since is not None:
            clauses.append("m.received_at >= ?")
            values.append(self.since)
        if self.status:
            outcomes = STATUS_GROUPS[self.status]
            clauses.append(f"m.status IN ({', '.join('?' for _ in outcomes)})")
            values.extend(outcomes)
        return " AND ".join(clauses), values


@attrs.frozen
class MessageTrace:
    """One message as the trace lists it."""

    entry_id: str
    received_at: float
    client: str | None
    user: str | None
    sender: str | None
    recipients: tuple[str, ...]
    subject: str | None
    message_id: str | None
    size: int | None
    account: str | None
    bounce_of: str | None
    #: "waiting", or how it ended: "delivered", "bounced", "expired", "handed back",
    #: "deleted".
    outcome: str
    finished_at: float | None
    attempts: int
    last_attempt_at: float | None
    last_reply: str | None
    #: The upstream's id of the message (Exchange: look it up in its message trace).
    upstream_id: str | None

    @property
    def status(self) -> str:
        """delivered, failed or waiting (what C{--status} selects)."""
        return status_group(self.outcome)

    def as_json(self) -> dict[str, Any]:
        data = attrs.asdict(self)
        data["recipients"] = list(self.recipients)
        data["status"] = self.status
        return data


@attrs.frozen
class Attempt:
    """One delivery attempt of a message."""

    at: float
    account: str | None
    outcome: str
    reply: str | None
    upstream_id: str | None
    #: (recipient, what became of it, the upstream's reply for it)
    recipients: tuple[tuple[str, str, str], ...]

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "account": self.account, "outcome": self.outcome,
                "reply": self.reply, "upstream_id": self.upstream_id,
                "recipients": [{"recipient": r, "outcome": o, "reply": t}
                               for r, o, t in self.recipients]}


@attrs.frozen
class MessageStory:
    """Everything the trace knows of one message: its arrival, attempts, bounces."""

    message: MessageTrace
    attempts: tuple[Attempt, ...]
    #: The bounces sent for it, each with its own attempts.
    bounces: tuple[tuple[MessageTrace, tuple[Attempt, ...]], ...]

    def as_json(self) -> dict[str, Any]:
        data = self.message.as_json()
        data["attempt_list"] = [a.as_json() for a in self.attempts]
        data["bounces"] = [dict(b.as_json(), attempt_list=[a.as_json() for a in attempts])
                           for b, attempts in self.bounces]
        return data


_COLUMNS = ("entry_id, received_at, client, user, sender, recipients, subject, message_id,"
            " size, account, bounce_of, status, finished_at, attempts, last_attempt_at,"
            " last_reply, upstream_id")


def _trace(row: tuple[Any, ...]) -> MessageTrace:
    values = list(row)
    try:
        values[5] = tuple(json.loads(values[5] or "[]"))
    except ValueError:
        values[5] = ()
    return MessageTrace(*values)


def _attempt(row: tuple[Any, ...]) -> Attempt:
    try:
        recipients = tuple(tuple(r) for r in json.loads(row[5] or "[]"))
    except ValueError:
        recipients = ()
    return Attempt(row[0], row[1], row[2], row[3], row[4], recipients)


class _Reader:
    def __init__(self, path: str) -> None:
        if not os.path.exists(path):
            raise HistoryMissing(
                f"no message history at {path} yet: the relay records it while it runs "
                "(unless delivery.history_days = 0); check --config / server.state_dir")
        uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
        try:
            self.db = sqlite3.connect(uri, uri=True, timeout=5.0)
            self.db.execute("PRAGMA query_only = 1")
        except sqlite3.Error as e:
            raise HistoryMissing(f"cannot open the message history {path}: {e}") from None
        self.path = path

    def rows(self, sql: str, values: list[Any] | tuple[Any, ...]) -> list[tuple[Any, ...]]:
        try:
            return self.db.execute(sql, values).fetchall()
        except sqlite3.OperationalError as e:
            if "no such table" in str(e):
                return []  # a brand-new file the writer has not set up yet
            raise HistoryMissing(f"cannot read the message history {self.path}: {e}; "
                                 "run the command as the relay's user") from None
        except sqlite3.DatabaseError as e:
            raise HistoryMissing(f"the message history {self.path} is unreadable ({e}); "
                                 "the relay recreates it at its next write") from None

    def close(self) -> None:
        self.db.close()


@contextlib.contextmanager
def _reading(path: str) -> Iterator[_Reader]:
    reader = _Reader(path)
    try:
        yield reader
    finally:
        reader.close()


def search(path: str, query: TraceQuery) -> list[MessageTrace]:
    """The messages that match, newest first (at most C{query.limit})."""
    with _reading(path) as reader:
        where, values = query.where()
        rows = reader.rows(f"SELECT {_COLUMNS} FROM message m WHERE {where}"
                           " ORDER BY m.received_at DESC, m.entry_id DESC LIMIT ?",
                           values + [max(1, query.limit)])
        return [_trace(r) for r in rows]


def story(path: str, entry_id: str) -> MessageStory | None:
    """Everything about one message, or C{None} when the trace does not know it."""
    with _reading(path) as reader:
        rows = reader.rows(f"SELECT {_COLUMNS} FROM message WHERE entry_id = ?", (entry_id,))
        if not rows:
            return None

        def attempts(of: str) -> tuple[Attempt, ...]:
            return tuple(_attempt(r) for r in reader.rows(
                "SELECT at, account, outcome, reply, upstream_id, recipients FROM attempt"
                " WHERE entry_id = ? ORDER BY at, rowid", (of,)))

        bounces = tuple((b, attempts(b.entry_id)) for b in (_trace(r) for r in reader.rows(
            f"SELECT {_COLUMNS} FROM message WHERE bounce_of = ? ORDER BY received_at",
            (entry_id,))))
        return MessageStory(_trace(rows[0]), attempts(entry_id), bounces)


def local_time(timestamp: float | None) -> str:
    """A time as the operator reads it: the server's local time, with its zone."""
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).astimezone().strftime(
        "%Y-%m-%d %H:%M:%S %Z")
