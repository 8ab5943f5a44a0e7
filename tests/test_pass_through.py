"""
Pass-through listeners, end to end: the device's end of DATA is answered with Exchange's
own reply.  When nothing was delivered the device is told so and keeps the message (it
will retry or report the failure itself), so the relay neither retries nor bounces it:
one failure, reported once, to the one who can act on it.
"""

from __future__ import annotations

import json
import os
import smtplib
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task, threads
from twisted.python.filepath import FilePath

from tests.conftest import free_port
from xrelay.configfile import read_config
from xrelay.sandbox import DEFAULT_TENANT, Sandbox
from xrelay.service import makeService

MAILBOX = "printers@sandbox.example"


@pytest.fixture
def sandbox(tmp_path: Path):
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


@pytest.fixture
def relay(tmp_path: Path, sandbox: Sandbox):
    """A relay whose app may send only as its own mailbox, on a pass-through listener."""
    app = sandbox.identity.register_app(DEFAULT_TENANT)
    sandbox.identity.add_user(DEFAULT_TENANT, MAILBOX, "unused password 1")
    sandbox.exchange.grant_app_mailbox(app.client_id, MAILBOX)
    secret = tmp_path / "secret.txt"
    secret.write_text(app.client_secret + "\n")
    os.chmod(secret, 0o600)
    port = free_port()
    account = {
        "name": "printers", "provider": "microsoft", "flow": "client_credentials",
        "tenant": DEFAULT_TENANT, "client_id": app.client_id,
        "client_secret_file": str(secret), "user": MAILBOX,
        "authority": sandbox.authority, "smtp_host": sandbox.smtp_host,
        "smtp_port": sandbox.smtp_port, "ca_file": sandbox.ca_file, "senders": ["*"],
    }
    (tmp_path / "xrelay.toml").write_text(
        "[server]\n"
        f'listen = [{{ endpoint = "tcp:{port}:interface=127.0.0.1", pass_through = true }}]\n'
        'state_dir = "state"\n\n[[accounts]]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in account.items()))
    service = makeService(read_config(str(tmp_path / "xrelay.toml")), reactor=reactor)
    service.startService()
    pytest_twisted.blockon(service.inbound.when_listening())
    service.port = port
    yield service
    pytest_twisted.blockon(service.stopService())


def send(port: int, sender: str) -> tuple[int, bytes]:
    """One message; the end-of-DATA reply (smtplib's data() returns it, never raises)."""
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.ehlo()
        client.mail(sender)
        client.rcpt("customer@example.net")
        return client.data(f"From: {sender}\r\nTo: customer@example.net\r\n"
                           "Subject: invoice\r\n\r\nattached\r\n".encode())


async def settle() -> None:
    await task.deferLater(reactor, 0.5, lambda: None)


@pytest_twisted.ensureDeferred
async def test_delivered_upstream_before_the_device_hears_250(relay, sandbox) -> None:
    code, text = await threads.deferToThread(send, relay.port, MAILBOX)
    assert code == 250 and text.startswith(b"2.0.0 Ok: delivered as ")
    # Exchange's own reply follows (issue 23; the README says so)
    assert b"; upstream said 250 2.6.0 <" in text and b"Queued mail for delivery" in text
    # The 250 came after Exchange accepted it, not after the spool did.
    assert [m.mail_from for m in sandbox.mailbox.messages] == [MAILBOX]
    await settle()
    assert relay.spool.counts()["queued"] == relay.spool.counts()["deferred"] == 0


@pytest_twisted.ensureDeferred
async def test_send_as_denied_reaches_the_device_and_nothing_is_bounced(relay, sandbox) -> None:
    code, text = await threads.deferToThread(send, relay.port, "scanner@sandbox.example")
    assert code == 554
    assert text.startswith(
        f"5.2.252 SendAsDenied; {MAILBOX} not allowed to send as scanner@sandbox.example".encode())
    await settle()
    counts = relay.spool.counts()
    assert counts["queued"] == counts["deferred"] == counts["failed"] == 0
    assert sandbox.mailbox.messages == []  # no bounce: the device was told
    # The message trace says so too.
    from xrelay.history import TraceQuery, history_path, search

    await relay.history.flush()
    (traced,) = search(history_path(relay.config.server.state_dir), TraceQuery())
    assert traced.outcome == "handed back" and traced.last_reply.startswith("554 5.2.252")


@pytest_twisted.ensureDeferred
async def test_temporary_failure_is_the_devices_to_retry(relay, sandbox) -> None:
    sandbox.exchange.fail_next("END_OF_DATA", "451 4.7.500 Server busy. Please try again later.")
    reply = await threads.deferToThread(send, relay.port, MAILBOX)
    assert reply == (451, b"4.7.500 Server busy. Please try again later.")
    await settle()
    counts = relay.spool.counts()
    assert counts["queued"] == counts["deferred"] == counts["failed"] == 0
    # The device's retry goes through, once.
    code, _ = await threads.deferToThread(send, relay.port, MAILBOX)
    assert code == 250 and len(sandbox.mailbox.messages) == 1
