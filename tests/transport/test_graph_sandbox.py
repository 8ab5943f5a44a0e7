"""
The Graph sendMail transport against the sandbox's Graph endpoint over verified HTTPS:
202, a refused token refreshed once, 429 with Retry-After, Send As denied, too big.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest_twisted
from twisted.internet import reactor

from xrelay.envelope import FailureKind, Outcome
from xrelay.sandbox import Sandbox
from xrelay.transport import transport_for
from xrelay.transport.graph import (
    GraphTransport,
    base64_size,
    retry_after_seconds,
    with_envelope_recipients,
)

from .conftest import GRAPH_SCOPE, account_for, message_file, simple_message, tokens_for


def graph_account(sb: Sandbox, **kw: Any) -> Any:
    return account_for(sb, transport="graph", **kw)


@pytest_twisted.ensureDeferred
async def test_202_delivers_for_every_recipient(sandbox: Sandbox, tmp_path: Any) -> None:
    transport = transport_for(graph_account(sandbox), tokens_for(sandbox, GRAPH_SCOPE), reactor)
    assert isinstance(transport, GraphTransport)
    data = simple_message()
    result = await transport.deliver(message_file(
        tmp_path, data, recipients=("alice@example.net", "bob@example.net")))
    await transport.close()
    assert [(r.outcome, r.reply.code) for r in result.recipients] == [
        (Outcome.DELIVERED, 250), (Outcome.DELIVERED, 250)]
    assert "HTTP 202" in result.recipients[0].reply.text
    [delivered] = sandbox.mailbox.messages
    # bob is only in the envelope (a Bcc): Graph reads recipients from the headers, so
    # the transport names him in a Bcc header; Exchange delivers to him and does not
    # show the Bcc field to anyone.
    assert sandbox.graph.requests == [("POST", "sendMail")]
    assert delivered.data == data
    assert sorted(delivered.rcpt_to) == ["alice@example.net", "bob@example.net"]
    assert delivered.auth_mechanism == "graph"
    assert delivered.mailbox == "relay@sandbox.example"


@pytest_twisted.ensureDeferred
async def test_401_refreshes_the_token_once(sandbox: Sandbox, tmp_path: Any) -> None:
    tokens = tokens_for(sandbox, GRAPH_SCOPE, first="expired-token")
    transport = transport_for(graph_account(sandbox), tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert tokens.rejected == ["expired-token"] and tokens.fetched == 1


@pytest_twisted.ensureDeferred
async def test_401_twice_defers_with_authentication(sandbox: Sandbox, tmp_path: Any) -> None:
    # An Outlook token is refused by Graph (wrong audience) every time.
    tokens = tokens_for(sandbox)
    transport = transport_for(graph_account(sandbox), tokens, reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert result.failure is FailureKind.AUTHENTICATION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert "InvalidAuthenticationToken" in result.recipients[0].reply.text
    assert len(tokens.rejected) == 1 and tokens.fetched == 2
    for secret in sandbox.issued_secrets():
        assert secret not in repr(result)


@pytest_twisted.ensureDeferred
async def test_429_is_throttled_with_retry_after(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.graph.throttle_next(1, retry_after=7)
    transport = transport_for(graph_account(sandbox), tokens_for(sandbox, GRAPH_SCOPE), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    assert result.failure is FailureKind.THROTTLED
    assert result.retry_after == 7.0
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert result.recipients[0].reply.text.startswith("4.7.0 Microsoft Graph: HTTP 429 ApplicationThrottled")
    assert sandbox.mailbox.messages == []
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]


@pytest_twisted.ensureDeferred
async def test_send_as_denied(sandbox: Sandbox, tmp_path: Any) -> None:
    sandbox.exchange.grant_app_mailbox(sandbox.default_app.client_id, "relay@sandbox.example",
                                       send_as_anyone=False)
    transport = transport_for(graph_account(sandbox), tokens_for(sandbox, GRAPH_SCOPE), reactor)
    result = await transport.deliver(message_file(tmp_path, simple_message()))
    await transport.close()
    assert result.failure is FailureKind.SEND_AS_DENIED
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert result.recipients[0].reply.text.startswith("5.2.252 SendAsDenied; Microsoft Graph: HTTP 403 ErrorSendAsDenied")
    assert "Add-RecipientPermission" in result.detail and "rewrite_from" in result.detail


@pytest_twisted.ensureDeferred
async def test_over_four_megabytes_after_base64_fails_without_a_request(
        sandbox: Sandbox, tmp_path: Any) -> None:
    limit = 3 * 1024 * 1024  # the largest size whose base64 fits in 4 MB
    assert base64_size(limit) == 4 * 1024 * 1024
    tokens = tokens_for(sandbox, GRAPH_SCOPE)
    transport = transport_for(graph_account(sandbox), tokens, reactor)
    data = simple_message() + b"z" * (limit + 1 - len(simple_message()))
    result = await transport.deliver(message_file(tmp_path, data))
    await transport.close()
    assert result.failure is FailureKind.TOO_BIG
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    assert "over the 4 MB single-request limit" in result.recipients[0].reply.text
    assert tokens.fetched == 0  # not even a token was needed: no request was made
    assert sandbox.mailbox.messages == []


def test_retry_after_forms() -> None:
    assert retry_after_seconds(b"120", 0) == 120.0
    assert retry_after_seconds(b"Thu, 01 Jan 1970 00:01:40 GMT", 40.0) == 60.0
    assert retry_after_seconds(b"soon", 0) is None
    assert retry_after_seconds(None, 0) is None
    assert base64_size(3) == len(base64.b64encode(b"abc")) and base64_size(4) == 8


def test_envelope_recipients_missing_from_headers_become_bcc() -> None:
    data = (b"From: a@example.com\r\nTo: Alice <Alice@Example.net>\r\n"
            b"Bcc: carol@example.net,\r\n dave@example.net\r\nSubject: x\r\n\r\n"
            b"Bcc: not-a-header@example.net\r\n")
    # Everybody named is an envelope recipient and the other way round: unchanged.
    assert with_envelope_recipients(data, ("alice@example.net", "carol@example.net",
                                           "dave@example.net")) == data
    # Graph delivers to the header fields: they name exactly the envelope afterwards
    # (the Bcc, folded lines included, replaced by the envelope's hidden recipients;
    # carol and dave are no envelope recipients of this copy: left out).
    assert with_envelope_recipients(data, ("alice@example.net", "erin@example.net")) == (
        b"Bcc: erin@example.net\r\n"
        b"From: a@example.com\r\nTo: Alice <Alice@Example.net>\r\nSubject: x\r\n\r\n"
        b"Bcc: not-a-header@example.net\r\n")
