"""
Findings on the admin page: 40 concurrent wrong passwords were all checked (limit 5 per
300 s); five wrong passwords from an address locked the admin out for 300 s even with
the right password (any local user can do it to a loopback admin page); 1,001
anonymous C{GET /login} evicted the signed-in admin's session; C{Host:} built the OAuth
C{redirect_uri}.  Kept here with the requests the attacker sent, over real HTTP.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.internet import defer, reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS

from tests.admin.conftest import ADMIN_PASSWORD, start_relay
from tests.admin.test_web import Browser as WebBrowser
from xrelay.admin.lockout import MAX_FAILURES


class _Bound:
    """Connections from another loopback address (another host on the network)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def endpointForURI(self, uri: Any) -> Any:
        return TCP4ClientEndpoint(reactor, uri.host.decode(), uri.port,
                                  bindAddress=(self.source, 0))


class Browser(WebBrowser):
    """A browser's cookie jar (every cookie, the device cookie too), no redirects
    followed, optionally connecting from another loopback address."""

    def __init__(self, base: str, source: str | None = None) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.http = HTTPClient(Agent.usingEndpointFactory(reactor, _Bound(source))) \
            if source else treq

    async def request(self, method: str, path: str, data: dict[str, str] | None = None,
                      headers: dict[str, str] | None = None) -> tuple[Any, str]:
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        response = await self.http.request(method, self.base + path, data=data,
                                           headers=headers, allow_redirects=False)
        body = (await response.content()).decode("utf-8")
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = value.decode("ascii").partition("=")
            cookie = rest.split(";", 1)[0]
            if cookie:
                self.cookies[name] = cookie
            else:
                self.cookies.pop(name, None)
        return response, body


def slow_verify(site: Any, calls: list[str]) -> None:
    """Count the password checks, each as slow as a real scrypt check (in its thread)."""
    real = site.verify

    def verify(password: str, stored: str) -> bool:
        calls.append(password)
        time.sleep(0.3)
        return real(password, stored)

    site.verify = verify


@pytest_twisted.ensureDeferred
async def test_concurrent_wrong_admin_passwords_are_limited_to_the_limit(world) -> None:
    relay = start_relay(world)
    calls: list[str] = []
    slow_verify(relay.admin.site, calls)
    guessers = [Browser(world.admin_url) for _ in range(40)]
    tokens = [await g.csrf("/login") for g in guessers]
    responses = await defer.gatherResults([
        defer.ensureDeferred(g.request("POST", "/login", {"csrf_token": t,
                                                          "password": f"guess {i}"}))
        for i, (g, t) in enumerate(zip(guessers, tokens, strict=True))])
    codes = sorted(response.code for response, _ in responses)
    assert codes == [403] * MAX_FAILURES + [429] * (40 - MAX_FAILURES)
    assert len(calls) == MAX_FAILURES


@pytest_twisted.ensureDeferred
async def test_a_lockout_aimed_from_another_address_does_not_stop_the_admin(world) -> None:
    relay = start_relay(world)
    relay.admin.site.failures.base_delay = 0.05  # the wait for the account stays short
    attacker = Browser(world.admin_url, source="127.0.0.2")
    for _ in range(MAX_FAILURES):
        assert (await attacker.sign_in("guess")).code == 403
    assert (await attacker.sign_in(ADMIN_PASSWORD)).code == 429  # its own lockout
    admin = Browser(world.admin_url)
    response = await admin.sign_in()
    assert response.code == 303 and response.headers.getRawHeaders(b"location") == [b"/"]


@pytest_twisted.ensureDeferred
async def test_a_local_user_cannot_lock_out_a_browser_that_signed_in_before(world) -> None:
    relay = start_relay(world)
    relay.admin.site.failures.base_delay = 0.05  # the wait for the account stays short
    admin = Browser(world.admin_url)
    assert (await admin.sign_in()).code == 303
    assert f"xrelay_device_{world.admin_port}" in admin.cookies
    token = await admin.csrf("/")
    await admin.request("POST", "/logout", {"csrf_token": token})
    # Another local user, on the same 127.0.0.1, burns the address's failures.
    local_user = Browser(world.admin_url)
    for _ in range(MAX_FAILURES):
        assert (await local_user.sign_in("guess")).code == 403
    assert (await local_user.sign_in(ADMIN_PASSWORD)).code == 429
    # The operator's browser is counted by its device cookie, not by the address.
    assert (await admin.sign_in()).code == 303
    response, _ = await admin.request("GET", "/")
    assert response.code == 200
    # A forged device cookie is worth nothing.
    forger = Browser(world.admin_url)
    forger.cookies[f"xrelay_device_{world.admin_port}"] = "abc.def"
    assert (await forger.sign_in(ADMIN_PASSWORD)).code == 429


@pytest_twisted.ensureDeferred
async def test_anonymous_login_floods_do_not_evict_a_signed_in_session(world) -> None:
    relay = start_relay(world)
    admin = Browser(world.admin_url)
    assert (await admin.sign_in()).code == 303
    from xrelay.admin.sessions import MAX_SESSIONS

    for _ in range(MAX_SESSIONS + 1):
        response = await treq.get(world.admin_url + "/login")  # no cookie: a new session
        await response.content()
    response, body = await admin.request("GET", "/")
    assert response.code == 200, body
    assert relay.admin.site.sessions.count(authenticated=False) <= MAX_SESSIONS


@pytest_twisted.ensureDeferred
async def test_redirect_uri_ignores_a_forged_host_header(world) -> None:
    start_relay(world)
    admin = Browser(world.admin_url)
    await admin.sign_in()
    token = await admin.csrf("/")
    response, _ = await admin.request("POST", "/signin", {"csrf_token": token,
                                                          "account": "boss"},
                                      headers={"Host": "evil.example:8025"})
    assert response.code == 303
    url = response.headers.getRawHeaders(b"location")[0].decode()
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["redirect_uri"] == f"{world.admin_url}/signin/callback"
    assert "evil.example" not in url


@pytest_twisted.ensureDeferred
async def test_session_cookie_is_secure_when_the_page_is_served_over_tls(world) -> None:
    from twisted.python.filepath import FilePath

    from xrelay.sandbox.ca import CertificateAuthority

    ca = CertificateAuthority.create(FilePath(str(world.tmp / "admin-ca")))
    issued = ca.issue()
    text = world.config_path.read_text().replace(
        f'listen = "tcp:{world.admin_port}:interface=127.0.0.1"',
        f'listen = "ssl:{world.admin_port}:interface=127.0.0.1:privateKey='
        f'{issued.key_file}:certKey={issued.chain_file}"')
    world.config_path.write_text(text)
    start_relay(world)
    browser = Browser(f"https://localhost:{world.admin_port}")
    browser.http = HTTPClient(Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(
        trustRoot=ca.trust_root())))
    seen: list[bytes] = []
    real = browser.request

    async def request(*args: Any, **kwargs: Any) -> tuple[Any, str]:
        response, body = await real(*args, **kwargs)
        seen.extend(response.headers.getRawHeaders(b"set-cookie", []))
        return response, body

    browser.request = request  # type: ignore[method-assign]
    assert (await browser.sign_in()).code == 303
    assert seen and all(b"Secure" in value for value in seen), seen
