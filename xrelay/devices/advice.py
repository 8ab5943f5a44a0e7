"""
What the inventory says to a person: why a device fails in a few words, the fix for
its last refusal, and the one-line summary at the top of the Devices page and of
C{xrelay devices} ("14 devices; 2 failing: 192.168.10.44 refused (not in
allow_networks), 192.168.10.51 TLS 1.0 refused").

Pure functions of a L{Device}: no I/O, so the page, the command and the tests say the
same thing.
"""

from __future__ import annotations

import re
from typing import Sequence

from xrelay.devices.records import Device

__all__ = ["ADMIT_ADDRESS", "ADMIT_PASSWORD", "LEGACY_TLS", "fix_for", "reason_for",
           "summary_line"]

#: What a fix may offer on the Devices page (the admit actions).
ADMIT_ADDRESS = "address"
ADMIT_PASSWORD = "password"
LEGACY_TLS = "legacy-tls"

_OLD_TLS = re.compile(r"offered only (SSL 3\.0|TLS 1\.0)|offered (TLS 1\.1) at most")


def _old_tls(device: Device) -> str | None:
    """The old TLS version a failed handshake offered ("TLS 1.0"), if that was why."""
    refusal = device.last_refusal
    if refusal is None or refusal.stage != "tls":
        return None
    match = _OLD_TLS.search(refusal.reply)
    return next((g for g in match.groups() if g), None) if match else None


def reason_for(device: Device) -> str:
    """Why a failing device fails, in a few words ("refused (not in allow_networks)")."""
    refusal = device.last_refusal
    if refusal is None:
        return "ok"
    old = _old_tls(device)
    if old is not None:
        return f"{old} refused"
    if refusal.stage == "tls":
        return "TLS handshake failed"
    if refusal.stage == "auth":
        return f"wrong password for {device.auth_failed_user or 'its user'}"
    if "not in relay.allow_networks" in refusal.reply:
        return "refused (not in allow_networks)"
    if refusal.reply.startswith("550 5.7.1 Sender"):
        return "sender refused"
    if refusal.stage == "connect":
        return "connection refused"
    return f"refused ({refusal.reply.split(' ', 2)[0]})"


def fix_for(device: Device) -> tuple[str, tuple[str, ...]]:
    """
    The fix for the device's last refusal, in words, and the admit actions the
    Devices page offers for it (L{ADMIT_ADDRESS}, L{ADMIT_PASSWORD}, L{LEGACY_TLS}).
    """
    refusal = device.last_refusal
    if refusal is None or not device.failing:
        return "", ()
    if _old_tls(device) is not None:
        return ("It speaks only an old TLS version: give it a listener with "
                "tls_min_version = \"1.0\", or turn TLS off on the device.", (LEGACY_TLS,))
    if refusal.stage == "tls":
        return (f"{refusal.reply}.", ())
    if refusal.stage == "auth":
        return (f"The device logs in as {device.auth_failed_user or '?'} with a wrong "
                "password: set the right one on the device, or give it a new password "
                "here (the old one stops working).", (ADMIT_PASSWORD,))
    if "not in relay.allow_networks" in refusal.reply:
        return ("It is not in relay.allow_networks and does not log in: allow its "
                "address (or its network), or give it a password.",
                (ADMIT_ADDRESS, ADMIT_PASSWORD))
    if refusal.reply.startswith("550 5.7.1 Sender"):
        return ("The device sends as an address it may not use: " + refusal.reply[10:],
                ())
    if refusal.stage == "connect":
        return ("The relay refused the connection: " + refusal.reply, ())
    return ("The relay refused it: " + refusal.reply, ())


def summary_line(devices: Sequence[Device], shown: int = 3) -> str:
    """One line: how many devices, how many fail, and the first few with why."""
    failing = [d for d in devices if d.failing]
    total = f"{len(devices)} device{'s' if len(devices) != 1 else ''}"
    if not failing:
        return f"{total}; none failing"
    named = ", ".join(f"{d.address}{' (' + d.user + ')' if d.user else ''} "
                      f"{reason_for(d)}" for d in failing[:shown])
    more = f", and {len(failing) - shown} more" if len(failing) > shown else ""
    return f"{total}; {len(failing)} failing: {named}{more}"
