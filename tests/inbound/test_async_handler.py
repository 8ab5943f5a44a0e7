"""
Handler hooks that wait: an embedder's L{IInboundHandler} may answer with a Deferred or
be a coroutine (a directory or database lookup, as aiosmtpd's awaited hooks allow).
The protocol holds the pipelined commands behind a waiting hook, so replies stay in
order; a hook that fails or takes longer than L{HANDLER_TIMEOUT} costs the client the
usual C{451 4.3.0}, never a traceback or a hang.  Real sockets on loopback.
"""

from __future__ import annotations

from typing import Any, Sequence

import attrs
import pytest
import pytest_twisted
from twisted.internet import task
from twisted.internet.defer import Deferred

from tests.inbound.harness import connect, ehlo, inline, make_config, until
from xrelay.envelope import Envelope
from xrelay.inbound import InboundSession, PolicyHandler
from xrelay.inbound.handler import HANDLER_TIMEOUT, decided
from xrelay.records import Refusal

PARTNER = Refusal(550, "5.7.1", "Mail to partner.example is not relayed here")
MESSAGE = b"From: app@example.com\r\nSubject: hi\r\n\r\nhello\r\n.\r\n"


@attrs.define
class Directory(PolicyHandler):
    """
    Asks a (slow) directory about each recipient: every C{rcpt} returns a Deferred the
    test fires later, or (C{coroutine}) is an C{async def} awaiting one.
    """

    coroutine: bool = False
    asked: list[tuple[str, Deferred[None]]] = attrs.field(factory=list)

    def rcpt(self, session: InboundSession, recipient: str,
             recipients: Sequence[str]) -> Any:
        looked_up: Deferred[None] = Deferred()
        self.asked.append((recipient, looked_up))
        own = super().rcpt

        def answer(_: None) -> Refusal | None:
            if recipient.endswith("@partner.example"):
                return PARTNER
            return own(session, recipient, recipients)

        if not self.coroutine:
            return looked_up.addCallback(answer)

        async def lookup() -> Refusal | None:
            await looked_up
            return answer(None)

        return lookup()


@pytest.mark.parametrize("coroutine", [False, True], ids=["deferred", "coroutine"])
@pytest_twisted.ensureDeferred
async def test_a_waiting_rcpt_hook_keeps_pipelined_replies_in_order(
        relay: Any, coroutine: bool) -> None:
    handler = Directory(coroutine=coroutine)
    r = await relay(make_config(), run_blocking=inline, inbound_handler=handler)
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.org>\r\n"
                b"RCPT TO:<bob@partner.example>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n")
    assert await client.read(1) == ["250 2.1.0 Ok"]
    recipients = ["a@example.org", "bob@partner.example", "b@example.org"]
    for i, recipient in enumerate(recipients):
        # The hook is asked for one recipient at a time: the next RCPT is held behind
        # the undecided one, and nothing after MAIL is answered yet.
        await until(lambda i=i: len(handler.asked) == i + 1)
        assert handler.asked[i][0] == recipient
        assert client.replies == []
        handler.asked[i][1].callback(None)
    assert await client.read(4) == [
        "250 2.1.5 Ok", "550 5.7.1 Mail to partner.example is not relayed here",
        "250 2.1.5 Ok", "354 End data with <CR><LF>.<CR><LF>"]
    client.send(MESSAGE)
    (done,) = await client.read(1)
    assert done.startswith("250 2.0.0 Ok: queued as ")
    [(envelope, _)] = r.spool.messages()
    assert envelope.recipients == ("a@example.org", "b@example.org")


@attrs.define
class Stuck(PolicyHandler):
    """A hook whose lookup fails or never answers."""

    how: str

    def rcpt(self, session: InboundSession, recipient: str,
             recipients: Sequence[str]) -> Any:
        if recipient.startswith("slow"):
            return Deferred()  # never fires
        if recipient.startswith("broken"):
            return _failed()
        return super().rcpt(session, recipient, recipients)


def _failed() -> Deferred[Any]:
    d: Deferred[Any] = Deferred()
    d.errback(LookupError("the directory is down"))
    return d


