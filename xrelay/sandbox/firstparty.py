"""
Microsoft's first-party resources as the sandbox tenant holds them: the service principals
of Microsoft Graph and Office 365 Exchange Online with their app roles (application
permissions) and OAuth2 permission scopes (delegated permissions), the token audiences
each one's roles appear in, and the public client xrelay's setup signs admins in with.

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
                652390e4-393a-48de-9484-05f9b1212954; admin consent only:
                Application.ReadWrite.All bdfbf15f-ee85-4955-8675-146e8e5296b5,
                AppRoleAssignment.ReadWrite.All 84bccea3-f856-4a8a-967b-dbe0a3d53a64,
                DelegatedPermissionGrant.ReadWrite.All 41ce6ca6-6826-4807-84f1-1c82854f7ee5,
                User.Read.All a154be20-db9c-4678-8ab7-66f6cc099a59,
                Directory.Read.All 06da0dbc-49e2-44d2-8312-53f166ab848a
  Office 365 Exchange Online (appId 00000002-0000-0ff1-ce00-000000000000)
    app roles:  SMTP.SendAsApp 7146a1f0-8703-45b3-9eae-527a64c00995,
                Exchange.ManageAsApp dc50a0fb-09a3-484d-be87-e023b12c6440
    scopes:     Exchange.Manage, SMTP.Send (ids: sandbox values)

Sources for the ids: the Microsoft Graph permissions reference
(https://learn.microsoft.com/en-us/graph/permissions-reference), as quoted in public
setup scripts and manifests; Exchange.Manage's and Exchange's SMTP.Send scope ids were not
found, so the sandbox makes its own (clients look permissions up by value).

Data only: L{xrelay.sandbox.entra} builds the directory from it.
"""

from __future__ import annotations

import uuid

import attrs

from .identity import GRAPH_RESOURCE, NATIONAL_GRAPH_RESOURCES, OUTLOOK_RESOURCES

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
#: The Microsoft Graph Command Line Tools: a first-party public client that allows the
#: device code flow and http://localhost redirects on any port
#: (https://learn.microsoft.com/en-us/powershell/microsoftgraph/authentication-commands).
GRAPH_CLI_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"
#: As two public sources give it (an app manifest's requiredResourceAccess on Exchange
#: Online and an IMAP/SMTP setup report's table of Exchange app role ids); clients should
#: still look it up by value, as Microsoft's own scripts do.
SMTP_SEND_AS_APP_ID = "7146a1f0-8703-45b3-9eae-527a64c00995"

#: Resource service principal appId -> the token audiences its app roles appear in.
RESOURCE_AUDIENCES: dict[str, tuple[str, ...]] = {
    GRAPH_APP_ID: (GRAPH_RESOURCE, *NATIONAL_GRAPH_RESOURCES),
    EXCHANGE_APP_ID: OUTLOOK_RESOURCES,
}


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
    # What the setup's admin sign-in asks for: admin consent only ("type": "Admin").
    PermissionScope("bdfbf15f-ee85-4955-8675-146e8e5296b5", "Application.ReadWrite.All", "Read and write all applications", "Admin"),
    PermissionScope("84bccea3-f856-4a8a-967b-dbe0a3d53a64", "AppRoleAssignment.ReadWrite.All", "Manage app permission grants and app role assignments", "Admin"),
    PermissionScope("41ce6ca6-6826-4807-84f1-1c82854f7ee5", "DelegatedPermissionGrant.ReadWrite.All", "Manage all delegated permission grants", "Admin"),
    PermissionScope("a154be20-db9c-4678-8ab7-66f6cc099a59", "User.Read.All", "Read all users' full profiles", "Admin"),
    PermissionScope("06da0dbc-49e2-44d2-8312-53f166ab848a", "Directory.Read.All", "Read directory data", "Admin"),
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


__all__ = [
    "AppRole", "EXCHANGE_APP_ID", "EXCHANGE_ROLES", "EXCHANGE_SCOPES", "GRAPH_APP_ID", "GRAPH_CLI_CLIENT_ID",
    "GRAPH_ROLES", "GRAPH_SCOPES", "PermissionScope", "RESOURCE_AUDIENCES", "SMTP_SEND_AS_APP_ID",
]
