"""
An upstream account's values: L{AccountConfig}, the provider table its defaults come
from (L{account_defaults}), and Graph's message-size limits.

The rules between an account's fields are in L{AccountConfig.__attrs_post_init__} (a table
of checks, each naming the field and the fix).  This module must never read a file, hold a
secret (secret files are paths only) or import the reader or the reactor.
"""

from __future__ import annotations

from typing import Any

import attrs

from xrelay.addresses import SenderPattern
from xrelay.clouds import CLOUDS, cloud_of
from xrelay.config.validators import (
    InvalidValue,
    _at_least,
    _boolean,
    _date,
    _https,
    _mailbox,
    _one_of,
    _patterns,
    _string,
    _text,
)


PROVIDERS = ("microsoft", "google")
#: The provider of an account that names none (a required field of L{AccountConfig}:
#: callers build it with the provider first; an C{[[accounts]]} table may leave it out).
DEFAULT_PROVIDER = PROVIDERS[0]
FLOWS = ("client_credentials", "device_code", "auth_code", "refresh_token")
TRANSPORTS = ("smtp", "graph")
#: What a Graph account does with a message over the single-request limit.
GRAPH_LARGE_MESSAGES = ("refuse", "upload_session")
#: Clouds whose Graph has no createUploadSession (its "national cloud deployments"
#: table: https://learn.microsoft.com/graph/api/attachment-createuploadsession).
GRAPH_WITHOUT_UPLOAD_SESSIONS = ("usgov", "usgov-dod")
#: Graph's single request (C{sendMail}, a MIME draft): 4 MB of body, and the MIME form
#: counts as base64 ("provide the MIME content ... encoded in base64 format in the
#: request body"; 413 beyond): https://learn.microsoft.com/graph/api/user-sendmail
GRAPH_REQUEST_BYTES = 4 * 1024 * 1024
#: Room left in the single request for the header fields the Graph transport rewrites
#: (the envelope recipients in To/Cc/Bcc: L{xrelay.transport.graph}).
GRAPH_HEADER_ROOM = 32 * 1024
#: The largest message one Graph request carries (3 MB of the 4 MB as base64).
GRAPH_SINGLE_REQUEST_MESSAGE = GRAPH_REQUEST_BYTES // 4 * 3 - GRAPH_HEADER_ROOM
#: Upload sessions attach files "up to 150 MB" to a message:
#: https://learn.microsoft.com/graph/outlook-large-attachments
GRAPH_UPLOAD_SESSION_MESSAGE = 150 * 1024 * 1024

MICROSOFT_AUTHORITY = "https://login.microsoftonline.com"
GOOGLE_AUTHORITY = "https://oauth2.googleapis.com"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/v2/auth"
#: The flows each provider supports.  Google: a refresh token from the operator's file,
#: or one from a browser sign-in on the admin page ("auth_code"); either way the newest
#: one wins (a sign-in stored in the encrypted cache after the file last changed is used;
#: writing the file again makes the file's token the one used).
PROVIDER_FLOWS = {"microsoft": FLOWS, "google": ("refresh_token", "auth_code")}
GRAPH_URL = "https://graph.microsoft.com/v1.0"
SMTP_HOSTS = {"microsoft": "smtp.office365.com", "google": "smtp.gmail.com"}


#: The value of C{authority}, C{smtp_host} and C{graph_url} that means "follow the
#: provider and the cloud" (see L{account_defaults}).
FROM_PROVIDER = ""


def account_defaults(provider: str, cloud: str = "global") -> dict[str, Any]:
    """
    The defaults of an account that depend on its provider (and a Microsoft account's
    cloud): the one table, used by L{AccountConfig}'s fields and so by the reader.
    Google has no sending limits of Exchange Online's kind (0: none).
    """
    if provider == "google":
        return {"flow": "refresh_token", "messages_per_minute": 0,
                "recipients_per_day": 0, "authority": GOOGLE_AUTHORITY,
                "smtp_host": SMTP_HOSTS["google"], "graph_url": GRAPH_URL,
                "authorization_url": GOOGLE_AUTHORIZATION_URL}
    endpoints = cloud_of(cloud)
    return {"flow": "client_credentials", "messages_per_minute": 30,
            "recipients_per_day": 10000, "authority": endpoints.authority,
            "smtp_host": endpoints.smtp_host, "graph_url": endpoints.graph_url,
            "authorization_url": None}


