"""
The inbound handler seam: the default L{PolicyHandler} decides as L{xrelay.policy} does
(unit tests, no reactor), and a custom handler's decisions reach the client through a
real socket at every step, and survive a reload.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import pytest
import pytest_twisted
from zope.interface.exceptions import Invalid
from zope.interface.verify import verifyObject

from tests.inbound.harness import (
    ERP_PASSWORD,
    NOWHERE,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    users,
)
from xrelay.envelope import Envelope
from xrelay.inbound import InboundService, InboundSession, PolicyHandler
from xrelay.inbound.headers import HeaderBlock
from xrelay.inbound.testing import MemorySpool, RecordingDelivery
from xrelay.interfaces import IInboundHandler
from xrelay.policy import header_sender_refusal, relay_refusal, route_refusal
from xrelay.records import Refusal


def session(config: Any = None, client: str = "127.0.0.1", user: Any = None,
            starttls_offered: bool = False) -> InboundSession:
    return InboundSession(client_address=client, helo="client.test", user=user,
                          tls=False, starttls_offered=starttls_offered,
                          config=config if config is not None else make_config())


def headers(text: bytes) -> HeaderBlock:
    block = HeaderBlock()
    block.feed(text)
    return block


# -- the default handler, as the policy decides -------------------------------------


def test_policy_handler_provides_the_interface() -> None:
    assert verifyObject(IInboundHandler, PolicyHandler())


def test_default_mail_refuses_a_client_that_may_not_relay() -> None:
    config = make_config(allow_networks=NOWHERE)
    refusal = PolicyHandler().mail(session(config, starttls_offered=True),
                                   "app@example.com")
    assert refusal == relay_refusal(config, "127.0.0.1", None, True)
    assert refusal is not None and (refusal.code, refusal.enhanced) == (550, "5.7.1")
    assert "after STARTTLS" in refusal.text


def test_default_mail_applies_address_tricks_and_sender_rules() -> None:
    handler = PolicyHandler()
    trick = handler.mail(session(), "app%evil.test@example.com")
    assert trick is not None and (trick.code, trick.enhanced) == (553, "5.1.7")
    scanner = users()[0]  # may send as scanner@example.com only
    other = handler.mail(session(client="192.0.2.9", user=scanner), "boss@example.com")
    assert other is not None and "users.\"scanner\".senders" in other.text
    assert handler.mail(session(client="192.0.2.9", user=scanner),
                        "scanner@example.com") is None
    # The null sender: allowed for a network client, not for a user without "<>".
    assert handler.mail(session(), "") is None
    assert handler.mail(session(client="192.0.2.9", user=scanner), "") is not None


def test_default_mail_refuses_a_sender_no_account_routes() -> None:
    config = make_config()
    refusal = PolicyHandler().mail(session(config), "app@elsewhere.test")
    assert refusal == route_refusal(config, "app@elsewhere.test")[0]
    assert refusal is not None and "this relay can send as *@example.com" in refusal.text


def test_default_rcpt_refuses_tricks_outsiders_and_one_too_many() -> None:
    handler = PolicyHandler()
    config = make_config(max_recipients=2)
    inside = session(config)
    assert handler.rcpt(inside, "a@example.org", ()) is None
    trick = handler.rcpt(inside, "a@b.test@example.org", ())
    assert trick is not None and (trick.code, trick.enhanced) == (553, "5.1.3")
    full = handler.rcpt(inside, "c@example.org", ("a@example.org", "b@example.org"))
    assert full == Refusal(452, "4.5.3", "Too many recipients; at most 2 per message, "
                           "send the rest in another message")
    # A repeated recipient is not one more.
    assert handler.rcpt(inside, "A@example.org", ("a@example.org", "b@example.org")) is None
    outsider = session(make_config(allow_networks=NOWHERE))
    refused = handler.rcpt(outsider, "a@example.org", ())
    assert refused is not None and "Relaying denied" in refused.text


def test_default_header_check_is_the_users_sender_rule() -> None:
    handler = PolicyHandler()
    scanner = users()[0]
    forged = headers(b"From: boss@example.com\r\n\r\n")
    refusal = handler.headers(session(user=scanner), forged)
    assert refusal == header_sender_refusal(scanner, forged)
    assert refusal is not None and "Header From: <boss@example.com>" in refusal.text
    assert handler.headers(session(user=scanner),
                           headers(b"From: scanner@example.com\r\n\r\n")) is None
    assert handler.headers(session(), forged) is None  # a network client is not checked


def test_default_connect_helo_and_end_of_data_accept() -> None:
    handler = PolicyHandler()
    envelope = Envelope(sender="a@example.com", recipients=("b@example.org",),
                        client_address="127.0.0.1", client_helo="client.test",
                        authenticated_user=None, account="main", received_at=0.0)
    assert handler.connect(session()) is None
    assert handler.helo(session(), "printer.lan") is None
    assert handler.end_of_data(session(), envelope, 10) is None


def test_a_session_is_read_only() -> None:
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        session().user = users()[0]  # type: ignore[misc]


def test_the_service_refuses_an_object_that_is_no_handler() -> None:
    with pytest.raises(Invalid, match="IInboundHandler"):
        InboundService(make_config(), MemorySpool(), RecordingDelivery(),
                       run_blocking=inline, inbound_handler=object())


# -- a custom handler, through a real socket ----------------------------------------


@attrs.define
class NoPartnerMail(PolicyHandler):
    """What an embedder writes: the relay's rules, and no mail to partner.example."""

    seen: list[InboundSession] = attrs.field(factory=list)

    def rcpt(self, session: InboundSession, recipient: str,
             recipients: Sequence[str]) -> Refusal | None:
        self.seen.append(session)
        if recipient.lower().endswith("@partner.example"):
            return Refusal(550, "5.7.1", "Mail to partner.example is not relayed here")
        return super().rcpt(session, recipient, recipients)


