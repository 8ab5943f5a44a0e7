"""
The upstream transport: delivers spooled messages to Exchange Online, Gmail or Microsoft
Graph through one configured account, and reports every recipient's result.

L{transport_for} is the one entry point the service wiring needs.  Nothing in this
package may log, raise or record an access token.
"""

from __future__ import annotations

from typing import Any

from xrelay.config import AccountConfig
from xrelay.interfaces import ITokenSource, ITransport
from xrelay.transport.smtp import Timeouts

__all__ = ["transport_for", "Timeouts", "timeouts_for"]


def timeouts_for(delivery: Any) -> Timeouts:
    """
    The upstream timeouts of C{[delivery]}: C{connect_timeout} for the connection, TLS
    and the banner; C{command_timeout} for each command's reply (the DATA start keeps
    RFC 5321's 2 minutes when that is shorter); C{data_timeout} after the final dot.
    """
    command = float(delivery.command_timeout)
    return Timeouts(connect=float(delivery.connect_timeout),
                    tls=float(delivery.connect_timeout),
                    greeting=float(delivery.connect_timeout), command=command,
                    data_start=min(command, 120.0), data_end=float(delivery.data_timeout))


def transport_for(
    account: AccountConfig,
    tokens: ITokenSource,
    reactor: Any = None,
    helo_name: str | None = None,
    timeouts: Timeouts | None = None,
) -> ITransport:
    """
    The transport for C{account}: SMTP with XOAUTH2, or Graph C{sendMail} when
    C{account.transport == "graph"}.

    @param helo_name: the EHLO name (the relay's C{server.hostname}); the host name
        by default.
    """
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    if account.transport == "graph":
        from xrelay.transport.graph import GraphTransport

        return GraphTransport(account, tokens, reactor)
    from xrelay.transport.pool import SMTPTransport

    extra: dict[str, Any] = {}
    if helo_name:
        extra["helo_name"] = helo_name
    if timeouts is not None:
        extra["timeouts"] = timeouts
    return SMTPTransport(account, tokens, reactor, **extra)
