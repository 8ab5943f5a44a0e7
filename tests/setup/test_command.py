"""
`xrelay setup microsoft` in a pseudo-terminal against a relay on the sandbox default:
the plan is shown before the sign-in, the device code is shown and approved on the
sandbox's page by the test, the app, permission, certificate and Exchange steps happen,
and a test message reaches the mailbox; then `xrelay setup rotate` replaces the
certificate while mail keeps flowing.
"""

from __future__ import annotations

import os
import stat
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.setup.helpers import (approve_device_code, device_code_shown, run_in_terminal,
                                 start_sandbox_relay)

MAILBOX = "relay@sandbox.example"
ADMIN = "admin@sandbox.example"


@pytest.fixture
def sandbox_relay(tmp_path, monkeypatch) -> Any:
    running = start_sandbox_relay(tmp_path, monkeypatch)
    yield running
    pytest_twisted.blockon(running.relay.stopService())


def setup_in_terminal(sandbox_relay: Any, *args: str, admin: str = ADMIN,
                      decline: bool = False) -> tuple[int, str]:
    terminal = run_in_terminal(["setup", *args], sandbox_relay.folder)
    url, code = device_code_shown(terminal)
    before_sign_in = terminal.output
    approve_device_code(sandbox_relay.sandbox, url, code, admin, decline=decline)
    status = terminal.wait()
    # The plan came before the sign-in was asked for.
    assert ("xrelay setup will do this:" if args[0] == "microsoft" else
            "the old one is then removed from the app") in before_sign_in
    return status, terminal.output


@pytest_twisted.ensureDeferred
async def test_setup_smtp_in_a_terminal_then_rotate(sandbox_relay) -> None:
    status, out = await deferToThread(
        setup_in_terminal, sandbox_relay, "microsoft", "--mailbox", MAILBOX,
        "--method", "smtp", "--name", "printers", "--senders", "scanner@example.org",
        "--yes")
    assert status == 0, out
    for shown in ("Office 365 Exchange Online: SMTP.SendAsApp (application)",
                  "Creating the app registration", "Made a certificate on this host",
                  "Waiting until Entra ID gives the new app a token",
                  "Exchange Online accepts the app",
                  f"Test message to {MAILBOX}: delivered", "Done: the relay delivers"):
        assert shown in out, out
    relay = sandbox_relay.relay
    account = relay.config.account("printers")
    assert account.flow == "client_credentials" and account.transport == "smtp"
    key_mode = stat.S_IMODE(os.stat(account.certificate_key_file).st_mode)
    assert key_mode == 0o600
    assert "/managed/credentials/" in account.certificate_key_file
    (app,) = [a for a in relay.sandbox.entra.applications.values()
              if a.app_id == account.client_id]
    assert "xrelay" in app.tags and len(app.key_credentials) == 1
    old_key_file = account.certificate_key_file

    # Rotation: a new certificate in use, the old one gone from the app, mail flowing
    # throughout (a test message every moment while it runs, each one delivered).
    rotation = deferToThread(setup_in_terminal, sandbox_relay, "rotate", "printers",
                             "--yes")
    finished: list[Any] = []
    rotation.addBoth(lambda r: finished.append(r) or r)
    sent_during = 0
    while not finished:
        await _spool_test(relay, "printers")
        sent_during += 1
        # Within Exchange's 30 messages a minute per mailbox.
        await task.deferLater(reactor, 1.0, lambda: None)
    status, out = await rotation
    assert status == 0, out
    assert sent_during >= 3, sent_during
    rotated = relay.config.account("printers")
    assert rotated.certificate_key_file != old_key_file
    assert len(app.key_credentials) == 1
    from cryptography import x509
    with open(rotated.certificate_file, "rb") as f:
        assert app.key_credentials[0].certificate == x509.load_pem_x509_certificate(f.read())
    assert os.path.exists(old_key_file)  # kept until the admin deletes it
    result = await relay.delivery.deliver_now(await _spool_test(relay, "printers"))
    assert {str(r.outcome) for r in result.recipients} == {"Outcome.DELIVERED"} or all(
        r.outcome.name == "DELIVERED" for r in result.recipients)


async def _spool_test(relay: Any, account: str) -> str:
    from xrelay.operations.testmessage import send_test_message

    result = await send_test_message(relay, MAILBOX, account)
    assert result["outcome"] == "delivered", (result["reply"], result["detail"])
    return str(result["entry_id"])


@pytest.mark.parametrize("method, mailbox", [("graph", MAILBOX),
                                             ("delegated", "user@sandbox.example")])
@pytest_twisted.ensureDeferred
async def test_setup_graph_and_delegated_in_a_terminal(sandbox_relay, method,
                                                       mailbox) -> None:
    def run() -> tuple[int, str]:
        # graph: with the large-message path (Mail.ReadWrite and upload sessions).
        large = ["--large-messages"] if method == "graph" else []
        terminal = run_in_terminal(["setup", "microsoft", "--mailbox", mailbox,
                                    "--method", method, *large, "--yes"],
                                   sandbox_relay.folder)
        url, code = device_code_shown(terminal)
        approve_device_code(sandbox_relay.sandbox, url, code, ADMIN)
        if method == "delegated":
            # Then the mailbox's own user signs in once, with a device code too.
            user_url = terminal.read_until(r"URL: (https://\S+)").group(1)
            user_code = terminal.read_until(r"Code: (\S+)").group(1)
            approve_device_code(sandbox_relay.sandbox, user_url, user_code, mailbox)
        return terminal.wait(), terminal.output

    status, out = await deferToThread(run)
    assert status == 0, out
    assert f"Test message to {mailbox}: delivered" in out, out
    name = mailbox.split("@")[0]
    account = sandbox_relay.relay.config.account(name)
    assert account.transport == ("graph" if method == "graph" else "smtp")
    assert account.graph_large_messages == ("upload_session" if method == "graph"
                                            else "refuse")
    assert account.flow == ("device_code" if method == "delegated"
                            else "client_credentials")
