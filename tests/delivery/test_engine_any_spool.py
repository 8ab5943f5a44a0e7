"""
The delivery engine needs nothing of its spool beyond L{ISpool}: the same attempts,
deferrals, bounces and removals over the in-memory spool of L{xrelay.testing}.
"""

from __future__ import annotations

import email
from typing import Any

import pytest

from tests.delivery.delivery_harness import MESSAGE, START, Harness, config
from xrelay.delivery.testing import accept_all, fail_all, per_recipient
from xrelay.envelope import Reply
from xrelay.interfaces import UnknownEntry
from xrelay.lifecycle import ACTIVE, DEFERRED, FAILED
from xrelay.testing import MemorySpool

BUSY = Reply(451, "4.7.500 Server busy. Please try again later.")
UNKNOWN = Reply(550, "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by "
                "SMTP address lookup")


@pytest.fixture
def harness(tmp_path: Any) -> Harness:
    return Harness(tmp_path, memory=True)


def test_delivered_over_the_memory_spool(harness: Harness) -> None:
    harness.transport.hold = True
    engine = harness.start()
    assert isinstance(harness.spool, MemorySpool)
    entry_id = harness.receive()
    assert harness.spool.get(entry_id).state == ACTIVE
    assert harness.transport.sent[0].data == MESSAGE  # streamed from the entry's data_path
    harness.transport.release()
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)
    assert engine.totals["delivered"] == 1 and harness.spool.counts()[ACTIVE] == 0


def test_deferred_then_retried_over_the_memory_spool(harness: Harness) -> None:
    engine = harness.start(config(first_retry=60))
    harness.transport.script = [fail_all(BUSY)]
    entry_id = harness.receive()
    entry = harness.spool.get(entry_id)
    assert (entry.state, entry.attempts, entry.last_reply) == (DEFERRED, 1, BUSY)
    assert entry.next_attempt == START + 60
    harness.clock.advance(60)
    with pytest.raises(UnknownEntry):
        harness.spool.get(entry_id)
    assert engine.totals == {"delivered": 1, "deferred": 1, "failed": 0, "bounces": 0}


def test_a_permanent_failure_is_bounced_through_the_memory_spool(harness: Harness) -> None:
    engine = harness.start()
    harness.transport.script = [per_recipient({"gone@example.org": UNKNOWN}), accept_all]
    entry_id = harness.receive(recipients=("gone@example.org",))
    failed = harness.spool.get(entry_id)
    assert failed.state == FAILED and failed.failed_recipients == (
        ("gone@example.org", UNKNOWN),)
    # The bounce was committed to the same spool, then sent and removed.
    bounce = harness.transport.sent[1]
    assert bounce.message.recipients == ("scanner@example.com",)
    report = email.message_from_bytes(bounce.data)
    assert report.get_content_type() == "multipart/report"
    assert "5.1.10" in bounce.data.decode()
    assert engine.totals["bounces"] == 1
    assert [e.entry_id for e in harness.spool.entries()] == [entry_id]
