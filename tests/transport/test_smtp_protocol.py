"""
The client protocol and conversation without sockets (StringTransport, task.Clock):
reply parsing, pipelining order, EHLO-driven refusals and parameters, and the timeouts
of each step, named in the error.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from twisted.internet import task
from twisted.internet.defer import ensureDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.testing import StringTransportWithDisconnection
from twisted.python.failure import Failure

from xrelay.envelope import OutboundMessage, Outcome, Reply
from xrelay.transport.smtp import (
    ClientProtocol,
    ConnectionTrouble,
    Timeouts,
    UpstreamConnection,
    parse_capabilities,
    xoauth2_response,
)


class WireTransport(StringTransportWithDisconnection):
    """Like a real transport, it stops its producer when the connection goes away."""

    def loseConnection(self) -> None:
        if self.connected and self.producer is not None:
            self.producer.stopProducing()
        super().loseConnection()


def connection(capabilities: str = "PIPELINING SIZE 1000 8BITMIME SMTPUTF8"
               ) -> tuple[UpstreamConnection, WireTransport, task.Clock]:
    protocol = ClientProtocol()
    transport = WireTransport()
    transport.protocol = protocol
    protocol.makeConnection(transport)
    clock = task.Clock()
    conn = UpstreamConnection(protocol, clock, Timeouts(), "smtp.example:587")
    keywords = capabilities.split(" ")
    conn.capabilities = parse_capabilities(Reply(250, "\n".join(["hi", *_group(keywords)])))
    return conn, transport, clock


def _group(words: list[str]) -> list[str]:
    lines: list[str] = []
    for w in words:
        if w.isdigit():
            lines[-1] += " " + w
        else:
            lines.append(w)
    return lines


def message(tmp_path: Any, data: bytes = b"Subject: x\r\n\r\nhi\r\n", **kw: Any) -> OutboundMessage:
    path = tmp_path / "m.eml"
    path.write_bytes(data)
    values = dict(sender="a@example.com", recipients=("b@example.net",))
    values.update(kw)
    return OutboundMessage("e1", values["sender"], values["recipients"], str(path), len(data),
                           smtputf8=kw.get("smtputf8", False),
                           body_8bitmime=kw.get("body_8bitmime", False))


def test_multiline_replies_and_order() -> None:
    conn, transport, _ = connection()
    first = conn.protocol.command(b"EHLO me")
    second = conn.protocol.command(b"NOOP")
    conn.protocol.dataReceived(b"250-host hello\r\n250-SIZE 10\r\n250 PIPELINING\r\n250 2.0.0 OK\r\n")
    assert first.result == Reply(250, "host hello\nSIZE 10\nPIPELINING")
    assert second.result == Reply(250, "2.0.0 OK")
    assert parse_capabilities(first.result) == {"SIZE": "10", "PIPELINING": ""}
    assert transport.value() == b"EHLO me\r\nNOOP\r\n"


def test_malformed_reply_drops_the_connection() -> None:
    conn, transport, _ = connection()
    d = conn.protocol.command(b"NOOP")
    conn.protocol.dataReceived(b"hello there\r\n")
    failure = []
    d.addErrback(failure.append)
    assert "malformed reply line" in str(failure[0].value)
    assert transport.disconnected


def test_xoauth2_initial_response() -> None:
    decoded = base64.b64decode(xoauth2_response("relay@example.com", "tok"))
    assert decoded == b"user=relay@example.com\x01auth=Bearer tok\x01\x01"


def test_pipelined_envelope_with_parameters(tmp_path: Any) -> None:
    conn, transport, _ = connection()
    msg = message(tmp_path, body_8bitmime=True, recipients=("b@example.net", "c@example.net"))
    d = ensureDeferred(conn.send_message(msg))
    assert transport.value() == (
        b"MAIL FROM:<a@example.com> SIZE=18 BODY=8BITMIME\r\n"
        b"RCPT TO:<b@example.net>\r\nRCPT TO:<c@example.net>\r\nDATA\r\n"
    )
    transport.clear()
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n550 5.1.1 no\r\n")
    assert transport.value() == b""
    conn.protocol.dataReceived(b"354 go\r\n")
    while transport.producer is not None:
        transport.producer.resumeProducing()
    assert transport.value() == b"Subject: x\r\n\r\nhi\r\n.\r\n"
    conn.protocol.dataReceived(b"250 2.6.0 queued\r\n")
    result = d.result
    assert [(r.recipient, r.outcome, r.reply.code) for r in result.recipients] == [
        ("b@example.net", Outcome.DELIVERED, 250),
        ("c@example.net", Outcome.PERMANENT, 550),
    ]


def test_smtputf8_needed_but_not_offered_is_permanent(tmp_path: Any) -> None:
    conn, transport, _ = connection("PIPELINING SIZE 1000 8BITMIME")
    result = ensureDeferred(conn.send_message(
        message(tmp_path, recipients=("jörg@example.de",)))).result
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert result.recipients[0].reply == Reply(
        553, "5.6.7 The message needs SMTPUTF8 (internationalized addresses) but the "
        "upstream smtp.example:587 does not support it")
    assert transport.value() == b""


def test_smtputf8_offered_is_used(tmp_path: Any) -> None:
    conn, transport, _ = connection()
    ensureDeferred(conn.send_message(message(tmp_path, recipients=("jörg@example.de",))))
    assert transport.value().startswith(b"MAIL FROM:<a@example.com> SIZE=18 SMTPUTF8\r\n"
                                        b"RCPT TO:<j\xc3\xb6rg@example.de>")


def test_reply_timeout_names_the_step(tmp_path: Any) -> None:
    conn, transport, clock = connection()
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    conn.protocol.dataReceived(b"250 ok\r\n")
    clock.advance(299)
    assert not d.called
    clock.advance(1)
    error = []
    d.addErrback(error.append)
    assert isinstance(error[0].value, ConnectionTrouble)
    assert str(error[0].value) == "timed out after 300s during RCPT TO"
    assert transport.disconnected


def test_data_stall_times_out_naming_message_data(tmp_path: Any) -> None:
    conn, transport, clock = connection("PIPELINING SIZE 10000000")
    d = ensureDeferred(conn.send_message(message(tmp_path, b"x" * 200000)))
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
    transport.producer.resumeProducing()  # one chunk, then the upstream stops reading
    clock.advance(179)
    assert not d.called
    clock.advance(1)
    error = []
    d.addErrback(error.append)
    assert str(error[0].value) == "timed out after 180s without progress during message data"


def test_connection_lost_before_end_of_data_reply(tmp_path: Any) -> None:
    conn, transport, clock = connection()
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n354 go\r\n")
    while transport.producer is not None:
        transport.producer.resumeProducing()
    conn.protocol.connectionLost(Failure(ConnectionLost()))
    error = []
    d.addErrback(error.append)
    assert str(error[0].value) == "the connection was lost during end of data"


@pytest.mark.parametrize("recipient", ["b@example.net>\r\nRCPT TO:<evil@example.net",
                                       "b@example.net\nDATA", "a b@example.net"])
def test_address_that_could_inject_commands_is_refused(tmp_path: Any, recipient: str) -> None:
    conn, transport, _ = connection()
    result = ensureDeferred(conn.send_message(message(tmp_path, recipients=(recipient,)))).result
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert result.recipients[0].reply.code == 501
    assert transport.value() == b""


def test_no_starttls_offered_means_no_token_is_sent() -> None:
    conn, transport, _ = connection("PIPELINING AUTH XOAUTH2")
    d = ensureDeferred(conn.starttls(None, "me"))  # type: ignore[arg-type]
    error = []
    d.addErrback(error.append)
    assert str(error[0].value) == (
        "the upstream does not offer STARTTLS; xrelay never sends a token without TLS "
        "during STARTTLS")
    assert transport.value() == b""



@pytest.mark.parametrize("data_answer", [b"554 5.5.1 No valid recipients\r\n",
                                         b"354 go ahead anyway\r\n"])
def test_pipelined_data_after_every_recipient_refused_sends_no_message(
        tmp_path: Any, data_answer: bytes) -> None:
    """
    DATA ends the pipelined group; when no recipient was taken its reply is read before
    anything else goes out.  A server that wrongly says 354 gets only the lone dot of an
    empty message, never the message, and the connection is not reused.
    """
    conn, transport, _ = connection()
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    transport.clear()
    conn.protocol.dataReceived(b"250 ok\r\n550 5.1.1 no such user\r\n" + data_answer)
    if data_answer.startswith(b"354"):
        assert transport.value() == b".\r\n"
        conn.protocol.dataReceived(b"554 5.5.1 no recipients\r\n")
        assert conn.broken
    else:
        assert transport.value() == b"" and not conn.broken
    [refused] = d.result.recipients
    assert refused.outcome is Outcome.PERMANENT and refused.reply.code == 550
