"""
What a setup will do, decided before anything is asked or created: the method's
permissions, the admin's sign-in scopes, the lines shown to the admin before the
sign-in ("this will be created, these permissions will be asked"), and the account table
the setup writes at the end.

Pure values and functions: no I/O, so that both faces (the terminal and the page) show
exactly the same plan, and tests can read it without a tenant.

The methods, and why each asks for what it asks (least privilege first):

  - C{smtp} (SMTP AUTH, app-only): C{SMTP.SendAsApp} (application) on Office 365
    Exchange Online, then in Exchange the app's service principal and C{FullAccess} on
    the relay's mailbox only: Microsoft's documented path for SMTP AUTH with client
    credentials, which gives the app nothing in any other mailbox
    (https://learn.microsoft.com/en-us/exchange/client-developer/legacy-protocols/how-to-authenticate-an-imap-pop-smtp-application-by-using-oauth#use-client-credentials-grant-flow-to-authenticate-smtp-imap-and-pop-connections).
  - C{graph} (Graph sendMail, app-only): C{Mail.Send} (application) on Microsoft Graph,
    plus C{Mail.ReadWrite} only with C{large_messages} (over 3 MB Graph needs a draft and
    an upload session).  Entra's consent is tenant-wide; the setup says so and prints
    the RBAC for Applications lines that scope it to the relay's mailbox
    (https://learn.microsoft.com/en-us/exchange/permissions-exo/application-rbac).
  - C{delegated} (SMTP AUTH as the mailbox's user): C{SMTP.Send} (delegated) on Office
    365 Exchange Online and C{offline_access}, consented for that one user only; the
    mailbox's user then signs in once.  No Exchange step at all.
"""

from __future__ import annotations

import re

import attrs

from xrelay.config import SetupConfig
from xrelay.clouds import CLOUDS, Cloud

__all__ = ["EXCHANGE_APP_ID", "GRAPH_APP_ID", "METHODS", "Permission", "Plan", "SetupRefused",
           "SetupRequest", "admin_exchange_scopes", "admin_graph_scopes", "make_plan"]

#: Microsoft's first-party resource applications (appId), the same in every tenant:
#: https://learn.microsoft.com/en-us/troubleshoot/entra/entra-id/governance/verify-first-party-apps-sign-in
GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
EXCHANGE_APP_ID = "00000002-0000-0ff1-ce00-000000000000"
GRAPH_NAME = "Microsoft Graph"
EXCHANGE_NAME = "Office 365 Exchange Online"

METHODS = ("graph", "smtp", "delegated")
CREDENTIALS = ("certificate", "secret")

#: The delegated permissions the admin's sign-in asks for on Microsoft Graph, each the
#: least the call needs (per each API's permissions table on learn.microsoft.com):
#: create the app (application-post-applications), its service principal
#: (serviceprincipal-post-serviceprincipals), grant app roles
#: (serviceprincipal-post-approleassignments), grant delegated consent
#: (oauth2permissiongrant-post), look the mailbox up (user-get).
ADMIN_GRAPH_PERMISSIONS = ("Application.ReadWrite.All", "AppRoleAssignment.ReadWrite.All",
                           "DelegatedPermissionGrant.ReadWrite.All", "User.Read.All")
