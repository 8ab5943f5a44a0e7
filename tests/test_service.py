"""
The wiring in makeService, in one process: a delegated account whose sign-in is
missing or revoked keeps its mail queued (deferred, never bounced), and signing in again
delivers everything queued, with no restart.
"""

from __future__ import annotations

import json
import smtplib
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, threads
from twisted.python.filepath import FilePath

from tests.conftest import free_port
from tests.waiting import until
from xrelay.configfile import read_config
from xrelay.sandbox import Sandbox
from xrelay.service import makeService

TENANT = "contoso.onmicrosoft.com"
USER = "scanner-relay@contoso.com"


@pytest.fixture
def sandbox(tmp_path: Path):
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.identity.device_code_interval = 1
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


def send(port: int, subject: str) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail(USER, ["customer@example.net"],
                        f"From: {USER}\r\nTo: customer@example.net\r\nSubject: {subject}\r\n"
                        "\r\nbody\r\n")


async def sign_in(relay: Any, sandbox: Sandbox) -> None:
    prompt = await relay.tokens.start_device_code("delegated")
    sandbox.identity.approve_device_code(prompt.user_code, USER)
    await relay.tokens.finish_device_code(prompt)


@pytest_twisted.ensureDeferred
async def test_needs_sign_in_keeps_mail_then_login_delivers_it(tmp_path: Path,
                                                               sandbox: Sandbox) -> None:
    app = sandbox.identity.register_app(TENANT, public_client=True)
    sandbox.identity.add_user(TENANT, USER, "correct horse battery staple")
    port = free_port()
    account = {
        "name": "delegated", "provider": "microsoft", "flow": "device_code",
        "tenant": TENANT, "client_id": app.client_id, "user": USER,
        "authority": sandbox.authority, "smtp_host": sandbox.smtp_host,
        "smtp_port": sandbox.smtp_port, "ca_file": sandbox.ca_file,
        "senders": ["*@contoso.com"],
    }
    (tmp_path / "xrelay.toml").write_text(
        "[server]\n"
        f'listen = ["tcp:{port}:interface=127.0.0.1"]\n'
        'state_dir = "state"\n\n[delivery]\nfirst_retry = 3600\n\n[[accounts]]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in account.items()))
    relay = makeService(read_config(str(tmp_path / "xrelay.toml")), reactor=reactor)
    relay.startService()
    try:
        await relay.inbound.when_listening()

        # Never signed in: accepted, kept, deferred, not bounced.
        await threads.deferToThread(send, port, "first")
        await until(lambda: relay.spool.counts()["deferred"] == 1)
        assert relay.tokens.status()["delegated"].state == "needs sign-in"
        assert relay.spool.counts()["failed"] == 0
        assert sandbox.mailbox.messages == []

        # Signing in resumes the account at once, despite the hour-long retry delay.
        await sign_in(relay, sandbox)
        await until(lambda: len(sandbox.mailbox.messages) == 1)
        assert b"Subject: first" in sandbox.mailbox.messages[0].data
        assert relay.tokens.status()["delegated"].state == "ok"

        # Revoked (password changed, consent withdrawn): the next message waits again.
        # An authenticated upstream session outlives its token, as on Exchange Online,
        # so the revocation shows once the relay needs a new connection.
        sandbox.identity.revoke(USER)
        sandbox.identity.expire_access_tokens()
        await sandbox.exchange.close_connections()
        await threads.deferToThread(send, port, "second")
        await until(lambda: relay.spool.counts()["deferred"] == 1)
        # The refused token is refreshed (and refused for good) just after the 535
        # defers the message: wait for that, rather than catch the moment between.
        await until(lambda: relay.tokens.status()["delegated"].state == "needs sign-in")
        assert len(sandbox.mailbox.messages) == 1

        await sign_in(relay, sandbox)
        await until(lambda: len(sandbox.mailbox.messages) == 2)
        assert b"Subject: second" in sandbox.mailbox.messages[1].data
        assert relay.spool.counts() == {**relay.spool.counts(), "queued": 0,
                                        "deferred": 0, "failed": 0}
    finally:
        await relay.stopService()
