"""
Relay policy decisions, without sockets: who may relay, which senders, which addresses,
how many recipients, and the AUTH back-off.
"""

from __future__ import annotations

import ipaddress

import pytest

from tests.inbound.harness import account, make_config, users
from xrelay.addresses import SenderPattern
from xrelay.config import Config, RelayConfig
from xrelay.policy import (
    AuthFailures,
    Refusal,
    address_refusal,
    client_in_networks,
    recipient_limit_refusal,
    relay_refusal,
    sender_refusal,
)

LAN = (ipaddress.ip_network("192.168.10.0/24"), ipaddress.ip_network("2001:db8::/64"))


def lan_config(**kwargs: object) -> Config:
    return make_config(allow_networks=LAN, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("address, inside", [
    ("192.168.10.7", True), ("192.168.11.7", False), ("::ffff:192.168.10.7", True),
    ("2001:db8::5", True), ("2001:db9::5", False), ("127.0.0.1", False),
    ("not-an-address", False), ("", False),
])
def test_client_in_networks(address: str, inside: bool) -> None:
    assert client_in_networks(lan_config(), address) is inside


def test_default_networks_are_loopback_only() -> None:
    config = Config()
    assert client_in_networks(config, "127.0.0.1")
    assert client_in_networks(config, "::1")
    assert not client_in_networks(config, "10.0.0.1")


def test_relay_refusal_says_why_without_naming_users() -> None:
    config = lan_config()
    assert relay_refusal(config, "192.168.10.7", None, tls_offered=True) is None
    assert relay_refusal(config, "203.0.113.9", users()[0], tls_offered=True) is None
    refusal = relay_refusal(config, "203.0.113.9", None, tls_offered=True)
    assert refusal == Refusal(
        550, "5.7.1", "Relaying denied: your address 203.0.113.9 is not in "
        "relay.allow_networks and you have not authenticated; authenticate with SMTP "
        "AUTH after STARTTLS, or ask the relay's administrator to allow your network")
    for user in users():
        assert user.name not in str(refusal)
    without_tls = relay_refusal(config, "203.0.113.9", None, tls_offered=False)
    assert without_tls is not None and "after STARTTLS" not in without_tls.text


@pytest.mark.parametrize("address, why", [
    ("user%other@example.com", "uses the %-hack"),
    ("@a.example:b@c.example", "has a source route"),
    ("@a.example,@b.example:b@c.example", "has a source route"),
    ('"a@b"@example.com', "has a quoted local part"),
    ('"john doe"@example.com', "has a quoted local part"),
    ("host!user@example.com", "is a !-path"),
    ("host!user", "is a !-path"),
    ("user@other@example.com", "is not of the form local@domain"),
    ("postmaster", "is not of the form local@domain"),
    ("a..b@example.com", "has an invalid local part"),
    ("a b@example.com", "has an invalid local part"),
    ("user@exa mple.com", "has an invalid domain"),
    ("user@-example.com", "has an invalid domain"),
    ("user@", "has an invalid domain"),
    ("x" * 65 + "@example.com", "has an invalid local part"),
])
def test_address_tricks_refused(address: str, why: str) -> None:
    refusal = address_refusal(address, "recipient")
    assert refusal is not None
    assert (refusal.code, refusal.enhanced) == (553, "5.1.3")
    assert refusal.text == (f"Address <{address}> {why}" + refusal.text.split(why, 1)[1])
    assert refusal.text.endswith("; write a plain address such as user@example.com")
    sender = address_refusal(address, "sender")
    assert sender is not None and sender.enhanced == "5.1.7"


@pytest.mark.parametrize("address", [
    "user@example.com", "first.last+tag@sub.example.co.uk", "a@[192.0.2.1]",
    "zoë@exämple.org", "o'brien@example.com",
])
def test_plain_addresses_accepted(address: str) -> None:
    assert address_refusal(address, "recipient") is None


def test_user_limited_to_its_senders_names_the_rule() -> None:
    config = lan_config()
    scanner = users()[0]
    refusal, routed = sender_refusal(config, "203.0.113.9", scanner, "boss@example.com")
    assert routed is None
    assert refusal == Refusal(
        550, "5.7.1", 'Sender <boss@example.com> is not allowed for user scanner by '
        'users."scanner".senders; allowed: scanner@example.com')
    refusal, routed = sender_refusal(config, "203.0.113.9", scanner, "scanner@example.com")
    assert refusal is None and routed is not None and routed.name == "main"


def test_network_limited_by_relay_senders() -> None:
    config = lan_config(relay_senders=("*@printers.example.com",))
    refusal, _ = sender_refusal(config, "192.168.10.7", None, "x@example.com")
    assert refusal == Refusal(
        550, "5.7.1", "Sender <x@example.com> is not allowed for clients from "
        "192.168.10.7 by relay.senders; allowed: *@printers.example.com")


def test_sender_no_account_can_send_as_lists_what_can() -> None:
    config = lan_config(accounts=(account("main", ("*@example.com",)),
                                  account("other", ("billing@example.org",))))
    refusal, routed = sender_refusal(config, "192.168.10.7", None, "x@elsewhere.test")
    assert routed is None
    assert refusal == Refusal(
        550, "5.7.1", "Sender <x@elsewhere.test> cannot be relayed: no upstream account "
        "may send as it; this relay can send as *@example.com, billing@example.org")
    _, routed = sender_refusal(config, "192.168.10.7", None, "billing@example.org")
    assert routed is not None and routed.name == "other"


def test_null_sender_only_where_allowed() -> None:
    import attrs

    # Network-admitted clients keep it (device bounces); a user needs "<>" in senders.
    refusal, routed = sender_refusal(lan_config(), "192.168.10.7", None, "")
    assert refusal is None and routed is not None
    refusal, routed = sender_refusal(lan_config(), "203.0.113.9", users()[0], "")
    assert routed is None and refusal == Refusal(
        550, "5.7.1", 'The null sender <> is not allowed for user scanner by '
        'users."scanner".senders; add "<>" to it if this device sends bounces')
    bouncer = attrs.evolve(users()[0], senders=users()[0].senders
                           + (SenderPattern.parse("<>"),))
    refusal, routed = sender_refusal(lan_config(), "203.0.113.9", bouncer, "")
    assert refusal is None and routed is not None
    # "<>" allows the null sender and nothing else.
    refusal, _ = sender_refusal(lan_config(), "203.0.113.9", bouncer, "x@example.com")
    assert refusal is not None


def test_default_account_routes_other_senders() -> None:
    import attrs

    config = attrs.evolve(lan_config(), relay=RelayConfig(
        allow_networks=LAN, senders=(SenderPattern.parse("*"),), default_account="main"))
    refusal, routed = sender_refusal(config, "192.168.10.7", None, "x@elsewhere.test")
    assert refusal is None and routed is not None and routed.name == "main"


def test_recipient_limit() -> None:
    config = make_config(max_recipients=3)
    assert recipient_limit_refusal(config, 2) is None
    assert recipient_limit_refusal(config, 3) == Refusal(
        452, "4.5.3", "Too many recipients; at most 3 per message, send the rest in "
        "another message")


def test_auth_failures_back_off_doubles_and_expires() -> None:
    failures = AuthFailures(window=900, base_delay=1, max_delay=8, per_address_limit=5)
    assert failures.delay("192.0.2.1", 0) == 0
    delays = []
    for i in range(5):
        failures.failed("192.0.2.1", i)
        delays.append(failures.delay("192.0.2.1", i))
    assert delays == [1, 2, 4, 8, 8]
    assert failures.blocked("192.0.2.1", 10)
    assert not failures.blocked("192.0.2.2", 10)
    assert failures.delay("192.0.2.2", 10) == 0
    # Failures older than the window are forgotten.
    assert failures.delay("192.0.2.1", 903.5) == 1
    assert not failures.blocked("192.0.2.1", 903.5)
    assert failures.delay("192.0.2.1", 1000) == 0


def test_auth_success_clears_the_address() -> None:
    failures = AuthFailures()
    failures.failed("192.0.2.1", 0)
    failures.succeeded("192.0.2.1")
    assert failures.delay("192.0.2.1", 1) == 0
