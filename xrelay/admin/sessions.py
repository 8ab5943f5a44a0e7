"""
Admin page sessions: who has signed in, and the CSRF token of each session.

A session is a random identifier in an C{HttpOnly}, C{SameSite=Strict} cookie that maps
to a server-side record; nothing about the session is kept in the browser.  Every
visitor gets a session (so the sign-in form itself carries a CSRF token); signing in
replaces the identifier, so an identifier planted before sign-in is worthless after it.

Times come from the C{clock} given (a reactor or L{task.Clock}), never from the wall
clock directly, so expiry is tested without waiting.  This module never sees or stores a
password.
"""

from __future__ import annotations

import hmac
import secrets
from typing import Any

import attrs

__all__ = ["Session", "SessionStore", "COOKIE_NAME", "cookie_name"]

COOKIE_NAME = "xrelay_admin"


def cookie_name(base: str, port: int, secure: bool) -> str:
    """
    The name a cookie of the admin site goes by.  Cookies are per host, not per port
    (RFC 6265 8.5): without a name of its own, the admin page's session on
    C{127.0.0.1:8025} would be overwritten by, and mixed up with, another local web
    application's cookie of the same name.  Over TLS the C{__Host-} prefix makes the
    browser keep it host-only, C{Secure} and C{Path=/} whoever tries to set it
    (RFC 6265bis 4.1.3.2); over plain HTTP the listener's port is in the name.  Either
    way the cookie carries no C{Domain}, so it is host-only.
    """
    return f"__Host-{base}" if secure else f"{base}_{port}"

#: An idle session ends after this many seconds; any session after MAX_AGE.
IDLE_TIMEOUT = 30 * 60.0
MAX_AGE = 12 * 3600.0
#: More anonymous sessions (visitors before sign-in) than this and the oldest of them
#: are dropped.  Signed-in sessions have a budget of their own, so that a flood of
#: anonymous requests cannot push a signed-in operator out.
MAX_SESSIONS = 1000
#: More signed-in sessions than this and the oldest signed-in one is dropped.
MAX_SIGNED_IN = 100


@attrs.define
class Session:
    identifier: str = attrs.field(repr=False)
    csrf_token: str = attrs.field(repr=False)
    created: float
    last_seen: float
    authenticated: bool = False
    #: A short message shown once on the next page (e.g. "entry retried").
    notice: str | None = None

    def csrf_matches(self, candidate: str | None) -> bool:
        """Constant-time comparison with the session's token."""
        if not candidate:
            return False
        return hmac.compare_digest(candidate.encode("utf-8", "replace"),
                                   self.csrf_token.encode("ascii"))


@attrs.define
class SessionStore:
    clock: Any
    _sessions: dict[str, Session] = attrs.field(factory=dict, repr=False)

    def get(self, identifier: str | None) -> Session | None:
        """The live session with this identifier, touched; None if unknown or expired."""
        if not identifier:
            return None
        session = self._sessions.get(identifier)
        if session is None:
            return None
        now = self.clock.seconds()
        if now - session.last_seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
            del self._sessions[identifier]
            return None
        session.last_seen = now
        return session

    def new(self) -> Session:
        """A session for an anonymous visitor (the sign-in form's CSRF token)."""
        self._make_room(authenticated=False, budget=MAX_SESSIONS)
        return self._add(authenticated=False)

    def authenticate(self, session: Session) -> Session:
        """Signed in: the same visitor continues under a new identifier and token."""
        self._sessions.pop(session.identifier, None)
        self._make_room(authenticated=True, budget=MAX_SIGNED_IN)
        return self._add(authenticated=True)

    def _add(self, authenticated: bool) -> Session:
        now = self.clock.seconds()
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), now, now,
                          authenticated=authenticated)
        self._sessions[session.identifier] = session
        return session

    def _make_room(self, authenticated: bool, budget: int) -> None:
        """Drop expired sessions, then the least recently seen of this kind over budget."""
        now = self.clock.seconds()
        for identifier, session in list(self._sessions.items()):
            if now - session.last_seen > IDLE_TIMEOUT or now - session.created > MAX_AGE:
                del self._sessions[identifier]
        kind = [s for s in self._sessions.values() if s.authenticated == authenticated]
        if len(kind) < budget:
            return
        kind.sort(key=lambda s: s.last_seen)
        for session in kind[: len(kind) - budget + 1]:
            del self._sessions[session.identifier]

    def count(self, authenticated: bool) -> int:
        """Live sessions of one kind (for tests and the memory bound)."""
        return sum(1 for s in self._sessions.values() if s.authenticated == authenticated)

    def end(self, session: Session) -> None:
        self._sessions.pop(session.identifier, None)
