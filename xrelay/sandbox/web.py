"""
The sandbox's HTTPS endpoints as one C{twisted.web} resource: the Microsoft identity
platform (OpenID configuration, keys, token, devicecode, authorize, devicelogin), Google's
token and authorization endpoints under C{/google} (C{/google/token},
C{/google/o/oauth2/v2/auth}), Graph under C{/v1.0} (mail, and app management through
L{xrelay.sandbox.graphadmin}), and Exchange Online's admin API under C{/adminapi}
(L{xrelay.sandbox.exchangeadmin}).

This layer only parses requests and writes responses; the decisions live in
L{xrelay.sandbox.identity}, L{xrelay.sandbox.google} and L{xrelay.sandbox.graph}.  Its
access log is off, since request lines may carry codes and nothing here may log a secret.
"""

from __future__ import annotations

import json
from urllib.parse import unquote

from twisted.web.resource import Resource
from twisted.web import http
from twisted.web.server import Request, Site

from . import signin
from .errors import Response, TokenError
from .google import GoogleAuthorizeError, GoogleSignInError
from .exchangeadmin import ExchangeAdmin
from .graph import GraphMail
from .graphadmin import GraphAdmin
from .identity import AuthorizeRequest, IdentityPlatform


def _form(request: Request) -> dict[str, str]:
    return {k.decode("utf-8", "replace"): v[0].decode("utf-8", "replace") for k, v in (request.args or {}).items() if v}


def _query(request: Request) -> dict[str, str]:
    """The query string alone (C{request.args} mixes in a form body)."""
    from urllib.parse import parse_qsl

    _, _, query = request.uri.decode("utf-8", "replace").partition("?")
    return dict(parse_qsl(query, keep_blank_values=True))


def _json_body(request: Request) -> dict[str, object] | None:
    try:
        body = json.loads(request.content.read() if request.content else b"")
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


def _header(request: Request, name: str) -> str | None:
    value = request.getHeader(name)
    return value if value is None else str(value)


