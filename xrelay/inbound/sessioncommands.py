"""
The session commands of the inbound protocol (a mixin of
L{xrelay.inbound.protocol.ESMTPServer}): HELO and EHLO with the extensions offered,
STARTTLS, and the small ones (NOOP, RSET, QUIT, VRFY, EXPN, HELP, BDAT refused).

This module must never take a byte that arrived before a TLS handshake as a command
after it (STARTTLS discards them), keep anything learnt before TLS after it, or offer
AUTH where it would be refused.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from xrelay.inbound.auth import MECHANISMS
from xrelay.inbound.handler import decided, session_of
from xrelay.inbound.leniency import auth_without_tls, lenient_greeting
from xrelay.inbound.states import CLOSED
from xrelay.records import Refusal
from xrelay.routing import largest_route_size

if TYPE_CHECKING:
    # ESMTPServer inherits from this mixin: it is checked against its surface.
    from xrelay.inbound.surface import ServerSurface as _Base
else:
    _Base = object

__all__ = ["SessionCommands"]

log = Logger()

_HELO_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")


class SessionCommands(_Base):
    """HELO, EHLO, STARTTLS and the small commands, for L{ESMTPServer}."""

    def do_HELO(self, argument: str) -> "Deferred[None] | None":
        return self._hello(argument, esmtp=False)

    def do_EHLO(self, argument: str) -> "Deferred[None] | None":
        return self._hello(argument, esmtp=True)

    def _hello(self, argument: str, esmtp: bool) -> "Deferred[None] | None":
        if not _HELO_NAME.match(argument):
            if not lenient_greeting(self.config, self.client_address):
                self.error(501, "5.5.4", f"Syntax: {'EHLO' if esmtp else 'HELO'} hostname")
                return None
            log.info("inbound client {client}: {verb} with the name {name!r} accepted (a "
                     "device in relay.allow_networks)", client=self.client_address,
                     verb="EHLO" if esmtp else "HELO", name=argument[:100])
            argument = argument[:255]
        refusal = decided(self.factory.handler.helo(session_of(self), argument),
                          self.clock, "EHLO" if esmtp else "HELO", self.client_address)
        if isinstance(refusal, Deferred):
            return refusal.addCallback(self._helo_decided, argument, esmtp)
        self._helo_decided(refusal, argument, esmtp)
        return None

    def _helo_decided(self, refusal: Refusal | None, argument: str, esmtp: bool) -> None:
        if self.state == CLOSED:
            return
        if refusal is not None:
            self.refuse(refusal)
            return
        self._drop_transaction("new EHLO")
        if self.helo is None:  # the session's first greeting moves it forward, no other
            self._useful_at = self.clock.seconds()
        self.helo, self.esmtp = argument, esmtp
        hostname = self.config.server.hostname
        if not esmtp:
            self.write_lines(250, [hostname])
            return
        lines = [hostname, "PIPELINING", f"SIZE {largest_route_size(self.config)}",
                 "8BITMIME", "ENHANCEDSTATUSCODES", "SMTPUTF8"]
        if self._starttls_available():
            lines.append("STARTTLS")
        if self._auth_advertised():
            lines.append("AUTH " + " ".join(MECHANISMS))
        lines.append("HELP")
        self.write_lines(250, lines)

    def _starttls_available(self) -> bool:
        return self.tls_options is not None and not self.tls

    def _auth_advertised(self) -> bool:
        return (self.checker.offered and self.user is None
                and (self.tls or auth_without_tls(self.config, self.factory.listener,
                                                  self.client_address)))

    def do_NOOP(self, argument: str) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_RSET(self, argument: str) -> None:
        self._drop_transaction("RSET")
        self.reply(250, "2.0.0", "Ok")

    def do_QUIT(self, argument: str) -> None:
        self.reply(221, "2.0.0", "Bye")
        self.close()

    def do_VRFY(self, argument: str) -> None:
        self.reply(252, "2.5.2", "Cannot VRFY user, but will accept message and attempt "
                   "delivery")

    def do_EXPN(self, argument: str) -> None:
        self.reply(502, "5.5.1", "EXPN not available")

    def do_HELP(self, argument: str) -> None:
        self.reply(214, "2.0.0", "Commands: EHLO HELO STARTTLS AUTH MAIL RCPT DATA RSET "
                   "NOOP VRFY HELP QUIT\nxrelay relays mail from this network to the "
                   "organisation's mail service")

    def do_BDAT(self, argument: str) -> None:
        self.error(502, "5.5.1", "BDAT not available; use DATA")

    def do_STARTTLS(self, argument: str) -> None:
        if self.tls_options is None or self.factory.implicit_tls:
            self.error(502, "5.5.1", "STARTTLS not available")
            return
        if self.tls:
            self.error(503, "5.5.1", "TLS already active")
            return
        if argument:
            self.error(501, "5.5.4", "Syntax: STARTTLS")
            return
        self.reply(220, "2.0.0", "Ready to start TLS")
        dropped = self.lines.clear()
        if dropped:
            # RFC 3207 section 6 (and CVE-2011-0411): bytes sent before the handshake
            # are not protected by it and must not be taken as commands after it.
            log.warn("inbound client {client} pipelined {count} bytes after STARTTLS; "
                     "discarded", client=self.client_address, count=dropped)
        self.transport.startTLS(self.tls_options)
        self.tls = True
        # A new session: everything learnt before TLS is forgotten (RFC 3207 4.2).
        self.helo, self.esmtp, self.user = None, False, None
        self._drop_transaction("STARTTLS")
