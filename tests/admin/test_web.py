"""
The admin page over real loopback HTTP against a real relay and sandbox: sign-in,
refusal of unauthenticated requests and of forms without the CSRF token, security
headers, the status and queue pages, and /metrics parsed with prometheus_client.
"""

from __future__ import annotations

import re
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest_twisted
import treq
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import defer, threads

from tests.admin.conftest import ADMIN_PASSWORD, start_relay
from tests.waiting import until  # noqa: F401 (other tests import it from here)
from xrelay.envelope import Envelope

#: The session cookie, named per listener port (or __Host- over TLS): xrelay.admin.sessions.
COOKIE = re.compile(r"((?:__Host-)?xrelay_admin(?:_\d+)?)=([^;]*)")


class Browser:
    """Just enough of a browser: one cookie, no redirects followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookie: str | None = None
        self.cookie_name = "xrelay_admin"
        self.set_cookie_headers: list[bytes] = []

    async def request(self, method: str, path: str, data: dict[str, str] | None = None
                      ) -> tuple[Any, str]:
        headers = {}
        if self.cookie:
            headers["Cookie"] = f"{self.cookie_name}={self.cookie}"
        response = await treq.request(method, self.base + path, data=data, headers=headers,
                                      allow_redirects=False)
        body = (await response.content()).decode("utf-8")
        for value in response.headers.getRawHeaders(b"set-cookie", []):
            self.set_cookie_headers.append(value)
            match = COOKIE.search(value.decode("ascii"))
            if match:
                self.cookie_name = match.group(1)
                self.cookie = match.group(2) or None
        return response, body

    async def csrf(self, path: str = "/") -> str:
        _, body = await self.request("GET", path)
        match = re.search(r'name="csrf_token" value="([^"]+)"', body)
        assert match, body
        return match.group(1)

    async def sign_in(self, password: str = ADMIN_PASSWORD) -> Any:
        token = await self.csrf("/login")
        response, _ = await self.request("POST", "/login",
                                         {"csrf_token": token, "password": password})
        return response


def location(response: Any) -> str:
    return response.headers.getRawHeaders(b"location")[0].decode()


def spool_message(relay: Any, sender: str = "printer@sandbox.example") -> str:
    incoming = relay.spool.incoming(Envelope(sender, ("someone@example.net",),
                                             account="sandbox", received_at=1.0))
    incoming.write(b"Subject: held\r\n\r\nbody\r\n")
    return incoming.commit()


@pytest_twisted.ensureDeferred
async def test_unauthenticated_requests_are_refused(world) -> None:
    relay = start_relay(world)
    relay.delivery.stopService()  # keep the entry in the queue
    entry_id = await spool_message(relay)
    anonymous = Browser(world.admin_url)

    response, body = await anonymous.request("GET", "/")
    assert response.code == 303 and location(response) == "/login"
    response, body = await anonymous.request("GET", "/queue")
    assert response.code == 303 and location(response) == "/login"
    assert entry_id not in body

    token = await anonymous.csrf("/login")  # a session, but not signed in
    response, body = await anonymous.request("POST", "/queue/delete",
                                             {"csrf_token": token, "id": entry_id})
    assert response.code == 403
    assert "Sign in first." in body
    assert relay.spool.get(entry_id).state == "queued"


@pytest_twisted.ensureDeferred
async def test_a_wrong_method_gets_405_with_allow(world) -> None:
    """RFC 9110 15.5.6: a 405 names the methods the page answers, in Allow."""
    relay = start_relay(world)

    def rebuilt() -> Any:
        raise AssertionError("the routes are rebuilt for a request")

    relay.admin.site._route_table = rebuilt  # built once, at start: never again
    anonymous = Browser(world.admin_url)
    response, body = await anonymous.request("DELETE", "/login")
    assert response.code == 405 and "Method not allowed." in body
    assert response.headers.getRawHeaders(b"allow") == [b"GET, POST"]
    response, _ = await anonymous.request("POST", "/metrics")
    assert response.code == 405
    assert response.headers.getRawHeaders(b"allow") == [b"GET"]
    response, _ = await anonymous.request("GET", "/no-such-page")
    assert response.code == 404 and not response.headers.hasHeader(b"allow")


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_refused(world) -> None:
    start_relay(world)
    browser = Browser(world.admin_url)
    response = await browser.sign_in("not the password")
    assert response.code == 403
    response, body = await browser.request("GET", "/")
    assert response.code == 303 and location(response) == "/login"


@pytest_twisted.ensureDeferred
async def test_post_without_csrf_token_is_refused(world) -> None:
    relay = start_relay(world)
    relay.delivery.stopService()
    entry_id = await spool_message(relay)
    browser = Browser(world.admin_url)
    response = await browser.sign_in()
    assert response.code == 303 and location(response) == "/"

    response, body = await browser.request("POST", "/queue/delete", {"id": entry_id})
    assert response.code == 403
    assert "did not come from this page" in body
    response, body = await browser.request("POST", "/queue/delete",
                                           {"id": entry_id, "csrf_token": "forged"})
    assert response.code == 403
    assert relay.spool.get(entry_id).state == "queued"

    # The sign-in form needs the token too.
    other = Browser(world.admin_url)
    await other.csrf("/login")
    response, _ = await other.request("POST", "/login", {"password": ADMIN_PASSWORD})
    assert response.code == 403

    # With the token, the same request works.
    token = await browser.csrf("/queue")
    response, _ = await browser.request("POST", "/queue/delete",
                                        {"id": entry_id, "csrf_token": token})
    assert response.code == 303
    assert relay.spool.ids("queued") == []


@pytest_twisted.ensureDeferred
async def test_security_headers_and_cookie_flags(world) -> None:
    start_relay(world)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    for path in ("/login", "/", "/queue", "/metrics", "/nothing-here"):
        response, _ = await browser.request("GET", path)
        h = response.headers
        csp = h.getRawHeaders(b"content-security-policy")[0].decode()
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
        assert f"form-action 'self' {world.sandbox.authority}" in csp
        assert h.getRawHeaders(b"x-frame-options") == [b"DENY"]
        assert h.getRawHeaders(b"x-content-type-options") == [b"nosniff"]
        assert h.getRawHeaders(b"referrer-policy") == [b"same-origin"]
        assert h.getRawHeaders(b"cache-control") == [b"no-store"]
    for value in browser.set_cookie_headers:
        flags = value.decode().lower()
        assert "httponly" in flags and "samesite=strict" in flags
        assert "secure" not in flags  # plain http on loopback: a Secure cookie would vanish


@pytest_twisted.ensureDeferred
async def test_secure_cookie_behind_https(world) -> None:
    from tests.admin.conftest import write_config

    write_config(world, delegated=True, extra='public_url = "https://relay.example.com"')
    start_relay(world)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    assert browser.set_cookie_headers
    assert all(b"Secure" in v for v in browser.set_cookie_headers)


@pytest_twisted.ensureDeferred
async def test_status_and_queue_pages_show_escaped_state(world) -> None:
    relay = start_relay(world)
    relay.delivery.stopService()
    entry_id = await spool_message(relay, sender="<script>x</script>@sandbox.example")
    browser = Browser(world.admin_url)
    await browser.sign_in()
    response, body = await browser.request("GET", "/")
    assert response.code == 200
    assert 'id="state-boss"' in body and 'id="signin-boss"' in body
    assert 'id="signin-sandbox"' not in body  # app-only: nothing to sign in
    assert re.search(r'id="count-queued"[^>]*>1<', body)
    response, body = await browser.request("GET", "/queue")
    assert entry_id in body
    assert "<script>" not in body and "&lt;script&gt;x&lt;/script&gt;" in body

    token = await browser.csrf("/queue")
    response, _ = await browser.request("POST", "/queue/retry",
                                        {"id": "20990101T000000.000000-1-000001",
                                         "csrf_token": token})
    assert response.code == 303
    _, body = await browser.request("GET", "/queue")
    assert "no entry 20990101T000000.000000-1-000001 in the queue" in body


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def smtp_send(port: int, sender: str, recipients: list[str],
                    password: tuple[str, str] | None = None) -> None:
    """Send one message over real SMTP (blocking smtplib in a thread)."""
    import smtplib

    from twisted.internet.threads import deferToThread

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            client.ehlo("tester")
            client.sendmail(sender, recipients, b"Subject: metrics\r\n\r\nhello\r\n")
    await deferToThread(send)


@pytest_twisted.ensureDeferred
async def test_metrics_after_a_known_sequence(world) -> None:
    await metrics_after_a_known_sequence(world)


async def metrics_after_a_known_sequence(world) -> None:
    """
    Two messages delivered, one refused for good by the upstream (bounced; the bounce
    is delivered too), over three SMTP connections: exact counts.  (Also run with log
    output switched off, in tests/operations/test_relay_metrics.py.)
    """
    relay = start_relay(world)
    world.sandbox.exchange.reject_recipient(
        "gone@example.net", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found")
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["a@example.net"])
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["b@example.net"])
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["gone@example.net"])
    # 2 messages + the bounce to printer@ arrive upstream; the refused one is in failed/.
    await until(lambda: len(world.sandbox.mailbox.messages) == 3
                and relay.spool.counts()["failed"] == 1
                and relay.delivery.totals["delivered"] == 3)  # settled, not just sent

    response = await treq.get(world.admin_url + "/metrics")
    assert response.headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain")
    s = metric_samples((await response.content()).decode())
    assert s[("xrelay_messages_accepted_total", (("account", "sandbox"),))] == 3
    # The bounce reached the upstream too, but it is not a device's message.
    assert s[("xrelay_messages_delivered_total", (("account", "sandbox"),))] == 2
    assert s[("xrelay_bounces_sent_total", (("account", "sandbox"),))] == 1
    assert s[("xrelay_messages_bounced_total",
              (("account", "sandbox"), ("reason", "rejected")))] == 1
    listener = f"tcp:{world.smtp_port}:interface=127.0.0.1"
    assert s[("xrelay_connections_total", (("listener", listener),))] == 3
    assert s[("xrelay_token_refreshes_total", (("account", "sandbox"),))] == 1
    assert s[("xrelay_delivery_latency_seconds_count", (("account", "sandbox"),))] == 2
    assert s[("xrelay_queue_messages", (("state", "failed"),))] == 1
    assert s[("xrelay_queue_messages", (("state", "queued"),))] == 0
    assert s[("xrelay_token_state", (("account", "sandbox"), ("state", "ok")))] == 1
    assert s[("xrelay_token_state", (("account", "boss"), ("state", "ok")))] == 0
    await defer.succeed(None)


@pytest_twisted.ensureDeferred
async def test_sign_in_return_with_unknown_state_is_refused(world) -> None:
    """The callback needs the state of a sign-in this page started; nothing else."""
    relay = start_relay(world)
    anonymous = Browser(world.admin_url)
    response, body = await anonymous.request(
        "GET", "/signin/callback?code=stolen&state=made-up")
    assert response.code == 400
    assert "This sign-in is unknown or has expired" in body
    assert relay.tokens.status()["boss"].state != "ok"
    # Starting one needs a signed-in session and the CSRF token.
    response, _ = await anonymous.request("POST", "/signin", {"account": "boss"})
    assert response.code == 403


@pytest_twisted.ensureDeferred
async def test_passwords_and_session_secrets_stay_out_of_the_log(world) -> None:
    from twisted.logger import formatEvent, globalLogPublisher

    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) or "")
        lines.append(repr({k: v for k, v in event.items() if k != "log_logger"}))
    globalLogPublisher.addObserver(observe)
    try:
        start_relay(world)
        browser = Browser(world.admin_url)
        await browser.sign_in("wrong password xyz")
        await browser.sign_in()
        token = await browser.csrf("/")
        await browser.request("POST", "/queue/retry", {"id": "x"})
    finally:
        globalLogPublisher.removeObserver(observe)
    text = "\n".join(lines)
    assert "wrong password from 127.0.0.1" in text
    assert "POST /queue/retry from 127.0.0.1 refused: CSRF token missing" in text
    for secret in ("wrong password xyz", ADMIN_PASSWORD, browser.cookie, token):
        assert secret and secret not in text


@pytest_twisted.ensureDeferred
async def test_password_guessing_is_cut_off(world) -> None:
    relay = start_relay(world)
    browser = Browser(world.admin_url)
    for _ in range(5):
        response = await browser.sign_in("guess")
        assert response.code == 403
    response = await browser.sign_in()  # even the right password, for now
    assert response.code == 429
    response, _ = await browser.request("GET", "/")
    assert response.code == 303
    # After the window, the right password works again.
    site = relay.admin.site
    site.failures._failures = {c: [t - 301 for t in ts]
                               for c, ts in site.failures._failures.items()}
    response = await browser.sign_in()
    assert response.code == 303 and location(response) == "/"


# -- Sign in with Google ------------------------------------------------------------------

GOOGLE_USER = "scanner@example.org"
GOOGLE_PASSWORD = "google password for tests"


def add_google_account(world: Any, flow: str = "auth_code") -> Any:
    """A Google OAuth client (web application) for the admin page's callback, and a user.
    Its sign-in page is named by "localhost", so its origin differs from Microsoft's."""
    import os

    from tests.admin.conftest import account_toml, write_config

    sb = world.sandbox
    client = sb.google.register_client(redirect_uris=[f"{world.admin_url}/signin/callback"])
    sb.google.add_user(GOOGLE_USER, GOOGLE_PASSWORD)
    secret = world.tmp / "google-secret.txt"
    fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, (client.client_secret + "\n").encode())
    os.close(fd)
    authorization = f"https://localhost:{sb.identity_port}/google/o/oauth2/v2/auth"
    write_config(world, delegated=True, sections=account_toml({
        "name": "gmail", "provider": "google", "flow": flow, "user": GOOGLE_USER,
        "client_id": client.client_id, "client_secret_file": str(secret),
        "authority": sb.google_authority, "authorization_url": authorization,
        "smtp_host": sb.smtp_host, "smtp_port": sb.gmail_smtp_port, "ca_file": sb.ca_file,
        "senders": [GOOGLE_USER], "messages_per_minute": 0,
    }))
    return client, authorization


