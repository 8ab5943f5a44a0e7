"""
The configuration contract: C{xrelay.toml} read with C{tomllib} into attrs classes.

Every mistake is found here, before anything listens, and reported as one
L{ConfigError} that names the file, the key and what to write instead: people install
xrelay in a hurry and must be able to fix their file from one line of output.  Relative
paths are resolved against the folder of the configuration file.  Secret files are
checked for readability here, but their contents are never kept on these objects nor
shown in any message.

This module must not import the reactor or C{twisted.mail}: the twistd plugin and the
C{xrelay} command load configurations before a reactor is chosen.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import socket
import tomllib
from typing import Any, Iterable, TypeVar

import attrs

from xrelay.addresses import InvalidPattern, SenderPattern
from xrelay.passwords import InvalidPasswordHash, parse_password_hash

#: Where the configuration is looked for when neither C{--config} nor
#: C{$XRELAY_CONFIG} names one.
DEFAULT_CONFIG_PATH = "/etc/xrelay/xrelay.toml"
ENVIRONMENT_VARIABLE = "XRELAY_CONFIG"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
T = TypeVar("T")

#: The pattern that allows every sender: the accounts' own C{senders} still decide which
#: senders can be delivered at all.
ANY_SENDER = (SenderPattern.parse("*"),)

#: The values of C{tls_min_version}, oldest first.
TLS_VERSIONS = ("1.0", "1.1", "1.2", "1.3")


class ConfigError(Exception):
    """
    A mistake in the configuration, phrased for the person who wrote the file.

    C{str()} is the one line to print: C{"<file>: <key>: <problem>; <what to write>"}.
    """

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(path, key, problem)
        self.path = path
        self.key = key
        self.problem = problem

    def __str__(self) -> str:
        where = f"{self.path}: {self.key}" if self.key else self.path
        return f"{where}: {self.problem}"


@attrs.frozen
class ListenerConfig:
    """
    One listening endpoint: an entry of C{server.listen}, a string or a table.
    """

    endpoint: str = attrs.field(metadata={"doc": (
        "A Twisted server endpoint description: `tcp:25`, "
        "`tcp:587:interface=192.168.10.5`, `tcp6:25:interface=\\:\\:`, "
        "`haproxy:tcp:2525` behind a load balancer speaking the PROXY protocol.")})
    implicit_tls: bool = attrs.field(default=False, metadata={"doc": (
        "TLS from the first byte (port 465 style) with `server.tls_cert`; STARTTLS is "
        "then not offered on this listener.")})
    pass_through: bool = attrs.field(default=False, metadata={"doc": (
        "Answer the end of DATA only once the upstream has answered, with its code and "
        "text; when nothing was delivered the device keeps the message and xrelay "
        "neither retries nor bounces it.")})
    starttls: bool | None = attrs.field(default=None, metadata={"doc": (
        "offer STARTTLS on this listener; unset: offered when server.tls_cert is set. "
        "Set false for a device that tries STARTTLS when offered and then fails")})
    tls_min_version: str | None = attrs.field(default=None, metadata={"doc": (
        'oldest TLS version this listener accepts, "1.0" | "1.1" | "1.2" | "1.3"; '
        'unset: server.tls_min_version. "1.0"/"1.1" only for old printers that need it')})


@attrs.frozen
class ServerConfig:
    listen: tuple[ListenerConfig, ...] = attrs.field(
        default=(ListenerConfig("tcp:2525:interface=127.0.0.1"),), metadata={"doc": (
            "Where devices connect: a list of endpoint descriptions or listener tables "
            "(see below); e.g. `[\"tcp:25:interface=0.0.0.0\", \"tcp:587\"]`. Changes "
            "only at restart.")})
    hostname: str = attrs.field(factory=socket.getfqdn, metadata={
        "default": "the machine's fully qualified domain name",
        "doc": "The name in the banner, in the EHLO reply, in Received: fields and in "
        "the relay's own EHLO upstream; set it when the machine's name is not the one "
        "devices and DNS know."})
    tls_cert: str | None = attrs.field(default=None, metadata={"doc": (
        "Certificate chain (PEM) offered with STARTTLS and implicit TLS; with "
        "`tls_key` it enables STARTTLS. Without it the relay speaks plain SMTP only.")})
    tls_key: str | None = attrs.field(default=None, metadata={"doc": (
        "The certificate's unencrypted private key (PEM), readable only by the service "
        "user.")})
    require_tls_for_auth: bool = attrs.field(default=True, metadata={"doc": (
        "Offer SMTP AUTH only after STARTTLS (or on implicit TLS), so that passwords "
        "never cross the network in clear; set false only on a trusted network for "
        "devices that cannot do TLS.")})
    max_message_size: int = attrs.field(default=36700160, metadata={"doc": (
        "Largest message accepted, in bytes, advertised with SIZE (35 MiB, Exchange "
        "Online's limit); at least 1024.")})
    max_recipients: int = attrs.field(default=500, metadata={"doc": (
        "Recipients accepted per message (Exchange Online's limit); more get "
        "452 4.5.3.")})
    state_dir: str = attrs.field(default="/var/lib/xrelay", metadata={
        "default": "`/var/lib/xrelay` (or `$STATE_DIRECTORY` under systemd)",
        "doc": "Folder for the spool, the encrypted token cache and its key "
        "(`keys/cache.key`), the lock and the control socket; back it up. Changes only "
        "at restart."})
    max_line_length: int = attrs.field(default=4096, metadata={"doc": (
        "Longest command or data line accepted, in bytes with the CRLF (RFC 5321 "
        "requires 1000 at least); longer lines are refused, never split.")})
    idle_timeout: int = attrs.field(default=300, metadata={"doc": (
        "Seconds a client may stay silent within a mail transaction (after MAIL, and "
        "in DATA) before 421 and disconnect (RFC 5321 asks servers for 5 minutes); "
        "before MAIL, `idle_timeout_before_mail` applies.")})
    max_connections: int = attrs.field(default=200, metadata={"doc": (
        "Concurrent client connections, over all listeners; more are refused with "
        "421.")})
    max_connections_per_client: int = attrs.field(default=20, metadata={"doc": (
        "Concurrent connections from one client address; raise it for an application "
        "server that opens many at once.")})
    max_auth_failures: int = attrs.field(default=3, metadata={"doc": (
        "Failed AUTH attempts allowed on one connection before 421 and disconnect.")})
    shutdown_timeout: int = attrs.field(default=30, metadata={"doc": (
        "Seconds to wait at stop (SIGTERM) for transactions and deliveries in flight; "
        "keep the service manager's stop timeout above it.")})
    tls_min_version: str = attrs.field(default="1.2", metadata={"doc": (
        'oldest TLS version any listener accepts unless it says otherwise, "1.0" | '
        '"1.1" | "1.2" | "1.3"; lower it per listener, not here, for legacy devices')})
    health_grace: int = attrs.field(default=900, metadata={"doc": (
        "Seconds an account may fail (no usable token) before `xrelay health` and "
        "/healthz report the relay unhealthy; raise it where sign-ins take longer to fix.")})
    min_free_space: int = attrs.field(default=104857600, metadata={
        "doc": "Bytes kept free in state_dir: below it new mail gets 452 4.3.1 while "
               "bounces, state changes and the token cache still have room; raise it "
               "for large messages, 0 turns the reserve off."})
    trusted_proxies: tuple[Network, ...] = attrs.field(default=(), metadata={
        "doc": "Load balancers (CIDR networks) whose PROXY header `haproxy:` listeners "
               "believe, e.g. `[\"10.0.0.5/32\"]`; connections from anywhere else are "
               "refused. Required when a `haproxy:` listener exists."})
    proxy_header_timeout: int = attrs.field(default=5, metadata={
        "doc": "Seconds a connection to a `haproxy:` listener may take to send its PROXY "
               "header before it is closed; raise it only for a very slow balancer."})
    max_connections_per_network: int = attrs.field(default=50, metadata={
        "doc": "Concurrent connections from one /24 (IPv4) or /64 (IPv6) network, never "
               "less than `max_connections_per_client`; raise it when many devices of "
               "one subnet send at the same moment."})
    reserved_connections: int = attrs.field(default=20, metadata={
        "doc": "Connections of `max_connections` kept for clients in "
               "`relay.allow_networks` (at most half), so that outsiders cannot crowd "
               "the printers out; 0 turns it off."})
    idle_timeout_before_mail: int = attrs.field(default=60, metadata={
        "doc": "Seconds a client may stay silent while no mail transaction is open "
               "(before MAIL FROM, between messages), at most `idle_timeout`, which "
               "applies within a transaction."})
    max_junk_commands: int = attrs.field(default=100, metadata={
        "doc": "NOOP, RSET, VRFY, HELP, EHLO and HELO commands allowed on one connection "
               "since its last accepted message (as Postfix's `smtpd_junk_command_limit`); "
               "then 421 and disconnect."})
    max_errors: int = attrs.field(default=20, metadata={
        "doc": "Refused or erroneous commands allowed on one connection since its last "
               "accepted message (as Postfix's `smtpd_hard_error_limit`); then 421 4.7.0 "
               "and disconnect. Repeated refusals are logged in one summary line."})

    @property
    def has_tls(self) -> bool:
        return self.tls_cert is not None


@attrs.frozen
class RelayConfig:
    allow_networks: tuple[Network, ...] = attrs.field(
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata={"doc": (
            "Client networks (CIDR) that may relay without SMTP AUTH: your printers' and "
            "servers' subnets. Loopback only by default: a relay must never be open "
            "because nobody wrote this key.")})
    senders: tuple[SenderPattern, ...] = attrs.field(default=ANY_SENDER, metadata={
        "doc": "Envelope senders that clients admitted by network may use (`*`, "
        "`*@example.com`, `scanner@example.com`); the accounts' own `senders` still "
        "decide what can be delivered."})
    default_account: str | None = attrs.field(default=None, metadata={"doc": (
        "Account used for senders that match no account's `senders`; unset, such "
        "senders are refused at MAIL FROM.")})
    bare_lf_end_of_data: str = attrs.field(default="trusted", metadata={"doc": (
        '"trusted": for clients admitted by allow_networks (not authenticated) a "." '
        'line ends DATA whatever its line ending (LF.LF, as Postfix exempts '
        '$mynetworks); "never": only CRLF.CRLF ends DATA, for every client')})
    allow_public_networks: bool = attrs.field(default=False, metadata={
        "doc": "Must be true for allow_networks to hold 0.0.0.0/0, ::/0 or any public "
               "range (an open relay through the account's identity otherwise); leave "
               "it false unless the relay sits behind something that filters clients."})


@attrs.frozen
class UserConfig:
    name: str = attrs.field(metadata={"doc": (
        "The username a device logs in with (SMTP AUTH PLAIN or LOGIN).")})
    password_hash: str = attrs.field(repr=lambda _: "'<hash>'", metadata={"doc": (
        "The password's hash from `xrelay hash-password`; plaintext passwords are "
        "refused.")})
    senders: tuple[SenderPattern, ...] = attrs.field(default=ANY_SENDER, metadata={
        "doc": "Envelope senders this user may use; give each device its own address, "
        "e.g. `[\"scanner@example.com\"]`."})


PROVIDERS = ("microsoft", "google")
FLOWS = ("client_credentials", "device_code", "auth_code", "refresh_token")
TRANSPORTS = ("smtp", "graph")

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


@attrs.frozen
class AccountConfig:
    """
    One upstream identity: whose token xrelay uses, and for which envelope senders.
    Secret files are paths only: secrets are read when needed, never kept on config
    objects.
    """

    name: str = attrs.field(metadata={"doc": (
        "The account's name, used by `relay.default_account`, `xrelay login NAME`, the "
        "logs and the metrics.")})
    provider: str = attrs.field(metadata={"default": "`\"microsoft\"`", "doc": (
        "`microsoft` (Exchange Online) or `google` (Gmail, Google Workspace).")})
    user: str = attrs.field(metadata={"doc": (
        "The mailbox xrelay signs in as and sends through (the XOAUTH2 user), e.g. "
        "`relay@example.com`.")})
    flow: str = attrs.field(metadata={
        "default": "`\"client_credentials\"` (Microsoft), `\"refresh_token\"` (Google)",
        "doc": "How xrelay obtains tokens: `client_credentials` (app-only, unattended), "
        "`device_code` (`xrelay login`), `auth_code` (sign in on the admin page), "
        "`refresh_token` (Google, a token file)."})
    senders: tuple[SenderPattern, ...] = attrs.field(metadata={
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
    transport: str = attrs.field(default="smtp", metadata={"doc": (
        "`smtp` (SMTP with STARTTLS and AUTH XOAUTH2) or `graph` (Microsoft Graph "
        "`sendMail` over HTTPS, Microsoft only).")})
    messages_per_minute: int = attrs.field(default=30, metadata={
        "default": "`30` (Microsoft), `0` (Google)", "doc": "Sending rate limit of the "
        "mailbox (Exchange Online allows 30 a minute); 0 for none."})
    recipients_per_day: int = attrs.field(default=10000, metadata={
        "default": "`10000` (Microsoft), `0` (Google)", "doc": "Recipients per rolling "
        "24 hours (Exchange Online allows 10,000); mail beyond it waits; 0 for none."})
    max_connections: int = attrs.field(default=3, metadata={"doc": (
        "Concurrent upstream connections (or Graph requests) for this account "
        "(Exchange Online allows 3 per mailbox).")})
    authority: str = attrs.field(default=MICROSOFT_AUTHORITY, metadata={
        "default": f"`\"{MICROSOFT_AUTHORITY}\"` (Microsoft), `\"{GOOGLE_AUTHORITY}\"` "
        "(Google)", "doc": "The identity platform's base URL (https only); change it "
        "for national clouds and tests."})
    smtp_host: str = attrs.field(default="smtp.office365.com", metadata={
        "default": "`\"smtp.office365.com\"` (Microsoft), `\"smtp.gmail.com\"` (Google)",
        "doc": "The upstream SMTP server."})
    smtp_port: int = attrs.field(default=587, metadata={"doc": (
        "The upstream SMTP port; 465 implies `smtp_implicit_tls`.")})
    smtp_implicit_tls: bool = attrs.field(default=False, metadata={
        "default": "`true` when `smtp_port` is 465, else `false`", "doc": "TLS from the "
        "first byte (port 465) instead of STARTTLS."})
    graph_url: str = attrs.field(default=GRAPH_URL, metadata={"doc": (
        "Microsoft Graph's base URL for `transport = \"graph\"` (https only); change it "
        "for national clouds and tests.")})
    ca_file: str | None = attrs.field(default=None, metadata={"doc": (
        "Extra CA certificates (PEM) trusted for the authority and the upstream, e.g. "
        "for a TLS-inspecting proxy or the sandbox.")})
    rewrite_from: bool = attrs.field(default=False, metadata={"doc": (
        "Send as `user` (envelope sender and From:), keeping the original sender in "
        "Reply-To:, the way to send when Send As cannot be granted.")})
    messages_per_connection: int = attrs.field(default=100, metadata={"doc": (
        "Messages sent over one upstream connection before it is replaced.")})
    idle_timeout: int = attrs.field(default=60, metadata={"doc": (
        "Seconds an idle upstream connection is kept open for reuse.")})
    authorization_url: str | None = attrs.field(default=None, metadata={
        "default": f"`\"{GOOGLE_AUTHORIZATION_URL}\"` (Google only)", "doc": "Google "
        "only: where the browser sign-in sends the person (Google's OAuth 2.0 "
        "authorization endpoint, https only); Microsoft's follows from `authority`."})
    cloud: str = attrs.field(default="global", metadata={"doc": (
        "Microsoft only: global | usgov (GCC High) | usgov-dod | china (21Vianet); "
        "derives authority, smtp_host, graph_url and the OAuth scopes (explicit "
        "overrides win); change it only for a national-cloud tenant")})
    client_secret_expires: str | None = attrs.field(default=None, metadata={"doc": (
        "The date the client secret expires (\"YYYY-MM-DD\", as shown in the app "
        "registration): xrelay warns 30 and 7 days ahead; update it with the secret.")})

    @property
    def msal_authority(self) -> str:
        return f"{self.authority.rstrip('/')}/{self.tenant}"


@attrs.frozen
class DeliveryConfig:
    first_retry: int = attrs.field(default=60, metadata={"doc": (
        "Seconds before the first retry of a temporary failure; each retry waits twice "
        "as long, with jitter, up to `max_retry_interval`.")})
    max_retry_interval: int = attrs.field(default=3600, metadata={"doc": (
        "Longest wait between two retries, in seconds.")})
    max_age: int = attrs.field(default=432000, metadata={"doc": (
        "Seconds a message may stay queued before it is bounced to its sender (5 "
        "days).")})
    bounce_to: str | None = attrs.field(default=None, metadata={"doc": (
        "An address that gets a copy of every bounce: devices rarely read their "
        "mail.")})
    connect_timeout: int = attrs.field(default=60, metadata={"doc": (
        "seconds to connect to the upstream, finish TLS and receive its banner (RFC "
        "5321 4.5.3.2 allows 5 minutes for the banner); raise it on a slow link")})
    command_timeout: int = attrs.field(default=300, metadata={"doc": (
        "seconds to wait for the upstream's reply to a command (RFC 5321 4.5.3.2: 5 "
        "minutes for MAIL and RCPT)")})
    data_timeout: int = attrs.field(default=600, metadata={"doc": (
        "seconds to wait for the upstream's reply after the final dot (RFC 5321 "
        "4.5.3.2: 10 minutes)")})
    send_as_denied: str = attrs.field(default="bounce", metadata={"doc": (
        "What a Send As refusal (`554 5.2.252 SendAsDenied`, `550 5.7.60`) does: "
        "`bounce` (the sender learns at once, the bounce names the PowerShell fix) or "
        "`hold` (that sender's mail waits in the queue, with the fix shown, until Send "
        "As is granted or `max_age` passes); other senders flow either way.")})
    history_days: int = attrs.field(default=30, metadata={"doc": (
        "Days the message trace (state_dir/history.sqlite) keeps each message and its "
        "attempts; 0 keeps no history at all.  Raise it to answer older questions.")})
    history_subject: bool = attrs.field(default=True, metadata={"doc": (
        "Record each message's Subject: in the message trace; false for privacy (the "
        "trace then searches by address and time only).")})
    history_message_id: bool = attrs.field(default=True, metadata={"doc": (
        "Record each message's Message-ID: in the message trace; false for privacy.")})


@attrs.frozen
class AdminConfig:
    listen: str = attrs.field(default="tcp:8025:interface=127.0.0.1", metadata={"doc": (
        "Endpoint of the admin page and `/metrics`; loopback by default. Put it behind "
        "TLS if you expose it.")})
    password_hash: str = attrs.field(default="", repr=lambda _: "'<hash>'", metadata={
        "default": "required", "doc": "The admin password's hash from `xrelay "
        "hash-password`."})
    public_url: str | None = attrs.field(default=None, metadata={"doc": (
        "The address browsers use to reach the admin page (behind a proxy), for the "
        "OAuth redirect URI `public_url/signin/callback` and the cookie's Secure flag.")})


@attrs.frozen
class Config:
    """
    A whole, validated configuration.

    @ivar path: the file it was read from, or C{None} for the sandbox default.
    @ivar sandbox_dir: set for the embedded sandbox default: the relay then starts the
        sandbox providers in this folder and routes everything to them.
    """

    server: ServerConfig = attrs.field(factory=ServerConfig)
    relay: RelayConfig = attrs.field(factory=RelayConfig)
    users: tuple[UserConfig, ...] = ()
    accounts: tuple[AccountConfig, ...] = ()
    delivery: DeliveryConfig = attrs.field(factory=DeliveryConfig)
    admin: AdminConfig | None = None
    path: str | None = None
    sandbox_dir: str | None = None

    def warnings(self) -> list[str]:
        """
        Settings that are allowed but probably not what was meant, one line each: the
        relay logs them at start and C{xrelay check-config} prints them.
        """
        where = self.path or "sandbox default"
        found = []
        if self.users and not self.server.has_tls and self.server.require_tls_for_auth:
            found.append(
                f"{where}: server.tls_cert: [[users]] can never log in: SMTP AUTH needs "
                "STARTTLS (require_tls_for_auth = true) and no certificate is set; set "
                "tls_cert and tls_key, or (on a trusted network only) "
                "require_tls_for_auth = false")
        found += legacy_tls_warnings(self, where)
        return found

    def account(self, name: str) -> AccountConfig:
        for account in self.accounts:
            if account.name == name:
                return account
        raise KeyError(name)


def listener_tls_min_version(server: ServerConfig, listener: ListenerConfig) -> str:
    """The oldest TLS version a listener accepts: its own setting, else the server's."""
    return listener.tls_min_version or server.tls_min_version


