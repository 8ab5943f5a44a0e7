"""
8-bit messages upstream (RFC 6152): declared with BODY=8BITMIME when the upstream offers
it (Exchange Online and Gmail do); refused with the reason when it does not, since
xrelay does not convert messages to 7 bit.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import ensureDeferred

from tests.transport.test_smtp_protocol import connection, message
from xrelay.envelope import Outcome


def test_8bit_message_is_declared_when_offered(tmp_path: Any) -> None:
    conn, transport, _ = connection("PIPELINING SIZE 1000 8BITMIME")
    ensureDeferred(conn.send_message(message(tmp_path, b"Subject: x\r\n\r\n\xe9\r\n",
                                             body_8bitmime=True)))
    assert transport.value().startswith(b"MAIL FROM:<a@example.com> SIZE=17 "
                                        b"BODY=8BITMIME\r\n")


def test_7bit_message_is_not_declared(tmp_path: Any) -> None:
    conn, transport, _ = connection("PIPELINING SIZE 1000 8BITMIME")
    ensureDeferred(conn.send_message(message(tmp_path)))
    assert transport.value().startswith(b"MAIL FROM:<a@example.com> SIZE=18\r\n")


def test_8bit_message_to_an_upstream_without_8bitmime_is_refused_with_the_reason(
        tmp_path: Any) -> None:
    conn, transport, _ = connection("PIPELINING SIZE 1000")
    result = ensureDeferred(conn.send_message(
        message(tmp_path, b"Subject: x\r\n\r\n\xe9\r\n", body_8bitmime=True))).result
    assert [r.outcome for r in result.recipients] == [Outcome.PERMANENT]
    reply = result.recipients[0].reply
    assert reply.code == 554 and reply.enhanced == "5.6.3"
    assert "does not offer 8BITMIME" in reply.text and "smtp.example:587" in reply.text
    assert transport.value() == b""
