"""
The managed configuration: drop-in TOML files that xrelay itself writes beside the
admin's own C{xrelay.toml}, so that the setup wizard (and the devices page) can add an
account, a trusted network or a device user without ever rewriting the admin's file.

Layout, under C{server.state_dir}::

    managed/accounts/<name>.toml   one [[accounts]] table each (xrelay setup, the wizard)
    managed/devices.toml           [relay] allow_networks = [...] and [[users]] tables
    managed/changes.log            one line per change: when, who, what, which file
    managed/credentials/           keys and certificates the setup made (0600, kept when
                                   the account is removed, until the admin deletes them)

The reader (L{xrelay.configfile.read_config}) reads the admin's file first, then these
(L{read_dropins}, sorted by path), and merges them (L{xrelay.configfile.with_dropins}):
accounts and users are added, networks are joined.  The admin's file wins: an account
or user it defines is never replaced by a drop-in (the drop-in's table is ignored with a
warning that C{check-config} and the daemon's log show), and a write that would collide
with it is refused with one line (L{ManagedRefused}).

Public API (what other modules call; C{actor} is who made the change, for the log):

    - C{write_account(config, table, *, actor, reload=None)}: add or replace the
      managed account C{table["name"]} (an C{[[accounts]]} table as a dict).
    - C{remove_account(config, name, *, actor, reload=None)}: remove its drop-in (its
      credential files stay).
    - C{add_networks(config, networks, *, actor, reload=None)}: join CIDR texts to
      C{relay.allow_networks} (public ranges refused, never an open relay).
    - C{add_user(config, user_table, *, actor, reload=None)}: add or replace a device
      user (a C{[[users]]} table with C{password_hash}).
    - C{read_dropins(state_dir)}: the drop-ins as L{DropIn} values (path and raw TOML).

Every write is validated first: the whole merged configuration is built with the new
drop-in in place (L{xrelay.configfile.with_dropins}); a bad one raises L{ManagedRefused}
and nothing is written, so the running configuration stays.  Then it is written
atomically (a temporary file created with its final mode 0600, fsynced, renamed over,
the folder fsynced), owned by the owner of C{state_dir} when run as root, logged in
C{changes.log} and the daemon's log, and the daemon is asked to reload (C{reload}: a
callable returning whether it took it; by default the running daemon is asked through
its control socket, as C{xrelay reload} does).  Each write returns a L{Change}.

This module must never rewrite or even open for writing the admin's own file, and
never writes a secret: drop-ins name credential files, they do not hold them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
import tomllib
from typing import TYPE_CHECKING, Any, Callable, Iterable

import attrs
from twisted.logger import Logger

from xrelay.durable import fsync_directory, write_durably

if TYPE_CHECKING:
    from xrelay.config import Config

__all__ = ["Change", "DropIn", "ManagedRefused", "add_networks", "add_user",
           "credentials_dir", "managed_dir", "read_dropins", "remove_account",
           "write_account"]

log = Logger(namespace="xrelay.managed")

#: The folder under C{state_dir}.
MANAGED = "managed"
ACCOUNTS = "accounts"
DEVICES_FILE = "devices.toml"
CHANGES_LOG = "changes.log"
CREDENTIALS = "credentials"

#: Names that are safe as a file name and readable as an account name.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

HEADER = ("# Managed by xrelay ({what}); read after the admin's own configuration file.\n"
          "# Change it with xrelay (the setup wizard, `xrelay setup`, the devices page);\n"
          "# to take it over by hand, copy the table into your xrelay.toml (yours wins)\n"
          "# and delete this file.\n")


class ManagedRefused(Exception):
    """A managed change that was not made; the text is the one line to show."""


@attrs.frozen
class DropIn:
    """One drop-in file as read: its path and its TOML, not yet validated."""

    path: str
    raw: dict[str, Any]


@attrs.frozen
class Change:
    """What a managed write did."""

    action: str
    path: str
    actor: str
    reloaded: bool | None


def managed_dir(state_dir: str) -> str:
    return os.path.join(state_dir, MANAGED)


def credentials_dir(state_dir: str) -> str:
    """Where the setup keeps the keys and certificates it makes (0700)."""
    return os.path.join(managed_dir(state_dir), CREDENTIALS)


def account_path(state_dir: str, name: str) -> str:
    return os.path.join(managed_dir(state_dir), ACCOUNTS, f"{name}.toml")


def devices_path(state_dir: str) -> str:
    return os.path.join(managed_dir(state_dir), DEVICES_FILE)


def read_dropins(state_dir: str) -> list[DropIn]:
    """
    The drop-ins under C{state_dir/managed}, in a stable order (devices first, then
    accounts by name).  A file that is not TOML raises L{xrelay.config.ConfigError}
    naming it; a missing folder means none.
    """
    from xrelay.config import ConfigError

    base = managed_dir(state_dir)
    paths = []
    if os.path.isfile(devices_path(state_dir)):
        paths.append(devices_path(state_dir))
    try:
        names = sorted(os.listdir(os.path.join(base, ACCOUNTS)))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except PermissionError:
        raise ConfigError(os.path.join(base, ACCOUNTS), "", "cannot read the folder "
                          "(permission denied); run as the relay's user or root") from None
    paths += [os.path.join(base, ACCOUNTS, n) for n in names
              if n.endswith(".toml") and not n.startswith(".")]
    dropins = []
    for path in paths:
        try:
            with open(path, "rb") as f:
                raw = tomllib.load(f)
        except PermissionError:
            raise ConfigError(path, "", "cannot read the file (permission denied); make "
                              "it readable by the user xrelay runs as") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(path, "", f"not valid TOML ({e}); fix it or delete this "
                              "managed file") from None
        dropins.append(DropIn(path, raw))
    return dropins


# -- writes ------------------------------------------------------------------------


def write_account(config: "Config", table: dict[str, Any], *, actor: str,
                  reload: Callable[[], bool | None] | None = None) -> Change:
    """
    Add (or replace) the managed account C{table["name"]}.

    @raise ManagedRefused: an unusable name, a name the admin's file uses, or a table
        the merged configuration refuses (the reader's one line).
    """
    name = table.get("name")
    if not isinstance(name, str) or not _NAME.match(name):
        raise ManagedRefused(f"account name {name!r} cannot be used: write 1-64 letters, "
                             "digits, '.', '_' or '-', starting with a letter or digit")
    origin = config.origin("accounts", name)
    if origin is not None and origin == config.path:
        raise ManagedRefused(f"account {name!r} is defined in {origin}, which xrelay "
                             "never rewrites; choose another name (--name) or remove it "
                             "there first")
    path = account_path(config.server.state_dir, name)
    text = HEADER.format(what=f"account {name}") + "\n[[accounts]]\n" + _table(table)
    action = "replaced account" if os.path.exists(path) else "added account"
    return _commit(config, path, text, f"{action} {name}", actor, reload)


def remove_account(config: "Config", name: str, *, actor: str,
                   reload: Callable[[], bool | None] | None = None) -> Change:
    """
    Remove the managed account C{name}'s drop-in; its credential files are kept.

    @raise ManagedRefused: no such managed account, or it is in the admin's file.
    """
    origin = config.origin("accounts", name)
    path = account_path(config.server.state_dir, name) if _NAME.match(name) else ""
    if not path or not os.path.exists(path):
        where = f"defined in {origin}, which xrelay never rewrites" if origin else \
            "not configured"
        raise ManagedRefused(f"account {name!r} is not a managed account ({where}); "
                             "nothing removed")
    others = [d for d in read_dropins(config.server.state_dir) if d.path != path]
    _validate(config, others)
    os.unlink(path)
    fsync_directory(os.path.dirname(path))
    return _record(config, f"removed account {name} (its credential files are kept)",
                   path, actor, reload)


def add_networks(config: "Config", networks: Iterable[str], *, actor: str,
                 reload: Callable[[], bool | None] | None = None) -> Change:
    """
    Join networks to C{relay.allow_networks} through C{managed/devices.toml}.

    @raise ManagedRefused: a text that is not a CIDR network, or a public range (the
        page never makes an open relay, whatever C{allow_public_networks} says).
    """
    from xrelay.config import _is_public

    added = []
    for text in networks:
        try:
            network = ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise ManagedRefused(f"{text!r} is not an address or network in CIDR form; "
                                 'write e.g. "192.168.10.44" or "192.168.10.0/24"') from None
        if _is_public(network):
            raise ManagedRefused(f"{network} is not a private network: relaying for it "
                                 "would make an open relay; admit devices on private, "
                                 "loopback or link-local addresses only")
        added.append(str(network))
    state_dir = config.server.state_dir
    raw = _devices_raw(state_dir)
    relay = raw.setdefault("relay", {})
    current = list(relay.get("allow_networks", []))
    relay["allow_networks"] = current + [n for n in added if n not in current]
    return _commit(config, devices_path(state_dir), _devices_text(raw),
                   f"added networks {', '.join(added)}", actor, reload)


def add_user(config: "Config", user_table: dict[str, Any], *, actor: str,
             reload: Callable[[], bool | None] | None = None) -> Change:
    """
    Add (or replace) a managed device user (C{name}, C{password_hash}, C{senders}).

    @raise ManagedRefused: a user the admin's file defines, or a table the reader
        refuses.
    """
    name = user_table.get("name")
    origin = config.origin("users", name) if isinstance(name, str) else None
    if origin is not None and origin == config.path:
        raise ManagedRefused(f"user {name!r} is defined in {origin}, which xrelay never "
                             "rewrites; choose another name")
    state_dir = config.server.state_dir
    raw = _devices_raw(state_dir)
    users = [u for u in raw.get("users", []) if u.get("name") != name]
    raw["users"] = users + [dict(user_table)]
    return _commit(config, devices_path(state_dir), _devices_text(raw),
                   f"set user {name}", actor, reload)


# -- the steps every write takes -----------------------------------------------------


def _commit(config: "Config", path: str, text: str, what: str, actor: str,
            reload: Callable[[], bool | None] | None) -> Change:
    """Validate C{text} as the drop-in at C{path}, then write it atomically."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:  # pragma: no cover - our own writer's output
        raise ManagedRefused(f"{path}: xrelay wrote no valid TOML ({e})") from None
    others = [d for d in read_dropins(config.server.state_dir) if d.path != path]
    _validate(config, [*others, DropIn(path, raw)])
    _ensure_folder(config.server.state_dir, os.path.dirname(path))
    temporary = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    write_durably(temporary, text.encode("utf-8"))
    _give_to_owner(config.server.state_dir, temporary)
    os.replace(temporary, path)
    fsync_directory(os.path.dirname(path))
    return _record(config, what, path, actor, reload)


def _validate(config: "Config", dropins: list[DropIn]) -> "Config":
    """The whole merged configuration with these drop-ins, or L{ManagedRefused}."""
    from xrelay.config import ConfigError
    from xrelay.configfile import main_config, with_dropins

    try:
        return with_dropins(main_config(config), dropins)
    except ConfigError as e:
        raise ManagedRefused(f"refused, the configuration is unchanged: {e}") from None


def _record(config: "Config", what: str, path: str, actor: str,
            reload: Callable[[], bool | None] | None) -> Change:
    line = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}\t{actor}\t{what}\t"
            f"{path}\n")
    changes = os.path.join(managed_dir(config.server.state_dir), CHANGES_LOG)
    fd = os.open(changes, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, line.encode("utf-8"))
    finally:
        os.close(fd)
    _give_to_owner(config.server.state_dir, changes)
    log.info("xrelay: managed configuration: {actor} {what} ({path})", actor=actor,
             what=what, path=path)
    reloaded = (reload or _ask_daemon(config))()
    return Change(what, path, actor, reloaded)