MESSAGE = b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"


@pytest_twisted.ensureDeferred
async def test_custom_handler_refuses_one_recipient_domain(relay: Any) -> None:
    handler = NoPartnerMail()
    r = await relay(make_config(), run_blocking=inline, inbound_handler=handler)
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(b"MAIL FROM:<app@example.com>")).startswith("250")
    assert await client.command(b"RCPT TO:<Bob@Partner.Example>") == (
        "550 5.7.1 Mail to partner.example is not relayed here")
    assert (await client.command(b"RCPT TO:<alice@example.org>")).startswith("250")
    assert (await client.command(b"DATA")).startswith("354")
    client.send(MESSAGE)
    (done,) = await client.read(1)
    assert done.startswith("250 2.0.0 Ok: queued as ")
    [(envelope, _)] = r.spool.messages()
    assert envelope.recipients == ("alice@example.org",)
    # The handler saw the session as it was: the client, its HELO, the sender.
    first = handler.seen[0]
    assert (first.client_address, first.helo, first.sender, first.user) == (
        "127.0.0.1", "client.test", "app@example.com", None)


@pytest_twisted.ensureDeferred
async def test_custom_handler_sees_the_authenticated_user(relay: Any) -> None:
    handler = NoPartnerMail()
    r = await relay(make_config(allow_networks=NOWHERE, require_tls_for_auth=False),
                    run_blocking=inline, inbound_handler=handler)
    client = await connect(r.port)
    await ehlo(client)
    assert (await client.command(b"AUTH PLAIN " + plain("erp", ERP_PASSWORD))
            ).startswith("235")
    assert (await client.command(b"MAIL FROM:<erp@example.com>")).startswith("250")
    assert (await client.command(b"RCPT TO:<x@partner.example>")).startswith("550 5.7.1")
    assert handler.seen[0].user_name == "erp"


@pytest_twisted.ensureDeferred
async def test_custom_handler_is_kept_across_a_reload(relay: Any) -> None:
    handler = NoPartnerMail()
    r = await relay(make_config(), run_blocking=inline, inbound_handler=handler)
    r.service.reconfigure(make_config(max_recipients=5))
    assert r.service.handler is handler
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<app@example.com>")
    assert (await client.command(b"RCPT TO:<x@partner.example>")).startswith("550 5.7.1")
    assert handler.seen[-1].config.server.max_recipients == 5


