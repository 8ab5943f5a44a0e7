"""
SMTP smuggling end to end: raw bytes into the listener, the real spool on disk, the
real SMTP transport (dot-stuffing, STARTTLS, XOAUTH2) into the sandbox's Exchange
Online stand-in.  Exchange receives exactly one message, with the smuggled "commands"
as text of its body.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.python.filepath import FilePath
from zope.interface import implementer

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    until,
)
from xrelay.addresses import SenderPattern
from xrelay.config import AccountConfig
from xrelay.envelope import DeliveryResult, OutboundMessage
from xrelay.interfaces import IDelivery
from xrelay.spool import Spool

sandbox_module = pytest.importorskip("xrelay.sandbox")


@implementer(IDelivery)
@attrs.define
class SendAtOnce:
    """Just enough of a delivery engine: send each submitted entry once, now."""

    spool: Spool
    transport: Any
    results: list[DeliveryResult] = attrs.field(factory=list)

    def submitted(self, entry_id: str) -> None:
        entry = self.spool.get(entry_id)
        message = OutboundMessage(entry.entry_id, entry.sender, entry.recipients,
                                  entry.data_path, entry.size)
        self.transport.deliver(message).addCallback(self.results.append)

    def deliver_now(self, entry_id: str) -> "defer.Deferred[DeliveryResult]":
        raise NotImplementedError


@pytest.fixture
def sandbox(tmp_path: Any) -> Any:
    sb = sandbox_module.Sandbox(FilePath(str(tmp_path / "sandbox")), reactor=reactor)
    sb.start()
    yield sb
    pytest_twisted.blockon(sb.stop())


VARIANTS = [b"\n.\n", b"\r.\r\n", b"\n.\r\n", b"\r\n.\r"]
SMUGGLED = (b"MAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\n"
            b"DATA\r\nSubject: smuggled\r\n\r\npay this\r\n.\r\n")


def sandbox_transport(sandbox):  # type: ignore[no-untyped-def]
    from xrelay.transport import transport_for
    from xrelay.transport.testing import ClientCredentialsTokenSource

    raw = sandbox.default_account()
    account = AccountConfig(
        name="main", provider="microsoft", user=raw["user"], flow="client_credentials",
        senders=(SenderPattern.parse("*"),), tenant=raw["tenant"],
        client_id=raw["client_id"], client_secret_file=raw["client_secret_file"],
        authority=raw["authority"], smtp_host=raw["smtp_host"],
        smtp_port=raw["smtp_port"], ca_file=raw["ca_file"])
    with open(raw["client_secret_file"]) as f:
        secret = f.read().strip()
    tokens = ClientCredentialsTokenSource(
        f"{sandbox.authority}/{raw['tenant']}/oauth2/v2.0/token", raw["client_id"],
        secret, "https://outlook.office365.com/.default", sandbox.ca_file, reactor)
    return account, transport_for(account, tokens, reactor=reactor, helo_name="relay.test")


@pytest.mark.parametrize("kind", ["authenticated", "never"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest_twisted.ensureDeferred
async def test_exchange_sees_one_message(relay, sandbox, tmp_path, variant, kind):
    """Strict clients: an authenticated user, or a device with bare_lf_end_of_data = never."""
    account, transport = sandbox_transport(sandbox)
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    delivery = SendAtOnce(spool, transport)
    if kind == "authenticated":
        config = make_config(accounts=(account,), allow_networks=NOWHERE,
                             require_tls_for_auth=False)
    else:
        config = make_config(accounts=(account,), bare_lf_end_of_data="never")
    r = await relay(config, spool=spool, delivery=delivery, run_blocking=inline)
    try:
        client = await connect(r.port)
        await ehlo(client)
        if kind == "authenticated":
            assert (await client.command(
                b"AUTH PLAIN " + plain("scanner", SCANNER_PASSWORD))).startswith("235 ")
        await client.command(b"MAIL FROM:<scanner@example.com>")
        await client.command(b"RCPT TO:<alice@example.net>")
        await client.command(b"DATA")
        client.send(b"Subject: scan\r\n\r\nhello" + variant + SMUGGLED)
        [reply] = await client.read(1)
        assert reply.startswith("250 2.0.0 Ok: queued as ")
        await until(lambda: delivery.results, timeout=20)
        assert [r.reply.code for r in delivery.results[0].recipients] == [250]
        messages = sandbox.mailbox.messages
        assert len(messages) == 1
        [message] = messages
        assert message.mail_from == "scanner@example.com"
        assert tuple(message.rcpt_to) == ("alice@example.net",)
        assert b"MAIL FROM:<ceo@example.com>\r\n" in message.data
        assert b"pay this\r\n" in message.data
        assert not sandbox.mailbox.for_recipient("victim@example.net")
    finally:
        await transport.close()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest_twisted.ensureDeferred
async def test_exchange_sees_one_message_per_transaction_of_a_trusted_device(
        relay, sandbox, tmp_path, variant):
    """
    A device in relay.allow_networks may end DATA with a bare-LF "." line; then what
    follows is its next transaction.  Exchange receives exactly the messages the relay
    answered 250 to, each one whole: never a message the relay did not see.
    """
    account, transport = sandbox_transport(sandbox)
    spool = Spool(str(tmp_path / "spool"), reactor=reactor)
    delivery = SendAtOnce(spool, transport)
    r = await relay(make_config(accounts=(account,)), spool=spool, delivery=delivery)
    try:
        client = await connect(r.port)
        await ehlo(client)
        await client.command(b"MAIL FROM:<scanner@example.com>")
        await client.command(b"RCPT TO:<alice@example.net>")
        await client.command(b"DATA")
        client.send(b"Subject: scan\r\n\r\nhello" + variant + SMUGGLED + b"NOOP\r\n")
        ends_here = variant in (b"\n.\n", b"\n.\r\n")
        replies = await client.read(6 if ends_here else 2)
        queued = [reply for reply in replies if reply.startswith("250 2.0.0 Ok: queued")]
        assert len(queued) == (2 if ends_here else 1)
        assert replies[-1] == "250 2.0.0 Ok"
        await until(lambda: len(delivery.results) == len(queued), timeout=20)
        await until(lambda: len(sandbox.mailbox.messages) == len(queued), timeout=20)
        # Both transactions are delivered at once, over two connections: in either
        # order.  Which is which is told by the envelope, not by the arrival.
        messages = sorted(sandbox.mailbox.messages,
                          key=lambda m: m.mail_from != "scanner@example.com")
        assert len(messages) == len(queued)
        first = messages[0]
        assert (first.mail_from, tuple(first.rcpt_to)) == ("scanner@example.com",
                                                           ("alice@example.net",))
        if ends_here:
            assert first.data.endswith(b"\r\n\r\nhello\r\n")
            second = messages[1]
            assert (second.mail_from, tuple(second.rcpt_to)) == (
                "ceo@example.com", ("victim@example.net",))
            assert second.data.endswith(b"\r\n\r\npay this\r\n")
            assert b"hello" not in second.data and b"pay this" not in first.data
        else:
            assert b"MAIL FROM:<ceo@example.com>\r\n" in first.data
            assert not sandbox.mailbox.for_recipient("victim@example.net")
    finally:
        await transport.close()