def _ask_daemon(config: "Config") -> Callable[[], bool | None]:
    """Ask the running daemon to reload; C{None}: none runs (it reads it at start)."""

    def ask() -> bool | None:
        from xrelay.operations.control import ControlClient, DaemonNotRunning

        try:
            ControlClient(config.server.state_dir).request("reload")
        except DaemonNotRunning:
            return None
        except Exception:
            return False
        return True
    return ask


def _ensure_folder(state_dir: str, folder: str) -> None:
    """Make C{folder} (under state_dir) and its parents up to state_dir, 0700."""
    missing = []
    current = folder
    while not os.path.isdir(current) and os.path.abspath(current) != os.path.abspath(
            state_dir):
        missing.append(current)
        current = os.path.dirname(current)
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    for path in reversed(missing):
        os.makedirs(path, mode=0o700, exist_ok=True)
        _give_to_owner(state_dir, path)


def _give_to_owner(state_dir: str, path: str) -> None:
    """As root, give a managed file to whoever owns state_dir (the service user)."""
    if os.geteuid() != 0:
        return
    st = os.stat(state_dir)
    os.chown(path, st.st_uid, st.st_gid)


def _devices_raw(state_dir: str) -> dict[str, Any]:
    try:
        with open(devices_path(state_dir), "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ManagedRefused(f"{devices_path(state_dir)} is not valid TOML ({e}); fix or "
                             "delete it first") from None


def _devices_text(raw: dict[str, Any]) -> str:
    text = HEADER.format(what="devices")
    relay = raw.get("relay") or {}
    if relay:
        text += "\n[relay]\n" + _table(relay)
    for user in raw.get("users", []):
        text += "\n[[users]]\n" + _table(user)
    return text


def _table(table: dict[str, Any]) -> str:
    return "".join(f"{key} = {toml_value(value)}\n" for key, value in table.items()
                   if value is not None)


def toml_value(value: Any) -> str:
    """A TOML value for the plain types a managed table holds."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, str):
        escaped = (value.replace("\\", "\\\\").replace('"', '\\"')
                   .replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t"))
        return f'"{escaped}"'
    raise ManagedRefused(f"cannot write {type(value).__name__} values in a managed file")
