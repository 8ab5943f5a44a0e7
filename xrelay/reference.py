"""
The configuration reference, generated from the configuration schema itself.

C{python -m xrelay.reference > docs/configuration.md} writes every key of
C{xrelay.toml} with its type, its default and its meaning, taken from the attrs classes
in L{xrelay.config} (each field's C{metadata["doc"]}, and C{metadata["default"]} where
the reader's default is not the class's).  The reference is never written by hand, so
it cannot drift from the code: C{tests/test_reference.py} fails when a key exists in one
and not the other.  This module must never read a configuration file.
"""

from __future__ import annotations

import ipaddress
import sys
from typing import Any, Iterator

import attrs

from xrelay.addresses import SenderPattern
from xrelay.cli import _toml
from xrelay.configfile import DEFAULT_CONFIG_PATH
from xrelay.config import (
    AccountConfig,
    AdminConfig,
    DeliveryConfig,
    ListenerConfig,
    RelayConfig,
    ServerConfig,
    SetupConfig,
    UserConfig,
)

REGENERATE = "python -m xrelay.reference > docs/configuration.md"


@attrs.frozen
class Section:
    """One table of the file, as the reader knows it."""

    #: The key prefix the reader uses in its messages (C{server}, C{server.listen}).
    name: str
    #: How the section is written in TOML.
    heading: str
    schema: type
    about: str


SECTIONS = (
    Section("server", "[server]", ServerConfig,
            "Listeners, TLS, limits and the state folder."),
    Section("server.listen", "server.listen entries", ListenerConfig,
            "Each entry of `server.listen` is an endpoint description string, or a "
            "table with these keys: `listen = [\"tcp:25\", { endpoint = \"tcp:465\", "
            "implicit_tls = true }]`."),
    Section("relay", "[relay]", RelayConfig,
            "Who may relay without logging in, and as which senders."),
    Section("users", "[[users]]", UserConfig,
            "Local SMTP AUTH users (devices that log in); one table each."),
    Section("accounts", "[[accounts]]", AccountConfig,
            "Upstream mailboxes xrelay signs in as and delivers through. A file may have "
            "none yet (the relay starts, refuses mail, and warns) so that the admin "
            "page's wizard or `xrelay setup` can add the first as a managed drop-in. "
            "Every path is relative to the configuration file's folder."),
    Section("delivery", "[delivery]", DeliveryConfig, "Retries and bounces."),
    Section("admin", "[admin]", AdminConfig,
            "The admin page (status, queue, browser sign-in) and `/metrics`; off when "
            "the section is absent."),
    Section("setup", "[setup]", SetupConfig,
            "Where `xrelay setup` and the admin page's \"Add an account\" wizard sign the "
            "admin in to create the app registration; every key is optional."),
)

_TYPES = {
    "str": "string",
    "str | None": "string",
    "int": "integer",
    "bool": "boolean",
    "bool | None": "boolean",
    "tuple[ListenerConfig, ...]": "list of endpoints or tables",
    "tuple[Network, ...]": "list of networks (CIDR)",
    "tuple[SenderPattern, ...]": "list of sender patterns",
}


def keys(section: Section) -> list[str]:
    """The keys of one section, in the schema's order."""
    return [field.name for field in attrs.fields(section.schema)]


def type_of(field: attrs.Attribute) -> str:
    text = field.type if isinstance(field.type, str) else getattr(
        field.type, "__name__", str(field.type))
    return _TYPES.get(text, text)


def default_of(field: attrs.Attribute) -> str:
    """The default as the reader applies it, in TOML, or what the reader does instead."""
    if "default" in field.metadata:
        return str(field.metadata["default"])
    default: Any = field.default
    if default is attrs.NOTHING:
        return "required"
    # attrs' stubs declare Factory an overloaded function; at run time it is the class.
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()
    if default is None:
        return "unset"
    return f"`{_toml(_plain(default))}`"


def _plain(value: Any) -> Any:
    """A configuration value as the TOML a person would write for it."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, ListenerConfig):
        if not value.implicit_tls and not value.pass_through:
            return value.endpoint
        return {k: v for k, v in attrs.asdict(value).items() if v}
    if isinstance(value, SenderPattern):
        return value.text
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    return value


def doc_of(field: attrs.Attribute) -> str:
    doc = field.metadata.get("doc")
    if not doc:
        raise ValueError(f"{field.name} has no metadata['doc']: say what it means, its "
                         "unit, and when to change it")
    return str(doc)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render() -> Iterator[str]:
    yield "# Configuration reference"
    yield ""
    yield (f"<!-- Generated from xrelay/config/ by `{REGENERATE}`; "
           "do not edit by hand. -->")
    yield ""
    yield ("xrelay reads one TOML file: `--config FILE`, else `$XRELAY_CONFIG`, else "
           f"`{DEFAULT_CONFIG_PATH}`; with none of them it runs the sandbox default. "
           "`xrelay check-config` validates a file and names the key and the fix for "
           "every mistake. Relative paths start at the configuration file's folder. "
           "Secrets never go in the file itself: passwords as hashes (`xrelay "
           "hash-password`), client secrets, keys and refresh tokens in files of their "
           "own, readable only by the service user.")
    yield ""
    yield ("**Managed drop-ins.** What xrelay itself sets up (the admin page's \"Add an "
           "account\" wizard, `xrelay setup microsoft`, the devices page) is written "
           "beside your file, never into it: `state_dir/managed/accounts/NAME.toml` (one "
           "`[[accounts]]` table each) and `state_dir/managed/devices.toml` (extra "
           "`[relay] allow_networks` entries, never a public range, and `[[users]]`). "
           "They are read after your file with the same keys as above; their accounts "
           "and users are added and their networks joined. Your file wins: a drop-in's "
           "account or user of a name your file defines is ignored with a warning, and "
           "xrelay refuses to write one. Each write is validated as a whole "
           "configuration first (a bad one is refused and the running configuration "
           "kept), written atomically with mode 0600, logged with who made it in "
           "`state_dir/managed/changes.log`, and reloaded. `xrelay check-config` and "
           "`xrelay accounts` show which file each account comes from; to take one over "
           "by hand, copy its table into your file and delete the drop-in.")
    yield ""
    yield "| section | what it holds |"
    yield "|---|---|"
    for section in SECTIONS:
        anchor = section.name.replace(".", "")
        yield f"| [`{section.heading}`](#{anchor}) | {_cell(section.about)} |"
    for section in SECTIONS:
        yield ""
        yield f'<a id="{section.name.replace(".", "")}"></a>'
        yield f"## `{section.heading}`"
        yield ""
        yield section.about
        yield ""
        yield "| key | type | default | meaning |"
        yield "|---|---|---|---|"
        for field in attrs.fields(section.schema):
            yield (f"| `{field.name}` | {type_of(field)} | {_cell(default_of(field))} | "
                   f"{_cell(doc_of(field))} |")


def main() -> int:
    sys.stdout.write("\n".join(render()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
