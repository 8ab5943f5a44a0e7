"""
The device inventory's SQLite file (C{state_dir/devices.sqlite}): merging gathered
changes into it, keeping it bounded, setting a corrupt one aside, and reading it.

One L{DeviceStore} is the only writer (the collector's writes, in a thread); readers
(L{read_devices}: C{xrelay devices} with the daemon stopped, the admin page) open the
file read-only.  Like the message history it is a convenience: WAL with
C{synchronous=NORMAL} (no fsync per write), and a file that cannot be read is moved
aside (C{devices.sqlite.corrupt}) with one warning and a new one started, never a
relay that does not start.

Bounded: at most C{limit} devices (those seen least recently are forgotten first) and
none older than C{days}; each row is bounded by L{xrelay.devices.records}.  The file
holds client addresses and user names: it is created readable by the relay's user only.

This module must never raise out of L{DeviceStore.merge}: a database problem costs the
inventory a batch, never mail.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import urllib.parse
from typing import Any, Callable, Iterable, Iterator

from xrelay.devices.records import FAILING, OK, STATES, Device

__all__ = ["DeviceStore", "InventoryMissing", "devices_path", "read_devices", "outcomes",
           "MAX_DEVICES"]

#: Devices kept at most (those seen least recently are forgotten first).
MAX_DEVICES = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS device (
    address TEXT NOT NULL,
    user TEXT NOT NULL,
    last_seen REAL NOT NULL,
    failing INTEGER NOT NULL DEFAULT 0,
    record TEXT NOT NULL,
    PRIMARY KEY (address, user)
);
CREATE INDEX IF NOT EXISTS device_last_seen ON device (last_seen);
"""

Warn = Callable[[str], None]


def devices_path(state_dir: str) -> str:
    """Where the relay keeps its device inventory."""
    return os.path.join(state_dir, "devices.sqlite")


class InventoryMissing(Exception):
    """The inventory cannot be read; the text says why and what to do."""


