"""
The managed configuration as the loader reads it: the drop-in files xrelay writes under
C{state_dir/managed} (one per account, one for device rules), read after the admin's own
file and merged into one L{Config}.

Below the loader (L{xrelay.configfile}) and above the reader it reads each drop-in with
(L{xrelay.configreader}); the writing side is L{xrelay.managed}.  It reads only: it must
never write a file.
"""

from __future__ import annotations

import os
import tomllib
from typing import Any, Iterable

import attrs

from xrelay.config import Config

__all__ = ["DropIn", "account_path", "credentials_dir", "devices_path", "managed_dir",
           "read_dropins", "with_dropins"]

#: The folder under C{state_dir}.
MANAGED = "managed"
ACCOUNTS = "accounts"
DEVICES_FILE = "devices.toml"
CHANGES_LOG = "changes.log"
CREDENTIALS = "credentials"

@attrs.frozen
class DropIn:
    """One drop-in file as read: its path and its TOML, not yet validated."""

    path: str
    raw: dict[str, Any]


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
    if not os.access(state_dir, os.X_OK) and os.path.exists(state_dir):
        return []  # closed to this user: L{xrelay.checks} reports it
    if os.path.isfile(devices_path(state_dir)):
        paths.append(devices_path(state_dir))
    try:
        names = sorted(os.listdir(os.path.join(base, ACCOUNTS)))
    except (FileNotFoundError, NotADirectoryError):
        names = []
    except PermissionError:
        if not os.access(state_dir, os.R_OK | os.X_OK):
            # The state folder itself is closed to this user: the checks of
            # L{xrelay.checks} name that problem and its fix; nothing to add here.
            return []
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


def with_dropins(main: Config, dropins: Iterable[Any]) -> Config:
    """
    The admin's configuration with the managed drop-ins (L{xrelay.managed.DropIn})
    merged in: their accounts and users added, their networks joined.  The admin's
    file wins: a drop-in's account or user of the same name is ignored, with a warning
    in L{Config.warnings}.  Each drop-in is read by a reader of its own, so that a
    mistake names the drop-in's file and key.

    @raise ConfigError: a mistake in a drop-in, a public network in one, or (outside
        the sandbox) no account at all.
    """
    from xrelay.config import ConfigError, InvalidValue, _is_public
    from xrelay.configreader import _Reader

    main_path = main.path or "sandbox default"
    origins = [("accounts", a.name, main_path) for a in main.accounts]
    origins += [("users", u.name, main_path) for u in main.users]
    accounts, users = list(main.accounts), list(main.users)
    networks = list(main.relay.allow_networks)
    notes = list(main.notes)
    for dropin in dropins:
        reader = _Reader(dropin.path)
        raw = dropin.raw
        reader.known_keys(raw, "", ["relay", "users", "accounts"])
        if "relay" in raw:
            relay = reader.table(raw["relay"], "relay")
            reader.known_keys(relay, "relay", ["allow_networks"])
            for i, network in enumerate(reader.networks(relay, "allow_networks",
                                                        "relay.allow_networks") or ()):
                if _is_public(network):
                    raise reader.fail(f"relay.allow_networks[{i}]", f"{network} is not a "
                                      "private network; a managed file never admits a "
                                      "public range (that would be an open relay)")
                if network not in networks:
                    networks.append(network)
        for kind, found in (("users", reader.users(raw.get("users", []))),
                            ("accounts", reader.accounts(raw.get("accounts", [])))):
            into: list[Any] = users if kind == "users" else accounts
            for value in found:
                earlier = next((o[2] for o in origins
                                if o[0] == kind and o[1] == value.name), None)
                if earlier is not None:
                    notes.append(f"{dropin.path}: {kind}.\"{value.name}\" is ignored: "
                                 f"{earlier} defines it (the admin's file wins); delete "
                                 "one of the two")
                    continue
                origins.append((kind, value.name, dropin.path))
                into.append(value)
    if not accounts and main.sandbox_dir is None:
        # Allowed, so that a new relay can start and have its first account added by
        # the admin page's wizard or `xrelay setup`; it refuses mail until then.
        notes.append(f"{main_path}: accounts: no [[accounts]] yet, so every message is "
                     "refused; add one with the admin page's Add an account (/setup), "
                     "`xrelay setup microsoft --mailbox ADDRESS`, or an [[accounts]] table "
                     "(see the README)")
    try:
        return attrs.evolve(
            main, accounts=tuple(accounts), users=tuple(users),
            relay=attrs.evolve(main.relay, allow_networks=tuple(networks)),
            origins=tuple(origins), notes=tuple(notes))
    except InvalidValue as e:
        raise ConfigError(main_path, e.field, e.problem) from None


# -- writes ------------------------------------------------------------------------
