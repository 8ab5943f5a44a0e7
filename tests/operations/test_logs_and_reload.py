"""
Reload and logs, on real daemons: SIGHUP (and `xrelay reload`) takes a new file's users
and networks without dropping a live connection, refuses a bad file with a log line and
keeps the old configuration; `twist --log-format=json` writes one JSON object per line
and a message's outcome line carries its structured fields.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
from typing import Any

import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.threads import deferToThread

from tests.admin.conftest import write_config
from tests.admin.test_web import until
from tests.operations.test_commands import (bin_path, delivered_to, environment,
                                            start_daemon, xrelay)
from xrelay.passwords import hash_password

SCANNER_PASSWORD = "scanner password 99"
NEW_USERS = f"""
[relay]
allow_networks = ["192.0.2.0/24"]

[[users]]
name = "scanner"
password_hash = "{hash_password(SCANNER_PASSWORD, log2_n=4)}"
senders = ["printer@sandbox.example"]
"""


def send_on(client: smtplib.SMTP, recipient: str) -> tuple[int, bytes]:
    client.mail("printer@sandbox.example")
    code, text = client.rcpt(recipient)
    if code != 250:
        client.rset()
        return code, text
    return client.data(f"Subject: to {recipient}\r\n\r\nhello\r\n".encode())


async def wait_for_log(daemon: Any, text: str, timeout: float = 30) -> None:
    for _ in range(int(timeout / 0.1)):
        if text in daemon.log():
            return
        await task.deferLater(reactor, 0.1, lambda: None)
    raise AssertionError(f"{text!r} not in the log:\n{daemon.log()[-3000:]}")


@pytest_twisted.ensureDeferred
async def test_sighup_reload_keeps_live_connections_and_refuses_bad_files(
        world, daemons) -> None:
    write_config(world, server_extra="require_tls_for_auth = false")
    daemon = await start_daemon(world)
    daemons.append(daemon)

    live = await deferToThread(smtplib.SMTP, "127.0.0.1", world.smtp_port, "tester", 30)
    await deferToThread(live.ehlo, "tester")

    # New file: loopback no longer relays without AUTH; a device user appears.
    write_config(world, server_extra="require_tls_for_auth = false", sections=NEW_USERS)
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for_log(daemon, "configuration reloaded from")

    # The live connection was not dropped and keeps the rules it started with.
    code, _ = await deferToThread(send_on, live, "live@example.net")
    assert code == 250
    await until(lambda: delivered_to(world, "live@example.net"))

    # A new connection gets the new rules: no relaying by address, AUTH works.
    def new_connection(login: bool) -> tuple[int, bytes]:
        with smtplib.SMTP("127.0.0.1", world.smtp_port, timeout=30) as client:
            client.ehlo("tester")
            if login:
                client.login("scanner", SCANNER_PASSWORD)
            return send_on(client, "new@example.net")

    code, text = await deferToThread(new_connection, False)
    assert code == 554 or 500 <= code < 600, (code, text)
    code, text = await deferToThread(new_connection, True)
    assert code == 250, (code, text)

    # A bad file is refused with a log line; the old configuration stays in force.
    world.config_path.write_text("[server\nthis is not toml")
    daemon.process.send_signal(signal.SIGHUP)
    await wait_for_log(daemon, "configuration not reloaded, keeping the old one")
    # `xrelay reload` reads the file too, and names the mistake.
    code, out, err = await xrelay(world, "reload")
    assert code == 1 and "not valid TOML" in err
    code, text = await deferToThread(new_connection, True)
    assert code == 250, (code, text)

    code, _ = await deferToThread(send_on, live, "live2@example.net")
    assert code == 250
    await deferToThread(live.quit)

    # A good file again, through the command this time.
    write_config(world, server_extra="require_tls_for_auth = false", sections=NEW_USERS)
    code, out, err = await xrelay(world, "reload")
    assert (code, out) == (0, "configuration reloaded\n"), err


@pytest_twisted.ensureDeferred
async def test_json_log_lines_carry_the_message_fields(world) -> None:
    write_config(world)
    log_path = world.tmp / "xrelay.jsonl"
    process = subprocess.Popen(
        [bin_path("twist"), "--log-format=json", f"--log-file={log_path}", "xrelay",
         "--config", str(world.config_path)],
        cwd=world.tmp, env=environment(world), stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=open(world.tmp / "twist.stderr", "ab"))
    try:
        def send() -> None:
            for _ in range(300):
                try:
                    client = smtplib.SMTP("127.0.0.1", world.smtp_port, timeout=30)
                    break
                except OSError:
                    import time
                    time.sleep(0.1)
            with client:
                client.ehlo("tester")
                client.sendmail("printer@sandbox.example", ["json@example.net"],
                                b"Subject: json\r\n\r\nhello\r\n")
        await deferToThread(send)
        await until(lambda: delivered_to(world, "json@example.net"))
        await until(lambda: b'"outcome"' in log_path.read_bytes())
    finally:
        process.send_signal(signal.SIGTERM)
        await deferToThread(process.wait, 30)

    # One JSON object per line, after RFC 7464's record separator.
    raw = log_path.read_bytes().split(b"\n")
    events = [json.loads(line.lstrip(b"\x1e")) for line in raw if line.strip()]
    outcome = [e for e in events if e.get("log_namespace") == "xrelay.delivery.engine"
               and "outcome" in e]
    assert len(outcome) == 1
    e = outcome[0]
    assert e["outcome"] == "delivered"
    assert e["sender"] == "printer@sandbox.example"
    assert e["account"] == "sandbox"
    assert e["recipient_count"] == 1
    assert e["upstream_reply"].startswith("250 2.6.0 ")
    assert e["entry_id"]
    accepted = [ev for ev in events if str(ev.get("log_namespace", "")).startswith(
        "xrelay.inbound") and ev.get("entry") == e["entry_id"]]
    assert accepted and accepted[0]["client"] == "127.0.0.1"
    assert os.path.getsize(log_path) > 0
