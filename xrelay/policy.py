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
from typing import TYPE_CHECKING, Sequence

import attrs

from xrelay.addresses import NULL_SENDER, SenderPattern, matches_any
from xrelay.config import ANY_SENDER, AccountConfig, Config, UserConfig
from xrelay.records import Refusal

if TYPE_CHECKING:
    from xrelay.inbound.headers import HeaderBlock
from xrelay.routing import route_sender, sendable_senders

__all__ = [
    "Refusal",
    "relay_refusal",
    "address_refusal",
    "sender_refusal",
    "route_refusal",
    "recipient_limit_refusal",
    "header_sender_refusal",
    "client_network",
    "proxy_trusted",
    "AuthFailures",
    "Attempt",
]


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
    (L{route_refusal}).

    The null sender (bounces from a device) is allowed for clients admitted by network;
    a user needs a C{"<>"} entry in its C{senders} for it (a bounce claims to come from
    no one, so it must not be a way around the user's sender rule).
    """
    if not sender and user is not None and not any(
        p.text == NULL_SENDER for p in user.senders
    ):
        return Refusal(
            550, "5.7.1",
            f'The null sender <> is not allowed for user {user.name} by '
            f'users."{user.name}".senders; add "<>" to it if this device sends bounces',
        ), None
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
    return route_refusal(config, sender)


def route_refusal(config: Config, sender: str) -> tuple[Refusal | None, AccountConfig | None]:
    """
    The account that carries this envelope sender (L{route_sender}), or, when no account
    may send as it, the refusal that lists what the relay can send as, so that the
    device's administrator can pick a working address.  Asked by L{sender_refusal} and,
    after any inbound handler accepted a sender, by the transaction: a handler decides
    I{whether} a sender is accepted, never which account carries it.
    """
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


def header_sender_refusal(user: UserConfig | None, headers: "HeaderBlock",
                          relay_senders: Sequence[SenderPattern] = ANY_SENDER,
                          ) -> Refusal | None:
    """
    For a restricted sender rule (a user's C{senders}, or C{relay.senders} for clients
    admitted by network), the message's own C{From:} (every address in it) and
    C{Sender:} must match the rule too: the envelope alone is not what the recipient
    sees.  A rule allowing C{"*"} is not checked.

    What the rule cannot see is refused rather than waved through, because an upstream
    parser might read more than this relay did: a header field seen but whose value was
    not kept (a header block padded past L{xrelay.inbound.headers.MAX_KEPT}), and a
    header block that ended at a line that is not a field instead of at the empty line
    (C{":x"}, a line without a colon, a continuation line first: Python's C{email}
    reads fields past some of them).  The refusal is 550 5.7.1 like the rule's own:
    the same message from a client the rule does not restrict is accepted, so it is
    the sender rule, not the message format, that refuses it.
    """
    if user is not None:
        patterns, rule, who = user.senders, f'users."{user.name}".senders', f"user {user.name}"
    else:
        patterns, rule, who = tuple(relay_senders), "relay.senders", "clients admitted by network"
    if any(p.text == "*" for p in patterns):
        return None
    patterns = tuple(p for p in patterns if p.text != NULL_SENDER)
    allowed = ", ".join(p.text for p in patterns) or "none"
    if headers.malformed is not None:
        return Refusal(550, "5.7.1", f"Header From: and Sender: cannot be checked against "
                       f"{rule} for {who}: {headers.malformed}; end the header block "
                       "with an empty line before the body")
    for field, name in (("from", "From:"), ("sender", "Sender:")):
        addresses = headers.addresses(field)
        if field in headers.dropped or (headers.has(field) and not addresses):
            return Refusal(550, "5.7.1", f"Header {name} cannot be checked against {rule} "
                           f"for {who}; send a plain {name} with one of: "
                           f"{allowed}")
        for address in addresses:
            if not matches_any(patterns, address):
                return Refusal(550, "5.7.1", f"Header {name} <{address}> is not allowed "
                               f"for {who} by {rule}; allowed: {allowed}")
    return None


def client_network(address: str) -> str:
    """
    The network a client address is counted in for the per-network cap: its /24
    (IPv4) or /64 (IPv6), which is what one host or one attacker typically holds.
    """
    ip = _ip(address)
    if ip is None:
        return address
    prefix = 24 if ip.version == 4 else 64
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def proxy_trusted(config: Config, address: str) -> bool:
    """Whether a connection from this (real, socket) address may send a PROXY header."""
    ip = _ip(address)
    if ip is None:
        return False
    return any(ip.version == net.version and ip in net
               for net in config.server.trusted_proxies)


@attrs.frozen
class Attempt:
    """One password check under way: who tries which account, and the wait it earned."""

    source: str
    account: str
    delay: float


@attrs.define
class AuthFailures:
    """
    Failed sign-in attempts per source address and per account name, and the waits and
    refusals they earn.

    Attempts are counted from the moment they start (L{begin}), not when their slow
    check ends, so that concurrent guesses cannot all slip in under the limit.  The two
    counts do different things:
     - per source: its own failures (and attempts in flight) make its answers slower
       (doubling from C{base_delay}, when C{source_delay}) and, past
       C{per_address_limit} within C{window} seconds, refuse it outright.  A source can
       only lock itself out.
     - per account name: failures from I{other} sources make the answers for that name
       slower, never a refusal, so an attacker elsewhere cannot lock a device or the
       admin out.  That wait is only for a source that has failed itself (within the
       window), and at most C{aimed_max_delay}: a device that has not mistyped gets its
       answer at once however many guesses others made on its name (printers give up on
       a reply after some seconds, and user names like C{scanner} are guessable), while
       every guessing source still waits and is still refused past its limit.
    A success clears the source and the failures it had caused for that account (a
    device that mistyped is not punished), not what others caused.

    Memory is bounded: at most C{max_tracked} sources and as many account names, the
    least recently failed dropped first, and each record keeps a bounded list.  Times
    are passed in (no clock here).
    """

    window: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 30.0
    per_address_limit: int = 10
    #: The most a wait earned by I{other} sources' failures on an account may add.
    aimed_max_delay: float = 3.0
    #: Whether a source's own failures slow its answers (SMTP AUTH), or only refuse it
    #: past the limit (the admin page, where a person types).
    source_delay: bool = True
    max_tracked: int = 10000
    _failures: dict[str, list[float]] = attrs.field(factory=dict)
    _by_account: dict[str, list[tuple[float, str]]] = attrs.field(factory=dict)
    _in_flight: dict[str, int] = attrs.field(factory=dict)

    def _recent(self, address: str, now: float) -> list[float]:
        times = [t for t in self._failures.get(address, ()) if now - t < self.window]
        if times:
            self._failures[address] = times
        else:
            self._failures.pop(address, None)
        return times

    def _count(self, address: str, now: float) -> int:
        return len(self._recent(address, now)) + self._in_flight.get(address, 0)

    def _others(self, account: str, source: str, now: float) -> int:
        entries = [e for e in self._by_account.get(account, ()) if now - e[0] < self.window]
        if entries:
            self._by_account[account] = entries
        else:
            self._by_account.pop(account, None)
        return sum(1 for _, s in entries if s != source)

    def _wait(self, count: int) -> float:
        if count <= 0:
            return 0.0
        return min(self.base_delay * 2 ** min(count - 1, 32), self.max_delay)

    def begin(self, source: str, account: str, now: float) -> Attempt | None:
        """
        Start one check: C{None} when the source has used up its failures (refuse it
        without checking), else the attempt, counted in flight until L{finish}.
        """
        if self.blocked(source, now):
            return None
        delay = max(self._wait(self._count(source, now)) if self.source_delay else 0.0,
                    self._aimed(account, source, now))
        self._in_flight[source] = self._in_flight.get(source, 0) + 1
        return Attempt(source, account, delay)

    def finish(self, attempt: Attempt, ok: bool, now: float) -> None:
        """The check ended (also when the client went away meanwhile: it still counts)."""
        self.abandon(attempt)
        if ok:
            self.succeeded(attempt.source, attempt.account)
        else:
            self.failed(attempt.source, now, attempt.account)

    def abandon(self, attempt: Attempt) -> None:
        """The check could not decide (the checker's directory is down): count nothing."""
        left = self._in_flight.get(attempt.source, 1) - 1
        if left > 0:
            self._in_flight[attempt.source] = left
        else:
            self._in_flight.pop(attempt.source, None)

    def failed(self, address: str, now: float, account: str | None = None) -> None:
        self._recent(address, now)
        times = self._failures.setdefault(address, [])
        times.append(now)
        del times[:-self.per_address_limit * 2]
        if account is not None:
            self._others(account, address, now)
            entries = self._by_account.setdefault(account, [])
            entries.append((now, address))
            del entries[:-64]
        self._bound(now)

    def succeeded(self, address: str, account: str | None = None) -> None:
        """A correct password clears the address: a device that mistyped is not punished."""
        self._failures.pop(address, None)
        if account is not None and account in self._by_account:
            entries = [e for e in self._by_account[account] if e[1] != address]
            if entries:
                self._by_account[account] = entries
            else:
                del self._by_account[account]

    def delay(self, address: str, now: float, account: str | None = None) -> float:
        """Seconds to wait before answering this address's next check."""
        own = self._wait(self._count(address, now)) if self.source_delay else 0.0
        if account is None:
            return own
        return max(own, self._aimed(account, address, now))

    def _aimed(self, account: str, source: str, now: float) -> float:
        """The wait others' failures on this account add, for a source that failed too."""
        if not self._recent(source, now):
            return 0.0
        return min(self._wait(self._others(account, source, now)), self.aimed_max_delay)

    def blocked(self, address: str, now: float) -> bool:
        """Whether the address has used up its failures (in flight included) for now."""
        return self._count(address, now) >= self.per_address_limit

    def _bound(self, now: float) -> None:
        for records in (self._failures, self._by_account):
            if len(records) <= self.max_tracked:
                continue
            last = {key: (value[-1] if not isinstance(value[-1], tuple) else value[-1][0])
                    for key, value in records.items() if value}
            # Down to nine tenths at once, so that the sort is paid rarely.
            excess = len(records) - self.max_tracked * 9 // 10
            for key in sorted(last, key=last.__getitem__)[:excess]:
                del records[key]

    def tracked(self) -> int:
        """How many sources and account names are remembered (for the memory bound)."""
        return len(self._failures) + len(self._by_account)
