"""
BDAT (RFC 3030 CHUNKING) upstream: the whole transaction in one write, the data as it
is (no dot-stuffing), bounded chunks read in bounded pieces, every reply read in order,
and a refused chunk never counted as delivered.  Against the sandbox's Exchange and
Gmail (both offer CHUNKING, as the real services do), and without sockets where the
exact bytes on the wire are the point.  The fallback to DATA is here too; the DATA
conversation itself is pinned in test_smtp_sandbox.py and test_smtp_protocol.py.
"""

from __future__ import annotations

import io
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from tests.transport.conftest import account_for, message_file, simple_message, tokens_for
from tests.transport.test_smtp_protocol import connection, message
from xrelay.envelope import FailureKind, OutboundMessage, Outcome
from xrelay.sandbox import Sandbox
from xrelay.transport import transport_for
from xrelay.transport.data import CHUNK_SIZE, ChunkSender, DataSender
from xrelay.transport.smtp import Timeouts, UpstreamConnection, open_connection
from xrelay.transport.testing import ScriptedTokenSource
from xrelay.transport.tls import client_tls

CHUNKING = "PIPELINING CHUNKING SIZE 100000000 8BITMIME SMTPUTF8"

#: Lines a DATA sender must stuff and BDAT must not touch, 8-bit text, a bare LF and CR.
AWKWARD = (b"From: Scanner <scanner@example.com>\r\nTo: alice@example.net\r\n"
           b"Subject: dots\r\n\r\n.\r\n..\r\n...leading dots\r\n.\r\nMAIL FROM:<x@y>\r\n"
           + "Grüße, ½ € – ünïcödé\r\n".encode("utf-8") + b"\xff\xfe raw 8-bit\r\n"
           b"bare\nline feed\rand CR\r\n.")  # no final CRLF: BDAT sends it as it is


# -- without sockets: the bytes on the wire ---------------------------------------------

def pump(transport: Any) -> None:
    while transport.producer is not None:
        transport.producer.resumeProducing()


def test_whole_transaction_in_one_write_data_as_is(tmp_path: Any) -> None:
    conn, transport, _ = connection(CHUNKING)
    writes: list[bytes] = []
    original = transport.write
    transport.write = lambda data: (writes.append(data), original(data))  # type: ignore
    msg = message(tmp_path, AWKWARD, recipients=("b@example.net", "c@example.net"))
    d = ensureDeferred(conn.send_message(msg, reset=False, reused=True))
    pump(transport)
    assert writes == [
        b"MAIL FROM:<a@example.com> SIZE=%d\r\nRCPT TO:<b@example.net>\r\n"
        b"RCPT TO:<c@example.net>\r\nBDAT %d LAST\r\n" % (len(AWKWARD), len(AWKWARD))
        + AWKWARD]
    conn.protocol.dataReceived(b"250 2.1.0 Sender OK\r\n250 2.1.5 Recipient OK\r\n"
                               b"550 5.1.10 RESOLVER.ADR.RecipientNotFound\r\n"
                               b"250 2.6.0 <dots@example.com> Queued mail for delivery\r\n")
    result = d.result
    assert [(r.recipient, r.outcome) for r in result.recipients] == [
        ("b@example.net", Outcome.DELIVERED), ("c@example.net", Outcome.PERMANENT)]
    assert conn.clean and conn.messages_sent == 1


def test_rset_only_when_the_last_transaction_did_not_end_cleanly(tmp_path: Any) -> None:
    conn, transport, _ = connection(CHUNKING)
    conn.clean = False
    ensureDeferred(conn.send_message(message(tmp_path), reset=True, reused=True))
    pump(transport)
    assert transport.value().startswith(b"RSET\r\nMAIL FROM:<a@example.com> SIZE=18\r\n"
                                        b"RCPT TO:<b@example.net>\r\nBDAT 18 LAST\r\n")


def test_chunks_follow_each_other_and_a_refusal_stops_the_rest(tmp_path: Any) -> None:
    conn, transport, _ = connection(CHUNKING)
    conn.bdat_chunk_size = 10
    data = b"0123456789" * 3 + b"xy"
    d = ensureDeferred(conn.send_message(message(tmp_path, data)))
    transport.producer.resumeProducing()  # MAIL, RCPT, BDAT 10 + the first 10 bytes
    assert transport.value().endswith(b"BDAT 10\r\n0123456789")
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n"
                               b"452 4.3.1 Insufficient system resources\r\n")
    transport.clear()
    pump(transport)
    assert transport.value() == b""  # nothing after the refused chunk
    result = d.result
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert str(result.recipients[0].reply) == "452 4.3.1 Insufficient system resources"
    assert not conn.clean and conn.messages_sent == 0


