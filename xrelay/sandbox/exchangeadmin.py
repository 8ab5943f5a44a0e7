"""
A stand-in for Exchange Online's admin API: the REST endpoint the ExchangeOnlineManagement
module (v3) itself calls for every cmdlet,
C{POST /adminapi/beta/{tenant}/InvokeCommand} with
C{{"CmdletInput": {"CmdletName": "...", "Parameters": {...}}}} and a bearer token for
C{https://outlook.office365.com} (delegated C{Exchange.Manage}); it answers
C{{"@odata.context": ..., "value": [...]}} (shape as used by public clients of the API,
e.g. https://github.com/claudineyqr/ExchangeOnlineAdminRestApi/blob/master/src/ExchangeOnlineAdminRestApi/ExchangeOnline.cs).

The cmdlets xrelay's setup runs: C{New-ServicePrincipal}, C{Get-ServicePrincipal},
C{Add-MailboxPermission}, C{Add-RecipientPermission}, C{New-ManagementScope},
C{New-ManagementRoleAssignment} (RBAC for Applications).  A caller without the Exchange
Administrator or Global Administrator role gets what Exchange answers a user not allowed
to run a cmdlet: HTTP 401 C{{"error": {"code": "Unauthorized", "message": "User is not
allowed to call <cmdlet>", ...}}}
(https://github.com/MicrosoftDocs/office-docs-powershell/issues/7970).

Exchange takes a while to act on what was registered: a mailbox permission or role
assignment takes effect L{ExchangeAdmin.acceptance_delay} seconds after it was made (then
the sandbox SMTP server and Graph let that app in).  L{ExchangeAdmin.run_powershell} is an
admin pasting the printed lines into Exchange Online PowerShell by hand.

Never logs a token.
"""

from __future__ import annotations

import shlex
import uuid
from typing import Any

import attrs
from twisted.internet.interfaces import IDelayedCall, IReactorTime

from .entra import EXCHANGE_ADMIN, GLOBAL_ADMIN, Directory
from .errors import Response
from .exchange import ExchangeServer
from .identity import OUTLOOK_RESOURCES, IdentityPlatform

EXCHANGE_ROLES = frozenset({EXCHANGE_ADMIN, GLOBAL_ADMIN})
#: RBAC for Applications roles xrelay may assign
#: (https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac).
APPLICATION_ROLES = ("Application Mail.Send", "Application Mail.ReadWrite", "Application SMTP.SendAsApp")


class CmdletError(Exception):
    """A cmdlet's failure: HTTP status, OData error code and Exchange's message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


def _odata_error(error: CmdletError) -> Response:
    return Response(error.status, {"error": {
        "code": error.code, "message": error.message,
        "innererror": {"message": error.message, "type": "Microsoft.Exchange.Admin.OData.Core.ODataServiceException"},
    }})


@attrs.define
class ExchangePrincipal:
    """Exchange's pointer to an Entra service principal (C{New-ServicePrincipal})."""

    app_id: str
    object_id: str
    display_name: str
    identity: str = attrs.field(factory=lambda: str(uuid.uuid4()))


@attrs.define
class ManagementScope:
    name: str
    recipient_filter: str

    def mailboxes(self, candidates: list[str]) -> list[str]:
        """The mailboxes matching C{PrimarySmtpAddress -eq 'x'} clauses joined by C{-or}."""
        wanted = {part.split("-eq", 1)[1].strip().strip("'\"").lower()
                  for part in self.recipient_filter.split("-or") if "-eq" in part}
        return [m for m in candidates if m.lower() in wanted]


