"""
`twistd -n xrelay` with no configuration lets a new user try the wizard: the sandbox
default serves the admin page on loopback (password in xrelay-sandbox/admin-password.txt,
mode 0600), says where in its log, and the wizard's page points at the sandbox tenant.
"""

from __future__ import annotations

import os
import re
import stat
import time

import requests

from tests.conftest import free_port


def test_sandbox_default_serves_the_wizard(tmp_path, run_relay) -> None:
    admin_port, smtp_port = free_port(), free_port()
    relay = run_relay(env={"XRELAY_SANDBOX_ADMIN_PORT": str(admin_port),
                           "XRELAY_SANDBOX_PORT": str(smtp_port)})
    deadline = time.monotonic() + 60
    while "try the setup wizard" not in relay.log():
        assert time.monotonic() < deadline, relay.log()
        time.sleep(0.2)
    assert f"http://localhost:{admin_port}/setup" in relay.log()
    password_file = tmp_path / "xrelay-sandbox" / "admin-password.txt"
    assert stat.S_IMODE(os.stat(password_file).st_mode) == 0o600
    password = password_file.read_text().strip()
    assert password not in relay.log()

    with requests.Session() as browser:
        base = f"http://localhost:{admin_port}"
        # The log line comes as the relay is built; the page listens moments later.
        while True:
            try:
                form = browser.get(f"{base}/login", timeout=10).text
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline + 60, relay.log()
                time.sleep(0.2)
        token = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
        browser.post(f"{base}/login", data={"csrf_token": token, "password": password},
                     timeout=30)
        page = browser.get(f"{base}/setup", timeout=10)
        assert page.status_code == 200 and 'id="setup-form"' in page.text
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        browser.post(f"{base}/setup/plan", data={
            "csrf_token": token, "mailbox": "relay@sandbox.example", "method": "smtp"},
            timeout=10)
        plan = browser.get(f"{base}/setup", timeout=10).text
        assert "SMTP.SendAsApp" in plan and 'id="setup-signin"' in plan


def test_a_taken_admin_port_does_not_stop_the_sandbox_relay(tmp_path, run_relay) -> None:
    """
    The admin page is a bonus of the sandbox default: with its port taken by something
    else, the relay still starts and relays, and its log says how to move the page.
    """
    import smtplib
    import socket

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    smtp_port = free_port()
    try:
        relay = run_relay(env={"XRELAY_SANDBOX_ADMIN_PORT": str(taken.getsockname()[1]),
                               "XRELAY_SANDBOX_PORT": str(smtp_port)})
        relay.wait_for_port(smtp_port)
        with smtplib.SMTP("127.0.0.1", smtp_port, timeout=30) as client:
            client.sendmail("printer@example.com", ["client@example.net"],
                            b"Subject: still here\r\n\r\nhello\r\n")
        deadline = time.monotonic() + 60
        while "could not listen" not in relay.log():
            assert time.monotonic() < deadline, relay.log()
            time.sleep(0.2)
        assert "XRELAY_SANDBOX_ADMIN_PORT" in relay.log()
        mailbox = tmp_path / "xrelay-sandbox" / "mailbox"
        while not list(mailbox.rglob("*.eml")):
            assert time.monotonic() < deadline, relay.log()
            time.sleep(0.2)
        assert relay.process.poll() is None
    finally:
        taken.close()
