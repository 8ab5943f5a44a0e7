"""
Operators first: with an account held "upstream unreachable" and the upstream back,
`xrelay queue retry --all`, `xrelay reload` and the admin page's Retry each send the
held account's probe at once (the rest follows when it goes through) and say so, on a
real daemon.  The hold's own next probe is minutes away (first_retry = 300 s): without
the operator's word nothing would move within the test's wait.
"""

from __future__ import annotations

import re

import pytest
import pytest_twisted

from tests.admin.conftest import write_config
from tests.admin.test_web import Browser, until
from tests.operations.test_commands import delivered_to, smtp_send, start_daemon, xrelay
from tests.operations.test_logs_and_reload import wait_for_log

HELD = "account sandbox held: upstream unreachable"


async def held_daemon(world, daemons, count: int = 3):
    write_config(world, delegated=True, first_retry=300)
    world.sandbox.exchange.down = True
    daemon = await start_daemon(world)
    daemons.append(daemon)
    for n in range(count):
        await smtp_send(world.smtp_port, "printer@sandbox.example", f"held{n}@example.net")
    await wait_for_log(daemon, HELD)
    world.sandbox.exchange.down = False
    return daemon


async def all_delivered(world, count: int) -> None:
    # "Within seconds": far below the hold's 300 s, generous for a loaded machine.
    await until(lambda: all(delivered_to(world, f"held{n}@example.net")
                            for n in range(count)), timeout=30)


@pytest_twisted.ensureDeferred
async def test_retry_all_lifts_the_hold(world, daemons) -> None:
    await held_daemon(world, daemons)
    code, out, err = await xrelay(world, "queue", "retry", "--all")
    assert code == 0, err
    assert re.search(r"^\d+ entries due now$", out, re.M), out
    assert "account sandbox was held (upstream unreachable): one probe now, the rest " \
           "of its mail follows when it goes through" in out
    await all_delivered(world, 3)


@pytest_twisted.ensureDeferred
async def test_reload_lifts_the_hold(world, daemons) -> None:
    daemon = await held_daemon(world, daemons)
    code, out, err = await xrelay(world, "reload")
    assert code == 0, err
    assert out.startswith("configuration reloaded\n")
    assert "account sandbox was held (upstream unreachable): one probe now" in out
    await all_delivered(world, 3)
    await wait_for_log(daemon, "account sandbox resumed (the probe went through)")


@pytest.mark.parametrize("which", ["one", "all"])
@pytest_twisted.ensureDeferred
async def test_admin_retry_lifts_the_hold(world, daemons, which: str) -> None:
    daemon = await held_daemon(world, daemons)
    entry_id = re.search(r"(\d{8}T\d{6}\.\d+-\d+-\d+) from <printer@sandbox\.example>",
                         daemon.log()).group(1)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    # The State column says first what stops the mail (the hold, why, until when), the
    # token (fine) after it.
    _, body = await browser.request("GET", "/")
    state = re.search(r'id="account-state-sandbox"[^>]*>([^<]*)<', body).group(1)
    assert state.startswith("held: upstream unreachable until 20"), state
    assert body.index('id="account-state-sandbox"') < body.index('id="state-sandbox"')
    token = await browser.csrf("/queue")
    if which == "one":
        response, _ = await browser.request("POST", "/queue/retry",
                                            {"id": entry_id, "csrf_token": token})
    else:
        response, _ = await browser.request("POST", "/queue/retry-all",
                                            {"csrf_token": token})
    assert response.code == 303
    _, body = await browser.request("GET", "/queue")
    assert "account sandbox was held (upstream unreachable): one probe now" in body
    await all_delivered(world, 3)
