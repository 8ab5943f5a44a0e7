"""
The transport a connected SMTP protocol of xrelay's writes to, typed as narrowly as it
is.

Twisted types C{Protocol.transport} as C{ITransport | None}: None before the
connection is made, and without C{abortConnection}, C{startTLS} or flow control.  An
SMTP protocol here only ever runs connected over TCP (through the reactor, a TLS
wrapper or a PROXY wrapper, all of which provide these), so each declares
C{transport: IStreamTransport} once instead of a check at every use.  This module must
never hold behaviour: it only names an interface.
"""

from __future__ import annotations

from twisted.internet.interfaces import IConsumer, IPushProducer, ITLSTransport

__all__ = ["IStreamTransport"]


class IStreamTransport(ITLSTransport, IPushProducer, IConsumer):
    """A connected TCP transport that can start TLS, abort, pause reading, and take a
    producer (the message data streams through it)."""