@attrs.define
class ExchangeAdmin:
    """Exchange's admin state (service principals, mailbox permissions, RBAC) and cmdlets."""

    identity: IdentityPlatform
    directory: Directory
    exchange: ExchangeServer
    clock: IReactorTime
    acceptance_delay: float = 5.0
    principals: dict[str, ExchangePrincipal] = attrs.field(factory=dict)
    mailbox_permissions: list[tuple[str, str, str]] = attrs.field(factory=list)
    scopes: dict[str, ManagementScope] = attrs.field(factory=dict)
    role_assignments: list[dict[str, str]] = attrs.field(factory=list)
    _pending: list[IDelayedCall] = attrs.field(factory=list, repr=False)

    # -- HTTP ------------------------------------------------------------------------

    def invoke(self, tenant: str, authorization: str | None, body: dict[str, Any] | None) -> Response:
        """C{POST /adminapi/beta/{tenant}/InvokeCommand}."""
        scheme, _, token = (authorization or "").partition(" ")
        access = self.identity.check_access_token(token.strip()) if scheme.lower() == "bearer" else None
        if access is None or access.audience not in OUTLOOK_RESOURCES:
            return _odata_error(CmdletError(401, "Unauthorized", "Access token is missing, expired or not for https://outlook.office365.com."))
        if self.identity.tenant(tenant) is None or self.identity.tenant(tenant) != self.identity.tenant(access.tenant_id):
            return _odata_error(CmdletError(404, "NotFound", f"Tenant '{tenant}' not found."))
        cmdlet_input = (body or {}).get("CmdletInput")
        if not isinstance(cmdlet_input, dict) or not isinstance(cmdlet_input.get("CmdletName"), str):
            return _odata_error(CmdletError(400, "BadRequest", "The request body must contain CmdletInput with CmdletName."))
        name = cmdlet_input["CmdletName"]
        parameters = cmdlet_input.get("Parameters") or {}
        if not isinstance(parameters, dict):
            return _odata_error(CmdletError(400, "BadRequest", "CmdletInput.Parameters must be an object."))
        if access.app_only or "Exchange.Manage" not in access.permissions or not (self.directory.roles_of(access.upn) & EXCHANGE_ROLES):
            return _odata_error(CmdletError(401, "Unauthorized", f"User is not allowed to call {name}"))
        try:
            value = self.run(name, parameters)
        except CmdletError as e:
            return _odata_error(e)
        return Response(200, {"@odata.context": f"{self.identity.base_url}/adminapi/beta/{tenant}/$metadata#Collection(Exchange.GenericHashTable)",
                              "value": value})

    # -- cmdlets ---------------------------------------------------------------------

    def run(self, name: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        """Run one cmdlet (as an admin with the Exchange role); its output objects."""
        handler = {
            "new-serviceprincipal": self._new_service_principal,
            "get-serviceprincipal": self._get_service_principal,
            "add-mailboxpermission": self._add_mailbox_permission,
            "add-recipientpermission": self._add_recipient_permission,
            "new-managementscope": self._new_management_scope,
            "new-managementroleassignment": self._new_role_assignment,
        }.get(name.lower())
        if handler is None:
            raise CmdletError(400, "BadRequest", f"The term '{name}' is not recognized as a name of a cmdlet.")
        params = {k.lower(): v for k, v in parameters.items()}
        return handler(params)

    def run_powershell(self, text: str) -> list[dict[str, Any]]:
        """
        What an admin does by hand: each non-empty line of C{text} is one
        C{Verb-Noun -Name value ...} cmdlet call (no pipes or variables), run in order.
        """
        out: list[dict[str, Any]] = []
        for line in text.splitlines():
            words = shlex.split(line.strip(), comments=True, posix=True)
            if not words or words[0].lower() == "connect-exchangeonline":
                continue
            parameters: dict[str, Any] = {}
            key = None
            for word in words[1:]:
                if word.startswith("-") and len(word) > 1:
                    key = word[1:].split(":", 1)[0]
                    parameters[key] = True
                elif key is not None:
                    parameters[key] = word
                    key = None
            out.extend(self.run(words[0], parameters))
        return out

    def _principal(self, reference: object) -> ExchangePrincipal:
        ref = str(reference or "").lower()
        for p in self.principals.values():
            if ref in (p.app_id.lower(), p.object_id.lower(), p.identity.lower(), p.display_name.lower()):
                return p
        raise CmdletError(400, "BadRequest",
                          f"|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object '{reference}' couldn't be found.")

    def _mailbox(self, reference: object) -> str:
        user = self.identity.user(str(reference or ""))
        if user is None:
            raise CmdletError(400, "BadRequest",
                              f"|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object '{reference}' couldn't be found.")
        return user.upn

    def _new_service_principal(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/powershell/module/exchange/new-serviceprincipal
        app_id, object_id = str(p.get("appid", "")), str(p.get("objectid", ""))
        sp = self.directory.service_principals.get(object_id)
        if sp is None or sp.app_id != app_id:
            raise CmdletError(400, "BadRequest",
                              f"|Microsoft.Exchange.Management.Tasks.ServicePrincipalNotFoundException|The service principal with AppId '{app_id}' and ObjectId '{object_id}' wasn't found in Azure Active Directory. Use the ObjectId of the enterprise application (service principal), not of the app registration.")
        if app_id in self.principals:
            raise CmdletError(400, "BadRequest", f"|Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException|The service principal with AppId '{app_id}' already exists.")
        principal = ExchangePrincipal(app_id, object_id, str(p.get("displayname") or sp.display_name))
        self.principals[app_id] = principal
        return [self._principal_json(principal)]

    def _get_service_principal(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/powershell/module/exchange/get-serviceprincipal
        if p.get("identity"):
            return [self._principal_json(self._principal(p["identity"]))]
        return [self._principal_json(x) for x in self.principals.values()]

    @staticmethod
    def _principal_json(principal: ExchangePrincipal) -> dict[str, Any]:
        return {"AppId": principal.app_id, "ObjectId": principal.object_id, "DisplayName": principal.display_name,
                "ServiceId": principal.identity, "Identity": principal.identity, "Name": principal.identity,
                "Id": principal.identity}

    def _add_mailbox_permission(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/powershell/module/exchange/add-mailboxpermission
        mailbox = self._mailbox(p.get("identity"))
        principal = self._principal(p.get("user"))
        rights = p.get("accessrights")
        if str(rights).lower() != "fullaccess" and rights != ["FullAccess"]:
            raise CmdletError(400, "BadRequest", "The sandbox grants service principals FullAccess only (-AccessRights FullAccess).")
        self.mailbox_permissions.append((mailbox, principal.app_id, "FullAccess"))
        self._later(lambda: self.exchange.grant_app_mailbox(principal.app_id, mailbox))
        return [{"Identity": mailbox, "User": principal.identity, "AccessRights": ["FullAccess"], "IsInherited": False,
                 "Deny": False, "InheritanceType": str(p.get("inheritancetype") or "All")}]

    def _add_recipient_permission(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/powershell/module/exchange/add-recipientpermission
        mailbox = self._mailbox(p.get("identity"))
        principal = self._principal(p.get("trustee"))
        self.mailbox_permissions.append((mailbox, principal.app_id, "SendAs"))
        return [{"Identity": mailbox, "Trustee": principal.identity, "AccessControlType": "Allow",
                 "AccessRights": ["SendAs"], "IsInherited": False, "InheritanceType": "None"}]

    def _new_management_scope(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/powershell/module/exchange/new-managementscope
        name = str(p.get("name") or "")
        if not name or not p.get("recipientrestrictionfilter"):
            raise CmdletError(400, "BadRequest", "New-ManagementScope needs -Name and -RecipientRestrictionFilter.")
        if name.lower() in self.scopes:
            raise CmdletError(400, "BadRequest", f"|Microsoft.Exchange.Data.Directory.ADObjectAlreadyExistsException|The management scope '{name}' already exists.")
        self.scopes[name.lower()] = ManagementScope(name, str(p["recipientrestrictionfilter"]))
        return [{"Name": name, "RecipientFilter": str(p["recipientrestrictionfilter"]), "ScopeRestrictionType": "RecipientScope"}]

    def _new_role_assignment(self, p: dict[str, Any]) -> list[dict[str, Any]]:
        # https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac
        role = str(p.get("role") or "")
        if role not in APPLICATION_ROLES:
            raise CmdletError(400, "BadRequest", f"The sandbox assigns RBAC for Applications roles only: {', '.join(APPLICATION_ROLES)}.")
        principal = self._principal(p.get("app"))
        scope_name = str(p.get("customresourcescope") or "")
        scope = self.scopes.get(scope_name.lower())
        if scope is None:
            raise CmdletError(400, "BadRequest", f"|Microsoft.Exchange.Configuration.Tasks.ManagementObjectNotFoundException|The operation couldn't be performed because object '{scope_name}' couldn't be found.")
        name = str(p.get("name") or f"{role}-{principal.display_name}")
        assignment = {"Name": name, "Role": role, "RoleAssigneeName": principal.identity, "RoleAssigneeType": "ServicePrincipal",
                      "CustomResourceScope": scope.name, "App": principal.app_id}
        self.role_assignments.append(assignment)
        mailboxes = scope.mailboxes([u.upn for u in self.identity.users.values()])

        def grant() -> None:
            for mailbox in mailboxes:
                self.exchange.grant_app_role(principal.app_id, role, mailbox)
        self._later(grant)
        return [assignment]

    # -- effect ----------------------------------------------------------------------

    def _later(self, effect: Any) -> None:
        """Exchange applies a change after L{acceptance_delay} seconds."""
        call = self.clock.callLater(self.acceptance_delay, effect)
        self._pending = [c for c in self._pending if c.active()] + [call]

    def accept_now(self) -> None:
        """Make time pass: every change waiting to take effect does so on the next turn."""
        for call in self._pending:
            if call.active():
                call.reset(0)

    def cancel_pending(self) -> None:
        """Forget changes not yet in effect (the sandbox is stopping)."""
        for call in self._pending:
            if call.active():
                call.cancel()
        self._pending = []

    def accepts(self, app_id: str, mailbox: str) -> bool:
        """Whether Exchange now lets app C{app_id} in as C{mailbox} (SMTP app-only)."""
        return mailbox.lower() in self.exchange.app_mailboxes.get(app_id, {}) or self.exchange.holds_app_role(
            app_id, "Application SMTP.SendAsApp", mailbox)


__all__ = ["APPLICATION_ROLES", "CmdletError", "ExchangeAdmin", "ExchangePrincipal"]
