"""
Real SMTP clients against the listener on loopback: Python's smtplib (plain, STARTTLS,
implicit TLS, AUTH PLAIN and LOGIN) and swaks (AUTH PLAIN/LOGIN over STARTTLS and
implicit TLS).  Blocking clients run in a thread so the reactor keeps serving.
"""

from __future__ import annotations

import shutil
import smtplib
import ssl
import subprocess

import pytest
import pytest_twisted
from twisted.internet import threads

from tests.inbound.harness import ERP_PASSWORD, NOWHERE, make_config
from xrelay.config import ListenerConfig
from xrelay.testing.spool import FIRST_ID

MESSAGE = "Subject: from a real client\r\n\r\nHello from the scanner.\r\n.leading dot\r\n"


def context(certs) -> ssl.SSLContext:  # type: ignore[no-untyped-def]
    return ssl.create_default_context(cafile=certs.ca_file)


def body_of(data: bytes) -> bytes:
    return data.split(b"\r\n\r\n", 1)[1]


@pytest_twisted.ensureDeferred
async def test_smtplib_plain_from_allowed_network(relay):
    r = await relay(make_config())

    def send() -> dict:
        with smtplib.SMTP("127.0.0.1", r.port, local_hostname="printer.lan") as smtp:
            return smtp.sendmail("scan@example.com", ["a@example.org", "b@example.org"],
                                 MESSAGE)

    assert (await threads.deferToThread(send)) == {}
    [(envelope, data)] = r.spool.messages()
    assert envelope.recipients == ("a@example.org", "b@example.org")
    assert body_of(data) == b"Hello from the scanner.\r\n.leading dot\r\n"
    assert r.delivery.submissions == list(r.spool.stored)


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest_twisted.ensureDeferred
async def test_smtplib_starttls_auth(relay, certs, mechanism):
    r = await relay(make_config(certs, allow_networks=NOWHERE))

    def send() -> tuple:
        with smtplib.SMTP("localhost", r.port) as smtp:
            smtp.starttls(context=context(certs))
            smtp.ehlo()
            smtp.user, smtp.password = "erp", ERP_PASSWORD
            code, _ = smtp.auth(mechanism, getattr(smtp, "auth_" + mechanism.lower()))
            smtp.sendmail("invoices@example.com", ["a@example.org"], MESSAGE)
            return code, smtp.noop()

    code, noop = await threads.deferToThread(send)
    assert code == 235 and noop == (250, b"2.0.0 Ok")
    [(envelope, data)] = r.spool.messages()
    assert envelope.authenticated_user == "erp"
    assert b" with ESMTPSA id " in data


@pytest_twisted.ensureDeferred
async def test_smtplib_implicit_tls_login(relay, certs):
    r = await relay(make_config(certs, allow_networks=NOWHERE, listen=(
        ListenerConfig("tcp:0:interface=127.0.0.1", implicit_tls=True),)))

    def send() -> None:
        with smtplib.SMTP_SSL("localhost", r.port, context=context(certs)) as smtp:
            smtp.login("erp", ERP_PASSWORD)
            smtp.sendmail("invoices@example.com", ["a@example.org"], MESSAGE)

    await threads.deferToThread(send)
    [(envelope, _)] = r.spool.messages()
    assert envelope.authenticated_user == "erp"


@pytest_twisted.ensureDeferred
async def test_smtplib_sees_refusals_as_exceptions(relay, certs):
    r = await relay(make_config(certs, allow_networks=NOWHERE))

    def send() -> tuple:
        with smtplib.SMTP("localhost", r.port) as smtp:
            try:
                smtp.sendmail("invoices@example.com", ["a@example.org"], MESSAGE)
            except smtplib.SMTPSenderRefused as e:
                refused = (e.smtp_code, e.smtp_error)
            smtp.starttls(context=context(certs))
            try:
                smtp.login("erp", "wrong")
            except smtplib.SMTPAuthenticationError as e:
                return refused, (e.smtp_code, e.smtp_error)
        raise AssertionError("not refused")

    refused, auth = await threads.deferToThread(send)
    assert refused[0] == 550 and refused[1].startswith(b"5.7.1 Relaying denied")
    assert auth == (535, b"5.7.8 Authentication credentials invalid")
    assert r.spool.started == []


SWAKS = shutil.which("swaks")


@pytest.mark.skipif(SWAKS is None, reason="swaks is not installed (apt-get install swaks)")
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "implicit-tls"])
@pytest_twisted.ensureDeferred
async def test_swaks(relay, certs, mechanism, implicit):
    listen = (ListenerConfig("tcp:0:interface=127.0.0.1", implicit_tls=implicit),)
    r = await relay(make_config(certs, allow_networks=NOWHERE, listen=listen))
    command = [
        SWAKS, "--server", "localhost", "--port", str(r.port),
        "--tls-on-connect" if implicit else "--tls",
        "--tls-verify", "--tls-ca-path", certs.ca_file,
        "--auth", mechanism, "--auth-user", "erp", "--auth-password", ERP_PASSWORD,
        "--from", "invoices@example.com", "--to", "a@example.org",
        "--ehlo", "swaks.test", "--header", "Subject: swaks test", "--body", "via swaks",
    ]
    result = await threads.deferToThread(
        subprocess.run, command, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<~  235 2.7.0 Authentication successful" in result.stdout
    assert "<~  250 2.0.0 Ok: queued as " + FIRST_ID in result.stdout
    [(envelope, data)] = r.spool.messages()
    assert envelope.authenticated_user == "erp"
    assert envelope.client_helo == "swaks.test"
    assert b"Subject: swaks test\r\n" in data and b"via swaks\r\n" in data
