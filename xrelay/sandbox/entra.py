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

The sandbox directory's first-party service principals, with Microsoft's real ids where
a public source confirms them (clients must still look permissions up by C{value}):

  Microsoft Graph (appId 00000003-0000-0000-c000-000000000000)
    app roles:  Mail.Send b633e1c5-b582-4048-a93e-9f11b44c7e96,
                Mail.ReadWrite e2a3a72e-5f79-4c64-b1b1-878b674786c9
    scopes:     Mail.Send e383f46e-2787-4529-855e-0e479a3ffac0, User.Read
                e1fe6dd8-ba31-4d61-89e7-88639da4683d, SMTP.Send
                258f6531-6087-4cc4-bb90-092c5fb3ed3f, offline_access
                7427e0e9-2fba-42fe-b0c0-848c9e6a8182, openid
                37f7f235-527c-4136-accd-4a02d197296e, profile
                14dad69e-099b-42c9-810b-d002981feec1, IMAP.AccessAsUser.All
                652390e4-393a-48de-9484-05f9b1212954
  Office 365 Exchange Online (appId 00000002-0000-0ff1-ce00-000000000000)
    app roles:  SMTP.SendAsApp (id: a sandbox value, see L{SMTP_SEND_AS_APP_ID}),
                Exchange.ManageAsApp dc50a0fb-09a3-484d-be87-e023b12c6440
    scopes:     Exchange.Manage, SMTP.Send (ids: sandbox values)

Sources for the ids: the Microsoft Graph permissions reference
(https://learn.microsoft.com/en-us/graph/permissions-reference), as quoted in public
setup scripts; SMTP.SendAsApp's id is resolved by value in every public script we found,
so the sandbox makes its own and says so.

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

from .identity import GRAPH_RESOURCE, NATIONAL_GRAPH_RESOURCES, OUTLOOK_RESOURCES, IdentityPlatform

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
#: The Microsoft Graph Command Line Tools: a first-party public client that allows the
#: device code flow and http://localhost redirects on any port
#: (https://learn.microsoft.com/en-us/powershell/microsoftgraph/authentication-commands).
GRAPH_CLI_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"
#: Not confirmed from a public source: clients must look SMTP.SendAsApp up by value.
SMTP_SEND_AS_APP_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "xrelay-sandbox:SMTP.SendAsApp"))

GLOBAL_ADMIN = "Global Administrator"
APPLICATION_ADMIN = "Application Administrator"
CLOUD_APPLICATION_ADMIN = "Cloud Application Administrator"
PRIVILEGED_ROLE_ADMIN = "Privileged Role Administrator"
EXCHANGE_ADMIN = "Exchange Administrator"

APP_MANAGERS = frozenset({GLOBAL_ADMIN, APPLICATION_ADMIN, CLOUD_APPLICATION_ADMIN})
GRAPH_ROLE_GRANTERS = frozenset({GLOBAL_ADMIN, PRIVILEGED_ROLE_ADMIN})
CONSENT_GRANTERS = APP_MANAGERS | GRAPH_ROLE_GRANTERS

#: Resource service principal appId -> the token audiences its app roles appear in.
RESOURCE_AUDIENCES: dict[str, tuple[str, ...]] = {
    GRAPH_APP_ID: (GRAPH_RESOURCE, *NATIONAL_GRAPH_RESOURCES),
    EXCHANGE_APP_ID: OUTLOOK_RESOURCES,
}