def listener_offers_starttls(server: ServerConfig, listener: ListenerConfig) -> bool:
    """Whether a listener offers STARTTLS: its own setting, else when a certificate is set."""
    if listener.implicit_tls or not server.has_tls:
        return False
    return listener.starttls is None or listener.starttls


def legacy_tls_warnings(config: "Config", where: str) -> list[str]:
    """One warning per listener that accepts TLS 1.0 or 1.1 (security level 0)."""
    found = []
    for i, listener in enumerate(config.server.listen):
        version = listener_tls_min_version(config.server, listener)
        if version in ("1.0", "1.1") and config.server.has_tls:
            found.append(
                f"{where}: server.listen[{i}] ({listener.endpoint}) accepts legacy TLS "
                f"{version} with OpenSSL security level 0 (SHA-1, non-ECDHE suites): "
                "only for old devices on a trusted network; keep other listeners at "
                '"1.2"')
        if (listener.starttls is False and not listener.implicit_tls and config.users
                and config.server.require_tls_for_auth):
            found.append(
                f"{where}: server.listen[{i}] ({listener.endpoint}): starttls = false, so "
                "[[users]] cannot log in on it (require_tls_for_auth = true); devices "
                "there must come from relay.allow_networks")
    return found


def plain_http_off_loopback(admin: AdminConfig) -> bool:
    """Whether the admin page is served without TLS to more than this machine."""
    if (admin.public_url or "").startswith("https://"):
        return False
    kind, _, rest = admin.listen.partition(":")
    if kind.lower() not in ("tcp", "tcp6"):
        return False  # ssl:, unix: and the like
    interface = ""
    for part in rest.replace("\\:", "\0").split(":"):
        if part.startswith("interface="):
            interface = part[len("interface="):].replace("\0", ":")
    try:
        return not ipaddress.ip_address(interface).is_loopback
    except ValueError:
        return True  # no interface: every address