@pytest_twisted.ensureDeferred
async def test_a_hook_that_never_answers_times_out_with_451(relay: Any) -> None:
    clock = task.Clock()
    r = await relay(make_config(), run_blocking=inline, inbound_handler=Stuck("slow"),
                    clock=clock)
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<slow@example.org>\r\n"
                b"RCPT TO:<a@example.org>\r\n")
    assert await client.read(1) == ["250 2.1.0 Ok"]
    assert client.replies == []
    clock.advance(HANDLER_TIMEOUT - 1)
    assert client.replies == []
    clock.advance(2)
    assert await client.read(2) == [
        "451 4.3.0 Local error in processing, try again later", "250 2.1.5 Ok"]


@pytest_twisted.ensureDeferred
async def test_a_hook_whose_deferred_fails_costs_a_451_not_the_session(
        relay: Any) -> None:
    r = await relay(make_config(), run_blocking=inline, inbound_handler=Stuck("broken"))
    client = await connect(r.port)
    await ehlo(client)
    client.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<broken@example.org>\r\n"
                b"RCPT TO:<a@example.org>\r\nNOOP\r\n")
    assert await client.read(4) == [
        "250 2.1.0 Ok", "451 4.3.0 Local error in processing, try again later",
        "250 2.1.5 Ok", "250 2.0.0 Ok"]


@attrs.define
class Slow(PolicyHandler):
    """Every other hook waits for the test too: connect, HELO, MAIL, end of data."""

    waiting: dict[str, Deferred[Refusal | None]] = attrs.field(factory=dict)

    def _ask(self, step: str) -> Deferred[Refusal | None]:
        self.waiting[step] = Deferred()
        return self.waiting[step]

    def connect(self, session: InboundSession) -> Any:
        return self._ask("connect")

    def helo(self, session: InboundSession, name: str) -> Any:
        return self._ask("helo")

    def mail(self, session: InboundSession, sender: str) -> Any:
        own = super().mail(session, sender)
        return self._ask("mail").addCallback(lambda refusal: refusal or own)

    async def end_of_data(self, session: InboundSession, envelope: Envelope,
                          size: int) -> Refusal | None:
        await self._ask("end_of_data")
        return Refusal(554, "5.7.1", "Rejected after a look at it") if size > 1000 else None


@pytest_twisted.ensureDeferred
async def test_connect_helo_mail_and_end_of_data_hooks_may_wait(relay: Any) -> None:
    handler = Slow()
    r = await relay(make_config(), run_blocking=inline, inbound_handler=handler)
    client = await connect(r.port, greeting=False)
    await until(lambda: "connect" in handler.waiting)
    client.send(b"EHLO client.test\r\n")  # sent early: read after the greeting
    assert client.replies == []
    handler.waiting["connect"].callback(None)
    (greeting,) = await client.read(1)
    assert greeting.startswith("220 ")
    await until(lambda: "helo" in handler.waiting)
    handler.waiting["helo"].callback(None)
    (hello,) = await client.read(1)
    assert hello.startswith("250-relay.test")
    client.send(b"MAIL FROM:<app@example.com>\r\nRCPT TO:<a@example.org>\r\nDATA\r\n")
    await until(lambda: "mail" in handler.waiting)
    assert client.replies == []
    handler.waiting["mail"].callback(None)
    assert await client.read(3) == ["250 2.1.0 Ok", "250 2.1.5 Ok",
                                    "354 End data with <CR><LF>.<CR><LF>"]
    client.send(MESSAGE + b"NOOP\r\n")
    await until(lambda: "end_of_data" in handler.waiting)
    assert client.replies == []
    handler.waiting["end_of_data"].callback(None)
    (done, noop) = await client.read(2)
    assert done.startswith("250 2.0.0 Ok: queued as ") and noop == "250 2.0.0 Ok"
    assert len(r.spool.messages()) == 1


def test_decided_passes_plain_answers_through_and_rejects_junk() -> None:
    clock = task.Clock()
    assert decided(None, clock, "RCPT TO", "127.0.0.1") is None
    assert decided(PARTNER, clock, "RCPT TO", "127.0.0.1") is PARTNER
    junk = decided("yes", clock, "RCPT TO", "127.0.0.1")
    assert junk == Refusal(451, "4.3.0", "Local error in processing, try again later")
    wrong: Deferred[Any] = Deferred()
    waiting = decided(wrong, clock, "RCPT TO", "127.0.0.1")
    assert isinstance(waiting, Deferred)
    got: list[Any] = []
    waiting.addCallback(got.append)
    wrong.callback(42)  # a Deferred that fires with something else: 451 too
    assert got == [junk]
