"""
`xrelay health` and GET /healthz: healthy on a running relay; unhealthy, naming the check,
for a listener that is not bound, an account failing past server.health_grace, a full
spool, and a daemon that is not running.  `xrelay accounts` with the daemon stopped
exits 1; without a configuration no command writes anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet.threads import deferToThread

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import smtp_send, until
from tests.conftest import bin_path, free_port
from tests.operations.test_commands import start_daemon, xrelay
from xrelay.operations import health
from xrelay.operations.health import failing_accounts, health_report


async def healthz(world: Any) -> tuple[int, dict[str, Any]]:
    response = await treq.get(world.admin_url + "/healthz")
    assert response.headers.getRawHeaders(b"content-type") == [b"application/json"]
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_a_running_relay_is_healthy_and_a_stopped_one_is_not(world, daemons) -> None:
    daemon = await start_daemon(world)
    daemons.append(daemon)
    code, out, err = await xrelay(world, "health")
    assert code == 0, out + err
    assert out.splitlines()[:5] == ["healthy", "ok     daemon", "ok     listeners",
                                    "ok     spool", "ok     accounts"]
    status, report = await healthz(world)
    assert status == 200
    assert report["healthy"] is True and report["failed"] == []
    assert set(report["checks"]) == {"daemon", "listeners", "spool", "accounts"}
    assert report["checks"]["listeners"]["bound"] == [f"tcp:{world.smtp_port}:interface=127.0.0.1"]
    assert report["checks"]["spool"]["free"] > report["checks"]["spool"]["min_free_space"]

    await deferToThread(daemon.stop)
    code, out, err = await xrelay(world, "health")
    assert code == 1
    assert out.splitlines()[:2] == ["unhealthy: daemon", "FAILED daemon: not running "
                                    f"(nothing answers on {world.state_dir}/control.sock)"]
    code, out, err = await xrelay(world, "accounts")
    assert (code, out) == (1, "")
    assert "xrelay: the relay is not running, so no account is delivering" in err
    code, out, err = await xrelay(world, "accounts", "--offline")
    assert out.startswith("# account states from the token cache (--offline: as last "
                          "recorded; the daemon was not asked)\n"), out
    assert "\nsandbox\tok\tmicrosoft/client_credentials\t" in out


@pytest_twisted.ensureDeferred
async def test_a_listener_that_is_not_bound_is_unhealthy(world) -> None:
    # A listener that cannot bind at start ends the daemon (tests/test_startup.py); one
    # that stops listening while the relay runs is what health has to catch.
    second = free_port()
    write_config(world, delegated=True)
    text = world.config_path.read_text().replace(
        f'listen = ["tcp:{world.smtp_port}:interface=127.0.0.1"]',
        f'listen = ["tcp:{world.smtp_port}:interface=127.0.0.1", '
        f'"tcp:{second}:interface=127.0.0.1"]')
    world.config_path.write_text(text)
    relay = start_relay(world)
    await relay.inbound.when_listening()
    status, report = await healthz(world)
    assert status == 200 and report["checks"]["listeners"]["ok"] is True
    endpoint = f"tcp:{second}:interface=127.0.0.1"
    await relay.inbound.bound[endpoint].stopListening()
    status, report = await healthz(world)
    assert status == 503
    assert report["healthy"] is False and report["failed"] == ["listeners"]
    listeners = report["checks"]["listeners"]
    assert listeners["not_bound"] == [endpoint]
    assert listeners["detail"].startswith(f"not listening on {endpoint};")


@pytest_twisted.ensureDeferred
async def test_an_account_failing_past_the_grace_period_is_unhealthy(world) -> None:
    write_config(world, delegated=True, server_extra="health_grace = 60")
    relay = start_relay(world)  # boss (auth_code) has never signed in
    await until(lambda: relay.tokens.status()["boss"].state == "needs sign-in")
    since = relay.tokens.status()["boss"].failing_since
    assert failing_accounts(relay, since + 59) == []
    assert health_report(relay, since + 59)["healthy"] is True
    report = health_report(relay, since + 61)
    assert report["failed"] == ["accounts"]
    [boss] = report["checks"]["accounts"]["failing"]
    assert (boss["account"], boss["state"]) == ("boss", "needs sign-in")
    assert report["checks"]["accounts"]["detail"] == (
        "account boss: needs sign-in for 61 s; run `xrelay login boss` or use Sign in on "
        "the admin page")
    # and through the admin listener, once the grace period has really passed
    write_config(world, delegated=True, server_extra="health_grace = 1")
    assert relay.reload()
    await until(lambda: time.time() - since > 1.5)
    status, served = await healthz(world)
    assert status == 503 and served["failed"] == ["accounts"]


@pytest_twisted.ensureDeferred
async def test_an_account_held_by_the_provider_past_the_grace_period_is_unhealthy(
        world) -> None:
    # The token is fine; Exchange refuses SMTP AUTH for the tenant (535 5.7.139).
    from xrelay.sandbox.service import DEFAULT_MAILBOX

    world.sandbox.exchange.answer_as(DEFAULT_MAILBOX, "smtp-auth-tenant")
    relay = start_relay(world)
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["client@example.net"])
    await until(lambda: relay.delivery.status().accounts["sandbox"].held)
    held = relay.delivery.status().accounts["sandbox"]
    assert relay.tokens.status()["sandbox"].state in ("ok", "expiring")
    def sandbox_failing(now: float) -> list[dict[str, Any]]:
        return [f for f in failing_accounts(relay, now) if f["account"] == "sandbox"]

    assert sandbox_failing(held.since + 899) == []
    [sandbox] = sandbox_failing(held.since + 901)
    assert sandbox["state"] == "SMTP AUTH disabled"
    assert "Set-TransportConfig" in sandbox["hint"] or "Set-CASMailbox" in sandbox["hint"]
    assert "accounts" in health_report(relay, held.since + 901)["failed"]


@pytest_twisted.ensureDeferred
async def test_a_full_spool_is_unhealthy(world, monkeypatch) -> None:
    relay = start_relay(world)
    monkeypatch.setattr(health, "disk_free", lambda path: 4096)
    status, report = await healthz(world)
    assert status == 503 and report["failed"] == ["spool"]
    spool = report["checks"]["spool"]
    assert spool["writable"] is True and spool["free"] == 4096
    assert spool["detail"] == (
        f"4096 bytes free in {relay.spool.directory}, not more than server.min_free_space "
        "(104857600); new mail gets 452 until space is freed")


def test_without_a_configuration_no_command_writes_anything(tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("XRELAY_CONFIG", None)
    for args, expected in ((["accounts"], 1), (["accounts", "--offline"], 1),
                           (["health"], 1), (["queue", "list"], 1),
                           (["reload"], 1), (["login", "sandbox"], 1),
                           (["send-test", "--to", "x@example.net"], 1),
                           (["check-config"], 0), (["doctor", "sandbox"], 1),
                           (["doctor", "--script", "sandbox"], 1)):
        result = subprocess.run([bin_path("xrelay"), *args], cwd=tmp_path, env=env,
                                capture_output=True, timeout=60)
        assert result.returncode == expected, (args, result)
        assert b"Traceback" not in result.stderr
        assert list(tmp_path.iterdir()) == [], args
    assert free_port()  # loopback only: nothing here listened
