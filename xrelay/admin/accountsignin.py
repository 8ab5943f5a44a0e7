"""
The accounts' browser sign-in on the admin page ("Sign in with Microsoft" for delegated
Microsoft accounts, "Sign in with Google"; authorization code with PKCE): started by a
POST from the status page, finished at C{/signin/callback}, where the identity platform
redirects the browser.

That redirect is a cross-site navigation, on which browsers do not send
C{SameSite=Strict} cookies; the callback is therefore authorised by the flow's
unguessable C{state} (issued to a signed-in session moments before, single use,
short-lived), not by the cookie.  This module never logs a code, a token or the state.
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Any

from twisted.logger import Logger

from xrelay.admin import pages
from xrelay.admin.http import AdminPages, Refused, client_address
from xrelay.admin.sessions import Session

__all__ = ["SIGN_IN_TIMEOUT", "AccountSignIn", "callback_uri", "can_sign_in",
           "sign_in_url"]

log = Logger(namespace="xrelay.admin")

#: Seconds a started browser sign-in may take before its state is forgotten.
SIGN_IN_TIMEOUT = 15 * 60.0


def can_sign_in(account: Any) -> bool:
    """
    Whether the status page offers the browser sign-in: delegated Microsoft
    accounts, and every Google account (with a refresh token file too, so that a
    revoked token can be replaced from here).
    """
    if account.provider == "google":
        return True
    return account.provider == "microsoft" and account.flow in ("auth_code",
                                                                "device_code")


class AccountSignIn:
    """The sign-in's two routes and the flows under way, for L{xrelay.admin.web.AdminSite}."""

    def __init__(self, site: AdminPages) -> None:
        self.site = site
        #: state -> (account, msal flow, started at): browser sign-ins under way.
        self.pending: dict[str, tuple[str, dict[str, Any], float]] = {}

    def redirect_uri(self, request: Any) -> str:
        """The redirect URI this listener sends and shows (L{callback_uri})."""
        host = request.getHost()
        return callback_uri(self.site.config.admin.public_url, getattr(host, "host", ""),
                            getattr(host, "port", 8025), request.isSecure())

    async def start(self, request: Any, session: Session) -> None:
        name = self.site._form(request, "account") or ""
        try:
            account = self.site.config.account(name)
        except KeyError:
            raise Refused(404, "No such account.") from None
        if not can_sign_in(account):
            raise Refused(400, f"Account {name} does not sign in in the browser.")
        from xrelay.tokens import SignInFailed

        try:
            url, flow = await self.site.relay.tokens.start_auth_code(
                name, self.redirect_uri(request))
        except SignInFailed as e:
            session.notice = str(e)
            return self.site._redirect(request, "/")
        now = self.site.reactor.seconds()
        self.pending = {s: p for s, p in self.pending.items()
                        if now - p[2] < SIGN_IN_TIMEOUT}
        state = flow.get("state") or secrets.token_urlsafe(16)
        self.pending[state] = (name, flow, now)
        log.info("admin: browser sign-in for account {account} started from {client}",
                 account=name, client=client_address(request))
        self.site._redirect(request, url)

    async def callback(self, request: Any) -> bytes:
        params = {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace")
                  for k, v in request.args.items() if v}
        state = params.get("state", "")
        pending = self.pending.pop(state, None)
        if pending is None or self.site.reactor.seconds() - pending[2] > SIGN_IN_TIMEOUT:
            log.warn("admin: sign-in return from {client} with an unknown or expired "
                     "state refused", client=client_address(request))
            raise Refused(400, "This sign-in is unknown or has expired; start it again "
                          "from the status page.")
        name, flow, _ = pending
        if "error" in params:
            text = params.get("error_description") or params["error"]
            log.warn("admin: browser sign-in for account {account} declined: {error}",
                     account=name, error=text[:300])
            raise Refused(400, f"Sign-in for {name} did not complete: {text[:300]}")
        from xrelay.tokens import SignInFailed

        try:
            status = await self.site.relay.tokens.finish_auth_code(name, flow, params)
        except SignInFailed as e:
            log.warn("admin: browser sign-in for account {account} failed: {error}",
                     account=name, error=str(e))
            raise Refused(400, str(e)) from None
        log.info("admin: account {account} signed in in the browser; token {state}",
                 account=name, state=status.state)
        return await self.site._html(pages.Page(
            "signed in", pages.message_body(f"Account {name} is signed in ({status.state})."
                                            " Its queued mail is on its way.",
                                            "/", "Continue to the status page"),
            refresh_to="/"))




def callback_uri(public_url: str | None, address: str, port: int, secure: bool) -> str:
    """
    Where the identity platform sends the browser back, exactly as it must be
    registered: C{admin.public_url}, else C{http://localhost:PORT} for a loopback
    listener (Entra's portal accepts C{http://} only for C{localhost}, and a public
    client's C{http://localhost} redirect matches any port:
    U{https://learn.microsoft.com/en-us/entra/identity-platform/reply-url#localhost-exceptions}),
    else the socket's own address (never the request's C{Host:}, which whoever sends the
    request chooses).
    """
    if public_url:
        return f"{public_url.rstrip('/')}/signin/callback"
    scheme = "https" if secure else "http"
    try:
        loopback = ipaddress.ip_address(address).is_loopback
    except ValueError:
        loopback = False
    if loopback:
        return f"{scheme}://localhost:{port}/signin/callback"
    host = f"[{address}]" if ":" in address else (address or "127.0.0.1")
    return f"{scheme}://{host}:{port}/signin/callback"


def sign_in_url(account: Any) -> str:
    """Where the sign-in form's redirect takes the browser: the provider's sign-in page."""
    if account.provider == "google":
        from xrelay.config import GOOGLE_AUTHORIZATION_URL

        url: str = account.authorization_url or GOOGLE_AUTHORIZATION_URL
        return url
    authority: str = account.authority
    return authority