def find_config_path(explicit: str | None) -> tuple[str | None, bool]:
    """
    Which configuration file to use: C{--config}, else C{$XRELAY_CONFIG}, else
    L{DEFAULT_CONFIG_PATH}.

    @return: the path (or C{None}: use the sandbox default) and whether it was named
        explicitly (a named file that does not exist is an error; the default path that
        does not exist means "sandbox").
    """
    if explicit:
        return explicit, True
    env = os.environ.get(ENVIRONMENT_VARIABLE)
    if env:
        return env, True
    if os.path.exists(DEFAULT_CONFIG_PATH):
        return DEFAULT_CONFIG_PATH, True
    return None, False


def sandbox_default(directory: str | None = None) -> Config:
    """
    The configuration used when none exists: listen on 127.0.0.1:2525 (the port from
    C{$XRELAY_SANDBOX_PORT}, the interface from C{$XRELAY_SANDBOX_INTERFACE}), accept from
    loopback, deliver to the embedded sandbox providers, state under C{./xrelay-sandbox}.
    """
    directory = os.path.abspath(directory or "xrelay-sandbox")
    listen, networks = _sandbox_reach()
    return Config(
        server=ServerConfig(
            listen=listen, hostname="localhost", state_dir=os.path.join(directory, "state")
        ),
        relay=RelayConfig(allow_networks=networks),
        sandbox_dir=directory,
    )


