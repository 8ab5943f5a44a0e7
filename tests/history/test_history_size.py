"""
The message history's size bound (C{delivery.history_max_mb}): past it the oldest
messages are forgotten first, the newest kept; and records that could not be written
for lack of space are written when space returns (the writer thread keeps them).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from xrelay.history import sink as sink_module
from xrelay.history.store import HistoryStore


def entry_id(n: int) -> str:
    day, second = divmod(n, 86400)
    return f"202601{1 + day:02d}T{second // 3600:02d}{second // 60 % 60:02d}" \
           f"{second % 60:02d}.000000-1-{n % 1_000_000:06d}"


def fill(store: HistoryStore, count: int) -> None:
    reply = "250 2.6.0 <" + "x" * 400 + "@example.com> Queued mail for delivery"
    for start in range(0, count, 500):
        store.write([("attempted", (entry_id(n), "printer@example.com", "main",
                                    float(n), "delivered", reply,
                                    [("a@example.org", "delivered", reply)]))
                     for n in range(start, min(start + 500, count))])


def test_oldest_messages_go_first_past_the_size_bound(tmp_path: Path) -> None:
    warnings: list[str] = []
    store = HistoryStore(str(tmp_path / "history.sqlite"), warnings.append)
    store.open()
    fill(store, 4000)
    db = store.db
    assert db is not None
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    used = db.execute("PRAGMA page_count").fetchone()[0] * page_size
    bound = used // 3
    forgotten = store.prune_to_size(bound)
    assert forgotten > 0 and warnings == []
    pages, free = (db.execute("PRAGMA page_count").fetchone()[0],
                   db.execute("PRAGMA freelist_count").fetchone()[0])
    assert (pages - free) * page_size <= bound
    kept = [row[0] for row in db.execute("SELECT entry_id FROM message ORDER BY 1")]
    assert len(kept) == 4000 - forgotten
    assert kept[-1] == entry_id(3999)  # the newest stay
    assert entry_id(0) not in kept  # the oldest went first
    assert min(kept) == sorted(entry_id(n) for n in range(4000))[forgotten]
    store.close()


def test_records_kept_while_the_disk_is_full_are_written_when_space_returns(
        tmp_path: Path, monkeypatch) -> None:
    """The writer keeps what it could not write (one warning), tries once per
    RETRY_EVERY, and writes it all when the store works again (one line)."""

    class Reactor:
        def callFromThread(self, f, *args, **kwargs):
            f(*args, **kwargs)

    monkeypatch.setattr(sink_module, "RETRY_EVERY", 0.2)
    history = sink_module.SqliteHistory(str(tmp_path / "history.sqlite"), 30,
                                        reactor=Reactor())
    full = {"on": True}
    real_write = history.store.write

    def write(records):
        return "database or disk is full" if full["on"] else real_write(records)

    history.store.write = write  # type: ignore[method-assign]
    lines: list[str] = []
    monkeypatch.setattr(sink_module.log, "warn", lambda f, **kw: lines.append(
        "warn " + kw.get("problem", f)))
    monkeypatch.setattr(sink_module.log, "info", lambda f, **kw: lines.append(
        "info " + kw.get("problem", f)))
    history.startService()
    try:
        for n in range(5):
            history.finished(entry_id(n), "delivered", float(n))
        deadline = time.monotonic() + 10
        while not history._kept and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # several retry periods with the disk still full
        assert [line for line in lines if line.startswith("warn")] == [lines[0]]
        full["on"] = False
        while not any(line.startswith("info") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
    finally:
        history.stopService()
        if history._thread is not None:
            history._thread.join(10)
    time.sleep(0.2)
    db = sqlite3.connect(tmp_path / "history.sqlite")
    statuses = [row[0] for row in db.execute("SELECT status FROM message")]
    assert statuses == ["delivered"] * 5
    assert any("5 records kept while they could not be written are now written" in line
               for line in lines), lines
