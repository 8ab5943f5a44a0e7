"""
The message trace's SQLite database: its schema, the writes, pruning, and recovery from
a database that was deleted, replaced or corrupted.

One L{HistoryStore} is the only writer (the history's writer thread, or a stopped
daemon's C{xrelay} command); readers open the file read-only (L{xrelay.history.query}).
WAL mode lets readers and the writer work at once; C{synchronous=NORMAL} because the
trace is a convenience: it must never cost an fsync per message, and losing the last
moment of it to a power cut is acceptable.

This module must never raise out of L{HistoryStore.write} or L{HistoryStore.prune}: a
problem with the database is a warning (through the C{warn} callable given) and a
fresh database, never a stop of mail.  The file holds addresses and subjects: it is
created readable by the relay's user only.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Callable, Iterable, Sequence

from xrelay.history.records import (BOUNCED, DELIVERED, EXPIRED, HANDED_BACK, WAITING,
                                    AcceptedMessage, upstream_id)
from xrelay.statefiles import regular_file_problem, set_aside

__all__ = ["HistoryStore", "SCHEMA_VERSION", "entry_time"]

SCHEMA_VERSION = 1

SCHEMA = """
CREATE TABLE IF NOT EXISTS message (
    entry_id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    client TEXT,
    user TEXT,
    sender TEXT,
    recipients TEXT NOT NULL DEFAULT '[]',
    subject TEXT,
    message_id TEXT,
    size INTEGER,
    account TEXT,
    bounce_of TEXT,
    status TEXT NOT NULL DEFAULT 'waiting',
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_attempt_at REAL,
    last_reply TEXT,
    upstream_id TEXT
);
CREATE INDEX IF NOT EXISTS message_received ON message (received_at);
CREATE INDEX IF NOT EXISTS message_bounce_of ON message (bounce_of);
CREATE TABLE IF NOT EXISTS recipient (
    entry_id TEXT NOT NULL,
    address TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS recipient_entry ON recipient (entry_id);
CREATE TABLE IF NOT EXISTS attempt (
    entry_id TEXT NOT NULL,
    at REAL NOT NULL,
    account TEXT,
    outcome TEXT NOT NULL,
    reply TEXT,
    upstream_id TEXT,
    recipients TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS attempt_entry ON attempt (entry_id);
"""

#: The engine's attempt outcomes that finish a message, and what they finish it as.
_FINAL = {"delivered": DELIVERED, "failed": BOUNCED, "handed back": HANDED_BACK}

Warn = Callable[[str], None]


def _no_room(error: BaseException) -> bool:
    """SQLite could not write for lack of space (or an I/O error): not a bad file."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
                                            sqlite3.SQLITE_CANTOPEN):
        return True
    text = str(error)
    return "disk is full" in text or "disk I/O error" in text or "unable to open" in text


def entry_time(entry_id: str) -> float:
    """When an entry was received, from its id; now when the id does not tell."""
    from xrelay.lifecycle import entry_received_at

    return entry_received_at(entry_id) or time.time()


class HistoryStore:
    """
    The writer's connection to the database at C{path}.

    @param warn: called with a sentence for the operator when the database had to be
        recreated or a write was lost.
    @param subjects: record C{Subject:} (C{delivery.history_subject}).
    @param message_ids: record C{Message-ID:} (C{delivery.history_message_id}).
    """

    def __init__(self, path: str, warn: Warn, subjects: bool = True,
                 message_ids: bool = True) -> None:
        self.path = path
        self.warn = warn
        self.subjects = subjects
        self.message_ids = message_ids
        self.db: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None

    # -- the file ----------------------------------------------------------------

    def open(self, create: bool = True) -> None:
        """Open (creating, or recreating a corrupt file) and check the database."""
        if not create and not os.path.exists(self.path):
            raise FileNotFoundError(self.path)
        try:
            self._connect()  # sets self.db (the ignore: mypy cannot see that)
            row = self.db.execute("PRAGMA quick_check").fetchone()  # type: ignore[union-attr]
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else '?'}")
        except sqlite3.DatabaseError as e:
            if _no_room(e):
                self.close()
                raise  # not the file's fault: the writer tries again later
            self._recreate(f"the message history {self.path} is unreadable ({e}); "
                           "moved it aside and started a new one")

    def _connect(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        problem = regular_file_problem(self.path)
        if problem is not None:
            set_aside(self.path, problem, "the trace of earlier messages is not shown; a "
                      "new history is started")
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except BaseException:
            db.close()
            raise
        self.db = db
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)

    def close(self) -> None:
        if self.db is not None:
            try:
                self.db.close()
            except sqlite3.Error:
                pass
            self.db = None

    def _recreate(self, why: str) -> None:
        """Move a bad file aside (the last one is kept for inspection) and start anew."""
        self.warn(why)
        self.close()
        try:
            os.replace(self.path, self.path + ".corrupt")
        except FileNotFoundError:
            pass
        for suffix in ("-wal", "-shm"):
            try:
                os.unlink(self.path + suffix)
            except FileNotFoundError:
                pass
        self._connect()

    def _check_file(self) -> None:
        """Reopen when the file was deleted or replaced under the open connection."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.close()
            self.warn(f"the message history {self.path} was removed; started a new one")
            self._connect()
            return
        if (st.st_dev, st.st_ino) != self._identity:
            self.close()
            self.warn(f"the message history {self.path} was replaced; using the new file")
            self.open()

    # -- writing -----------------------------------------------------------------

    def write(self, records: Sequence[tuple[str, tuple[Any, ...]]]) -> str | None:
        """
        Write a batch of C{(kind, arguments)} records in one transaction.

        Returns C{None} when they are written (or lost, with a warning), or the reason
        they could not be written for now (no space, the file cannot be opened): the
        caller keeps them and tries again later; nothing is warned then.
        """
        for attempt in (1, 2):
            try:
                if self.db is None:
                    self._connect()
                else:
                    self._check_file()
                db = self.db
                assert db is not None
                db.execute("BEGIN")
                try:
                    for kind, arguments in records:
                        getattr(self, "_" + kind)(db, *arguments)
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
                return None
            except sqlite3.OperationalError as e:
                text = str(e)
                if attempt == 1 and ("no such table" in text or "no such column" in text):
                    self.close()
                    self.warn(f"the message history {self.path} lacks its tables "
                              f"({text}); recreating them")
                    continue
                if _no_room(e):
                    self.close()
                    return text
                self.warn(f"{len(records)} message history records not written to "
                          f"{self.path}: {text}; mail is not affected (check the disk "
                          "and the file's permissions)")
                return None
            except sqlite3.DatabaseError as e:
                if attempt == 1:
                    try:
                        self._recreate(f"the message history {self.path} is corrupt "
                                       f"({e}); moved it aside and started a new one")
                    except (OSError, sqlite3.Error) as again:
                        if isinstance(again, OSError) or _no_room(again):
                            self.db = None
                            return f"cannot recreate it: {again}"
                        self.warn(f"cannot recreate the message history {self.path}: "
                                  f"{again}")
                        return None
                    continue
                self.warn(f"{len(records)} message history records lost: {e}")
                return None
            except OSError as e:
                self.db = None
                return f"cannot open it: {e.strerror or e}"
        return None

    def prune(self, before: float) -> int:
        """Forget the messages received before C{before} (and their attempts)."""
        try:
            if self.db is None:
                self._connect()
            db = self.db
            assert db is not None
            old = "SELECT entry_id FROM message WHERE received_at < ?"
            db.execute("BEGIN")
            db.execute(f"DELETE FROM attempt WHERE entry_id IN ({old})", (before,))
            db.execute(f"DELETE FROM recipient WHERE entry_id IN ({old})", (before,))
            count = db.execute("DELETE FROM message WHERE received_at < ?",
                               (before,)).rowcount
            db.execute("COMMIT")
            return count
        except (sqlite3.Error, OSError) as e:
            if self.db is not None and self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            self.warn(f"could not prune the message history {self.path}: {e}")
            return 0

    def prune_to_size(self, max_bytes: int) -> int:
        """
        Forget the oldest messages until the database's used pages fit in
        C{max_bytes} (the free pages are reused by later writes, so the file stops
        growing there; nothing is rewritten, which would need as much space again).
        Returns how many messages were forgotten.
        """
        if max_bytes <= 0:
            return 0
        forgotten = 0
        try:
            if self.db is None:
                self._connect()
            db = self.db
            assert db is not None
            page_size = db.execute("PRAGMA page_size").fetchone()[0]
            for _ in range(100):  # a bound, not a loop for ever on a strange file
                pages, free = (db.execute("PRAGMA page_count").fetchone()[0],
                               db.execute("PRAGMA freelist_count").fetchone()[0])
                if (pages - free) * page_size <= max_bytes:
                    break
                total = db.execute("SELECT count(*) FROM message").fetchone()[0]
                if not total:
                    break
                # A tenth at a time, oldest first, then look again.
                cut = db.execute(
                    "SELECT received_at FROM message ORDER BY received_at LIMIT 1 "
                    "OFFSET ?", (max(total // 10, 1) - 1,)).fetchone()[0]
                forgotten += self._forget_up_to(db, cut)
            return forgotten
        except (sqlite3.Error, OSError) as e:
            if self.db is not None and self.db.in_transaction:
                try:
                    self.db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            if not _no_room(e):
                self.warn(f"could not bound the message history {self.path}: {e}")
            return forgotten

    def _forget_up_to(self, db: sqlite3.Connection, cut: float) -> int:
        old = "SELECT entry_id FROM message WHERE received_at <= ?"
        db.execute("BEGIN")
        db.execute(f"DELETE FROM attempt WHERE entry_id IN ({old})", (cut,))
        db.execute(f"DELETE FROM recipient WHERE entry_id IN ({old})", (cut,))
        count = int(db.execute("DELETE FROM message WHERE received_at <= ?",
                               (cut,)).rowcount)
        db.execute("COMMIT")
        return count

    # -- the records (called inside write's transaction) ---------------------------

    def _received(self, db: sqlite3.Connection, message: AcceptedMessage) -> None:
        subject = message_id = None
        if message.headers is not None:
            if self.subjects:
                subject = message.headers.decoded("subject")
            if self.message_ids:
                message_id = message.headers.first("message-id")
        db.execute(
            "INSERT INTO message (entry_id, received_at, client, user, sender, recipients,"
            " subject, message_id, size, account) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (entry_id) DO UPDATE SET received_at = excluded.received_at,"
            " client = excluded.client, user = excluded.user, sender = excluded.sender,"
            " recipients = excluded.recipients, subject = excluded.subject,"
            " message_id = excluded.message_id, size = excluded.size,"
            " account = excluded.account",
            (message.entry_id, message.received_at, message.client_address, message.user,
             message.sender, json.dumps(list(message.recipients)), subject, message_id,
             message.size, message.account))
        self._recipients(db, message.entry_id, message.recipients)

    def _recipients(self, db: sqlite3.Connection, entry_id: str,
                    recipients: Iterable[str]) -> None:
        db.execute("DELETE FROM recipient WHERE entry_id = ?", (entry_id,))
        db.executemany("INSERT INTO recipient (entry_id, address) VALUES (?, ?)",
                       [(entry_id, r.lower()) for r in recipients])

    def _known(self, db: sqlite3.Connection, entry_id: str, sender: str,
               account: str) -> None:
        """A row for an entry the history did not see arrive (older, or a new file)."""
        db.execute("INSERT OR IGNORE INTO message (entry_id, received_at, sender, account)"
                   " VALUES (?, ?, ?, ?)", (entry_id, entry_time(entry_id), sender, account))

    def _attempted(self, db: sqlite3.Connection, entry_id: str, sender: str, account: str,
                   at: float, outcome: str, reply: str,
                   recipients: list[tuple[str, str, str]]) -> None:
        self._known(db, entry_id, sender, account)
        upstream = upstream_id(reply) or next(
            (upstream_id(r[2]) for r in recipients if upstream_id(r[2])), None)
        db.execute("INSERT INTO attempt (entry_id, at, account, outcome, reply, upstream_id,"
                   " recipients) VALUES (?, ?, ?, ?, ?, ?, ?)",
                   (entry_id, at, account, outcome, reply, upstream,
                    json.dumps([list(r) for r in recipients])))
        final = _FINAL.get(outcome)
        if final == BOUNCED and recipients and all(r[1] == EXPIRED for r in recipients
                                                   if r[1] != DELIVERED):
            final = EXPIRED
        db.execute("UPDATE message SET attempts = attempts + 1, last_attempt_at = ?,"
                   " sender = COALESCE(NULLIF(sender, ''), ?), last_reply = ?, upstream_id = COALESCE(?, upstream_id),"
                   " status = COALESCE(?, status), finished_at = COALESCE(?, finished_at)"
                   " WHERE entry_id = ?",
                   (at, sender, reply, upstream, final, at if final else None, entry_id))

    def _bounced(self, db: sqlite3.Connection, entry_id: str, bounce_id: str,
                 to: list[str], account: str, sender: str, at: float) -> None:
        db.execute("INSERT OR IGNORE INTO message (entry_id, received_at, sender, recipients,"
                   " account, bounce_of) VALUES (?, ?, ?, ?, ?, ?)",
                   (bounce_id, at, sender, json.dumps(to), account, entry_id))
        self._recipients(db, bounce_id, to)

    def _finished(self, db: sqlite3.Connection, entry_id: str, outcome: str,
                  at: float) -> None:
        db.execute("INSERT OR IGNORE INTO message (entry_id, received_at) VALUES (?, ?)",
                   (entry_id, entry_time(entry_id)))
        db.execute("UPDATE message SET status = ?, finished_at = ? WHERE entry_id = ? AND"
                   " status = ?", (outcome, at, entry_id, WAITING))
