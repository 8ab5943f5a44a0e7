"""
The whole configuration: L{Config}, the rules between its sections, and where each
account and user comes from.

This module must never read a file or import the reader or the reactor (the reader,
L{xrelay.configfile}, builds a L{Config}; an embedding program may build one itself).
"""

from __future__ import annotations

import attrs

from xrelay.config.accounts import AccountConfig
from xrelay.config.validators import InvalidValue
from xrelay.config.values import (
    AdminConfig,
    DeliveryConfig,
    RelayConfig,
    ServerConfig,
    SetupConfig,
    UserConfig,
)
from xrelay.config.warnings import config_warnings


@attrs.frozen
class Config:
    """
    A whole, validated configuration.

    @ivar path: the file it was read from, or C{None} for the sandbox default.
    @ivar sandbox_dir: set for the embedded sandbox default: the relay then starts the
        sandbox providers in this folder and routes everything to them.
    """

    server: ServerConfig = attrs.field(factory=ServerConfig)
    relay: RelayConfig = attrs.field(factory=RelayConfig)
    users: tuple[UserConfig, ...] = ()
    accounts: tuple[AccountConfig, ...] = ()
    delivery: DeliveryConfig = attrs.field(factory=DeliveryConfig)
    admin: AdminConfig | None = None
    setup: SetupConfig = attrs.field(factory=SetupConfig)
    path: str | None = None
    sandbox_dir: str | None = None
    #: Where each account and user comes from: (C{"accounts"} or C{"users"}, name,
    #: file), the admin's file or a managed drop-in (L{xrelay.managed}).
    origins: tuple[tuple[str, str, str], ...] = ()
    #: Warnings found while merging the drop-ins (one ignored for a name the admin's
    #: file defines), shown by L{warnings}.
    notes: tuple[str, ...] = ()

    def origin(self, kind: str, name: str) -> str | None:
        """The file an account or user (C{kind} "accounts" or "users") comes from."""
        for what, named, path in self.origins:
            if what == kind and named == name:
                return path
        return None

    def __attrs_post_init__(self) -> None:
        names = [a.name for a in self.accounts]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidValue(f"accounts[{i}].name", f"account {name!r} is defined "
                                   "twice")
        default = self.relay.default_account
        if default is not None and default not in names:
            raise InvalidValue("relay.default_account", f"no account is named "
                               f"{default!r}; the accounts are: {', '.join(names) or 'none'}")

    def warnings(self) -> list[str]:
        """
        Settings that are allowed but probably not what was meant, one line each: the
        relay logs them at start and C{xrelay check-config} prints them.
        """
        return config_warnings(self)

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)



def with_accounts(config: Config, accounts: tuple[AccountConfig, ...]) -> Config:
    """The same configuration with other accounts (the sandbox default's)."""
    return attrs.evolve(config, accounts=accounts)
