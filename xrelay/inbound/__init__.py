"""
The relay's front door: a hardened ESMTP listener that accepts mail from the LAN and
streams it into the spool.

Public API: L{InboundService} (what C{makeService} wires), L{SpoolFull}, and
L{PolicyHandler}/L{InboundSession} (L{xrelay.inbound.handler}: the decisions, which an
embedding program may extend).  The pieces:
L{xrelay.inbound.lines} (bounded line splitting, the SMTP smuggling rules),
L{xrelay.inbound.protocol} (the SMTP conversation: connection, line loop, session
commands), L{xrelay.inbound.smtpauth} (the AUTH command), L{xrelay.inbound.transaction}
(MAIL, RCPT, DATA and the hand-off to the spool), L{xrelay.inbound.auth} (SASL PLAIN/LOGIN
decoding and the password check against C{[[users]]}), L{xrelay.inbound.received} (the C{Received:} header),
L{xrelay.inbound.factory} and L{xrelay.inbound.service} (listeners and caps),
L{xrelay.inbound.testing} (test doubles for the spool and delivery seams).
"""

from xrelay.inbound.errors import SpoolFull
from xrelay.inbound.handler import PolicyHandler
from xrelay.records import InboundSession
from xrelay.inbound.service import InboundService, server_tls_options

__all__ = ["InboundService", "InboundSession", "PolicyHandler", "SpoolFull",
           "server_tls_options"]
