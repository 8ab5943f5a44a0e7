"""
The browser sign-in's redirect URI: the one the relay sends is the one the status page
shows beside the sign-in button, and the one to register: C{admin.public_url} when set,
else C{http://localhost:PORT} for a loopback listener (Entra accepts C{http://} only
for localhost).
"""

from __future__ import annotations

import html
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import pytest_twisted

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import Browser, location
from xrelay.admin.web import callback_uri


@pytest.mark.parametrize("public_url, address, port, secure, expected", [
    (None, "127.0.0.1", 8025, False, "http://localhost:8025/signin/callback"),
    (None, "::1", 8026, False, "http://localhost:8026/signin/callback"),
    ("https://relay.example.com/admin/", "127.0.0.1", 8025, False,
     "https://relay.example.com/admin/signin/callback"),
    (None, "192.168.10.5", 8025, True, "https://192.168.10.5:8025/signin/callback"),
])
def test_callback_uri(public_url, address, port, secure, expected) -> None:
    assert callback_uri(public_url, address, port, secure) == expected


async def sent_and_shown(world) -> tuple[str, str]:
    browser = Browser(world.admin_url)
    await browser.sign_in()
    _, page = await browser.request("GET", "/")
    shown = re.findall(r'<code class="redirect-uri">([^<]+)</code>', page)
    assert len(set(shown)) == 1, page
    token = await browser.csrf("/")
    response, _ = await browser.request("POST", "/signin", {"csrf_token": token,
                                                            "account": "boss"})
    assert response.code == 303
    query = parse_qs(urlsplit(location(response)).query)
    return query["redirect_uri"][0], html.unescape(shown[0])


@pytest_twisted.ensureDeferred
async def test_loopback_listener_sends_and_shows_localhost(world) -> None:
    start_relay(world)
    sent, shown = await sent_and_shown(world)
    assert sent == shown == f"http://localhost:{world.admin_port}/signin/callback"


@pytest_twisted.ensureDeferred
async def test_public_url_is_sent_and_shown(world) -> None:
    write_config(world, delegated=True,
                 extra='public_url = "https://relay.example.com/xrelay"')
    start_relay(world)
    sent, shown = await sent_and_shown(world)
    assert sent == shown == "https://relay.example.com/xrelay/signin/callback"
