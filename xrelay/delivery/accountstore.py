"""
Where an account's provider state is kept across restarts, under C{state_dir/accounts/}:
the daily recipient budget (L{DayBudget}: an append-only journal per account, one short
write per message started, no fsync per message — the page cache survives a daemon
crash, a power loss costs at most the last seconds of counts — rewritten to the rolling
day every so many appends, off the reactor thread), and the holds in force
(L{HoldStore}: one small JSON file, written atomically on change only).

Both follow the state-file rule (L{xrelay.statefiles}): what they read is validated
(finite times, sane counts, the right types); a file that is not what it must be is set
aside with one line and the relay starts without it; nothing is written while starting
(a full disk must not stop a start); a write that fails for lack of space is kept in
memory, logged once, and written when a later write succeeds.

Storage only: what the records mean is L{xrelay.delivery.accounts}'.  File names are the
account names, percent-encoded; nothing here holds a secret.
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.parse
from typing import Any, Callable, Iterable

import attrs
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger

from xrelay.delivery.scheduler import DAY
from xrelay.durable import write_all, write_durably
from xrelay.statefiles import is_full, regular_file_problem, set_aside

log = Logger()

#: A record this far ahead of the clock was written by a clock that ran ahead (or the
#: clock was stepped back since): it is counted as now, never as a day in the future.
FUTURE_SLACK = 300.0
#: More recipients than this in one record is not a count xrelay wrote.
MAX_RECIPIENTS = 1_000_000
#: Records kept in memory while the journal cannot be written (a full disk).
MAX_UNWRITTEN = 100_000

#: What a journal line may look like when it was cut short by a crash or a full disk
#: (a prefix of "<seconds>.<ms> <count>"): ignored without a word.
_TORN = re.compile(r"\d*(\.\d*)?( \d*)?")

Record = tuple[float, int]
InThread = Callable[[Callable[[], Any]], "Deferred[Any]"]


def run_here(f: Callable[[], Any]) -> "Deferred[Any]":
    """Run blocking work at once (tests, and a clock without a thread pool)."""
    return defer.maybeDeferred(f)


def _parse_line(line: str) -> Record | str | None:
    """A record, a reason the line is bad, or C{None} for a torn line."""
    parts = line.split()
    try:
        if len(parts) != 2:
            raise ValueError
        at, n = float(parts[0]), int(parts[1])
    except ValueError:
        return None if _TORN.fullmatch(line.strip()) else "not a record"
    if not math.isfinite(at) or at < 0:
        return f"time {parts[0]!r} is not a time"
    # A negative count is a refund: recipients of an earlier start the provider did not
    # take (L{xrelay.delivery.scheduler.AccountPace.refund}).
    if not -MAX_RECIPIENTS <= n <= MAX_RECIPIENTS:
        return f"count {parts[1]!r} is out of range"
    return at, n


@attrs.define
class DayBudget:
    """
    The recipients each account started in the last day, on disk under
    C{state_dir/accounts/}: the rolling C{recipients_per_day} budget survives restarts.

    @ivar in_thread: runs the rewrite of a journal (blocking I/O) off the reactor.
    """

    directory: str
    in_thread: InThread = run_here
    #: Open journals (file descriptors), one per account.
    _files: dict[str, int] = attrs.field(factory=dict, repr=False)
    #: Appends since each journal was last compacted.
    appended: dict[str, int] = attrs.field(factory=dict)
    #: Accounts whose journal must be rewritten (records were dropped or clamped).
    stale: set[str] = attrs.field(factory=set)
    #: Records that could not be written yet (no space), per account.
    unwritten: dict[str, list[Record]] = attrs.field(factory=dict)
    #: Records appended while a compaction runs in a thread, per account.
    _compacting: dict[str, list[Record]] = attrs.field(factory=dict)
    _folder_ready: bool = False

    def _path(self, account: str) -> str:
        return os.path.join(self.directory, urllib.parse.quote(account, safe="") + ".day")

    def load(self, account: str, now: float) -> list[Record]:
        """
        The records of the last day, oldest first.  Nothing is written: a journal with
        bad records is set aside (the good ones kept, and written at the next append),
        records from the future are counted as now.
        """
        path = self._path(account)
        cost = (f"account {account}'s recipients of the last day are not counted in "
                "recipients_per_day")
        problem = regular_file_problem(path)
        if problem is not None:
            set_aside(path, problem, cost)
            self.stale.add(account)
            return []
        records: list[Record] = []
        bad: list[str] = []
        ahead = 0.0
        clamped = 0
        try:
            with open(path, encoding="ascii", errors="replace") as f:
                for number, line in enumerate(f, 1):
                    parsed = _parse_line(line)
                    if parsed is None:
                        continue  # torn by a crash or a full disk: nothing to say
                    if isinstance(parsed, str):
                        bad.append(f"line {number}: {parsed}")
                        continue
                    at, n = parsed
                    if at > now + FUTURE_SLACK:
                        ahead = max(ahead, at - now)
                        clamped += 1
                        at = now
                    if at > now - DAY:
                        records.append((at, n))
        except FileNotFoundError:
            return []
        except OSError as e:
            set_aside(path, e.strerror or str(e), cost)
            self.stale.add(account)
            return []
        if bad:
            set_aside(path, f"{len(bad)} bad records, first {bad[0]}",
                      f"those records are not counted; the {len(records)} good ones are "
                      "kept")
            self.stale.add(account)
        if clamped:
            log.warn("account {account}: {count} daily-count records in {path} are up to "
                     "{ahead:.0f} s in the future (the clock ran ahead, or was stepped "
                     "back): counted as now", account=account, count=clamped, path=path,
                     ahead=ahead)
            self.stale.add(account)
        records.sort()
        return records

    def close(self, account: str | None = None) -> None:
        for name in [account] if account is not None else list(self._files):
            fd = self._files.pop(name, None)
            if fd is not None:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _open(self, account: str) -> int:
        fd = self._files.get(account)
        if fd is None:
            if not self._folder_ready:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                self._folder_ready = True
            fd = os.open(self._path(account), os.O_WRONLY | os.O_APPEND | os.O_CREAT
                         | getattr(os, "O_CLOEXEC", 0), 0o600)
            self._files[account] = fd
        return fd

    def record(self, account: str, at: float, recipients: int) -> None:
        """Append one record (one small write); never raises."""
        if account in self._compacting:
            self._compacting[account].append((at, recipients))
        pending = self.unwritten.get(account, [])
        pending.append((at, recipients))
        try:
            fd = self._open(account)
            write_all(fd, "".join(f"{t:.3f} {n}\n" for t, n in pending).encode("ascii"))
        except OSError as e:
            self.close(account)
            if account not in self.unwritten:
                # Counting must never stop delivery: the in-memory count still holds.
                log.error("cannot record the daily recipient count of account {account} "
                          "({error}); counted in memory and written when {fix}",
                          account=account, error=e.strerror or str(e),
                          fix="space returns" if is_full(e) else "the file can be written")
            self.unwritten[account] = pending[-MAX_UNWRITTEN:]
            return
        self.appended[account] = self.appended.get(account, 0) + len(pending)
        if self.unwritten.pop(account, None) is not None:
            log.info("the daily recipient count of account {account} is written again "
                     "({count} records kept in memory meanwhile)", account=account,
                     count=len(pending))

    def compact(self, account: str, records: Iterable[Record]) -> "Deferred[bool]":
        """
        Replace the journal by these records, written in a thread; records appended
        meanwhile are added before the new file takes the old one's place.  Fires with
        whether it was done; a failure is logged (once per episode), never raised.
        """
        if account in self._compacting:
            return defer.succeed(False)
        snapshot = list(records)
        self._compacting[account] = []
        path = self._path(account)
        tmp = path + ".tmp"

        def write() -> None:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            write_durably(tmp, "".join(f"{t:.3f} {n}\n" for t, n in snapshot).encode("ascii"))

        def swap(_: object) -> bool:
            extra = self._compacting.pop(account, [])
            with open(tmp, "a", encoding="ascii") as f:
                f.writelines(f"{t:.3f} {n}\n" for t, n in extra)
            self.close(account)
            os.replace(tmp, path)
            self.appended[account] = len(extra)
            self.stale.discard(account)
            self.unwritten.pop(account, None)
            return True

        def failed(reason: Any) -> bool:
            self._compacting.pop(account, None)
            error = reason.value
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not isinstance(error, OSError):
                log.failure("rewriting the daily recipient count of account {account}",
                            reason, account=account)
                return False
            # Try again after as many appends again: no storm on a full disk.
            self.appended[account] = 0
            log.warn("cannot rewrite the daily recipient count of account {account} "
                     "({error}); the journal keeps growing until {fix}", account=account,
                     error=error.strerror or str(error),
                     fix="space returns" if is_full(error) else "it can be written")
            return False

        d = self.in_thread(write)
        d.addCallback(swap)
        d.addErrback(failed)
        return d


#: The fields of a saved hold and the types each may have.
_HOLD_FIELDS: dict[str, tuple[type, ...]] = {
    "state": (str,), "since": (int, float, type(None)), "until": (int, float),
    "backoff": (int, float), "reason": (str, type(None)), "fix": (str, type(None)),
}


def _hold_problem(name: Any, data: Any) -> str | None:
    if not isinstance(name, str) or not isinstance(data, dict):
        return "not an account's hold"
    for key, types in _HOLD_FIELDS.items():
        value = data.get(key, 0.0 if key in ("until", "backoff") else None)
        if key == "state" and value is None:
            return "no state"
        if isinstance(value, bool) or not isinstance(value, types):
            return f"{key} has the wrong type"
        if isinstance(value, float) and not math.isfinite(value):
            return f"{key} is not a finite number"
        if key in ("since", "until", "backoff") and isinstance(value, (int, float)) \
                and not 0 <= value < 1e11:
            return f"{key} is out of range"
    return None


@attrs.define
class HoldStore:
    """The holds in force, in C{state_dir/accounts/holds.json} (written on change only)."""

    directory: str
    #: Whether the last save failed (logged once until a save succeeds).
    unsaved: bool = False

    @property
    def path(self) -> str:
        return os.path.join(self.directory, "holds.json")

    def load(self) -> dict[str, dict[str, Any]]:
        """The saved holds whose every field has the right type (nothing written)."""
        cost = "holds in it are forgotten: a held account is tried again at once"
        problem = regular_file_problem(self.path)
        if problem is not None:
            set_aside(self.path, problem, cost)
            return {}
        try:
            with open(self.path, encoding="utf-8") as f:
                data = json.load(f)
        except FileNotFoundError:
            return {}
        except OSError as e:
            set_aside(self.path, e.strerror or str(e), cost)
            return {}
        except ValueError as e:  # not JSON, not UTF-8, a number JSON cannot hold
            set_aside(self.path, f"not JSON: {str(e)[:80]}", cost)
            return {}
        if not isinstance(data, dict):
            set_aside(self.path, "not a JSON object", cost)
            return {}
        good = {name: hold for name, hold in data.items()
                if _hold_problem(name, hold) is None}
        if len(good) != len(data):
            name, first = next((n, _hold_problem(n, h)) for n, h in data.items()
                               if _hold_problem(n, h) is not None)
            set_aside(self.path, f"{len(data) - len(good)} bad holds, first {name!r}: "
                      f"{first}", f"those holds are forgotten; {len(good)} kept")
        return good

    def save(self, holds: dict[str, Any]) -> bool:
        """Write the holds that are in force (C{AccountHold}s not in state "ok");
        returns whether it was written (else: logged once, try again later)."""
        data = {name: {"state": h.state, "since": h.since, "until": h.until,
                       "backoff": h.backoff, "reason": h.reason, "fix": h.fix}
                for name, h in holds.items() if h.state != "ok"}
        tmp = self.path + ".tmp"
        try:
            os.makedirs(self.directory, mode=0o700, exist_ok=True)
            write_durably(tmp, json.dumps(data).encode("utf-8"))
            os.replace(tmp, self.path)
        except OSError as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if not self.unsaved:
                log.error("cannot record account holds in {path} ({error}); kept in "
                          "memory, written when {fix}", path=self.path,
                          error=e.strerror or str(e),
                          fix="space returns" if is_full(e) else "it can be written")
            self.unsaved = True
            return False
        if self.unsaved:
            log.info("account holds written to {path} again", path=self.path)
        self.unsaved = False
        return True
