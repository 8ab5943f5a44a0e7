"""
The managed configuration (xrelay/managed.py): drop-ins that xrelay writes beside the
admin's file are validated before they take effect (a bad one refused, the old
configuration kept), written atomically with mode 0600, never touch the admin's file,
lose to it on a name conflict, show in check-config with where they come from, log
who made each change, and a running relay takes them on reload.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from tests.admin.conftest import start_relay, write_config
from tests.admin.test_web import until
from tests.operations.test_commands import delivered_to, smtp_send
from xrelay import managed
from xrelay.config import read_config
from xrelay.managed import ManagedRefused
from xrelay.passwords import hash_password


def managed_table(world: Any, name: str = "printers", **extra: Any) -> dict[str, Any]:
    """An account on the sandbox's ready app, sending as printers@example.org."""
    table = dict(world.sandbox.default_account(), name=name,
                 senders=["printers@example.org"])
    table.update(extra)
    return table


def test_account_dropin_is_validated_atomic_private_and_shown_where_it_comes_from(
        world) -> None:
    admin_file = world.config_path.read_bytes()
    config = read_config(str(world.config_path))
    change = managed.write_account(config, managed_table(world), actor="admin (test)",
                                   reload=lambda: None)

    path = Path(world.state_dir) / "managed" / "accounts" / "printers.toml"
    assert change.path == str(path)
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600 and path.stat().st_uid == os.geteuid()
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    assert world.config_path.read_bytes() == admin_file  # never rewritten

    merged = read_config(str(world.config_path))
    assert "printers" in [a.name for a in merged.accounts]
    assert merged.origin("accounts", "printers") == str(path)
    assert merged.origin("accounts", "sandbox") == str(world.config_path)

    out = subprocess.run([sys.executable, "-m", "xrelay.cli", "check-config",
                          str(world.config_path)], capture_output=True, text=True,
                         env=dict(os.environ, PYTHONPATH=os.getcwd()))
    assert out.returncode == 0, out.stderr
    assert f"# from {path} (managed by xrelay)" in out.stdout
    assert f"# from {world.config_path}\n" in out.stdout

    log = (Path(world.state_dir) / "managed" / "changes.log").read_text()
    assert "\tadmin (test)\tadded account printers\t" in log


def test_a_bad_dropin_is_refused_and_the_old_configuration_kept(world) -> None:
    config = read_config(str(world.config_path))
    managed.write_account(config, managed_table(world), actor="t", reload=lambda: None)
    before = (Path(world.state_dir) / "managed" / "accounts" / "printers.toml").read_bytes()

    with pytest.raises(ManagedRefused) as refused:
        managed.write_account(config, managed_table(world, flow="carrier_pigeon"),
                              actor="t", reload=lambda: None)
    line = str(refused.value)
    assert "\n" not in line and "the configuration is unchanged" in line
    assert 'accounts."printers".flow' in line and "printers.toml" in line
    path = Path(world.state_dir) / "managed" / "accounts" / "printers.toml"
    assert path.read_bytes() == before
    assert read_config(str(world.config_path)).account("printers").flow == \
        "client_credentials"

    # A file the account needs that does not exist: refused too, nothing written.
    with pytest.raises(ManagedRefused, match="does not exist"):
        managed.write_account(config, managed_table(
            world, name="other", client_secret_file="/nonexistent/secret"),
            actor="t", reload=lambda: None)
    assert not (path.parent / "other.toml").exists()

    with pytest.raises(ManagedRefused, match="cannot be used"):
        managed.write_account(config, managed_table(world, name="../escape"),
                              actor="t", reload=lambda: None)


def test_the_admins_file_wins(world) -> None:
    config = read_config(str(world.config_path))
    # A write under a name the admin's file uses is refused with one line.
    with pytest.raises(ManagedRefused) as refused:
        managed.write_account(config, managed_table(world, name="sandbox"), actor="t",
                              reload=lambda: None)
    assert str(world.config_path) in str(refused.value)
    assert "never rewrites" in str(refused.value)

    # A drop-in that collides anyway (the admin added the name later) is ignored with
    # a warning; the admin's table stays in force.
    folder = Path(world.state_dir) / "managed" / "accounts"
    folder.mkdir(parents=True)
    (folder / "sandbox.toml").write_text(
        "[[accounts]]\n" + "".join(f"{k} = {managed.toml_value(v)}\n" for k, v in
                                   managed_table(world, name="sandbox",
                                                 user="other@example.org").items()))
    merged = read_config(str(world.config_path))
    assert merged.account("sandbox").user != "other@example.org"
    assert any("is ignored" in w and "admin's file wins" in w for w in merged.warnings())


def test_networks_and_users_join_and_public_ranges_are_refused(world) -> None:
    config = read_config(str(world.config_path))
    managed.add_networks(config, ["127.0.0.3"], actor="admin", reload=lambda: None)
    managed.add_user(config, {"name": "scanner", "password_hash":
                              hash_password("scanner pw", log2_n=4),
                              "senders": ["scanner@example.org"]},
                     actor="admin", reload=lambda: None)
    merged = read_config(str(world.config_path))
    assert "127.0.0.3/32" in [str(n) for n in merged.relay.allow_networks]
    assert "127.0.0.0/8" in [str(n) for n in merged.relay.allow_networks]
    assert [u.name for u in merged.users] == ["scanner"]
    for public in ("0.0.0.0/0", "8.8.8.8"):
        with pytest.raises(ManagedRefused, match="open relay"):
            managed.add_networks(merged, [public], actor="admin", reload=lambda: None)
    assert "8.8.8.8/32" not in [str(n) for n in read_config(
        str(world.config_path)).relay.allow_networks]


def test_remove_keeps_the_credentials(world) -> None:
    config = read_config(str(world.config_path))
    creds = Path(managed.credentials_dir(str(world.state_dir)))
    managed.write_account(config, managed_table(world), actor="t", reload=lambda: None)
    creds.mkdir(parents=True, exist_ok=True)
    (creds / "printers.key").write_text("key")
    config = read_config(str(world.config_path))
    managed.remove_account(config, "printers", actor="t", reload=lambda: None)
    assert "printers" not in [a.name for a in read_config(str(world.config_path)).accounts]
    assert (creds / "printers.key").exists()
    with pytest.raises(ManagedRefused, match="never rewrites"):
        managed.remove_account(config, "sandbox", actor="t", reload=lambda: None)


@pytest_twisted.ensureDeferred
async def test_a_running_relay_takes_a_managed_account_on_reload(world) -> None:
    write_config(world)
    relay = start_relay(world)
    change = managed.write_account(relay.config, managed_table(world),
                                   actor="admin (test)", reload=relay.reload)
    assert change.reloaded is True
    assert "printers" in relay.transports
    await smtp_send(world.smtp_port, "printers@example.org", "someone@example.net")
    await until(lambda: delivered_to(world, "someone@example.net"))

    # A bad drop-in: refused before it takes effect; the relay keeps delivering.
    with pytest.raises(ManagedRefused):
        managed.write_account(relay.config, managed_table(world, smtp_port=0),
                              actor="t", reload=relay.reload)
    await smtp_send(world.smtp_port, "printers@example.org", "again@example.net")
    await until(lambda: delivered_to(world, "again@example.net"))
