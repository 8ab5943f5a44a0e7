"""
The account journal and holds as state files: what is read is validated (records from
the future counted as now, a bad record sets the file aside, the good ones kept and
written at the next append), nothing is written at start, and a write that fails for
lack of space is kept in memory, logged once, and written when a write works again.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from twisted.logger import formatEvent, globalLogPublisher

from xrelay.delivery.accountstore import DayBudget, HoldStore

NOW = 1_800_000_000.0


@pytest.fixture
def lines():
    seen: list[str] = []

    def observe(event: dict) -> None:
        if event.get("log_level") is not None and event["log_level"].name in (
                "warn", "error", "critical"):
            seen.append(formatEvent(event))
    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def test_load_writes_nothing_and_clamps_the_future(tmp_path: Path, lines) -> None:
    journal = tmp_path / "main.day"
    journal.write_text(f"{NOW - 100:.3f} 2\n{NOW + 86400 * 3:.3f} 5\n{NOW - 90000:.3f} 1\n")
    before = journal.stat()
    budget = DayBudget(str(tmp_path))
    assert budget.load("main", NOW) == [(NOW - 100, 2), (NOW, 5)]
    after = journal.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    (line,) = lines
    assert "1 daily-count records in" in line and "in the future" in line


def test_a_bad_record_sets_the_journal_aside_and_keeps_the_good(tmp_path: Path,
                                                                lines) -> None:
    journal = tmp_path / "main.day"
    journal.write_text(f"{NOW - 10:.3f} 3\ninf 100000\n{NOW - 5:.3f} 1\n17")
    budget = DayBudget(str(tmp_path))
    assert budget.load("main", NOW) == [(NOW - 10, 3), (NOW - 5, 1)]
    (line,) = lines
    assert str(journal) in line and "line 2: time 'inf' is not a time" in line
    assert not journal.exists() and list(tmp_path.glob("main.day.unreadable-*"))
    assert "main" in budget.stale  # rewritten (with the good records) at the next append
    d = budget.compact("main", [(NOW - 10, 3), (NOW - 5, 1)])
    assert d.result is True
    assert journal.read_text() == f"{NOW - 10:.3f} 3\n{NOW - 5:.3f} 1\n"


def test_a_full_disk_keeps_the_records_and_says_so_once(tmp_path: Path, lines,
                                                        monkeypatch) -> None:
    budget = DayBudget(str(tmp_path))
    real_write = os.write
    full = {"on": True}

    def write(fd, data):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    for n in range(3):
        budget.record("main", NOW + n, 1)
    assert len(lines) == 1 and "No space left on device" in lines[0]
    assert budget.unwritten["main"] == [(NOW, 1), (NOW + 1, 1), (NOW + 2, 1)]
    full["on"] = False
    budget.record("main", NOW + 3, 1)
    assert budget.unwritten == {}
    assert (tmp_path / "main.day").read_text().splitlines() == [
        f"{NOW + n:.3f} 1" for n in range(4)]
    assert len(lines) == 1  # no storm: one line when it began


def test_holds_of_the_wrong_types_are_set_aside(tmp_path: Path, lines) -> None:
    holds = tmp_path / "holds.json"
    holds.write_text('{"a": {"state": "upstream unreachable", "until": 5.0, "backoff": 60},'
                     ' "b": {"state": "throttled", "until": "soon"},'
                     ' "c": {"state": "throttled", "until": Infinity}}')
    loaded = HoldStore(str(tmp_path)).load()
    assert list(loaded) == ["a"]
    (line,) = lines
    assert str(holds) in line and "2 bad holds" in line and "those holds are forgotten" in line
    assert not holds.exists()