#: Set by the container image (C{0.0.0.0}): the sandbox default then listens there and
#: accepts the private networks a published port's connections come from.  Unset,
#: the sandbox listens on loopback only.
SANDBOX_INTERFACE_VARIABLE = "XRELAY_SANDBOX_INTERFACE"
#: The port the sandbox default listens on (2525 unset): for a second relay on one
#: machine, or a test that must not depend on 2525 being free.
SANDBOX_PORT_VARIABLE = "XRELAY_SANDBOX_PORT"
_PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "::1/128",
    "fc00::/7"))


def _sandbox_reach() -> tuple[tuple[ListenerConfig, ...], tuple[Network, ...]]:
    """
    Where the sandbox default listens, and whom it accepts.  Opening the sandbox to the
    private networks opens nothing else: it delivers only into its own mailbox folder.
    """
    text = os.environ.get(SANDBOX_INTERFACE_VARIABLE, "")
    port = _sandbox_port()
    if not text:
        listen = ServerConfig().listen
        if port is not None:
            listen = (ListenerConfig(f"tcp:{port}:interface=127.0.0.1"),)
        return listen, RelayConfig().allow_networks
    port = port or 2525
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError(f"${SANDBOX_INTERFACE_VARIABLE}", "", f"{text!r} is not an IP "
                          "address; write e.g. 0.0.0.0 (every IPv4 interface) or unset "
                          "it for loopback") from None
    endpoint = (f"tcp6:{port}:interface={text.replace(':', chr(92) + ':')}"
                if address.version == 6 else f"tcp:{port}:interface={text}")
    return (ListenerConfig(endpoint),), _PRIVATE_NETWORKS


def _sandbox_port() -> int | None:
    """C{$XRELAY_SANDBOX_PORT} as a port number; C{None} when unset."""
    text = os.environ.get(SANDBOX_PORT_VARIABLE, "")
    if not text:
        return None
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ConfigError(f"${SANDBOX_PORT_VARIABLE}", "", f"{text!r} is not a port "
                          "number; write one from 1 to 65535, or unset it for 2525")
    return int(text)


def load_config(explicit: str | None = None) -> Config:
    """
    Find and load the configuration as DESIGN.md says, or the sandbox default.

    @raise ConfigError: for any mistake, including a named file that does not exist.
    """
    path, named = find_config_path(explicit)
    if path is None:
        return sandbox_default()
    return read_config(path)


def read_config(path: str) -> Config:
    """
    Read and validate one configuration file.

    @raise ConfigError: for the first mistake found.
    """
    try:
        with open(path, "rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(
            path, "", "no such file; pass --config FILE or set XRELAY_CONFIG"
        ) from None
    except PermissionError:
        raise ConfigError(
            path, "", "cannot read the file (permission denied); make it readable by "
            "the user xrelay runs as"
        ) from None
    except IsADirectoryError:
        raise ConfigError(path, "", "is a folder; name the xrelay.toml file in it") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, "", f"not valid TOML: {e}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, "", "not valid TOML: the file is not UTF-8") from None
    return _Reader(path).config(raw)


# ---------------------------------------------------------------------------
# Validation.  One small reader per section; every check raises ConfigError naming
# the dotted key (accounts."main".tenant) so the message points at the line to fix.


