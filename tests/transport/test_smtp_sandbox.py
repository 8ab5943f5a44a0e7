"""
The SMTP transport against the sandbox's Exchange-like (and Gmail-like) server over
verified TLS: results, token refresh, Send As, temporary failures, mixed recipients,
dropped connections, certificate checks, smuggling and connection reuse.
"""

from __future__ import annotations

from typing import Any, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import formatEvent, globalLogPublisher

from xrelay.envelope import FailureKind, Outcome
from xrelay.sandbox import ExchangeServer, Sandbox
from xrelay.transport import Timeouts, transport_for
from xrelay.transport.data import CHUNK_SIZE
from xrelay.transport.pool import SMTPTransport
from xrelay.transport.testing import ScriptedTokenSource

from .conftest import account_for, message_file, simple_message, tokens_for


@pytest.fixture
def log_text() -> Iterator[list[str]]:
    """Everything logged during the test, formatted, with every field's value."""
    lines: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        lines.append(formatEvent(event) + " " + repr(sorted(event.items(), key=str)))

    globalLogPublisher.addObserver(observe)
    yield lines
    globalLogPublisher.removeObserver(observe)


def secrets_absent(sb: Sandbox, texts: list[str]) -> None:
    secrets = sb.issued_secrets()
    assert secrets
    for secret in secrets:
        for text in texts:
            assert secret not in text


@pytest_twisted.ensureDeferred
async def test_delivers_over_verified_tls_with_one_auth(sandbox: Sandbox, tmp_path: Any,
                                                        log_text: list[str]) -> None:
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    data = simple_message()
    result = await transport.deliver(message_file(tmp_path, data, recipients=(
        "alice@example.net", "bob@example.net")))
    await transport.close()
    assert result.failure is FailureKind.NONE
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED] * 2
    assert result.recipients[0].reply.code == 250
    assert result.recipients[0].reply.text.startswith("2.6.0 <scan@example.com>")
    [delivered] = sandbox.mailbox.messages
    assert delivered.data == data
    assert delivered.mail_from == "scanner@example.com"
    assert delivered.rcpt_to == ("alice@example.net", "bob@example.net")
    [transcript] = sandbox.exchange.transcripts
    assert transcript.tls and transcript.auth_count == 1
    assert transcript.commands[:3] == [transcript.commands[0], "STARTTLS", transcript.commands[2]]
    assert "AUTH XOAUTH2 <redacted>" in transcript.commands
    assert any("SIZE=" in c for c in transcript.commands if c.startswith("MAIL"))
    assert any("Upstream sandbox delivered entry-1" in line for line in log_text)
    secrets_absent(sandbox, log_text + [repr(result), str(result)])