class DirectoryError(Exception):
    """A refusal the Graph layer turns into Graph's error body (status, code, message)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def denied() -> DirectoryError:
    # https://learn.microsoft.com/en-us/graph/resolve-auth-errors (403, Authorization_RequestDenied)
    return DirectoryError(403, "Authorization_RequestDenied", "Insufficient privileges to complete the operation.")


def not_found(what: str) -> DirectoryError:
    # Graph's wording for a missing directory object, e.g.
    # https://learn.microsoft.com/en-us/answers/questions/1410298 (Request_ResourceNotFound)
    return DirectoryError(
        404, "Request_ResourceNotFound",
        f"Resource '{what}' does not exist or one of its queried reference-property objects are not present.",
    )


def bad_request(message: str, code: str = "Request_BadRequest") -> DirectoryError:
    return DirectoryError(400, code, message)


def iso(when: float) -> str:
    """Graph's DateTimeOffset: C{2026-12-07T18:00:00Z}."""
    return datetime.datetime.fromtimestamp(when, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@attrs.frozen
class AppRole:
    id: str
    value: str
    display_name: str
    description: str


@attrs.frozen
class PermissionScope:
    id: str
    value: str
    admin_display_name: str
    #: C{"Admin"}: only an admin may consent; C{"User"}: users may consent for themselves.
    type: str


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


def _role(role_id: str, value: str, name: str) -> AppRole:
    return AppRole(role_id, value, name, f"Allows the app to {name[0].lower()}{name[1:]}.")


GRAPH_ROLES = (
    _role("b633e1c5-b582-4048-a93e-9f11b44c7e96", "Mail.Send", "Send mail as any user"),
    _role("e2a3a72e-5f79-4c64-b1b1-878b674786c9", "Mail.ReadWrite", "Read and write mail in all mailboxes"),
)
GRAPH_SCOPES = (
    PermissionScope("e383f46e-2787-4529-855e-0e479a3ffac0", "Mail.Send", "Send mail as a user", "User"),
    PermissionScope("e1fe6dd8-ba31-4d61-89e7-88639da4683d", "User.Read", "Sign in and read user profile", "User"),
    PermissionScope("258f6531-6087-4cc4-bb90-092c5fb3ed3f", "SMTP.Send", "Send emails from mailboxes using SMTP AUTH.", "User"),
    PermissionScope("7427e0e9-2fba-42fe-b0c0-848c9e6a8182", "offline_access", "Maintain access to data you have given it access to", "User"),
    PermissionScope("37f7f235-527c-4136-accd-4a02d197296e", "openid", "Sign users in", "User"),
    PermissionScope("14dad69e-099b-42c9-810b-d002981feec1", "profile", "View users' basic profile", "User"),
    PermissionScope("652390e4-393a-48de-9484-05f9b1212954", "IMAP.AccessAsUser.All", "Read and write access to mailboxes via IMAP.", "User"),
)
EXCHANGE_ROLES = (
    _role(SMTP_SEND_AS_APP_ID, "SMTP.SendAsApp", "Send emails from mailboxes using SMTP AUTH"),
    _role("dc50a0fb-09a3-484d-be87-e023b12c6440", "Exchange.ManageAsApp", "Manage Exchange As Application"),
)
EXCHANGE_SCOPES = (
    PermissionScope(str(uuid.uuid5(uuid.NAMESPACE_URL, "xrelay-sandbox:Exchange.Manage")), "Exchange.Manage",
                    "Access Microsoft Exchange Online as the signed-in user", "Admin"),
    PermissionScope(str(uuid.uuid5(uuid.NAMESPACE_URL, "xrelay-sandbox:exo:SMTP.Send")), "SMTP.Send",
                    "Send emails from mailboxes using SMTP AUTH.", "User"),
)


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

    def __attrs_post_init__(self) -> None:
        for app_id, name, roles, scopes in (
            (GRAPH_APP_ID, "Microsoft Graph", GRAPH_ROLES, GRAPH_SCOPES),
            (EXCHANGE_APP_ID, "Office 365 Exchange Online", EXCHANGE_ROLES, EXCHANGE_SCOPES),
        ):
            sp = ServicePrincipal(str(uuid.uuid4()), app_id, name, self.now(), "f8cdef31-a31e-4b4a-93e4-5f571e91255a",
                                  roles, scopes, first_party=True)
            self.service_principals[sp.id] = sp

    @property
    def now(self) -> Callable[[], float]:
        return self.identity.now

    @property
    def tenant_id(self) -> str:
        return self.identity.add_tenant(self.tenant).id

    def replicate(self) -> None:
        """Make time pass for replication: every app and credential works from now on."""
        now = self.now()
        for app in self.applications.values():
            registered = self.identity.apps.get(app.app_id)
            if registered is not None:
                registered.usable_from = min(registered.usable_from, now)
                for credential, when in registered.credentials_usable_from.items():
                    registered.credentials_usable_from[credential] = min(when, now)

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
            # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-post-serviceprincipals
            # (creating one twice fails; clients look it up by appId first)
            raise bad_request("The service principal cannot be created, updated, or restored because the service principal name "
                              f"{app_id} is already in use.")
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
            # Graph's answer to an appRoleId the resource does not define.
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
    "Application", "AppRole", "AppRoleAssignment", "Directory", "DirectoryError", "KeyCredential",
    "PasswordCredential", "PermissionGrant", "PermissionScope", "ServicePrincipal",
]
