"""
Google's refresh token grant (Gmail / Workspace accounts), with treq.

The operator supplies a refresh token (C{refresh_token_file}); each access token comes
from C{POST {authority}/token} with it.  Should Google ever send a new refresh token, it
is kept in the account's encrypted cache file and used from then on.  HTTPS trusts the
public roots plus C{ca_file}, explicitly.

Never log or raise the refresh token, the access token or the client secret: errors are
Google's C{error} and C{error_description}.
"""

from __future__ import annotations

import os
import time
from typing import Any
from urllib.parse import urlencode

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.web.client import Agent, ResponseFailed
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.config import AccountConfig
from xrelay.tokens.cache import AccountCache
from xrelay.tokens.errors import GrantRefused, GrantUnavailable
from xrelay.tokens.microsoft import RunBlocking
from xrelay.tokens.source import GrantResult, ITokenGrant
from xrelay.tokens.status import TokenStatus
from xrelay.tokens.trust import REQUEST_TIMEOUT, https_policy

log = Logger(namespace="xrelay.tokens.google")

GMAIL_SCOPE = "https://mail.google.com/"
PERMANENT_ERRORS = frozenset({"invalid_grant", "invalid_client", "unauthorized_client",
                              "invalid_scope", "access_denied"})


def _signature(path: str | None) -> list[int] | None:
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


@implementer(ITokenGrant)
@attrs.define(eq=False)
class GoogleGrant:
    """
    One Google account's refresh token grant.  File I/O runs through C{run} (the token
    thread pool); the HTTP request runs on the reactor with treq.
    """

    account: AccountConfig
    cache: AccountCache
    bundle: str
    run: RunBlocking
    reactor: Any
    _meta: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)
    _http: Any = attrs.field(init=False, default=None, repr=False)

    @property
    def hint(self) -> str:
        return (f"put a new refresh token for {self.account.user} in "
                f"{self.account.refresh_token_file} (Google refused the current one)")

    @property
    def token_url(self) -> str:
        return f"{self.account.authority.rstrip('/')}/token"

    def _client(self) -> HTTPClient:
        if self._http is None:
            agent = Agent(self.reactor, contextFactory=https_policy(self.bundle))
            self._http = HTTPClient(agent)
        return self._http

    def credentials_changed(self) -> bool:
        return self.cache.changed() or _signature(
            self.account.refresh_token_file) != self._meta.get("rt_file")

    def record(self, status: TokenStatus) -> Deferred[None]:
        def write() -> None:
            with self.cache.locked():
                data = self.cache.read()
                data.setdefault("google", {})
                data["meta"] = dict(data.get("meta") or {}, state=status.state,
                                    last_refresh=status.last_refresh,
                                    last_error=status.last_error, hint=status.hint,
                                    expires_at=status.expires_at, recorded=time.time())
                self.cache.write(data)
        return self.run(write)

    def _refresh_token(self) -> tuple[str, list[int] | None]:
        """(blocking) The refresh token to use: a rotated one from the cache, unless the
        operator has put a newer one into the file since."""
        with self.cache.locked():
            data = self.cache.read()
        stored = data.get("google") or {}
        signature = _signature(self.account.refresh_token_file)
        self._meta = {"rt_file": signature}
        if stored.get("refresh_token") and stored.get("rt_file") == signature:
            return stored["refresh_token"], signature
        if not self.account.refresh_token_file:
            raise GrantRefused("no refresh token is configured (refresh_token_file)")
        try:
            with open(self.account.refresh_token_file, encoding="utf-8") as f:
                return f.read().strip(), signature
        except OSError as e:
            raise GrantRefused(f"cannot read {self.account.refresh_token_file} "
                               f"({e.strerror})") from None

    def _keep_rotated(self, refresh_token: str, signature: list[int] | None) -> None:
        with self.cache.locked():
            data = self.cache.read()
            data["google"] = {"refresh_token": refresh_token, "rt_file": signature}
            self.cache.write(data)

    @inlineCallbacks
    def fetch(self, force: bool) -> Any:
        refresh_token, signature = yield self.run(self._refresh_token)
        assert self.account.client_secret_file is not None
        secret = yield self.run(_read_secret, self.account.client_secret_file)
        body = urlencode({
            "grant_type": "refresh_token", "client_id": self.account.client_id,
            "client_secret": secret, "refresh_token": refresh_token,
        }).encode("ascii")
        try:
            response = yield self._client().post(
                self.token_url, data=body, timeout=REQUEST_TIMEOUT,
                headers={"Content-Type": ["application/x-www-form-urlencoded"],
                         "Accept": ["application/json"]})
            raw = yield response.content()
        except (ConnectError, DNSLookupError, TimeoutError, ResponseFailed, OSError) as e:
            raise GrantUnavailable(f"cannot reach {self.token_url} "
                                   f"({type(e).__name__})") from None
        except Exception as e:  # e.g. treq's CancelledError on timeout
            log.failure("Token request for account {account} failed",
                        account=self.account.name)
            raise GrantUnavailable(f"token request to {self.token_url} failed "
                                   f"({type(e).__name__})") from None
        result = _json(raw)
        if response.code >= 500 or response.code == 429:
            raise GrantUnavailable(f"{self.token_url} answered HTTP {response.code}")
        if response.code != 200 or "access_token" not in result:
            error = str(result.get("error") or f"HTTP {response.code}")
            description = str(result.get("error_description") or "").strip()
            reason = f"{error}: {description}" if description else error
            if error in PERMANENT_ERRORS:
                raise GrantRefused(reason)
            raise GrantUnavailable(reason)
        if result.get("refresh_token") and result["refresh_token"] != refresh_token:
            yield self.run(self._keep_rotated, result["refresh_token"], signature)
        return GrantResult(result["access_token"], float(result.get("expires_in", 3599)))


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _json(raw: bytes) -> dict[str, Any]:
    import json
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