@pytest_twisted.ensureDeferred
async def test_rejected_token_is_refreshed_and_retried_on_fresh_connection(
        sandbox: Sandbox, tmp_path: Any) -> None:
    tokens = tokens_for(sandbox, first="stale-token")
    transport = transport_for(account_for(sandbox), tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert tokens.rejected == ["stale-token"] and tokens.fetched == 1
    first, second = sandbox.exchange.transcripts
    assert "535 5.7.3 Authentication unsuccessful [SB1PR01CA0001.outlook.office365.com]" in first.replies
    assert not any(c.startswith("MAIL") for c in first.commands)
    assert second.auth_count == 1 and len(sandbox.mailbox.messages) == 1


@pytest_twisted.ensureDeferred
async def test_token_rejected_twice_defers_with_authentication(
        sandbox: Sandbox, tmp_path: Any, log_text: list[str]) -> None:
    sandbox.exchange.fail_next("AUTH", "535 5.7.3 Authentication unsuccessful")
    sandbox.exchange.fail_next("AUTH", "535 5.7.3 Authentication unsuccessful")
    tokens = tokens_for(sandbox)
    transport = transport_for(account_for(sandbox), tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    assert result.failure is FailureKind.AUTHENTICATION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert str(result.recipients[0].reply) == "535 5.7.3 Authentication unsuccessful"
    assert "SmtpClientAuthenticationDisabled" in result.detail
    assert len(tokens.rejected) == 2 and tokens.rejected[0] != tokens.rejected[1]
    assert len(sandbox.exchange.transcripts) == 2
    assert sandbox.mailbox.messages == []
    secrets_absent(sandbox, log_text + [result.detail])


@pytest_twisted.ensureDeferred
async def test_gmail_xoauth2_error_challenge_gets_empty_response(
        sandbox: Sandbox, tmp_path: Any) -> None:
    """Gmail answers a bad token with 334 <base64 JSON>; we send an empty line."""
    tokens = ScriptedTokenSource(["bad-1", "bad-2"])
    account = account_for(sandbox, provider="google", flow="refresh_token",
                          smtp_port=sandbox.gmail_smtp_port)
    transport = transport_for(account, tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    assert result.failure is FailureKind.AUTHENTICATION
    assert result.recipients[0].reply.code == 535
    assert result.recipients[0].reply.enhanced == "5.7.8"
    assert tokens.rejected == ["bad-1", "bad-2"]
    transcript = sandbox.gmail.transcripts[0]
    assert transcript.commands[-3:-1] == ["AUTH XOAUTH2 <redacted>", "<redacted>"]


@pytest_twisted.ensureDeferred
async def test_send_as_denied_is_permanent_with_instructions(
        sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.grant_app_mailbox(sandbox.default_app.client_id, "relay@sandbox.example",
                                       send_as_anyone=False)
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert result.failure is FailureKind.SEND_AS_DENIED
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    reply = result.recipients[0].reply
    assert reply.code == 554 and reply.text.startswith(
        "5.2.252 SendAsDenied; relay@sandbox.example not allowed to send as scanner@example.com")
    assert ("Add-RecipientPermission -Identity scanner@example.com -Trustee "
            "relay@sandbox.example -AccessRights SendAs") in result.detail
    assert "rewrite_from = true" in result.detail
    assert sandbox.mailbox.messages == []


@pytest_twisted.ensureDeferred
async def test_452_and_421_are_temporary(sandbox: Sandbox, tmp_path: Any) -> None:
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    sandbox.exchange.fail_next("RCPT", "452 4.5.3 Too many recipients", "bob@example.net")
    result = await transport.deliver(message_file(
        tmp_path, simple_message(), recipients=("alice@example.net", "bob@example.net")))
    assert [(r.recipient, r.outcome, str(r.reply)) for r in result.recipients][1] == (
        "bob@example.net", Outcome.TEMPORARY, "452 4.5.3 Too many recipients")
    assert result.recipients[0].outcome is Outcome.DELIVERED

    sandbox.exchange.fail_next("MAIL", "421 4.4.2 Message submission rate for this client "
                               "has exceeded the configured limit")
    result = await transport.deliver(message_file(tmp_path, simple_message(), entry_id="e2"))
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert result.recipients[0].reply.code == 421
    assert result.failure is FailureKind.THROTTLED
    # The 421 closed that connection: the next message needs (and gets) a new one.
    result = await transport.deliver(message_file(tmp_path, simple_message(), entry_id="e3"))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert len(sandbox.exchange.transcripts) == 2


@pytest_twisted.ensureDeferred
async def test_mixed_recipient_results(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.reject_recipient("nobody@example.net")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message(), recipients=(
        "alice@example.net", "nobody@example.net", "bob@example.net")))
    await transport.close()
    outcomes = {r.recipient: (r.outcome, r.reply.code) for r in result.recipients}
    assert outcomes == {
        "alice@example.net": (Outcome.DELIVERED, 250),
        "bob@example.net": (Outcome.DELIVERED, 250),
        "nobody@example.net": (Outcome.PERMANENT, 550),
    }
    [refused] = [r for r in result.recipients if r.outcome is Outcome.PERMANENT]
    assert refused.reply.text.startswith("5.1.10 RESOLVER.ADR.RecipientNotFound")
    assert sandbox.mailbox.messages[0].rcpt_to == ("alice@example.net", "bob@example.net")


@pytest_twisted.ensureDeferred
async def test_all_recipients_refused_sends_no_data(sandbox: Sandbox, tmp_path: Any) -> None:
    """DATA is pipelined with the envelope; refused for want of recipients, no data follows."""
    sandbox.exchange.chunking = False  # the DATA conversation (BDAT: tests/transport/test_bdat.py)
    sandbox.exchange.reject_recipient("nobody@example.net")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(
        tmp_path, simple_message(), recipients=("nobody@example.net",)))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    transcript = sandbox.exchange.transcripts[0]
    assert "503 5.5.2 Need rcpt command" in transcript.replies
    assert not any(c.startswith("<data") for c in transcript.commands)
    assert sandbox.mailbox.messages == []


@pytest.mark.parametrize("size", [200, 3 * CHUNK_SIZE])
@pytest_twisted.ensureDeferred
async def test_connection_dropped_mid_data_is_temporary(
        sandbox: Sandbox, tmp_path: Any, size: int) -> None:
    sandbox.exchange.chunking = False  # the DATA conversation (BDAT: tests/transport/test_bdat.py)
    sandbox.exchange.drop_next("DATA_BODY")
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    data = simple_message() + b"x" * 70 + b"\r\n" * (size // 72)
    result = await transport.deliver(message_file(tmp_path, data))
    assert result.failure is FailureKind.CONNECTION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    reply = result.recipients[0].reply
    assert reply.code == 451 and reply.text.startswith(f"4.4.2 Upstream localhost:{sandbox.smtp_port}: ")
    assert "during message data" in reply.text or "during end of data" in reply.text
    assert sandbox.mailbox.messages == []
    # The broken connection is not reused: the retry works on a new one.
    result = await transport.deliver(message_file(tmp_path, data, entry_id="e2"))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert len(sandbox.exchange.transcripts) == 2


@pytest_twisted.ensureDeferred
async def test_certificate_for_another_name_is_refused_and_nothing_sent(
        sandbox: Sandbox, tmp_path: Any) -> None:
    wrong = sandbox.issue_certificate(("mail.example.org",), "wrong")
    impostor = ExchangeServer(sandbox.identity, sandbox.mailbox, wrong.server_options(), reactor)
    port = reactor.listenTCP(0, impostor.factory(), interface="127.0.0.1")
    try:
        tokens = tokens_for(sandbox)
        account = account_for(sandbox, smtp_port=port.getHost().port)
        result = await transport_for(account, tokens, reactor).deliver(
            message_file(tmp_path, simple_message()))
    finally:
        await port.stopListening()
        await impostor.close_connections()
    assert result.failure is FailureKind.CONNECTION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    text = result.recipients[0].reply.text
    assert "TLS failed" in text and "during TLS handshake" in text, text
    [transcript] = impostor.transcripts
    assert transcript.commands[1] == "STARTTLS" and len(transcript.commands) == 2
    assert sandbox.mailbox.messages == []


@pytest.mark.parametrize("chunking", [True, False], ids=["bdat", "data"])
@pytest_twisted.ensureDeferred
async def test_smuggling_attempt_arrives_byte_identical_as_one_message(
        sandbox: Sandbox, tmp_path: Any, chunking: bool) -> None:
    """
    A "." line starting exactly at every read-chunk boundary, CRLF.CRLF followed by a
    second transaction, and bare LF/CR dots: the sandbox receives the same bytes, once,
    whether they go with DATA (stuffed) or BDAT (as they are).
    """
    sandbox.exchange.chunking = chunking
    head = simple_message(subject="smuggle")
    smuggled = (b".\r\nMAIL FROM:<ceo@example.com>\r\nRCPT TO:<victim@example.net>\r\n"
                b"DATA\r\nSubject: injected\r\n\r\nwire money\r\n.\r\n")
    data = bytearray(head)
    for boundary in range(1, 5):
        filler = boundary * CHUNK_SIZE - len(data) - 2
        data += b"y" * (filler % 998 or 1)  # keep lines legal
        while len(data) < boundary * CHUNK_SIZE - 2:
            data += b"\r\n" + b"y" * min(900, boundary * CHUNK_SIZE - 4 - len(data))
        data = data[: boundary * CHUNK_SIZE - 2]
        data += b"\r\n"  # so the next chunk starts with "."
        assert len(data) == boundary * CHUNK_SIZE
        data += smuggled + b"a\n.\nb\r.\r\nc\n.\r\n"
    data += b"end\r\n"
    data = bytes(data)
    assert data.count(b"\r\n.\r\n") >= 8
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    result = await transport.deliver(message_file(tmp_path, data))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    [delivered] = sandbox.mailbox.messages
    assert delivered.data == data
    [transcript] = sandbox.exchange.transcripts
    assert sum(c.startswith("MAIL") for c in transcript.commands) == 1
    assert transcript.messages_accepted == 1
    assert ("DATA" in transcript.commands) is not chunking


@pytest_twisted.ensureDeferred
async def test_ten_messages_over_one_connection_with_one_auth(
        sandbox: Sandbox, tmp_path: Any) -> None:
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    for i in range(10):
        result = await transport.deliver(message_file(
            tmp_path, simple_message(subject=f"m{i}"), entry_id=f"e{i}"))
        assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    await transport.close()
    [transcript] = sandbox.exchange.transcripts
    assert transcript.auth_count == 1
    assert transcript.messages_accepted == 10
    # Each transaction ended with a 250 to its end of data: no RSET (RFC 5321 4.1.1.4).
    assert transcript.commands.count("RSET") == 0
    assert sum(c.startswith("BDAT") and c.endswith(" LAST") for c in transcript.commands) == 10
    assert transcript.commands[-1] == "QUIT"
    assert [m.connection for m in sandbox.mailbox.messages] == [1] * 10


@pytest_twisted.ensureDeferred
async def test_concurrent_messages_respect_max_connections(
        sandbox: Sandbox, tmp_path: Any) -> None:
    transport = transport_for(account_for(sandbox, max_connections=2), tokens_for(sandbox),
                              reactor)
    results = await DeferredList([
        transport.deliver(message_file(tmp_path, simple_message(subject=f"c{i}"),
                                       entry_id=f"c{i}"))
        for i in range(6)
    ], consumeErrors=True)
    await transport.close()
    assert all(ok and r.recipients[0].outcome is Outcome.DELIVERED for ok, r in results)
    assert len(sandbox.exchange.transcripts) == 2
    assert sum(t.messages_accepted for t in sandbox.exchange.transcripts) == 6


@pytest_twisted.ensureDeferred
async def test_messages_per_connection_and_idle_timeout(sandbox: Sandbox, tmp_path: Any) -> None:
    clock = task.Clock()
    account = account_for(sandbox, messages_per_connection=3, idle_timeout=60)
    transport = SMTPTransport(account, tokens_for(sandbox), reactor, clock=clock)
    for i in range(4):
        await transport.deliver(message_file(tmp_path, simple_message(subject=f"p{i}"),
                                             entry_id=f"p{i}"))
    first, second = sandbox.exchange.transcripts
    assert first.messages_accepted == 3 and first.commands[-1] == "QUIT"
    assert second.messages_accepted == 1 and not second.closed
    clock.advance(59)
    assert "QUIT" not in second.commands
    clock.advance(1)
    await _until(lambda: second.closed)
    assert second.commands[-1] == "QUIT"


async def _until(condition: Any) -> None:
    for _ in range(200):
        if condition():
            return
        d: Deferred[None] = Deferred()
        reactor.callLater(0.01, d.callback, None)
        await d
    raise AssertionError("condition never became true")


@pytest_twisted.ensureDeferred
async def test_size_limit_from_ehlo_fails_before_sending(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.max_message_size = 100
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    data = simple_message() + b"z" * 100
    result = await transport.deliver(message_file(tmp_path, data))
    await transport.close()
    assert result.failure is FailureKind.TOO_BIG
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert result.recipients[0].reply.text.startswith(
        f"5.3.4 Message size {len(data)} exceeds the upstream's limit of 100 bytes")
    assert not any(c.startswith("MAIL") for c in sandbox.exchange.transcripts[0].commands)


@pytest_twisted.ensureDeferred
async def test_needs_sign_in_defers_without_connecting(sandbox: Sandbox, tmp_path: Any) -> None:
    from xrelay.tokens.errors import NeedsSignIn, TokenUnavailable

    tokens = ScriptedTokenSource([
        NeedsSignIn("sandbox", "run `xrelay login sandbox`", "invalid_grant"),
        TokenUnavailable("sandbox", "token endpoint answered 503", retry_at=reactor.seconds() + 30),
    ])
    transport = transport_for(account_for(sandbox), tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    assert result.failure is FailureKind.NEEDS_SIGN_IN
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert result.recipients[0].reply.text == (
        "4.7.0 account 'sandbox' needs sign-in (invalid_grant): run `xrelay login sandbox`")
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    assert result.failure is FailureKind.CONNECTION
    assert result.recipients[0].reply.text == (
        "4.7.0 no token for account 'sandbox' right now: token endpoint answered 503")
    assert result.retry_after is not None and 0 < result.retry_after <= 30
    assert sandbox.exchange.transcripts == []


@pytest_twisted.ensureDeferred
async def test_silent_server_times_out_naming_the_step(tmp_path: Any) -> None:
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    number = port.getHost().port
    try:
        account = account_for_plain(number)
        transport = transport_for(account, ScriptedTokenSource(["t"]), reactor,
                                  timeouts=Timeouts(greeting=0.2))
        result = await transport.deliver(message_file(tmp_path, simple_message()))
    finally:
        await port.stopListening()
    assert result.failure is FailureKind.CONNECTION
    assert result.recipients[0].reply.text == (
        f"4.4.2 Upstream 127.0.0.1:{number}: timed out after 0.2s during greeting")


def account_for_plain(port: int) -> Any:
    from xrelay.addresses import SenderPattern
    from xrelay.config import AccountConfig

    return AccountConfig("plain", "microsoft", "relay@example.com", "client_credentials",
                         (SenderPattern.parse("*"),), smtp_host="127.0.0.1", smtp_port=port,
                         tenant="example.onmicrosoft.com", client_id="plain",
                         client_secret_file="unused-secret.txt")


@pytest_twisted.ensureDeferred
async def test_implicit_tls(sandbox: Sandbox, tmp_path: Any) -> None:
    """Port 465 style: TLS from the first byte, verified, and no STARTTLS."""
    from xrelay.sandbox.exchange import ExchangeFactory

    class ImplicitTLSFactory(ExchangeFactory):
        def buildProtocol(self, addr: object) -> Any:
            protocol = super().buildProtocol(addr)
            protocol.tls = True  # the listener below is TLS already
            return protocol

    port = reactor.listenSSL(0, ImplicitTLSFactory(sandbox.exchange),
                             sandbox.server_certificate.server_options(),
                             interface="127.0.0.1")
    try:
        account = account_for(sandbox, smtp_port=port.getHost().port, smtp_implicit_tls=True)
        transport = transport_for(account, tokens_for(sandbox), reactor)
        result = await transport.deliver(message_file(tmp_path, simple_message()))
        await transport.close()
    finally:
        await port.stopListening()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    [transcript] = sandbox.exchange.transcripts
    assert "STARTTLS" not in transcript.commands and transcript.auth_count == 1
    assert len(sandbox.mailbox.messages) == 1
