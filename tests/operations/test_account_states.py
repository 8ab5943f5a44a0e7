"""
A held account as an operator meets it: the real daemon (a `twistd` subprocess)
delivering into the sandbox in this process, which answers the mailbox's sessions with
Exchange Online's "SMTP AUTH disabled for the tenant"; `xrelay accounts` and /metrics
show the hold and its fix, and everything resumes by itself once it is lifted.
"""

from __future__ import annotations

import re

import pytest_twisted
import treq
from twisted.internet import reactor, task

from tests.admin.conftest import write_config  # noqa: F401
from tests.operations.test_commands import delivered_to, smtp_send, start_daemon, xrelay


async def accounts_until(world, pattern: str, tries: int = 300) -> tuple[int, str]:
    for _ in range(tries):
        code, out, err = await xrelay(world, "accounts")
        if re.search(pattern, out, re.M):
            return code, out
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"`xrelay accounts` never matched {pattern!r}:\n{out}{err}")


@pytest_twisted.ensureDeferred
async def test_held_account_in_accounts_and_metrics_then_resumed(world, daemons) -> None:
    write_config(world, first_retry=2)
    daemons.append(await start_daemon(world))
    code, out = await accounts_until(world, r"^sandbox\tok\t.*\taccount ok")
    assert code == 0, out

    mailbox = world.sandbox.default_account()["user"]
    world.sandbox.exchange.answer_as(mailbox, "smtp-auth-tenant")
    await smtp_send(world.smtp_port, "printer@sandbox.example", "held@example.net")
    code, out = await accounts_until(world, r"\taccount SMTP AUTH disabled\t")
    assert code == 1, out
    assert "Set-TransportConfig -SmtpClientAuthenticationDisabled $false" in out
    assert re.search(r"^sandbox\tok\t", out, re.M)  # the token itself is fine

    response = await treq.get(world.admin_url + "/metrics")
    text = (await response.content()).decode()
    assert 'xrelay_account_state{account="sandbox",state="SMTP AUTH disabled"} 1.0' in text

    world.sandbox.exchange.answer_as(mailbox, None)  # the admin turns SMTP AUTH on
    code, out = await accounts_until(world, r"\taccount ok")
    for _ in range(300):
        if delivered_to(world, "held@example.net"):
            break
        await task.deferLater(reactor, 0.1, lambda: None)
    assert delivered_to(world, "held@example.net")
    code, out, err = await xrelay(world, "accounts")
    assert code == 0, out
