"""
Microsoft identity platform grants, done by msal: client credentials (secret or
certificate), and delegated tokens (device code, authorization code with PKCE, or a
refresh token supplied by the operator) kept alive with msal's refresh tokens.

msal blocks (its constructor fetches the OpenID configuration), so every function here
that touches msal is run by the caller in the token service's own thread pool, never on
the reactor thread.  msal's token cache is kept in the account's encrypted cache file and
written whenever msal changed it, so a rotated refresh token survives a crash.

Nothing here may log or raise a token, a refresh token, a client secret, a private key or
an authorization/device code; error texts are the platform's C{error} and the first line
of its C{error_description}.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any, Callable

import attrs
import msal
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from twisted.internet.defer import Deferred
from zope.interface import implementer

from xrelay.config import AccountConfig
from xrelay.tokens import aadsts
from xrelay.tokens.cache import AccountCache
from xrelay.tokens.errors import GrantRefused, GrantUnavailable, SignInFailed
from xrelay.tokens.source import GrantResult, ITokenGrant
from xrelay.records import TokenStatus
from xrelay.tokens.trust import TrustedSession

# msal can log request details, PII and, at DEBUG, token responses; on an answer that is
# not JSON it logs the answer itself (a token fragment) with a traceback, which Python's
# last-resort handler copies to stderr, which twistd puts in the log.  What msal has to
# say reaches the operator through our own lines (GrantUnavailable, GrantRefused):
# nothing of msal's own logging leaves it, whatever the root logger's configuration.
_msal_log = logging.getLogger("msal")
_msal_log.setLevel(logging.CRITICAL + 1)
_msal_log.propagate = False
_msal_log.addHandler(logging.NullHandler())

GRAPH_APP_SCOPE = "https://graph.microsoft.com/.default"
SMTP_DELEGATED_SCOPE = "https://outlook.office.com/SMTP.Send"
GRAPH_DELEGATED_SCOPE = "https://graph.microsoft.com/Mail.Send"

#: OAuth errors after which asking again cannot help: a person must act.
PERMANENT_ERRORS = frozenset({
    "invalid_grant", "interaction_required", "consent_required", "login_required",
    "invalid_client", "unauthorized_client", "invalid_scope", "access_denied",
    "invalid_resource", "expired_token", "authorization_declined", "bad_verification_code",
})

RunBlocking = Callable[..., "Deferred[Any]"]


def scopes_for(account: AccountConfig) -> list[str]:
    """The scopes to request; msal adds C{offline_access} (and rejects it if given)."""
    from xrelay.clouds import cloud_of

    cloud = cloud_of(getattr(account, "cloud", "global"))  # national clouds' hosts
    graph = account.transport == "graph"
    if account.flow == "client_credentials":
        return [cloud.graph_app_scope() if graph else cloud.smtp_app_scope()]
    return [cloud.graph_delegated_scope() if graph else cloud.smtp_delegated_scope()]


def sign_in_hint(account: AccountConfig) -> str:
    """What to tell the operator when the account's credentials are refused."""
    return aadsts.explain("", account)[1]


def credential_files(account: AccountConfig) -> list[str]:
    """The files whose contents make up the account's credentials."""
    paths = [account.client_secret_file, account.certificate_file,
             account.certificate_key_file, account.refresh_token_file]
    return [p for p in paths if p]


def files_signature(paths: list[str]) -> list[list[int] | None]:
    """Inode, size and mtime of each file: cheap to take every few seconds."""
    found: list[list[int] | None] = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            found.append(None)
            continue
        found.append([st.st_ino, st.st_size, st.st_mtime_ns])
    return found


def describe(result: dict[str, Any]) -> str:
    """The platform's error in one line: C{invalid_grant: AADSTS50173: ...}."""
    error = str(result.get("error", "error"))
    description = str(result.get("error_description") or "").strip().splitlines()
    return f"{error}: {description[0]}" if description else error


def _client_credential(account: AccountConfig) -> Any:
    try:
        return _read_client_credential(account)
    except OSError as e:
        # A folder where the file should be, a file the service cannot read, a file
        # being replaced: the token in hand is kept, and the next try reads again.
        raise GrantUnavailable(
            f"cannot read {e.filename or 'a credential file'} ({e.strerror or e}); "
            "nothing was sent to the identity platform and the current token is kept; "
            "check the file (root:xrelay 0640)") from None


