"""
L{Sandbox}: the whole stand-in provider (CA, identity platform, Graph, Exchange-like and
Gmail-like SMTP servers, mailbox) bound to loopback ports, with a ready app-only account.

It is what C{twistd -n xrelay} relays into when there is no configuration, what xrelay's
tests run against, and what users import for their own tests.  It must never listen on a
public interface by default, and never be mistaken for a real provider: its CA and keys
are made fresh under the given directory.
"""

from __future__ import annotations

import os
from typing import Any

import attrs
from zope.interface import implementer
from twisted.application import service
from twisted.internet import defer
from twisted.internet.interfaces import IListeningPort, IProtocolNegotiationFactory
from twisted.protocols.policies import WrappingFactory
from twisted.python.filepath import FilePath

from .ca import SERVER_NAMES, CertificateAuthority, IssuedCertificate
from .entra import (
    APPLICATION_ADMIN, EXCHANGE_ADMIN, GLOBAL_ADMIN, GRAPH_CLI_CLIENT_ID, PRIVILEGED_ROLE_ADMIN, Directory,
)
from .exchange import ExchangeServer
from .exchangeadmin import ExchangeAdmin
from .google import GoogleIdentity
from .graph import GraphMail
from .graphadmin import GraphAdmin
from .identity import App, IdentityPlatform
from .mailbox import Mailbox
from .web import QuietSite, SandboxResource

DEFAULT_TENANT = "sandbox.onmicrosoft.com"
DEFAULT_MAILBOX = "relay@sandbox.example"
#: The sandbox tenant's people for the setup wizard: UPN -> (display name, directory roles).
#: Their passwords are random per sandbox, in C{sandbox-users.txt} (mode 0600) beside
#: the CA, and from L{Sandbox.password}.
ADMIN_USERS: dict[str, tuple[str, tuple[str, ...]]] = {
    "admin@sandbox.example": ("Global Admin", (GLOBAL_ADMIN,)),
    "appadmin@sandbox.example": ("App Admin", (APPLICATION_ADMIN,)),
    "roleadmin@sandbox.example": ("App and Role Admin", (APPLICATION_ADMIN, PRIVILEGED_ROLE_ADMIN)),
    "exchangeadmin@sandbox.example": ("Exchange Admin", (EXCHANGE_ADMIN,)),
    "user@sandbox.example": ("Plain User", ()),
}


@implementer(IProtocolNegotiationFactory)
class _TrackingFactory(WrappingFactory):
    """
    Remembers open HTTPS connections so that L{Sandbox.stop} can close them.  Passes
    on the Site's ALPN protocols: without them the TLS layer fails clients that offer
    ALPN (requests, msal) with an internal-error alert.
    """

    #: One log line per connection is enough; "Starting factory" twice is noise.
    noisy = False

    def acceptableProtocols(self) -> list[bytes]:
        return [b"http/1.1"]

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self.waiting: list[defer.Deferred[None]] = []

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self.waiting = self.waiting, []
            for d in waiting:
                d.callback(None)

    def close_all(self) -> defer.Deferred[None]:
        if not self.protocols:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self.waiting.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@attrs.define
