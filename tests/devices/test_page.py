"""
The Devices page over real HTTP against a real relay: the summary line and every
device (failing first, with TLS, user, counts, last refusal, fix and a link to its
messages in the trace); admitting from the page through the managed configuration:
0.0.0.0/0 and a public address refused with the reason (nothing written), a form
without the CSRF token refused, "allow 127.0.0.3" followed by its next message
delivered without a restart, "give it a password" shown once and working, logged with
who did it.
"""

from __future__ import annotations

import html
import os
import re
from typing import Any

import pytest_twisted
from twisted.logger import formatEvent, globalLogPublisher

from tests.admin.test_web import Browser, until
from tests.devices.scenario import AUTHENTICATING, OUTSIDE, TRUSTED, eventually, send_from
from tests.devices.test_relay import meet_the_devices
from tests.inbound.tlsclient import OPENSSL


async def signed_in(world: Any) -> Browser:
    browser = Browser(world.admin_url)
    await browser.sign_in()
    return browser


def row(body: str, element_id: str) -> str:
    match = re.search(rf'<tr id="{re.escape(element_id)}">(.*?)</tr>', body, re.S)
    assert match, body
    return html.unescape(re.sub(r"<[^>]+>", " ", match.group(1)))


@pytest_twisted.ensureDeferred
async def test_devices_page_lists_each_device_failing_first(world) -> None:
    await meet_the_devices(world)
    browser = await signed_in(world)
    body = ""

    async def delivered_counted() -> bool:
        nonlocal body
        _, body = await browser.request("GET", "/devices")
        return "1 delivered" in row(body, f"device-{AUTHENTICATING}-scanner")

    await eventually(delivered_counted)
    summary = re.search(r'id="devices-summary">([^<]*)<', body)
    assert summary, body
    failing = "2 failing: 127.0.0.1 TLS 1.0 refused, " if OPENSSL else "1 failing: "
    assert html.unescape(summary.group(1)) == (
        f"4 devices; {failing}127.0.0.3 refused (not in allow_networks)" if OPENSSL else
        f"3 devices; {failing}127.0.0.3 refused (not in allow_networks)")
    order = [m for m in re.findall(r'<tr id="(device-[^"]+)"', body)]
    assert order[:2] == (["device-127.0.0.1", "device-127.0.0.3"] if OPENSSL
                         else ["device-127.0.0.3"]) + ([] if OPENSSL else [order[1]])
    outside = row(body, f"device-{OUTSIDE}")
    assert "failing" in outside and "scanner-3.lan" in outside and "1 refused" in outside
    assert "550 5.7.1 Relaying denied" in outside
    assert "allow its address (or its network), or give it a password" in outside
    assert f'href="/trace?client={OUTSIDE}"' in body
    scanner = row(body, f"device-{AUTHENTICATING}-scanner")
    assert "user scanner" in scanner and "PLAIN ok; 1 failed as scanner" in scanner
    assert "1 accepted" in scanner and "TLS 1." in scanner
    printer = row(body, f"device-{TRUSTED}")
    assert "printer-2.lan" in printer and "1 delivered" in printer and "ok" in printer
    if OPENSSL:
        tls1 = row(body, "device-127.0.0.1")
        assert "TLS 1.0 refused" in tls1 and 'tls_min_version = "1.0"' in tls1

    # Its messages in the trace: the link's search finds the printer's one message.
    _, trace = await browser.request("GET", f"/trace?client={TRUSTED}")
    assert 'id="trace-count">1 message<' in trace


@pytest_twisted.ensureDeferred
async def test_admitting_an_open_relay_is_refused_with_the_reason(world) -> None:
    await meet_the_devices(world)
    browser = await signed_in(world)
    managed = world.state_dir / "managed" / "devices.toml"
    for network in ("0.0.0.0/0", "8.8.8.8", "2606:4700::1111"):
        token = await browser.csrf("/devices")
        response, _ = await browser.request("POST", "/devices/allow",
                                            {"csrf_token": token, "network": network})
        assert response.code == 303
        _, body = await browser.request("GET", "/devices")
        notice = re.search(r'id="notice">([^<]*)<', body)
        assert notice, body
        assert "Not allowed: " in notice.group(1)
        assert "would make an open relay" in html.unescape(notice.group(1))
        assert not managed.exists()
    # Without the session's CSRF token, nothing is even looked at.
    response, _ = await browser.request("POST", "/devices/allow",
                                        {"network": "127.0.0.3"})
    assert response.code == 403
    assert not managed.exists()


@pytest_twisted.ensureDeferred
async def test_allowing_a_refused_device_lets_its_next_message_through(world) -> None:
    relay, _ = await meet_the_devices(world)
    browser = await signed_in(world)
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        token = await browser.csrf("/devices")
        response, _ = await browser.request("POST", "/devices/allow", {
            "csrf_token": token, "address": OUTSIDE, "scope": "address"})
        assert response.code == 303
    finally:
        globalLogPublisher.removeObserver(observe)
    managed = world.state_dir / "managed" / "devices.toml"
    assert 'allow_networks = ["127.0.0.3/32"]' in managed.read_text()
    assert oct(os.stat(managed).st_mode & 0o777) == "0o600"
    assert any("the admin (admin page, from 127.0.0.1) added networks 127.0.0.3/32" in line
               for line in lines), lines
    assert str(relay.config.relay.allow_networks[-1]) == "127.0.0.3/32"
    before = len(world.sandbox.mailbox.messages)
    assert await send_from(world.smtp_port, OUTSIDE, "scanner-3.lan",
                           "scanner3@example.com") is None
    await until(lambda: len(world.sandbox.mailbox.messages) == before + 1)
    _, body = await browser.request("GET", "/devices")
    assert "127.0.0.3/32 may relay now" in html.unescape(body)
    assert row(body, f"device-{OUTSIDE}").split()[0] == "ok"