def test_every_recipient_refused_reads_the_chunk_reply_and_delivers_nothing(
        tmp_path: Any) -> None:
    conn, transport, _ = connection(CHUNKING)
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    pump(transport)
    conn.protocol.dataReceived(b"250 ok\r\n550 5.1.1 no such user\r\n")
    assert not d.called  # the chunk's reply is still to come: it is read, in order
    conn.protocol.dataReceived(b"503 5.5.2 Need rcpt command\r\n")
    result = d.result
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert result.recipients[0].reply.code == 550
    assert not conn.clean


def test_a_250_to_the_mail_is_not_the_verdict_on_the_message(tmp_path: Any) -> None:
    """Replies are matched in order: the 250s of MAIL and RCPT do not deliver."""
    conn, transport, _ = connection(CHUNKING)
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    pump(transport)
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n")
    assert not d.called
    conn.protocol.dataReceived(b"554 5.2.0 STOREDRV.Submission.Exception\r\n")
    assert [r.outcome for r in d.result.recipients] == [Outcome.PERMANENT]


def test_shrunk_spool_file_breaks_the_connection(tmp_path: Any) -> None:
    conn, transport, _ = connection(CHUNKING)
    msg = message(tmp_path, b"x" * 100)

    real = open(msg.data_path, "rb")

    class Short(io.BytesIO):
        def fileno(self) -> int:  # the size comes from the real file
            return real.fileno()

    from xrelay.transport import chunking

    d = ensureDeferred(chunking.bdat_transaction(conn, msg, Short(b"x" * 40), False, False))
    pump(transport)
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n")
    failure: list[Any] = []
    d.addErrback(failure.append)
    real.close()
    assert "shorter than its size" in str(failure[0].value)
    assert transport.disconnected


# -- streaming: bounded reads whatever the message size -----------------------------------

class ReadRecorder(io.BytesIO):
    """A spool file that records how much each read asked for."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.asked: list[int | None] = []

    def read(self, size: int | None = -1) -> bytes:  # type: ignore[override]
        self.asked.append(size)
        return super().read(size)


@pytest.mark.parametrize("sender", ["data", "bdat"])
def test_senders_read_at_most_one_bounded_piece_at_a_time(sender: str) -> None:
    from twisted.internet.testing import StringTransport

    data = (b"y" * 998 + b"\r\n") * 3000  # 3 MB
    f = ReadRecorder(data)
    transport = StringTransport()
    if sender == "data":
        d = DataSender(f, transport).start()
    else:
        d = ChunkSender(f, len(data), transport, chunk_size=1024 * 1024).start()
    while transport.producer is not None:
        before = len(transport.value())
        transport.producer.resumeProducing()
        assert len(transport.value()) - before <= CHUNK_SIZE + 64  # one piece a call
    assert d.called
    assert f.asked and all(isinstance(n, int) and 0 < n <= CHUNK_SIZE for n in f.asked[:-1])
    assert f.asked[-1] is not None and 0 <= f.asked[-1] <= CHUNK_SIZE


# -- against the sandbox ------------------------------------------------------------------

async def authenticated(sb: Sandbox) -> UpstreamConnection:
    """A real connection to the sandbox's Exchange, secured and authenticated."""
    account = account_for(sb)
    token = await tokens_for(sb).access_token()
    conn = await open_connection(reactor, account.smtp_host, account.smtp_port, False,
                                 client_tls(account.smtp_host, account.ca_file),
                                 "relay.test", Timeouts())
    reply = await conn.authenticate(account.user, token)
    assert reply.code == 235
    return conn


def gmail_transport(sb: Sandbox) -> Any:
    google = sb.add_google_account("printer@gmail.example")
    body = sb.identity.google.token({
        "grant_type": "refresh_token", "client_id": google["client_id"],
        "client_secret": google["client_secret"],
        "refresh_token": google["refresh_token"]}).body
    account = account_for(sb, provider="google", flow="refresh_token",
                          user="printer@gmail.example",
                          smtp_port=sb.gmail_smtp_port)
    return transport_for(account, ScriptedTokenSource([body["access_token"]]), reactor)


