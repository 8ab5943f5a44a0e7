"""
The sandbox tenant's Entra ID directory as state and rules: app registrations
(applications), service principals, app role assignments (admin consent to application
permissions), OAuth2 permission grants (consent to delegated permissions), and which
directory roles each user holds.  What an admin's setup wizard changes through Microsoft
Graph lands here; L{xrelay.sandbox.graphadmin} is the HTTP/JSON face of it.

Every application created here is also registered on the sandbox identity platform
(L{IdentityPlatform.apps}) so that its credentials work at the token endpoint, but only
after L{Directory.replication_delay} seconds (before that: AADSTS700016, as a fresh app
registration answers in Entra ID), only once its service principal exists
(AADSTS7000229), and with exactly the app roles that were assigned to it (the C{roles}
claim).  A credential added later (addKey, addPassword, PATCH keyCredentials) becomes
usable after the same delay.

The first-party resources it holds (Microsoft Graph, Exchange Online) and their ids are in
L{xrelay.sandbox.firstparty}.

Who may do what, after https://learn.microsoft.com/en-us/entra/identity/enterprise-apps/grant-admin-consent
("Privileged Role Administrator ... any permission for any API; Cloud Application
Administrator or Application Administrator ... any API, except Microsoft Graph app roles
(application permissions)") and the "signed-in user must be assigned a supported
Microsoft Entra role" notes on each Graph API page:

  register apps, service principals, keys    Global Administrator, Application
                                             Administrator, Cloud Application Administrator
  app roles of Microsoft Graph               Global Administrator, Privileged Role Administrator
  app roles of any other API, delegated      the above and Application Administrator,
  grants                                     Cloud Application Administrator

The sandbox tenant has "Users can register applications" switched off
(L{Directory.users_can_register_apps}), as many organisations do; Entra's default is on.

Must never log or put into an error a secret or a private key.
"""

from __future__ import annotations

import datetime
import secrets
import string
import uuid
from typing import Callable, Iterable

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .firstparty import (
    EXCHANGE_APP_ID, EXCHANGE_ROLES, EXCHANGE_SCOPES, GRAPH_APP_ID, GRAPH_CLI_CLIENT_ID, GRAPH_ROLES, GRAPH_SCOPES,
    RESOURCE_AUDIENCES, AppRole, PermissionScope,
)
from .errors import TokenError
from .identity import App, IdentityPlatform, User

GLOBAL_ADMIN = "Global Administrator"
APPLICATION_ADMIN = "Application Administrator"
CLOUD_APPLICATION_ADMIN = "Cloud Application Administrator"
PRIVILEGED_ROLE_ADMIN = "Privileged Role Administrator"
EXCHANGE_ADMIN = "Exchange Administrator"

APP_MANAGERS = frozenset({GLOBAL_ADMIN, APPLICATION_ADMIN, CLOUD_APPLICATION_ADMIN})
GRAPH_ROLE_GRANTERS = frozenset({GLOBAL_ADMIN, PRIVILEGED_ROLE_ADMIN})
CONSENT_GRANTERS = APP_MANAGERS | GRAPH_ROLE_GRANTERS

class DirectoryError(Exception):
    """A refusal the Graph layer turns into Graph's error body (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def denied() -> DirectoryError:
    # 403 as Graph answers an app-management call without the privilege, e.g.
    # https://learn.microsoft.com/zh-cn/answers/questions/2143345/insufficient-privileges-to-complete-the-operation
    # (Application.ReadWrite.All missing); https://learn.microsoft.com/en-us/graph/resolve-auth-errors
    return DirectoryError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def not_found(what: str) -> DirectoryError:
    # Graph's wording for a missing directory object, e.g.
    # https://github.com/microsoftgraph/microsoft-graph-docs/issues/18714 (Request_ResourceNotFound)
    return DirectoryError(
        404, "Request_ResourceNotFound",
        f"Resource '{what}' does not exist or one of its queried reference-property objects are not present.",
    )


def bad_request(message: str, code: str = "Request_BadRequest") -> DirectoryError:
    return DirectoryError(400, code, message)


def iso(when: float) -> str:
    """Graph's DateTimeOffset: C{2026-12-07T18:00:00Z}."""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.define