@pytest_twisted.ensureDeferred
async def test_sign_in_with_google_delivers_queued_mail(world) -> None:
    from tests.tokens.test_microsoft import browser_sign_in

    client, authorization = add_google_account(world)
    relay = start_relay(world)
    # Mail for the Google account waits: it has never signed in.
    await smtp_send(world.smtp_port, GOOGLE_USER, ["someone@example.net"])
    await until(lambda: relay.tokens.status()["gmail"].state == "needs sign-in")
    await until(lambda: relay.spool.counts()["deferred"] == 1)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    response, body = await browser.request("GET", "/")
    assert 'id="signin-gmail"' in body and "Sign in with Google" in body
    assert "use Sign in with Google on the admin page as scanner@example.org" in body
    csp = response.headers.getRawHeaders(b"content-security-policy")[0].decode()
    assert (f"form-action 'self' {world.sandbox.authority} "
            f"https://localhost:{world.sandbox.identity_port};") in csp

    token = await browser.csrf("/")
    response, _ = await browser.request("POST", "/signin", {"csrf_token": token,
                                                            "account": "gmail"})
    assert response.code == 303
    url = location(response)
    assert url.startswith(authorization + "?")
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["client_id"] == client.client_id and query["response_type"] == "code"
    assert query["redirect_uri"] == f"{world.admin_url}/signin/callback"
    assert query["scope"] == "https://mail.google.com/ openid email"
    assert query["code_challenge_method"] == "S256" and len(query["code_challenge"]) == 43
    assert query["access_type"] == "offline" and query["prompt"] == "consent"
    assert query["login_hint"] == GOOGLE_USER and query["state"]
    assert not [m for m in world.sandbox.mailbox.messages if m.mail_from == GOOGLE_USER]

    callback = await threads.deferToThread(browser_sign_in, url, world.sandbox.ca_file,
                                  GOOGLE_USER, GOOGLE_PASSWORD)
    assert callback.startswith(f"{world.admin_url}/signin/callback?")
    anonymous = Browser(world.admin_url)  # the redirect is cross-site: no cookie
    response, body = await anonymous.request("GET", callback[len(world.admin_url):])
    assert response.code == 200, body
    assert "Account gmail is signed in (ok)" in body
    await until(lambda: [m for m in world.sandbox.mailbox.messages
                         if m.mail_from == GOOGLE_USER])
    (delivered,) = [m for m in world.sandbox.mailbox.messages if m.mail_from == GOOGLE_USER]
    assert delivered.mailbox == GOOGLE_USER and delivered.auth_mechanism == "XOAUTH2"
    assert delivered.rcpt_to == ("someone@example.net",)
    assert b"Subject: metrics" in delivered.data
    assert relay.spool.counts()["deferred"] == 0
    response, body = await browser.request("GET", "/")
    assert re.search(r'id="state-gmail"[^>]*>ok<', body), body
    # the same return again: its state is spent
    response, body = await anonymous.request("GET", callback[len(world.admin_url):])
    assert response.code == 400 and "This sign-in is unknown or has expired" in body


