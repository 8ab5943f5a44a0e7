"""
Findings (low) on the admin listener: C{/healthz} and C{/metrics} answered anyone who
reached the admin port (the daemon's PID, every listener, the spool path, free disk
bytes, and for a failing account its name, the identity platform's error text, the app's
client id and the secret file's path); the admin forms took the CSRF token from the query
string and ignored C{Origin}; the session cookie on C{127.0.0.1} had one name for every
port of that host.  Kept here with the requests the attacker sent, over real HTTP.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest_twisted
import treq

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import spool_message, until
from tests.operations.test_commands import daemons, start_daemon, xrelay  # noqa: F401
from tests.security.test_admin_signin import Browser
from xrelay.operations import health

ATTACKER = "127.0.0.2"
ROOT = Path(__file__).resolve().parents[2]


async def get_json(browser: Browser, path: str) -> tuple[int, Any, str]:
    response, body = await browser.request("GET", path)
    return response.code, json.loads(body), body


@pytest_twisted.ensureDeferred
async def test_healthz_tells_a_stranger_only_whether_and_what_failed(world, monkeypatch):
    write_config(world, delegated=True, server_extra="health_grace = 1", monitoring=False)
    relay = start_relay(world)  # boss (auth_code) has never signed in: it fails
    await until(lambda: relay.tokens.status()["boss"].state == "needs sign-in")
    since = relay.tokens.status()["boss"].failing_since
    await until(lambda: time.time() - since > 1.5)
    monkeypatch.setattr(health, "disk_free", lambda path: 4096)  # and the spool is full

    stranger = Browser(world.admin_url)
    code, report, body = await get_json(stranger, "/healthz")
    assert code == 503
    assert set(report) == {"healthy", "failed", "detail"}
    assert report["healthy"] is False and report["failed"] == ["spool", "accounts"]
    boss = relay.config.account("boss")
    for secret in (str(os.getpid()), relay.spool.directory, str(world.state_dir),
                   str(world.tmp), boss.client_id, boss.client_secret_file, "boss",
                   "sandbox", "needs sign-in", f"tcp:{world.smtp_port}", "4096"):
        assert secret not in body, secret

    # The operator, signed in, gets the whole report (so the test above can fail).
    assert (await stranger.sign_in()).code == 303
    code, full, body = await get_json(stranger, "/healthz")
    assert code == 503 and full["failed"] == ["spool", "accounts"]
    assert full["checks"]["daemon"]["pid"] == os.getpid()
    assert relay.spool.directory in body and "boss" in body


@pytest_twisted.ensureDeferred
async def test_the_container_health_check_still_gets_the_whole_report(world, daemons):  # noqa: F811
    # The Containerfile's HEALTHCHECK and the systemd notes run `xrelay health`, which
    # asks the daemon over its control socket: no admin network, no sign-in.
    write_config(world, monitoring=False)
    daemons.append(await start_daemon(world))
    code, out, err = await xrelay(world, "health", "--json")
    assert code == 0, out + err
    report = json.loads(out)
    assert report["healthy"] is True and report["checks"]["daemon"]["pid"] > 0
    assert report["checks"]["spool"]["path"].startswith(str(world.state_dir))
    response = await treq.get(world.admin_url + "/healthz")
    assert response.code == 200
    assert set(json.loads(await response.content())) == {"healthy", "failed", "detail"}
    assert 'CMD ["xrelay", "health"]' in (ROOT / "Containerfile").read_text()


@pytest_twisted.ensureDeferred
async def test_metrics_and_health_detail_for_a_monitoring_network_only(world):
    write_config(world, monitoring=False, extra='monitoring_networks = ["127.0.0.1/32"]')
    start_relay(world)
    monitor = Browser(world.admin_url)  # from 127.0.0.1
    stranger = Browser(world.admin_url, source=ATTACKER)

    response, body = await stranger.request("GET", "/metrics")
    assert response.code == 403 and "xrelay_" not in body
    assert "admin.monitoring_networks" in body
    response, body = await monitor.request("GET", "/metrics")
    assert response.code == 200 and "xrelay_messages_accepted_total" in body

    code, report, _ = await get_json(stranger, "/healthz")
    assert code == 200 and set(report) == {"healthy", "failed", "detail"}
    code, report, _ = await get_json(monitor, "/healthz")
    assert code == 200 and set(report["checks"]) >= {"daemon", "listeners", "spool"}

    # A signed-in browser outside the monitoring network reads them too.
    assert (await stranger.sign_in()).code == 303
    response, body = await stranger.request("GET", "/metrics")
    assert response.code == 200 and "xrelay_messages_accepted_total" in body


@pytest_twisted.ensureDeferred
async def test_by_default_nobody_reads_metrics_without_signing_in(world):
    write_config(world, monitoring=False)
    start_relay(world)
    response = await treq.get(world.admin_url + "/metrics")
    assert response.code == 403
    await response.content()


async def signed_in(world: Any) -> tuple[Any, Browser, str, str]:
    relay = start_relay(world)
    relay.delivery.stopService()  # keep the entry in the queue
    entry_id = await spool_message(relay)
    admin = Browser(world.admin_url)
    assert (await admin.sign_in()).code == 303
    token = await admin.csrf("/queue")
    return relay, admin, entry_id, token


@pytest_twisted.ensureDeferred
async def test_a_csrf_token_in_the_query_string_is_refused(world):
    relay, admin, entry_id, token = await signed_in(world)
    response, body = await admin.request("POST", f"/queue/delete?csrf_token={token}",
                                         {"id": entry_id})
    assert response.code == 403 and "did not come from this page" in body
    # Not even beside the right one in the body: a token in the URL is a leaked token.
    response, _ = await admin.request("POST", f"/queue/delete?csrf_token={token}",
                                      {"id": entry_id, "csrf_token": token})
    assert response.code == 403
    assert relay.spool.get(entry_id).state == "queued"
    # The form as the page sends it works.
    response, _ = await admin.request("POST", "/queue/delete",
                                      {"id": entry_id, "csrf_token": token})
    assert response.code == 303
    assert relay.spool.ids("queued") == []


@pytest_twisted.ensureDeferred
async def test_a_form_from_another_origin_is_refused(world):
    relay, admin, entry_id, token = await signed_in(world)
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{world.admin_port + 1}",
                   f"https://127.0.0.1:{world.admin_port}"):
        response, body = await admin.request("POST", "/queue/delete",
                                             {"id": entry_id, "csrf_token": token},
                                             headers={"Origin": origin})
        assert response.code == 403, origin
        assert "did not come from this site" in body
        assert relay.spool.get(entry_id).state == "queued"
    # Its own origin (the address the browser used), or no Origin at all, is fine.
    response, _ = await admin.request("POST", "/queue/retry",
                                      {"id": entry_id, "csrf_token": token},
                                      headers={"Origin": world.admin_url})
    assert response.code == 303
    response, _ = await admin.request("POST", "/queue/delete",
                                      {"id": entry_id, "csrf_token": token})
    assert response.code == 303


@pytest_twisted.ensureDeferred
async def test_cookies_are_host_only_and_named_for_the_port(world):
    start_relay(world)
    admin = Browser(world.admin_url)
    seen: list[str] = []
    real = admin.request

    async def request(*args: Any, **kwargs: Any) -> tuple[Any, str]:
        response, body = await real(*args, **kwargs)
        seen.extend(v.decode() for v in response.headers.getRawHeaders(b"set-cookie", []))
        return response, body

    admin.request = request  # type: ignore[method-assign]
    assert (await admin.sign_in()).code == 303
    port = world.admin_port
    names = {value.split("=", 1)[0] for value in seen}
    assert names == {f"xrelay_admin_{port}", f"xrelay_device_{port}"}
    for value in seen:
        assert "domain=" not in value.lower() and "Path=/" in value
        assert "HttpOnly" in value and "samesite=strict" in value.lower()
    # A cookie of the same plain name, set by another application on this host, is
    # not the session.
    other = Browser(world.admin_url)
    other.cookies["xrelay_admin"] = admin.cookies[f"xrelay_admin_{port}"]
    response, _ = await other.request("GET", "/")
    assert response.code == 303
    response, _ = await admin.request("GET", "/")
    assert response.code == 200


def test_the_tls_cookie_name_is_host_prefixed():
    from xrelay.admin.sessions import cookie_name

    assert cookie_name("xrelay_admin", 8025, secure=True) == "__Host-xrelay_admin"
    assert cookie_name("xrelay_admin", 8025, secure=False) == "xrelay_admin_8025"