@pytest_twisted.ensureDeferred
async def test_a_password_for_a_refused_device_is_shown_once_and_works(world) -> None:
    import smtplib
    import ssl

    from twisted.internet.threads import deferToThread

    _, certs = await meet_the_devices(world)
    browser = await signed_in(world)
    token = await browser.csrf("/devices")
    lines: list[str] = []
    observer = lambda event: lines.append(formatEvent(event))  # noqa: E731
    globalLogPublisher.addObserver(observer)
    try:
        response, body = await browser.request("POST", "/devices/password", {
            "csrf_token": token, "address": OUTSIDE, "user": ""})
    finally:
        globalLogPublisher.removeObserver(observer)
    assert response.code == 200, body
    user = re.search(r'id="new-user">([^<]+)<', body)
    password = re.search(r'id="new-password">([^<]+)<', body)
    assert user and password, body
    # Logged with who did it; the password itself nowhere but in this one answer.
    assert any("the admin (admin page, from 127.0.0.1) set user device-127-0-0-3" in line
               for line in lines), lines
    assert not any(password.group(1) in line for line in lines)
    changes = (world.state_dir / "managed" / "changes.log").read_text()
    assert "set user device-127-0-0-3" in changes and password.group(1) not in changes
    assert user.group(1) == "device-127-0-0-3"
    managed = (world.state_dir / "managed" / "devices.toml").read_text()
    assert password.group(1) not in managed and "password_hash" in managed
    assert 'senders = ["scanner3@example.com"]' in managed
    _, again = await browser.request("GET", "/devices")
    assert password.group(1) not in again

    def send(sender: str) -> Any:
        with smtplib.SMTP("127.0.0.1", world.smtp_port, timeout=30,
                          source_address=(OUTSIDE, 0)) as client:
            client.starttls(context=ssl.create_default_context(cafile=certs.ca_file))
            client.ehlo("scanner-3.lan")
            client.login(user.group(1), html.unescape(password.group(1)))
            try:
                client.sendmail(sender, ["customer@example.net"], b"Subject: x\r\n\r\nx\r\n")
            except smtplib.SMTPException as e:
                return e
        return None

    before = len(world.sandbox.mailbox.messages)
    assert await deferToThread(send, "scanner3@example.com") is None
    await until(lambda: len(world.sandbox.mailbox.messages) == before + 1)
    refused = await deferToThread(send, "someone-else@example.com")
    assert refused is not None and refused.smtp_code == 550


@pytest_twisted.ensureDeferred
async def test_a_new_password_replaces_a_managed_users_and_never_the_admins(world) -> None:
    import smtplib
    import ssl

    from twisted.internet.threads import deferToThread

    _, certs = await meet_the_devices(world)
    browser = await signed_in(world)

    async def new_password(address: str, user: str) -> tuple[str, str] | str:
        token = await browser.csrf("/devices")
        response, body = await browser.request("POST", "/devices/password", {
            "csrf_token": token, "address": address, "user": user})
        if response.code == 303:
            _, page = await browser.request("GET", "/devices")
            notice = re.search(r'id="notice">([^<]*)<', page)
            assert notice, page
            return html.unescape(notice.group(1))
        made = re.search(r'id="new-user">([^<]+)<', body)
        password = re.search(r'id="new-password">([^<]+)<', body)
        assert made and password, body
        return made.group(1), html.unescape(password.group(1))

    # The admin's own user: xrelay never rewrites the admin's file.
    refused = await new_password(AUTHENTICATING, "scanner")
    assert isinstance(refused, str) and refused.startswith("No password made: user "
                                                           "scanner is defined in ")
    assert "which xrelay never rewrites" in refused

    first = await new_password(OUTSIDE, "")
    assert isinstance(first, tuple)
    user, password = first

    def log_in(secret: str) -> Any:
        with smtplib.SMTP("127.0.0.1", world.smtp_port, timeout=30,
                          source_address=(OUTSIDE, 0)) as client:
            client.starttls(context=ssl.create_default_context(cafile=certs.ca_file))
            client.ehlo("scanner-3.lan")
            try:
                client.login(user, secret)
            except smtplib.SMTPAuthenticationError as e:
                return e
            return client.sendmail("scanner3@example.com", ["customer@example.net"],
                                   b"Subject: x\r\n\r\nx\r\n")

    assert await deferToThread(log_in, password) == {}
    await world.relay.devices.flush()
    # The device now logs in as the managed user: a new password replaces its own.
    second = await new_password(OUTSIDE, user)
    assert isinstance(second, tuple) and second[0] == user and second[1] != password
    managed = (world.state_dir / "managed" / "devices.toml").read_text()
    assert managed.count("[[users]]") == 1
    assert 'senders = ["scanner3@example.com"]' in managed
    wrong = await deferToThread(log_in, password)
    assert isinstance(wrong, smtplib.SMTPAuthenticationError)
    assert await deferToThread(log_in, second[1]) == {}