@pytest_twisted.ensureDeferred
async def test_google_refresh_token_account_offers_sign_in_and_decline_is_shown(world) -> None:
    add_google_account(world, flow="refresh_token")
    relay = start_relay(world)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    _, body = await browser.request("GET", "/")
    assert 'id="signin-gmail"' in body and "Sign in with Google" in body
    token = await browser.csrf("/")
    response, _ = await browser.request("POST", "/signin", {"csrf_token": token,
                                                            "account": "gmail"})
    state = parse_qs(urlsplit(location(response)).query)["state"][0]
    response, body = await browser.request(
        "GET", f"/signin/callback?error=access_denied&state={state}")
    assert response.code == 400
    assert "Sign-in for gmail did not complete: access_denied" in body
    assert relay.tokens.status()["gmail"].state != "ok"


# -- the status line, the Trace page, the Bounce button ----------------------------------


@pytest_twisted.ensureDeferred
async def test_status_page_says_in_one_line_whether_mail_flows(world) -> None:
    from tests.admin.conftest import write_config

    write_config(world, delegated=False)
    relay = start_relay(world)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    _, body = await browser.request("GET", "/")
    assert re.search(r'id="overall"[^>]*>All accounts delivering; 0 waiting<', body), body
    relay.delivery.stopService()
    await spool_message(relay)
    _, body = await browser.request("GET", "/")
    # spool_message dates its entry at POSIX time 1: decades old.
    assert re.search(r'id="overall"[^>]*>All accounts delivering; 1 waiting, oldest '
                     r'\d+ d<', body), body
    assert '<th scope="col"></th>' not in body  # every column has a heading


