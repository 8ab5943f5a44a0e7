"""
The sandbox's Microsoft identity platform (Azure AD / Entra ID v2.0 endpoints), as state
and decisions: tenants, app registrations, users, the grants of the token endpoint, the
device-code and authorization-code flows, and the record of every token issued.

The web layer (L{xrelay.sandbox.web}) only turns HTTP requests into calls here and
writes the L{Response}; the SMTP server and Graph ask L{IdentityPlatform.check_access_token}
whether a bearer token is one this platform issued and is still valid.

Wire formats follow Microsoft's documented v2.0 responses (field names, C{AADSTS} codes,
HTTP statuses) so that real msal and xrelay's token sources behave here as in
production.  This module must never log or put into an error description a secret, a
token, a code or a password; the request log keeps only grant type, client id, tenant
and outcome.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import secrets
import string
import time
import uuid
from typing import Any, Callable, Iterable
from urllib.parse import urlencode, urlsplit, urlunsplit

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import webtoken
from .errors import Response, TokenError, aad_error
from .google import GoogleIdentity

#: Resources (application ID URIs) the sandbox issues tokens for, with the app roles
#: an app-only token carries and the delegated permissions a user may grant.
#: The national clouds' Exchange Online resources (L{xrelay.clouds}) are accepted too,
#: so that a C{cloud = "usgov"} or C{"china"} account can be tried end to end.
OUTLOOK_RESOURCES = ("https://outlook.office365.com", "https://outlook.office.com",
                     "https://outlook.office365.us", "https://outlook-dod.office365.us",
                     "https://partner.outlook.cn")
GRAPH_RESOURCE = "https://graph.microsoft.com"
NATIONAL_GRAPH_RESOURCES = ("https://graph.microsoft.us", "https://dod-graph.microsoft.us",
                            "https://microsoftgraph.chinacloudapi.cn")
APP_ROLES: dict[str, tuple[str, ...]] = {
    **{r: ("SMTP.SendAsApp",) for r in OUTLOOK_RESOURCES},
    GRAPH_RESOURCE: ("Mail.Send",),
    **{r: ("Mail.Send",) for r in NATIONAL_GRAPH_RESOURCES},
}
#: The Graph scopes an admin's setup wizard asks for (L{xrelay.sandbox.entra}) and
#: Exchange Online's admin API scope (L{xrelay.sandbox.exchangeadmin}).
ADMIN_GRAPH_SCOPES = ("Application.ReadWrite.All", "AppRoleAssignment.ReadWrite.All",
                      "DelegatedPermissionGrant.ReadWrite.All", "User.Read.All", "Directory.Read.All")
DELEGATED_PERMISSIONS: dict[str, tuple[str, ...]] = {
    **{r: ("SMTP.Send", "IMAP.AccessAsUser.All", "POP.AccessAsUser.All", "Exchange.Manage")
       for r in OUTLOOK_RESOURCES},
    GRAPH_RESOURCE: ("Mail.Send", "User.Read", "Mail.ReadWrite", *ADMIN_GRAPH_SCOPES),
    **{r: ("Mail.Send", "User.Read", "Mail.ReadWrite") for r in NATIONAL_GRAPH_RESOURCES},
}
#: What C{<resource>/.default} grants delegated: what an admin typically consents to.
DEFAULT_DELEGATED: dict[str, tuple[str, ...]] = {
    **{r: ("SMTP.Send",) for r in OUTLOOK_RESOURCES},
    GRAPH_RESOURCE: ("Mail.Send", "User.Read"),
    **{r: ("Mail.Send", "User.Read") for r in NATIONAL_GRAPH_RESOURCES},
}
OIDC_SCOPES = frozenset({"openid", "profile", "offline_access", "email"})
META_TENANTS = frozenset({"common", "organizations", "consumers"})

GRANT_CLIENT_CREDENTIALS = "client_credentials"
GRANT_REFRESH_TOKEN = "refresh_token"
GRANT_AUTHORIZATION_CODE = "authorization_code"
GRANT_DEVICE_CODE = "urn:ietf:params:oauth:grant-type:device_code"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


#: Refusals a tenant's policy causes, switchable per app (L{IdentityPlatform.refuse_app}):
#: AADSTS code -> (OAuth error, description template).  Texts as Entra ID sends them:
#: 53003 https://github.com/AzureAD/microsoft-identity-web/issues/2419,
#: 65001 https://github.com/KelvinTegelaar/CIPP/issues/1716; meanings in
#: https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
REFUSALS: dict[int, tuple[str, str]] = {
    53003: ("invalid_grant", "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance."),
    65001: ("invalid_grant", "The user or administrator has not consented to use the application with ID '{client_id}' named '{name}'. Send an interactive authorization request for this user and resource."),
}


def _secret(length: int = 32) -> str:
    return secrets.token_urlsafe(length)


def _client_secret() -> str:
    """A secret shaped like an Entra ID one: 3 characters, C{8Q~}, 34 characters."""
    alphabet = string.ascii_letters + string.digits + "_-.~"
    return "".join(secrets.choice(alphabet) for _ in range(3)) + "8Q~" + "".join(
        secrets.choice(alphabet) for _ in range(34)
    )


def _user_code() -> str:
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(secrets.choice(alphabet) for _ in range(9))


@attrs.define
class Tenant:
    id: str
    domain: str


@attrs.define
class App:
    """
    An app registration.  C{client_secrets} and C{certificates} are its credentials;
    a C{public_client} may use device code and auth code flows without one.
    """

    client_id: str
    tenant: Tenant
    name: str
    client_secrets: list[str] = attrs.field(factory=list, repr=False)
    #: Secrets past their expiry date: still the app's, refused with AADSTS7000222.
    expired_client_secrets: list[str] = attrs.field(factory=list, repr=False)
    certificates: list[x509.Certificate] = attrs.field(factory=list, repr=False)
    redirect_uris: list[str] = attrs.field(factory=list)
    public_client: bool = False
    roles: dict[str, tuple[str, ...]] = attrs.field(factory=lambda: dict(APP_ROLES))
    #: When set, the token endpoint refuses this app with that AADSTS code
    #: (L{REFUSALS}), as a tenant policy would; see L{IdentityPlatform.refuse_app}.
    refusal: int | None = None
    service_principal_id: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    #: Created through Graph (L{xrelay.sandbox.entra}): unknown to the token endpoint
    #: before this time (replication), and without client credentials until its service
    #: principal exists.
    usable_from: float = 0.0
    has_service_principal: bool = True
    #: Secret, or certificate SHA-256 hex -> when it starts to work (replication).
    credentials_usable_from: dict[str, float] = attrs.field(factory=dict, repr=False)
    #: A public client whose C{http://localhost} redirect URIs match on any port (the
    #: path must still match), as Entra ID treats loopback redirects:
    #: https://learn.microsoft.com/en-us/entra/identity-platform/reply-url
    loopback_any_port: bool = False

    def usable_secrets(self, now: float) -> list[str]:
        return [s for s in self.client_secrets if self.credentials_usable_from.get(s, 0.0) <= now]

    def usable_certificates(self, now: float) -> list[x509.Certificate]:
        from cryptography.hazmat.primitives import hashes

        return [c for c in self.certificates
                if self.credentials_usable_from.get(c.fingerprint(hashes.SHA256()).hex(), 0.0) <= now]

    def accepts_redirect(self, uri: str) -> bool:
        if uri in self.redirect_uris:
            return True
        if not self.loopback_any_port:
            return False
        parts = urlsplit(uri)
        if parts.scheme != "http" or parts.hostname not in ("localhost", "127.0.0.1"):
            return False
        portless = urlunsplit((parts.scheme, parts.hostname, parts.path, parts.query, ""))
        return portless in self.redirect_uris or portless.rstrip("/") in self.redirect_uris

    @property
    def client_secret(self) -> str | None:
        """The first secret: what most tests need."""
        return self.client_secrets[0] if self.client_secrets else None


@attrs.define
class User:
    upn: str
    tenant: Tenant
    password: str = attrs.field(repr=False)
    display_name: str
    oid: str = attrs.field(factory=lambda: str(uuid.uuid4()))
    #: Refresh tokens issued before this time are refused (revokeSignInSessions).
    tokens_valid_from: float = 0.0


@attrs.define
class AccessToken:
    """
    What the platform remembers of one access token it issued, so that the SMTP
    server and Graph can check a bearer token the way Exchange would.

    @ivar upn: the signed-in user for delegated tokens, C{None} for app-only ones.
    @ivar permissions: C{scp} values (delegated) or C{roles} (app-only).
    """

    token: str = attrs.field(repr=False)
    client_id: str
    tenant_id: str
    audience: str
    permissions: frozenset[str]
    upn: str | None
    expires_at: float
    issued_at: float
    revoked: bool = False

    @property
    def app_only(self) -> bool:
        return self.upn is None


@attrs.define
class RefreshToken:
    token: str = attrs.field(repr=False)
    client_id: str
    upn: str
    issued_at: float
    expires_at: float
    valid: bool = True
    revoked_by_user: bool = False


@attrs.define
class DeviceCode:
    device_code: str = attrs.field(repr=False)
    user_code: str
    client_id: str
    tenant: Tenant | None
    scopes: tuple[str, ...]
    expires_at: float
    approved_by: str | None = None
    declined: bool = False
    redeemed: bool = False


@attrs.define
class AuthorizationCode:
    code: str = attrs.field(repr=False)
    client_id: str
    upn: str
    redirect_uri: str
    scopes: tuple[str, ...]
    code_challenge: str | None
    code_challenge_method: str | None
    nonce: str | None
    expires_at: float
    redeemed: bool = False


@attrs.frozen
class TokenRequest:
    """One request to the token or device-code endpoint; never holds a secret."""

    time: float
    endpoint: str
    grant_type: str
    client_id: str
    tenant: str
    outcome: str
    #: The C{scope} form field as sent (what msal asked for).
    scope: str = ""


@attrs.frozen
class AuthorizeRequest:
    """The validated parameters of an C{/authorize} request, carried by the sign-in form."""

    tenant: str
    client_id: str
    redirect_uri: str
    scope: str
    state: str
    nonce: str
    code_challenge: str
    code_challenge_method: str
    login_hint: str
    response_mode: str


@attrs.define
class IdentityPlatform:
    """
    Microsoft identity platform v2.0 state and token endpoint logic.

    Settable knobs for tests: L{access_token_lifetime}, L{refresh_token_lifetime},
    L{device_code_lifetime}, L{device_code_interval}, L{rotate_refresh_tokens};
    L{fail_next} and L{unavailable_status} make the endpoints fail like an outage.
    """

    now: Callable[[], float] = time.time
    base_url: str = "https://127.0.0.1"
    access_token_lifetime: int = 3599
    refresh_token_lifetime: int = 90 * 86400
    device_code_lifetime: int = 900
    device_code_interval: int = 5
    auth_code_lifetime: int = 600
    #: Azure AD keeps old refresh tokens valid; the sandbox rotates strictly by
    #: default so that a client that keeps using a superseded one is caught.
    rotate_refresh_tokens: bool = True
    #: When set, every token/devicecode request fails with this HTTP status (500 or 503).
    unavailable_status: int | None = None
    tenants: dict[str, Tenant] = attrs.field(factory=dict)
    apps: dict[str, App] = attrs.field(factory=dict)
    users: dict[str, User] = attrs.field(factory=dict)
    access_tokens: dict[str, AccessToken] = attrs.field(factory=dict, repr=False)
    refresh_tokens: dict[str, RefreshToken] = attrs.field(factory=dict, repr=False)
    device_codes: dict[str, DeviceCode] = attrs.field(factory=dict, repr=False)
    auth_codes: dict[str, AuthorizationCode] = attrs.field(factory=dict, repr=False)
    requests: list[TokenRequest] = attrs.field(factory=list)
    google: GoogleIdentity = attrs.field(default=attrs.Factory(lambda self: GoogleIdentity(now=self.now), takes_self=True))
    _failures: list[tuple[int, str | None]] = attrs.field(factory=list, repr=False)
    _signing_key: rsa.RSAPrivateKey = attrs.field(
        factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), repr=False
    )
    key_id: str = attrs.field(factory=lambda: webtoken.b64url_encode(secrets.token_bytes(15)))

    # -- directory -------------------------------------------------------------------

    def add_tenant(self, domain: str, tenant_id: str | None = None) -> Tenant:
        """The tenant with this domain (created if new); tenants are found by domain or id."""
        existing = self.tenant(domain)
        if existing is not None:
            return existing
        tenant = Tenant(tenant_id or str(uuid.uuid4()), domain)
        self.tenants[tenant.id] = tenant
        self.tenants[domain.lower()] = tenant
        return tenant

    def tenant(self, name: str) -> Tenant | None:
        return self.tenants.get(name) or self.tenants.get(name.lower())

    def register_app(
        self,
        tenant: str,
        client_id: str | None = None,
        client_secret: str | None = None,
        certificate_pem: bytes | str | None = None,
        redirect_uris: Iterable[str] = (),
        public_client: bool = False,
        name: str = "xrelay",
    ) -> App:
        """
        Register an application.  A confidential app given neither a secret nor a
        certificate gets a generated secret (C{app.client_secret}).
        """
        t = self.add_tenant(tenant)
        app = App(client_id or str(uuid.uuid4()), t, name, redirect_uris=list(redirect_uris), public_client=public_client)
        if client_secret is not None:
            app.client_secrets.append(client_secret)
        if certificate_pem is not None:
            pem = certificate_pem.encode() if isinstance(certificate_pem, str) else certificate_pem
            app.certificates.append(x509.load_pem_x509_certificate(pem))
        if not public_client and not app.client_secrets and not app.certificates:
            app.client_secrets.append(_client_secret())
        self.apps[app.client_id] = app
        return app

    def add_client_secret(self, client_id: str, secret: str | None = None) -> str:
        secret = secret or _client_secret()
        self.apps[client_id].client_secrets.append(secret)
        return secret

    def refuse_app(self, client_id: str, code: int | None) -> None:
        """
        Refuse every token request of this app with AADSTS C{code} (one of L{REFUSALS});
        C{None} lifts it.
        """
        if code is not None and code not in REFUSALS:
            raise ValueError(f"no documented refusal {code}; one of {sorted(REFUSALS)}")
        self.apps[client_id].refusal = code

    def expire_client_secret(self, client_id: str, secret: str | None = None) -> None:
        """
        The app's secret (all of them when C{secret} is C{None}) passes its expiry date:
        the token endpoint then answers C{invalid_client}, AADSTS7000222.
        """
        app = self.apps[client_id]
        expiring = [s for s in app.client_secrets if secret is None or s == secret]
        app.client_secrets = [s for s in app.client_secrets if s not in expiring]
        app.expired_client_secrets.extend(expiring)

    def add_user(self, tenant: str, upn: str, password: str, display_name: str | None = None) -> User:
        t = self.add_tenant(tenant)
        user = User(upn, t, password, display_name or upn.split("@")[0])
        self.users[upn.lower()] = user
        return user

    def user(self, upn: str) -> User | None:
        return self.users.get(upn.lower())

    # -- switches for tests ----------------------------------------------------------

    def fail_next(self, count: int = 1, status: int = 503, retry_after: str | None = None) -> None:
        """The next C{count} token/devicecode requests fail with HTTP C{status} (500/503)."""
        self._failures.extend([(status, retry_after)] * count)

    def approve_device_code(self, user_code: str, upn: str) -> None:
        """What a person does on the device-login page: sign in as C{upn} and accept."""
        flow = self._device_by_user_code(user_code)
        if flow is None:
            raise KeyError(f"no pending device code {user_code!r}")
        user = self.user(upn)
        if user is None:
            raise KeyError(f"no user {upn!r}")
        flow.approved_by = user.upn

    def decline_device_code(self, user_code: str) -> None:
        flow = self._device_by_user_code(user_code)
        if flow is None:
            raise KeyError(f"no pending device code {user_code!r}")
        flow.declined = True

    def expire_device_codes(self) -> None:
        for flow in self.device_codes.values():
            flow.expires_at = self.now() - 1

    def pending_device_codes(self) -> list[DeviceCode]:
        """Device codes waiting for a person, newest last: tests approve C{[-1].user_code}."""
        now = self.now()
        return [f for f in self.device_codes.values() if f.approved_by is None and f.expires_at > now and not f.declined]

    def _device_by_user_code(self, user_code: str) -> DeviceCode | None:
        wanted = user_code.replace("-", "").replace(" ", "").upper()
        for flow in self.device_codes.values():
            if flow.user_code == wanted and not flow.redeemed:
                return flow
        return None

    def revoke(self, what: str) -> None:
        """
        Revoke a refresh token, or every refresh token of a user (by UPN), as an
        admin's C{revokeSignInSessions} does: further use gets C{invalid_grant}.
        Access tokens already issued stay valid until they expire, as in Azure AD.
        """
        record = self.refresh_tokens.get(what)
        if record is not None:
            record.valid = False
            record.revoked_by_user = True
            return
        user = self.user(what)
        if user is None:
            raise KeyError("neither a known refresh token nor a known user")
        user.tokens_valid_from = self.now()
        for rt in self.refresh_tokens.values():
            if rt.upn.lower() == user.upn.lower():
                rt.valid = False
                rt.revoked_by_user = True

    def expire_access_tokens(self) -> None:
        """Every access token issued so far is now expired (Exchange answers 535)."""
        past = self.now() - 1
        for token in self.access_tokens.values():
            token.expires_at = min(token.expires_at, past)

    def issued_secrets(self) -> set[str]:
        """
        Every secret the sandbox issued or knows (tokens, client secrets, codes,
        passwords), so that tests can assert none of them leaked into logs or files.
        """
        found: set[str] = set()
        found.update(self.access_tokens)
        found.update(self.refresh_tokens)
        found.update(self.device_codes)
        found.update(self.auth_codes)
        for app in self.apps.values():
            found.update(app.client_secrets)
            found.update(app.expired_client_secrets)
        found.update(u.password for u in self.users.values())
        found.update(self._id_tokens)
        found.update(self.google.issued_secrets())
        return found

    _id_tokens: list[str] = attrs.field(factory=list, repr=False)

    # -- checks used by Exchange and Graph ------------------------------------------

    def check_access_token(self, token: str) -> AccessToken | None:
        """
        The record of C{token} if this platform issued it, its signature verifies and
        it has not expired; else C{None}.
        """
        record = self.access_tokens.get(token)
        if record is None or record.revoked or record.expires_at <= self.now():
            return None
        try:
            webtoken.verify(token, self._signing_key.public_key())
        except webtoken.MalformedToken:
            return None
        return record

    def jwks(self) -> dict[str, Any]:
        return {"keys": [webtoken.jwk(self._signing_key.public_key(), self.key_id)]}

    # -- endpoints -------------------------------------------------------------------

    def issuer(self, tenant_id: str) -> str:
        return f"{self.base_url}/{tenant_id}/v2.0"

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
            self._resource_and_permissions(scopes)
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
        flow.approved_by = user.upn
        return flow

    # -- grants ----------------------------------------------------------------------

    def _client_credentials(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=True)
        if not app.has_service_principal:
            # As Entra ID words it for an app registration without an enterprise app in
            # the tenant; listed at https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
            raise TokenError(
                "invalid_client", 7000229,
                f"The client application {app.client_id} is missing service principal in the tenant {app.tenant.id}. See instructions here: https://go.microsoft.com/fwlink/?linkid=2225119",
                401,
            )
        scope = form.get("scope", "")
        if not scope:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'scope'.")
        scopes = scope.split()
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            raise TokenError(
                "invalid_scope", 1002012,
                f"The provided value for scope {scope} is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI).",
            )
        resource = scopes[0][: -len("/.default")]
        if resource not in APP_ROLES:
            raise TokenError(
                "invalid_resource", 500011,
                f"The resource principal named {resource} was not found in the tenant named {app.tenant.domain}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant.",
            )
        roles = app.roles.get(resource, ())
        now = int(self.now())
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{app.tenant.id}/", "iat": now, "nbf": now,
            "exp": now + self.access_token_lifetime, "aio": _secret(12), "app_displayname": app.name,
            "appid": app.client_id, "appidacr": "2" if form.get("client_assertion") else "1",
            "idp": f"https://sts.windows.net/{app.tenant.id}/", "oid": app.service_principal_id,
            "rh": _secret(12), "roles": list(roles), "sub": app.service_principal_id, "tid": app.tenant.id,
            "uti": _secret(16), "ver": "1.0",
        }
        token = self._issue_access(claims, app.client_id, app.tenant.id, resource, frozenset(roles), None)
        return {
            "token_type": "Bearer",
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": token,
        }

    def _refresh_token(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=not app.public_client)
        presented = form.get("refresh_token", "")
        if not presented:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'refresh_token'.")
        record = self.refresh_tokens.get(presented)
        if record is None:
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if record.client_id != app.client_id:
            raise TokenError("invalid_grant", 70000, "The refresh token was issued to a different client.")
        if record.revoked_by_user:
            holder = self.user(record.upn)
            raise TokenError(
                "invalid_grant", 50173,
                f"The provided grant has expired due to it being revoked, a fresh auth token is needed. The user might have changed or reset their password. The grant was issued on '{_iso(record.issued_at)}' and the TokensValidFrom date (before which tokens are not valid) for this user is '{_iso(holder.tokens_valid_from if holder else self.now())}'.",
            )
        if not record.valid or record.expires_at <= self.now():
            raise TokenError(
                "invalid_grant", 70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            )
        user = self.user(record.upn)
        if user is None:
            raise TokenError("invalid_grant", 50034, "The user account does not exist in the directory.")
        scopes = tuple(form.get("scope", "").split()) or ("openid", "profile", "offline_access")
        if self.rotate_refresh_tokens:
            record.valid = False
        return self._delegated_response(app, user, scopes, form, nonce=None, with_refresh=True)

    def _authorization_code(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        self._authenticate_client(app, form, required=not app.public_client)
        record = self.auth_codes.get(form.get("code", ""))
        if record is None or record.client_id != app.client_id:
            raise TokenError("invalid_grant", 70000, "The provided value for the 'code' parameter is not valid.")
        if record.redeemed:
            raise TokenError(
                "invalid_grant", 54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            )
        if record.expires_at <= self.now():
            raise TokenError(
                "invalid_grant", 70008,
                "The provided authorization code or refresh token has expired due to inactivity. Send a new interactive authorization request for this user and resource.",
            )
        if form.get("redirect_uri", "") != record.redirect_uri:
            raise TokenError(
                "invalid_grant", 500112,
                "The reply address does not match the reply address provided when requesting Authorization code.",
            )
        if record.code_challenge is not None:
            verifier = form.get("code_verifier", "")
            if not verifier:
                raise TokenError("invalid_request", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
            if record.code_challenge_method == "S256":
                computed = webtoken.b64url_encode(hashlib.sha256(verifier.encode("ascii")).digest())
            else:
                computed = verifier
            if not secrets.compare_digest(computed, record.code_challenge):
                raise TokenError("invalid_grant", 501481, "The Code_Verifier does not match the code_challenge supplied in the authorization request.")
        record.redeemed = True
        user = self.user(record.upn)
        assert user is not None
        scopes = tuple(form.get("scope", "").split()) or record.scopes
        return self._delegated_response(app, user, scopes, form, nonce=record.nonce, with_refresh=True)

    def _device_code_grant(self, tenant_segment: str, form: dict[str, str]) -> dict[str, Any]:
        app = self._app(tenant_segment, form.get("client_id", ""))
        flow = self.device_codes.get(form.get("device_code", "") or form.get("code", ""))
        if flow is None or flow.client_id != app.client_id:
            raise TokenError("invalid_grant", 9002313, "Invalid request. Request is malformed or invalid.")
        if flow.redeemed:
            raise TokenError(
                "invalid_grant", 54005,
                "OAuth2 Authorization code was already redeemed, please retry with a new valid code or use an existing refresh token.",
            )
        if flow.expires_at <= self.now():
            raise TokenError("expired_token", 70020, "The provided value for the input parameter 'device_code' is not valid. This device code has expired.")
        if flow.declined:
            raise TokenError("authorization_declined", 70000, "The request was denied because the user declined to authorize it.")
        if flow.approved_by is None:
            raise TokenError("authorization_pending", 70016, "OAuth 2.0 device flow error. Authorization is pending. Continue polling.")
        self._authenticate_client(app, form, required=not app.public_client)
        flow.redeemed = True
        user = self.user(flow.approved_by)
        assert user is not None
        return self._delegated_response(app, user, flow.scopes, form, nonce=None, with_refresh=True)

    # -- helpers ---------------------------------------------------------------------

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

    def _path_tenant(self, tenant_segment: str) -> Tenant | None:
        if tenant_segment.lower() in META_TENANTS:
            return None
        return self.tenant(tenant_segment)

    def _app(self, tenant_segment: str, client_id: str) -> App:
        if not client_id:
            raise TokenError("invalid_request", 900144, "The request body must contain the following parameter: 'client_id'.")
        if tenant_segment.lower() not in META_TENANTS and self.tenant(tenant_segment) is None:
            raise TokenError(
                "invalid_request", 90002,
                f"Tenant '{tenant_segment}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant.",
            )
        app = self.apps.get(client_id)
        tenant = self._path_tenant(tenant_segment)
        if app is not None and app.usable_from > self.now():
            app = None  # created moments ago: not yet replicated to the token service
        if app is None or (tenant is not None and app.tenant.id != tenant.id):
            shown = tenant_segment if tenant is None else tenant.id
            raise TokenError(
                "unauthorized_client", 700016,
                f"Application with identifier '{client_id}' was not found in the directory '{shown}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant.",
            )
        return app

    def _authenticate_client(self, app: App, form: dict[str, str], required: bool) -> None:
        secret = form.get("client_secret")
        assertion = form.get("client_assertion")
        if secret is None and assertion is None:
            if required:
                raise TokenError(
                    "invalid_client", 7000218,
                    "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
                    401,
                )
            return
        if secret is not None:
            if any(secrets.compare_digest(secret.encode(), s.encode()) for s in app.expired_client_secrets):
                # As Entra ID words it, e.g. https://github.com/dotnet/sign/issues/849;
                # listed at https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
                raise TokenError(
                    "invalid_client", 7000222,
                    f"The provided client secret keys for app '{app.client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds.",
                    401,
                )
            if not any(secrets.compare_digest(secret.encode(), s.encode()) for s in app.usable_secrets(self.now())):
                raise TokenError(
                    "invalid_client", 7000215,
                    f"Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{app.client_id}'.",
                    401,
                )
            return
        assert assertion is not None
        if form.get("client_assertion_type") != ASSERTION_TYPE:
            raise TokenError("invalid_request", 50027, "JWT token is invalid or malformed.")
        self._check_assertion(app, assertion)

    def _check_assertion(self, app: App, assertion: str) -> None:
        from cryptography.hazmat.primitives import hashes

        try:
            header, _ = webtoken.unverified(assertion)
        except webtoken.MalformedToken:
            raise TokenError("invalid_client", 50027, "JWT token is invalid or malformed.", 401) from None
        chosen = None
        for cert in app.usable_certificates(self.now()):
            # msal sends the thumbprints base64url with padding; Azure AD accepts both.
            if str(header.get("x5t#S256", "")).rstrip("=") == webtoken.b64url_encode(cert.fingerprint(hashes.SHA256())) or str(
                header.get("x5t", "")
            ).rstrip("=") == webtoken.b64url_encode(cert.fingerprint(hashes.SHA1())):
                chosen = cert
                break
        if chosen is None:
            raise TokenError(
                "invalid_client", 700027,
                f"The certificate with identifier used to sign the client assertion is not registered on application. [Reason - The key was not found., Thumbprint of key used by client: '{header.get('x5t#S256') or header.get('x5t')}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{app.client_id}'.]",
                401,
            )
        public_key = chosen.public_key()
        if not isinstance(public_key, rsa.RSAPublicKey):
            raise TokenError("invalid_client", 700027, "Client assertion failed signature validation.", 401)
        try:
            claims = webtoken.verify(assertion, public_key)
        except webtoken.MalformedToken:
            raise TokenError("invalid_client", 700027, "Client assertion failed signature validation.", 401) from None
        now = self.now()
        if claims.get("iss") != app.client_id or claims.get("sub") != app.client_id:
            raise TokenError("invalid_client", 700021, "Client assertion application identifier doesn't match 'client_id' parameter.", 401)
        if not (claims.get("nbf", now) - 300 <= now <= claims.get("exp", 0) + 300):
            raise TokenError("invalid_client", 700024, "Client assertion is not within its valid time range.", 401)
        audience = claims.get("aud")
        if not (isinstance(audience, str) and audience.startswith(self.base_url + "/") and audience.endswith("/oauth2/v2.0/token")):
            raise TokenError("invalid_client", 700212, "Client assertion audience claim does not match Realm issuer.", 401)

    def _authenticate(self, tenant_segment: str, username: str, password: str) -> User:
        user = self.user(username)
        tenant = self._path_tenant(tenant_segment)
        if user is None or (tenant is not None and user.tenant.id != tenant.id):
            raise TokenError("invalid_grant", 50034, f"The user account {username} does not exist in the directory. To sign into this application, the account must be added to the directory.")
        if not secrets.compare_digest(user.password.encode(), password.encode()):
            raise TokenError("invalid_grant", 50126, "Error validating credentials due to invalid username or password.")
        return user

    def _resource_and_permissions(self, scopes: Iterable[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
        """
        The single resource the scopes ask for, the permissions granted, and the
        scope strings to report back (Azure AD issues one resource per token).
        """
        resource: str | None = None
        permissions: list[str] = []
        for scope in scopes:
            if scope in OIDC_SCOPES:
                continue
            if scope.startswith("https://"):
                res, _, perm = scope.rpartition("/")
            else:
                res, perm = GRAPH_RESOURCE, scope
            if res not in DELEGATED_PERMISSIONS:
                raise TokenError("invalid_resource", 500011, f"The resource principal named {res} was not found in the tenant.")
            if resource is not None and res != resource:
                raise TokenError("invalid_scope", 28000, "Provided value for the input parameter scope is not valid because it contains more than one resource. Scope " + " ".join(scopes) + " is not valid.")
            resource = res
            if perm == ".default":
                permissions.extend(DEFAULT_DELEGATED[res])
            elif perm in DELEGATED_PERMISSIONS[res]:
                permissions.append(perm)
            else:
                raise TokenError("invalid_scope", 70011, f"The provided value for the input parameter 'scope' is not valid. The scope '{scope}' does not exist.")
        if resource is None:
            resource, permissions = GRAPH_RESOURCE, ["User.Read"]
        permissions = list(dict.fromkeys(permissions))
        return resource, tuple(permissions), tuple(f"{resource}/{p}" for p in permissions)

    def _delegated_response(
        self, app: App, user: User, scopes: tuple[str, ...], form: dict[str, str], nonce: str | None, with_refresh: bool
    ) -> dict[str, Any]:
        resource, permissions, granted = self._resource_and_permissions(scopes)
        now = int(self.now())
        tid = user.tenant.id
        claims = {
            "aud": resource, "iss": f"https://sts.windows.net/{tid}/", "iat": now, "nbf": now,
            "exp": now + self.access_token_lifetime, "acr": "1", "aio": _secret(12), "amr": ["pwd"],
            "app_displayname": app.name, "appid": app.client_id, "appidacr": "0" if app.public_client else "1",
            "name": user.display_name, "oid": user.oid, "scp": " ".join(permissions), "sub": _secret(16),
            "tid": tid, "unique_name": user.upn, "upn": user.upn, "uti": _secret(16), "ver": "1.0",
        }
        token = self._issue_access(claims, app.client_id, tid, resource, frozenset(permissions), user.upn)
        body: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": " ".join(granted),
            "expires_in": self.access_token_lifetime,
            "ext_expires_in": self.access_token_lifetime,
            "access_token": token,
        }
        if with_refresh and "offline_access" in scopes:
            rt = RefreshToken("1.A" + _secret(300), app.client_id, user.upn, self.now(), self.now() + self.refresh_token_lifetime)
            self.refresh_tokens[rt.token] = rt
            body["refresh_token"] = rt.token
        if "openid" in scopes:
            id_claims = {
                "aud": app.client_id, "iss": self.issuer(tid), "iat": now, "nbf": now, "exp": now + 3600,
                "name": user.display_name, "oid": user.oid, "preferred_username": user.upn,
                "rh": _secret(12), "sub": _secret(16), "tid": tid, "uti": _secret(16), "ver": "2.0",
            }
            if nonce:
                id_claims["nonce"] = nonce
            id_token = webtoken.encode(id_claims, self._signing_key, self.key_id)
            self._id_tokens.append(id_token)
            body["id_token"] = id_token
        if form.get("client_info") == "1":
            body["client_info"] = webtoken.b64url_encode(json.dumps({"uid": user.oid, "utid": tid}).encode())
        return body

    def _issue_access(
        self, claims: dict[str, Any], client_id: str, tenant_id: str, audience: str,
        permissions: frozenset[str], upn: str | None,
    ) -> str:
        token = webtoken.encode(claims, self._signing_key, self.key_id, {"x5t": self.key_id})
        self.access_tokens[token] = AccessToken(
            token, client_id, tenant_id, audience, permissions, upn, float(claims["exp"]), float(claims["iat"])
        )
        return token


def _iso(when: float) -> str:
    return time.strftime("%m/%d/%Y %H:%M:%S", time.gmtime(when))


def matches(pattern: str, address: str) -> bool:
    """Case-insensitive address pattern match (C{*}, C{*@example.com})."""
    return fnmatch.fnmatchcase(address.lower(), pattern.lower())
