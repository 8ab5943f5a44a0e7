"""
The setup's refusals, each ending in one line that names the fix, through `xrelay setup`
in a pseudo-terminal against the sandbox default: an admin without the Entra role (403
Authorization_RequestDenied), the admin declining, a mailbox that does not exist
(nothing created), Exchange's part not yet done (the PowerShell block printed, the setup
waits, then succeeds once an Exchange admin runs it and Exchange applies it), and the
admin's token never written anywhere (state_dir, the sandbox folder, the output).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.setup.helpers import (approve_device_code, device_code_shown, run_in_terminal,
                                 start_sandbox_relay)

MAILBOX = "relay@sandbox.example"


@pytest.fixture
def sandbox_relay(tmp_path, monkeypatch) -> Any:
    running = start_sandbox_relay(tmp_path, monkeypatch)
    yield running
    pytest_twisted.blockon(running.relay.stopService())


def setup_as(sandbox_relay: Any, admin: str, *args: str, decline: bool = False,
             while_waiting: Any = None) -> tuple[int, str]:
    terminal = run_in_terminal(["setup", "microsoft", "--yes", *args], sandbox_relay.folder)
    url, code = device_code_shown(terminal)
    approve_device_code(sandbox_relay.sandbox, url, code, admin, decline=decline)
    if while_waiting is not None:
        while_waiting(terminal)
    return terminal.wait(), terminal.output


def last_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    return lines[-1]


@pytest_twisted.ensureDeferred
async def test_admin_without_the_role_is_told_which_role(sandbox_relay) -> None:
    status, out = await deferToThread(setup_as, sandbox_relay, "user@sandbox.example",
                                      "--mailbox", MAILBOX)
    assert status == 1, out
    line = last_line(out)
    assert line.startswith("xrelay: setup stopped: ")
    assert "lacks the Entra role" in line and "Global Administrator" in line, out
    assert not sandbox_relay.sandbox.entra.applications


@pytest_twisted.ensureDeferred
async def test_declined_sign_in_creates_nothing(sandbox_relay) -> None:
    status, out = await deferToThread(setup_as, sandbox_relay, "admin@sandbox.example",
                                      "--mailbox", MAILBOX, decline=True)
    assert status == 1, out
    line = last_line(out)
    assert "declined" in line and "run the setup again and accept" in line, out
    assert not sandbox_relay.sandbox.entra.applications


@pytest_twisted.ensureDeferred
async def test_a_mailbox_that_does_not_exist_stops_before_anything_is_made(
        sandbox_relay) -> None:
    status, out = await deferToThread(setup_as, sandbox_relay, "admin@sandbox.example",
                                      "--mailbox", "nobody@sandbox.example")
    assert status == 1, out
    line = last_line(out)
    assert "nobody@sandbox.example does not exist" in line and "nothing was created" in line
    assert not sandbox_relay.sandbox.entra.applications
    assert not (sandbox_relay.state_dir / "managed" / "accounts").exists()


@pytest_twisted.ensureDeferred
async def test_exchange_not_yet_done_waits_then_succeeds_and_no_admin_token_on_disk(
        sandbox_relay) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    sandbox = sandbox_relay.sandbox
    pasted: list[str] = []
    logged: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        logged.append(formatEvent(event) + repr(event))
    globalLogPublisher.addObserver(observe)

    def exchange_admin_pastes_the_block(terminal: Any) -> None:
        # The app admin has no Exchange role: xrelay prints the lines and waits.
        terminal.read_until(r"Waiting until Exchange Online accepts the app")
        block = terminal.output.split("waits until Exchange accepts the app:\n", 1)[1]
        block = block.split("\nWaiting until", 1)[0]
        pasted.append(block)
        # Still waiting while nobody has run them.
        terminal.read_until(r"not yet: Exchange refused the app's token")
        from twisted.internet.threads import blockingCallFromThread

        blockingCallFromThread(reactor, sandbox.exchange_admin.run_powershell, block)

    try:
        status, out = await deferToThread(
            setup_as, sandbox_relay, "appadmin@sandbox.example", "--mailbox", MAILBOX,
            "--name", "scanner", while_waiting=exchange_admin_pastes_the_block)
    finally:
        globalLogPublisher.removeObserver(observe)
    assert status == 0, out
    assert "may not run Exchange cmdlets" in out
    assert "New-ServicePrincipal -AppId" in pasted[0]
    assert f"Add-MailboxPermission -Identity {MAILBOX}" in pasted[0]
    assert "Exchange Online accepts the app." in out
    assert f"Test message to {MAILBOX}: delivered" in out

    # The admin's tokens (access and refresh) are nowhere on disk or in the output.
    admin_tokens = {t.token for t in sandbox.identity.access_tokens.values()
                    if t.upn == "appadmin@sandbox.example"}
    admin_tokens |= {t.token for t in sandbox.identity.refresh_tokens.values()
                     if t.upn == "appadmin@sandbox.example"}
    assert admin_tokens
    await task.deferLater(reactor, 0, lambda: None)
    leaks = [(str(path), token[:8]) for path in _files(sandbox_relay.folder)
             for token in admin_tokens if token.encode() in path.read_bytes()]
    assert not leaks
    assert not [t for t in admin_tokens if t in out]
    assert logged and not [t for t in admin_tokens for line in logged if t in line]


def _files(folder: Path) -> list[Path]:
    found = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            if path.is_file():
                found.append(path)
    return found
