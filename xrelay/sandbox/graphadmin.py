"""
Microsoft Graph v1.0 app management on the sandbox, as HTTP/JSON: the requests an
admin's setup wizard makes to register an app, its service principal, consent and a
credential, and to look up the mailbox.  Decisions live in L{xrelay.sandbox.entra}; this
module checks the bearer token (issued by the sandbox identity platform for
C{https://graph.microsoft.com}, delegated, with the scope each API documents), parses
the body and writes Graph's JSON shapes and errors.

Routes (each beside its documentation page below):
  POST/GET  /v1.0/applications[?$filter=]      GET/PATCH/DELETE /v1.0/applications/{id}
  POST      /v1.0/applications/{id}/addKey | removeKey | addPassword | removePassword
  POST/GET  /v1.0/servicePrincipals[?$filter=] GET /v1.0/servicePrincipals/{id}
  POST/GET  /v1.0/servicePrincipals/{id}/appRoleAssignments
  POST/GET  /v1.0/oauth2PermissionGrants[?$filter=]
  GET       /v1.0/users/{id|upn}   /v1.0/me   /v1.0/organization
An object may also be addressed as C{applications(appId='...')} or
C{servicePrincipals(appId='...')}.

Never logs; never echoes a token, secret or proof.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable
from urllib.parse import unquote

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import rsa

from . import webtoken
from .entra import (
    APP_MANAGERS, Application, AppRoleAssignment, Directory, DirectoryError, KeyCredential, PasswordCredential,
    PermissionGrant, ServicePrincipal, bad_request, denied, iso, not_found,
)
from .errors import Response, graph_error
from .identity import GRAPH_RESOURCE, AccessToken, IdentityPlatform

METADATA = "https://graph.microsoft.com/v1.0/$metadata"
#: The audience a proof-of-possession JWT for addKey/removeKey must carry
#: (https://learn.microsoft.com/en-us/graph/api/application-addkey, "proof" property).
PROOF_AUDIENCE = "00000002-0000-0000-c000-000000000000"
_KEY_SYNTAX = re.compile(r"^(applications|servicePrincipals)\(appId='([^']*)'\)$")


@attrs.define
class GraphAdmin:
    """The Graph app-management endpoints over one L{Directory}."""

    identity: IdentityPlatform
    directory: Directory

    @property
    def now(self) -> Callable[[], float]:
        return self.identity.now

    def handle(self, method: str, path: list[str], query: dict[str, str], authorization: str | None,
               body: bytes) -> Response | None:
        """The response, or C{None} when the path is not an app-management route."""
        segments = path[1:]
        if segments and (m := _KEY_SYNTAX.match(segments[0])):
            segments = [m.group(1), m.group(2), *segments[1:]]
        if not segments or segments[0] not in ("applications", "servicePrincipals", "oauth2PermissionGrants",
                                                 "users", "me", "organization"):
            return None
        if segments[0] == "users" and len(segments) > 2:
            return None  # /users/{id}/sendMail and friends belong to Graph mail
        access = self._access(authorization)
        if isinstance(access, Response):
            return access
        try:
            payload = json.loads(body) if body.strip() else {}
        except ValueError:
            payload = None
        if payload is not None and not isinstance(payload, dict):
            payload = None
        if method in ("POST", "PATCH") and payload is None:
            return graph_error(400, "BadRequest", "Unable to read JSON request payload. Please ensure Content-Type header is set and payload is of valid JSON format.", self.now())
        try:
            return self._route(method, segments, query, access, payload or {})
        except DirectoryError as e:
            return graph_error(e.status, e.code, e.message, self.now())

    # -- authentication --------------------------------------------------------------

    def _access(self, authorization: str | None) -> AccessToken | Response:
        # Texts as Graph answers them; https://learn.microsoft.com/en-us/graph/resolve-auth-errors
        now = self.now()
        if not authorization:
            return graph_error(401, "InvalidAuthenticationToken", "Access token is empty.", now)
        scheme, _, token = authorization.partition(" ")
        access = self.identity.check_access_token(token.strip()) if scheme.lower() == "bearer" else None
        if access is None:
            return graph_error(401, "InvalidAuthenticationToken", "Access token has expired or is not yet valid.", now)
        if access.audience != GRAPH_RESOURCE:
            return graph_error(401, "InvalidAuthenticationToken", "Access token validation failure. Invalid audience.", now)
        return access

    @staticmethod
    def _actor(access: AccessToken, *scopes: str) -> str | None:
        """The signed-in admin if the token is delegated and carries one of C{scopes}."""
        if access.app_only or not (access.permissions & set(scopes)):
            raise denied()
        return access.upn

    # -- routing ---------------------------------------------------------------------

    def _route(self, method: str, seg: list[str], query: dict[str, str], access: AccessToken,
               body: dict[str, Any]) -> Response:
        kind = seg[0]
        rw_apps = ("Application.ReadWrite.All",)
        if kind == "me" and len(seg) == 1 and method == "GET":
            # https://learn.microsoft.com/en-us/graph/api/user-get (GET /me: User.Read)
            if access.app_only:
                return graph_error(400, "BadRequest", "/me request is only valid with delegated authentication flow.", self.now())
            return self._user(access.upn or "")
        if kind == "users" and len(seg) == 2 and method == "GET":
            # https://learn.microsoft.com/en-us/graph/api/user-get (User.Read.All, or User.Read for oneself)
            if not (access.permissions & {"User.Read.All", "User.ReadBasic.All", "Directory.Read.All"}) and (
                    access.app_only or seg[1].lower() != (access.upn or "").lower()):
                raise denied()
            return self._user(seg[1])
        if kind == "organization" and len(seg) == 1 and method == "GET":
            # https://learn.microsoft.com/en-us/graph/api/organization-list
            tenant = self.directory.identity.add_tenant(self.directory.tenant)
            return self._list("organization", [{"id": tenant.id, "displayName": tenant.domain,
                                                 "verifiedDomains": [{"name": tenant.domain, "isDefault": True, "isInitial": True, "type": "Managed"}]}])
        if kind == "applications":
            if len(seg) == 1 and method == "POST":
                # https://learn.microsoft.com/en-us/graph/api/application-post-applications (201)
                fields = {k: v for k, v in body.items() if k != "displayName"}
                app = self.directory.create_application(self._actor(access, *rw_apps), str(body.get("displayName") or ""), **fields)
                return Response(201, {"@odata.context": f"{METADATA}#applications/$entity", **application_json(app)})
            if len(seg) == 1 and method == "GET":
                # https://learn.microsoft.com/en-us/graph/api/application-list ($filter)
                self._actor(access, *rw_apps, "Application.Read.All", "Directory.Read.All")
                match = odata_filter(query.get("$filter", ""))
                return self._list("applications", [application_json(a) for a in self.directory.applications.values()
                                                   if match(application_json(a))])
            app = self.directory.application(seg[1])
            if len(seg) == 2 and method == "GET":
                # https://learn.microsoft.com/en-us/graph/api/application-get
                self._actor(access, *rw_apps, "Application.Read.All", "Directory.Read.All")
                return Response(200, {"@odata.context": f"{METADATA}#applications/$entity", **application_json(app)})
            if len(seg) == 2 and method == "PATCH":
                # https://learn.microsoft.com/en-us/graph/api/application-update (204)
                self.directory.update_application(self._actor(access, *rw_apps), app.id, body)
                return Response(204)
            if len(seg) == 2 and method == "DELETE":
                # https://learn.microsoft.com/en-us/graph/api/application-delete (204)
                self.directory.delete_application(self._actor(access, *rw_apps), app.id)
                return Response(204)
            if len(seg) == 3 and method == "POST":
                return self._application_action(seg[2], app, access, body)
        if kind == "servicePrincipals":
            return self._service_principals(method, seg, query, access, body)
        if kind == "oauth2PermissionGrants":
            scopes = ("DelegatedPermissionGrant.ReadWrite.All",)
            if len(seg) == 1 and method == "POST":
                # https://learn.microsoft.com/en-us/graph/api/oauth2permissiongrant-post (201)
                grant = self.directory.grant_delegated(
                    self._actor(access, *scopes), str(body.get("clientId", "")), str(body.get("consentType", "")),
                    body.get("principalId"), str(body.get("resourceId", "")), str(body.get("scope", "")))
                return Response(201, {"@odata.context": f"{METADATA}#oauth2PermissionGrants/$entity", **grant_json(grant)})
            if len(seg) == 1 and method == "GET":
                # https://learn.microsoft.com/en-us/graph/api/oauth2permissiongrant-list
                self._actor(access, *scopes, "Directory.Read.All")
                match = odata_filter(query.get("$filter", ""))
                return self._list("oauth2PermissionGrants", [grant_json(g) for g in self.directory.permission_grants if match(grant_json(g))])
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{seg[-1]}'.", self.now())

    def _service_principals(self, method: str, seg: list[str], query: dict[str, str], access: AccessToken,
                            body: dict[str, Any]) -> Response:
        rw_apps = ("Application.ReadWrite.All",)
        read = (*rw_apps, "Application.Read.All", "Directory.Read.All", "AppRoleAssignment.ReadWrite.All")
        if len(seg) == 1 and method == "POST":
            # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-post-serviceprincipals (201)
            tags = body.get("tags")
            sp = self.directory.create_service_principal(self._actor(access, *rw_apps), str(body.get("appId", "")),
                                                         [str(t) for t in tags] if isinstance(tags, list) else None)
            return Response(201, {"@odata.context": f"{METADATA}#servicePrincipals/$entity", **service_principal_json(sp)})
        if len(seg) == 1 and method == "GET":
            # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-list ($filter=appId eq '...')
            self._actor(access, *read)
            match = odata_filter(query.get("$filter", ""))
            return self._list("servicePrincipals", [service_principal_json(s) for s in self.directory.service_principals.values()
                                                    if match(service_principal_json(s))])
        sp = self.directory.service_principal(seg[1])
        if len(seg) == 2 and method == "GET":
            self._actor(access, *read)
            return Response(200, {"@odata.context": f"{METADATA}#servicePrincipals/$entity", **service_principal_json(sp)})
        if len(seg) == 3 and seg[2] == "appRoleAssignments":
            scopes = ("AppRoleAssignment.ReadWrite.All",)
            if method == "POST":
                # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-post-approleassignments (201)
                if str(body.get("principalId", "")) != sp.id:
                    raise bad_request("The principalId must be the service principal in the request URL.")
                assignment = self.directory.assign_app_role(self._actor(access, *scopes), sp.id, str(body.get("resourceId", "")),
                                                            str(body.get("appRoleId", "")))
                return Response(201, {"@odata.context": f"{METADATA}#servicePrincipals('{sp.id}')/appRoleAssignments/$entity",
                                      **assignment_json(assignment)})
            if method == "GET":
                # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-list-approleassignments
                self._actor(access, *scopes, *read)
                return self._list(f"servicePrincipals('{sp.id}')/appRoleAssignments",
                                  [assignment_json(a) for a in self.directory.app_role_assignments if a.principal_id == sp.id])
        if len(seg) == 4 and seg[2] == "appRoleAssignments" and method == "DELETE":
            # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-delete-approleassignments (204)
            self.directory.remove_app_role_assignment(self._actor(access, "AppRoleAssignment.ReadWrite.All"), seg[3])
            return Response(204)
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{seg[-1]}'.", self.now())

    def _application_action(self, action: str, app: Application, access: AccessToken, body: dict[str, Any]) -> Response:
        if action == "addPassword":
            # https://learn.microsoft.com/en-us/graph/api/application-addpassword (200, secretText once)
            given = body.get("passwordCredential") or {}
            end = _parse_time(given.get("endDateTime")) if isinstance(given, dict) else None
            name = given.get("displayName") if isinstance(given, dict) else None
            password = self.directory.add_password(self._actor(access, "Application.ReadWrite.All"), app.id,
                                                   str(name) if name else None, end)
            return Response(200, {"@odata.context": f"{METADATA}#microsoft.graph.passwordCredential",
                                  **password_json(password, with_secret=True)})
        if action == "removePassword":
            # https://learn.microsoft.com/en-us/graph/api/application-removepassword (204)
            self.directory.remove_password(self._actor(access, "Application.ReadWrite.All"), app.id, str(body.get("keyId", "")))
            return Response(204)
        if action in ("addKey", "removeKey"):
            # https://learn.microsoft.com/en-us/graph/api/application-addkey and -removekey:
            # the caller proves possession of one of the app's current certificates with
            # a JWT signed by its key: aud 00000002-0000-0000-c000-000000000000, iss the
            # application's object id, nbf/exp at most 10 minutes apart.  An app may roll
            # its own keys with an app-only token; an admin needs Application.ReadWrite.All.
            if not (access.app_only and access.client_id == app.app_id):
                self.directory._require(self._actor(access, "Application.ReadWrite.All"), APP_MANAGERS)
            holder = self._proof_holder(app, str(body.get("proof") or ""))
            if action == "removeKey":
                self.directory.remove_key(app.id, str(body.get("keyId", "")), holder)
                return Response(204)
            given = body.get("keyCredential")
            if not isinstance(given, dict):
                raise bad_request("Property 'keyCredential' is required.")
            new = self.directory.add_key(app.id, given, holder)
            return Response(200, {"@odata.context": f"{METADATA}#microsoft.graph.keyCredential", **key_json(new)})
        return graph_error(400, "BadRequest", f"Resource not found for the segment '{action}'.", self.now())

    def _proof_holder(self, app: Application, proof: str) -> x509.Certificate:
        """The app certificate whose key signed C{proof}, or a 400/403 refusal."""
        # The docs name no error code for a bad proof; the sandbox answers 400
        # Request_BadRequest (invalid) or 403 (a key the app does not hold).
        if not app.key_credentials:
            raise bad_request("The application has no valid certificate; add the first one with Update application (PATCH keyCredentials).")
        try:
            webtoken.unverified(proof)
        except webtoken.MalformedToken:
            raise bad_request("Proof of possession is not a valid JWT.") from None
        now = self.now()
        for credential in app.key_credentials:
            key = credential.certificate.public_key()
            if not isinstance(key, rsa.RSAPublicKey):
                continue
            try:
                claims = webtoken.verify(proof, key)
            except webtoken.MalformedToken:
                continue
            nbf, exp = claims.get("nbf", 0), claims.get("exp", 0)
            if claims.get("aud") != PROOF_AUDIENCE or claims.get("iss") != app.id:
                raise bad_request("Proof of possession has the wrong audience or issuer.")
            if not (isinstance(nbf, (int, float)) and isinstance(exp, (int, float)) and nbf - 300 <= now <= exp + 300 and exp - nbf <= 600):
                raise bad_request("Proof of possession is expired or not yet valid.")
            if credential.end < now:
                raise bad_request("Proof of possession is signed by an expired certificate.")
            return credential.certificate
        raise denied()

    # -- shapes ----------------------------------------------------------------------

    def _user(self, key: str) -> Response:
        user = self.identity.user(key) or next((u for u in self.identity.users.values() if u.oid == key), None)
        if user is None:
            # https://learn.microsoft.com/en-us/graph/api/user-get: 404 Request_ResourceNotFound
            raise not_found(key)
        return Response(200, {
            "@odata.context": f"{METADATA}#users/$entity", "businessPhones": [], "displayName": user.display_name,
            "givenName": None, "jobTitle": None, "mail": user.upn, "mobilePhone": None, "officeLocation": None,
            "preferredLanguage": None, "surname": None, "userPrincipalName": user.upn, "id": user.oid,
        })

    @staticmethod
    def _list(context: str, items: list[dict[str, Any]]) -> Response:
        return Response(200, {"@odata.context": f"{METADATA}#{context}", "value": items})


def application_json(app: Application) -> dict[str, Any]:
    """Graph's C{application} resource (the properties a client of the sandbox reads)."""
    return {
        "id": app.id, "appId": app.app_id, "displayName": app.display_name, "createdDateTime": iso(app.created),
        "deletedDateTime": None, "description": None, "notes": app.notes, "signInAudience": app.sign_in_audience,
        "tags": list(app.tags), "isFallbackPublicClient": app.is_fallback_public_client,
        "identifierUris": [], "publisherDomain": None,
        "keyCredentials": [key_json(k) for k in app.key_credentials],
        "passwordCredentials": [password_json(p) for p in app.password_credentials],
        "publicClient": {"redirectUris": list(app.public_client_redirect_uris)},
        "web": {"homePageUrl": None, "logoutUrl": None, "redirectUris": list(app.web_redirect_uris),
                "implicitGrantSettings": {"enableAccessTokenIssuance": False, "enableIdTokenIssuance": False}},
        "requiredResourceAccess": list(app.required_resource_access),
    }