def _by_provider(field: str) -> Any:
    """An attrs default taken from L{account_defaults} for the account's provider."""
    return attrs.Factory(lambda self: account_defaults(self.provider)[field],
                         takes_self=True)


def _own_mailbox(account: Any) -> tuple[SenderPattern, ...]:
    """The default C{senders}: the account's own mailbox (checked by C{user}'s rule)."""
    try:
        return (SenderPattern.parse(account.user),)
    except (ValueError, TypeError, AttributeError):
        return ()



@attrs.frozen
class AccountConfig:
    """
    One upstream identity: whose token xrelay uses, and for which envelope senders.
    Secret files are paths only: secrets are read when needed, never kept on config
    objects.
    """

    name: str = attrs.field(validator=_text, metadata={"doc": (
        "The account's name, used by `relay.default_account`, `xrelay login NAME`, the "
        "logs and the metrics.")})
    provider: str = attrs.field(
        validator=_one_of(PROVIDERS), metadata={"default": "`\"microsoft\"`", "doc": (
        "`microsoft` (Exchange Online) or `google` (Gmail, Google Workspace).")})
    user: str = attrs.field(validator=_mailbox, metadata={"doc": (
        "The mailbox xrelay signs in as and sends through (the XOAUTH2 user), e.g. "
        "`relay@example.com`.")})
    flow: str = attrs.field(
        validator=_one_of(FLOWS), default=_by_provider("flow"), metadata={
        "default": "`\"client_credentials\"` (Microsoft), `\"refresh_token\"` (Google)",
        "doc": "How xrelay obtains tokens: `client_credentials` (app-only, unattended), "
        "`device_code` (`xrelay login`), `auth_code` (sign in on the admin page), "
        "`refresh_token` (Google, a token file)."})
    senders: tuple[SenderPattern, ...] = attrs.field(
        validator=_patterns, default=attrs.Factory(_own_mailbox, takes_self=True),
        metadata={
        "default": "`[user]`", "doc": "Envelope senders routed through this account "
        "(`*@example.com`); the first account whose patterns match wins."})
    tenant: str | None = attrs.field(default=None, metadata={
        "default": "required for Microsoft", "doc": "The Entra ID tenant: its "
        "`*.onmicrosoft.com` domain or its directory (tenant) id."})
    client_id: str | None = attrs.field(default=None, metadata={
        "default": "required", "doc": "The application (client) id of the app "
        "registration (Microsoft) or OAuth client (Google)."})
    client_secret_file: str | None = attrs.field(default=None, metadata={"doc": (
        "File holding the client secret's value, readable only by the service user "
        "(`root:xrelay 0640`); needed by `client_credentials` unless a certificate is "
        "set, and by Google.")})
    certificate_file: str | None = attrs.field(default=None, metadata={"doc": (
        "Microsoft app-only sign-in with a certificate instead of a secret: the "
        "certificate (PEM) uploaded to the app registration.")})
    certificate_key_file: str | None = attrs.field(default=None, metadata={"doc": (
        "The private key (PEM) of `certificate_file`; readable only by the service "
        "user.")})
    refresh_token_file: str | None = attrs.field(default=None, metadata={"doc": (
        "Google: file holding a refresh token for `user` with the scope "
        "`https://mail.google.com/`; the newer of this file and an admin-page sign-in "
        "is used.")})
    transport: str = attrs.field(
        validator=_one_of(TRANSPORTS), default="smtp", metadata={"doc": (
        "`smtp` (SMTP with STARTTLS and AUTH XOAUTH2) or `graph` (Microsoft Graph "
        "`sendMail` over HTTPS, Microsoft only).")})
    messages_per_minute: int = attrs.field(
        validator=_at_least(0), default=_by_provider("messages_per_minute"), metadata={
        "default": "`30` (Microsoft), `0` (Google)", "doc": "Sending rate limit of the "
        "mailbox (Exchange Online allows 30 a minute); 0 for none."})
    recipients_per_day: int = attrs.field(
        validator=_at_least(0), default=_by_provider("recipients_per_day"), metadata={
        "default": "`10000` (Microsoft), `0` (Google)", "doc": "Recipients per rolling "
        "24 hours (Exchange Online allows 10,000); mail beyond it waits; 0 for none."})
    max_connections: int = attrs.field(
        validator=_at_least(1), default=3, metadata={"doc": (
        "Concurrent upstream connections (or Graph requests) for this account "
        "(Exchange Online allows 3 per mailbox).")})
    authority: str = attrs.field(validator=_https, default=FROM_PROVIDER, metadata={
        "default": f"`\"{MICROSOFT_AUTHORITY}\"` (Microsoft), `\"{GOOGLE_AUTHORITY}\"` "
        "(Google)", "doc": "The identity platform's base URL (https only); change it "
        "for national clouds and tests."})
    smtp_host: str = attrs.field(validator=_string, default=FROM_PROVIDER, metadata={
        "default": "`\"smtp.office365.com\"` (Microsoft), `\"smtp.gmail.com\"` (Google)",
        "doc": "The upstream SMTP server."})
    smtp_port: int = attrs.field(
        validator=_at_least(1, 65535), default=587, metadata={"doc": (
        "The upstream SMTP port; 465 implies `smtp_implicit_tls`.")})
    smtp_implicit_tls: bool = attrs.field(
        validator=_boolean,
        default=attrs.Factory(lambda self: self.smtp_port == 465, takes_self=True),
        metadata={
        "default": "`true` when `smtp_port` is 465, else `false`", "doc": "TLS from the "
        "first byte (port 465) instead of STARTTLS."})
    graph_url: str = attrs.field(validator=_https, default=FROM_PROVIDER, metadata={
        "default": f"`\"{GRAPH_URL}\"` (or the cloud's)", "doc": (
        "Microsoft Graph's base URL for `transport = \"graph\"` (https only); change it "
        "for national clouds and tests.")})
    ca_file: str | None = attrs.field(default=None, metadata={"doc": (
        "Extra CA certificates (PEM) trusted for the authority and the upstream, e.g. "
        "for a TLS-inspecting proxy or the sandbox.")})
    rewrite_from: bool = attrs.field(validator=_boolean, default=False, metadata={"doc": (
        "Send as `user` (envelope sender and From:), keeping the original sender in "
        "Reply-To:, the way to send when Send As cannot be granted.")})
    messages_per_connection: int = attrs.field(
        validator=_at_least(1), default=100, metadata={"doc": (
        "Messages sent over one upstream connection before it is replaced.")})
    idle_timeout: int = attrs.field(validator=_at_least(1), default=60, metadata={"doc": (
        "Seconds an idle upstream connection is kept open for reuse.")})
    authorization_url: str | None = attrs.field(
        validator=_https, default=_by_provider("authorization_url"), metadata={
        "default": f"`\"{GOOGLE_AUTHORIZATION_URL}\"` (Google only)", "doc": "Google "
        "only: where the browser sign-in sends the person (Google's OAuth 2.0 "
        "authorization endpoint, https only); Microsoft's follows from `authority`."})
    cloud: str = attrs.field(
        validator=_one_of(CLOUDS), default="global", metadata={"doc": (
        "Microsoft only: global | usgov (GCC High) | usgov-dod | china (21Vianet); "
        "derives authority, smtp_host, graph_url and the OAuth scopes (explicit "
        "overrides win); change it only for a national-cloud tenant")})
    client_secret_expires: str | None = attrs.field(
        validator=_date, default=None, metadata={"doc": (
        "The date the client secret expires (\"YYYY-MM-DD\", as shown in the app "
        "registration): xrelay warns 30 and 7 days ahead; update it with the secret.")})
    graph_large_messages: str = attrs.field(
        validator=_one_of(GRAPH_LARGE_MESSAGES), default="refuse", metadata={"doc": (
        "`transport = \"graph\"` only: what happens to a message over Graph's 4 MB "
        "request limit (about 3 MB of message, counted as base64). `refuse`: the device "
        "gets `552 5.3.4` naming the limit at the end of DATA and nothing is queued. "
        "`upload_session`: a draft plus attachments uploaded in ranges, then sent, up to "
        "150 MB; needs the `Mail.ReadWrite` permission and is not offered by Graph in "
        "`usgov` and `usgov-dod`. Default `refuse`: no permission beyond `Mail.Send` "
        "unless asked for.")})

    def __attrs_post_init__(self) -> None:
        derived = account_defaults(self.provider, self.cloud)
        for field in ("authority", "smtp_host", "graph_url"):
            if getattr(self, field) == FROM_PROVIDER:  # frozen: set once, while built
                object.__setattr__(self, field, derived[field])
        # The rules between the fields, in this order: the first broken one is named.
        self._check_provider()
        self._check_credentials()
        self._check_provider_only_fields()

    def _check_provider(self) -> None:
        """The transport, the flow and the tenant the provider allows or needs."""
        google = self.provider == "google"
        if google and self.transport == "graph":
            raise InvalidValue("transport", 'Graph is Microsoft only; write transport = '
                               '"smtp"')
        if self.flow not in PROVIDER_FLOWS[self.provider]:
            raise InvalidValue("flow", 'Google accounts use flow = "refresh_token" (a '
                               'refresh token file) or flow = "auth_code" (Sign in with '
                               'Google on the admin page)')
        if not google and not self.tenant:
            raise InvalidValue("tenant", 'is required for Microsoft accounts; write '
                               'tenant = "contoso.onmicrosoft.com" (or the tenant id)')

    def _check_credentials(self) -> None:
        """The client id, and a secret or a certificate where the flow needs one."""
        if not self.client_id:
            raise InvalidValue("client_id", "is required; write the application (client) "
                               "id of your app registration")
        if (self.certificate_file is None) != (self.certificate_key_file is None):
            raise InvalidValue("certificate_key_file" if self.certificate_key_file is None
                               else "certificate_file",
                               "certificate_file and certificate_key_file go together")
        if (self.flow == "client_credentials" and self.client_secret_file is None
                and self.certificate_file is None):
            raise InvalidValue("client_secret_file", "client_credentials needs "
                               "client_secret_file = \"...\" or certificate_file and "
                               "certificate_key_file")
        if self.provider == "google" and self.client_secret_file is None:
            raise InvalidValue("client_secret_file", "Google's token endpoint needs the "
                               "OAuth client secret; write client_secret_file = \"...\"")

    def _check_provider_only_fields(self) -> None:
        """The fields one provider (or cloud) has and the other has not."""
        google = self.provider == "google"
        if google and self.cloud != "global":
            raise InvalidValue("cloud", "is for Microsoft accounts; remove it")
        if (self.graph_large_messages == "upload_session"
                and self.cloud in GRAPH_WITHOUT_UPLOAD_SESSIONS):
            # https://learn.microsoft.com/graph/api/attachment-createuploadsession
            # ("national cloud deployments": not in US Government L4 nor L5 (DOD))
            raise InvalidValue("graph_large_messages", f"Graph offers no upload "
                               f"sessions in cloud {self.cloud!r}; write "
                               'graph_large_messages = "refuse" (or use transport = '
                               '"smtp" for large messages)')
        if google and self.graph_large_messages != "refuse":
            raise InvalidValue("graph_large_messages", "is for Microsoft Graph accounts; "
                               "remove it")
        if not google and self.authorization_url is not None:
            raise InvalidValue("authorization_url", "is for Google accounts; Microsoft's "
                               "sign-in page follows from authority")

    def largest_message(self) -> tuple[int | None, str]:
        """
        The largest message this account's transport carries (C{None}: no limit of its
        own, only C{server.max_message_size}), and why, for the device's 552 and for
        C{check-config}.
        """
        if self.transport != "graph":
            return None, ""
        if self.graph_large_messages == "upload_session":
            return GRAPH_UPLOAD_SESSION_MESSAGE, ("Microsoft Graph upload sessions carry "
                                                  "at most 150 MB")
        return GRAPH_SINGLE_REQUEST_MESSAGE, (
            "Microsoft Graph sendMail takes one 4 MB request with the message as base64; "
            "graph_large_messages = \"upload_session\" (Mail.ReadWrite) or transport = "
            "\"smtp\" carries more")

    @property
    def msal_authority(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant}"

