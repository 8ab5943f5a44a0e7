"""
Relay policy: who may relay, which envelope senders they may use, which addresses are
acceptable, how many recipients a message may have, and how long a client that keeps
failing AUTH must wait.

Every function here is a pure decision over the configuration and the facts the inbound
protocol hands in; the protocol only speaks SMTP and turns a L{Refusal} into a reply.
This module must never do I/O, never read a clock (callers pass the time in), and never
put into a reply anything that reveals which local users exist: an unauthenticated
client learns only what it may do, never whom the relay knows.
"""

from __future__ import annotations

import ipaddress
import re

import attrs

from xrelay.addresses import matches_any
from xrelay.config import AccountConfig, Config, UserConfig
from xrelay.routing import route_sender, sendable_senders

__all__ = [
    "Refusal",
    "relay_refusal",
    "address_refusal",
    "sender_refusal",
    "recipient_limit_refusal",
    "AuthFailures",
]


@attrs.frozen
class Refusal:
    """
    A decision against the client, as the reply the protocol sends.

    @ivar code: basic status code.
    @ivar enhanced: RFC 3463 enhanced status code.
    @ivar text: what the client's administrator needs to know to fix it.
    """

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4 client on a dual-stack socket shows up as ::ffff:a.b.c.d; the operator
    # wrote 192.168.x.y in allow_networks, so compare the IPv4 form.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def client_in_networks(config: Config, client_address: str) -> bool:
    """Whether the client address is inside C{relay.allow_networks}."""
    ip = _ip(client_address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net for net in config.relay.allow_networks)


def relay_refusal(config: Config, client_address: str, user: UserConfig | None,
                  tls_offered: bool) -> Refusal | None:
    """
    C{None} when this client may relay at all: it is in C{relay.allow_networks}, or it
    authenticated as a C{[[users]]} entry.  Otherwise the refusal says why and what would
    work, never whether any user exists.
    """
    if user is not None or client_in_networks(config, client_address):
        return None
    how = "authenticate with SMTP AUTH"
    if tls_offered:
        how += " after STARTTLS"
    return Refusal(
        550, "5.7.1",
        f"Relaying denied: your address {client_address} is not in relay.allow_networks "
        f"and you have not authenticated; {how}, or ask the relay's administrator to "
        "allow your network",
    )


# Address tricks that route mail somewhere other than the address seems to say.  The
# relay never interprets them, and refuses them so that no upstream does either.
_SOURCE_ROUTE = re.compile(r"^@")
_LOCAL_ALLOWED = re.compile(r"^[^\s\"\\()<>,;:@\[\]%!]+$")
_DOMAIN = re.compile(
    r"^(?:[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}"
    r"[A-Za-z0-9\u0080-\U0010ffff])?\.)*[A-Za-z0-9\u0080-\U0010ffff]"
    r"(?:[A-Za-z0-9\u0080-\U0010ffff-]{0,61}[A-Za-z0-9\u0080-\U0010ffff])?$"
)
_ADDRESS_LITERAL = re.compile(r"^\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]$")


def address_refusal(address: str, role: str) -> Refusal | None:
    """
    C{None} when C{address} (angle brackets removed) is a plain C{local@domain}
    mailbox; otherwise the refusal naming the trick.

    @param role: C{"sender"} or C{"recipient"}: picks the enhanced code (5.1.7 for a
        bad sender address, 5.1.3 for a bad recipient address).
    """
    enhanced = "5.1.7" if role == "sender" else "5.1.3"

    def refuse(why: str) -> Refusal:
        return Refusal(553, enhanced, f"Address <{address}> {why}; write a plain "
                       "address such as user@example.com")

    if len(address) > 254:
        return refuse("is longer than 254 characters")
    if _SOURCE_ROUTE.match(address):
        return refuse("has a source route (@host:), which this relay does not accept")
    if address.startswith('"') or '"' in address:
        return refuse("has a quoted local part, which this relay does not accept")
    if "!" in address:
        return refuse("is a !-path (UUCP bang path), which this relay does not accept")
    if "%" in address:
        return refuse("uses the %-hack (user%host@relay), which this relay does not "
                      "accept")
    if address.count("@") != 1:
        return refuse("is not of the form local@domain")
    local, domain = address.split("@")
    if not local or len(local) > 64 or not _LOCAL_ALLOWED.match(local):
        return refuse("has an invalid local part")
    if local.startswith(".") or local.endswith(".") or ".." in local:
        return refuse("has an invalid local part")
    if not domain or len(domain) > 253 or not (
        _DOMAIN.match(domain) or _ADDRESS_LITERAL.match(domain)
    ):
        return refuse("has an invalid domain")
    return None


