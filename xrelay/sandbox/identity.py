"""
The sandbox's Microsoft identity platform (Azure AD / Entra ID v2.0 endpoints) as
HTTP/JSON: the OpenID configuration and JWKS, the token endpoint's dispatch on
C{grant_type} with Entra ID's error bodies, the device-code endpoint, the authorize and
device-login pages' redirects, outages on demand, and the request log.  Decisions live in
L{xrelay.sandbox.identityrules} (L{IdentityRules}), values in
L{xrelay.sandbox.identityrecords}; L{IdentityPlatform} is both, the one object the
sandbox hands out, and the names of both modules stay importable from here.

The web layer (L{xrelay.sandbox.web}) only turns HTTP requests into calls here and
writes the L{Response}.  Wire formats follow Microsoft's documented v2.0 responses
(field names, C{AADSTS} codes, HTTP statuses) so that real msal and xrelay's token
sources behave here as in production.  This module must never log or put into an error
description a secret, a token, a code or a password; the request log keeps only grant
type, client id, tenant and outcome.
"""

from __future__ import annotations

import fnmatch
import uuid
from typing import Any
from urllib.parse import urlencode

import attrs

from . import webtoken
from .errors import Response, TokenError, aad_error
from .identityrecords import (
    ADMIN_GRAPH_SCOPES, APP_ROLES, ASSERTION_TYPE, DEFAULT_DELEGATED, DELEGATED_PERMISSIONS, GRANT_AUTHORIZATION_CODE,
    GRANT_CLIENT_CREDENTIALS, GRANT_DEVICE_CODE, GRANT_REFRESH_TOKEN, GRAPH_RESOURCE, META_TENANTS,
    NATIONAL_GRAPH_RESOURCES, OIDC_SCOPES, OUTLOOK_RESOURCES, REFUSALS, AccessToken, App, AuthorizationCode,
    AuthorizeRequest, DeviceCode, RefreshToken, Tenant, TokenRequest, User, _secret, _user_code, resource_and_permissions,
)
from .identityrules import IdentityRules

__all__ = [
    "ADMIN_GRAPH_SCOPES", "APP_ROLES", "ASSERTION_TYPE", "DEFAULT_DELEGATED", "DELEGATED_PERMISSIONS",
    "GRANT_AUTHORIZATION_CODE", "GRANT_CLIENT_CREDENTIALS", "GRANT_DEVICE_CODE", "GRANT_REFRESH_TOKEN",
    "GRAPH_RESOURCE", "META_TENANTS", "NATIONAL_GRAPH_RESOURCES", "OIDC_SCOPES", "OUTLOOK_RESOURCES", "REFUSALS",
    "AccessToken", "App", "AuthorizationCode", "AuthorizeRequest", "DeviceCode", "IdentityPlatform",
    "IdentityRules", "RefreshToken", "Tenant", "TokenRequest", "User", "matches", "resource_and_permissions",
]


