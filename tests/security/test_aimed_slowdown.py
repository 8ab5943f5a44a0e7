"""
Finding (medium, availability): an aimed slowdown.  About six wrong passwords for a user
name from one address made every AUTH of that user, from its own device with the right
password, take 30 s for 15 minutes; many printers give up on a reply before 30 s.

The relay's clock here is a L{Clock} that only moves when the test moves it, so "within
5 s" is exact: the device's answer comes without the clock moving at all.
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import Clock, deferLater

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.policy import AuthFailures

OK = "235 2.7.0 Authentication successful"
INVALID = "535 5.7.8 Authentication credentials invalid"
TOO_MANY = "421 4.7.0 Too many failed authentication attempts"
GUESSERS = [f"127.0.0.{i}" for i in range(2, 22)]  # 20 other addresses


async def guess(port: int, clock: Clock, source: str, password: str = "guess") -> str:
    """One AUTH from C{source}, moving the relay's clock past whatever wait it earned."""
    client = await connect(port, source=source)
    await ehlo(client)
    seen = len(client.replies)
    client.send(b"AUTH PLAIN " + plain("scanner", password) + b"\r\n")
    for _ in range(1000):
        if len(client.replies) > seen:
            break
        await deferLater(reactor, 0.01, lambda: None)
        clock.advance(1)
    client.transport.loseConnection()
    return client.replies[seen]


async def started(relay):  # type: ignore[no-untyped-def]
    clock = Clock()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False,
                                max_connections_per_network=40),
                    clock=clock, run_blocking=inline)
    return r, clock


@pytest_twisted.ensureDeferred
async def test_twenty_guesses_from_elsewhere_do_not_slow_the_device(relay):
    r, clock = await started(relay)
    for source in GUESSERS:
        assert (await guess(r.port, clock, source)) == INVALID
    failures = r.service.auth_failures
    # The device at 127.0.0.1 has not failed: no wait at all for it...
    assert failures.delay("127.0.0.1", clock.seconds(), "scanner") == 0
    device = await connect(r.port)
    await ehlo(device)
    before = clock.seconds()
    device.send(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD) + b"\r\n")
    # ...and its answer comes with the relay's clock standing still (well within 5 s).
    assert (await device.read(1, timeout=5)) == [OK]
    assert clock.seconds() == before


@pytest_twisted.ensureDeferred
async def test_a_device_that_mistyped_waits_a_few_seconds_at_most(relay):
    r, clock = await started(relay)
    for source in GUESSERS:
        await guess(r.port, clock, source)
    assert (await guess(r.port, clock, "127.0.0.1", "typo")) == INVALID
    failures = r.service.auth_failures
    # Its own one failure costs 1 s, the others' 20 add at most aimed_max_delay.
    wait = failures.delay("127.0.0.1", clock.seconds(), "scanner")
    assert 0 < wait <= failures.aimed_max_delay < 5
    device = await connect(r.port)
    await ehlo(device)
    device.send(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD) + b"\r\n")
    await until(lambda: any(p._busy for p in r.service.live))
    clock.advance(wait)
    assert (await device.read(1)) == [OK]


@pytest_twisted.ensureDeferred
async def test_guessing_is_still_capped(relay):
    r, clock = await started(relay)
    failures = r.service.auth_failures
    limit = failures.per_address_limit
    attacker = GUESSERS[0]
    replies = [await guess(r.port, clock, attacker) for _ in range(limit + 2)]
    assert replies == [INVALID] * limit + [TOO_MANY] * 2
    # Even the right password is refused from there now, and every guess it made after
    # its first waited: its own failures and the others' both count against it.
    assert (await guess(r.port, clock, attacker, SCANNER_PASSWORD)) == TOO_MANY
    other = GUESSERS[1]
    assert (await guess(r.port, clock, other)) == INVALID
    assert failures.delay(other, clock.seconds(), "scanner") > 0


def test_the_aimed_wait_is_only_for_sources_that_failed() -> None:
    failures = AuthFailures()
    for i, source in enumerate(GUESSERS):
        failures.failed(source, float(i), "scanner")
    assert failures.delay("127.0.0.1", 30.0, "scanner") == 0
    attempt = failures.begin("127.0.0.1", "scanner", 30.0)
    assert attempt is not None and attempt.delay == 0
    # A guesser that failed once waits for the others' failures, but not 30 s.
    assert failures.delay(GUESSERS[0], 30.0, "scanner") == failures.aimed_max_delay == 3.0