def _read_client_credential(account: AccountConfig) -> Any:
    if account.client_secret_file:
        with open(account.client_secret_file, encoding="utf-8") as f:
            secret = f.read().strip()
        if not secret:
            # An in-place rewrite leaves it empty for an instant: sending that would
            # be refused (and count as a bad credential); the token in hand is kept.
            raise GrantUnavailable(
                f"the client secret file {account.client_secret_file} is empty (being "
                "rewritten?); nothing was sent to the identity platform and the current "
                "token is kept; put the secret in it (write a new file and rename it "
                "over the old one)")
        return secret
    if account.certificate_file and account.certificate_key_file:
        with open(account.certificate_file, "rb") as f:
            certificate = x509.load_pem_x509_certificate(f.read())
        with open(account.certificate_key_file, encoding="utf-8") as f:
            key = f.read()
        return {"private_key": key,
                "thumbprint": certificate.fingerprint(hashes.SHA1()).hex()}  # noqa: S303
    return None


def build_application(account: AccountConfig, bundle: str,
                      cache: msal.SerializableTokenCache,
                      public: bool = False) -> msal.ClientApplication:
    """
    An msal application for the account (blocking: network discovery).  A confidential
    client when the account has a secret or certificate, unless C{public} (device code
    needs a public client).
    """
    options: dict[str, Any] = dict(
        client_id=account.client_id,
        authority=account.msal_authority,
        token_cache=cache,
        http_client=TrustedSession(bundle),
        enable_pii_log=False,
    )
    if account.authority.rstrip("/") != "https://login.microsoftonline.com":
        options["instance_discovery"] = False
    credential = None if public else _client_credential(account)
    if credential is not None:
        return msal.ConfidentialClientApplication(client_credential=credential, **options)
    return msal.PublicClientApplication(**options)


def _signed_in_as(result: dict[str, Any]) -> str | None:
    claims = result.get("id_token_claims") or {}
    name = claims.get("preferred_username") or claims.get("upn") or claims.get("email")
    return str(name) if name else None


@attrs.frozen
class DeviceCodePrompt:
    """
    What to show a person who signs in with a device code: open C{verification_uri},
    type C{user_code}.  C{flow} is msal's state (it holds the device code: never shown).
    """

    account: str
    verification_uri: str
    user_code: str
    message: str
    expires_at: float
    flow: dict[str, Any] = attrs.field(repr=False, eq=False)


