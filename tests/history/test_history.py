"""
The message history's own promises: records older than C{delivery.history_days} are
pruned (at start and while running), the writer batches what gathers, the privacy
switches keep Subject: and Message-ID: out, and a deleted or corrupt database is
recreated with a warning while mail keeps flowing through a real relay.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.admin.conftest import start_relay
from tests.admin.test_web import smtp_send, until
from xrelay.history import (AcceptedMessage, SqliteHistory, TraceQuery, history_path,
                            search, story)
from xrelay.history.sink import PRUNE_EVERY
from xrelay.inbound.headers import HeaderBlock

DAY = 86400.0


def accepted(entry_id: str, at: float, subject: str = "hello") -> AcceptedMessage:
    headers = HeaderBlock()
    headers.feed(f"Subject: =?utf-8?q?{subject}?=\r\nMessage-ID: <{entry_id}@x>\r\n\r\n"
                 .encode())
    return AcceptedMessage(entry_id, at, "192.0.2.1", "scanner", "scan@example.com",
                           ("it@example.net",), 1234, "main", headers)


def ids(path: str) -> set[str]:
    return {m.entry_id for m in search(path, TraceQuery())}


@pytest_twisted.ensureDeferred
async def test_records_older_than_history_days_are_pruned(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite")
    now = [time.time()]
    history = SqliteHistory(path, days=30, clock=lambda: now[0])
    history.startService()
    history.received(accepted("old", now[0] - 31 * DAY))
    history.received(accepted("nearly", now[0] - 29 * DAY))
    history.received(accepted("new", now[0]))
    await history.flush()
    assert ids(path) == {"old", "nearly", "new"}  # written; pruning runs at start
    await history.stopService()

    # At the next start, what is older than 30 days goes.
    history = SqliteHistory(path, days=30, clock=lambda: now[0])
    history.startService()
    await history.flush()
    assert ids(path) == {"nearly", "new"}

    # While running: two days later (more than PRUNE_EVERY), the next batch prunes.
    now[0] += 2 * DAY
    assert 2 * DAY > PRUNE_EVERY
    history.received(accepted("later", now[0]))
    await history.flush()
    assert ids(path) == {"new", "later"}
    assert story(path, "nearly") is None
    await history.stopService()


@pytest_twisted.ensureDeferred
async def test_subject_and_message_id_can_be_left_out(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite")
    history = SqliteHistory(path, days=30)
    history.startService()
    history.received(accepted("kept", time.time(), subject="Caf=C3=A9"))
    await history.stopService()
    (kept,) = search(path, TraceQuery())
    assert (kept.subject, kept.message_id) == ("Café", "<kept@x>")
    assert [m.entry_id for m in search(path, TraceQuery(subject="Caf"))] == ["kept"]

    private = SqliteHistory(path, days=30, subjects=False, message_ids=False)
    private.startService()
    private.received(accepted("private", time.time() + 1))
    await private.stopService()
    found = {m.entry_id: m for m in search(path, TraceQuery())}
    assert (found["private"].subject, found["private"].message_id) == (None, None)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"


@pytest_twisted.ensureDeferred
async def test_a_burst_is_written_in_few_transactions(tmp_path: Path) -> None:
    path = str(tmp_path / "history.sqlite")
    history = SqliteHistory(path, days=30)
    batches: list[int] = []
    write = history.store.write

    def counting(records: Any) -> None:
        batches.append(len(records))
        write(records)
    history.store.write = counting  # type: ignore[method-assign]
    for i in range(500):  # queued before the writer starts: it finds them all waiting
        history.received(accepted(f"e{i:04d}", time.time()))
    history.startService()
    await history.stopService()
    assert sum(batches) == 500 and len(batches) == 1
    assert len(search(path, TraceQuery(limit=1000))) == 500


def warnings_seen() -> tuple[list[str], Any]:
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("xrelay.history"):
            lines.append(formatEvent(event) or "")
    globalLogPublisher.addObserver(observe)
    return lines, observe


@pytest_twisted.ensureDeferred
async def test_a_deleted_database_is_recreated_and_mail_keeps_flowing(world) -> None:
    relay = start_relay(world)
    path = history_path(str(world.state_dir))
    lines, observer = warnings_seen()
    try:
        await smtp_send(world.smtp_port, "printer@sandbox.example", ["one@example.net"])
        await until(lambda: relay.delivery.totals["delivered"] == 1)
        await relay.history.flush()
        assert len(ids(path)) == 1
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(path + suffix):
                os.unlink(path + suffix)

        await smtp_send(world.smtp_port, "printer@sandbox.example", ["two@example.net"])
        await until(lambda: len(world.sandbox.mailbox.messages) == 2)
        await until(lambda: relay.delivery.totals["delivered"] == 2)
        await relay.history.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    (second,) = search(path, TraceQuery())
    assert second.recipients == ("two@example.net",) and second.outcome == "delivered"
    assert any(f"the message history {path} was removed; started a new one" in line
               for line in lines), lines


@pytest_twisted.ensureDeferred
async def test_a_corrupt_database_is_recreated_and_mail_keeps_flowing(world) -> None:
    os.makedirs(world.state_dir, mode=0o700, exist_ok=True)
    path = history_path(str(world.state_dir))
    with open(path, "wb") as f:
        f.write(b"this is not an SQLite database, whatever its name says\n" * 100)
    lines, observer = warnings_seen()
    try:
        relay = start_relay(world)
        await smtp_send(world.smtp_port, "printer@sandbox.example", ["one@example.net"])
        await until(lambda: len(world.sandbox.mailbox.messages) == 1)
        await until(lambda: relay.delivery.totals["delivered"] == 1)
        await relay.history.flush()
    finally:
        globalLogPublisher.removeObserver(observer)
    (first,) = search(path, TraceQuery())
    assert first.outcome == "delivered"
    assert any(f"the message history {path} is unreadable" in line and "moved it aside" in line
               for line in lines), lines
    with open(path + ".corrupt", "rb") as f:
        assert f.read().startswith(b"this is not an SQLite database")


@pytest_twisted.ensureDeferred
async def test_history_days_zero_keeps_nothing(world) -> None:
    text = world.config_path.read_text().replace("[delivery]\n", "[delivery]\nhistory_days = 0\n")
    world.config_path.write_text(text)
    relay = start_relay(world)
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["one@example.net"])
    await until(lambda: len(world.sandbox.mailbox.messages) == 1)
    assert not os.path.exists(history_path(str(world.state_dir)))
    assert relay.history.__class__.__name__ == "NullHistory"


def test_history_keys_are_read_and_checked(world) -> None:
    import pytest

    from xrelay.config import ConfigError, DeliveryConfig
    from xrelay.configfile import read_config

    path, text = world.config_path, world.config_path.read_text()

    def with_delivery(lines: str) -> str:
        path.write_text(text.replace("[delivery]\n", "[delivery]\n" + lines))
        return str(path)

    delivery = read_config(with_delivery("history_days = 7\nhistory_subject = false\n"
                                         "history_message_id = false\n")).delivery
    assert (delivery.history_days, delivery.history_subject,
            delivery.history_message_id) == (7, False, False)
    assert read_config(with_delivery("")).delivery == attrs_evolve_defaults(delivery)
    assert (DeliveryConfig().history_days, DeliveryConfig().history_subject) == (30, True)
    with pytest.raises(ConfigError, match="delivery.history_subject"):
        read_config(with_delivery('history_subject = "no"\n'))
    with pytest.raises(ConfigError, match="delivery.history_days"):
        read_config(with_delivery("history_days = -1\n"))


def attrs_evolve_defaults(delivery: Any) -> Any:
    import attrs

    return attrs.evolve(delivery, history_days=30, history_subject=True,
                        history_message_id=True)


@pytest_twisted.ensureDeferred
async def test_each_way_a_message_ends_is_recorded(tmp_path: Path) -> None:
    """delivered, bounced, expired, handed back, deleted; partial stays waiting."""
    from xrelay.delivery.bounce import FailedRecipient
    from xrelay.records import OutcomeRecord
    from xrelay.envelope import Outcome, RecipientResult, Reply

    path = str(tmp_path / "history.sqlite")
    history = SqliteHistory(path, days=30)
    history.startService()
    now = time.time()
    ok = Reply(250, "2.6.0 <abc@EX.PROD.OUTLOOK.COM> [InternalId=1, Hostname=X] Queued "
                    "mail for delivery")
    busy = Reply(451, "4.7.500 Server busy. Please try again later.")
    gone = Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
                      "SMTP address lookup")

    def record(entry_id: str, outcome: str, reply: Reply) -> OutcomeRecord:
        return OutcomeRecord(entry_id, "scan@example.com", "main", now, outcome, 0, 0, 0,
                             str(reply))

    for entry_id in ("d", "b", "x", "h", "r", "p"):
        history.received(accepted(entry_id, now))
    history.attempted(record("d", "delivered", ok),
                      [RecipientResult("it@example.net", Outcome.DELIVERED, ok)], [], [])
    history.attempted(record("b", "failed", gone), [], [],
                      [FailedRecipient("it@example.net", gone)])
    history.bounced("b", "b-dsn", ["scan@example.com"], "main", now)
    history.attempted(record("x", "failed", busy), [], [],
                      [FailedRecipient("it@example.net", busy, expired=True)])
    history.attempted(record("h", "handed back", gone), [], [],
                      [RecipientResult("it@example.net", Outcome.PERMANENT, gone)])
    history.finished("r", "deleted", now)
    history.attempted(record("p", "partial", busy),
                      [RecipientResult("it@example.net", Outcome.DELIVERED, ok)],
                      [RecipientResult("boss@example.net", Outcome.TEMPORARY, busy)], [])
    await history.stopService()

    found = {m.entry_id: m for m in search(path, TraceQuery())}
    assert {k: m.outcome for k, m in found.items()} == {
        "d": "delivered", "b": "bounced", "x": "expired", "h": "handed back",
        "r": "deleted", "p": "waiting"}
    assert found["d"].upstream_id == "<abc@EX.PROD.OUTLOOK.COM>"
    assert found["p"].upstream_id == "<abc@EX.PROD.OUTLOOK.COM>"  # from the recipient
    s = story(path, "b")
    assert s is not None and [b.entry_id for b, _ in s.bounces] == ["b-dsn"]
    assert s.bounces[0][0].recipients == ("scan@example.com",)
    (attempt,) = story(path, "p").attempts  # type: ignore[union-attr]
    assert attempt.recipients == (("it@example.net", "delivered", str(ok)),
                                  ("boss@example.net", "deferred", str(busy)))
    # The bounce itself is not listed as a message of its own.
    assert "b-dsn" not in found


def test_the_sinks_provide_the_interface(tmp_path: Path) -> None:
    from zope.interface.verify import verifyObject

    from xrelay.history import NullHistory
    from xrelay.interfaces import IMessageHistory

    assert verifyObject(IMessageHistory, NullHistory())
    assert verifyObject(IMessageHistory, SqliteHistory(str(tmp_path / "h.sqlite"), 30,
                                                       reactor=object()))