class KeyCredential:
    """A certificate credential: only its public part ever reaches the sandbox."""

    key_id: str
    certificate: x509.Certificate = attrs.field(repr=False)
    display_name: str
    start: float
    end: float

    @property
    def thumbprint(self) -> bytes:
        """SHA-1 of the DER certificate: Graph's C{customKeyIdentifier}."""
        return self.certificate.fingerprint(hashes.SHA1())


@attrs.define
class PasswordCredential:
    key_id: str
    secret: str = attrs.field(repr=False)
    display_name: str
    start: float
    end: float

    @property
    def hint(self) -> str:
        return self.secret[:3]


@attrs.define
class Application:
    """An app registration (Graph's C{application} resource)."""

    id: str
    app_id: str
    display_name: str
    created: float
    tags: list[str] = attrs.field(factory=list)
    sign_in_audience: str = "AzureADMyOrg"
    web_redirect_uris: list[str] = attrs.field(factory=list)
    public_client_redirect_uris: list[str] = attrs.field(factory=list)
    is_fallback_public_client: bool = False
    required_resource_access: list[dict[str, object]] = attrs.field(factory=list)
    key_credentials: list[KeyCredential] = attrs.field(factory=list)
    password_credentials: list[PasswordCredential] = attrs.field(factory=list)
    notes: str | None = None


@attrs.define
class ServicePrincipal:
    id: str
    app_id: str
    display_name: str
    created: float
    app_owner_tenant_id: str
    app_roles: tuple[AppRole, ...] = ()
    scopes: tuple[PermissionScope, ...] = ()
    tags: list[str] = attrs.field(factory=list)
    #: First-party resources (Graph, Exchange) cannot be deleted or changed.
    first_party: bool = False

    def role(self, role_id: str) -> AppRole | None:
        return next((r for r in self.app_roles if r.id == role_id), None)


@attrs.define
class AppRoleAssignment:
    id: str
    app_role_id: str
    principal_id: str
    principal_display_name: str
    resource_id: str
    resource_display_name: str
    created: float


@attrs.define
class PermissionGrant:
    """An C{oauth2PermissionGrant}: delegated consent, tenant-wide or for one user."""

    id: str
    client_id: str
    consent_type: str
    principal_id: str | None
    resource_id: str
    scope: str


def _secret_text() -> str:
    """A secret shaped like an Entra ID one: 3 characters, C{8Q~}, 34 characters."""
    alphabet = string.ascii_letters + string.digits + "_-.~"
    return "".join(secrets.choice(alphabet) for _ in range(3)) + "8Q~" + "".join(
        secrets.choice(alphabet) for _ in range(34)
    )


