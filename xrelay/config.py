"""
The configuration's values: attrs classes that check themselves, and their only defaults.

A L{Config} is valid however it was made: read from C{xrelay.toml} by
L{xrelay.configfile} or built in Python by a test or an embedding program.  Every rule
about the values (ranges, choices, https-only URLs, addresses, networks, the listener
combinations, the rules between fields in C{__attrs_post_init__}) is a validator here and
raises L{InvalidValue}, a C{ValueError} naming the field (C{"listen[0].starttls"}); the
reader turns it into the one-line L{ConfigError} naming the key in the file.  What only
a file can get wrong (unknown keys, TOML types) and what touches the file system
(secret files readable, the certificate and its key, expiry) is the reader's and
L{xrelay.checks}'s: a value built in Python need not point at real files.

Defaults live on the classes only.  Those that depend on an account's provider (and a
Microsoft account's cloud) come from L{account_defaults}, the one table: the fields
C{flow}, C{senders}, C{messages_per_minute}, C{recipients_per_day},
C{smtp_implicit_tls} and C{authorization_url} take it as an attrs factory (they follow
C{provider} and C{smtp_port}); C{authority}, C{smtp_host} and C{graph_url} come before
C{cloud}, so they default to C{""} ("follow provider and cloud") and
C{__attrs_post_init__} fills them in.  The reader passes only the keys a file names, so
C{AccountConfig(provider="google", ...)} and a C{[[accounts]]} table with
C{provider = "google"} get the same defaults.

The reader (L{xrelay.configfile.read_config}, C{load_config}, C{find_config_path},
C{account_from_table}, C{DEFAULT_CONFIG_PATH}) is in its own module, which imports
this one; this module imports nothing of the reader (the old names still resolve here,
see L{__getattr__}).

This module must not import the reactor or C{twisted.mail}: the twistd plugin and the
C{xrelay} command load configurations before a reactor is chosen.
"""

from __future__ import annotations

import datetime
import importlib
import ipaddress
import os
import socket
from typing import Any, Callable, Iterable

import attrs

from xrelay.addresses import SenderPattern
from xrelay.clouds import CLOUDS, cloud_of
from xrelay.passwords import InvalidPasswordHash, parse_password_hash

#: The reader's names, which lived here once and are L{xrelay.configfile}'s (the
#: reader class L{xrelay.configreader}'s): still
#: found here (README and older embedding programs import C{read_config} from here),
#: looked up on first use without an import statement, so that the values never import
#: their reader (that was a cycle for every type checker and reader of the code).
_READER_NAMES = ("DEFAULT_CONFIG_PATH", "ENVIRONMENT_VARIABLE", "_Reader",
                 "account_from_table", "find_config_path", "load_config", "read_config")


