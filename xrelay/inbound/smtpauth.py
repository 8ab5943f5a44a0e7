"""
The AUTH command and the SASL exchange of the inbound protocol (a mixin of
L{xrelay.inbound.protocol.ESMTPServer}): TLS first, caps and back-off on failures, one
uniform reply for a wrong user and a wrong password.

This module must never log, echo or keep a SASL response line or a password, and must
never say whether a user name exists.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from xrelay.config import UserConfig
from xrelay.inbound.auth import (
    LOGIN_PASSWORD_PROMPT,
    LOGIN_USERNAME_PROMPT,
    MECHANISMS,
    MalformedResponse,
    decode_response,
    decode_text,
    parse_plain,
)
from xrelay.inbound.credentials import TemporaryAuthFailure
from xrelay.inbound.leniency import auth_without_tls
from xrelay.inbound.lines import Line
from xrelay.inbound.states import (
    AUTH_LOGIN_PASSWORD,
    AUTH_LOGIN_USER,
    AUTH_PLAIN,
    CLOSED,
    COMMAND,
)

if TYPE_CHECKING:
    # ESMTPServer inherits from this mixin: it is checked against its surface.
    from xrelay.inbound.surface import ServerSurface as _Base
else:
    _Base = object

__all__ = ["AuthCommands"]

log = Logger()


class AuthCommands(_Base):
    """C{AUTH PLAIN} and C{AUTH LOGIN}, for L{ESMTPServer}."""

    def do_AUTH(self, argument: str) -> "Deferred[Any] | None":
        if not self.checker.offered:
            self.error(502, "5.5.1", "AUTH not available")
            return None
        if not self.tls and not auth_without_tls(self.config, self.factory.listener,
                                                   self.client_address):
            self._refuse_auth_without_tls()
            return None
        if self.helo is None:
            self.error(503, "5.5.1", "Send EHLO first")
            return None
        if self.user is not None:
            self.error(503, "5.5.1", "Already authenticated")
            return None
        if self.transaction is not None:
            self.error(503, "5.5.1", "AUTH not permitted during a mail transaction")
            return None
        if self.factory.auth_failures.blocked(self.client_address, self.clock.seconds()):
            log.warn("inbound client {client}: AUTH refused, too many failures from this "
                     "address", client=self.client_address)
            self.reply(421, "4.7.0", "Too many failed authentication attempts")
            self.close()
            return None
        mechanism, _, initial = argument.partition(" ")
        mechanism, initial = mechanism.upper(), initial.strip(" ")
        if not mechanism:
            self.error(501, "5.5.2", "Syntax: AUTH mechanism [initial-response]")
            return None
        if mechanism not in MECHANISMS:
            self.error(504, "5.5.4", "Unrecognised authentication mechanism; use "
                       + " or ".join(MECHANISMS))
            return None
        if mechanism == "PLAIN":
            if not initial:
                self.state = AUTH_PLAIN
                self.write_lines(334, [""])
                return None
            return self._plain(initial)
        if initial:
            try:
                self._login_name = decode_text(decode_response(initial))
            except MalformedResponse:
                self.error(501, "5.5.2", "Cannot decode AUTH response")
                return None
            self.state = AUTH_LOGIN_PASSWORD
            self.write_lines(334, [LOGIN_PASSWORD_PROMPT])
            return None
        self.state = AUTH_LOGIN_USER
        self.write_lines(334, [LOGIN_USERNAME_PROMPT])
        return None

    def _refuse_auth_without_tls(self) -> None:
        """
        530 for AUTH before TLS, naming what the device can do: STARTTLS only where
        this listener offers it, and the settings that decide (a device's error page
        shows this text; its administrator looks for the setting).
        """
        listener = self.factory.listener
        setting = ("server.require_tls_for_auth = true; for devices in "
                   "relay.allow_networks that cannot do TLS set auth_without_tls = "
                   f"\"trusted\" on listener {listener.endpoint}")
        if self._starttls_available():
            text = f"Must issue a STARTTLS command first ({setting})"
        else:
            text = (f"Authentication requires TLS and this listener offers no STARTTLS "
                    f"({setting}, or connect to a TLS port)")
        log.warn("inbound client {client}: AUTH without TLS refused on {listener}: "
                 "{setting}", client=self.client_address, listener=listener.endpoint,
                 setting=setting)
        self.error(530, "5.7.0", text)

    def _auth_response(self, line: Line) -> "Deferred[Any] | None":
        """A SASL response line.  Never logged: it carries the password."""
        state, self.state = self.state, COMMAND
        if line.overlong:
            self.error(500, "5.5.2", "Line too long")
            return None
        try:
            text = line.content.decode("ascii").strip()
        except UnicodeDecodeError:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        if text == "*":
            self.error(501, "5.7.0", "Authentication cancelled")
            return None
        if state == AUTH_PLAIN:
            return self._plain(text)
        try:
            value = decode_text(decode_response(text))
        except MalformedResponse:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        if state == AUTH_LOGIN_USER:
            self._login_name = value
            self.state = AUTH_LOGIN_PASSWORD
            self.write_lines(334, [LOGIN_PASSWORD_PROMPT])
            return None
        name, self._login_name = self._login_name, ""
        return self._check(name, value, "LOGIN")

    def _plain(self, text: str) -> "Deferred[Any] | None":
        try:
            name, password = parse_plain(decode_response(text))
        except MalformedResponse:
            self.error(501, "5.5.2", "Cannot decode AUTH response")
            return None
        return self._check(name, password, "PLAIN")

    def _check(self, name: str, password: str, mechanism: str) -> "Deferred[Any] | None":
        failures = self.factory.auth_failures
        # Counted from now, not when the slow check ends: concurrent guesses from one
        # address cannot all start under the limit.
        attempt = failures.begin(self.client_address, name, self.clock.seconds())
        if attempt is None:
            log.warn("inbound client {client}: AUTH refused, too many failures from this "
                     "address", client=self.client_address)
            self.reply(421, "4.7.0", "Too many failed authentication attempts")
            self.close()
            return None
        # maybeDeferred: a checker that raises must still end the attempt in flight.
        d = defer.maybeDeferred(self.checker.check, name, password)

        def finished(user: Any) -> Any:
            if isinstance(user, Failure) and user.check(TemporaryAuthFailure):
                failures.abandon(attempt)  # the checker could not decide: nobody's fault
                return user
            ok = isinstance(user, UserConfig)
            # Recorded even when the client has gone meanwhile: hanging up early must
            # not make a guess free.
            failures.finish(attempt, ok, self.clock.seconds())
            return user

        d.addBoth(finished)
        if attempt.delay:
            # The back-off: an address that keeps failing, or an account others keep
            # failing for, waits longer for every answer (right or wrong, so the wait
            # itself tells nothing).
            d.addCallback(lambda user: defer_later(self.clock, attempt.delay, user))
        return d.addCallbacks(self._checked, self._undecided, callbackArgs=(mechanism, name))

    def _checked(self, user: UserConfig | None, mechanism: str, name: str = "") -> None:
        if self.state == CLOSED:
            return
        if user is not None:
            self.user = user
            log.info("inbound client {client} authenticated as {user} ({mechanism})",
                     client=self.client_address, user=user.name, mechanism=mechanism)
            self.factory.devices.authenticated(self, mechanism)
            self.reply(235, "2.7.0", "Authentication successful")
            return
        self.auth_failures += 1
        # The name tried, never the password: which device has which wrong setting.
        log.warn("inbound client {client}: authentication failed for user {user} "
                 "({mechanism}), {count} on this connection", client=self.client_address,
                 user=repr(name[:64]), mechanism=mechanism, count=self.auth_failures)
        self.factory.events.auth_failed(self.factory.listener.endpoint)
        if self.auth_failures >= self.config.server.max_auth_failures:
            self.factory.devices.auth_failed(self, name, mechanism, 421, "4.7.0",
                                             "Too many failed authentication attempts")
            self.reply(421, "4.7.0", "Too many failed authentication attempts")
            self.close()
            return
        self.factory.devices.auth_failed(self, name, mechanism, 535, "5.7.8",
                                         "Authentication credentials invalid")
        self.reply(535, "5.7.8", "Authentication credentials invalid")

    def _undecided(self, failure: Failure) -> None:
        """
        The checker could not decide (an embedder's directory is down): a temporary
        failure that counts against nobody (RFC 4954: 454 4.7.0).
        """
        failure.trap(TemporaryAuthFailure)
        if self.state != CLOSED:
            self.reply(454, "4.7.0", "Temporary authentication failure; try again later")


def defer_later(clock: Any, delay: float, value: Any) -> "Deferred[Any]":
    """Fire with C{value} after C{delay} seconds of C{clock}."""
    d: Deferred[Any] = Deferred()
    clock.callLater(delay, d.callback, value)
    return d