@attrs.define
class IdentityPlatform(IdentityRules):
    """
    Microsoft identity platform v2.0: the endpoints' wire format over the state and
    decisions of L{IdentityRules} (which holds every field and test knob).
    """

    def jwks(self) -> dict[str, Any]:
        return {"keys": [webtoken.jwk(self._signing_key.public_key(), self.key_id)]}

    # -- endpoints -------------------------------------------------------------------

    def openid_configuration(self, tenant_segment: str) -> Response:
        """C{GET /{tenant}/v2.0/.well-known/openid-configuration}."""
        if tenant_segment.lower() in META_TENANTS:
            tid = "{tenantid}"
            path = tenant_segment.lower()
        else:
            tenant = self.tenant(tenant_segment)
            if tenant is None:
                return aad_error(
                    TokenError("invalid_tenant", 90002, f"Tenant '{tenant_segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."),
                    self.now(), self.base_url,
                )
            tid = path = tenant.id
        base = f"{self.base_url}/{path}"
        return Response(
            200,
            {
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_modes_supported": ["query", "fragment", "form_post"],
                "subject_types_supported": ["pairwise"],
                "id_token_signing_alg_values_supported": ["RS256"],
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "issuer": f"{self.base_url}/{tid}/v2.0",
                "request_uri_parameter_supported": False,
                "userinfo_endpoint": f"{self.base_url}/oidc/userinfo",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "http_logout_supported": True,
                "frontchannel_logout_supported": True,
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "claims_supported": [
                    "sub", "iss", "cloud_instance_name", "cloud_instance_host_name", "cloud_graph_host_name",
                    "msgraph_host", "aud", "exp", "iat", "auth_time", "acr", "nonce", "preferred_username",
                    "name", "tid", "ver", "at_hash", "c_hash", "email",
                ],
                "kerberos_endpoint": f"{base}/kerberos",
                "tenant_region_scope": "EU",
                "cloud_instance_name": "microsoftonline.com",
                "cloud_graph_host_name": "graph.windows.net",
                "msgraph_host": "graph.microsoft.com",
                "rbac_url": "https://pas.windows.net",
            },
        )

    def token(self, tenant_segment: str, form: dict[str, str], correlation_id: str | None = None) -> Response:
        """C{POST /{tenant}/oauth2/v2.0/token}: dispatch on C{grant_type}."""
        grant_type = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        outage = self._outage(correlation_id)
        if outage is not None:
            self._log("token", grant_type, client_id, tenant_segment, "unavailable")
            return outage
        try:
            if not grant_type:
                raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'grant_type'.")
            handler = {
                GRANT_CLIENT_CREDENTIALS: self._client_credentials,
                GRANT_REFRESH_TOKEN: self._refresh_token,
                GRANT_AUTHORIZATION_CODE: self._authorization_code,
                GRANT_DEVICE_CODE: self._device_code_grant,
            }.get(grant_type)
            if handler is None:
                raise TokenError("unsupported_grant_type", 70003, f"The app requested an unsupported grant type '{grant_type}'.")
            refused = self.apps.get(client_id)
            if refused is not None and refused.refusal is not None:
                error, text = REFUSALS[refused.refusal]
                raise TokenError(error, refused.refusal, text.format(client_id=refused.client_id, name=refused.name))
            body = handler(tenant_segment, form)
        except TokenError as e:
            self._log("token", grant_type, client_id, tenant_segment, e.error, form.get("scope", ""))
            return aad_error(e, self.now(), self.base_url, correlation_id)
        self._log("token", grant_type, client_id, tenant_segment, "ok", form.get("scope", ""))
        return Response(200, body)

    def device_authorization(self, tenant_segment: str, form: dict[str, str], correlation_id: str | None = None) -> Response:
        """C{POST /{tenant}/oauth2/v2.0/devicecode}."""
        client_id = form.get("client_id", "")
        outage = self._outage(correlation_id)
        if outage is not None:
            self._log("devicecode", "", client_id, tenant_segment, "unavailable")
            return outage
        try:
            app = self._app(tenant_segment, client_id)
            scopes = tuple(form.get("scope", "").split())
            if not scopes:
                raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
            resource_and_permissions(scopes)
        except TokenError as e:
            self._log("devicecode", "", client_id, tenant_segment, e.error)
            return aad_error(e, self.now(), self.base_url, correlation_id)
        flow = DeviceCode(
            "DAQABAAEAAAD" + _secret(96), _user_code(), app.client_id, self._path_tenant(tenant_segment),
            scopes, self.now() + self.device_code_lifetime,
        )
        self.device_codes[flow.device_code] = flow
        self._log("devicecode", "", client_id, tenant_segment, "ok")
        uri = f"{self.base_url}/devicelogin"
        return Response(
            200,
            {
                "user_code": flow.user_code,
                "device_code": flow.device_code,
                "verification_uri": uri,
                "expires_in": self.device_code_lifetime,
                "interval": self.device_code_interval,
                "message": f"To sign in, use a web browser to open the page {uri} and enter the code {flow.user_code} to authenticate.",
            },
        )

    def authorize_request(self, tenant_segment: str, params: dict[str, str]) -> AuthorizeRequest:
        """
        Validate an C{/authorize} request; raise L{TokenError} for what Azure AD shows
        as an error page rather than redirecting (unknown app, unregistered redirect).
        """
        app = self._app(tenant_segment, params.get("client_id", ""))
        redirect_uri = params.get("redirect_uri", "")
        if not app.accepts_redirect(redirect_uri):
            raise TokenError(
                "invalid_request", 50011,
                f"The redirect URI '{redirect_uri}' specified in the request does not match the redirect URIs configured for the application '{app.client_id}'. Make sure the redirect URI sent in the request matches one added to your application in the Azure portal. Navigate to https://aka.ms/redirectUriMismatchError to learn more about how to fix this.",
            )
        if params.get("response_type") != "code":
            raise TokenError("unsupported_response_type", 900144, "The request body must contain the following parameter: 'response_type'.")
        method = params.get("code_challenge_method", "")
        if params.get("code_challenge") and method not in ("S256", "plain"):
            raise TokenError("invalid_request", 50148, "The code_challenge_method is not supported.")
        return AuthorizeRequest(
            tenant_segment, app.client_id, redirect_uri, params.get("scope", ""), params.get("state", ""),
            params.get("nonce", ""), params.get("code_challenge", ""), method, params.get("login_hint", ""),
            params.get("response_mode", "query"),
        )

    def sign_in(self, request: AuthorizeRequest, username: str, password: str) -> str:
        """
        A person signed in on the authorize page: the URL to redirect the browser to,
        with C{code}, C{state} and C{session_state} as Azure AD sends them.  Raises
        L{TokenError} (AADSTS50126) for a wrong username or password.
        """
        user = self._authenticate(request.tenant, username, password)
        self._check_consent(request.client_id, user, tuple(request.scope.split()))
        code = AuthorizationCode(
            "1.A" + _secret(200), request.client_id, user.upn, request.redirect_uri,
            tuple(request.scope.split()), request.code_challenge or None,
            request.code_challenge_method or None, request.nonce or None, self.now() + self.auth_code_lifetime,
        )
        self.auth_codes[code.code] = code
        self._log("authorize", "", request.client_id, request.tenant, "ok")
        query = {"code": code.code}
        if request.state:
            query["state"] = request.state
        query["session_state"] = str(uuid.uuid4())
        sep = "&" if "?" in request.redirect_uri else "?"
        return request.redirect_uri + sep + urlencode(query)

    def decline(self, request: AuthorizeRequest) -> str:
        """The person pressed Cancel: the redirect carrying C{error=access_denied}."""
        query = {
            "error": "access_denied",
            "error_description": "AADSTS65004: User declined to consent to access the app.",
        }
        if request.state:
            query["state"] = request.state
        sep = "&" if "?" in request.redirect_uri else "?"
        return request.redirect_uri + sep + urlencode(query)

    def device_login(self, user_code: str, username: str, password: str) -> DeviceCode:
        """The device-login page: a person enters the code and signs in; approves it."""
        flow = self._device_by_user_code(user_code)
        if flow is None or flow.expires_at <= self.now():
            raise TokenError("invalid_grant", 70020, "The code you entered has expired or is not valid.")
        tenant = flow.tenant.domain if flow.tenant else "common"
        user = self._authenticate(tenant, username, password)
        self._check_consent(flow.client_id, user, flow.scopes)
        flow.approved_by = user.upn
        return flow

    # -- outages and the request log ---------------------------------------------

    def _outage(self, correlation_id: str | None) -> Response | None:
        status = None
        retry_after = None
        if self._failures:
            status, retry_after = self._failures.pop(0)
        elif self.unavailable_status is not None:
            status = self.unavailable_status
        if status is None:
            return None
        if status == 503:
            err = TokenError("temporarily_unavailable", 90033, "A transient error has occurred. Please try again.", 503)
        else:
            err = TokenError("server_error", 50000, "There was an error issuing a token or an issue with our sign-in service.", status)
        response = aad_error(err, self.now(), self.base_url, correlation_id)
        if retry_after is not None:
            response = attrs.evolve(response, headers=(("Retry-After", retry_after),))
        return response

    def _log(self, endpoint: str, grant_type: str, client_id: str, tenant: str, outcome: str, scope: str = "") -> None:
        self.requests.append(TokenRequest(self.now(), endpoint, grant_type, client_id, tenant, outcome, scope))


def matches(pattern: str, address: str) -> bool:
    """Case-insensitive address pattern match (C{*}, C{*@example.com})."""
    return fnmatch.fnmatchcase(address.lower(), pattern.lower())