class SandboxResource(Resource):
    """Routes by path; C{isLeaf} because tenants and users are path segments."""

    isLeaf = True

    def __init__(self, identity: IdentityPlatform, graph: GraphMail, graph_admin: GraphAdmin | None = None,
                 exchange_admin: ExchangeAdmin | None = None) -> None:
        super().__init__()
        self.identity = identity
        self.graph = graph
        self.graph_admin = graph_admin
        self.exchange_admin = exchange_admin

    def render(self, request: Request) -> bytes:
        path = [unquote(s) for s in request.path.decode("utf-8", "replace").split("/")[1:]]
        method = request.method.decode()
        correlation = _header(request, "client-request-id")
        if path == ["google", "token"] and method == "POST":
            return self._json(request, self.identity.google.token(_form(request)))
        if path == ["google", "o", "oauth2", "v2", "auth"] and method in ("GET", "POST"):
            return self._google_authorize(request, method)
        if len(path) == 4 and path[:2] == ["v1.0", "users"] and path[3] == "sendMail" and method == "POST":
            return self._json(
                request,
                self.graph.send_mail(path[2], _header(request, "authorization"), _header(request, "content-type"), request.content.read() if request.content else b""),
            )
        if path[:1] == ["v1.0"] and self.graph_admin is not None:
            answer = self.graph_admin.handle(method, path, _query(request), _header(request, "authorization"),
                                             request.content.read() if request.content else b"")
            if answer is not None:
                return self._json(request, answer)
        if len(path) == 4 and path[:2] == ["adminapi", "beta"] and path[3] == "InvokeCommand" and method == "POST":
            if self.exchange_admin is not None:
                return self._json(request, self.exchange_admin.invoke(path[2], _header(request, "authorization"), _json_body(request)))
        if path and path[0] == "devicelogin":
            return self._device_login(request, method)
        if len(path) == 4 and path[1:] == ["v2.0", ".well-known", "openid-configuration"]:
            return self._json(request, self.identity.openid_configuration(path[0]))
        if len(path) == 4 and path[1:] == ["discovery", "v2.0", "keys"]:
            return self._json(request, Response(200, self.identity.jwks()))
        if len(path) == 4 and path[1:3] == ["oauth2", "v2.0"]:
            tenant, endpoint = path[0], path[3]
            if endpoint == "token" and method == "POST":
                return self._json(request, self.identity.token(tenant, _form(request), correlation))
            if endpoint == "devicecode" and method == "POST":
                return self._json(request, self.identity.device_authorization(tenant, _form(request), correlation))
            if endpoint == "authorize" and method in ("GET", "POST"):
                return self._authorize(request, tenant, method)
        request.setResponseCode(404)
        request.setHeader("content-type", "text/plain; charset=utf-8")
        return b"Not found\n"

    def _json(self, request: Request, response: Response) -> bytes:
        request.setResponseCode(response.status)
        for name, value in response.headers:
            request.setHeader(name, value)
        request.setHeader("cache-control", "no-store, no-cache")
        request.setHeader("pragma", "no-cache")
        if response.body is None:
            return b""
        request.setHeader("content-type", "application/json; charset=utf-8")
        return json.dumps(response.body, separators=(",", ":")).encode("utf-8")

    def _html(self, request: Request, body: bytes, status: int = 200) -> bytes:
        request.setResponseCode(status)
        request.setHeader("content-type", "text/html; charset=utf-8")
        request.setHeader("cache-control", "no-store")
        return body

    def _authorize(self, request: Request, tenant: str, method: str) -> bytes:
        params = _form(request)
        try:
            authorize = self.identity.authorize_request(tenant, params)
        except TokenError as e:
            return self._html(request, signin.error_page(f"AADSTS{e.code}: {e.description}"), 400)
        app_name = self.identity.apps[authorize.client_id].name
        fields = {k: v for k, v in params.items() if k not in ("login", "passwd", "action")}
        action = request.path.decode()
        if method == "GET":
            return self._html(request, signin.sign_in_page(action, fields, app_name, authorize.login_hint))
        if params.get("action") == "cancel":
            return self._redirect(request, self.identity.decline(authorize))
        try:
            location = self.identity.sign_in(authorize, params.get("login", ""), params.get("passwd", ""))
        except TokenError as e:
            message = "Your account or password is incorrect." if e.code == 50126 else "This username may be incorrect."
            return self._html(request, signin.sign_in_page(action, fields, app_name, params.get("login", ""), message))
        return self._redirect(request, location)

    def _google_authorize(self, request: Request, method: str) -> bytes:
        """Google's authorization endpoint: sign-in (and consent) page, then redirect."""
        google = self.identity.google
        params = _form(request)
        try:
            authorize = google.authorize_request(params)
        except GoogleAuthorizeError as e:
            return self._html(request, signin.google_error_page(e.status, e.error, e.description), e.status)
        app_name = google.client_name(authorize.client_id)
        fields = {k: v for k, v in params.items() if k not in ("login", "passwd", "action")}
        action = request.path.decode()
        title = "Sign in with Google"
        if method == "GET":
            return self._html(request, signin.sign_in_page(action, fields, app_name, authorize.login_hint, title=title))
        if params.get("action") == "cancel":
            return self._redirect(request, google.decline(authorize))
        try:
            location = google.sign_in(authorize, params.get("login", ""), params.get("passwd", ""))
        except GoogleSignInError as e:
            return self._html(request, signin.sign_in_page(action, fields, app_name, params.get("login", ""), str(e), title=title))
        return self._redirect(request, location)

    def _redirect(self, request: Request, location: str) -> bytes:
        request.setResponseCode(302)
        request.setHeader("location", location)
        request.setHeader("cache-control", "no-store")
        return b""

    def _device_login(self, request: Request, method: str) -> bytes:
        action = request.path.decode()
        if method != "POST":
            return self._html(request, signin.device_login_page(action))
        params = _form(request)
        if params.get("action") == "cancel":
            # The person declines: the client's next poll gets authorization_declined.
            try:
                self.identity.decline_device_code(params.get("otc", ""))
            except KeyError:
                return self._html(request, signin.device_login_page(action, params.get("otc", ""), "That code didn't work. Check the code and try again."))
            return self._html(request, signin.device_declined_page())
        try:
            flow = self.identity.device_login(params.get("otc", ""), params.get("login", ""), params.get("passwd", ""))
        except TokenError as e:
            message = "Your account or password is incorrect." if e.code == 50126 else (
                "That code didn't work. Check the code and try again." if e.code == 70020 else "This username may be incorrect."
            )
            return self._html(request, signin.device_login_page(action, params.get("otc", ""), message))
        return self._html(request, signin.device_done_page(self.identity.apps[flow.client_id].name))


class QuietSite(Site):
    """A Site without an access log: request lines may carry authorization codes."""

    noisy = False

    def log(self, request: http.Request) -> None:
        pass


__all__ = ["SandboxResource", "QuietSite", "AuthorizeRequest"]
