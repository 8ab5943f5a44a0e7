"""
Token sources for tests of code that uses a transport: a scripted one, and one that gets
real tokens from the sandbox identity platform (or any OAuth 2.0 token endpoint) with
the client credentials grant over verified HTTPS.

Public test doubles, like C{treq.testing}: for xrelay's tests and users' own.  They keep
tokens in memory only and never log them; they must not be used in production (no cache
on disk, no refresh ahead of expiry, no sign-in flows).
"""

from __future__ import annotations

from typing import Any

import attrs
import treq
from twisted.internet.defer import Deferred, ensureDeferred, fail, succeed
from twisted.web.client import Agent
from zope.interface import implementer

from xrelay.interfaces import ITokenSource
from xrelay.records import TokenStatus
from xrelay.tokens.status import TokenState
from xrelay.transport.tls import https_policy


@implementer(ITokenSource)
@attrs.define
class ScriptedTokenSource:
    """
    Hands out the tokens (or raises the exceptions) of C{script} in order: the current
    token is reused until L{token_rejected} drops it.

    @ivar rejected: the tokens the transport reported as refused, in order.
    @ivar calls: how many times L{access_token} was called.
    """

    script: list[Any]
    account_name: str = "test"
    rejected: list[str] = attrs.field(factory=list, repr=False)
    calls: int = 0
    _current: str | None = attrs.field(default=None, repr=False)

    def access_token(self) -> Deferred[str]:
        self.calls += 1
        if self._current is None:
            if not self.script:
                return fail(RuntimeError("the scripted token source ran out of tokens"))
            item = self.script.pop(0)
            if isinstance(item, BaseException):
                return fail(item)
            self._current = item
        return succeed(self._current)

    def token_rejected(self, token: str) -> None:
        self.rejected.append(token)
        if token == self._current:
            self._current = None

    def status(self) -> TokenStatus:
        """As L{ITokenSource} promises: a token in hand (C{ok}) or none yet."""
        return TokenStatus(self.account_name, _state(self._current))


@implementer(ITokenSource)
@attrs.define
class ClientCredentialsTokenSource:
    """
    Fetches app-only tokens with the client credentials grant, e.g. from the sandbox::

        ClientCredentialsTokenSource(
            f"{sb.authority}/{tenant}/oauth2/v2.0/token", client_id, secret,
            "https://outlook.office365.com/.default", sb.ca_file, reactor)

    @ivar fetched: how many tokens it fetched.
    @ivar first: if set, handed out before fetching anything (a stale token, for tests
        of the refresh after a 535).
    """

    token_url: str
    client_id: str
    client_secret: str = attrs.field(repr=False)
    scope: str
    ca_file: str | None
    reactor: Any
    account_name: str = "test"
    first: str | None = attrs.field(default=None, repr=False)
    fetched: int = 0
    rejected: list[str] = attrs.field(factory=list, repr=False)
    _current: str | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        self._current = self.first

    def access_token(self) -> Deferred[str]:
        if self._current is not None:
            return succeed(self._current)
        return ensureDeferred(self._fetch())

    async def _fetch(self) -> str:
        http = treq.client.HTTPClient(Agent(self.reactor, https_policy(self.ca_file)))
        response = await http.post(self.token_url, data={
            "grant_type": "client_credentials", "client_id": self.client_id,
            "client_secret": self.client_secret, "scope": self.scope,
        }, timeout=30)
        body = await response.json()
        if response.code != 200 or "access_token" not in body:
            raise RuntimeError(f"token endpoint answered {response.code}: "
                               f"{body.get('error', '')}")
        self.fetched += 1
        self._current = str(body["access_token"])
        return self._current

    def token_rejected(self, token: str) -> None:
        self.rejected.append(token)
        if token == self._current:
            self._current = None

    def status(self) -> TokenStatus:
        """As L{ITokenSource} promises: a token in hand (C{ok}) or none yet."""
        return TokenStatus(self.account_name, _state(self._current),
                           flow="client_credentials")


def _state(current: str | None) -> str:
    return (TokenState.FRESH if current is not None else TokenState.EMPTY).value
