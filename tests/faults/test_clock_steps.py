"""
The wall clock steps under a running relay (a real `twistd xrelay` process whose
C{time.time()} the test steps, see C{clockshim/sitecustomize.py}; its monotonic clock
runs on, as under an NTP step): a step back of an hour does not stall the retries, a
step forward of six days (a Raspberry Pi learning the date) bounces nothing as old, and
the step is logged once.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from tests.faults.conftest import World, assert_clean

SHIM = str(Path(__file__).with_name("clockshim"))
#: Exchange Online's reply when a mailbox server is busy (a 4xx: deferred, retried).
#: https://learn.microsoft.com/en-us/exchange/mail-flow-best-practices/non-delivery-reports-in-exchange-online/non-delivery-reports-in-exchange-online
BUSY = "451 4.7.500 Server busy. Please try again later."


def stepped_env(tmp_path: Path) -> tuple[dict[str, str], Path]:
    offset = tmp_path / "clock-offset"
    offset.write_text("0\n")
    path = os.pathsep.join([SHIM] + [p for p in os.environ.get("PYTHONPATH", "").split(
        os.pathsep) if p])
    return {"PYTHONPATH": path, "XRELAY_TEST_CLOCK_OFFSET_FILE": str(offset)}, offset


@pytest_twisted.inlineCallbacks
def wait_for_log(relay, text: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while text not in relay.log():
        assert time.monotonic() < deadline, f"no {text!r} in:\n{relay.log()}"
        yield deferLater(reactor, 0.2, lambda: None)


@pytest_twisted.inlineCallbacks
def test_a_step_back_of_an_hour_does_not_stall_retries(world: World, tmp_path: Path
                                                       ) -> None:
    env, offset = stepped_env(tmp_path)
    world.write_config(extra="")
    world.sandbox.exchange.fail_next(".", BUSY)
    world.queue_mail(1, tag="step back")
    relay = world.start(env=env)
    yield world.listening(relay)
    yield wait_for_log(relay, ": deferred")  # first_retry = 2 s (+ jitter)
    offset.write_text("-3600\n")
    started = time.monotonic()
    subjects = yield world.delivered(1, timeout=60)
    waited = time.monotonic() - started
    assert subjects == ["step back 0"]
    yield wait_for_log(relay, "the wall clock stepped back by 1.0 h")
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    assert log.count("the wall clock stepped") == 1
    assert waited < 60  # an hour without the watch


@pytest_twisted.inlineCallbacks
def test_a_step_forward_of_six_days_bounces_nothing_as_old(world: World, tmp_path: Path
                                                           ) -> None:
    env, offset = stepped_env(tmp_path)
    world.write_config()
    for _ in range(5):
        world.sandbox.exchange.fail_next(".", BUSY)
    world.queue_mail(5, tag="step forward")
    relay = world.start(env=env)
    yield world.listening(relay)
    deadline = time.monotonic() + 60
    while relay.log().count(": deferred") < 5:
        assert time.monotonic() < deadline, relay.log()
        yield deferLater(reactor, 0.2, lambda: None)
    # The retries after the step are refused once more: that is when a message's age
    # is judged (max_age = 5 days), and when the fresh ones were bounced as old.
    for _ in range(5):
        world.sandbox.exchange.fail_next(".", BUSY)
    offset.write_text(str(6 * 86400) + "\n")
    subjects = yield world.delivered(5, timeout=90)
    assert sorted(subjects) == [f"step forward {n}" for n in range(5)]
    assert relay.log().count(": deferred") == 10
    yield world.stop(relay)
    log = relay.log()
    assert_clean(log)
    assert "expired" not in log and "bounce" not in log.lower(), log
    assert log.count("the wall clock stepped forward by 6.0 days") == 1
