"""
xrelay's sandbox: faithful local stand-ins for Microsoft's identity platform, Exchange
Online's SMTP submission server, Microsoft Graph C{sendMail}, Google's token endpoint and
Gmail's SMTP server, on loopback sockets with real TLS from a throw-away CA.

It is the embedded default of C{twistd -n xrelay} with no configuration, what xrelay's
tests run against, and public API for users' own tests::

    from xrelay.sandbox import Sandbox
    sb = Sandbox(FilePath(tmpdir))
    sb.start()
    account = sb.default_account()
    ...
    yield sb.stop()

It must never be used against or confused with real providers: it trusts only itself.

Setup wizard (issue 22): the tenant C{sandbox.onmicrosoft.com} (C{sb.identity.tenant(
DEFAULT_TENANT).id} is its id) also has an Entra directory (C{sb.entra}, rules in
L{xrelay.sandbox.entra}), Graph app management under C{sb.graph_url}
(L{xrelay.sandbox.graphadmin}) and Exchange Online's admin API at
C{{sb.authority}/adminapi/beta/{tenant id}/InvokeCommand} (C{sb.exchange_admin},
L{xrelay.sandbox.exchangeadmin}).  Its people (passwords: C{sb.password(upn)}, also in
C{<dir>/sandbox-users.txt}, mode 0600):

  admin@sandbox.example          Global Administrator: everything, Exchange included
  appadmin@sandbox.example       Application Administrator: apps, service principals,
                                 keys, delegated grants, app roles except Microsoft Graph's
  roleadmin@sandbox.example      Application + Privileged Role Administrator: all of Entra,
                                 no Exchange
  exchangeadmin@sandbox.example  Exchange Administrator: Exchange admin API only
  user@sandbox.example           no role: 403 Authorization_RequestDenied / 401 Unauthorized
  relay@sandbox.example          DEFAULT_MAILBOX, no role

The setup's public client is the Microsoft Graph Command Line Tools,
C{14d82eec-204b-4c2f-b7e8-296a70dab67e} (C{entra.GRAPH_CLI_CLIENT_ID}): device code, and
the authorization code flow with PKCE to C{http://localhost} on any port.  It gets the
Graph scopes C{Application.ReadWrite.All AppRoleAssignment.ReadWrite.All
DelegatedPermissionGrant.ReadWrite.All User.Read.All} and, as a second token, Exchange's
C{https://outlook.office365.com/Exchange.Manage} (one resource per token, as Entra ID).
The device-login page has Accept and Cancel (Cancel: the next poll gets
C{authorization_declined}); the authorize page's Cancel redirects with
C{error=access_denied}, AADSTS65004.

Timing knobs: C{sb.entra.replication_delay} (default 5 s: a new app, or a new credential,
is unknown to the token endpoint until then, AADSTS700016 / 700027 / 7000215) with
C{sb.entra.replicate()} to make it pass now; C{sb.exchange_admin.acceptance_delay}
(default 5 s: mailbox permissions and RBAC assignments take effect after it) with
C{sb.exchange_admin.accept_now()}; C{sb.exchange_admin.run_powershell(lines)} runs the
lines an admin pastes by hand.  Role and scope ids of Microsoft Graph and Exchange Online:
L{xrelay.sandbox.entra}.
"""

from .ca import SERVER_NAMES, CertificateAuthority, IssuedCertificate
from .exchange import ExchangeServer, Transcript
from .google import GoogleIdentity
from .graph import GraphMail
from .identity import App, IdentityPlatform, User
from .mailbox import DeliveredMessage, Mailbox
from .service import DEFAULT_MAILBOX, DEFAULT_TENANT, Sandbox, SandboxService

__all__ = [
    "App",
    "CertificateAuthority",
    "DEFAULT_MAILBOX",
    "DEFAULT_TENANT",
    "DeliveredMessage",
    "ExchangeServer",
    "GoogleIdentity",
    "GraphMail",
    "IdentityPlatform",
    "IssuedCertificate",
    "Mailbox",
    "SERVER_NAMES",
    "Sandbox",
    "SandboxService",
    "Transcript",
    "User",
]