class Sandbox:
    """
    The stand-in providers.  Configure C{identity}, C{exchange}, C{graph} before or
    after L{start}; L{start} binds synchronously so the ports are known on return.
    """

    directory: FilePath
    reactor: Any = None
    host: str = "127.0.0.1"
    identity_port: int = 0
    smtp_port: int = 0
    gmail_smtp_port: int = 0
    smtp_host: str = "localhost"
    ca: CertificateAuthority = attrs.field(init=False)
    server_certificate: IssuedCertificate = attrs.field(init=False)
    identity: IdentityPlatform = attrs.field(init=False)
    mailbox: Mailbox = attrs.field(init=False)
    exchange: ExchangeServer = attrs.field(init=False)
    gmail: ExchangeServer = attrs.field(init=False)
    graph: GraphMail = attrs.field(init=False)
    entra: Directory = attrs.field(init=False)
    graph_admin: GraphAdmin = attrs.field(init=False)
    exchange_admin: ExchangeAdmin = attrs.field(init=False)
    default_app: App = attrs.field(init=False)
    _ports: list[IListeningPort] = attrs.field(init=False, factory=list)
    _https: _TrackingFactory | None = attrs.field(init=False, default=None)
    _secret_file: str = attrs.field(init=False, default="")

    def __attrs_post_init__(self) -> None:
        if self.reactor is None:
            from twisted.internet import reactor

            self.reactor = reactor
        if not self.directory.exists():
            self.directory.makedirs()
        self.ca = CertificateAuthority.create(self.directory.child("tls"))
        self.server_certificate = self.ca.issue(SERVER_NAMES, "server", key_type="ec")
        self.identity = IdentityPlatform()
        self.mailbox = Mailbox(self.directory.child("mailbox"))
        options = self.server_certificate.server_options()
        self.exchange = ExchangeServer(self.identity, self.mailbox, options, self.reactor)
        self.gmail = ExchangeServer(self.identity, self.mailbox, options, self.reactor, flavor="gmail")
        self.graph = GraphMail(self.identity, self.exchange, self.mailbox)
        self.identity.add_user(DEFAULT_TENANT, DEFAULT_MAILBOX, os.urandom(12).hex(), "Relay")
        self._set_up_directory()
        self.default_app = self.identity.register_app(DEFAULT_TENANT, name="xrelay sandbox")
        self.exchange.grant_app_mailbox(self.default_app.client_id, DEFAULT_MAILBOX, send_as_anyone=True)
        secret = self.directory.child("sandbox-client-secret.txt")
        fd = os.open(secret.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, (self.default_app.client_secret or "").encode() + b"\n")
        finally:
            os.close(fd)
        os.chmod(secret.path, 0o600)
        self._secret_file = secret.path

    def _set_up_directory(self) -> None:
        """The tenant's Entra directory, its admins, the setup's public client, Exchange admin."""
        self.entra = Directory(self.identity, DEFAULT_TENANT)
        self.graph_admin = GraphAdmin(self.identity, self.entra)
        self.exchange_admin = ExchangeAdmin(self.identity, self.entra, self.exchange, self.reactor)
        lines = []
        for upn, (name, roles) in ADMIN_USERS.items():
            password = os.urandom(12).hex()
            self.identity.add_user(DEFAULT_TENANT, upn, password, name)
            self.entra.assign_role(upn, *roles)
            lines.append(f"{upn} {password} {','.join(roles) or '-'}\n")
        # The Microsoft Graph Command Line Tools, a first-party public client: device code
        # and http://localhost on any port.
        cli = self.identity.register_app(DEFAULT_TENANT, client_id=GRAPH_CLI_CLIENT_ID, public_client=True,
                                         redirect_uris=["http://localhost"], name="Microsoft Graph Command Line Tools")
        cli.loopback_any_port = True
        users = self.directory.child("sandbox-users.txt").path
        fd = os.open(users, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, "".join(lines).encode())
        finally:
            os.close(fd)

    def password(self, upn: str) -> str:
        """The sign-in password of a sandbox user (for a test filling the sign-in page)."""
        user = self.identity.user(upn)
        if user is None:
            raise KeyError(upn)
        return user.password

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind every listener now (synchronously); ports are known on return."""
        if self._ports:
            raise RuntimeError("sandbox already started")
        self._https = _TrackingFactory(QuietSite(SandboxResource(self.identity, self.graph, self.graph_admin, self.exchange_admin)))
        https = self.reactor.listenSSL(
            self.identity_port, self._https, self.server_certificate.server_options(), interface=self.host
        )
        self._ports.append(https)
        self.identity_port = https.getHost().port
        self.identity.base_url = f"https://{_url_host(self.host)}:{self.identity_port}"
        smtp = self.reactor.listenTCP(self.smtp_port, self.exchange.factory(), interface=self.host)
        self._ports.append(smtp)
        self.smtp_port = smtp.getHost().port
        gmail = self.reactor.listenTCP(self.gmail_smtp_port, self.gmail.factory(), interface=self.host)
        self._ports.append(gmail)
        self.gmail_smtp_port = gmail.getHost().port

    def stop(self) -> defer.Deferred[None]:
        """Close the listeners and every open connection; fires when all are closed."""
        ports, self._ports = self._ports, []
        waiting: list[defer.Deferred[Any]] = [defer.maybeDeferred(p.stopListening) for p in ports]
        self.exchange_admin.cancel_pending()
        waiting.append(self.exchange.close_connections())
        waiting.append(self.gmail.close_connections())
        if self._https is not None:
            waiting.append(self._https.close_all())
        return defer.gatherResults(waiting, consumeErrors=True).addCallback(lambda _: None)

    # -- addresses -------------------------------------------------------------------

    @property
    def ca_file(self) -> str:
        return self.ca.ca_file

    @property
    def authority(self) -> str:
        """The Microsoft authority base: msal's authority is C{f"{authority}/{tenant}"}."""
        return self.identity.base_url

    @property
    def google_authority(self) -> str:
        return f"{self.identity.base_url}/google"

    @property
    def google_token_url(self) -> str:
        return f"{self.google_authority}/token"

    @property
    def google(self) -> GoogleIdentity:
        """Google's token side (clients, refresh tokens): the same as C{identity.google}."""
        return self.identity.google

    @property
    def graph_url(self) -> str:
        return f"{self.identity.base_url}/v1.0"

    # -- helpers for tests -----------------------------------------------------------

    def issue_certificate(
        self, names: tuple[str, ...] = SERVER_NAMES, basename: str | None = None, key_type: str = "rsa"
    ) -> IssuedCertificate:
        """
        A certificate from the sandbox CA: for the relay's own STARTTLS listener, for a
        test that a client refuses a wrong name, or as an app's client-assertion
        certificate (register its C{cert_pem} with C{identity.register_app}).
        """
        return self.ca.issue(names, basename, key_type=key_type)

    def issued_secrets(self) -> set[str]:
        """Every secret known to the sandbox (see L{IdentityPlatform.issued_secrets})."""
        return self.identity.issued_secrets()

    def default_account(self) -> dict[str, Any]:
        """
        The C{[[accounts]]} keys of a ready app-only account that may send as anyone
        through the Exchange-like server (or Graph).
        """
        if not self._ports:
            raise RuntimeError("start() the sandbox first: the ports are not known yet")
        return {
            "name": "sandbox",
            "provider": "microsoft",
            "flow": "client_credentials",
            "tenant": DEFAULT_TENANT,
            "client_id": self.default_app.client_id,
            "client_secret_file": self._secret_file,
            "user": DEFAULT_MAILBOX,
            "authority": self.authority,
            "smtp_host": self.smtp_host,
            "smtp_port": self.smtp_port,
            "ca_file": self.ca_file,
            "senders": ["*"],
            "graph_url": self.graph_url,
        }

    def add_google_account(self, email: str) -> dict[str, str]:
        """
        A Google client and a refresh token for C{email}: what xrelay needs for a
        C{provider = "google"} account against L{gmail}.
        """
        client = self.identity.google.register_client()
        refresh_token = self.identity.google.mint_refresh_token(email, client.client_id)
        return {
            "user": email,
            "client_id": client.client_id,
            "client_secret": client.client_secret,
            "refresh_token": refresh_token,
            "token_url": self.google_token_url,
            "smtp_host": self.smtp_host,
            "smtp_port": str(self.gmail_smtp_port),
        }


class SandboxService(service.Service):
    """Starts and stops a L{Sandbox} with its parent MultiService."""

    def __init__(self, sandbox: Sandbox) -> None:
        self.sandbox = sandbox

    def startService(self) -> None:
        super().startService()
        self.sandbox.start()

    def stopService(self) -> defer.Deferred[None]:
        super().stopService()
        return self.sandbox.stop()
