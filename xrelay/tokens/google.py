"""
Google's OAuth 2.0 grants for Gmail / Workspace accounts, with treq: the refresh token
grant that brings every access token, and the browser sign-in ("OAuth 2.0 for Web Server
Applications": authorization code with PKCE S256) that brings the refresh token.

The refresh token comes from the operator's C{refresh_token_file} or from a sign-in on
the admin page; the newest one wins.  A sign-in (or a refresh token Google rotated) is
kept in the account's encrypted cache file together with the file's signature at that
moment, and is used as long as the file has not changed since; writing the file again
makes the file's token the one used.  Each access token comes from
C{POST {authority}/token}.  HTTPS trusts the public roots plus C{ca_file}, explicitly.

Never log or raise the refresh token, the access token, the authorization code, the PKCE
verifier or the client secret: errors are Google's C{error} and C{error_description}.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from base64 import urlsafe_b64decode, urlsafe_b64encode
from typing import Any
from urllib.parse import urlencode

import attrs
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.error import ConnectError, DNSLookupError, TimeoutError
from twisted.web.client import Agent, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.logger import Logger
from zope.interface import implementer

from xrelay.config import GOOGLE_AUTHORIZATION_URL, AccountConfig
from xrelay.tokens.cache import AccountCache
from xrelay.tokens.errors import GrantRefused, GrantUnavailable, SignInFailed
from xrelay.tokens.microsoft import RunBlocking
from xrelay.tokens.source import GrantResult, ITokenGrant
from xrelay.records import TokenStatus
from xrelay.tokens.status import TokenState
from xrelay.tokens.trust import REQUEST_TIMEOUT, https_policy

log = Logger(namespace="xrelay.tokens.google")

GMAIL_SCOPE = "https://mail.google.com/"
#: What the browser sign-in asks for: Gmail, plus the signed-in address (an id_token
#: with C{email}) so a sign-in as the wrong Google account is refused at once.
SIGN_IN_SCOPE = f"{GMAIL_SCOPE} openid email"
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
        if self.account.refresh_token_file:
            return (f"use Sign in with Google on the admin page as {self.account.user}, "
                    f"or put a new refresh token for {self.account.user} in "
                    f"{self.account.refresh_token_file} (Google refused the current one)")
        return f"use Sign in with Google on the admin page as {self.account.user}"

    @property
    def authorization_url(self) -> str:
        return self.account.authorization_url or GOOGLE_AUTHORIZATION_URL

    @property
    def token_url(self) -> str:
        return f"{self.account.authority.rstrip('/')}/token"

    def _client(self) -> HTTPClient:
        if self._http is None:
            agent = Agent(self.reactor, contextFactory=https_policy(self.bundle))
            self._http = HTTPClient(agent)
        return self._http

    def credentials_changed(self) -> bool:
        if self.cache.changed():
            return True
        if "secret_file" in self._meta and _signature(
                self.account.client_secret_file) != self._meta["secret_file"]:
            return True  # a corrected client secret: tried within seconds, as Microsoft's
        return _signature(self.account.refresh_token_file) != self._meta.get("rt_file")

    def explain(self, reason: str) -> tuple[TokenState, str]:
        """
        The refusal's state and fix.  Google's token endpoint answers a wrong client
        secret with C{invalid_client: Unauthorized} and an unknown client with
        C{invalid_client: The OAuth client was not found.}
        (https://developers.google.com/identity/protocols/oauth2/web-server#exchange-authorization-code,
        https://datatracker.ietf.org/doc/html/rfc6749#section-5.2): no new refresh token
        or sign-in helps there, the client's id and secret must be right.
        """
        secret_file = self.account.client_secret_file or "client_secret_file"
        client = self.account.client_id or "?"
        if reason.startswith("invalid_client"):
            if "not found" in reason.lower():
                return TokenState.APP_NOT_FOUND, (
                    f"Google knows no OAuth client {client}: check client_id against "
                    "Google Cloud console > APIs & Services > Credentials (the client "
                    "may have been deleted)")
            return TokenState.CLIENT_SECRET_REJECTED, (
                f"Google refused the client secret of OAuth client {client}: put the "
                "client secret from Google Cloud console > APIs & Services > "
                f"Credentials > {client} into {secret_file}; xrelay reads it again by "
                "itself within seconds (or run `xrelay reload`)")
        return TokenState.NEEDS_SIGN_IN, self.hint

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
            raise GrantRefused(f"no sign-in for {self.account.user} is stored")
        try:
            with open(self.account.refresh_token_file, encoding="utf-8") as f:
                return f.read().strip(), signature
        except OSError as e:
            raise GrantRefused(f"cannot read {self.account.refresh_token_file} "
                               f"({e.strerror})") from None

    def _keep_rotated(self, refresh_token: str, signature: list[int] | None) -> None:
        with self.cache.locked():
            data = self.cache.read()
            data["google"] = dict(data.get("google") or {}, refresh_token=refresh_token,
                                  rt_file=signature)
            self.cache.write(data)

    def _keep_signed_in(self, refresh_token: str, expires_at: float) -> None:
        """(blocking) Store a browser sign-in: it wins over the file as it is now."""
        with self.cache.locked():
            data = self.cache.read()
            now = time.time()
            data["google"] = {"refresh_token": refresh_token, "signed_in": now,
                              "rt_file": _signature(self.account.refresh_token_file)}
            data["meta"] = dict(data.get("meta") or {}, state="ok", last_refresh=now,
                                last_error=None, hint=None, expires_at=expires_at,
                                recorded=now)
            self.cache.write(data)

    @inlineCallbacks
    def fetch(self, force: bool) -> Any:
        refresh_token, signature = yield self.run(self._refresh_token)
        code, result = yield self._token_request(
            {"grant_type": "refresh_token", "refresh_token": refresh_token})
        if code >= 500 or code == 429:
            raise GrantUnavailable(f"{self.token_url} answered HTTP {code}")
        if code != 200 or "access_token" not in result:
            reason = _reason(result, code)
            if result.get("error") in PERMANENT_ERRORS:
                raise GrantRefused(reason)
            raise GrantUnavailable(reason)
        if result.get("refresh_token") and result["refresh_token"] != refresh_token:
            yield self.run(self._keep_rotated, result["refresh_token"], signature)
        return GrantResult(result["access_token"], float(result.get("expires_in", 3599)))

    @inlineCallbacks
    def _token_request(self, form: dict[str, str]) -> Any:
        """
        POST C{form} (plus the client's id and secret) to the token endpoint: fires with
        (HTTP status, JSON body); L{GrantUnavailable} when Google cannot be reached.
        """
        assert self.account.client_secret_file is not None
        secret = yield self.run(_read_secret, self.account.client_secret_file)
        self._meta["secret_file"] = _signature(self.account.client_secret_file)
        body = urlencode(dict(form, client_id=self.account.client_id or "",
                              client_secret=secret)).encode("ascii")
        try:
            response = yield self._client().post(
                self.token_url, data=body, timeout=REQUEST_TIMEOUT,
                headers=Headers({"Content-Type": ["application/x-www-form-urlencoded"],
                                 "Accept": ["application/json"]}))
            raw = yield response.content()
        except (ConnectError, DNSLookupError, TimeoutError, ResponseFailed, OSError) as e:
            raise GrantUnavailable(f"cannot reach {self.token_url} "
                                   f"({type(e).__name__})") from None
        except Exception as e:  # e.g. treq's CancelledError on timeout
            log.failure("Token request for account {account} failed",
                        account=self.account.name)
            raise GrantUnavailable(f"token request to {self.token_url} failed "
                                   f"({type(e).__name__})") from None
        return response.code, _json(raw)

    # -- browser sign-in (authorization code with PKCE) -----------------------------

    def initiate_auth_code(self, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        """
        The URL to send the browser to, and the flow state to keep server side until
        it comes back to C{redirect_uri}.  C{access_type=offline} with
        C{prompt=consent} makes Google send a refresh token even if this client was
        allowed before (a replacement for a revoked one).
        """
        verifier = secrets.token_urlsafe(64)  # 86 characters of [A-Za-z0-9_-]
        challenge = urlsafe_b64encode(hashlib.sha256(verifier.encode("ascii")).digest())
        state = secrets.token_urlsafe(24)
        query = urlencode({
            "response_type": "code", "client_id": self.account.client_id or "",
            "redirect_uri": redirect_uri, "scope": SIGN_IN_SCOPE, "state": state,
            "code_challenge": challenge.rstrip(b"=").decode("ascii"),
            "code_challenge_method": "S256", "access_type": "offline",
            "prompt": "consent", "login_hint": self.account.user,
        })
        url = f"{self.authorization_url}?{query}"
        flow = {"provider": "google", "account": self.account.name, "state": state,
                "code_verifier": verifier, "redirect_uri": redirect_uri, "auth_uri": url,
                "used": False}
        return url, flow

    @inlineCallbacks
    def complete_auth_code(self, flow: dict[str, Any], params: dict[str, str]) -> Any:
        """
        Redeem the browser's return (the redirect's query parameters) for tokens, once:
        a flow is spent by its first return, whatever the outcome.  Fires with the
        L{GrantResult}; the refresh token is then in the encrypted cache.  Fails with
        L{SignInFailed} (state mismatch, declined, wrong Google account, no Gmail
        access granted, Google refused the code or could not be reached).
        """
        name = self.account.name
        if flow.get("provider") != "google" or flow.get("account") != name:
            raise SignInFailed(name, "the sign-in reply does not belong to this sign-in "
                               "(state mismatch); start again")
        if flow.get("used"):
            raise SignInFailed(name, "this sign-in was already used; start again")
        flow["used"] = True
        if not secrets.compare_digest(str(params.get("state", "")).encode(),
                                      str(flow["state"]).encode()):
            raise SignInFailed(name, "the sign-in reply does not belong to this sign-in "
                               "(state mismatch); start again")
        if params.get("error"):
            raise SignInFailed(name, f"Google did not sign in: {_reason(params, 400)}")
        if not params.get("code"):
            raise SignInFailed(name, "Google's reply has no authorization code")
        try:
            code, result = yield self._token_request({
                "grant_type": "authorization_code", "code": params["code"],
                "code_verifier": flow["code_verifier"],
                "redirect_uri": flow["redirect_uri"]})
        except GrantUnavailable as e:
            raise SignInFailed(name, f"redeeming the code failed: {e.reason}") from None
        if code != 200 or "access_token" not in result:
            raise SignInFailed(name, f"redeeming the code failed: {_reason(result, code)}")
        granted = str(result.get("scope") or "").split()
        if GMAIL_SCOPE not in granted:
            raise SignInFailed(name, f"the sign-in did not allow sending mail ({GMAIL_SCOPE});"
                               " sign in again and tick \"Read, compose, send and "
                               "permanently delete all your email from Gmail\"")
        who = _signed_in_as(result.get("id_token"))
        if who is not None and who.lower() != self.account.user.lower():
            raise SignInFailed(name, f"signed in as {who}, but the account is configured "
                               f"for {self.account.user}; sign in as {self.account.user}")
        if not result.get("refresh_token"):
            raise SignInFailed(name, "Google sent no refresh token; remove the app's "
                               "access at https://myaccount.google.com/permissions and "
                               "sign in again")
        expires_in = float(result.get("expires_in", 3599))
        yield self.run(self._keep_signed_in, result["refresh_token"],
                       time.time() + expires_in)
        log.info("Account {account} signed in with Google as {user}", account=name,
                 user=self.account.user)
        return GrantResult(result["access_token"], expires_in)


def _reason(result: dict[str, Any], code: int) -> str:
    """Google's error in one line: C{invalid_grant: Bad Request}."""
    error = str(result.get("error") or f"HTTP {code}")
    description = str(result.get("error_description") or "").strip().splitlines()
    return f"{error}: {description[0][:300]}" if description else error


def _signed_in_as(id_token: Any) -> str | None:
    """
    The C{email} claim of the id_token from the token endpoint.  Not verified: it came
    straight from Google over HTTPS in answer to our client secret, which is what
    Google's documentation asks for in that case.
    """
    if not isinstance(id_token, str) or id_token.count(".") != 2:
        return None
    payload = id_token.split(".")[1]
    try:
        claims = json.loads(urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (ValueError, UnicodeDecodeError):
        return None
    email = claims.get("email") if isinstance(claims, dict) else None
    return str(email) if email else None


def _read_secret(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read().strip()


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
