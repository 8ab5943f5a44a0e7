"""
The values of the sandbox's Microsoft identity platform: the resources it issues tokens
for and the permissions each knows, the refusals a tenant's policy causes, and the
records of its directory (tenants, app registrations, users) and of what it issued
(access and refresh tokens, device and authorization codes, the request log).

L{xrelay.sandbox.identityrules} decides with them; L{xrelay.sandbox.identity} speaks
the v2.0 endpoints' wire format.  This module holds values and tables, and reads the
tables for what a list of scopes asks for (L{resource_and_permissions}); it must never
decide who gets a token, keep state, do I/O, or show a secret in a record's repr.
"""

from __future__ import annotations

import secrets
import string
import uuid
from typing import Iterable
from urllib.parse import urlsplit, urlunsplit

import attrs
from cryptography import x509

from .errors import TokenError

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
    # Texts of https://learn.microsoft.com/en-us/entra/identity-platform/reference-error-codes
    7000218: ("invalid_client", "The request body must contain the following parameter: 'client_assertion' or 'client_secret'."),
    7000112: ("unauthorized_client", "Application '{client_id}'({name}) is disabled."),
    50011: ("invalid_request", "The redirect URI specified in the request does not match the redirect URIs configured for the application '{client_id}'."),
    500011: ("invalid_resource", "The resource principal named https://outlook.office365.com was not found in the tenant. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant."),
    90002: ("invalid_request", "Tenant not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud."),
    50057: ("invalid_grant", "The user account is disabled."),
    50053: ("invalid_grant", "Your account is locked because you've tried to sign in too many times with an incorrect user ID or password."),
    50055: ("invalid_grant", "The password is expired."),
    530003: ("invalid_grant", "Your device is required to be managed to access this resource."),
    50158: ("invalid_grant", "External security challenge not satisfied."),
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


def resource_and_permissions(scopes: Iterable[str]) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
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
    #: Delegated permissions granted to the app (C{None}: any, the sandbox's own apps).
    granted_scopes: set[str] | None = None
    #: ... and for one user only (C{consentType: Principal}), by the user's object id.
    user_granted_scopes: dict[str, set[str]] = attrs.field(factory=dict)
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