@attrs.define
class _Reader:
    path: str

    @property
    def base(self) -> str:
        return os.path.dirname(os.path.abspath(self.path))

    def fail(self, key: str, problem: str) -> ConfigError:
        return ConfigError(self.path, key, problem)

    # -- generic checks -----------------------------------------------------

    def table(self, raw: Any, key: str) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise self.fail(key, f"must be a table ([{key}]), not {_kind(raw)}")
        return raw

    def known_keys(self, raw: dict[str, Any], prefix: str, allowed: Iterable[str],
                   hints: dict[str, str] | None = None) -> None:
        allowed = list(allowed)
        for key in raw:
            if key in allowed:
                continue
            name = f"{prefix}.{key}" if prefix else key
            if hints and key in hints:
                raise self.fail(name, hints[key])
            close = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f'; did you mean "{close[0]}"?' if close else (
                f"; the keys here are: {', '.join(allowed)}"
            )
            raise self.fail(name, f"unknown key{suggestion}")

    def get(self, raw: dict[str, Any], key: str, name: str, kind: type[T],
            default: T | None = None, required: bool = False) -> T | None:
        if key not in raw:
            if required:
                raise self.fail(name, f"is required; add {key} = {_example(kind)}")
            return default
        value = raw[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise self.fail(
                name, f"must be {_kind_name(kind)}, not {_kind(value)}; "
                f"write {key} = {_example(kind)}"
            )
        return value

    def non_negative(self, raw: dict[str, Any], key: str, name: str, default: int,
                     minimum: int = 0) -> int:
        value = self.get(raw, key, name, int, default)
        assert value is not None
        if value < minimum:
            raise self.fail(name, f"must be at least {minimum}, not {value}")
        return value

    def string_list(self, raw: dict[str, Any], key: str, name: str) -> list[str] | None:
        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, f'must be a list of strings, e.g. {key} = ["..."]')
        return value

    def file(self, raw: dict[str, Any], key: str, name: str, secret: bool = False,
             required: bool = False) -> str | None:
        value = self.get(raw, key, name, str, None, required)
        if value is None:
            return None
        full = os.path.join(self.base, os.path.expanduser(value))
        try:
            with open(full, "rb") as f:
                if secret and not f.read().strip():
                    raise self.fail(name, f"{full} is empty; put the secret in it")
        except FileNotFoundError:
            raise self.fail(name, f"{full} does not exist; create it or fix the path "
                            "(relative paths start at the configuration file's folder)"
                            ) from None
        except PermissionError:
            raise self.fail(name, f"{full} is not readable by this user; "
                            f"chmod/chown it so xrelay can read it") from None
        except IsADirectoryError:
            raise self.fail(name, f"{full} is a folder; name a file") from None
        return full

    def patterns(self, raw: dict[str, Any], key: str, name: str
                 ) -> tuple[SenderPattern, ...] | None:
        texts = self.string_list(raw, key, name)
        if texts is None:
            return None
        result = []
        for i, text in enumerate(texts):
            try:
                result.append(SenderPattern.parse(text))
            except InvalidPattern as e:
                raise self.fail(f"{name}[{i}]", str(e)) from None
        return tuple(result)

    def endpoint(self, description: str, name: str) -> None:
        """Parse a server endpoint description without listening."""
        from twisted.internet.endpoints import serverFromString

        try:
            serverFromString(_NoReactor(), description)
        except Exception as e:  # the parser raises ValueError, KeyError, SSL errors...
            detail = str(e) or type(e).__name__
            raise self.fail(
                name, f"{description!r} is not a valid endpoint description ({detail}); "
                'write e.g. "tcp:2525:interface=127.0.0.1" or "tcp6:25:interface=\\\\:\\\\:1"'
            ) from None

    def hash(self, raw: dict[str, Any], key: str, name: str, required: bool = True
             ) -> str:
        value = self.get(raw, key, name, str, "", required)
        assert value is not None
        if not value and not required:
            return value
        try:
            parse_password_hash(value)
        except InvalidPasswordHash:
            raise self.fail(
                name, "is not a password hash (was a plaintext password pasted here?); "
                "run `xrelay hash-password` and paste its output"
            ) from None
        return value

    # -- sections -------------------------------------------------------------

    def config(self, raw: dict[str, Any]) -> Config:
        self.known_keys(raw, "", ["server", "relay", "users", "accounts", "delivery",
                                  "admin"])
        server = self.server(self.table(raw.get("server", {}), "server"))
        relay = self.relay(self.table(raw.get("relay", {}), "relay"))
        users = self.users(raw.get("users", []))
        accounts = self.accounts(raw.get("accounts", []))
        delivery = self.delivery(self.table(raw.get("delivery", {}), "delivery"))
        admin = self.admin(self.table(raw["admin"], "admin")) if "admin" in raw else None
        names = [a.name for a in accounts]
        if relay.default_account is not None and relay.default_account not in names:
            raise self.fail("relay.default_account",
                            f"no account is named {relay.default_account!r}; "
                            f"the accounts are: {', '.join(names) or 'none'}")
        if not accounts:
            raise self.fail("accounts", "no [[accounts]] table; add one upstream mailbox "
                            "(see the README) so that xrelay can deliver")
        config = Config(server=server, relay=relay, users=users, accounts=accounts,
                      delivery=delivery, admin=admin, path=os.path.abspath(self.path))
        return config

    def server(self, raw: dict[str, Any]) -> ServerConfig:
        keys = [f.name for f in attrs.fields(ServerConfig)]
        self.known_keys(raw, "server", keys)
        # hostname given: the default's getfqdn() (a DNS lookup, slow where DNS is
        # broken) is only asked for when the file names no hostname.
        defaults = ServerConfig(hostname="")
        listeners = self.listeners(raw)
        tls_cert = self.file(raw, "tls_cert", "server.tls_cert")
        tls_key = self.file(raw, "tls_key", "server.tls_key", secret=True)
        if (tls_cert is None) != (tls_key is None):
            missing = "tls_key" if tls_key is None else "tls_cert"
            raise self.fail(f"server.{missing}", "tls_cert and tls_key go together; "
                            f"add {missing} = \"...\"")
        if tls_cert is not None and tls_key is not None:
            self.check_tls_pair(tls_cert, tls_key)
        if tls_cert is None:
            for i, listener in enumerate(listeners):
                if listener.implicit_tls:
                    raise self.fail(f"server.listen[{i}]", "implicit_tls needs "
                                    "server.tls_cert and server.tls_key")
                if listener.starttls:
                    raise self.fail(f"server.listen[{i}].starttls", "STARTTLS needs "
                                    "server.tls_cert and server.tls_key")
        for i, listener in enumerate(listeners):
            if listener.implicit_tls and listener.starttls:
                raise self.fail(f"server.listen[{i}].starttls", "an implicit_tls "
                                "listener is TLS from the first byte and never offers "
                                "STARTTLS; remove starttls or implicit_tls")
        state_dir = self.get(raw, "state_dir", "server.state_dir", str,
                             os.environ.get("STATE_DIRECTORY") or defaults.state_dir)
        assert state_dir is not None
        return ServerConfig(
            listen=tuple(listeners),
            hostname=self.get(raw, "hostname", "server.hostname", str, "")
            or socket.getfqdn(),
            tls_cert=tls_cert,
            tls_key=tls_key,
            require_tls_for_auth=bool(self.get(raw, "require_tls_for_auth",
                                               "server.require_tls_for_auth", bool, True)),
            max_message_size=self.non_negative(raw, "max_message_size",
                                               "server.max_message_size",
                                               defaults.max_message_size, 1024),
            max_recipients=self.non_negative(raw, "max_recipients",
                                             "server.max_recipients",
                                             defaults.max_recipients, 1),
            state_dir=os.path.join(self.base, os.path.expanduser(state_dir)),
            max_line_length=self.non_negative(raw, "max_line_length",
                                              "server.max_line_length",
                                              defaults.max_line_length, 1000),
            idle_timeout=self.non_negative(raw, "idle_timeout", "server.idle_timeout",
                                           defaults.idle_timeout, 1),
            max_connections=self.non_negative(raw, "max_connections",
                                              "server.max_connections",
                                              defaults.max_connections, 1),
            max_connections_per_client=self.non_negative(
                raw, "max_connections_per_client", "server.max_connections_per_client",
                defaults.max_connections_per_client, 1),
            max_auth_failures=self.non_negative(raw, "max_auth_failures",
                                                "server.max_auth_failures",
                                                defaults.max_auth_failures, 1),
            shutdown_timeout=self.non_negative(raw, "shutdown_timeout",
                                               "server.shutdown_timeout",
                                               defaults.shutdown_timeout),
            tls_min_version=self.tls_version(raw, "server.tls_min_version")
            or defaults.tls_min_version,
            health_grace=self.non_negative(raw, "health_grace", "server.health_grace",
                                           defaults.health_grace),
            min_free_space=self.non_negative(raw, "min_free_space",
                                             "server.min_free_space",
                                             defaults.min_free_space),
            **self.server_limits(raw, listeners, defaults),
        )

    def server_limits(self, raw: dict[str, Any], listeners: list[ListenerConfig],
                      defaults: ServerConfig) -> dict[str, Any]:
        """The keys that bound what one client (or one network) can hold."""
        proxies = self.networks(raw, "trusted_proxies", "server.trusted_proxies", ())
        for i, listener in enumerate(listeners):
            if listener.endpoint.lower().startswith("haproxy:") and not proxies:
                raise self.fail("server.trusted_proxies", f"server.listen[{i}] is a "
                                "haproxy: listener, which believes the PROXY header only "
                                "from its load balancers; write trusted_proxies = "
                                '["10.0.0.5/32"] with their addresses')
        limits: dict[str, Any] = {"trusted_proxies": proxies}
        for key, minimum in (("proxy_header_timeout", 1),
                             ("max_connections_per_network", 1),
                             ("reserved_connections", 0), ("idle_timeout_before_mail", 1),
                             ("max_junk_commands", 1), ("max_errors", 1)):
            limits[key] = self.non_negative(raw, key, f"server.{key}",
                                            getattr(defaults, key), minimum)
        maximum = self.non_negative(raw, "max_connections", "server.max_connections",
                                    defaults.max_connections, 1)
        # Only when written: the default is halved for a small max_connections.
        if "reserved_connections" in raw and limits["reserved_connections"] >= maximum:
            raise self.fail("server.reserved_connections", f"must be less than "
                            f"server.max_connections ({maximum}), or nobody outside "
                            "relay.allow_networks could connect")
        return limits

    def networks(self, raw: dict[str, Any], key: str, name: str,
                 default: tuple[Network, ...]) -> tuple[Network, ...]:
        texts = self.string_list(raw, key, name)
        if texts is None:
            return default
        parsed = []
        for i, text in enumerate(texts):
            try:
                parsed.append(ipaddress.ip_network(text, strict=True))
            except ValueError as e:
                raise self.fail(
                    f"{name}[{i}]", f"{text!r} is not a network in CIDR form ({e}); write "
                    'e.g. "10.0.0.5/32" or "2001:db8::/64"') from None
        return tuple(parsed)

    def listeners(self, raw: dict[str, Any]) -> list[ListenerConfig]:
        if "listen" not in raw:
            return list(ServerConfig().listen)
        value = raw["listen"]
        if isinstance(value, (str, dict)):
            value = [value]
        if not isinstance(value, list) or not value:
            raise self.fail("server.listen", 'must be a list of at least one endpoint '
                            'description, e.g. listen = ["tcp:25"]')
        listeners = []
        for i, item in enumerate(value):
            name = f"server.listen[{i}]"
            if isinstance(item, str):
                item = {"endpoint": item}
            if not isinstance(item, dict):
                raise self.fail(name, "must be an endpoint description string or a table "
                                '{ endpoint = "tcp:465", implicit_tls = true }')
            self.known_keys(item, name, ["endpoint", "implicit_tls", "pass_through",
                                         "starttls", "tls_min_version"])
            endpoint = self.get(item, "endpoint", f"{name}.endpoint", str, required=True)
            assert endpoint is not None
            self.endpoint(endpoint, name)
            listeners.append(ListenerConfig(
                endpoint=endpoint,
                implicit_tls=bool(self.get(item, "implicit_tls", f"{name}.implicit_tls",
                                           bool, False)),
                pass_through=bool(self.get(item, "pass_through", f"{name}.pass_through",
                                           bool, False)),
                starttls=self.get(item, "starttls", f"{name}.starttls", bool),
                tls_min_version=self.tls_version(item, f"{name}.tls_min_version"),
            ))
        return listeners

    def tls_version(self, raw: dict[str, Any], name: str) -> str | None:
        """A C{tls_min_version} value, checked against the versions OpenSSL knows."""
        value = self.get(raw, "tls_min_version", name, str)
        if value is not None and value not in TLS_VERSIONS:
            raise self.fail(name, f"must be one of {', '.join(map(repr, TLS_VERSIONS))}, "
                            f"not {value!r}")
        return value

    def check_tls_pair(self, cert: str, key: str) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        from cryptography.hazmat.primitives.serialization import (Encoding,
                                                                  PublicFormat)

        try:
            with open(cert, "rb") as f:
                leaf = x509.load_pem_x509_certificates(f.read())[0]
        except ValueError:
            raise self.fail("server.tls_cert", f"{cert} holds no PEM certificate") from None
        try:
            with open(key, "rb") as f:
                private = load_pem_private_key(f.read(), password=None)
        except (ValueError, TypeError):
            raise self.fail("server.tls_key", f"{key} holds no unencrypted PEM private "
                            "key") from None

        def spki(public: Any) -> bytes:
            return bytes(public.public_bytes(Encoding.DER,
                                             PublicFormat.SubjectPublicKeyInfo))
        if spki(leaf.public_key()) != spki(private.public_key()):
            raise self.fail("server.tls_key", f"{key} does not belong to the certificate "
                            f"in {cert} (their public keys differ); use the key the "
                            "certificate was issued for (the first certificate in "
                            "tls_cert must be the server's own)")
        import datetime

        expires = leaf.not_valid_after_utc
        if expires <= datetime.datetime.now(datetime.timezone.utc):
            raise self.fail("server.tls_cert", f"{cert} expired on "
                            f"{expires:%Y-%m-%d %H:%M} UTC; renew it (clients refuse an "
                            "expired certificate at STARTTLS)")

    def relay(self, raw: dict[str, Any]) -> RelayConfig:
        self.known_keys(raw, "relay", ["allow_networks", "senders", "default_account",
                                       "bare_lf_end_of_data", "allow_public_networks"])
        allow_public = bool(self.get(raw, "allow_public_networks",
                                     "relay.allow_public_networks", bool, False))
        allow_public = bool(self.get(raw, "allow_public_networks",
                                     "relay.allow_public_networks", bool, False))
        defaults = RelayConfig()
        networks = defaults.allow_networks
        texts = self.string_list(raw, "allow_networks", "relay.allow_networks")
        if texts is not None:
            parsed = []
            for i, text in enumerate(texts):
                try:
                    parsed.append(ipaddress.ip_network(text, strict=True))
                except ValueError as e:
                    raise self.fail(
                        f"relay.allow_networks[{i}]",
                        f"{text!r} is not a network in CIDR form ({e}); write e.g. "
                        '"192.168.10.0/24" or "2001:db8::/64"') from None
            networks = tuple(parsed)
            for i, network in enumerate(networks):
                if not allow_public and _is_public(network):
                    raise self.fail(
                        f"relay.allow_networks[{i}]",
                        f'"{network}" includes public addresses: anyone there could '
                        "relay through your account's identity (an open relay); list "
                        'your LAN\'s ranges (e.g. "192.168.10.0/24"), or set '
                        "relay.allow_public_networks = true if you really mean it")
        return RelayConfig(
            allow_networks=networks,
            senders=self.patterns(raw, "senders", "relay.senders") or defaults.senders,
            default_account=self.get(raw, "default_account", "relay.default_account", str),
            bare_lf_end_of_data=self.bare_lf_end_of_data(raw, defaults),
            allow_public_networks=allow_public,
        )

    def bare_lf_end_of_data(self, raw: dict[str, Any], defaults: RelayConfig) -> str:
        value = self.get(raw, "bare_lf_end_of_data", "relay.bare_lf_end_of_data", str,
                         defaults.bare_lf_end_of_data)
        if value not in ("trusted", "never"):
            raise self.fail("relay.bare_lf_end_of_data", f'must be "trusted" or "never", '
                            f"not {value!r}")
        assert value is not None
        return value

    def array_of_tables(self, raw: Any, key: str) -> list[dict[str, Any]]:
        if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
            raise self.fail(key, f"must be written as [[{key}]] tables")
        return raw

    def users(self, raw: Any) -> tuple[UserConfig, ...]:
        users = []
        seen: set[str] = set()
        for i, table in enumerate(self.array_of_tables(raw, "users")):
            prefix = f"users[{i}]"
            self.known_keys(table, prefix, ["name", "password_hash", "senders"], hints={
                "password": "plaintext passwords are not accepted; run `xrelay "
                "hash-password` and write password_hash = \"<its output>\" instead"})
            name = self.get(table, "name", f"{prefix}.name", str, required=True)
            assert name is not None
            if name in seen:
                raise self.fail(f"{prefix}.name", f"user {name!r} is defined twice")
            seen.add(name)
            prefix = f'users."{name}"'
            users.append(UserConfig(
                name=name,
                password_hash=self.hash(table, "password_hash", f"{prefix}.password_hash"),
                senders=self.patterns(table, "senders", f"{prefix}.senders") or ANY_SENDER,
            ))
        return tuple(users)

    def accounts(self, raw: Any) -> tuple[AccountConfig, ...]:
        accounts = []
        seen: set[str] = set()
        for i, table in enumerate(self.array_of_tables(raw, "accounts")):
            name = self.get(table, "name", f"accounts[{i}].name", str, required=True)
            assert name is not None
            if name in seen:
                raise self.fail(f"accounts[{i}].name", f"account {name!r} is defined twice")
            seen.add(name)
            accounts.append(self.account(table, name))
        return tuple(accounts)

    def account(self, raw: dict[str, Any], name: str) -> AccountConfig:
        prefix = f'accounts."{name}"'
        keys = [f.name for f in attrs.fields(AccountConfig)]
        self.known_keys(raw, prefix, keys, hints={
            "client_secret": "secrets do not go in the configuration file; put the "
            "secret in a file readable only by xrelay and write "
            "client_secret_file = \"secret.txt\"",
            "refresh_token": "write the refresh token into a file and set "
            "refresh_token_file = \"...\"",
            "password": "Exchange Online and Gmail need OAuth 2.0, not a password; choose "
            "a flow (client_credentials, device_code, auth_code, refresh_token)"})
        k = lambda key: f"{prefix}.{key}"  # noqa: E731
        provider = self.choice(raw, "provider", k("provider"), PROVIDERS, "microsoft")
        flow = self.choice(raw, "flow", k("flow"), FLOWS,
                           "refresh_token" if provider == "google" else "client_credentials")
        user = self.get(raw, "user", k("user"), str, required=True)
        assert user is not None
        if "@" not in user:
            raise self.fail(k("user"), f"{user!r} is not a mailbox address; write the "
                            'mailbox xrelay signs in as, e.g. user = "relay@example.com"')
        transport = self.choice(raw, "transport", k("transport"), TRANSPORTS, "smtp")
        if provider == "google" and transport == "graph":
            raise self.fail(k("transport"), 'Graph is Microsoft only; write transport = "smtp"')
        if flow not in PROVIDER_FLOWS[provider]:
            raise self.fail(k("flow"), 'Google accounts use flow = "refresh_token" (a '
                            'refresh token file) or flow = "auth_code" (Sign in with '
                            'Google on the admin page)')
        senders = self.patterns(raw, "senders", k("senders"))
        if senders is None:
            senders = (SenderPattern.parse(user),)
        tenant = self.get(raw, "tenant", k("tenant"), str)
        client_id = self.get(raw, "client_id", k("client_id"), str)
        if provider == "microsoft" and not tenant:
            raise self.fail(k("tenant"), 'is required for Microsoft accounts; write '
                            'tenant = "contoso.onmicrosoft.com" (or the tenant id)')
        if not client_id:
            raise self.fail(k("client_id"), "is required; write the application (client) "
                            "id of your app registration")
        secret = self.file(raw, "client_secret_file", k("client_secret_file"), secret=True)
        cert = self.file(raw, "certificate_file", k("certificate_file"))
        cert_key = self.file(raw, "certificate_key_file", k("certificate_key_file"),
                             secret=True)
        refresh = self.file(raw, "refresh_token_file", k("refresh_token_file"), secret=True)
        if (cert is None) != (cert_key is None):
            raise self.fail(k("certificate_key_file" if cert_key is None
                              else "certificate_file"),
                            "certificate_file and certificate_key_file go together")
        if flow == "client_credentials" and secret is None and cert is None:
            raise self.fail(k("client_secret_file"), "client_credentials needs "
                            "client_secret_file = \"...\" or certificate_file and "
                            "certificate_key_file")
        if provider == "google" and secret is None:
            raise self.fail(k("client_secret_file"), "Google's token endpoint needs the "
                            "OAuth client secret; write client_secret_file = \"...\"")
        from xrelay.clouds import CLOUDS

        cloud = self.choice(raw, "cloud", k("cloud"), tuple(CLOUDS), "global")
        if provider == "google" and cloud != "global":
            raise self.fail(k("cloud"), "is for Microsoft accounts; remove it")
        endpoints = CLOUDS[cloud]
        default_authority = GOOGLE_AUTHORITY if provider == "google" else endpoints.authority
        authority = self.url(raw, "authority", k("authority"), default_authority)
        graph_url = self.url(raw, "graph_url", k("graph_url"), endpoints.graph_url)
        default_smtp_host = endpoints.smtp_host if provider == "microsoft" else \
            SMTP_HOSTS[provider]
        authorization_url: str | None = None
        if provider == "google":
            authorization_url = self.url(raw, "authorization_url", k("authorization_url"),
                                         GOOGLE_AUTHORIZATION_URL)
        elif "authorization_url" in raw:
            raise self.fail(k("authorization_url"), "is for Google accounts; Microsoft's "
                            "sign-in page follows from authority")
        smtp_port = self.non_negative(raw, "smtp_port", k("smtp_port"), 587, 1)
        if smtp_port > 65535:
            raise self.fail(k("smtp_port"), f"{smtp_port} is not a TCP port")
        implicit = self.get(raw, "smtp_implicit_tls", k("smtp_implicit_tls"), bool,
                            smtp_port == 465)
        default_rate = 30 if provider == "microsoft" else 0
        return AccountConfig(
            name=name, provider=provider, user=user, flow=flow, senders=senders,
            tenant=tenant, client_id=client_id, client_secret_file=secret,
            certificate_file=cert, certificate_key_file=cert_key,
            refresh_token_file=refresh, transport=transport,
            messages_per_minute=self.non_negative(raw, "messages_per_minute",
                                                  k("messages_per_minute"), default_rate),
            recipients_per_day=self.non_negative(
                raw, "recipients_per_day", k("recipients_per_day"),
                10000 if provider == "microsoft" else 0),
            max_connections=self.non_negative(raw, "max_connections",
                                              k("max_connections"), 3, 1),
            authority=authority,
            smtp_host=self.get(raw, "smtp_host", k("smtp_host"), str,
                               default_smtp_host) or default_smtp_host,
            smtp_port=smtp_port, smtp_implicit_tls=bool(implicit), graph_url=graph_url,
            ca_file=self.file(raw, "ca_file", k("ca_file")),
            rewrite_from=bool(self.get(raw, "rewrite_from", k("rewrite_from"), bool, False)),
            messages_per_connection=self.non_negative(
                raw, "messages_per_connection", k("messages_per_connection"), 100, 1),
            idle_timeout=self.non_negative(raw, "idle_timeout", k("idle_timeout"), 60, 1),
            authorization_url=authorization_url,
            cloud=cloud,
            client_secret_expires=self.expiry_date(raw, "client_secret_expires",
                                                   k("client_secret_expires")),
        )

    def expiry_date(self, raw: dict[str, Any], key: str, name: str) -> str | None:
        """A "YYYY-MM-DD" date (quoted, or a bare TOML date)."""
        import datetime

        if key not in raw:
            return None
        value = raw[key]
        if isinstance(value, datetime.date) and not isinstance(value, datetime.datetime):
            return value.isoformat()
        if isinstance(value, str) and len(value) == 10:
            try:
                return datetime.date.fromisoformat(value).isoformat()
            except ValueError:
                pass
        raise self.fail(name, f"{value!r} is not a date; write {key} = \"2027-06-30\" "
                        "(the expiry shown in the app registration)")

    def choice(self, raw: dict[str, Any], key: str, name: str, choices: tuple[str, ...],
               default: str) -> str:
        value = self.get(raw, key, name, str, default)
        if value not in choices:
            raise self.fail(name, f"{value!r} is not one of: {', '.join(choices)}")
        assert value is not None
        return value

    def url(self, raw: dict[str, Any], key: str, name: str, default: str) -> str:
        value = self.get(raw, key, name, str, default)
        assert value is not None
        if not value.startswith("https://"):
            raise self.fail(name, f"{value!r} must be an https:// URL; tokens are never "
                            "sent over plain HTTP")
        return value.rstrip("/")

    def delivery(self, raw: dict[str, Any]) -> DeliveryConfig:
        self.known_keys(raw, "delivery", [f.name for f in attrs.fields(DeliveryConfig)])
        d = DeliveryConfig()
        bounce_to = self.get(raw, "bounce_to", "delivery.bounce_to", str)
        if bounce_to is not None and "@" not in bounce_to:
            raise self.fail("delivery.bounce_to", f"{bounce_to!r} is not an address")
        return DeliveryConfig(
            first_retry=self.non_negative(raw, "first_retry", "delivery.first_retry",
                                          d.first_retry, 1),
            max_retry_interval=self.non_negative(raw, "max_retry_interval",
                                                 "delivery.max_retry_interval",
                                                 d.max_retry_interval, 1),
            max_age=self.non_negative(raw, "max_age", "delivery.max_age", d.max_age, 1),
            bounce_to=bounce_to,
            connect_timeout=self.non_negative(raw, "connect_timeout",
                                              "delivery.connect_timeout",
                                              d.connect_timeout, 1),
            command_timeout=self.non_negative(raw, "command_timeout",
                                              "delivery.command_timeout",
                                              d.command_timeout, 1),
            data_timeout=self.non_negative(raw, "data_timeout", "delivery.data_timeout",
                                           d.data_timeout, 1),
            send_as_denied=self.choice(raw, "send_as_denied", "delivery.send_as_denied",
                                       ("bounce", "hold"), d.send_as_denied),
            history_days=self.non_negative(raw, "history_days", "delivery.history_days",
                                           d.history_days),
            history_subject=bool(self.get(raw, "history_subject", "delivery.history_subject",
                                          bool, d.history_subject)),
            history_message_id=bool(self.get(raw, "history_message_id",
                                             "delivery.history_message_id", bool,
                                             d.history_message_id)),
        )

    def admin(self, raw: dict[str, Any]) -> AdminConfig:
        self.known_keys(raw, "admin", ["listen", "password_hash", "public_url"], hints={
            "password": "plaintext passwords are not accepted; run `xrelay hash-password`"
            " and write password_hash = \"<its output>\" instead"})
        listen = self.get(raw, "listen", "admin.listen", str, AdminConfig().listen)
        assert listen is not None
        self.endpoint(listen, "admin.listen")
        public_url = self.get(raw, "public_url", "admin.public_url", str)
        return AdminConfig(
            listen=listen,
            password_hash=self.hash(raw, "password_hash", "admin.password_hash"),
            public_url=public_url.rstrip("/") if public_url else None,
        )


