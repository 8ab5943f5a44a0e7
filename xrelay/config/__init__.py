"""
The configuration's values: attrs classes that check themselves, and their only defaults.

A L{Config} is valid however it was made: read from C{xrelay.toml} by
L{xrelay.configfile} or built in Python by a test or an embedding program.  Every rule
about the values is a validator and raises L{InvalidValue}, a C{ValueError} naming the
field (C{"listen[0].starttls"}); the reader turns it into the one-line L{ConfigError}
naming the key in the file.  What only a file can get wrong (unknown keys, TOML types)
and what touches the file system (secret files readable, the certificate and its key,
expiry) is the reader's and L{xrelay.checks}'s: a value built in Python need not point at
real files.

The package, one job per module (import the names from here; the modules are its
inside):

  - L{xrelay.config.validators}: the rules one value meets, L{InvalidValue} and
    L{ConfigError};
  - L{xrelay.config.values}: the sections (listeners, server, relay, users, delivery,
    admin, setup);
  - L{xrelay.config.accounts}: L{AccountConfig} and its provider table,
    L{account_defaults} (the fields whose defaults follow C{provider} and C{cloud});
  - L{xrelay.config.whole}: L{Config}, the rules between its sections;
  - L{xrelay.config.warnings}: the settings allowed but probably not meant;
  - L{xrelay.config.sandbox}: the sandbox default, L{sandbox_default}.

The reader (L{xrelay.configfile.read_config}, C{load_config}, C{find_config_path},
C{account_from_table}, C{DEFAULT_CONFIG_PATH}) is in its own module, which imports
this package; this package imports nothing of the reader (the old names still resolve
here, see L{__getattr__}).

This package must not import the reactor or C{twisted.mail}: the twistd plugin and the
C{xrelay} command load configurations before a reactor is chosen.
"""

from __future__ import annotations

import importlib
from typing import Any

from xrelay.config.validators import (
    ConfigError,
    InvalidValue,
    NOT_A_PASSWORD_HASH,
    Network,
    TLS_VERSIONS,
    _is_public as _is_public,  # for xrelay.dropins and xrelay.managed
    endpoint_problem,
)
from xrelay.config.values import (
    ANY_SENDER,
    AdminConfig,
    DeliveryConfig,
    ListenerConfig,
    RelayConfig,
    SETUP_CLIENT_ID,
    ServerConfig,
    SetupConfig,
    UserConfig,
    listener_offers_starttls,
    listener_tls_min_version,
)
from xrelay.config.accounts import (
    AccountConfig,
    DEFAULT_PROVIDER,
    FLOWS,
    FROM_PROVIDER,
    GOOGLE_AUTHORITY,
    GOOGLE_AUTHORIZATION_URL,
    GRAPH_HEADER_ROOM,
    GRAPH_LARGE_MESSAGES,
    GRAPH_REQUEST_BYTES,
    GRAPH_SINGLE_REQUEST_MESSAGE,
    GRAPH_UPLOAD_SESSION_MESSAGE,
    GRAPH_URL,
    GRAPH_WITHOUT_UPLOAD_SESSIONS,
    MICROSOFT_AUTHORITY,
    PROVIDERS,
    PROVIDER_FLOWS,
    SMTP_HOSTS,
    TRANSPORTS,
    account_defaults,
)
from xrelay.config.whole import (
    Config,
    with_accounts,
)
from xrelay.config.warnings import (
    legacy_tls_warnings,
    plain_http_off_loopback,
)
from xrelay.config.sandbox import (
    SANDBOX_INTERFACE_VARIABLE,
    SANDBOX_PORT_VARIABLE,
    sandbox_default,
)

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


__all__ = [
    "ANY_SENDER",
    "AccountConfig",
    "AdminConfig",
    "Config",
    "ConfigError",
    "DEFAULT_PROVIDER",
    "DeliveryConfig",
    "FLOWS",
    "FROM_PROVIDER",
    "GOOGLE_AUTHORITY",
    "GOOGLE_AUTHORIZATION_URL",
    "GRAPH_HEADER_ROOM",
    "GRAPH_LARGE_MESSAGES",
    "GRAPH_REQUEST_BYTES",
    "GRAPH_SINGLE_REQUEST_MESSAGE",
    "GRAPH_UPLOAD_SESSION_MESSAGE",
    "GRAPH_URL",
    "GRAPH_WITHOUT_UPLOAD_SESSIONS",
    "InvalidValue",
    "ListenerConfig",
    "MICROSOFT_AUTHORITY",
    "NOT_A_PASSWORD_HASH",
    "Network",
    "PROVIDERS",
    "PROVIDER_FLOWS",
    "RelayConfig",
    "SANDBOX_INTERFACE_VARIABLE",
    "SANDBOX_PORT_VARIABLE",
    "SETUP_CLIENT_ID",
    "SMTP_HOSTS",
    "ServerConfig",
    "SetupConfig",
    "TLS_VERSIONS",
    "TRANSPORTS",
    "UserConfig",
    "account_defaults",
    "endpoint_problem",
    "legacy_tls_warnings",
    "listener_offers_starttls",
    "listener_tls_min_version",
    "plain_http_off_loopback",
    "sandbox_default",
    "with_accounts",
]
