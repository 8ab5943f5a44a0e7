"""
SMTP AUTH PLAIN and LOGIN against [[users]]: success, uniform failure, the caps on
failures per connection and per address, the back-off, TLS first, and no secret in any
log line.
"""

from __future__ import annotations

import base64

import pytest_twisted
from twisted.internet.task import Clock
from twisted.logger import formatEvent, globalLogPublisher

from tests.inbound.harness import (
    ERP_PASSWORD,
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.testing.spool import FIRST_ID

INVALID = "535 5.7.8 Authentication credentials invalid"
TOO_MANY = "421 4.7.0 Too many failed authentication attempts"


def b64(text: str) -> bytes:
    return base64.b64encode(text.encode())


async def tls_session(relay, certs, **config):  # type: ignore[no-untyped-def]
    r = await relay(make_config(certs, allow_networks=NOWHERE, **config))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"STARTTLS")
    client.start_tls(certs)
    await ehlo(client)
    return r, client


@pytest_twisted.ensureDeferred
async def test_auth_plain_then_send_within_the_users_senders(relay, certs):
    r, client = await tls_session(relay, certs)
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")).startswith(
        "550 5.7.1 Relaying denied")
    assert (await client.command(b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))) == (
        "235 2.7.0 Authentication successful")
    assert (await client.command(b"MAIL FROM:<boss@example.com>")) == (
        '550 5.7.1 Sender <boss@example.com> is not allowed for user scanner by '
        'users."scanner".senders; allowed: scanner@example.com')
    assert (await client.command(b"MAIL FROM:<scanner@example.com>")) == "250 2.1.0 Ok"
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"scan\r\n.\r\n")) == "250 2.0.0 Ok: queued as " + FIRST_ID
    [(envelope, data)] = r.spool.messages()
    assert envelope.authenticated_user == "scanner"
    assert b" with ESMTPSA id " in data.split(b"\r\n")[1]
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "503 5.5.1 Already authenticated")


@pytest_twisted.ensureDeferred
async def test_auth_plain_with_a_challenge(relay, certs):
    r, client = await tls_session(relay, certs)
    assert (await client.command(b"AUTH PLAIN")) == "334 "
    assert (await client.command(plain("erp", ERP_PASSWORD))) == (
        "235 2.7.0 Authentication successful")


@pytest_twisted.ensureDeferred
async def test_auth_login_both_ways(relay, certs):
    r, client = await tls_session(relay, certs)
    assert (await client.command(b"AUTH LOGIN")) == "334 VXNlcm5hbWU6"
    assert (await client.command(b64("erp"))) == "334 UGFzc3dvcmQ6"
    assert (await client.command(b64(ERP_PASSWORD))) == "235 2.7.0 Authentication successful"
    r2, client2 = await tls_session(relay, certs)
    assert (await client2.command(b"AUTH LOGIN " + b64("scanner"))) == "334 UGFzc3dvcmQ6"
    assert (await client2.command(b64(SCANNER_PASSWORD))) == (
        "235 2.7.0 Authentication successful")


@pytest_twisted.ensureDeferred
async def test_wrong_user_and_wrong_password_look_the_same(relay, certs):
    r, client = await tls_session(relay, certs, max_auth_failures=5)
    wrong_password = await client.command(b"AUTH PLAIN " + plain("scanner", "guess"))
    wrong_user = await client.command(b"AUTH PLAIN " + plain("nobody", SCANNER_PASSWORD))
    assert wrong_password == wrong_user == INVALID
    await client.command(b"AUTH LOGIN " + b64("nobody"))
    assert (await client.command(b64("x"))) == INVALID