def _is_public(network: Network) -> bool:
    """Whether the network holds any address outside private, loopback, link-local."""
    first, last = network.network_address, network.broadcast_address
    return not all(a.is_private or a.is_loopback or a.is_link_local
                   for a in (first, last)) or network.prefixlen < (
        8 if network.version == 4 else 7)


class _NoReactor:
    """
    Stands in for the reactor while endpoint descriptions are parsed: parsing must not
    install a reactor (twistd may not have chosen one yet), and nothing listens here.
    """


def _kind(value: Any) -> str:
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _kind_name(kind: type) -> str:
    return {bool: "true or false", int: "a whole number", str: "a string",
            list: "a list", dict: "a table"}.get(kind, kind.__name__)


def _example(kind: type) -> str:
    return {bool: "true", int: "30", str: '"..."', list: '["..."]'}.get(kind, "...")


def account_from_table(table: dict[str, Any], source: str) -> AccountConfig:
    """
    Validate one C{[[accounts]]} table that did not come from a file (the embedded
    sandbox's account, an embedding program's).  Paths must be absolute.

    @param source: what to name in error messages in place of a file.
    """
    name = table.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(source, "accounts.name", "is required")
    return _Reader(source).account(table, name)


def with_accounts(config: Config, accounts: tuple[AccountConfig, ...]) -> Config:
    """The same configuration with other accounts (the sandbox default's)."""
    return attrs.evolve(config, accounts=accounts)