def key_json(key: KeyCredential) -> dict[str, Any]:
    """A C{keyCredential}: the certificate itself (C{key}) is only returned on C{$select}."""
    import base64

    return {
        "customKeyIdentifier": base64.b64encode(key.thumbprint).decode(), "displayName": key.display_name,
        "endDateTime": iso(key.end), "key": None, "keyId": key.key_id, "startDateTime": iso(key.start),
        "type": "AsymmetricX509Cert", "usage": "Verify",
    }


def password_json(password: PasswordCredential, with_secret: bool = False) -> dict[str, Any]:
    return {
        "customKeyIdentifier": None, "displayName": password.display_name, "endDateTime": iso(password.end),
        "hint": password.hint, "keyId": password.key_id, "secretText": password.secret if with_secret else None,
        "startDateTime": iso(password.start),
    }


def service_principal_json(sp: ServicePrincipal) -> dict[str, Any]:
    return {
        "id": sp.id, "appId": sp.app_id, "displayName": sp.display_name, "appDisplayName": sp.display_name,
        "accountEnabled": True, "appOwnerOrganizationId": sp.app_owner_tenant_id, "servicePrincipalType": "Application",
        "createdDateTime": iso(sp.created), "deletedDateTime": None, "tags": list(sp.tags),
        "servicePrincipalNames": [sp.app_id], "appRoleAssignmentRequired": False,
        "appRoles": [{"allowedMemberTypes": ["Application"], "description": r.description, "displayName": r.display_name,
                      "id": r.id, "isEnabled": True, "origin": "Application", "value": r.value} for r in sp.app_roles],
        "oauth2PermissionScopes": [{"adminConsentDescription": s.admin_display_name, "adminConsentDisplayName": s.admin_display_name,
                                    "id": s.id, "isEnabled": True, "type": s.type, "userConsentDescription": s.admin_display_name,
                                    "userConsentDisplayName": s.admin_display_name, "value": s.value} for s in sp.scopes],
    }