#: Exchange Online's admin API (the ExchangeOnlineManagement module's own REST calls).
ADMIN_EXCHANGE_PERMISSION = "Exchange.Manage"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_MAILBOX = re.compile(r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$")


class BadRequest(ValueError):
    """A setup request that cannot be planned; the text is the one line to show."""


@attrs.frozen
class Permission:
    """One permission the app gets: on which API, which value, application or delegated."""

    resource_app_id: str
    resource_name: str
    value: str
    #: C{"Role"} (application permission) or C{"Scope"} (delegated), as Graph's
    #: requiredResourceAccess names them.
    type: str

    def text(self) -> str:
        kind = "application" if self.type == "Role" else "delegated"
        return f"{self.resource_name}: {self.value} ({kind})"


@attrs.frozen
class SetupRequest:
    """What the admin asked for."""

    mailbox: str
    method: str = "smtp"
    name: str | None = None
    senders: tuple[str, ...] = ()
    credential: str = "certificate"
    large_messages: bool = False

    def __attrs_post_init__(self) -> None:
        if not _MAILBOX.match(self.mailbox):
            raise BadRequest(f"{self.mailbox!r} is not a mailbox address; write the "
                             "mailbox's address, e.g. relay@contoso.com")
        if self.method not in METHODS:
            raise BadRequest(f"method {self.method!r} is unknown; choose one of "
                             f"{', '.join(METHODS)}")
        if self.credential not in CREDENTIALS:
            raise BadRequest(f"credential {self.credential!r} is unknown; choose "
                             "certificate (default) or secret")
        if self.name is not None and not _NAME.match(self.name):
            raise BadRequest(f"name {self.name!r} cannot be used; write 1-64 letters, "
                             "digits, '.', '_' or '-'")

    @property
    def account_name(self) -> str:
        """The account's name: the one asked for, else the mailbox's local part."""
        if self.name:
            return self.name
        local = re.sub(r"[^A-Za-z0-9._-]", "-", self.mailbox.split("@", 1)[0]).strip(".-_")
        return (local or "account")[:64]

    @property
    def app_only(self) -> bool:
        return self.method != "delegated"


@attrs.frozen
class Plan:
    """The setup's decisions for one request, before anything is done."""

    request: SetupRequest
    setup: SetupConfig
    permissions: tuple[Permission, ...]
    #: Whether Exchange's part (service principal, mailbox permission) is needed.
    exchange_steps: bool
    display_name: str

    @property
    def cloud(self) -> Cloud:
        return CLOUDS.get(self.setup.cloud, CLOUDS["global"])

    def lines(self) -> list[str]:
        """What will be created and asked, in the order it happens (shown first)."""
        r = self.request
        lines = [
            f"Account {r.account_name!r}: mailbox {r.mailbox}, method {r.method} "
            f"({_METHOD_TEXT[r.method]}).",
            "1. You sign in once as an administrator of the tenant. xrelay asks for: "
            + ", ".join(ADMIN_GRAPH_PERMISSIONS) + " on Microsoft Graph"
            + (f", and {ADMIN_EXCHANGE_PERMISSION} on Exchange Online"
               if self.exchange_steps else "")
            + ". That sign-in is used for these steps only and never stored.",
            f"2. An app registration {self.display_name!r} (single tenant, tagged as made "
            "by xrelay for this relay; reused if it exists) and its service principal.",
            "3. Its permissions, with admin consent: "
            + "; ".join(p.text() for p in self.permissions)
            + (f" (consented for {r.mailbox} only)." if not r.app_only else "."),
        ]
        if r.credential == "certificate":
            lines.append("4. A certificate made on this host: its private key stays in "
                         "state_dir/managed/credentials (mode 0600) and never leaves it; "
                         "only the public certificate is uploaded.")
        else:
            lines.append("4. A client secret (you asked for one), kept in "
                         "state_dir/managed/credentials (mode 0600).")
        if self.exchange_steps:
            lines.append(f"5. In Exchange Online: the app's service principal, and "
                         f"FullAccess for it on {r.mailbox} only (through Exchange's admin "
                         "API if you hold an Exchange role; otherwise xrelay prints the "
                         "PowerShell lines and waits until Exchange accepts the app).")
        elif r.method == "graph":
            lines.append("5. Nothing in Exchange. Note: Entra grants Mail.Send for every "
                         "mailbox; xrelay prints the RBAC for Applications lines that "
                         "limit it to this mailbox.")
        else:
            lines.append(f"5. Then {r.mailbox}'s user signs in once (the relay keeps "
                         "its refresh token); no PowerShell.")
        lines.append("6. The account is written as a managed drop-in (your xrelay.toml "
                     "is not touched), the relay reloads, a test message goes to "
                     f"{r.mailbox}, and `xrelay doctor` checks the chain.")
        return lines


_METHOD_TEXT = {
    "smtp": "SMTP AUTH as an application",
    "graph": "Microsoft Graph sendMail as an application",
    "delegated": "SMTP AUTH signed in as the mailbox's user",
}


def make_plan(request: SetupRequest, setup: SetupConfig, hostname: str) -> Plan:
    """The plan for a request on this relay."""
    if request.method == "smtp":
        permissions: tuple[Permission, ...] = (
            Permission(EXCHANGE_APP_ID, EXCHANGE_NAME, "SMTP.SendAsApp", "Role"),)
    elif request.method == "graph":
        permissions = (Permission(GRAPH_APP_ID, GRAPH_NAME, "Mail.Send", "Role"),)
        if request.large_messages:
            permissions += (Permission(GRAPH_APP_ID, GRAPH_NAME, "Mail.ReadWrite", "Role"),)
    else:
        permissions = (Permission(EXCHANGE_APP_ID, EXCHANGE_NAME, "SMTP.Send", "Scope"),
                       Permission(GRAPH_APP_ID, GRAPH_NAME, "offline_access", "Scope"))
    return Plan(request, setup, permissions, exchange_steps=request.method == "smtp",
                display_name=f"xrelay {request.account_name} ({hostname})")


def admin_graph_scopes(setup: SetupConfig) -> list[str]:
    """The admin's sign-in scopes on Graph (msal adds openid, profile, offline_access)."""
    resource = CLOUDS.get(setup.cloud, CLOUDS["global"]).graph_resource
    return [f"{resource}/{p}" for p in ADMIN_GRAPH_PERMISSIONS]


def admin_exchange_scopes(setup: SetupConfig) -> list[str]:
    """The admin's scope on Exchange Online's admin API."""
    resource = CLOUDS.get(setup.cloud, CLOUDS["global"]).outlook_resource
    return [f"{resource}/{ADMIN_EXCHANGE_PERMISSION}"]


class SetupRefused(Exception):
    """The setup stopped; the text is one line naming the problem and the fix."""
