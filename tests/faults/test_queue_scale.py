"""
40,000 entries in the queue of a real relay process: the admin page's queue answers
with one page of rows, counted per state, and an SMTP session's NOOP is answered within
100 ms throughout (a bound on how long anything holds the reactor, not a speed test:
the page is built in a thread, only its rows are read).

The entries are written straight into the spool's layout (deferred an hour ahead, so
nothing is attempted while we look): committing 40,000 through the spool would cost
minutes of fsyncs and test nothing here.
"""

from __future__ import annotations

import json
import smtplib
import threading
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import defer
from twisted.internet.threads import deferToThread

from tests.admin.conftest import ADMIN_HASH
from tests.admin.test_web import Browser
from tests.conftest import free_port
from tests.faults.conftest import World, assert_clean

ENTRIES = 40_000


def fill(spool: Path, count: int) -> None:
    """Deferred entries in the spool's on-disk layout (as bench/queue_scale.py does)."""
    for sub in ("tmp", "data", "queued", "active", "deferred", "failed", "corrupt"):
        (spool / sub).mkdir(parents=True, exist_ok=True)
    message = b"Subject: scale\r\n\r\n" + b"x" * 1000 + b"\r\n"
    later = time.time() + 3600
    for i in range(count):
        entry_id = f"20260101T000000.{i % 1_000_000:06d}-1-{i // 1_000_000:06d}"
        (spool / "data" / f"{entry_id}.eml").write_bytes(message)
        record = {"id": entry_id, "sender": "scanner@example.com",
                  "recipients": ["a@example.org"], "size": len(message),
                  "account": "sandbox", "received_at": time.time(), "attempts": 1,
                  "next_attempt": later, "last_attempt": time.time(),
                  "last_reply": {"code": 451, "text": "4.4.1 Connection refused"},
                  "original_recipients": ["a@example.org"], "failed_recipients": []}
        (spool / "deferred" / f"{entry_id}.json").write_text(json.dumps(record))


class Noops(threading.Thread):
    """One SMTP session sending NOOP every 20 ms; remembers the slowest answer."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.stop = threading.Event()
        self.slowest = 0.0
        self.count = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
                smtp.ehlo("scale")
                while not self.stop.wait(0.02):
                    started = time.monotonic()
                    code, _ = smtp.noop()
                    assert code == 250
                    self.slowest = max(self.slowest, time.monotonic() - started)
                    self.count += 1
        except BaseException as e:  # reported by the test
            self.error = e


@pytest_twisted.inlineCallbacks
def test_forty_thousand_entries_page_and_noop(world: World) -> None:
    admin_port = free_port()
    world.write_config(extra=f'\n[admin]\nlisten = "tcp:{admin_port}:interface=127.0.0.1"\n'
                             f'password_hash = "{ADMIN_HASH}"\n')
    yield deferToThread(fill, world.state / "spool", ENTRIES)
    relay = world.start()
    yield deferToThread(relay.wait_for_port, world.port, "127.0.0.1", 180)
    yield deferToThread(relay.wait_for_port, admin_port, "127.0.0.1", 60)
    browser = Browser(f"http://127.0.0.1:{admin_port}")
    yield defer.ensureDeferred(browser.sign_in())
    noops = Noops(world.port)
    noops.start()
    try:
        for path in ("/queue", "/queue?state=deferred&offset=39950", "/queue",
                     "/queue?state=queued"):
            response, body = yield defer.ensureDeferred(
                browser.request("GET", path))
            assert response.code == 200
            assert 'id="filter-deferred">deferred 40,000<' in body, body[:3000]
            assert len(body) < 1_000_000  # one page, not 68 MB
        _, last = yield defer.ensureDeferred(
            browser.request("GET", "/queue?state=deferred&offset=39950"))
        assert "39,951–40,000 of 40,000" in last
        assert 'id="queue-next"' not in last and 'id="queue-previous"' in last
        _, first = yield defer.ensureDeferred(browser.request("GET", "/queue"))
        assert "1–100 of 40,000" in first and 'id="queue-next"' in first
        # A search over the whole queue, from what the daemon remembers.
        _, found = yield defer.ensureDeferred(
            browser.request("GET", "/queue?q=000000.039999-1"))
        assert "1–1 of 1" in found and "20260101T000000.039999-1-000000" in found
    finally:
        noops.stop.set()
        yield deferToThread(noops.join, 30)
    assert noops.error is None, noops.error
    assert noops.count > 0
    assert noops.slowest < 0.1, f"a NOOP waited {noops.slowest * 1000:.0f} ms"
    yield world.stop(relay)
    assert_clean(relay.log())
