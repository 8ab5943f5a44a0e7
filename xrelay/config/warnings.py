"""
Settings that are allowed but probably not what was meant: the lines
L{xrelay.config.Config.warnings} returns, which the relay logs at start and C{xrelay
check-config} prints, and the admin page's plain-HTTP check.

A warning never refuses a configuration (that is a validator's job, in
L{xrelay.config.validators}); this module must never raise on a valid configuration,
read a file or import the reader or the reactor.
"""

from __future__ import annotations

import ipaddress
from typing import Protocol

from xrelay.config.accounts import AccountConfig
from xrelay.config.values import (
    AdminConfig,
    ServerConfig,
    UserConfig,
    listener_tls_min_version,
)


class Whole(Protocol):
    """What the warnings read of a whole L{xrelay.config.Config} (which imports them)."""

    @property
    def path(self) -> str | None: ...
    @property
    def server(self) -> ServerConfig: ...
    @property
    def users(self) -> tuple[UserConfig, ...]: ...
    @property
    def accounts(self) -> tuple[AccountConfig, ...]: ...
    @property
    def notes(self) -> tuple[str, ...]: ...


def config_warnings(config: Whole) -> list[str]:
    """The warnings of a whole configuration, one line each (L{Config.warnings})."""
    where = config.path or "sandbox default"
    found = []
    if config.users and not config.server.has_tls and config.server.require_tls_for_auth:
        found.append(
            f"{where}: server.tls_cert: [[users]] can never log in: SMTP AUTH needs "
            "STARTTLS (require_tls_for_auth = true) and no certificate is set; set "
            "tls_cert and tls_key, or (on a trusted network only) "
            "require_tls_for_auth = false")
    found += legacy_tls_warnings(config, where)
    for i, account in enumerate(config.accounts):
        carries, why = account.largest_message()
        if carries is not None and carries < config.server.max_message_size:
            found.append(
                f"{where}: accounts[{i}].graph_large_messages: account "
                f"{account.name!r} carries at most {carries} bytes, less than "
                f"server.max_message_size = {config.server.max_message_size} ({why}); "
                "larger messages routed to it are refused at the end of DATA with "
                "552 5.3.4")
    found += config.notes
    return found


def legacy_tls_warnings(config: Whole, where: str) -> list[str]:
    """One warning per listener that accepts TLS 1.0 or 1.1 (security level 0)."""
    found = []
    for i, listener in enumerate(config.server.listen):
        version = listener_tls_min_version(config.server, listener)
        if version in ("1.0", "1.1") and config.server.has_tls:
            found.append(
                f"{where}: server.listen[{i}] ({listener.endpoint}) accepts legacy TLS "
                f"{version} with OpenSSL security level 0 (SHA-1, non-ECDHE suites): "
                "only for old devices on a trusted network; keep other listeners at "
                '"1.2"')
        if (listener.starttls is False and not listener.implicit_tls and config.users
                and config.server.require_tls_for_auth):
            found.append(
                f"{where}: server.listen[{i}] ({listener.endpoint}): starttls = false, so "
                "[[users]] cannot log in on it (require_tls_for_auth = true); devices "
                "there must come from relay.allow_networks")
    return found


def plain_http_off_loopback(admin: AdminConfig) -> bool:
    """Whether the admin page is served without TLS to more than this machine."""
    if (admin.public_url or "").startswith("https://"):
        return False
    kind, _, rest = admin.listen.partition(":")
    if kind.lower() not in ("tcp", "tcp6"):
        return False  # ssl:, unix: and the like
    interface = ""
    for part in rest.replace("\\:", "\0").split(":"):
        if part.startswith("interface="):
            interface = part[len("interface="):].replace("\0", ":")
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return True  # no interface: every address