@pytest_twisted.ensureDeferred
async def test_trace_page_searches_and_links_each_message_to_its_story(world) -> None:
    relay = start_relay(world)
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["a@example.net"])
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["b@example.net"])
    await until(lambda: relay.delivery.totals["delivered"] == 2)
    await relay.history.flush()
    browser = Browser(world.admin_url)
    await browser.sign_in()

    response, body = await browser.request("GET", "/trace?to=b%40example&status=delivered")
    assert response.code == 200
    links = re.findall(r'href="/trace/entry\?id=([^"]+)"', body)
    assert len(links) == 1, body
    zone = time.strftime("%Z")
    assert re.search(rf">\d{{4}}-\d\d-\d\d \d\d:\d\d:\d\d {zone}<", body), body
    assert 'value="b@example"' in body and '<option value="delivered" selected' in body
    _, body = await browser.request("GET", f"/trace/entry?id={links[0]}")
    assert re.search(r'id="entry-outcome"[^>]*>delivered<', body)
    assert "250 2.6.0 &lt;" in body and "Queued mail for delivery" in body  # in full
    assert "b@example.net" in body and 'id="entry-attempts"' in body

    _, body = await browser.request("GET", "/trace?status=waiting")
    assert "0 messages" in body
    _, body = await browser.request("GET", "/trace?since=last+tuesday")
    assert 'id="trace-problem"' in body and "give a duration" in body
    _, body = await browser.request("GET", "/trace/entry?id=nothing-like-it")
    assert 'id="entry-missing"' in body
    anonymous = Browser(world.admin_url)
    response, _ = await anonymous.request("GET", "/trace")
    assert response.code == 303 and location(response) == "/login"