@attrs.define
class Refusing(PolicyHandler):
    """Refuses at one step, to show each step's refusal reaches the client."""

    step: str
    refusal: Refusal = Refusal(554, "5.7.1", "Not from here; ask the mail admin")

    def connect(self, session: InboundSession) -> Refusal | None:
        if self.step == "connect raises":
            raise RuntimeError("the embedder's bug")
        return self.refusal if self.step == "connect" else None

    def helo(self, session: InboundSession, name: str) -> Refusal | None:
        return self.refusal if self.step == "helo" and name == "bad.test" else None

    def mail(self, session: InboundSession, sender: str) -> Refusal | None:
        if self.step == "mail":
            return self.refusal
        if self.step == "mail raises":
            raise RuntimeError("the embedder's bug")
        return super().mail(session, sender)

    def headers(self, session: InboundSession, headers: HeaderBlock) -> Refusal | None:
        if self.step == "headers" and headers.first("subject") == "hi":
            return self.refusal
        return super().headers(session, headers)

    def end_of_data(self, session: InboundSession, envelope: Envelope,
                    size: int) -> Refusal | None:
        if self.step == "end_of_data" and size > 10:
            return self.refusal
        if self.step == "raises":
            raise RuntimeError("the embedder's bug")
        return None


@pytest.mark.parametrize("step, greeting", [
    ("connect", "554 5.7.1 Not from here; ask the mail admin"),
    ("connect raises", "421 4.3.0 relay.test Local error in processing, try again later"),
])
@pytest_twisted.ensureDeferred
async def test_connect_refusal_replaces_the_greeting(relay: Any, step: str,
                                                     greeting: str) -> None:
    r = await relay(make_config(), run_blocking=inline, inbound_handler=Refusing(step))
    client = await connect(r.port)
    assert client.greeting == greeting
    if greeting.startswith("554"):
        # RFC 5321 3.1: after a 554 greeting the server waits for QUIT, answering 503.
        assert await client.command(b"EHLO client.test") == (
            "503 5.5.1 No SMTP service here for you; send QUIT")
        assert (await client.command(b"MAIL FROM:<a@example.com>")).startswith("503")
        assert (await client.command(b"QUIT")).startswith("221")
    await client.wait_closed()
    assert r.service.connections.total == 0  # the slot it held is free again


@pytest_twisted.ensureDeferred
async def test_helo_and_mail_refusals(relay: Any) -> None:
    # (Outside relay.allow_networks: a device there may send MAIL without a HELO.)
    r = await relay(make_config(allow_networks=NOWHERE), run_blocking=inline,
                    inbound_handler=Refusing("helo"))
    client = await connect(r.port)
    assert (await client.command(b"EHLO bad.test")).startswith("554 5.7.1 Not from here")
    assert (await client.command(b"MAIL FROM:<a@example.com>")).startswith("503 5.5.1")
    await ehlo(client, b"good.test")
    r = await relay(make_config(), run_blocking=inline, inbound_handler=Refusing("mail"))
    client = await connect(r.port)
    await ehlo(client)
    assert await client.command(b"MAIL FROM:<a@example.com>") == (
        "554 5.7.1 Not from here; ask the mail admin")
    assert (await client.command(b"RCPT TO:<b@example.org>")).startswith("503")


@pytest_twisted.ensureDeferred
async def test_a_failing_handler_costs_one_reply_not_the_session(relay: Any) -> None:
    r = await relay(make_config(), spool=MemorySpool(), run_blocking=inline,
                    inbound_handler=Refusing("mail raises"))
    client = await connect(r.port)
    await ehlo(client)
    assert await client.command(b"MAIL FROM:<a@example.com>") == (
        "451 4.3.0 Local error in processing, try again later")
    assert (await client.command(b"RCPT TO:<b@example.org>")).startswith("503")
    assert (await client.command(b"NOOP")).startswith("250")


@pytest.mark.parametrize("step, reply", [
    ("headers", "554 5.7.1 Not from here; ask the mail admin"),
    ("end_of_data", "554 5.7.1 Not from here; ask the mail admin"),
    ("raises", "451 4.3.0 Local error in processing, try again later"),
])
@pytest_twisted.ensureDeferred
async def test_a_message_refused_at_its_end_leaves_nothing(relay: Any, step: str,
                                                           reply: str) -> None:
    spool = MemorySpool()
    r = await relay(make_config(), spool=spool, run_blocking=inline,
                    inbound_handler=Refusing(step))
    client = await connect(r.port)
    await ehlo(client)
    await client.command(b"MAIL FROM:<app@example.com>")
    await client.command(b"RCPT TO:<b@example.org>")
    assert (await client.command(b"DATA")).startswith("354")
    client.send(MESSAGE)
    assert (await client.read(1)) == [reply]
    assert spool.messages() == []
    assert spool.started and all(m.aborted for m in spool.started)
    # The session goes on: the next command is answered.
    assert (await client.command(b"NOOP")).startswith("250")