class DeviceStore:
    """
    The writer's connection to the inventory at C{path}.

    @param warn: called with a sentence for the operator when the file had to be set
        aside or a batch was lost.
    @param limit: devices kept at most.
    """

    def __init__(self, path: str, warn: Warn, limit: int = MAX_DEVICES) -> None:
        self.path = path
        self.warn = warn
        self.limit = limit
        self.db: sqlite3.Connection | None = None
        #: A lost batch was reported and none has been written since: say it once.
        self.failing = False

    def open(self) -> None:
        """Open (creating it, or setting a corrupt file aside) and check the file."""
        try:
            self._connect()
            row = self.db.execute("PRAGMA quick_check").fetchone()  # type: ignore[union-attr]
            if row is None or row[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check: {row[0] if row else '?'}")
            for (text,) in self.db.execute("SELECT record FROM device LIMIT 1"):  # type: ignore[union-attr]
                Device.from_stored(json.loads(text))
        except (sqlite3.DatabaseError, ValueError, TypeError) as e:
            self._set_aside(f"the device inventory {self.path} is unreadable ({e}); moved "
                            f"it aside to {self.path}.corrupt and started a new one")

    def _connect(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout = 5000")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            db.executescript(SCHEMA)
        except BaseException:
            db.close()
            raise
        self.db = db

    def close(self) -> None:
        if self.db is not None:
            with contextlib.suppress(sqlite3.Error):
                self.db.close()
            self.db = None

    def _set_aside(self, why: str) -> None:
        self.warn(why)
        self.close()
        with contextlib.suppress(FileNotFoundError):
            os.replace(self.path, self.path + ".corrupt")
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path + suffix)
        self._connect()

    # -- writing -------------------------------------------------------------------

    def merge(self, changes: Iterable[Device], now: float, days: float) -> dict[str, int]:
        """
        Fold the gathered changes into their rows in one transaction, then forget
        devices not seen for C{days} and those beyond the limit.  Returns the devices
        per state afterwards (for the metrics); C{{}} when the batch was lost.
        """
        try:
            if self.db is None:
                self.open()
            counts = self._merge(list(changes), now, days)
        except (sqlite3.Error, OSError, ValueError, TypeError) as e:
            if not self.failing:
                self.warn(f"device inventory: changes are lost until {self.path} can be "
                          f"written again ({e}); mail is not affected")
            self.failing = True
            self.close()
            return {}
        if self.failing:
            self.warn(f"device inventory: {self.path} is written again")
            self.failing = False
        return counts

    def _merge(self, changes: list[Device], now: float, days: float) -> dict[str, int]:
        db = self.db
        assert db is not None
        db.execute("BEGIN IMMEDIATE")
        try:
            for change in changes:
                row = db.execute("SELECT record FROM device WHERE address = ? AND user = ?",
                                 change.key).fetchone()
                if row is not None:
                    device = Device.from_stored(json.loads(row[0]))
                    device.merge(change)
                else:
                    device = change
                db.execute("INSERT OR REPLACE INTO device (address, user, last_seen, "
                           "failing, record) VALUES (?, ?, ?, ?, ?)",
                           (device.address, device.user, device.last_seen,
                            int(device.failing), json.dumps(device.stored())))
            if days > 0:
                db.execute("DELETE FROM device WHERE last_seen < ?", (now - days * 86400,))
            db.execute("DELETE FROM device WHERE rowid IN (SELECT rowid FROM device "
                       "ORDER BY last_seen DESC LIMIT -1 OFFSET ?)", (self.limit,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
            raise
        counts = dict.fromkeys(STATES, 0)
        for failing, count in db.execute("SELECT failing, count(*) FROM device "
                                         "GROUP BY failing"):
            counts[FAILING if failing else OK] += count
        return counts

    def count(self) -> int:
        assert self.db is not None
        return int(self.db.execute("SELECT count(*) FROM device").fetchone()[0])


def _rows(db: sqlite3.Connection, query: str, *values: Any) -> Iterator[Device]:
    for (text,) in db.execute(query, values):
        try:
            yield Device.from_stored(json.loads(text))
        except (ValueError, TypeError):
            continue  # one unreadable row never hides the others


def read_devices(path: str, history: str | None = None) -> list[Device]:
    """
    Every device in the inventory at C{path} (read-only), failing ones first, then the
    most recently seen; with C{history}, the message trace's file, their delivered and
    bounced counts filled in from it.

    @raise InventoryMissing: no inventory there, or it cannot be read.
    """
    if not os.path.exists(path):
        raise InventoryMissing(
            f"no device inventory at {path} yet: the relay writes it once a client has "
            "sent or been refused (and relay.device_inventory is true)")
    uri = f"file:{urllib.parse.quote(os.path.abspath(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            devices = list(_rows(db, "SELECT record FROM device"))
        finally:
            db.close()
    except sqlite3.Error as e:
        raise InventoryMissing(f"the device inventory {path} cannot be read ({e}); the "
                               "relay sets a corrupt one aside at its next start") from None
    if history is not None:
        counts = outcomes(history)
        for device in devices:
            device.delivered, device.bounced = counts.get(device.key, (0, 0))
    devices.sort(key=lambda d: (not d.failing, -d.last_seen))
    return devices


def outcomes(history: str) -> dict[tuple[str, str], tuple[int, int]]:
    """
    (client address, user) -> (messages delivered, messages bounced), from the message
    trace: the inventory maps a message to its device through the trace's record of
    who sent it, so the delivery engine needs to know nothing about devices.  Empty
    when there is no trace (C{delivery.history_days = 0}) or it cannot be read.
    """
    from xrelay.history.records import BOUNCED, DELIVERED, EXPIRED, HANDED_BACK

    if not os.path.exists(history):
        return {}
    uri = f"file:{urllib.parse.quote(os.path.abspath(history))}?mode=ro"
    out: dict[tuple[str, str], tuple[int, int]] = {}
    try:
        db = sqlite3.connect(uri, uri=True, timeout=5.0)
        try:
            rows = db.execute(
                "SELECT client, COALESCE(user, ''), status, count(*) FROM message "
                "WHERE bounce_of IS NULL AND status IN (?, ?, ?, ?) "
                "GROUP BY client, COALESCE(user, ''), status",
                (DELIVERED, BOUNCED, EXPIRED, HANDED_BACK)).fetchall()
        finally:
            db.close()
    except sqlite3.Error:
        return {}
    for client, user, status, count in rows:
        delivered, bounced = out.get((client, user), (0, 0))
        if status == DELIVERED:
            delivered += count
        else:
            bounced += count
        out[client, user] = (delivered, bounced)
    return out
