"""
The admin's one sign-in for the setup, through the public client C{[setup] client_id}:
the device code flow (the terminal; the page when it cannot take a redirect) or the
authorization code flow with PKCE and an C{http://localhost:PORT/} redirect (the page
on a loopback listener: a public client's localhost redirect matches any port,
https://learn.microsoft.com/en-us/entra/identity-platform/reply-url#localhost-exceptions).

The admin's tokens live in an msal in-memory C{TokenCache} on this object only: never
serialized, never written to a file or a log, gone when the setup ends.  The Exchange
token is taken silently with the same sign-in (msal's refresh token, in memory).

Blocking (msal); the page runs it in a thread.
"""

from __future__ import annotations

from typing import Any

import attrs
import msal
import requests

from xrelay.config import SetupConfig
from xrelay.setup.plan import SetupRefused, admin_exchange_scopes, admin_graph_scopes

__all__ = ["AdminSession", "AdminSignIn"]

#: Sign-in errors the admin can act on.  AADSTS65004: "User declined to consent to
#: access the app"; authorization_declined: RFC 8628 section 3.5 (device code);
#: access_denied: RFC 6749 section 4.1.2.1 (authorization code)
#: (https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes).
DECLINED = ("the administrator declined the sign-in or the consent, so nothing was "
            "created; run the setup again and accept, or have a Global Administrator do it")


@attrs.define
class AdminSession:
    """A signed-in admin: who, which tenant, and (in memory only) the tokens."""

    upn: str
    tenant_id: str
    graph_token: str = attrs.field(repr=False)
    _signin: "AdminSignIn" = attrs.field(repr=False)

    def exchange_token(self) -> str | None:
        """A token for Exchange's admin API with the same sign-in, or None."""
        return self._signin.silent(admin_exchange_scopes(self._signin.setup))

    def forget(self) -> None:
        """Drop the tokens (the setup is over)."""
        self.graph_token = ""
        self._signin.forget()


@attrs.define
class AdminSignIn:
    setup: SetupConfig
    bundle: str
    _app: Any = attrs.field(default=None, repr=False)

    def _application(self) -> msal.PublicClientApplication:
        if self._app is None:
            from xrelay.tokens.trust import TrustedSession

            options: dict[str, Any] = {}
            if self.setup.authority.rstrip("/") != "https://login.microsoftonline.com":
                options["instance_discovery"] = False
            try:
                self._app = msal.PublicClientApplication(
                    self.setup.client_id,
                    authority=f"{self.setup.authority.rstrip('/')}/organizations",
                    token_cache=msal.TokenCache(), http_client=TrustedSession(self.bundle),
                    enable_pii_log=False, **options)
            except (requests.RequestException, ValueError) as e:
                raise SetupRefused(f"cannot reach the identity platform at "
                                   f"{self.setup.authority} ({type(e).__name__}); check "
                                   "the network or [setup] authority") from None
        return self._app

    # -- device code ---------------------------------------------------------------

    def start_device(self) -> dict[str, Any]:
        """The device flow: C{verification_uri}, C{user_code}, C{message}."""
        try:
            flow = self._application().initiate_device_flow(
                scopes=admin_graph_scopes(self.setup))
        except requests.RequestException as e:
            raise SetupRefused(f"cannot reach the identity platform ({type(e).__name__})"
                               ) from None
        if "user_code" not in flow:
            raise SetupRefused(_refusal(flow))
        return flow

    def finish_device(self, flow: dict[str, Any]) -> AdminSession:
        """Wait for the admin to enter the code (blocking; C{flow["expires_at"]=0} stops)."""
        try:
            result = self._application().acquire_token_by_device_flow(flow)
        except requests.RequestException as e:
            raise SetupRefused(f"lost the identity platform while waiting for the sign-in "
                               f"({type(e).__name__}); run the setup again") from None
        return self._session(result)

    # -- authorization code with PKCE -------------------------------------------------

    def start_auth_code(self, redirect_uri: str) -> tuple[str, dict[str, Any]]:
        try:
            flow = self._application().initiate_auth_code_flow(
                admin_graph_scopes(self.setup), redirect_uri=redirect_uri,
                prompt="select_account")
        except (requests.RequestException, ValueError) as e:
            raise SetupRefused(f"cannot start the admin sign-in ({type(e).__name__})"
                               ) from None
        return str(flow["auth_uri"]), flow

    def finish_auth_code(self, flow: dict[str, Any], params: dict[str, str]
                         ) -> AdminSession:
        if "error" in params:
            raise SetupRefused(_refusal(params))
        try:
            result = self._application().acquire_token_by_auth_code_flow(flow, params)
        except ValueError:
            raise SetupRefused("the sign-in reply does not belong to this setup (state "
                               "mismatch); start the sign-in again") from None
        except requests.RequestException as e:
            raise SetupRefused(f"redeeming the sign-in failed ({type(e).__name__})"
                               ) from None
        return self._session(result)

    # -- tokens ------------------------------------------------------------------------

    def _session(self, result: dict[str, Any]) -> AdminSession:
        if "access_token" not in result:
            raise SetupRefused(_refusal(result))
        claims = result.get("id_token_claims") or {}
        upn = str(claims.get("preferred_username") or claims.get("upn") or "the admin")
        tenant = str(claims.get("tid") or "")
        if not tenant:
            raise SetupRefused("the sign-in did not say which tenant it is in; sign in "
                               "with a work account of the tenant, not a personal one")
        return AdminSession(upn, tenant, str(result["access_token"]), self)

    def silent(self, scopes: list[str]) -> str | None:
        app = self._application()
        accounts = app.get_accounts()
        if not accounts:
            return None
        try:
            result = app.acquire_token_silent(scopes, account=accounts[0])
        except requests.RequestException:
            return None
        return str(result["access_token"]) if result and "access_token" in result else None

    def forget(self) -> None:
        self._app = None


def _refusal(result: dict[str, Any]) -> str:
    error = str(result.get("error") or "")
    description = str(result.get("error_description") or "").strip().splitlines()
    first = description[0][:300] if description else ""
    if error in ("authorization_declined", "access_denied") or "AADSTS65004" in first:
        return DECLINED
    if error == "expired_token":
        return "the sign-in code expired before it was entered; run the setup again"
    return f"the admin sign-in failed: {error}: {first}; run the setup again"
