"""
Finding (medium): SMTP AUTH lockouts raced and could be aimed.  Failures were counted
when the slow scrypt check ended, so 28 concurrent guesses got through a limit of 10
(and a guess whose client hung up before the answer was never counted at all).
"""

from __future__ import annotations

import pytest_twisted
from twisted.internet import defer
from twisted.internet.task import Clock

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

TOO_MANY = "421 4.7.0 Too many failed authentication attempts"
INVALID = "535 5.7.8 Authentication credentials invalid"


class HeldChecks:
    """A run_blocking that starts every password check and answers them when told."""

    def __init__(self) -> None:
        self.started: list[tuple[defer.Deferred, object]] = []

    def __call__(self, f, *args):  # type: ignore[no-untyped-def]
        d: defer.Deferred = defer.Deferred()
        self.started.append((d, lambda: f(*args)))
        return d

    def release(self) -> None:
        for d, run in self.started:
            if not d.called:
                d.callback(run())


@pytest_twisted.ensureDeferred
async def test_concurrent_wrong_passwords_are_limited_to_the_limit(relay):
    checks = HeldChecks()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False,
                                max_connections_per_client=40,
                                max_connections_per_network=40),
                    run_blocking=checks)
    r.service.auth_failures.base_delay = 0  # the count, not the wait, is tested here
    limit = r.service.auth_failures.per_address_limit
    guessers = []
    for i in range(30):
        client = await connect(r.port)
        await ehlo(client)
        client.send(b"AUTH PLAIN " + plain("scanner", f"guess {i}") + b"\r\n")
        guessers.append(client)
    refused = [await c.read(1) for c in guessers[limit:]]
    assert refused == [[TOO_MANY]] * (30 - limit)
    assert len(checks.started) == limit
    checks.release()
    assert [await c.read(1) for c in guessers[:limit]] == [[INVALID]] * limit


@pytest_twisted.ensureDeferred
async def test_hanging_up_before_the_answer_still_counts(relay):
    checks = HeldChecks()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                    run_blocking=checks)
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"AUTH PLAIN " + plain("scanner", "guess") + b"\r\n")
    await until(lambda: len(checks.started) == 1)
    client.transport.loseConnection()
    await client.wait_closed()
    await until(lambda: r.service.connections.total == 0)
    checks.release()
    assert r.service.auth_failures.delay("127.0.0.1", r.service.clock.seconds()) == 1.0


@pytest_twisted.ensureDeferred
async def test_a_lockout_aimed_from_another_address_does_not_stop_the_right_password(relay):
    clock = Clock()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                    clock=clock, run_blocking=inline)
    r.service.auth_failures.base_delay = 0  # the attacker's own waits are not the point
    # The attacker at 127.0.0.2 burns its failures, and more, on the scanner's name.
    for _ in range(5):
        attacker = await connect(r.port, source="127.0.0.2")
        await ehlo(attacker)
        attacker.send(b"".join(b"AUTH PLAIN " + plain("scanner", f"guess{i}") + b"\r\n"
                               for i in range(3)))
        await attacker.wait_closed()
    assert attacker.replies[-1] == TOO_MANY
    # The scanner at 127.0.0.1 is neither refused nor slowed down (it has not failed
    # itself: tests/security/test_aimed_slowdown.py): its right password works at once.
    r.service.auth_failures.base_delay = 1
    device = await connect(r.port)
    await ehlo(device)
    device.send(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD) + b"\r\n")
    assert (await device.read(1)) == ["235 2.7.0 Authentication successful"]
    # And the attacker's address stays refused, whatever name it tries.
    again = await connect(r.port, source="127.0.0.2")
    await ehlo(again)
    assert (await again.command(b"AUTH PLAIN " + plain("erp", "x"))) == TOO_MANY


def test_failure_records_are_bounded() -> None:
    failures = AuthFailures(max_tracked=1000)
    for i in range(20000):
        failures.failed(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", float(i),
                        f"user{i}")
    assert failures.tracked() <= 2000
    # The newest are the ones kept.
    assert failures.delay("10.0.78.31", 20000.0, "user19999") > 0


def test_an_undecided_check_counts_against_nobody() -> None:
    failures = AuthFailures(per_address_limit=2)
    first = failures.begin("192.0.2.1", "scanner", 0.0)
    assert first is not None and failures.begin("192.0.2.1", "scanner", 0.0) is not None
    assert failures.begin("192.0.2.1", "scanner", 0.0) is None  # two in flight: the limit
    failures.abandon(first)
    assert not failures.blocked("192.0.2.1", 0.0)
    assert failures.delay("192.0.2.1", 0.0, "scanner") == 1.0  # the other, in flight