def sender_refusal(config: Config, client_address: str, user: UserConfig | None,
                   sender: str) -> tuple[Refusal | None, AccountConfig | None]:
    """
    Whether this (already admitted) client may use this envelope sender, and which
    account carries it.

    An authenticated client is limited by its user's C{senders}; a client admitted by
    network by C{relay.senders}.  Then the sender must be one some account can send as
    (L{route_sender}); if none can, the refusal lists what the relay can send as, so
    the device's administrator can pick a working address.

    The null sender (bounces from a device) is always allowed: bounces must not bounce.
    """
    if sender:
        if user is not None:
            patterns, rule = user.senders, f'users."{user.name}".senders'
        else:
            patterns, rule = config.relay.senders, "relay.senders"
        if not matches_any(patterns, sender):
            allowed = ", ".join(p.text for p in patterns)
            who = f"user {user.name}" if user is not None else f"clients from {client_address}"
            return Refusal(
                550, "5.7.1",
                f"Sender <{sender}> is not allowed for {who} by {rule}; allowed: {allowed}",
            ), None
    account = route_sender(config, sender)
    if account is None:
        can = ", ".join(sendable_senders(config)) or "nothing (no [[accounts]])"
        return Refusal(
            550, "5.7.1",
            f"Sender <{sender}> cannot be relayed: no upstream account may send as it; "
            f"this relay can send as {can}",
        ), None
    return None, account


def recipient_limit_refusal(config: Config, accepted: int) -> Refusal | None:
    """
    C{None} while another recipient fits in the message.  The refusal is temporary (452)
    so that a client sends the rest in another transaction (RFC 5321 4.5.3.1.10).
    """
    if accepted < config.server.max_recipients:
        return None
    return Refusal(452, "4.5.3",
                   f"Too many recipients; at most {config.server.max_recipients} per "
                   "message, send the rest in another message")


@attrs.define
class AuthFailures:
    """
    Failed AUTH attempts per client address, and the delay they earn.

    Each failure within C{window} seconds doubles the wait before the next AUTH reply to
    that address (starting at C{base_delay}, at most C{max_delay}), which makes guessing
    slow across connections as well as within one.  Past C{per_address_limit} failures
    the address is refused outright until the window passes.  Times are passed in (no
    clock here), so tests use any numbers.
    """

    window: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 30.0
    per_address_limit: int = 10
    _failures: dict[str, list[float]] = attrs.field(factory=dict)

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def failed(self, address: str, now: float) -> None:
        self._recent(address, now)
        self._failures.setdefault(address, []).append(now)

    def succeeded(self, address: str) -> None:
        """A correct password clears the address: a device that mistyped is not punished."""
        self._failures.pop(address, None)

    def delay(self, address: str, now: float) -> float:
        """Seconds to wait before answering this address's AUTH."""
        count = len(self._recent(address, now))
        if count == 0:
            return 0.0
        return min(self.base_delay * 2 ** (count - 1), self.max_delay)

    def blocked(self, address: str, now: float) -> bool:
        """Whether the address has used up its failures for this window."""
        return len(self._recent(address, now)) >= self.per_address_limit
