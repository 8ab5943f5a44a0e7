"""
The admin page's "Add an account" wizard in real headless Chromium (Selenium), on a
relay that runs the sandbox default (as `twistd -n xrelay` with no configuration does):
for each method, from no account of the tenant's own to a delivered test message.  The
admin signs in on the sandbox identity platform's page (authorization code with PKCE,
redirect http://localhost:PORT/), the wizard shows its progress, and ends with the test
message and doctor's checks; the delegated method first has the mailbox's user sign in
from the button the wizard shows.  Screenshots at 1280x800 go to tests/artifacts/.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.admin.test_browser import ARTIFACTS, CHROMEDRIVER, CHROMIUM, make_driver, spki_hash
from tests.admin.test_web import until
from tests.setup.helpers import start_sandbox_relay

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver")

ADMIN = "admin@sandbox.example"


@pytest.fixture
def sandbox_relay(tmp_path, monkeypatch) -> Any:
    running = start_sandbox_relay(tmp_path, monkeypatch)
    yield running
    pytest_twisted.blockon(running.relay.stopService())


class Page:
    """The browser, driven from a thread (Selenium blocks)."""

    def __init__(self, driver: Any, prefix: str) -> None:
        self.driver = driver
        self.prefix = prefix

    async def run(self, f: Callable[[], Any]) -> Any:
        return await deferToThread(f)

    async def shot(self, name: str) -> None:
        path = str(ARTIFACTS / f"wizard-{self.prefix}-{name}.png")
        await self.run(lambda: self.driver.save_screenshot(path))

    async def get(self, url: str) -> None:
        await self.run(lambda: self.driver.get(url))

    async def wait_for(self, element_id: str, timeout: float = 60) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support import expected_conditions
        from selenium.webdriver.support.ui import WebDriverWait

        await self.run(lambda: WebDriverWait(self.driver, timeout).until(
            expected_conditions.presence_of_element_located((By.ID, element_id))))

    async def click(self, element_id: str) -> None:
        from selenium.webdriver.common.by import By

        await self.run(lambda: self.driver.find_element(By.ID, element_id).click())

    async def type_into(self, element_id: str, text: str) -> None:
        from selenium.webdriver.common.by import By

        def type_it() -> None:
            element = self.driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(text)
        await self.run(type_it)

    async def text_of(self, element_id: str) -> str:
        from selenium.webdriver.common.by import By

        def text() -> str:
            found = self.driver.find_elements(By.ID, element_id)
            return found[0].text if found else ""
        return str(await self.run(text))

    async def wait_text(self, element_id: str, words: str, timeout: float = 120) -> str:
        """Wait (the page refreshes itself) until the element shows C{words}."""
        from twisted.internet import reactor, task

        for _ in range(int(timeout * 2)):
            text = await self.text_of(element_id)
            if words in text:
                return text
            problem = await self.text_of("setup-problem")
            assert not problem, problem
            await task.deferLater(reactor, 0.5, lambda: None)
        raise AssertionError(f"{words!r} not in #{element_id}: "
                             f"{await self.run(lambda: self.driver.page_source)}")

    async def sign_in_on_identity_platform(self, sandbox: Any, upn: str) -> None:
        await self.wait_for("accept")
        url = await self.run(lambda: self.driver.current_url)
        assert url.startswith(sandbox.authority + "/") and "code_challenge=" in url
        await self.type_into("username", upn)
        await self.type_into("password", sandbox.password(upn))


@pytest.mark.parametrize("method, mailbox", [
    ("smtp", "relay@sandbox.example"),
    ("graph", "relay@sandbox.example"),
    ("delegated", "user@sandbox.example"),
])
@pytest_twisted.ensureDeferred
async def test_wizard_from_no_account_to_a_delivered_message(
        sandbox_relay, method: str, mailbox: str) -> None:
    relay, sandbox = sandbox_relay.relay, sandbox_relay.sandbox
    ARTIFACTS.mkdir(exist_ok=True)
    # Only the sandbox's own catch-all account: nothing of the tenant's yet.
    assert [a.name for a in relay.config.accounts] == ["sandbox"]
    before = len(sandbox.mailbox.messages)
    driver = await deferToThread(make_driver, sandbox_relay.folder,
                                 spki_hash(sandbox.server_certificate.cert_file),
                                 "1280,800")
    page = Page(driver, method)
    try:
        await page.get(sandbox_relay.admin_url + "/login")
        await page.type_into("password", sandbox_relay.admin_password())
        await page.click("signin")
        await page.wait_for("accounts")
        await page.get(sandbox_relay.admin_url + "/setup")
        await page.wait_for("setup-form")
        await page.type_into("mailbox", mailbox)
        await page.type_into("name", f"{method}-relay")
        await page.click(f"method-{method}")
        await page.shot("1-form")
        await page.click("show-plan")
        await page.wait_for("plan")
        plan = await page.text_of("plan")
        expected = {"smtp": "SMTP.SendAsApp (application)",
                    "graph": "Mail.Send (application)",
                    "delegated": "SMTP.Send (delegated)"}[method]
        assert expected in plan and "never stored" in plan
        await page.shot("2-plan")

        await page.click("setup-signin")
        await page.sign_in_on_identity_platform(sandbox, ADMIN)
        await page.shot("3-admin-sign-in")
        await page.click("accept")
        await page.wait_for("progress")
        await page.shot("4-progress")
        account = f"{method}-relay"
        if method == "delegated":
            await page.wait_for(f"signin-{account}", timeout=120)
            await page.shot("5-user-sign-in")
            await page.click(f"signin-{account}")
            await page.sign_in_on_identity_platform(sandbox, mailbox)
            await page.click("accept")
            await page.wait_for("accounts")
            await until(lambda: relay.tokens.status()[account].state == "ok")
            await page.get(sandbox_relay.admin_url + "/setup")
            await page.wait_for("setup-test")
            await page.click("setup-test")
        result = await page.wait_text("test-result", "delivered", timeout=180)
        assert result.startswith("Test message: delivered"), result
        await page.wait_for("doctor")
        await page.shot("6-delivered")
        if method == "smtp":
            await rotate_then_remove(page, sandbox_relay, account)
    except BaseException:
        await page.shot("failed")
        raise
    finally:
        await deferToThread(driver.quit)

    if method == "smtp":
        return
    assert relay.config.origin("accounts", account).endswith(f"/managed/accounts/{account}.toml")
    delivered = [m for m in sandbox.mailbox.messages[before:]
                 if mailbox in m.rcpt_to and b"xrelay test message" in m.data]
    assert delivered, [m.rcpt_to for m in sandbox.mailbox.messages]


async def rotate_then_remove(page: Page, sandbox_relay: Any, account: str) -> None:
    """The page's rotate button (a new certificate in use, the old one gone from the
    app), then its remove button (the drop-in gone, the key files kept)."""
    import os

    relay, sandbox = sandbox_relay.relay, sandbox_relay.sandbox
    old = relay.config.account(account)
    await page.click("setup-reset")
    await page.wait_for(f"rotate-{account}")
    await page.shot("7-managed-accounts")
    await page.click(f"rotate-{account}")
    await page.wait_for("setup-signin")
    await page.click("setup-signin")
    await page.sign_in_on_identity_platform(sandbox, ADMIN)
    await page.click("accept")
    result = await page.wait_text("test-result", "delivered", timeout=180)
    assert result.startswith("Test message: delivered"), result
    await page.shot("8-rotated")
    new = relay.config.account(account)
    assert new.certificate_key_file != old.certificate_key_file
    (app,) = [a for a in sandbox.entra.applications.values() if a.app_id == new.client_id]
    assert len(app.key_credentials) == 1
    await page.click("setup-reset")
    await page.wait_for(f"remove-{account}")
    await page.click(f"remove-{account}")
    await page.wait_for("notice")
    assert "removed" in await page.text_of("notice")
    assert account not in [a.name for a in relay.config.accounts]
    assert os.path.exists(new.certificate_key_file) and os.path.exists(old.certificate_key_file)