def assignment_json(a: AppRoleAssignment) -> dict[str, Any]:
    return {
        "id": a.id, "deletedDateTime": None, "appRoleId": a.app_role_id, "createdDateTime": iso(a.created),
        "principalDisplayName": a.principal_display_name, "principalId": a.principal_id, "principalType": "ServicePrincipal",
        "resourceDisplayName": a.resource_display_name, "resourceId": a.resource_id,
    }


def grant_json(g: PermissionGrant) -> dict[str, Any]:
    return {"id": g.id, "clientId": g.client_id, "consentType": g.consent_type, "principalId": g.principal_id,
            "resourceId": g.resource_id, "scope": g.scope}


_CLAUSE = re.compile(
    r"^\s*(?:(?P<prop>\w+)\s+eq\s+'(?P<value>(?:[^']|'')*)'"
    r"|startswith\(\s*(?P<sprop>\w+)\s*,\s*'(?P<svalue>(?:[^']|'')*)'\s*\)"
    r"|(?P<cprop>\w+)/any\(\s*(?P<var>\w+)\s*:\s*(?P=var)\s+eq\s+'(?P<cvalue>(?:[^']|'')*)'\s*\))\s*$"
)


def odata_filter(expression: str) -> Callable[[dict[str, Any]], bool]:
    """
    The subset of OData C{$filter} the setup needs, joined with C{and}: C{prop eq 'v'},
    C{startswith(prop,'v')}, C{tags/any(t:t eq 'v')}
    (https://learn.microsoft.com/en-us/graph/filter-query-parameter).  Anything else is
    refused as Graph refuses an unsupported query.
    """
    expression = unquote(expression).strip()
    if not expression:
        return lambda _: True
    clauses: list[tuple[str, str, str]] = []
    for clause in re.split(r"\s+and\s+", expression):
        m = _CLAUSE.match(clause)
        if m is None:
            raise bad_request("Invalid filter clause: the sandbox supports eq, startswith() and any() joined with and.")
        if m.group("prop"):
            clauses.append(("eq", m.group("prop"), m.group("value").replace("''", "'").lower()))
        elif m.group("sprop"):
            clauses.append(("startswith", m.group("sprop"), m.group("svalue").replace("''", "'").lower()))
        else:
            clauses.append(("any", m.group("cprop"), m.group("cvalue").replace("''", "'").lower()))

    def matches(item: dict[str, Any]) -> bool:
        for op, prop, value in clauses:
            if op == "any":
                if not any(str(x).lower() == value for x in item.get(prop) or ()):
                    return False
            elif op == "startswith":
                if not str(item.get(prop, "")).lower().startswith(value):
                    return False
            elif str(item.get(prop, "")).lower() != value:
                return False
        return True

    return matches


def _parse_time(value: object) -> float | None:
    import datetime

    if not isinstance(value, str):
        return None
    try:
        return datetime.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


__all__ = ["GraphAdmin", "odata_filter", "PROOF_AUDIENCE"]
