"""
The wizard behind a proxy (`public_url`): the admin cannot be sent back to
http://localhost, so the page shows a device code with its link instead; the admin
enters it on the sandbox's page and the wizard carries on to a delivered test message.
"""

from __future__ import annotations

import html
import re
import time
from typing import Any

import attrs
import pytest
import pytest_twisted
import requests
from twisted.internet.threads import deferToThread

from tests.setup.helpers import approve_device_code, start_sandbox_relay


@pytest.fixture
def sandbox_relay(tmp_path, monkeypatch) -> Any:
    running = start_sandbox_relay(tmp_path, monkeypatch)
    yield running
    pytest_twisted.blockon(running.relay.stopService())


def csrf(page: str) -> str:
    match = re.search(r'name="csrf_token" value="([^"]+)"', page)
    assert match, page
    return match.group(1)


def walk(sandbox_relay: Any) -> str:
    base = sandbox_relay.admin_url
    with requests.Session() as browser:
        page = browser.get(f"{base}/login", timeout=10).text
        browser.post(f"{base}/login", data={"csrf_token": csrf(page),
                                            "password": sandbox_relay.admin_password()},
                     timeout=30)
        page = browser.get(f"{base}/setup", timeout=10).text
        browser.post(f"{base}/setup/plan", data={
            "csrf_token": csrf(page), "mailbox": "relay@sandbox.example",
            "method": "graph", "name": "proxied"}, timeout=10)
        page = browser.get(f"{base}/setup", timeout=10).text
        assert 'id="setup-signin"' not in page and 'id="setup-device"' in page
        browser.post(f"{base}/setup/device", data={"csrf_token": csrf(page)}, timeout=30)
        page = browser.get(f"{base}/setup", timeout=10).text
        code = re.search(r'id="user-code">([^<]+)<', page).group(1)
        link = html.unescape(re.search(r'id="device-link"[^>]*>([^<]+)<', page).group(1))
        approve_device_code(sandbox_relay.sandbox, link, code, "admin@sandbox.example")
        deadline = time.monotonic() + 180
        while 'id="test-result"' not in page:
            assert time.monotonic() < deadline, page
            assert 'id="setup-problem"' not in page, page
            time.sleep(0.5)
            page = browser.get(f"{base}/setup", timeout=10).text
        return re.search(r'id="test-result"[^>]*>([^<]+)<', page).group(1)


@pytest_twisted.ensureDeferred
async def test_behind_a_proxy_the_wizard_uses_a_device_code(sandbox_relay) -> None:
    relay = sandbox_relay.relay
    relay.config = attrs.evolve(relay.config, admin=attrs.evolve(
        relay.config.admin, public_url="http://relay.example.com:8025"))  # Secure cookies need TLS
    result = await deferToThread(walk, sandbox_relay)
    assert result.startswith("Test message: delivered"), result
