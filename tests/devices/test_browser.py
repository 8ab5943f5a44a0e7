"""
The Devices page in real headless Chromium at 1280x800: the devices of the real-relay
scenario listed failing first, the table within the window; a password made for
127.0.0.3 and shown once; then "Allow 127.0.0.3" clicked
on the page, and the device's next message delivered without a restart; an attempt
to allow 0.0.0.0/0 refused with the reason.  Screenshots in tests/artifacts/.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.admin.conftest import ADMIN_PASSWORD
from tests.admin.test_browser import ARTIFACTS, make_driver, pytestmark, spki_hash
from tests.admin.test_web import until
from tests.devices.scenario import OUTSIDE, send_from
from tests.devices.test_relay import meet_the_devices

__all__ = ["pytestmark"]


@pytest_twisted.ensureDeferred
async def test_admit_a_refused_device_from_the_devices_page(world) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    relay, _ = await meet_the_devices(world)
    await relay.history.flush()
    ARTIFACTS.mkdir(exist_ok=True)
    driver = await deferToThread(make_driver, world.tmp,
                                 spki_hash(world.sandbox.server_certificate.cert_file),
                                 "1280,800")
    # The page itself 1280x800, whatever the browser's own frame takes.
    await deferToThread(driver.execute_cdp_cmd, "Emulation.setDeviceMetricsOverride",
                        {"width": 1280, "height": 800, "deviceScaleFactor": 1,
                         "mobile": False})
    row = f"device-{OUTSIDE}"

    def wait_for(element_id: str) -> None:
        WebDriverWait(driver, 30).until(
            expected_conditions.presence_of_element_located((By.ID, element_id)))

    def fits(name: str) -> None:
        viewport = driver.execute_script("return document.documentElement.clientWidth")
        assert viewport <= 1280
        for table in driver.find_elements(By.TAG_NAME, "table"):
            rect = table.rect
            assert rect["x"] + rect["width"] <= viewport, (name, rect, viewport)
        scroll = driver.execute_script("return document.documentElement.scrollWidth")
        assert scroll <= viewport, (name, scroll, viewport)
        driver.save_screenshot(str(ARTIFACTS / f"devices-{name}.png"))

    def before() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        driver.get(world.admin_url + "/login")
        driver.find_element(By.ID, "password").send_keys(ADMIN_PASSWORD)
        driver.find_element(By.ID, "signin").click()
        wait_for("overall")
        driver.find_element(By.LINK_TEXT, "Devices").click()
        wait_for("devices")
        seen["summary"] = driver.find_element(By.ID, "devices-summary").text
        seen["rows"] = [r.get_attribute("id") for r in driver.find_elements(
            By.CSS_SELECTOR, "#devices tbody tr")]
        seen["state"] = driver.find_element(By.ID, f"state-{row}").text
        seen["fix"] = driver.find_element(By.ID, f"fix-{row}").text
        fits("1-failing")
        driver.find_element(By.ID, "allow-network").send_keys("0.0.0.0/0")
        driver.find_element(By.ID, "allow-submit").click()
        wait_for("notice")
        seen["open_relay"] = driver.find_element(By.ID, "notice").text
        fits("2-open-relay-refused")
        driver.find_element(By.ID, f"password-{row}").click()
        wait_for("new-password")
        seen["user"] = driver.find_element(By.ID, "new-user").text
        seen["password"] = driver.find_element(By.ID, "new-password").text
        fits("3-password-shown-once")
        driver.find_element(By.ID, "continue").click()
        wait_for("devices")
        seen["page_after"] = driver.page_source
        driver.find_element(By.ID, f"allow-address-{row}").click()
        wait_for("notice")
        seen["allowed"] = driver.find_element(By.ID, "notice").text
        fits("4-allowed")
        return seen

    try:
        seen = await deferToThread(before)
        assert seen["summary"].endswith("127.0.0.3 refused (not in allow_networks)")
        assert seen["summary"].startswith("4 devices; 2 failing: ") or \
            seen["summary"].startswith("3 devices; 1 failing: ")
        failing = [r for r in seen["rows"] if r in (row, "device-127.0.0.1")]
        assert seen["rows"][:len(failing)] == failing  # failing devices first
        assert seen["state"] == "failing"
        assert "allow its address (or its network), or give it a password" in seen["fix"]
        assert seen["open_relay"].startswith("Not allowed: 0.0.0.0/0 is not a private "
                                             "network: relaying for it would make an open "
                                             "relay")
        assert seen["user"] == "device-127-0-0-3" and len(seen["password"]) >= 20
        assert seen["password"] not in seen["page_after"]  # shown once
        assert seen["allowed"] == ("127.0.0.3/32 may relay now (added networks "
                                   "127.0.0.3/32).")

        # Its next message goes through, with the relay still running.
        count = len(world.sandbox.mailbox.messages)
        assert await send_from(world.smtp_port, OUTSIDE, "scanner-3.lan",
                               "scanner3@example.com") is None
        await until(lambda: len(world.sandbox.mailbox.messages) == count + 1)
        await relay.history.flush()

        def after() -> str:
            driver.get(world.admin_url + "/devices")
            wait_for("devices")
            text = driver.find_element(By.ID, row).text
            fits("5-delivered")
            driver.find_element(By.ID, f"trace-{row}").click()
            wait_for("trace-results")
            driver.save_screenshot(str(ARTIFACTS / "devices-6-its-messages.png"))
            return text + "\n" + driver.find_element(By.ID, "trace-count").text

        text = await deferToThread(after)
        assert text.startswith("ok") and "1 accepted" in text and "1 refused" in text
        assert text.endswith("1 message")
    finally:
        await deferToThread(driver.quit)