def __getattr__(name: str) -> Any:
    if name == "_Reader":
        return getattr(importlib.import_module("xrelay.configreader"), name)
    if name in _READER_NAMES:
        return getattr(importlib.import_module("xrelay.configfile"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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


class InvalidValue(ValueError):
    """
    A value that breaks a rule of its class, raised while it is built.

    @ivar field: the field, with an index or a sub-field where it helps
        (C{"allow_networks[1]"}, C{"listen[0].starttls"}); the reader prefixes the
        section to name the key.
    @ivar problem: what is wrong and what to write instead, phrased like the reader's
        messages.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


_Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]


def _at_least(minimum: int, maximum: int | None = None) -> _Validator:
    """A whole number (not a boolean) of at least C{minimum}."""
    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidValue(attribute.name, f"must be a whole number, not {value!r}")
        if value < minimum:
            raise InvalidValue(attribute.name, f"must be at least {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise InvalidValue(attribute.name, f"{value} is not a TCP port")
    return check


def _one_of(choices: Iterable[str], problem: Callable[[Any], str] | None = None,
            optional: bool = False) -> _Validator:
    choices = tuple(choices)

    def check(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if optional and value is None:
            return
        if value not in choices:
            raise InvalidValue(attribute.name, problem(value) if problem else
                               f"{value!r} is not one of: {', '.join(choices)}")
    return check


def _https(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """An https URL; C{None} or C{""} (unset, or derived from the provider) pass."""
    if value in (None, ""):
        return
    if not isinstance(value, str) or not value.startswith("https://"):
        raise InvalidValue(attribute.name, f"{value!r} must be an https:// URL; tokens "
                           "are never sent over plain HTTP")


def _boolean(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, bool) and not (value is None and attribute.default is None):
        raise InvalidValue(attribute.name, f"must be true or false, not {value!r}")


def _text(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise InvalidValue(attribute.name, f"must be a non-empty string, not {value!r}")


def _networks(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise InvalidValue(attribute.name, f"must be a tuple of networks, not {value!r}")
    for i, network in enumerate(value):
        if not isinstance(network, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
            raise InvalidValue(f"{attribute.name}[{i}]", f"{network!r} is not a network; "
                               'write ipaddress.ip_network("10.0.0.5/32")')


def _patterns(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, tuple):
        raise InvalidValue(attribute.name, f"must be a tuple of sender patterns, not "
                           f"{value!r}")
    for i, pattern in enumerate(value):
        if not isinstance(pattern, SenderPattern):
            raise InvalidValue(f"{attribute.name}[{i}]", f"{pattern!r} is not a sender "
                               'pattern; write SenderPattern.parse("*@example.com")')


NOT_A_PASSWORD_HASH = ("is not a password hash (was a plaintext password pasted "
                       "here?); run `xrelay hash-password` and paste its output")


def _password_hash(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """
    A hash from C{xrelay hash-password}, or C{""}: no password here (an admin page
    without one, a user whom an embedding program's own checker verified).  A file
    never gets C{""} past the reader.
    """
    if value == "":
        return
    try:
        parse_password_hash(value)
    except (InvalidPasswordHash, TypeError, AttributeError):
        # Never the value in the message: it may be a pasted plaintext password.
        raise InvalidValue(attribute.name, NOT_A_PASSWORD_HASH) from None


def _endpoint(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    problem = endpoint_problem(value)
    if problem:
        raise InvalidValue(attribute.name, problem)


def endpoint_problem(description: Any) -> str | None:
    """Why a server endpoint description does not parse (without listening), or None."""
    from twisted.internet.endpoints import serverFromString

    if not isinstance(description, str):
        return f"must be an endpoint description string, not {description!r}"
    try:
        serverFromString(_NoReactor(), description)
    except Exception as e:  # the parser raises ValueError, KeyError, SSL errors...
        detail = str(e) or type(e).__name__
        return (f"{description!r} is not a valid endpoint description ({detail}); "
                'write e.g. "tcp:2525:interface=127.0.0.1" or "tcp6:25:interface=\\\\:\\\\:1"')
    return None


def _date(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """C{None} or a "YYYY-MM-DD" date."""
    if value is None:
        return
    try:
        ok = isinstance(value, str) and len(value) == 10 and bool(
            datetime.date.fromisoformat(value))
    except ValueError:
        ok = False
    if not ok:
        raise InvalidValue(attribute.name, f"{value!r} is not a date; write "
                           f"{attribute.name} = \"2027-06-30\" (the expiry shown in the "
                           "app registration)")


def _tls_version_problem(value: Any) -> str:
    return f"must be one of {', '.join(map(repr, TLS_VERSIONS))}, not {value!r}"


def _bare_lf_problem(value: Any) -> str:
    return f'must be "trusted" or "never", not {value!r}'


def _mailbox(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str) or "@" not in value:
        raise InvalidValue(attribute.name, f"{value!r} is not a mailbox address; write "
                           'the mailbox xrelay signs in as, e.g. user = "relay@example.com"')


def _optional_address(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if value is not None and (not isinstance(value, str) or "@" not in value):
        raise InvalidValue(attribute.name, f"{value!r} is not an address")


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


def _string(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidValue(attribute.name, f"must be a string, not {value!r}")


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
        if google and self.client_secret_file is None:
            raise InvalidValue("client_secret_file", "Google's token endpoint needs the "
                               "OAuth client secret; write client_secret_file = \"...\"")
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
    setup: SetupConfig = attrs.field(factory=SetupConfig)
    path: str | None = None
    sandbox_dir: str | None = None
    #: Where each account and user comes from: (C{"accounts"} or C{"users"}, name,
    #: file), the admin's file or a managed drop-in (L{xrelay.managed}).
    origins: tuple[tuple[str, str, str], ...] = ()
    #: Warnings found while merging the drop-ins (one ignored for a name the admin's
    #: file defines), shown by L{warnings}.
    notes: tuple[str, ...] = ()

    def origin(self, kind: str, name: str) -> str | None:
        """The file an account or user (C{kind} "accounts" or "users") comes from."""
        for what, named, path in self.origins:
            if what == kind and named == name:
                return path
        return None

    def __attrs_post_init__(self) -> None:
        names = [a.name for a in self.accounts]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise InvalidValue(f"accounts[{i}].name", f"account {name!r} is defined "
                                   "twice")
        default = self.relay.default_account
        if default is not None and default not in names:
            raise InvalidValue("relay.default_account", f"no account is named "
                               f"{default!r}; the accounts are: {', '.join(names) or 'none'}")

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
        for i, account in enumerate(self.accounts):
            carries, why = account.largest_message()
            if carries is not None and carries < self.server.max_message_size:
                found.append(
                    f"{where}: accounts[{i}].graph_large_messages: account "
                    f"{account.name!r} carries at most {carries} bytes, less than "
                    f"server.max_message_size = {self.server.max_message_size} ({why}); "
                    "larger messages routed to it are refused at the end of DATA with "
                    "552 5.3.4")
        found += self.notes
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


def with_accounts(config: Config, accounts: tuple[AccountConfig, ...]) -> Config:
    """The same configuration with other accounts (the sandbox default's)."""
    return attrs.evolve(config, accounts=accounts)
