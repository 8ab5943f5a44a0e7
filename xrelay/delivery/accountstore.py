"""
Where an account's provider state is kept across restarts, under C{state_dir/accounts/}:
the daily recipient budget (L{DayBudget}: an append-only journal per account, one short
write and flush per message started, no fsync per message — the page cache survives a
daemon crash, a power loss costs at most the last seconds of counts — rewritten
atomically to the rolling day at start and every so many appends), and the holds in
force (L{HoldStore}: one small JSON file, written atomically on change only).

Storage only: what the records mean is L{xrelay.delivery.accounts}'.  File names are the
account names, percent-encoded; nothing here holds a secret.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from typing import Any, Iterable

import attrs
from twisted.logger import Logger

from xrelay.delivery.scheduler import DAY

log = Logger()


@attrs.define
class DayBudget:
    """
    The recipients each account started in the last day, on disk under
    C{state_dir/accounts/}: the rolling C{recipients_per_day} budget survives restarts.
    """

    directory: str
    #: Open journals, one per account: one write and flush per message started.
    _files: dict[str, Any] = attrs.field(factory=dict, repr=False)
    #: Appends since each journal was last compacted.
    appended: dict[str, int] = attrs.field(factory=dict)

    def _path(self, account: str) -> str:
        return os.path.join(self.directory, urllib.parse.quote(account, safe="") + ".day")

    def load(self, account: str, now: float) -> list[tuple[float, int]]:
        """The records of the last day, oldest first; the file is compacted to them."""
        records: list[tuple[float, int]] = []
        try:
            with open(self._path(account), encoding="ascii", errors="replace") as f:
                for line in f:
                    parts = line.split()
                    try:
                        at, n = float(parts[0]), int(parts[1])
                    except (IndexError, ValueError):
                        continue  # a torn last line after a crash: ignore it
                    if at > now - DAY:
                        records.append((at, n))
        except FileNotFoundError:
            return []
        records.sort()
        self.compact(account, records)
        return records

    def compact(self, account: str, records: Iterable[tuple[float, int]]) -> None:
        """Replace the journal by these records (atomically, fsynced)."""
        self.close(account)
        self._write_all(account, records)
        self.appended[account] = 0

    def close(self, account: str | None = None) -> None:
        for name in [account] if account is not None else list(self._files):
            f = self._files.pop(name, None)
            if f is not None:
                f.close()

    def _write_all(self, account: str, records: Iterable[tuple[float, int]]) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        path = self._path(account)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="ascii") as f:
            f.writelines(f"{at:.3f} {n}\n" for at, n in records)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)

    def record(self, account: str, at: float, recipients: int) -> None:
        try:
            f = self._files.get(account)
            if f is None:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                f = self._files[account] = open(self._path(account), "a", encoding="ascii")
            f.write(f"{at:.3f} {recipients}\n")
            f.flush()
            self.appended[account] = self.appended.get(account, 0) + 1
        except OSError as e:
            self.close(account)
            # Counting must never stop delivery; the in-memory count still holds.
            log.error("cannot record the daily recipient count of account {account}: "
                      "{error}", account=account, error=str(e))


@attrs.define
class HoldStore:
    """The holds in force, in C{state_dir/accounts/holds.json} (written on change only)."""

    directory: str

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "holds.json")

    def load(self) -> dict[str, dict[str, Any]]:
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except (FileNotFoundError, ValueError, OSError):
            return {}
        return data if isinstance(data, dict) else {}

    def save(self, holds: dict[str, Any]) -> None:
        """Write the holds that are in force (C{AccountHold}s not in state "ok")."""
        data = {name: {"state": h.state, "since": h.since, "until": h.until,
                       "backoff": h.backoff, "reason": h.reason, "fix": h.fix}
                for name, h in holds.items() if h.state != "ok"}
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            tmp = self.path + ".tmp"
            with open(tmp, "w", encoding="utf-8") as f:
                json.dump(data, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot record account holds in {path}: {error}", path=self.path,
                      error=str(e))