@pytest_twisted.ensureDeferred
async def test_bounce_button_returns_a_waiting_message_to_its_sender(world) -> None:
    relay = start_relay(world)
    relay.delivery.stopService()
    entry_id = await spool_message(relay)
    browser = Browser(world.admin_url)
    await browser.sign_in()
    _, body = await browser.request("GET", "/queue")
    for action in ("retry", "bounce", "delete"):
        assert f'id="{action}-{entry_id}"' in body
    token = await browser.csrf("/queue")
    response, _ = await browser.request("POST", "/queue/bounce", {"id": entry_id})
    assert response.code == 403  # no CSRF token: refused like every form
    response, _ = await browser.request("POST", "/queue/bounce",
                                        {"id": entry_id, "csrf_token": token})
    assert response.code == 303 and location(response) == "/queue"
    entry = relay.spool.get(entry_id)
    assert entry.state == "failed" and entry.recipients == ()
    (bounce,) = [e for e in relay.spool.entries("queued") if e.bounce_of == entry_id]
    assert bounce.recipients == ("printer@sandbox.example",)
    _, body = await browser.request("GET", "/queue")
    assert f"{entry_id} bounced to its sender." in body
    # The failed entry still says whom it was for.
    assert re.search(rf'id="entry-recipients-{re.escape(entry_id)}"[^>]*>someone@'
                     r'<span class="domain">example.net</span><', body), body
    assert f'id="bounce-{entry_id}"' not in body
