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
