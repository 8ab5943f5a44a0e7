"""
The "queued as" line: one per message at a printer's pace, a summary every 10 s above
10 messages a second (each message stays in the trace whatever the rate).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from xrelay.inbound.acceptlog import LINES_PER_SECOND, SUMMARY_EVERY, AcceptanceLog


@pytest.fixture
def lines():
    found: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        found.append(formatEvent(event) or "")
    globalLogPublisher.addObserver(observe)
    yield found
    globalLogPublisher.removeObserver(observe)


def accept(acceptance: AcceptanceLog, n: int, client: str = "192.0.2.7") -> None:
    acceptance.queued(f"m{n}", f"20261207T000000.000000-1-{n:06d}", client,
                      "scanner@example.com", None, "main", 1, 1000)


def test_a_line_per_message_at_a_printers_pace(lines: list[str]) -> None:
    clock = Clock()
    acceptance = AcceptanceLog(clock)
    for n in range(5):
        accept(acceptance, n)
        clock.advance(0.5)
    assert len(lines) == 5 and all("queued as 20261207T" in line for line in lines)
    assert "from 192.0.2.7 sender scanner@example.com" in lines[0]
    clock.advance(SUMMARY_EVERY)
    assert len(lines) == 5  # nothing to summarise


def test_a_burst_gets_a_summary_instead(lines: list[str]) -> None:
    clock = Clock()
    acceptance = AcceptanceLog(clock)
    for n in range(LINES_PER_SECOND + 25):
        accept(acceptance, n, client=f"192.0.2.{n % 3}")
    assert len(lines) == LINES_PER_SECOND
    clock.advance(SUMMARY_EVERY)
    assert len(lines) == LINES_PER_SECOND + 1
    assert lines[-1].startswith("inbound: 25 more messages queued (25000 bytes, from 3 "
                                "clients, accounts main) without a line each")
    clock.advance(1)
    accept(acceptance, 99)  # a new second: lines again
    assert "queued as 20261207T000000.000000-1-000099" in lines[-1]


def test_the_summary_is_written_at_stop(lines: list[str]) -> None:
    clock = Clock()
    acceptance = AcceptanceLog(clock)
    for n in range(LINES_PER_SECOND + 1):
        accept(acceptance, n)
    acceptance.flush()
    assert lines[-1].startswith("inbound: 1 more messages queued")
    assert clock.getDelayedCalls() == []
