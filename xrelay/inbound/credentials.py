"""
SMTP AUTH through C{twisted.cred}: who a user name and password belong to.

The inbound protocol asks one question, "which relay user is this?", of an
L{Authenticator}; behind it sits a C{Portal} with any C{ICredentialsChecker} for
C{IUsernamePassword}.  By default that is L{ConfiguredUsersChecker}, the C{[[users]]}
table with its scrypt hashes; a program embedding xrelay brings its own (LDAP, a
database) to L{xrelay.service.makeService}.  L{UserRealm} turns the authenticated name
into the L{UserConfig} the sender rules use: the C{[[users]]} entry of that name when
there is one (so an embedder can still restrict a user's senders in the configuration),
else a user whose senders are those of a C{[[users]]} entry without C{senders}
(C{"*"}: any sender an account routes).

This module must never log, return or put into an exception a password, and never let
the reply or its timing tell which user names exist.
"""

from __future__ import annotations

import os
from typing import Any, Callable

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin, UnhandledCredentials
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Interface, implementer

from xrelay.config import UserConfig
from xrelay.passwords import hash_password, verify_password

__all__ = [
    "Authenticator",
    "ConfiguredUsersChecker",
    "IRelayUser",
    "TemporaryAuthFailure",
    "UserRealm",
    "authenticator_for",
]

log = Logger()


class IRelayUser(Interface):
    """
    The avatar interface of SMTP AUTH: a L{UserConfig} (name and allowed senders).
    """


class TemporaryAuthFailure(Exception):
    """
    The checker could not decide (its directory is down): the client gets C{454 4.7.0}
    and may try again, instead of a C{535} that would make it give up or lock it out.
    """


_dummy_hash: str | None = None


def _unknown_user_hash() -> str:
    """A hash nobody knows the password of, made once: unknown users cost as much."""
    global _dummy_hash
    if _dummy_hash is None:
        _dummy_hash = hash_password(os.urandom(32).hex())
    return _dummy_hash


@implementer(ICredentialsChecker)
@attrs.define
class ConfiguredUsersChecker:
    """
    The C{[[users]]} table as a C{twisted.cred} checker.

    The scrypt check runs in C{run_blocking} (the reactor's thread pool in the service;
    tests may run it inline), and runs for unknown names too, against a throw-away hash,
    so that a wrong name and a wrong password cost the same.

    @ivar run_blocking: runs a blocking callable, returning a Deferred of its result.
    """

    users: tuple[UserConfig, ...]
    run_blocking: Callable[..., "Deferred[Any]"]
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: IUsernamePassword
                        ) -> "Deferred[bytes | tuple[()]]":  # ICredentialsChecker's type
        try:
            name = credentials.username.decode("utf-8")
            password = credentials.password.decode("utf-8")
        except (AttributeError, UnicodeDecodeError):
            return fail(UnauthorizedLogin())
        user = next((u for u in self.users if u.name == name), None)

        def verify() -> bool:
            # In the thread: even making the throw-away hash must not block the reactor.
            stored = user.password_hash if user is not None else _unknown_user_hash()
            try:
                return verify_password(password, stored)
            except ValueError:
                return False

        def decided(ok: bool) -> bytes | tuple[()]:
            if ok and user is not None:
                return user.name.encode("utf-8")  # avatar ids are bytes in twisted.cred
            raise UnauthorizedLogin()

        return self.run_blocking(verify).addCallback(decided)


@implementer(IRealm)
@attrs.define
class UserRealm:
    """Authenticated names → the L{UserConfig} whose C{senders} the policy applies."""

    users: tuple[UserConfig, ...]

    def requestAvatar(self, avatarId: Any, mind: Any, *interfaces: Any
                      ) -> tuple[Any, UserConfig, Callable[[], None]]:
        if IRelayUser not in interfaces:
            raise NotImplementedError("xrelay's realm only gives IRelayUser avatars")
        name = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else str(avatarId)
        user = next((u for u in self.users if u.name == name), None)
        if user is None:
            # A user of the embedding program's own checker: no hash here, and the
            # same senders as a [[users]] entry that names none.
            user = UserConfig(name=name, password_hash="")
        return IRelayUser, user, lambda: None


@attrs.define
class Authenticator:
    """
    What the inbound protocol calls: a name and password in, the relay user (or
    C{None} for "wrong name or password") out, through the portal.
    """

    portal: Portal
    #: Whether anyone can authenticate at all (EHLO advertises AUTH only then).
    offered: bool

    def check(self, name: str, password: str) -> "Deferred[UserConfig | None]":
        credentials = UsernamePassword(name.encode("utf-8"), password.encode("utf-8"))
        d = self.portal.login(credentials, None, IRelayUser)

        def logged_in(result: tuple[Any, UserConfig, Callable[[], None]]) -> UserConfig:
            return result[1]

        def refused(failure: Failure) -> None:
            if failure.check(UnauthorizedLogin):
                return None
            if failure.check(UnhandledCredentials):
                log.error("inbound: the credentials checker does not take "
                          "IUsernamePassword; SMTP AUTH cannot succeed")
                return None
            log.failure("inbound: the credentials checker failed; answering 454",
                        failure)
            raise TemporaryAuthFailure()

        return d.addCallbacks(logged_in, refused)


def authenticator_for(users: tuple[UserConfig, ...],
                      run_blocking: Callable[..., "Deferred[Any]"],
                      checker: ICredentialsChecker | None = None) -> Authenticator:
    """
    The authenticator of the inbound service: the embedding program's checker when
    given (AUTH is then always offered), else the C{[[users]]} table (offered when the
    table is not empty).
    """
    portal = Portal(UserRealm(users))
    portal.registerChecker(checker if checker is not None
                           else ConfiguredUsersChecker(users, run_blocking))
    return Authenticator(portal, offered=checker is not None or bool(users))