@pytest_twisted.ensureDeferred
async def test_failures_per_connection_capped_then_421_and_close(relay, certs):
    r, client = await tls_session(relay, certs, max_auth_failures=3)
    r.service.auth_failures.base_delay = 0  # this test is about the count, not the wait
    assert (await client.command(b"AUTH PLAIN " + plain("erp", "a"))) == INVALID
    assert (await client.command(b"AUTH PLAIN " + plain("erp", "b"))) == INVALID
    assert (await client.command(b"AUTH PLAIN " + plain("erp", "c"))) == TOO_MANY
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_back_off_per_address_slows_the_next_answers(relay):
    clock = Clock()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False,
                                max_auth_failures=10), clock=clock, run_blocking=inline)
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(b"AUTH PLAIN " + plain("erp", "a"))) == INVALID
    client.send(b"AUTH PLAIN " + plain("erp", "b") + b"\r\n")
    await until(lambda: any(p._busy for p in r.service.live))
    clock.advance(0.99)
    assert client.replies == []
    clock.advance(0.01)
    assert (await client.read(1)) == [INVALID]
    # A new connection from the same address inherits the wait (now 2 s), even for the
    # right password, so the wait tells nothing about the answer.
    other = await connect(r.port)
    await ehlo(other)
    other.send(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD) + b"\r\n")
    await until(lambda: any(p._busy for p in r.service.live))
    clock.advance(1.5)
    assert other.replies == []
    clock.advance(0.5)
    assert (await other.read(1)) == ["235 2.7.0 Authentication successful"]
    # Success clears the address.
    assert r.service.auth_failures.delay("127.0.0.1", clock.seconds()) == 0


@pytest_twisted.ensureDeferred
async def test_address_with_too_many_failures_is_refused_outright(relay):
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                    run_blocking=inline)
    failures = r.service.auth_failures
    for _ in range(failures.per_address_limit):
        failures.failed("127.0.0.1", r.service.clock.seconds())
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == TOO_MANY
    await client.wait_closed()


@pytest_twisted.ensureDeferred
async def test_auth_before_starttls_refused(relay, certs):
    r = await relay(make_config(certs))
    client = await connect(r.port)
    await ehlo(client)
    # (issue 23: the text goes on to name the settings that decide)
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))).startswith(
        "530 5.7.0 Must issue a STARTTLS command first (server.require_tls_for_auth")
    assert (await client.command(b"AUTH LOGIN")).startswith(
        "530 5.7.0 Must issue a STARTTLS command first")


@pytest_twisted.ensureDeferred
async def test_auth_without_tls_when_allowed(relay):
    r = await relay(make_config(require_tls_for_auth=False), run_blocking=inline)
    client = await connect(r.port)
    reply = await ehlo(client)
    assert "250-AUTH PLAIN LOGIN" in reply.split("\n")
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "235 2.7.0 Authentication successful")
    received = None
    await client.command(b"MAIL FROM:<x@example.com>")
    await client.command(b"RCPT TO:<y@example.org>")
    await client.command(b"DATA")
    await client.command(b"hi\r\n.\r\n")
    [(_, received)] = r.spool.messages()
    assert b" with ESMTPA id " in received.split(b"\r\n")[1]


@pytest_twisted.ensureDeferred
async def test_auth_state_errors(relay, certs):
    r, client = await tls_session(relay, certs)
    assert (await client.command(b"AUTH CRAM-MD5")) == (
        "504 5.5.4 Unrecognised authentication mechanism; use PLAIN or LOGIN")
    r2 = await relay(make_config(with_users=False, require_tls_for_auth=False))
    client2 = await connect(r2.port)
    reply = await ehlo(client2)
    assert "AUTH" not in reply
    assert (await client2.command(b"AUTH PLAIN " + plain("erp", "x"))) == (
        "502 5.5.1 AUTH not available")
    await client2.command(b"MAIL FROM:<a@example.com>")
    r3 = await relay(make_config(require_tls_for_auth=False), run_blocking=inline)
    client3 = await connect(r3.port)
    await ehlo(client3)
    await client3.command(b"MAIL FROM:<a@example.com>")
    assert (await client3.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))) == (
        "503 5.5.1 AUTH not permitted during a mail transaction")


@pytest_twisted.ensureDeferred
async def test_no_password_or_response_in_logs(relay, certs):
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    try:
        r, client = await tls_session(relay, certs, max_auth_failures=5)
        await client.command(b"AUTH PLAIN " + plain("erp", "WrongSecret-123"))
        await client.command(b"AUTH LOGIN")
        await client.command(b64("erp"))
        await client.command(b64("Other-Wrong-456"))
        await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))
    finally:
        globalLogPublisher.removeObserver(events.append)
    text = "\n".join(formatEvent(e) + repr(e) for e in events)
    assert "authenticated as erp" in text  # the log does record what happened
    for secret in ("WrongSecret-123", "Other-Wrong-456", ERP_PASSWORD):
        assert secret not in text
        assert b64(secret).decode() not in text
    assert plain("erp", ERP_PASSWORD).decode() not in text
