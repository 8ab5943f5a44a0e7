"""
The upstream timeouts of [delivery] (RFC 5321 4.5.3.2): read from xrelay.toml with
their defaults, handed to the transport, and in force on a real connection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol

from xrelay.config import DeliveryConfig
from xrelay.configfile import read_config
from xrelay.envelope import FailureKind, Outcome
from xrelay.sandbox import Sandbox
from xrelay.transport import Timeouts, timeouts_for, transport_for

from .conftest import account_for, message_file, simple_message, tokens_for


def test_defaults_follow_rfc_5321() -> None:
    d = DeliveryConfig()
    assert (d.connect_timeout, d.command_timeout, d.data_timeout) == (60, 300, 600)
    t = timeouts_for(d)
    assert (t.connect, t.greeting, t.command, t.data_start, t.data_end) == (
        60, 60, 300, 120, 600)


def test_read_from_the_file(tmp_path: Path) -> None:
    path = tmp_path / "xrelay.toml"
    (tmp_path / "secret.txt").write_text("s\n")
    (tmp_path / "secret.txt").chmod(0o600)
    path.write_text(f'[server]\nhostname = "r.example"\nstate_dir = "{tmp_path}"\n'
                    '[[accounts]]\nname = "main"\nuser = "relay@example.com"\n'
                    'tenant = "t.onmicrosoft.com"\nclient_id = "cid"\n'
                    'client_secret_file = "secret.txt"\n'
                    "[delivery]\nconnect_timeout = 5\ncommand_timeout = 30\n"
                    "data_timeout = 900\n")
    d = read_config(str(path)).delivery
    assert timeouts_for(d) == Timeouts(connect=5, tls=5, greeting=5, command=30,
                                       data_start=30, data_end=900)


class Silent(Protocol):
    """Accepts the connection and never sends a banner."""


@pytest_twisted.ensureDeferred
async def test_connect_timeout_bounds_the_banner_wait(sandbox: Sandbox, tmp_path: Any
                                                      ) -> None:
    port = reactor.listenTCP(0, Factory.forProtocol(Silent), interface="127.0.0.1")
    try:
        account = account_for(sandbox, smtp_host="127.0.0.1",
                              smtp_port=port.getHost().port)
        timeouts = timeouts_for(DeliveryConfig(connect_timeout=1))
        transport = transport_for(account, tokens_for(sandbox), reactor,
                                  timeouts=timeouts)
        result = await transport.deliver(message_file(tmp_path, simple_message()))
        await transport.close()
    finally:
        await port.stopListening()
    assert result.failure is FailureKind.CONNECTION
    assert [r.outcome for r in result.recipients] == [Outcome.TEMPORARY]
    assert "timed out after 1s" in str(result.recipients[0].reply)
    assert result.recipients[0].reply.enhanced == "4.4.2"


@pytest.mark.parametrize("capabilities", ["PIPELINING SIZE 1000", "SIZE 1000"],
                         ids=["pipelined", "one-by-one"])
def test_the_354_is_awaited_for_data_start(tmp_path: Any, capabilities: str) -> None:
    """RFC 5321 4.5.3.2.2: the wait for DATA's 354 has its own timeout, not command's."""
    import attrs
    from twisted.internet.defer import ensureDeferred

    from tests.transport.test_smtp_protocol import connection, message

    conn, transport, clock = connection(capabilities)
    conn.timeouts = attrs.evolve(conn.timeouts, command=300, data_start=7)
    d = ensureDeferred(conn.send_message(message(tmp_path)))
    conn.protocol.dataReceived(b"250 2.1.0 Sender OK\r\n")
    conn.protocol.dataReceived(b"250 2.1.5 Recipient OK\r\n")
    assert transport.value().endswith(b"DATA\r\n")
    clock.advance(6.9)
    assert not d.called
    clock.advance(0.2)
    error: list[Any] = []
    d.addErrback(error.append)
    assert str(error[0].value) == "timed out after 7s during DATA"
    assert transport.disconnected
