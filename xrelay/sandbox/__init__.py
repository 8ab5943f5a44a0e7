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
