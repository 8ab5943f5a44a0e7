"""
SMTP AUTH through twisted.cred: the [[users]] table as a checker, and an embedding
program's own checker behind the same protocol (AUTH offered without [[users]], its
users relayed with the senders of a [[users]] entry that names none, its outages a 454).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.cred.checkers import ICredentialsChecker, InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet.defer import fail
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.inbound.harness import (
    NOWHERE,
    SCANNER_PASSWORD,
    connect,
    ehlo,
    inline,
    make_config,
    plain,
    users,
)
from xrelay.inbound.credentials import ConfiguredUsersChecker, UserRealm, authenticator_for


def failure_of(d: Any) -> Any:
    failures: list[Any] = []
    d.addErrback(failures.append)
    return failures[0] if failures else None


def test_configured_users_checker_is_a_cred_checker() -> None:
    calls: list[Any] = []

    def counting(f: Any, *args: Any) -> Any:
        calls.append(f)
        return inline(f, *args)

    checker = ConfiguredUsersChecker(users(), counting)
    assert verifyObject(ICredentialsChecker, checker)
    ok: list[Any] = []
    checker.requestAvatarId(UsernamePassword(b"scanner", SCANNER_PASSWORD.encode())
                            ).addCallback(ok.append)
    assert ok == [b"scanner"]
    wrong = failure_of(checker.requestAvatarId(UsernamePassword(b"scanner", b"nope")))
    unknown = failure_of(checker.requestAvatarId(UsernamePassword(b"nobody", b"nope")))
    assert wrong.check(UnauthorizedLogin) and unknown.check(UnauthorizedLogin)
    # The unknown name cost a password check too: its timing tells nothing.
    assert len(calls) == 3


def test_realm_gives_configured_senders_or_the_default() -> None:
    realm = UserRealm(users())
    from xrelay.inbound.credentials import IRelayUser

    _, scanner, _ = realm.requestAvatar("scanner", None, IRelayUser)
    _, stranger, _ = realm.requestAvatar(b"ldap-user", None, IRelayUser)
    assert scanner == users()[0]
    assert stranger.name == "ldap-user" and stranger.senders[0].text == "*"


@pytest_twisted.ensureDeferred
async def test_an_embedders_checker_serves_users_not_in_the_configuration(relay, certs):
    directory = InMemoryUsernamePasswordDatabaseDontUse(copier=b"s3cret")
    config = make_config(certs, allow_networks=NOWHERE, with_users=False)
    r = await relay(config, credentials_checker=directory)
    client = await connect(r.port)
    await client.command(b"EHLO client.test")
    await client.command(b"STARTTLS")
    client.start_tls(certs)
    assert "AUTH PLAIN LOGIN" in await ehlo(client)
    assert await client.command(b"AUTH PLAIN " + plain("copier", "wrong")) == (
        "535 5.7.8 Authentication credentials invalid")
    assert await client.command(b"AUTH PLAIN " + plain("copier", "s3cret")) == (
        "235 2.7.0 Authentication successful")
    assert await client.command(b"MAIL FROM:<copier@example.com>") == "250 2.1.0 Ok"
    await client.command(b"RCPT TO:<alice@example.org>")
    await client.command(b"DATA")
    assert (await client.command(b"scan\r\n.\r\n")).startswith("250 2.0.0")
    [(envelope, _)] = r.spool.messages()
    assert envelope.authenticated_user == "copier"


@implementer(ICredentialsChecker)
class DirectoryDown:
    credentialInterfaces = (IUsernamePassword,)

    def requestAvatarId(self, credentials: Any) -> Any:
        return fail(ConnectionRefusedError("ldap://directory: connection refused"))


@pytest_twisted.ensureDeferred
async def test_a_checker_that_cannot_decide_is_a_temporary_failure(relay, certs):
    r = await relay(make_config(certs, allow_networks=NOWHERE, with_users=False),
                    credentials_checker=DirectoryDown())
    client = await connect(r.port)
    await client.command(b"EHLO client.test")
    await client.command(b"STARTTLS")
    client.start_tls(certs)
    await ehlo(client)
    assert await client.command(b"AUTH PLAIN " + plain("copier", "s3cret")) == (
        "454 4.7.0 Temporary authentication failure; try again later")
    # Nothing counted against the client: it may try again on the same connection.
    assert r.service.auth_failures.delay(client.transport.getHost().host, 0) == 0


def test_without_users_or_checker_auth_is_not_offered() -> None:
    assert not authenticator_for((), inline).offered
    assert authenticator_for(users(), inline).offered
    with pytest.raises(NotImplementedError):
        UserRealm(()).requestAvatar("x", None, object)
