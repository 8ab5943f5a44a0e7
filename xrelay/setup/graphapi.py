"""
The Microsoft Graph v1.0 calls the setup makes with the admin's delegated token: app
registrations, service principals, app role assignments (admin consent to application
permissions), OAuth2 permission grants (consent to delegated ones), keys, and the user
lookup.  Each request's shape is Microsoft's, cited beside it; every refusal becomes a
L{GraphRefused} whose text is one line naming the fix.

Blocking (requests, through L{xrelay.tokens.trust.TrustedSession}): the page runs the
setup in a thread.  The admin's token lives in this object only, never in a log, an
exception or a file.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import quote

import attrs
import requests

__all__ = ["GraphAdminClient", "GraphRefused"]


class GraphRefused(Exception):
    """A Graph call that failed: HTTP status, Graph's error code, one line with the fix."""

    def __init__(self, status: int, code: str, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.code = code
        self.text = text


#: Graph's error codes the admin can act on, and what to do
#: (https://learn.microsoft.com/en-us/graph/errors,
#: https://learn.microsoft.com/en-us/graph/resolve-auth-errors).
_FIXES = {
    "Authorization_RequestDenied": (
        "the signed-in admin lacks the Entra role for this step ({what}); sign in as a "
        "Global Administrator, or as an Application Administrator who is also a "
        "Privileged Role Administrator (Microsoft Graph application permissions need "
        "that role to be consented)"),
    "InvalidAuthenticationToken": (
        "Graph refused the admin's sign-in ({what}); sign in again"),
}


@attrs.define
class GraphAdminClient:
    """Graph app management for one signed-in admin."""

    graph_url: str
    session: requests.Session
    _token: str = attrs.field(repr=False)

    def _call(self, method: str, path: str, what: str, body: dict[str, Any] | None = None,
              ok: tuple[int, ...] = (200, 201, 204)) -> dict[str, Any]:
        url = f"{self.graph_url.rstrip('/')}/{path.lstrip('/')}"
        try:
            response = self.session.request(
                method, url, json=body,
                headers={"Authorization": f"Bearer {self._token}",
                         "Content-Type": "application/json", "Accept": "application/json"})
        except requests.RequestException as e:
            raise GraphRefused(0, "unreachable", f"cannot reach Microsoft Graph at "
                               f"{self.graph_url} ({type(e).__name__}) while trying to "
                               f"{what}; check the network or [setup] graph_url") from None
        if response.status_code in ok:
            return response.json() if response.content else {}
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        code = str(error.get("code") or response.status_code)
        message = str(error.get("message") or response.reason or "")[:300]
        fix = _FIXES.get(code)
        if fix is not None:
            text = fix.format(what=what)
        else:
            text = (f"Graph refused to {what}: {response.status_code} {code}: {message}")
        raise GraphRefused(response.status_code, code, text)

    # -- lookups ---------------------------------------------------------------------

    def me(self) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/user-get (GET /me)
        return self._call("GET", "me", "read the signed-in admin")

    def user(self, address: str) -> dict[str, Any] | None:
        """The user (mailbox) by UPN, or None when the tenant has no such user."""
        # https://learn.microsoft.com/en-us/graph/api/user-get: 404 Request_ResourceNotFound
        try:
            return self._call("GET", f"users/{quote(address)}", f"look up {address}")
        except GraphRefused as e:
            if e.status == 404:
                return None
            raise

    def service_principal_of(self, app_id: str, what: str) -> dict[str, Any] | None:
        # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-list ($filter appId)
        found = self._call("GET", "servicePrincipals?$filter=" + quote(
            f"appId eq '{app_id}'"), what).get("value") or []
        return found[0] if found else None

    def applications_tagged(self, *tags: str) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/graph/api/application-list with
        # $filter=tags/any(t:t eq '...') (https://learn.microsoft.com/en-us/graph/filter-query-parameter)
        expression = " and ".join(f"tags/any(t:t eq '{t}')" for t in tags)
        return list(self._call("GET", "applications?$filter=" + quote(expression),
                               "look for an app registration xrelay made before"
                               ).get("value") or [])

    def application(self, object_id: str) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/application-get
        return self._call("GET", f"applications/{object_id}", "read the app registration")

    # -- changes ---------------------------------------------------------------------

    def create_application(self, body: dict[str, Any]) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/application-post-applications (201)
        return self._call("POST", "applications", "create the app registration", body)

    def update_application(self, object_id: str, body: dict[str, Any]) -> None:
        # https://learn.microsoft.com/en-us/graph/api/application-update (204)
        self._call("PATCH", f"applications/{object_id}", "update the app registration",
                   body)

    def create_service_principal(self, app_id: str, tags: list[str]) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-post-serviceprincipals
        return self._call("POST", "servicePrincipals", "create the service principal",
                          {"appId": app_id, "tags": tags})

    def app_role_assignments(self, sp_id: str) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-list-approleassignments
        return list(self._call("GET", f"servicePrincipals/{sp_id}/appRoleAssignments",
                               "read the app's permissions").get("value") or [])

    def assign_app_role(self, sp_id: str, resource_id: str, role_id: str,
                        what: str) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/serviceprincipal-post-approleassignments
        # {"principalId", "resourceId", "appRoleId"} -> 201 appRoleAssignment
        return self._call("POST", f"servicePrincipals/{sp_id}/appRoleAssignments",
                          f"grant admin consent to {what}",
                          {"principalId": sp_id, "resourceId": resource_id,
                           "appRoleId": role_id})

    def permission_grants(self, client_sp_id: str) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/graph/api/oauth2permissiongrant-list
        return list(self._call("GET", "oauth2PermissionGrants?$filter=" + quote(
            f"clientId eq '{client_sp_id}'"), "read the app's delegated consent"
        ).get("value") or [])

    def grant_delegated(self, client_sp_id: str, resource_id: str, scope: str,
                        principal_id: str) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/oauth2permissiongrant-post
        # consentType "Principal": consent for that one user only.
        return self._call("POST", "oauth2PermissionGrants",
                          f"consent to {scope} for one user",
                          {"clientId": client_sp_id, "consentType": "Principal",
                           "principalId": principal_id, "resourceId": resource_id,
                           "scope": scope})

    def add_first_key(self, object_id: str, certificate_der: bytes,
                      display_name: str) -> None:
        """The first certificate: PATCH keyCredentials (addKey needs a key to prove)."""
        # https://learn.microsoft.com/en-us/graph/api/application-update (keyCredentials;
        # keyCredential: type AsymmetricX509Cert, usage Verify, key = base64 DER)
        self.update_application(object_id, {"keyCredentials": [{
            "type": "AsymmetricX509Cert", "usage": "Verify", "displayName": display_name,
            "key": base64.b64encode(certificate_der).decode("ascii")}]})

    def add_key(self, object_id: str, certificate_der: bytes, display_name: str,
                proof: str) -> dict[str, Any]:
        # https://learn.microsoft.com/en-us/graph/api/application-addkey (200 keyCredential)
        return self._call("POST", f"applications/{object_id}/addKey",
                          "add the new certificate", {
                              "keyCredential": {
                                  "type": "AsymmetricX509Cert", "usage": "Verify",
                                  "displayName": display_name,
                                  "key": base64.b64encode(certificate_der).decode("ascii")},
                              "passwordCredential": None, "proof": proof})

    def remove_key(self, object_id: str, key_id: str, proof: str) -> None:
        # https://learn.microsoft.com/en-us/graph/api/application-removekey (204)
        self._call("POST", f"applications/{object_id}/removeKey",
                   "remove the old certificate", {"keyId": key_id, "proof": proof})

    def add_password(self, object_id: str, display_name: str) -> str:
        # https://learn.microsoft.com/en-us/graph/api/application-addpassword (secretText)
        result = self._call("POST", f"applications/{object_id}/addPassword",
                            "add a client secret",
                            {"passwordCredential": {"displayName": display_name}})
        return str(result["secretText"])