@pytest.mark.parametrize("flavor", ["exchange", "gmail"])
@pytest_twisted.ensureDeferred
async def test_byte_exact_with_dot_lines_and_8bit_data(sandbox: Sandbox, tmp_path: Any,
                                                        flavor: str) -> None:
    if flavor == "exchange":
        server = sandbox.exchange
        transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    else:
        server = sandbox.gmail
        transport = gmail_transport(sandbox)
    first = await transport.deliver(message_file(tmp_path, AWKWARD, body_8bitmime=True))
    second = await transport.deliver(message_file(tmp_path, simple_message(), entry_id="e2"))
    await transport.close()
    assert [r.outcome for r in first.recipients + second.recipients] == [
        Outcome.DELIVERED, Outcome.DELIVERED]
    assert [m.data for m in sandbox.mailbox.messages] == [AWKWARD, simple_message()]
    [transcript] = server.transcripts
    assert f"BDAT {len(AWKWARD)} LAST" in transcript.commands
    assert "DATA" not in transcript.commands and "RSET" not in transcript.commands
    assert transcript.messages_accepted == 2


@pytest.mark.parametrize("chunk", [7, 1000])
@pytest_twisted.ensureDeferred
async def test_chunk_boundaries(sandbox: Sandbox, tmp_path: Any, chunk: int) -> None:
    """Sizes just under, at and over multiples of the chunk size, and the empty message."""
    conn = await authenticated(sandbox)
    conn.bdat_chunk_size = chunk
    sizes = [0, 1, chunk - 1, chunk, chunk + 1, 3 * chunk, 3 * chunk + 2]
    sent = []
    for i, size in enumerate(sizes):
        data = (AWKWARD * (size // len(AWKWARD) + 1))[:size]
        result = await conn.send_message(message_file(tmp_path, data, entry_id=f"b{i}"),
                                         reset=not conn.clean, reused=i > 0)
        assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED], size
        sent.append(data)
    await conn.quit()
    assert [m.data for m in sandbox.mailbox.messages] == sent
    [transcript] = sandbox.exchange.transcripts
    bdats = [c for c in transcript.commands if c.startswith("BDAT")]
    expected = []
    for size in sizes:
        full, rest = divmod(size, chunk)
        counts = [chunk] * full + ([rest] if rest else [])
        counts = counts or [0]
        expected += [f"BDAT {n}" for n in counts[:-1]] + [f"BDAT {counts[-1]} LAST"]
    assert bdats == expected


@pytest_twisted.ensureDeferred
async def test_every_recipient_refused_nothing_delivered_next_message_after_rset(
        sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.reject_recipient("nobody@example.net")
    sandbox.exchange.reject_recipient("ghost@example.net")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    refused = await transport.deliver(message_file(
        tmp_path, simple_message(), recipients=("nobody@example.net", "ghost@example.net")))
    after = await transport.deliver(message_file(tmp_path, simple_message(subject="after"),
                                                 entry_id="e2"))
    await transport.close()
    assert [r.outcome for r in refused.recipients] == [Outcome.PERMANENT] * 2
    assert refused.recipients[0].reply.text.startswith("5.1.10 RESOLVER.ADR.RecipientNotFound")
    assert [r.outcome for r in after.recipients] == [Outcome.DELIVERED]
    [transcript] = sandbox.exchange.transcripts
    # The chunk was on the wire with the envelope: the server read it and refused it.
    assert "503 5.5.2 Need rcpt command" in transcript.replies
    assert transcript.commands.count("RSET") == 1  # before the next transaction only
    assert [m.data for m in sandbox.mailbox.messages] == [simple_message(subject="after")]


@pytest_twisted.ensureDeferred
async def test_one_recipient_refused_the_others_delivered(sandbox: Sandbox,
                                                          tmp_path: Any) -> None:
    sandbox.exchange.reject_recipient("nobody@example.net")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message(), recipients=(
        "alice@example.net", "nobody@example.net", "bob@example.net")))
    await transport.close()
    assert {r.recipient: (r.outcome, r.reply.code) for r in result.recipients} == {
        "alice@example.net": (Outcome.DELIVERED, 250),
        "bob@example.net": (Outcome.DELIVERED, 250),
        "nobody@example.net": (Outcome.PERMANENT, 550)}
    [delivered] = sandbox.mailbox.messages
    assert delivered.rcpt_to == ("alice@example.net", "bob@example.net")


