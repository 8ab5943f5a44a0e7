"""
A running relay (made by the real C{makeService}) wired to a started sandbox, with the
admin page on a free loopback port, for the admin and operations tests.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import attrs
import pytest
import pytest_twisted
from twisted.python.filepath import FilePath

from xrelay.config import read_config
from xrelay.passwords import hash_password
from xrelay.sandbox import DEFAULT_TENANT, Sandbox

ADMIN_PASSWORD = "admin password for tests"
#: A cheap hash: the real cost (ln=15) is for production, not for every test.
ADMIN_HASH = hash_password(ADMIN_PASSWORD, log2_n=4)
BOSS = "boss@sandbox.example"
BOSS_PASSWORD = "boss password 1234"


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def account_toml(table: dict[str, Any]) -> str:
    return "[[accounts]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in table.items())


@attrs.define
class RelayWorld:
    """A sandbox, a configuration file for a relay that uses it, and the relay."""

    tmp: Path
    sandbox: Sandbox
    config_path: Path
    state_dir: Path
    smtp_port: int
    admin_port: int
    relay: Any = None
    boss_app: Any = None

    @property
    def admin_url(self) -> str:
        # localhost, not 127.0.0.1: the redirect URI of a loopback admin listener is
        # http://localhost:PORT/signin/callback (what Entra accepts), and the session
        # cookie must be the one the browser sends when it comes back there.
        return f"http://localhost:{self.admin_port}"


def free_port() -> int:
    from tests.conftest import free_port as free

    return free()


def write_config(world: RelayWorld, delegated: bool = False, extra: str = "",
                 first_retry: int = 1, server_extra: str = "", sections: str = "") -> None:
    sb = world.sandbox
    accounts = account_toml(dict(sb.default_account(), senders=["printer@sandbox.example", "*@example.com"]))
    if delegated:
        secret = world.tmp / "boss-secret.txt"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.write(fd, (world.boss_app.client_secret + "\n").encode())
        os.close(fd)
        accounts += account_toml({
            "name": "boss", "provider": "microsoft", "flow": "auth_code", "user": BOSS,
            "tenant": DEFAULT_TENANT, "client_id": world.boss_app.client_id,
            "client_secret_file": str(secret), "authority": sb.authority,
            "smtp_host": sb.smtp_host, "smtp_port": sb.smtp_port, "ca_file": sb.ca_file,
            "senders": [BOSS], "messages_per_minute": 0,
        })
    world.config_path.write_text(f"""
[server]
listen = ["tcp:{world.smtp_port}:interface=127.0.0.1"]
hostname = "relay.test"
state_dir = {toml_value(str(world.state_dir))}
{server_extra}

[delivery]
first_retry = {first_retry}
max_retry_interval = {max(first_retry * 2, 2)}

{accounts}
{sections}
[admin]
listen = "tcp:{world.admin_port}:interface=127.0.0.1"
password_hash = "{ADMIN_HASH}"
{extra}
""")


@pytest.fixture
def world(tmp_path: Path) -> Iterator[RelayWorld]:
    """A started sandbox and a configuration file for it (the relay is not started)."""
    sb = Sandbox(FilePath(str(tmp_path / "sandbox")))
    sb.start()
    w = RelayWorld(tmp_path, sb, tmp_path / "xrelay.toml", tmp_path / "state",
                   free_port(), free_port())
    sb.identity.add_user(DEFAULT_TENANT, BOSS, BOSS_PASSWORD, "Boss")
    w.boss_app = sb.identity.register_app(
        DEFAULT_TENANT, redirect_uris=[f"{w.admin_url}/signin/callback"], name="xrelay boss")
    write_config(w, delegated=True)
    yield w
    if w.relay is not None and w.relay.running:
        pytest_twisted.blockon(w.relay.stopService())
    pytest_twisted.blockon(sb.stop())


def start_relay(world: RelayWorld) -> Any:
    """The real relay, as makeService builds it, started in this process."""
    from twisted.internet import reactor

    from xrelay.service import makeService

    relay = makeService(read_config(str(world.config_path)), reactor=reactor)
    relay.startService()
    world.relay = relay
    return relay
