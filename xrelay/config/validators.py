"""
The rules a single configuration value must meet: the attrs validators of the value
classes, the errors they raise, and the small checks the readers share.

Every validator raises L{InvalidValue} naming the field and the fix; the reader turns it
into the one-line L{ConfigError} naming the key in the file.  This module is the bottom of
L{xrelay.config}: it imports none of the value classes, must never import the reader, the
reactor or C{twisted.mail} (an endpoint description is parsed against a stand-in, never
listened on), and never touches the file system.
"""

from __future__ import annotations

import datetime
import ipaddress
from typing import Any, Callable, Iterable

import attrs

from xrelay.addresses import SenderPattern
from xrelay.passwords import InvalidPasswordHash, parse_password_hash

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

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



def _string(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    if not isinstance(value, str):
        raise InvalidValue(attribute.name, f"must be a string, not {value!r}")




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
