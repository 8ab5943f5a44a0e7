"""
Admitting a device that the relay refused, through the managed configuration
(L{xrelay.managed}): "allow this address" (or its /24 or /64) joins it to
C{relay.allow_networks}; "give it a password" makes a device user with a generated
password, its senders restricted to those the device used.  "Allow legacy TLS" is not
a write: a listener's TLS changes only at restart, so the page shows the setting.

The managed configuration validates each change against the whole merged
configuration, refuses public ranges as C{check-config} does (never an open relay),
writes atomically with mode 0600 and logs who made the change; the caller then
reloads the relay.  Blocking (file writes, the password hash): call from a thread.

This module must never log or keep the generated password: it is returned once, to
be shown once.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
from typing import Any

import attrs

from xrelay.devices.records import Device

__all__ = ["AdmitRefused", "Admitted", "allow_network", "device_user_name",
           "give_password", "legacy_tls_listener", "network_for"]


class AdmitRefused(Exception):
    """An admit that was not made; the text is the one line to show."""


@attrs.frozen
class Admitted:
    """
    What an admit did: the managed change's description, and for "give it a
    password" the user and the password (to be shown once, never stored).
    """

    what: str
    path: str
    user: str | None = None
    password: str | None = attrs.field(default=None, repr=False)
    senders: tuple[str, ...] = ()


def network_for(address: str, scope: str) -> str:
    """
    The network to allow for a device: the address alone (C{scope} "address") or its
    /24 (IPv4) or /64 (IPv6) (C{scope} "network").

    @raise AdmitRefused: not an IP address, or an unknown scope.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise AdmitRefused(f"{address!r} is not an IP address") from None
    if scope == "address":
        return str(ipaddress.ip_network(ip))
    if scope == "network":
        prefix = 24 if ip.version == 4 else 64
        return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))
    raise AdmitRefused(f"scope {scope!r}: one of address, network")


def allow_network(config: Any, network: str, actor: str) -> Admitted:
    """
    Join C{network} (an address or CIDR text) to C{relay.allow_networks}.

    @raise AdmitRefused: not a network, a public range, or a configuration the
        reader refuses; nothing was written then.
    """
    from xrelay.managed import ManagedRefused, add_networks

    try:
        change = add_networks(config, [network.strip()], actor=actor,
                              reload=lambda: None)
    except ManagedRefused as e:
        raise AdmitRefused(str(e)) from None
    return Admitted(change.action, change.path)


def device_user_name(device: Device) -> str:
    """The user a password is made for: C{device-192-168-10-44} (for its address)."""
    return "device-" + re.sub(r"[^A-Za-z0-9]+", "-", device.address).strip("-")


def give_password(config: Any, device: Device, actor: str) -> Admitted:
    """
    A new random password for this device: for a device that logs in as a user the
    managed configuration made, that user's password is replaced (its senders kept);
    otherwise a device user is made for it, allowed only the envelope senders the
    device used.

    @raise AdmitRefused: the device logs in as a user of the admin's own file (xrelay
        never rewrites it), it has used no sender yet (there is nothing to restrict it
        to), or the managed configuration refused the user.
    """
    from xrelay.managed import ManagedRefused, add_user
    from xrelay.passwords import hash_password

    tried = device.user or device.auth_failed_user
    existing = next((u for u in config.users if u.name == tried), None)
    if existing is not None:
        origin = config.origin("users", existing.name)
        if origin is not None and origin == config.path:
            raise AdmitRefused(f"user {existing.name} is defined in {origin}, which xrelay "
                               "never rewrites: give it a new password_hash there (`xrelay "
                               "hash-password`), then `xrelay reload`")
        name, senders = existing.name, tuple(p.text for p in existing.senders)
    else:
        name, senders = device_user_name(device), tuple(dict.fromkeys(device.senders))
    if not senders:
        raise AdmitRefused(f"{device.address} has not tried to send from any address yet, "
                           "so its senders cannot be restricted; let it try once, or add "
                           "a [[users]] table by hand")
    password = secrets.token_urlsafe(18)
    table = {"name": name, "password_hash": hash_password(password), "senders":
             list(senders)}
    try:
        change = add_user(config, table, actor=actor, reload=lambda: None)
    except ManagedRefused as e:
        raise AdmitRefused(str(e)) from None
    return Admitted(change.action, change.path, name, password, senders)


def legacy_tls_listener() -> str:
    """The C{server.listen} entry that lets an old TLS 1.0 device in (shown, not written)."""
    return '{ endpoint = "tcp:2526", tls_min_version = "1.0" }'
