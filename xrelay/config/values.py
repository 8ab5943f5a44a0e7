"""
The configuration's sections as attrs classes that check themselves: listeners, the
server, the relay, users, delivery, the admin page and the setup (the accounts are
L{xrelay.config.accounts}', the whole L{xrelay.config.whole}'s).

Defaults live on the classes only.  This module must never read a file, import the
reader or the reactor: a value built in Python need not point at real files.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

import attrs

from xrelay.addresses import SenderPattern
from xrelay.clouds import CLOUDS, cloud_of
from xrelay.config.validators import (
    TLS_VERSIONS,
    InvalidValue,
    Network,
    _at_least,
    _bare_lf_problem,
    _boolean,
    _endpoint,
    _https,
    _is_public,
    _networks,
    _one_of,
    _optional_address,
    _password_hash,
    _patterns,
    _text,
    _tls_version_problem,
)


#: The pattern that allows every sender: the accounts' own C{senders} still decide which
#: senders can be delivered at all.
ANY_SENDER = (SenderPattern.parse("*"),)

@attrs.frozen
class ListenerConfig:
    """
    One listening endpoint: an entry of C{server.listen}, a string or a table.
    """

    endpoint: str = attrs.field(validator=_endpoint, metadata={"doc": (
        "A Twisted server endpoint description: `tcp:25`, "
        "`tcp:587:interface=192.168.10.5`, `tcp6:25:interface=\\:\\:`, "
        "`haproxy:tcp:2525` behind a load balancer speaking the PROXY protocol.")})
    implicit_tls: bool = attrs.field(validator=_boolean, default=False, metadata={"doc": (
        "TLS from the first byte (port 465 style) with `server.tls_cert`; STARTTLS is "
        "then not offered on this listener.")})
    pass_through: bool = attrs.field(validator=_boolean, default=False, metadata={"doc": (
        "Answer the end of DATA only once the upstream has answered, with its code and "
        "text; when nothing was delivered the device keeps the message and xrelay "
        "neither retries nor bounces it.")})
    starttls: bool | None = attrs.field(
        validator=_boolean, default=None, metadata={"doc": (
        "offer STARTTLS on this listener; unset: offered when server.tls_cert is set. "
        "Set false for a device that tries STARTTLS when offered and then fails")})
    tls_min_version: str | None = attrs.field(
        validator=_one_of(TLS_VERSIONS, _tls_version_problem, optional=True), default=None,
        metadata={"doc": (
        'oldest TLS version this listener accepts, "1.0" | "1.1" | "1.2" | "1.3"; '
        'unset: server.tls_min_version. "1.0"/"1.1" only for old printers that need it')})
    auth_without_tls: str = attrs.field(
        validator=_one_of(("never", "trusted")), default="never", metadata={"doc": (
        '"trusted": clients in relay.allow_networks may log in (AUTH) on this listener '
        'without TLS, for devices set to "SMTP AUTH on, SSL off"; their passwords cross '
        'the trusted network in clear. "never": server.require_tls_for_auth decides')})
    bare_lf_end_of_data: str | None = attrs.field(
        validator=_one_of(("trusted", "never"), _bare_lf_problem, optional=True),
        default=None, metadata={"doc": (
        '"never" on the listener of a trusted host that forwards content others wrote '
        "(a web form, an old MTA): only CRLF.CRLF ends DATA there; unset: "
        "relay.bare_lf_end_of_data")})

    def __attrs_post_init__(self) -> None:
        if self.implicit_tls and self.starttls:
            raise InvalidValue("starttls", "an implicit_tls listener is TLS from the "
                               "first byte and never offers STARTTLS; remove starttls or "
                               "implicit_tls")


def _listeners(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple) or not value or not all(
            isinstance(v, ListenerConfig) for v in value):
        raise InvalidValue(attribute.name, "must be a tuple of at least one "
                           'ListenerConfig, e.g. (ListenerConfig("tcp:25"),)')


@attrs.frozen
class ServerConfig:
    listen: tuple[ListenerConfig, ...] = attrs.field(
        validator=_listeners,
        factory=lambda: (ListenerConfig("tcp:2525:interface=127.0.0.1"),), metadata={"doc": (
            "Where devices connect: a list of endpoint descriptions or listener tables "
            "(see below); e.g. `[\"tcp:25:interface=0.0.0.0\", \"tcp:587\"]`. Changes "
            "only at restart.")})
    hostname: str = attrs.field(validator=_text, factory=socket.getfqdn, metadata={
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
    require_tls_for_auth: bool = attrs.field(
        validator=_boolean, default=True, metadata={"doc": (
        "Offer SMTP AUTH only after STARTTLS (or on implicit TLS), so that passwords "
        "never cross the network in clear; set false only on a trusted network for "
        "devices that cannot do TLS.")})
    max_message_size: int = attrs.field(
        validator=_at_least(1024), default=36700160, metadata={"doc": (
        "Largest message accepted, in bytes, advertised with SIZE (35 MiB, Exchange "
        "Online's limit); at least 1024.")})
    max_recipients: int = attrs.field(
        validator=_at_least(1), default=500, metadata={"doc": (
        "Recipients accepted per message (Exchange Online's limit); more get "
        "452 4.5.3.")})
    state_dir: str = attrs.field(validator=_text, factory=lambda: os.environ.get(
        "STATE_DIRECTORY") or "/var/lib/xrelay", metadata={
        "default": "`/var/lib/xrelay` (or `$STATE_DIRECTORY` under systemd)",
        "doc": "Folder for the spool, the encrypted token cache and its key "
        "(`keys/cache.key`), the lock and the control socket; back it up. Changes only "
        "at restart."})
    max_line_length: int = attrs.field(
        validator=_at_least(1000), default=4096, metadata={"doc": (
        "Longest command or data line accepted, in bytes with the CRLF (RFC 5321 "
        "requires 1000 at least); longer lines are refused (552 naming this setting), "
        "never split. Raise it (e.g. to 1048576) for scanners that send base64 without "
        "line breaks; a line is held in memory while it arrives.")})
    idle_timeout: int = attrs.field(
        validator=_at_least(1), default=300, metadata={"doc": (
        "Seconds a client may stay silent within a mail transaction (after MAIL, and "
        "in DATA) before 421 and disconnect (RFC 5321 asks servers for 5 minutes); "
        "before MAIL, `idle_timeout_before_mail` applies.")})
    max_connections: int = attrs.field(
        validator=_at_least(1), default=200, metadata={"doc": (
        "Concurrent client connections, over all listeners; more are refused with "
        "421. Also each listener's backlog (connections the kernel queues while the "
        "relay is busy), unless its endpoint names one (`backlog=`).")})
    max_connections_per_client: int = attrs.field(
        validator=_at_least(1), default=20, metadata={"doc": (
        "Concurrent connections from one client address; raise it for an application "
        "server that opens many at once.")})
    max_auth_failures: int = attrs.field(
        validator=_at_least(1), default=3, metadata={"doc": (
        "Failed AUTH attempts allowed on one connection before 421 and disconnect.")})
    shutdown_timeout: int = attrs.field(
        validator=_at_least(0), default=30, metadata={"doc": (
        "Seconds to wait at stop (SIGTERM) for transactions and deliveries in flight; "
        "keep the service manager's stop timeout above it.")})
    tls_min_version: str = attrs.field(
        validator=_one_of(TLS_VERSIONS, _tls_version_problem), default="1.2",
        metadata={"doc": (
        'oldest TLS version any listener accepts unless it says otherwise, "1.0" | '
        '"1.1" | "1.2" | "1.3"; lower it per listener, not here, for legacy devices')})
    health_grace: int = attrs.field(
        validator=_at_least(0), default=900, metadata={"doc": (
        "Seconds an account may fail (no usable token) before `xrelay health` and "
        "/healthz report the relay unhealthy; raise it where sign-ins take longer to fix.")})
    min_free_space: int = attrs.field(
        validator=_at_least(0), default=104857600, metadata={
        "doc": "Bytes kept free in state_dir: below it new mail gets 452 4.3.1 while "
               "bounces, state changes and the token cache still have room; raise it "
               "for large messages, 0 turns the reserve off."})
    trusted_proxies: tuple[Network, ...] = attrs.field(
        validator=_networks, default=(), metadata={
        "doc": "Load balancers (CIDR networks) whose PROXY header `haproxy:` listeners "
               "believe, e.g. `[\"10.0.0.5/32\"]`; connections from anywhere else are "
               "refused. Required when a `haproxy:` listener exists."})
    proxy_header_timeout: int = attrs.field(validator=_at_least(1), default=5, metadata={
        "doc": "Seconds a connection to a `haproxy:` listener may take to send its PROXY "
               "header before it is closed; raise it only for a very slow balancer."})
    max_connections_per_network: int = attrs.field(
        validator=_at_least(1), default=50, metadata={
        "doc": "Concurrent connections from one /24 (IPv4) or /64 (IPv6) network, never "
               "less than `max_connections_per_client`; raise it when many devices of "
               "one subnet send at the same moment."})
    reserved_connections: int = attrs.field(validator=_at_least(0), default=20, metadata={
        "doc": "Connections of `max_connections` kept for clients in "
               "`relay.allow_networks` (at most half), so that outsiders cannot crowd "
               "the printers out; 0 turns it off."})
    reserved_auth_connections: int = attrs.field(
        validator=_at_least(0), default=10, metadata={
        "doc": "Connections of `max_connections` beyond the shared ones kept for "
               "sessions that authenticate (devices sending from outside "
               "`relay.allow_networks`, e.g. on port 587; at most half of what "
               "`reserved_connections` leaves): a client taking one must authenticate "
               "within 15 s, and each /24 or /64 may take one at a time; 0 turns it off."})
    idle_timeout_before_mail: int = attrs.field(
        validator=_at_least(1), default=60, metadata={
        "doc": "Seconds a client may stay silent or send only NOOP, RSET, HELP and the "
               "like while no mail transaction is open (before MAIL FROM, between "
               "messages), counted from its last command that moved towards a message "
               "(EHLO, STARTTLS, AUTH, MAIL...); at most `idle_timeout`, which applies "
               "within a transaction."})
    max_junk_commands: int = attrs.field(validator=_at_least(1), default=100, metadata={
        "doc": "NOOP, RSET, VRFY, HELP, EHLO and HELO commands allowed on one connection "
               "since its last accepted message (as Postfix's `smtpd_junk_command_limit`); "
               "then 421 and disconnect."})
    max_errors: int = attrs.field(validator=_at_least(1), default=20, metadata={
        "doc": "Refused or erroneous commands allowed on one connection since its last "
               "accepted message (as Postfix's `smtpd_hard_error_limit`); then 421 4.7.0 "
               "and disconnect. Repeated refusals are logged in one summary line."})

    def __attrs_post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            missing = "tls_key" if self.tls_key is None else "tls_cert"
            raise InvalidValue(missing, "tls_cert and tls_key go together; "
                               f"add {missing} = \"...\"")
        for i, listener in enumerate(self.listen):
            if self.tls_cert is None and listener.implicit_tls:
                raise InvalidValue(f"listen[{i}]", "implicit_tls needs server.tls_cert "
                                   "and server.tls_key")
            if self.tls_cert is None and listener.starttls:
                raise InvalidValue(f"listen[{i}].starttls", "STARTTLS needs "
                                   "server.tls_cert and server.tls_key")
        for i, listener in enumerate(self.listen):
            if listener.endpoint.lower().startswith("haproxy:") and not self.trusted_proxies:
                raise InvalidValue("trusted_proxies", f"server.listen[{i}] is a haproxy: "
                                   "listener, which believes the PROXY header only from "
                                   "its load balancers; write trusted_proxies = "
                                   '["10.0.0.5/32"] with their addresses')

    @property
    def has_tls(self) -> bool:
        return self.tls_cert is not None


@attrs.frozen
class RelayConfig:
    allow_networks: tuple[Network, ...] = attrs.field(validator=_networks, 
        default=(ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")),
        metadata={"doc": (
            "Client networks (CIDR) that may relay without SMTP AUTH: your printers' and "
            "servers' subnets. Loopback only by default: a relay must never be open "
            "because nobody wrote this key.")})
    senders: tuple[SenderPattern, ...] = attrs.field(
        validator=_patterns, default=ANY_SENDER, metadata={
        "doc": "Senders that clients admitted by network may use (`*`, "
        "`*@example.com`, `scanner@example.com`): the envelope sender and, unless `*` "
        "is listed, every address in the message's `From:` and `Sender:` (as a user's "
        "`senders`); the accounts' own `senders` still decide what can be delivered."})
    default_account: str | None = attrs.field(default=None, metadata={"doc": (
        "Account used for senders that match no account's `senders`; unset, such "
        "senders are refused at MAIL FROM.")})
    bare_lf_end_of_data: str = attrs.field(
        validator=_one_of(("trusted", "never"), _bare_lf_problem), default="trusted",
        metadata={"doc": (
        '"trusted": for clients admitted by allow_networks (not authenticated) a "." '
        'line ends DATA whatever its line ending (LF.LF, as Postfix exempts '
        '$mynetworks); "never": only CRLF.CRLF ends DATA, for every client. A trusted '
        "host that forwards content others wrote could let them end a message early "
        "and start a second one: give it a listener with `bare_lf_end_of_data = "
        '"never"`, or set "never" here')})
    allow_public_networks: bool = attrs.field(
        validator=_boolean, default=False, metadata={
        "doc": "Must be true for allow_networks to hold 0.0.0.0/0, ::/0 or any public "
               "range (an open relay through the account's identity otherwise); leave "
               "it false unless the relay sits behind something that filters clients."})
    device_inventory: bool = attrs.field(
        validator=_boolean, default=True, metadata={
        "doc": "Keep the device inventory (`xrelay devices`, the admin page's Devices "
               "page): per client address and AUTH user, its HELO names, TLS, senders, "
               "counts and last refusal, in state_dir/devices.sqlite, at most 5000 "
               "devices, each kept delivery.history_days after it was last seen (30 "
               "when the history is off). false: nothing about clients is kept (a reload "
               "that turns it off stops collecting at once; turning it on takes a "
               "restart)."})

    def __attrs_post_init__(self) -> None:
        for i, network in enumerate(self.allow_networks):
            if not self.allow_public_networks and _is_public(network):
                raise InvalidValue(
                    f"allow_networks[{i}]",
                    f'"{network}" includes public addresses: anyone there could '
                    "relay through your account's identity (an open relay); list "
                    'your LAN\'s ranges (e.g. "192.168.10.0/24"), or set '
                    "relay.allow_public_networks = true if you really mean it")


@attrs.frozen
class UserConfig:
    name: str = attrs.field(validator=_text, metadata={"doc": (
        "The username a device logs in with (SMTP AUTH PLAIN or LOGIN).")})
    password_hash: str = attrs.field(
        validator=_password_hash, repr=lambda _: "'<hash>'", metadata={"doc": (
        "The password's hash from `xrelay hash-password`; plaintext passwords are "
        "refused.")})
    senders: tuple[SenderPattern, ...] = attrs.field(
        validator=_patterns, default=ANY_SENDER, metadata={
        "doc": "Senders this user may use; give each device its own address, "
        "e.g. `[\"scanner@example.com\"]`.  Unless `*` is listed, the message's own "
        "`From:` and `Sender:` must match too, and a header block with a line that is "
        "not a field before its empty line is refused (550 5.7.1)."})



@attrs.frozen
class DeliveryConfig:
    first_retry: int = attrs.field(validator=_at_least(1), default=60, metadata={"doc": (
        "Seconds before the first retry of a temporary failure; each retry waits twice "
        "as long, with jitter, up to `max_retry_interval`.")})
    max_retry_interval: int = attrs.field(
        validator=_at_least(1), default=3600, metadata={"doc": (
        "Longest wait between two retries, in seconds.")})
    max_age: int = attrs.field(validator=_at_least(1), default=432000, metadata={"doc": (
        "Seconds a message may stay queued before it is bounced to its sender (5 "
        "days).")})
    bounce_to: str | None = attrs.field(
        validator=_optional_address, default=None, metadata={"doc": (
        "An address that gets a copy of every bounce: devices rarely read their "
        "mail.")})
    connect_timeout: int = attrs.field(
        validator=_at_least(1), default=60, metadata={"doc": (
        "seconds to connect to the upstream, finish TLS and receive its banner (RFC "
        "5321 4.5.3.2 allows 5 minutes for the banner); raise it on a slow link")})
    command_timeout: int = attrs.field(
        validator=_at_least(1), default=300, metadata={"doc": (
        "seconds to wait for the upstream's reply to a command (RFC 5321 4.5.3.2: 5 "
        "minutes for MAIL and RCPT)")})
    data_timeout: int = attrs.field(
        validator=_at_least(1), default=600, metadata={"doc": (
        "seconds to wait for the upstream's reply after the final dot (RFC 5321 "
        "4.5.3.2: 10 minutes)")})
    send_as_denied: str = attrs.field(
        validator=_one_of(("bounce", "hold")), default="bounce", metadata={"doc": (
        "What a Send As refusal (`554 5.2.252 SendAsDenied`, `550 5.7.60`) does: "
        "`bounce` (the sender learns at once, the bounce names the PowerShell fix) or "
        "`hold` (that sender's mail waits in the queue, with the fix shown, until Send "
        "As is granted or `max_age` passes); other senders flow either way.")})
    history_days: int = attrs.field(validator=_at_least(0), default=30, metadata={"doc": (
        "Days the message trace (state_dir/history.sqlite) keeps each message and its "
        "attempts; 0 keeps no history at all.  Raise it to answer older questions.")})
    history_subject: bool = attrs.field(
        validator=_boolean, default=True, metadata={"doc": (
        "Record each message's Subject: in the message trace; false for privacy (the "
        "trace then searches by address and time only).")})
    history_message_id: bool = attrs.field(
        validator=_boolean, default=True, metadata={"doc": (
        "Record each message's Message-ID: in the message trace; false for privacy.")})
    history_max_mb: int = attrs.field(validator=_at_least(0), default=500, metadata={"doc": (
        "Size bound of the message trace in MB (about 1.2 KB a message): when the file "
        "grows past it, the oldest messages are forgotten first, whatever history_days "
        "says; 0 for no bound.")})


@attrs.frozen
class AdminConfig:
    listen: str = attrs.field(
        validator=_endpoint, default="tcp:8025:interface=127.0.0.1", metadata={"doc": (
        "Endpoint of the admin page and `/metrics`; loopback by default. Put it behind "
        "TLS if you expose it.")})
    password_hash: str = attrs.field(
        validator=_password_hash, default="", repr=lambda _: "'<hash>'", metadata={
        "default": "required", "doc": "The admin password's hash from `xrelay "
        "hash-password`."})
    public_url: str | None = attrs.field(default=None, metadata={"doc": (
        "The address browsers use to reach the admin page (behind a proxy), for the "
        "OAuth redirect URI `public_url/signin/callback` and the cookie's Secure flag.")})
    monitoring_networks: tuple[Network, ...] = attrs.field(
        validator=_networks, default=(), metadata={"doc": (
        "Networks (CIDR) of monitoring servers that read `/metrics` and the full "
        "`/healthz` report without signing in, e.g. `[\"127.0.0.1/32\"]` for a "
        "Prometheus on this host. Anyone else gets `/healthz` as healthy or not with "
        "the names of the failed checks only, and `/metrics` refused (403). Behind a "
        "reverse proxy on this host every client comes from loopback: list it only if "
        "the proxy does not pass `/metrics` and `/healthz` through.")})


#: The Microsoft Graph Command Line Tools: a Microsoft first-party public client
#: (present in every tenant) that allows the device code flow and http://localhost
#: redirects on any port, so xrelay's setup needs no app registration of its own to
#: sign the admin in.  https://learn.microsoft.com/en-us/powershell/microsoftgraph/authentication-commands
SETUP_CLIENT_ID = "14d82eec-204b-4c2f-b7e8-296a70dab67e"


@attrs.frozen
class SetupConfig:
    """Where C{xrelay setup} and the "Add an account" wizard sign the admin in."""

    client_id: str = attrs.field(validator=_text, default=SETUP_CLIENT_ID, metadata={
        "doc": "The public client the admin signs in with for the setup (device code in "
        "the terminal, authorization code with PKCE on the page). The default is "
        "Microsoft's own Microsoft Graph Command Line Tools app, present in every tenant; "
        "the admin consents to it for the setup's permissions only (register apps, "
        "grant consent, read users, Exchange.Manage). Set your own public client's id "
        "if your tenant blocks it."})
    cloud: str = attrs.field(
        validator=_one_of(CLOUDS), default="global", metadata={"doc": (
            "The Microsoft cloud of the tenant: `global`, `usgov`, `usgov-dod`, "
            "`china`; picks the three URLs below.")})
    authority: str = attrs.field(validator=_https, default="", metadata={
        "default": "from `cloud`", "doc": "The identity platform's base URL "
        "(https://login.microsoftonline.com)."})
    graph_url: str = attrs.field(validator=_https, default="", metadata={
        "default": "from `cloud`", "doc": "Microsoft Graph's base URL for the app "
        "registration calls (https://graph.microsoft.com/v1.0)."})
    exchange_admin_url: str = attrs.field(validator=_https, default="", metadata={
        "default": "from `cloud`", "doc": "Exchange Online's admin API, the one the "
        "ExchangeOnlineManagement module uses "
        "(https://outlook.office365.com/adminapi/beta)."})
    ca_file: str | None = attrs.field(default=None, metadata={"doc": (
        "A PEM bundle to trust for these three instead of the system's (the sandbox's "
        "CA).")})

    def __attrs_post_init__(self) -> None:
        cloud = cloud_of(self.cloud)
        if not self.authority:
            object.__setattr__(self, "authority", cloud.authority)
        if not self.graph_url:
            object.__setattr__(self, "graph_url", cloud.graph_url)
        if not self.exchange_admin_url:
            object.__setattr__(self, "exchange_admin_url",
                               f"{cloud.outlook_resource}/adminapi/beta")




def listener_tls_min_version(server: ServerConfig, listener: ListenerConfig) -> str:
    """The oldest TLS version a listener accepts: its own setting, else the server's."""
    return listener.tls_min_version or server.tls_min_version


def listener_offers_starttls(server: ServerConfig, listener: ListenerConfig) -> bool:
    """Whether a listener offers STARTTLS: its own setting, else when a certificate is set."""
    if listener.implicit_tls or not server.has_tls:
        return False
    return listener.starttls is None or listener.starttls

