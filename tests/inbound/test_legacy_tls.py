"""
Old devices' TLS: a listener with tls_min_version = "1.0" serves a real TLS 1.0 client
(`openssl s_client -tls1 -starttls smtp`), the same client is refused by a default
listener and the refusal is in the log with the reason; `starttls = false` hides
STARTTLS on that listener only.
"""

from __future__ import annotations

import pytest
import pytest_twisted

from tests.inbound.harness import connect, ehlo, make_config, until
from tests.inbound.tlsclient import OPENSSL, conversation, s_client
from xrelay.config import ListenerConfig
from xrelay.testing.spool import FIRST_ID

pytestmark = pytest.mark.skipif(OPENSSL is None, reason="openssl is not installed")

#: A device that speaks only TLS 1.0 with old suites.
TLS1_DEVICE = ("-tls1", "-cipher", "DEFAULT@SECLEVEL=0")


def listeners(*extra: ListenerConfig) -> tuple[ListenerConfig, ...]:
    return (ListenerConfig("tcp:0:interface=127.0.0.1"), *extra)


@pytest_twisted.ensureDeferred
async def test_tls1_device_delivers_through_a_legacy_listener(relay, certs, tmp_path,
                                                              logged):
    config = make_config(certs, listen=listeners(
        ListenerConfig("tcp:0:interface=127.0.0.1", tls_min_version="1.0")))
    r = await relay(config)
    run = await s_client(r.ports[1], tmp_path, *TLS1_DEVICE, stdin=conversation())
    assert "Protocol  : TLSv1\n" in run.output, run.output
    assert "250 2.0.0 Ok: queued as " + FIRST_ID in run.output, run.output
    [(envelope, data)] = r.spool.messages()
    assert envelope.recipients == ("a@example.org",)
    assert b" with ESMTPS id " in data
    assert data.endswith(b"\r\n\r\nscanned page\r\n")
    assert "TLS handshake failed" not in logged.text


@pytest_twisted.ensureDeferred
async def test_tls1_device_is_refused_by_a_default_listener_and_the_log_says_why(
        relay, certs, tmp_path, logged):
    config = make_config(certs, listen=listeners(
        ListenerConfig("tcp:0:interface=127.0.0.1", tls_min_version="1.0")))
    r = await relay(config)
    run = await s_client(r.ports[0], tmp_path, *TLS1_DEVICE, stdin=conversation())
    assert "queued as" not in run.output
    assert "alert protocol version" in run.output, run.output
    await until(lambda: "TLS handshake failed" in logged.text)
    failures = [line for line in logged.text.splitlines() if "TLS handshake failed" in line]
    assert failures == [
        "inbound client 127.0.0.1 on tcp:0:interface=127.0.0.1: TLS handshake failed: "
        "client offered only TLS 1.0; this listener's tls_min_version is 1.2 (set "
        "tls_min_version = \"1.0\" on a listener for old devices)"]
    assert r.spool.messages() == []


@pytest_twisted.ensureDeferred
async def test_implicit_tls_failure_is_logged_once(relay, certs, tmp_path, logged):
    config = make_config(certs, listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1", implicit_tls=True),))
    r = await relay(config)
    run = await s_client(r.port, tmp_path, *TLS1_DEVICE, starttls=False)
    assert "alert protocol version" in run.output, run.output
    await until(lambda: "TLS handshake failed" in logged.text)
    failures = [line for line in logged.text.splitlines() if "TLS handshake failed" in line]
    assert len(failures) == 1 and "client offered only TLS 1.0" in failures[0]


@pytest_twisted.ensureDeferred
async def test_modern_client_handshake_is_not_reported(relay, certs, tmp_path, logged):
    r = await relay(make_config(certs))
    run = await s_client(r.port, tmp_path, stdin=conversation())
    assert "250 2.0.0 Ok: queued as " + FIRST_ID in run.output, run.output
    assert "TLS handshake failed" not in logged.text


@pytest_twisted.ensureDeferred
async def test_starttls_false_hides_starttls_on_that_listener_only(relay, certs):
    config = make_config(certs, listen=listeners(
        ListenerConfig("tcp:0:interface=127.0.0.1", starttls=False)))
    r = await relay(config)
    offering = await connect(r.ports[0])
    assert "250-STARTTLS" in (await ehlo(offering)).split("\n")
    hiding = await connect(r.ports[1])
    assert "STARTTLS" not in await ehlo(hiding)
    assert (await hiding.command(b"STARTTLS")) == "502 5.5.1 STARTTLS not available"
    # The device carries on in plain text, as it does when STARTTLS is not offered.
    await hiding.command(b"MAIL FROM:<scanner@example.com>")
    await hiding.command(b"RCPT TO:<a@example.org>")
    await hiding.command(b"DATA")
    assert (await hiding.command(b"Subject: x\r\n\r\nhi\r\n.\r\n")) == (
        "250 2.0.0 Ok: queued as " + FIRST_ID)
