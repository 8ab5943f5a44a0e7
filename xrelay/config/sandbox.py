"""
The configuration used when none exists: the embedded sandbox default
(L{sandbox_default}), listening on loopback unless the container image says otherwise.

It delivers only into the sandbox's own mailbox folder.  This module must never open
the default to a public network, read a file, or import the reader or the reactor.
"""

from __future__ import annotations

import ipaddress
import os

from xrelay.config.validators import ConfigError, Network
from xrelay.config.values import ListenerConfig, RelayConfig, ServerConfig
from xrelay.config.whole import Config


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

