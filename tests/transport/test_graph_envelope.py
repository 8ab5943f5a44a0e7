"""
Graph delivers to exactly the envelope: the sandbox's Graph delivers as Exchange does
(every To, Cc and Bcc address once, the Bcc field shown to nobody) and records who got
what; the transport makes those fields name the envelope recipients and no one else.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor

from xrelay.envelope import Outcome
from xrelay.sandbox import Sandbox
from xrelay.transport import transport_for

from .conftest import GRAPH_SCOPE, account_for, message_file, tokens_for

HEADERS_NAME_OTHERS = (
    b"From: Scanner <scanner@example.com>\r\nTo: One <one@example.net>\r\n"
    b"Cc: two@example.net\r\nBcc: three@example.net\r\nSubject: scan\r\n"
    b"Message-ID: <scan@example.com>\r\n\r\nYour scan.\r\n")


def copies(sandbox: Sandbox, address: str) -> list[Any]:
    return sandbox.mailbox.for_recipient(address)


async def deliver(sandbox: Sandbox, tmp_path: Any, data: bytes,
                  *transactions: tuple[str, ...]) -> list[Any]:
    transport = transport_for(account_for(sandbox, transport="graph"),
                              tokens_for(sandbox, GRAPH_SCOPE), reactor)
    results = []
    for i, recipients in enumerate(transactions):
        results.append(await transport.deliver(message_file(
            tmp_path, data, recipients=recipients, entry_id=f"entry-{i}")))
    await transport.close()
    return results


@pytest_twisted.ensureDeferred
async def test_cc_and_bcc_headers_naming_others_reach_the_envelope_only(
        sandbox: Sandbox, tmp_path: Any) -> None:
    [result] = await deliver(sandbox, tmp_path, HEADERS_NAME_OTHERS, ("one@example.net",))
    assert [r.outcome for r in result.recipients] == [Outcome.DELIVERED]
    assert len(copies(sandbox, "one@example.net")) == 1
    assert copies(sandbox, "two@example.net") == []
    assert copies(sandbox, "three@example.net") == []
    [delivered] = sandbox.mailbox.messages
    assert delivered.rcpt_to == ("one@example.net",)
    # What changed: Cc and Bcc no longer name the others; the rest is as sent.
    assert delivered.data == (
        b"From: Scanner <scanner@example.com>\r\nTo: One <one@example.net>\r\n"
        b"Subject: scan\r\nMessage-ID: <scan@example.com>\r\n\r\nYour scan.\r\n")


@pytest_twisted.ensureDeferred
async def test_three_envelope_recipients_each_get_exactly_one_copy(
        sandbox: Sandbox, tmp_path: Any) -> None:
    everyone = ("one@example.net", "two@example.net", "three@example.net")
    # One transaction for all three, then one per recipient (a relay splits a message
    # when its recipients' fates differ): each time, one copy each.
    await deliver(sandbox, tmp_path, HEADERS_NAME_OTHERS, everyone)
    for address in everyone:
        assert len(copies(sandbox, address)) == 1, address
    sandbox.mailbox.clear()
    results = await deliver(sandbox, tmp_path, HEADERS_NAME_OTHERS,
                            *((address,) for address in everyone))
    assert all(r.recipients[0].outcome is Outcome.DELIVERED for r in results)
    for address in everyone:
        assert len(copies(sandbox, address)) == 1, address
    assert len(sandbox.mailbox.messages) == 3


@pytest_twisted.ensureDeferred
async def test_a_bcc_recipient_is_shown_to_nobody(sandbox: Sandbox, tmp_path: Any) -> None:
    data = (b"From: scanner@example.com\r\nTo: one@example.net\r\nSubject: s\r\n\r\n"
            b"text\r\n")
    await deliver(sandbox, tmp_path, data, ("one@example.net", "hidden@example.net"))
    [delivered] = sandbox.mailbox.messages
    assert sorted(delivered.rcpt_to) == ["hidden@example.net", "one@example.net"]
    assert b"hidden@example.net" not in delivered.data  # the copy everybody reads
    assert delivered.data == data
