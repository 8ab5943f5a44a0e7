"""
Reusing an upstream connection: the RSET that proves it still works travels in the
same write as MAIL and RCPT (one round trip less per message), and when that RSET
fails the message goes out once, on another connection, with no DATA on the stale one.
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred

from tests.transport.conftest import account_for, message_file, simple_message, tokens_for
from tests.transport.test_smtp_protocol import connection, message
from xrelay.envelope import Outcome
from xrelay.sandbox import Sandbox
from xrelay.transport import transport_for
from xrelay.transport.trouble import StaleConnection


def test_reset_is_pipelined_with_the_envelope(tmp_path: Any) -> None:
    conn, transport, _ = connection()
    d = ensureDeferred(conn.send_message(message(tmp_path), reset=True))
    assert transport.value() == (b"RSET\r\nMAIL FROM:<a@example.com> SIZE=18\r\n"
                                 b"RCPT TO:<b@example.net>\r\nDATA\r\n")
    transport.clear()
    conn.protocol.dataReceived(b"250 2.0.0 reset\r\n250 ok\r\n250 ok\r\n")
    assert transport.value() == b""  # nothing more until DATA is answered
    conn.protocol.dataReceived(b"354 go\r\n")
    while transport.producer is not None:
        transport.producer.resumeProducing()
    conn.protocol.dataReceived(b"250 2.6.0 queued\r\n")
    assert [r.outcome for r in d.result.recipients] == [Outcome.DELIVERED]


@pytest.mark.parametrize("answer", [b"421 4.3.2 closing\r\n250 ok\r\n250 ok\r\n",
                                    b"503 5.5.1 confused\r\n250 ok\r\n250 ok\r\n"])
def test_failed_reset_gives_the_connection_up_before_data(tmp_path: Any,
                                                          answer: bytes) -> None:
    conn, transport, _ = connection()
    d = ensureDeferred(conn.send_message(message(tmp_path), reset=True))
    transport.clear()
    conn.protocol.dataReceived(answer)
    failure = []
    d.addErrback(failure.append)
    assert failure and failure[0].check(StaleConnection)
    assert transport.value() == b""  # no DATA, whatever MAIL and RCPT got
    assert transport.disconnected


def test_without_pipelining_reset_waits_for_its_reply(tmp_path: Any) -> None:
    conn, transport, _ = connection("SIZE 1000 8BITMIME")
    ensureDeferred(conn.send_message(message(tmp_path), reset=True))
    assert transport.value() == b"RSET\r\n"
    transport.clear()
    conn.protocol.dataReceived(b"250 2.0.0 reset\r\n")
    assert transport.value() == b"MAIL FROM:<a@example.com> SIZE=18\r\n"


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("break_it", ["drop", "421"])
async def test_stale_idle_connection_is_replaced_and_the_message_sent_once(
        sandbox: Sandbox, tmp_path: Any, break_it: str) -> None:
    """
    "drop": the last transaction ended cleanly, so no RSET is sent; the connection drops
    before MAIL is answered.  "421": the last transaction was refused (every recipient),
    so the next one begins with RSET, which gets a 421.  Either way the message goes out
    once, on a fresh connection.
    """
    transport = transport_for(account_for(sandbox), tokens_for(sandbox), reactor)
    sandbox.exchange.reject_recipient("nobody@example.net")
    first = await transport.deliver(message_file(
        tmp_path, simple_message(subject="one"), entry_id="one",
        recipients=("alice@example.net",) if break_it == "drop" else ("nobody@example.net",)))
    if break_it == "drop":
        sandbox.exchange.drop_next("MAIL")
    else:
        sandbox.exchange.fail_next("RSET", "421 4.3.2 Service not available, closing")
    second = await transport.deliver(message_file(tmp_path, simple_message(subject="two"),
                                                  entry_id="two"))
    await transport.close()
    assert [r.outcome for r in first.recipients + second.recipients] == [
        Outcome.DELIVERED if break_it == "drop" else Outcome.PERMANENT, Outcome.DELIVERED]
    stale, fresh = sandbox.exchange.transcripts
    assert stale.messages_accepted == (1 if break_it == "drop" else 0)
    assert ("RSET" in stale.commands) is (break_it == "421")
    assert fresh.messages_accepted == 1 and "RSET" not in fresh.commands
    subjects = [m.data.split(b"Subject: ")[1].split(b"\r\n")[0]
                for m in sandbox.mailbox.messages]
    assert subjects == ([b"one", b"two"] if break_it == "drop" else [b"two"])