@implementer(ITokenGrant)
@attrs.define(eq=False)
class MicrosoftGrant:
    """
    The msal side of one Microsoft account.  Its blocking methods (C{_fetch} and the
    sign-in steps) run in the token thread pool through C{run}; a lock makes them one at
    a time for this account, and the cache file's lock keeps another process out while
    msal's cache is read, used and written back.
    """

    account: AccountConfig
    cache: AccountCache
    bundle: str
    run: RunBlocking
    _msal_cache: msal.SerializableTokenCache = attrs.field(
        init=False, factory=msal.SerializableTokenCache, repr=False)
    _meta: dict[str, Any] = attrs.field(init=False, factory=dict, repr=False)
    _app: msal.ClientApplication | None = attrs.field(init=False, default=None, repr=False)
    _lock: threading.Lock = attrs.field(init=False, factory=threading.Lock, repr=False)
    _loaded: bool = attrs.field(init=False, default=False)
    #: The secret/certificate files as they were when C{_app} was built.
    _app_files: list[list[int] | None] | None = attrs.field(init=False, default=None,
                                                           repr=False)

    @property
    def hint(self) -> str:
        return sign_in_hint(self.account)

    def explain(self, reason: str) -> tuple[Any, str]:
        """The refusal's state and fix (L{xrelay.tokens.aadsts})."""
        state, fix, _ = aadsts.explain(reason, self.account)
        return state, fix

    def _client_files(self) -> list[list[int] | None]:
        paths = [self.account.client_secret_file, self.account.certificate_file,
                 self.account.certificate_key_file]
        return files_signature([p for p in paths if p])

    # -- ITokenGrant ----------------------------------------------------------

    def fetch(self, force: bool) -> Deferred[GrantResult]:
        return self.run(self._fetch, force)

    def credentials_changed(self) -> bool:
        if self.cache.changed():
            return True
        if self._app_files is not None and self._client_files() != self._app_files:
            return True  # a new client secret or certificate was put in place
        return self._refresh_token_file_signature() not in (None, self._meta.get("rt_file"))

    def record(self, status: TokenStatus) -> Deferred[None]:
        return self.run(self._record, status)

    def fetch_here(self, force: bool) -> GrantResult:
        """L{fetch} in the calling thread, for C{xrelay doctor} (which has no reactor)."""
        return self._fetch(force)

    # -- blocking work, in the token thread pool ------------------------------

    def _load(self) -> None:
        """Re-read the cache file if it is new to us (another process signed in)."""
        if self._loaded and not self.cache.changed():
            return
        data = self.cache.read()
        self._msal_cache = msal.SerializableTokenCache()
        if data.get("msal"):
            self._msal_cache.deserialize(data["msal"])
        self._meta = dict(data.get("meta") or {})
        self._app = None  # bound to the old cache object
        self._loaded = True

    def _save(self, force: bool = False) -> None:
        if force or self._msal_cache.has_state_changed:
            self.cache.write({"msal": self._msal_cache.serialize(), "meta": self._meta})
            self._msal_cache.has_state_changed = False

    def _application(self) -> msal.ClientApplication:
        files = self._client_files()
        if self._app is not None and files != self._app_files:
            self._app = None  # the secret or certificate changed: read it again
        if self._app is None:
            self._app_files = files
            try:
                self._app = build_application(self.account, self.bundle, self._msal_cache)
            except (ValueError, requests.RequestException, msal.exceptions.MsalError) as e:
                # discovery failed: the OpenID configuration could not be fetched
                raise GrantUnavailable(f"cannot reach {self.account.msal_authority} "
                                       f"({type(e).__name__})") from None
        return self._app

    def _refresh_token_file_signature(self) -> list[int] | None:
        path = self.account.refresh_token_file
        if self.account.flow == "client_credentials" or not path:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        return [st.st_ino, st.st_size, st.st_mtime_ns]

    def _fetch(self, force: bool) -> GrantResult:
        with self._lock, self.cache.locked():
            self._load()
            app = self._application()
            try:
                result = self._acquire(app, force)
            except msal.exceptions.MsalServiceError as e:  # 5xx: "HTTP Error: 503"
                raise GrantUnavailable(f"token request to {self.account.msal_authority} "
                                       f"failed ({e})") from None
            except (requests.RequestException, msal.exceptions.MsalError) as e:
                raise GrantUnavailable(f"token request to {self.account.msal_authority} "
                                       f"failed ({type(e).__name__})") from None
            except ValueError:
                # Not JSON (a proxy's error page, an answer cut short): never the text,
                # it may hold part of a token.
                raise GrantUnavailable(f"the answer of {self.account.msal_authority} to "
                                       "the token request was not valid JSON (a proxy in "
                                       "between, or the answer was cut short)") from None
            finally:
                self._save()
        return self._interpret(result)

    def _acquire(self, app: msal.ClientApplication, force: bool) -> dict[str, Any] | None:
        scopes = scopes_for(self.account)
        if self.account.flow == "client_credentials":
            assert isinstance(app, msal.ConfidentialClientApplication)
            if force:
                app.remove_tokens_for_client()
            return app.acquire_token_for_client(scopes)
        signature = self._refresh_token_file_signature()
        if signature is not None and signature != self._meta.get("rt_file"):
            # the operator supplied a (new) refresh token: msal keeps it from now on
            assert self.account.refresh_token_file is not None
            with open(self.account.refresh_token_file, encoding="utf-8") as f:
                refresh_token = f.read().strip()
            self._meta["rt_file"] = signature
            self._msal_cache.has_state_changed = True
            return app.acquire_token_by_refresh_token(refresh_token, scopes)
        accounts = app.get_accounts(username=self.account.user)
        if not accounts:
            return None
        return app.acquire_token_silent_with_error(scopes, accounts[0], force_refresh=force)

    def _interpret(self, result: dict[str, Any] | None) -> GrantResult:
        if result is None:
            raise GrantRefused(f"no sign-in for {self.account.user} is stored")
        if "access_token" in result:
            return GrantResult(result["access_token"], float(result.get("expires_in", 3599)))
        reason = describe(result)
        if result.get("error") in PERMANENT_ERRORS or aadsts.known_refusal(reason):
            raise GrantRefused(reason)
        raise GrantUnavailable(reason)

    def _record(self, status: TokenStatus) -> None:
        with self._lock, self.cache.locked():
            self._load()
            self._meta.update(state=status.state, last_refresh=status.last_refresh,
                              last_error=status.last_error, hint=status.hint,
                              expires_at=status.expires_at, recorded=time.time())
            self._save(force=True)

    # -- interactive sign-in (blocking) ---------------------------------------

    def _fresh_application(self, public: bool) -> tuple[msal.ClientApplication,
                                                        msal.SerializableTokenCache]:
        cache = msal.SerializableTokenCache()
        try:
            return build_application(self.account, self.bundle, cache, public), cache
        except GrantUnavailable as e:  # an empty or unreadable secret file: say which
            raise SignInFailed(self.account.name, e.reason) from None
        except (ValueError, requests.RequestException, msal.exceptions.MsalError) as e:
            raise SignInFailed(self.account.name, f"cannot reach "
                               f"{self.account.msal_authority} ({type(e).__name__})") from None

    def initiate_device_code(self) -> DeviceCodePrompt:
        app, _ = self._fresh_application(public=True)
        assert isinstance(app, msal.PublicClientApplication)
        try:
            flow = app.initiate_device_flow(scopes=scopes_for(self.account))
        except (requests.RequestException, msal.exceptions.MsalError) as e:
            raise SignInFailed(self.account.name, f"device code request failed "
                               f"({type(e).__name__})") from None
        if "user_code" not in flow:
            raise SignInFailed(self.account.name, describe(flow))
        flow["_xrelay_app"] = app
        return DeviceCodePrompt(
            account=self.account.name,
            verification_uri=str(flow.get("verification_uri", "")),
            user_code=str(flow["user_code"]),
            message=str(flow.get("message", "")),
            expires_at=float(flow.get("expires_at", time.time() + 900)),
            flow=flow,
        )

    def complete_device_code(self, prompt: DeviceCodePrompt) -> GrantResult:
        flow = prompt.flow
        app = flow["_xrelay_app"]
        try:
            result = app.acquire_token_by_device_flow(
                {k: v for k, v in flow.items() if k != "_xrelay_app"},
                exit_condition=lambda f: flow.get("cancelled") or
                f.get("expires_at", 0) < time.time())
        except (requests.RequestException, msal.exceptions.MsalError) as e:
            raise SignInFailed(self.account.name, f"polling for the device code sign-in "
                               f"failed ({type(e).__name__})") from None
        if flow.get("cancelled"):
            raise SignInFailed(self.account.name, "cancelled")
        return self._adopt(app, result)

    def initiate_auth_code(self, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        app, _ = self._fresh_application(public=False)
        try:
            flow = app.initiate_auth_code_flow(scopes_for(self.account),
                                               redirect_uri=redirect_uri,
                                               login_hint=self.account.user)
        except (requests.RequestException, msal.exceptions.MsalError, ValueError) as e:
            raise SignInFailed(self.account.name, f"cannot start the sign-in "
                               f"({type(e).__name__})") from None
        return flow["auth_uri"], flow

    def complete_auth_code(self, flow: dict[str, Any], params: dict[str, str]) -> GrantResult:
        app, _ = self._fresh_application(public=False)
        try:
            result = app.acquire_token_by_auth_code_flow(flow, params)
        except ValueError:  # msal: state mismatch, or a reply to another flow
            raise SignInFailed(self.account.name, "the sign-in reply does not belong to "
                               "this sign-in (state mismatch); start again") from None
        except (requests.RequestException, msal.exceptions.MsalError) as e:
            raise SignInFailed(self.account.name, f"redeeming the code failed "
                               f"({type(e).__name__})") from None
        return self._adopt(app, result)

    def _adopt(self, app: msal.ClientApplication, result: dict[str, Any]) -> GrantResult:
        """Keep a successful sign-in: its cache replaces the account's cache file."""
        if "access_token" not in result:
            reason = describe(result)
            _, fix, meaning = aadsts.explain(reason, self.account)
            if meaning is not None:  # e.g. AADSTS7000218: a new sign-in cannot help
                reason = f"{reason} ({meaning}); to fix: {fix}"
            raise SignInFailed(self.account.name, reason)
        who = _signed_in_as(result)
        if who is not None and who.lower() != self.account.user.lower():
            raise SignInFailed(self.account.name, f"signed in as {who}, but the account "
                               f"is configured for {self.account.user}; sign in as "
                               f"{self.account.user}")
        with self._lock, self.cache.locked():
            self._msal_cache = app.token_cache
            self._meta = {"rt_file": self._refresh_token_file_signature(),
                          "state": "ok", "last_refresh": time.time(),
                          "expires_at": time.time() + float(result.get("expires_in", 0))}
            self._app = None
            self._save(force=True)
            self._loaded = True
        return GrantResult(result["access_token"], float(result.get("expires_in", 3599)))


def stored_expiry(data: dict[str, Any], account: AccountConfig) -> tuple[float | None, bool]:
    """
    From a decrypted cache file: the latest access token expiry and whether a refresh
    token is stored (for C{xrelay accounts}, which runs without the daemon).
    """
    import json
    try:
        cache = json.loads(data.get("msal") or "{}")
    except ValueError:
        return None, False
    expiries = [float(at.get("expires_on", 0)) for at in
                (cache.get("AccessToken") or {}).values()]
    return (max(expiries) if expiries else None), bool(cache.get("RefreshToken"))