@attrs.define
class Directory:
    """
    One tenant's directory.  Knobs for tests: L{replication_delay} (seconds before a
    new app or credential works at the token endpoint), L{users_can_register_apps}.
    """

    identity: IdentityPlatform
    tenant: str
    replication_delay: float = 5.0
    users_can_register_apps: bool = False
    applications: dict[str, Application] = attrs.field(factory=dict)
    service_principals: dict[str, ServicePrincipal] = attrs.field(factory=dict)
    app_role_assignments: list[AppRoleAssignment] = attrs.field(factory=list)
    permission_grants: list[PermissionGrant] = attrs.field(factory=list)
    #: UPN (lower case) -> directory role names.
    roles: dict[str, set[str]] = attrs.field(factory=dict)
    #: Whether an admin already granted tenant-wide consent to the setup's public client
    #: (Microsoft Graph Command Line Tools) for its admin-only scopes, as in a tenant
    #: whose admins use Graph PowerShell.  Off: a person without an admin role signing in
    #: for those scopes gets AADSTS90094; an admin's sign-in consents for the tenant.
    setup_client_consented: bool = True

    def __attrs_post_init__(self) -> None:
        for app_id, name, roles, scopes in (
            (GRAPH_APP_ID, "Microsoft Graph", GRAPH_ROLES, GRAPH_SCOPES),
            (EXCHANGE_APP_ID, "Office 365 Exchange Online", EXCHANGE_ROLES, EXCHANGE_SCOPES),
        ):
            # appOwnerOrganizationId of Microsoft's first-party apps: Microsoft's own tenant.
            sp = ServicePrincipal(str(uuid.uuid4()), app_id, name, self.now(), "f8cdef31-a31e-4b4a-93e4-5f571e91255a",
                                  roles, scopes, first_party=True)
            self.service_principals[sp.id] = sp
        self.identity.consent_policy = self._consent

    @property
    def now(self) -> Callable[[], float]:
        return self.identity.now

    @property
    def tenant_id(self) -> str:
        return self.identity.add_tenant(self.tenant).id

    def replicate(self, within: float = 0.0) -> None:
        """Make time pass for replication: every app and credential works C{within} seconds from now at the latest."""
        now = self.now() + within
        for app in self.applications.values():
            registered = self.identity.apps.get(app.app_id)
            if registered is not None:
                registered.usable_from = min(registered.usable_from, now)
                for credential, when in registered.credentials_usable_from.items():
                    registered.credentials_usable_from[credential] = min(when, now)

    def _consent(self, app: App, user: User, scopes: tuple[str, ...]) -> None:
        """The identity platform's L{IdentityPlatform.consent_policy} for the setup client."""
        if app.client_id != GRAPH_CLI_CLIENT_ID or self.setup_client_consented:
            return
        admin_only = {s.value for sp in self.service_principals.values() if sp.first_party for s in sp.scopes if s.type == "Admin"}
        asked = {scope.rpartition("/")[2] for scope in scopes}
        if not asked & admin_only:
            return
        if self.roles_of(user.upn) & CONSENT_GRANTERS:
            self.setup_client_consented = True  # "Consent on behalf of your organization"
            return
        # As Entra ID answers a user who may not consent: "Need admin approval",
        # AADSTS90094 (https://github.com/pnp/cli-microsoft365/issues/534).
        raise TokenError("invalid_grant", 90094, "The grant requires admin permission.")

    # -- users and roles -------------------------------------------------------------

    def assign_role(self, upn: str, *roles: str) -> None:
        self.roles.setdefault(upn.lower(), set()).update(roles)

    def roles_of(self, upn: str | None) -> frozenset[str]:
        return frozenset(self.roles.get((upn or "").lower(), ()))

    def _require(self, actor: str | None, allowed: Iterable[str]) -> None:
        if actor is None or not (self.roles_of(actor) & frozenset(allowed)):
            raise denied()

    # -- lookups ---------------------------------------------------------------------

    def application(self, key: str) -> Application:
        """By object id, or C{appId='...'} key syntax's value."""
        found = self.applications.get(key) or next((a for a in self.applications.values() if a.app_id == key), None)
        if found is None:
            raise not_found(key)
        return found

    def service_principal(self, key: str) -> ServicePrincipal:
        found = self.service_principals.get(key) or next(
            (s for s in self.service_principals.values() if s.app_id == key), None)
        if found is None:
            raise not_found(key)
        return found

    def service_principal_of(self, app_id: str) -> ServicePrincipal | None:
        return next((s for s in self.service_principals.values() if s.app_id == app_id), None)

    # -- applications ----------------------------------------------------------------

    def create_application(self, actor: str | None, display_name: str, **fields: object) -> Application:
        if not self.users_can_register_apps:
            self._require(actor, APP_MANAGERS)
        if not display_name:
            raise bad_request("Invalid value specified for property 'displayName' of resource 'Application'.")
        app = Application(str(uuid.uuid4()), str(uuid.uuid4()), display_name, self.now())
        self._apply(app, fields)
        self.applications[app.id] = app
        registered = self.identity.register_app(self.tenant, client_id=app.app_id, name=display_name, public_client=True)
        registered.usable_from = self.now() + self.replication_delay
        registered.has_service_principal = False
        registered.roles = {}
        registered.granted_scopes = set()
        self._sync(app)
        return app

    def update_application(self, actor: str | None, key: str, fields: dict[str, object]) -> Application:
        self._require(actor, APP_MANAGERS)
        app = self.application(key)
        self._apply(app, fields)
        self._sync(app)
        return app

    def delete_application(self, actor: str | None, key: str) -> None:
        self._require(actor, APP_MANAGERS)
        app = self.application(key)
        del self.applications[app.id]
        sp = self.service_principal_of(app.app_id)
        if sp is not None:
            del self.service_principals[sp.id]
        self.identity.apps.pop(app.app_id, None)

    def _apply(self, app: Application, fields: dict[str, object]) -> None:
        """Set the writable properties a client sent (shapes checked by the Graph layer)."""
        for name, value in fields.items():
            if name == "displayName" and isinstance(value, str):
                app.display_name = value
            elif name == "tags" and isinstance(value, list):
                app.tags = [str(t) for t in value]
            elif name == "signInAudience" and isinstance(value, str):
                app.sign_in_audience = value
            elif name == "notes":
                app.notes = None if value is None else str(value)
            elif name == "isFallbackPublicClient":
                app.is_fallback_public_client = bool(value)
            elif name == "web" and isinstance(value, dict):
                app.web_redirect_uris = [str(u) for u in value.get("redirectUris", [])]
            elif name == "publicClient" and isinstance(value, dict):
                app.public_client_redirect_uris = [str(u) for u in value.get("redirectUris", [])]
            elif name == "requiredResourceAccess" and isinstance(value, list):
                app.required_resource_access = [dict(r) for r in value if isinstance(r, dict)]
            elif name == "keyCredentials" and isinstance(value, list):
                app.key_credentials = [self._key_credential(app, k) for k in value if isinstance(k, dict)]
            elif name == "passwordCredentials":
                # Graph makes secrets itself (addPassword returns secretText once); a PATCH
                # cannot set one (https://learn.microsoft.com/en-us/graph/api/application-addpassword).
                raise bad_request("Property 'passwordCredentials' cannot be set with PATCH; use addPassword, which returns the secret once.")
            else:
                raise bad_request(f"Property '{name}' is read-only or not supported by the sandbox and cannot be set.")

    def _key_credential(self, app: Application, body: dict[str, object]) -> KeyCredential:
        """A keyCredential from its JSON: the existing one when only its keyId is sent."""
        key_id = body.get("keyId")
        if isinstance(key_id, str) and "key" not in body:
            existing = next((k for k in app.key_credentials if k.key_id == key_id), None)
            if existing is None:
                raise bad_request(f"Key credential '{key_id}' not found on the application.")
            return existing
        if body.get("type") != "AsymmetricX509Cert" or body.get("usage") != "Verify":
            raise bad_request("Only keyCredentials of type 'AsymmetricX509Cert' with usage 'Verify' are supported.", "KeyCredentialsInvalidUsage")
        certificate = _load_certificate(body.get("key"))
        start = certificate.not_valid_before_utc.timestamp()
        end = certificate.not_valid_after_utc.timestamp()
        return KeyCredential(key_id if isinstance(key_id, str) else str(uuid.uuid4()), certificate,
                             str(body.get("displayName") or certificate.subject.rfc4514_string()), start, end)

    def add_key(self, key: str, credential: dict[str, object], proof_holder: x509.Certificate) -> KeyCredential:
        """C{addKey}, once the Graph layer has checked the proof against C{proof_holder}."""
        app = self.application(key)
        if not any(k.certificate == proof_holder for k in app.key_credentials):
            raise denied()
        new = self._key_credential(app, credential)
        app.key_credentials.append(new)
        self._sync(app, fresh=[_fingerprint(new.certificate)])
        return new

    def remove_key(self, key: str, key_id: str, proof_holder: x509.Certificate) -> None:
        app = self.application(key)
        if not any(k.certificate == proof_holder for k in app.key_credentials):
            raise denied()
        kept = [k for k in app.key_credentials if k.key_id != key_id]
        if len(kept) == len(app.key_credentials):
            raise not_found(key_id)
        app.key_credentials = kept
        self._sync(app)

    def add_password(self, actor: str | None, key: str, display_name: str | None, end: float | None) -> PasswordCredential:
        self._require(actor, APP_MANAGERS)
        app = self.application(key)
        now = self.now()
        credential = PasswordCredential(str(uuid.uuid4()), _secret_text(), display_name or "", now, end or now + 2 * 365 * 86400)
        app.password_credentials.append(credential)
        self._sync(app, fresh=[credential.secret])
        return credential

    def remove_password(self, actor: str | None, key: str, key_id: str) -> None:
        self._require(actor, APP_MANAGERS)
        app = self.application(key)
        kept = [p for p in app.password_credentials if p.key_id != key_id]
        if len(kept) == len(app.password_credentials):
            raise not_found(key_id)
        app.password_credentials = kept
        self._sync(app)

    def _sync(self, app: Application, fresh: Iterable[str] = ()) -> None:
        """Mirror the registration onto the identity platform's record of the app."""
        registered = self.identity.apps.get(app.app_id)
        if registered is None:
            return
        registered.name = app.display_name
        before = {_fingerprint(c) for c in registered.certificates} | set(registered.client_secrets)
        registered.certificates = [k.certificate for k in app.key_credentials]
        registered.client_secrets = [p.secret for p in app.password_credentials]
        registered.redirect_uris = app.web_redirect_uris + app.public_client_redirect_uris
        # A confidential client once it has a credential, as Entra ID treats it unless
        # "allow public client flows" (isFallbackPublicClient) is on.
        registered.public_client = app.is_fallback_public_client or not (app.key_credentials or app.password_credentials)
        usable_from = self.now() + self.replication_delay
        for credential in [*fresh, *({_fingerprint(c) for c in registered.certificates} | set(registered.client_secrets)) - before]:
            registered.credentials_usable_from[credential] = usable_from

    # -- service principals and consent ---------------------------------------------

    def create_service_principal(self, actor: str | None, app_id: str, tags: list[str] | None = None) -> ServicePrincipal:
        self._require(actor, APP_MANAGERS)
        app = next((a for a in self.applications.values() if a.app_id == app_id), None)
        if app is None:
            raise not_found(app_id)
        if self.service_principal_of(app_id) is not None:
            # 409 as Graph answers a second one, e.g. New-MgServicePrincipal's "Status: 409
            # (Conflict) ErrorCode: Request_MultipleObjectsWithSameKeyValue" quoted in setup
            # guides; clients look it up by appId first.
            raise DirectoryError(409, "Request_MultipleObjectsWithSameKeyValue",
                                 "The service principal cannot be created, updated, or restored because the service principal "
                                 f"name {app_id} is already in use.")
        sp = ServicePrincipal(str(uuid.uuid4()), app_id, app.display_name, self.now(), self.tenant_id, tags=list(tags or []))
        self.service_principals[sp.id] = sp
        registered = self.identity.apps.get(app_id)
        if registered is not None:
            registered.has_service_principal = True
            registered.service_principal_id = sp.id
        return sp

    def assign_app_role(self, actor: str | None, principal_id: str, resource_id: str, app_role_id: str) -> AppRoleAssignment:
        resource = self.service_principal(resource_id)
        principal = self.service_principal(principal_id)
        self._require(actor, GRAPH_ROLE_GRANTERS if resource.app_id == GRAPH_APP_ID else CONSENT_GRANTERS)
        role = resource.role(app_role_id)
        if role is None:
            # Graph's texts (400) as many public setup scripts match on them; no Microsoft
            # page documents them, and the code (Request_BadRequest) is the sandbox's.
            raise bad_request("Permission being assigned was not found on application", "Request_BadRequest")
        for existing in self.app_role_assignments:
            if (existing.principal_id, existing.resource_id, existing.app_role_id) == (principal.id, resource.id, role.id):
                raise bad_request("Permission being assigned already exists on the object", "Request_BadRequest")
        assignment = AppRoleAssignment(str(uuid.uuid4()), role.id, principal.id, principal.display_name, resource.id,
                                       resource.display_name, self.now())
        self.app_role_assignments.append(assignment)
        self._sync_roles(principal)
        return assignment

    def remove_app_role_assignment(self, actor: str | None, assignment_id: str) -> None:
        self._require(actor, CONSENT_GRANTERS)
        found = next((a for a in self.app_role_assignments if a.id == assignment_id), None)
        if found is None:
            raise not_found(assignment_id)
        self.app_role_assignments.remove(found)
        self._sync_roles(self.service_principal(found.principal_id))

    def _sync_roles(self, principal: ServicePrincipal) -> None:
        """The C{roles} claim the app's client-credentials tokens carry, per audience."""
        registered = self.identity.apps.get(principal.app_id)
        if registered is None:
            return
        roles: dict[str, tuple[str, ...]] = {}
        for assignment in self.app_role_assignments:
            if assignment.principal_id != principal.id:
                continue
            resource = self.service_principals[assignment.resource_id]
            role = resource.role(assignment.app_role_id)
            for audience in RESOURCE_AUDIENCES.get(resource.app_id, ()):
                if role is not None:
                    roles[audience] = (*roles.get(audience, ()), role.value)
        registered.roles = roles

    def grant_delegated(
        self, actor: str | None, client_id: str, consent_type: str, principal_id: str | None, resource_id: str, scope: str
    ) -> PermissionGrant:
        self._require(actor, CONSENT_GRANTERS)
        client = self.service_principal(client_id)
        resource = self.service_principal(resource_id)
        if consent_type not in ("AllPrincipals", "Principal"):
            raise bad_request("Invalid value specified for property 'consentType' of resource 'OAuth2PermissionGrant'.")
        known = {s.value for s in resource.scopes}
        unknown = [s for s in scope.split() if s not in known]
        if unknown:
            raise bad_request(f"Invalid value specified for property 'scope' of resource 'OAuth2PermissionGrant': {' '.join(unknown)}")
        grant = PermissionGrant(secrets.token_urlsafe(32), client.id, consent_type,
                                principal_id if consent_type == "Principal" else None, resource.id, scope)
        self.permission_grants.append(grant)
        registered = self.identity.apps.get(client.app_id)
        if registered is not None and registered.granted_scopes is not None:
            if grant.principal_id is None:
                registered.granted_scopes.update(scope.split())
            else:
                registered.user_granted_scopes.setdefault(grant.principal_id, set()).update(scope.split())
        return grant

    def delegated_scopes(self, app_id: str) -> set[str]:
        """Every delegated permission granted to C{app_id} (any resource, any consent type)."""
        sp = self.service_principal_of(app_id)
        if sp is None:
            return set()
        return {s for g in self.permission_grants if g.client_id == sp.id for s in g.scope.split()}


def _fingerprint(certificate: x509.Certificate) -> str:
    return certificate.fingerprint(hashes.SHA256()).hex()


def _load_certificate(value: object) -> x509.Certificate:
    """A keyCredential's C{key}: base64 of the DER certificate (Graph's Edm.Binary)."""
    import base64
    import binascii

    if not isinstance(value, str) or not value:
        raise bad_request("Property 'key' of a keyCredential is required.", "KeyCredentialsInvalidKey")
    try:
        der = base64.b64decode(value, validate=True)
        if der.startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(der)
        return x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError):
        raise bad_request("Key credential key is invalid.", "KeyCredentialsInvalidKey") from None


__all__ = [
    "Application", "AppRoleAssignment", "Directory", "DirectoryError", "KeyCredential", "PasswordCredential",
    "PermissionGrant", "ServicePrincipal",
]
