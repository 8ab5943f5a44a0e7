"""
Exchange Online's part of the setup: the REST endpoint the ExchangeOnlineManagement
module (v3) itself calls for every cmdlet,
C{POST https://outlook.office365.com/adminapi/beta/{tenant}/InvokeCommand} with
C{{"CmdletInput": {"CmdletName": ..., "Parameters": {...}}}} and the admin's token for
C{https://outlook.office365.com} (as public clients of that API send it, e.g.
https://github.com/claudineyqr/ExchangeOnlineAdminRestApi/blob/master/src/ExchangeOnlineAdminRestApi/ExchangeOnline.cs),
and, for an admin without the Exchange role, the same cmdlets as one PowerShell block to
paste, with the values filled in.

The cmdlets, from Microsoft's SMTP AUTH client-credentials guide
(https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth#register-service-principals-in-exchange):
C{New-ServicePrincipal -AppId -ObjectId} (the enterprise app's object id) and
C{Add-MailboxPermission -Identity MAILBOX -User SP -AccessRights FullAccess}.

Blocking (requests).  The token is kept on the object only, never logged or shown.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import attrs
import requests

__all__ = ["ExchangeAdminClient", "ExchangeRefused", "exchange_powershell"]


class ExchangeRefused(Exception):
    """A cmdlet that failed; C{not_allowed} when the admin lacks the Exchange role."""

    def __init__(self, text: str, not_allowed: bool = False,
                 already: bool = False) -> None:
        super().__init__(text)
        self.text = text
        self.not_allowed = not_allowed
        self.already = already


@attrs.define
class ExchangeAdminClient:
    """Cmdlets through Exchange Online's admin API for one signed-in admin."""

    admin_url: str
    tenant: str
    session: requests.Session
    _token: str = attrs.field(repr=False)

    def invoke(self, cmdlet: str, parameters: dict[str, Any]) -> list[dict[str, Any]]:
        url = f"{self.admin_url.rstrip('/')}/{quote(self.tenant)}/InvokeCommand"
        try:
            response = self.session.post(url, json={"CmdletInput": {
                "CmdletName": cmdlet, "Parameters": parameters}}, headers={
                "Authorization": f"Bearer {self._token}", "Accept": "application/json"})
        except requests.RequestException as e:
            raise ExchangeRefused(f"cannot reach Exchange Online's admin API at "
                                  f"{self.admin_url} ({type(e).__name__})") from None
        if response.status_code == 200:
            return list(response.json().get("value") or [])
        try:
            error = response.json().get("error") or {}
        except ValueError:
            error = {}
        message = str(error.get("message") or response.reason or "")
        # Exchange's answer to a user without the role: 401 "User is not allowed to
        # call <cmdlet>" (https://github.com/MicrosoftDocs/office-docs-powershell/issues/7970).
        not_allowed = response.status_code in (401, 403)
        already = "AlreadyExists" in message or "already exists" in message
        raise ExchangeRefused(f"Exchange refused {cmdlet}: {response.status_code} "
                              f"{message[:300]}", not_allowed, already)

    def register(self, app_id: str, sp_object_id: str, display_name: str,
                 mailbox: str) -> None:
        """The app's service principal in Exchange and FullAccess on the mailbox."""
        try:
            # https://learn.microsoft.com/en-us/powershell/module/exchange/new-serviceprincipal
            self.invoke("New-ServicePrincipal", {"AppId": app_id, "ObjectId": sp_object_id,
                                                 "DisplayName": display_name})
        except ExchangeRefused as e:
            if not e.already:
                raise
        # https://learn.microsoft.com/en-us/powershell/module/exchange/add-mailboxpermission
        self.invoke("Add-MailboxPermission", {"Identity": mailbox, "User": sp_object_id,
                                              "AccessRights": "FullAccess"})


def exchange_powershell(tenant: str, app_id: str, sp_object_id: str, display_name: str,
                        mailbox: str) -> str:
    """The lines an Exchange administrator pastes, values filled in, one per cmdlet."""
    return "\n".join([
        "Install-Module ExchangeOnlineManagement -Scope CurrentUser   # once",
        f"Connect-ExchangeOnline -Organization {tenant}",
        f"New-ServicePrincipal -AppId {app_id} -ObjectId {sp_object_id} "
        f"-DisplayName '{display_name}'",
        f"Add-MailboxPermission -Identity {mailbox} -User {sp_object_id} "
        "-AccessRights FullAccess",
    ])


def rbac_powershell(tenant: str, app_id: str, mailbox: str, name: str) -> str:
    """
    RBAC for Applications: Graph's Mail.Send limited to the relay's mailbox
    (https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac).
    """
    scope = f"xrelay {name}"
    return "\n".join([
        f"Connect-ExchangeOnline -Organization {tenant}",
        f"New-ManagementScope -Name '{scope}' -RecipientRestrictionFilter "
        f"\"PrimarySmtpAddress -eq '{mailbox}'\"",
        f"New-ManagementRoleAssignment -App {app_id} -Role 'Application Mail.Send' "
        f"-CustomResourceScope '{scope}'",
        "# then remove Mail.Send (Application) from the app's API permissions in Entra, "
        "or the tenant-wide consent still applies",
    ])