@pytest_twisted.ensureDeferred
async def test_refused_last_chunk_is_not_delivered(sandbox: Sandbox, tmp_path: Any) -> None:
    """The envelope and the first chunks are taken; the message is refused at the end."""
    conn = await authenticated(sandbox)
    conn.bdat_chunk_size = 1000
    sandbox.exchange.max_message_size = 2500
    data = (b"z" * 98 + b"\r\n") * 40  # 4,000 bytes in 4 chunks
    msg = message_file(tmp_path, data)
    msg = OutboundMessage(msg.entry_id, msg.sender, msg.recipients, msg.data_path, 100)
    result = await conn.send_message(msg)
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert str(result.recipients[0].reply) == "552 5.3.4 Message size exceeds fixed maximum message size"
    assert result.failure is FailureKind.TOO_BIG
    assert not conn.clean and conn.messages_sent == 0
    await conn.quit()
    assert sandbox.mailbox.messages == []


@pytest_twisted.ensureDeferred
async def test_server_closing_in_the_middle_of_a_chunk(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.drop_next("DATA_BODY")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    data = simple_message() + (b"w" * 998 + b"\r\n") * 3000  # 3 MB: three chunks
    result = await transport.deliver(message_file(tmp_path, data))
    assert result.failure is FailureKind.CONNECTION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert result.recipients[0].reply.code == 451
    assert "connection was lost" in result.recipients[0].reply.text
    assert sandbox.mailbox.messages == []
    again = await transport.deliver(message_file(tmp_path, data, entry_id="e2"))
    await transport.close()
    assert [r.outcome for r in again.recipients] == [Outcome.DELIVERED]
    assert [m.data for m in sandbox.mailbox.messages] == [data]
    assert len(sandbox.exchange.transcripts) == 2


@pytest_twisted.ensureDeferred
async def test_falls_back_to_pipelined_data_without_chunking(sandbox: Sandbox,
                                                             tmp_path: Any) -> None:
    sandbox.exchange.chunking = False
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, AWKWARD))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    [transcript] = sandbox.exchange.transcripts
    assert "DATA" in transcript.commands
    assert not any(c.startswith("BDAT") for c in transcript.commands)
    # DATA adds the CRLF the content lacks before its end; otherwise the same bytes.
    assert [m.data for m in sandbox.mailbox.messages] == [AWKWARD + b"\r\n"]


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
@pytest_twisted.ensureDeferred
async def test_a_line_that_is_exactly_two_dots(sandbox: Sandbox, tmp_path: Any,
                                               chunking: bool) -> None:
    """
    A client's DATA line that is exactly ".." is a stuffed "." and stored as "."; a
    stored ".." came as "...".  Upstream, DATA stuffs them again ("..", "...") and BDAT
    sends them as they are; neither ends the data early.
    """
    from xrelay.inbound.lines import Line, data_line_bytes

    assert data_line_bytes(Line(b"..", True)) == b".\r\n"
    assert data_line_bytes(Line(b"...", True)) == b"..\r\n"
    sandbox.exchange.chunking = chunking
    data = simple_message() + b"..\r\n.\r\n..\r\nafter\r\n"
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, data))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert [m.data for m in sandbox.mailbox.messages] == [data]


def test_a_slow_final_reply_is_waited_for_not_taken_for_a_stall(tmp_path: Any) -> None:
    """The progress timeout is for sending; the reply to BDAT LAST gets data_end."""
    conn, transport, clock = connection(CHUNKING)
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    pump(transport)
    conn.protocol.dataReceived(b"250 ok\r\n250 ok\r\n")
    clock.advance(Timeouts().data_block + 1)
    assert not d.called and not transport.disconnected
    conn.protocol.dataReceived(b"250 2.6.0 queued\r\n")
    assert [r.outcome for r in d.result.recipients] == [Outcome.DELIVERED]


def test_a_stall_while_sending_names_the_message_data(tmp_path: Any) -> None:
    conn, transport, clock = connection(CHUNKING)
    d = ensureDeferred(conn.send_message(message(tmp_path, b"x" * 200000)))
    transport.producer.resumeProducing()  # one piece, then the upstream stops reading
    clock.advance(Timeouts().data_block)
    error: list[Any] = []
    d.addErrback(error.append)
    assert transport.disconnected
    assert str(error[0].value) == "timed out after 180s without progress during message data"
