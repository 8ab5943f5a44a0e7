"""
Credentials that change under a running daemon (a `twistd` subprocess delivering into the
sandbox in this process): a fixed client secret is picked up by `xrelay reload`, or by the
file change alone, and the deferred message goes out at once, not at its back-off time;
after a restart too.
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from twisted.internet.threads import deferToThread

from tests.admin.conftest import write_config
from tests.admin.test_web import until
from tests.operations.test_commands import (delivered_to, smtp_send, start_daemon,
                                            xrelay)

#: Long enough that only an immediate resume can deliver within the test.
FIRST_RETRY = 3600


def secret_file(world: Any, content: str) -> str:
    path = world.tmp / "app-secret.txt"
    tmp = world.tmp / "app-secret.txt.new"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, content.encode() + b"\n")
    os.close(fd)
    os.replace(tmp, path)  # as an operator's editor or a secret store does
    return str(path)


def wrong_secret_config(world: Any) -> str:
    """The sandbox account, but reading its secret from a file holding a wrong one."""
    write_config(world, first_retry=FIRST_RETRY)
    path = secret_file(world, "8Q~not-the-secret-of-this-app")
    text = world.config_path.read_text()
    original = world.sandbox.default_account()["client_secret_file"]
    world.config_path.write_text(text.replace(original, path))
    return path


async def account_state(world: Any) -> str:
    code, out, err = await xrelay(world, "accounts")
    line = [ln for ln in out.splitlines() if ln.startswith("sandbox\t")]
    return line[0].split("\t")[1] if line else f"? {out} {err}"


async def deferred_by_the_wrong_secret(world: Any, daemons: list[Any]) -> str:
    daemon = await start_daemon(world)
    daemons.append(daemon)
    await until(lambda: "client secret rejected" in daemon.log(), timeout=60)
    entry = await smtp_send(world.smtp_port, "printer@sandbox.example", "fixed@example.net")
    await until(lambda: "deferred" in daemon.log() and entry in daemon.log(), timeout=60)
    assert await account_state(world) == "client secret rejected"
    code, out, err = await xrelay(world, "accounts")
    assert code == 1
    assert "put the secret's Value (not its Secret ID)" in out
    assert not delivered_to(world, "fixed@example.net")
    return entry


@pytest_twisted.ensureDeferred
async def test_fixed_secret_and_reload_deliver_the_deferred_message_at_once(
        world, daemons) -> None:
    wrong_secret_config(world)
    await deferred_by_the_wrong_secret(world, daemons)
    secret_file(world, world.sandbox.default_app.client_secret)
    code, out, err = await xrelay(world, "reload")
    assert (code, out) == (0, "configuration reloaded\n"), err
    await until(lambda: delivered_to(world, "fixed@example.net"), timeout=30)
    assert await account_state(world) == "ok"


@pytest_twisted.ensureDeferred
async def test_fixed_secret_file_alone_delivers_the_deferred_message(world, daemons) -> None:
    wrong_secret_config(world)
    await deferred_by_the_wrong_secret(world, daemons)
    secret_file(world, world.sandbox.default_app.client_secret)  # no reload
    await until(lambda: delivered_to(world, "fixed@example.net"), timeout=30)
    assert await account_state(world) == "ok"
    assert "credentials of account sandbox changed" in daemons[0].log()


@pytest_twisted.ensureDeferred
async def test_after_a_restart_the_deferred_message_goes_out_at_once(world, daemons) -> None:
    wrong_secret_config(world)
    await deferred_by_the_wrong_secret(world, daemons)
    await deferToThread(daemons.pop().stop)
    secret_file(world, world.sandbox.default_app.client_secret)
    daemons.append(await start_daemon(world))
    await until(lambda: delivered_to(world, "fixed@example.net"), timeout=30)
