"""
The browser sign-in, in real headless Chromium driven by Selenium: sign in to the admin
page, see a delegated account in "needs sign-in", click Sign in, sign in on the sandbox
identity platform's page, land back, see the account "ok", and see the message that
waited for it delivered; then the same with "Sign in with Google" for a Google account,
whose sign-in page is on another origin (so Chromium's CSP form-action check is real).
Then the pages an operator looks at (status, queue, trace, one message's story) at
1280x900: the overall state line, no table wider than the window, a trace search.
Screenshots go to tests/artifacts/.

The sandbox's TLS certificate is trusted by its public key hash
(--ignore-certificate-errors-spki-list), not by turning certificate checks off.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import pytest
import pytest_twisted
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from twisted.internet.threads import deferToThread

from tests.admin.conftest import ADMIN_PASSWORD, BOSS, BOSS_PASSWORD, start_relay
from tests.admin.test_web import smtp_send, until

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
ARTIFACTS = Path(__file__).resolve().parent.parent / "artifacts"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="needs Debian's chromium and chromium-driver (apt-get install chromium "
    "chromium-driver)")


def spki_hash(cert_file: str) -> str:
    with open(cert_file, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    spki = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode()


def make_driver(tmp: Path, spki: str, size: str = "1200,900") -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--window-size={size}",
                 f"--user-data-dir={tmp / 'chromium-profile'}",
                 f"--ignore-certificate-errors-spki-list={spki}"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest_twisted.ensureDeferred
async def test_sign_in_with_microsoft_in_the_browser(world) -> None:
    relay = start_relay(world)
    sandbox = world.sandbox
    ARTIFACTS.mkdir(exist_ok=True)

    # Mail for the delegated account waits: it has never signed in.
    await smtp_send(world.smtp_port, BOSS, ["customer@example.net"])
    await until(lambda: relay.tokens.status()["boss"].state == "needs sign-in")
    await until(lambda: relay.spool.counts()["deferred"] == 1)
    assert not [m for m in sandbox.mailbox.messages if m.mail_from == BOSS]

    driver = await deferToThread(make_driver, world.tmp,
                                 spki_hash(sandbox.server_certificate.cert_file))
    try:
        async def run(f: Callable[[], Any]) -> Any:
            return await deferToThread(f)

        def shot(name: str) -> None:
            driver.save_screenshot(str(ARTIFACTS / f"browser-signin-{name}.png"))

        def text_of(element_id: str) -> str:
            from selenium.webdriver.common.by import By

            return driver.find_element(By.ID, element_id).text

        def wait_for(element_id: str) -> None:
            from selenium.webdriver.common.by import By
            from selenium.webdriver.support import expected_conditions
            from selenium.webdriver.support.ui import WebDriverWait

            WebDriverWait(driver, 30).until(
                expected_conditions.presence_of_element_located((By.ID, element_id)))

        def click(element_id: str) -> None:
            from selenium.webdriver.common.by import By

            driver.find_element(By.ID, element_id).click()

        def type_into(element_id: str, text: str) -> None:
            from selenium.webdriver.common.by import By

            element = driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(text)

        await run(lambda: driver.get(world.admin_url + "/"))
        assert (await run(lambda: driver.current_url)).endswith("/login")
        await run(lambda: type_into("password", ADMIN_PASSWORD))
        await run(lambda: shot("1-admin-login"))
        await run(lambda: click("signin"))
        await run(lambda: wait_for("accounts"))
        assert await run(lambda: text_of("state-boss")) == "needs sign-in"
        assert await run(lambda: text_of("state-sandbox")) == "ok"
        await run(lambda: shot("2-needs-sign-in"))

        await run(lambda: click("signin-boss"))
        await run(lambda: wait_for("accept"))
        url = await run(lambda: driver.current_url)
        assert url.startswith(sandbox.authority + "/")
        assert "/oauth2/v2.0/authorize" in url and "code_challenge=" in url
        await run(lambda: type_into("username", BOSS))
        await run(lambda: type_into("password", BOSS_PASSWORD))
        await run(lambda: shot("3-identity-platform"))
        await run(lambda: click("accept"))

        # Back on the admin page: the callback, then (same-site) the status page.
        await run(lambda: wait_for("accounts"))
        await run(lambda: shot("4-signed-in"))
        assert await run(lambda: text_of("state-boss")) == "ok"
        assert relay.tokens.status()["boss"].state == "ok"

        # The waiting message goes out now, through the account's own token.
        await until(lambda: [m for m in sandbox.mailbox.messages if m.mail_from == BOSS])
        delivered = [m for m in sandbox.mailbox.messages if m.mail_from == BOSS]
        assert delivered[0].rcpt_to == ["customer@example.net"] or \
            list(delivered[0].rcpt_to) == ["customer@example.net"]
        await until(lambda: relay.spool.counts()["deferred"] == 0)
        await run(lambda: driver.get(world.admin_url + "/"))
        page = await run(lambda: driver.page_source)
        assert "delivered" in await run(lambda: text_of("recent"))
        assert "2.6.0" in page or "250" in page
        await run(lambda: shot("5-delivered"))
    except BaseException:
        await deferToThread(driver.save_screenshot, str(ARTIFACTS / "browser-signin-failed.png"))
        raise
    finally:
        await deferToThread(driver.quit)
    assert os.path.exists(ARTIFACTS / "browser-signin-5-delivered.png")


@pytest_twisted.ensureDeferred
async def test_sign_in_with_google_in_the_browser(world) -> None:
    """
    The same round trip for a Google account, whose sign-in page is on another origin
    (https://localhost:PORT): the browser follows the form's redirect there only if the
    admin page's CSP form-action allows it.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.admin.test_web import GOOGLE_PASSWORD, GOOGLE_USER, add_google_account

    _, authorization = add_google_account(world)
    relay = start_relay(world)
    sandbox = world.sandbox
    ARTIFACTS.mkdir(exist_ok=True)
    await smtp_send(world.smtp_port, GOOGLE_USER, ["customer@example.net"])
    await until(lambda: relay.spool.counts()["deferred"] == 1)

    driver = await deferToThread(make_driver, world.tmp,
                                 spki_hash(sandbox.server_certificate.cert_file))

    def steps() -> str:
        def wait_for(element_id: str) -> None:
            WebDriverWait(driver, 30).until(
                expected_conditions.presence_of_element_located((By.ID, element_id)))

        def type_into(element_id: str, text: str) -> None:
            element = driver.find_element(By.ID, element_id)
            element.clear()
            element.send_keys(text)

        driver.get(world.admin_url + "/login")
        type_into("password", ADMIN_PASSWORD)
        driver.find_element(By.ID, "signin").click()
        wait_for("accounts")
        assert driver.find_element(By.ID, "state-gmail").text == "needs sign-in"
        driver.find_element(By.ID, "signin-gmail").click()
        wait_for("accept")
        assert driver.current_url.startswith(authorization + "?")
        assert driver.find_element(By.ID, "username").get_attribute("value") == GOOGLE_USER
        type_into("password", GOOGLE_PASSWORD)
        driver.save_screenshot(str(ARTIFACTS / "browser-google-1-sign-in.png"))
        driver.find_element(By.ID, "accept").click()
        wait_for("accounts")
        driver.save_screenshot(str(ARTIFACTS / "browser-google-2-signed-in.png"))
        return driver.find_element(By.ID, "state-gmail").text

    try:
        assert await deferToThread(steps) == "ok"
        await until(lambda: [m for m in sandbox.mailbox.messages if m.mail_from == GOOGLE_USER])
        await until(lambda: relay.spool.counts()["deferred"] == 0)
    except BaseException:
        await deferToThread(driver.save_screenshot,
                            str(ARTIFACTS / "browser-google-failed.png"))
        raise
    finally:
        await deferToThread(driver.quit)


@pytest_twisted.ensureDeferred
async def test_status_queue_and_trace_pages_fit_the_window(world) -> None:
    """
    Delivered, bounced (SendAsDenied, a long reply), deferred and failed messages, one
    account waiting for sign-in: the status page says so in one line, every table fits
    1280 pixels, the queue offers Retry, Bounce and Delete and shows a failed entry's
    recipients, and a trace search in the browser leads to the message's story.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    from tests.admin.conftest import write_config
    from tests.operations.test_trace import LATER, deny_send_as_except

    write_config(world, delegated=True, first_retry=600)
    deny_send_as_except(world, "printer@sandbox.example")
    sandbox = world.sandbox
    sandbox.exchange.reject_recipient("later@example.net", LATER)
    sandbox.exchange.reject_recipient(
        "gone@example.net", "550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not "
        "found by SMTP address lookup")
    relay = start_relay(world)
    ARTIFACTS.mkdir(exist_ok=True)
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["a@example.net"])
    await smtp_send(world.smtp_port, "scanner@example.com", ["b@example.net"])
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["later@example.net"])
    await smtp_send(world.smtp_port, "printer@sandbox.example", ["gone@example.net"])
    await smtp_send(world.smtp_port, BOSS, ["customer@example.net"])
    totals = relay.delivery.totals
    await until(lambda: totals["delivered"] == 3 and totals["failed"] == 2
                and totals["deferred"] >= 2)
    await relay.history.flush()
    later_id = next(e.entry_id for e in relay.spool.entries("deferred")
                    if e.recipients == ("later@example.net",))
    gone_id = next(e.entry_id for e in relay.spool.entries("failed")
                   if e.sender == "printer@sandbox.example")
    denied_id = next(e.entry_id for e in relay.spool.entries("failed")
                     if e.sender == "scanner@example.com")

    driver = await deferToThread(make_driver, world.tmp,
                                 spki_hash(sandbox.server_certificate.cert_file),
                                 "1280,900")

    def steps() -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def wait_for(element_id: str) -> None:
            WebDriverWait(driver, 30).until(
                expected_conditions.presence_of_element_located((By.ID, element_id)))

        def fits(name: str) -> None:
            viewport = driver.execute_script("return document.documentElement.clientWidth")
            assert viewport <= 1280
            for table in driver.find_elements(By.TAG_NAME, "table"):
                rect = table.rect
                assert rect["x"] + rect["width"] <= viewport, (name, table.get_attribute(
                    "id"), rect, viewport)
            scroll = driver.execute_script("return document.documentElement.scrollWidth")
            assert scroll <= viewport, (name, scroll, viewport)
            driver.save_screenshot(str(ARTIFACTS / f"browser-{name}.png"))

        driver.get(world.admin_url + "/login")
        driver.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.ID, "signin").click()
        wait_for("overall")
        seen["overall"] = driver.find_element(By.ID, "overall").text
        seen["boss"] = driver.find_element(By.ID, "state-boss").text
        seen["headers"] = [th.text for th in driver.find_elements(
            By.CSS_SELECTOR, "#accounts th")]
        fits("status")

        driver.find_element(By.LINK_TEXT, "Queue").click()
        wait_for("queue")
        seen["later_buttons"] = [driver.find_element(By.ID, f"{b}-{later_id}").text
                                 for b in ("retry", "bounce", "delete")]
        seen["gone_recipients"] = driver.find_element(
            By.ID, f"entry-recipients-{gone_id}").text
        seen["queue_headers"] = [th.text for th in driver.find_elements(
            By.CSS_SELECTOR, "#queue th")]
        fits("queue")

        driver.find_element(By.LINK_TEXT, "Trace").click()
        wait_for("trace-search")
        driver.find_element(By.ID, "search-to").send_keys("later@")
        driver.find_element(By.ID, "search").click()
        # The search page shows results before the search too: wait for the new page.
        WebDriverWait(driver, 30).until(lambda d: "to=later" in d.current_url)
        wait_for("trace-results")
        seen["trace_url"] = driver.current_url
        seen["trace_rows"] = [row.text for row in driver.find_elements(
            By.CSS_SELECTOR, "#trace-results tbody tr")]
        fits("trace")
        driver.get(world.admin_url + "/trace")
        wait_for("trace-results")
        fits("trace-all")

        driver.get(world.admin_url + "/trace?to=later%40")
        wait_for("trace-results")
        driver.find_element(By.LINK_TEXT, later_id).click()
        wait_for("entry-attempts")
        seen["entry_outcome"] = driver.find_element(By.ID, "entry-outcome").text
        seen["entry_reply"] = driver.find_element(By.ID, "entry-last-reply").text
        fits("trace-entry")

        driver.get(world.admin_url + f"/trace/entry?id={denied_id}")
        wait_for("entry-bounces")
        seen["bounce_rows"] = [row.text for row in driver.find_elements(
            By.CSS_SELECTOR, "#entry-bounces tbody tr")]
        fits("trace-entry-bounced")
        return seen

    try:
        seen = await deferToThread(steps)
    except BaseException:
        await deferToThread(driver.save_screenshot, str(ARTIFACTS / "browser-pages-failed.png"))
        raise
    finally:
        await deferToThread(driver.quit)
    assert seen["overall"].startswith("1 account needs attention; ")
    assert " waiting, oldest " in seen["overall"]
    assert seen["boss"] == "needs sign-in"
    assert all(seen["headers"]) and "Budget left today" in seen["headers"]
    assert "Credential expires" in seen["headers"] and "Action" in seen["headers"]
    assert seen["later_buttons"] == ["Retry", "Bounce", "Delete"]
    assert seen["gone_recipients"] == "gone@example.net"
    assert all(seen["queue_headers"])
    assert "to=later%40" in seen["trace_url"]
    assert len(seen["trace_rows"]) == 1 and later_id in seen["trace_rows"][0]
    assert seen["entry_outcome"] == "waiting" and seen["entry_reply"] == LATER
    (bounce_row,) = seen["bounce_rows"]
    assert "scanner@example.com" in bounce_row and "delivered" in bounce_row
