"""
The factory behind every inbound listener, and the caps on concurrent connections.

One L{ConnectionCounter} and one L{AuthFailures} record are shared by all listeners of
a service, so that the caps hold for the relay as a whole and survive a configuration
reload.  The factory reads its configuration, users and TLS options from the service
at each new connection: a reload changes new connections and leaves live ones alone.
This module must never refuse or close a connection without telling the client why
(421) and logging it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs
from twisted.internet.protocol import Factory

from xrelay.config import Config, ListenerConfig
from xrelay.inbound.protocol import ESMTPServer
from xrelay.policy import Refusal

if TYPE_CHECKING:
    from xrelay.inbound.service import InboundService

__all__ = ["ConnectionCounter", "InboundFactory"]


@attrs.define
class ConnectionCounter:
    """Live connections in total and per client address."""

    total: int = 0
    per_client: dict[str, int] = attrs.field(factory=dict)
    #: Connections on C{haproxy:} listeners whose PROXY header has not come yet: their
    #: client address is unknown, but they still count against C{max_connections}, so
    #: that silent connections cannot crowd the relay out.
    awaiting_header: int = 0

    def full(self, config: Config) -> Refusal | None:
        """Whether one more connection of unknown address would exceed the total cap."""
        if self.total + self.awaiting_header >= config.server.max_connections:
            return Refusal(421, "4.7.0", f"{config.server.hostname} Too many "
                           "connections, try again later")
        return None

    def admit(self, address: str, config: Config) -> Refusal | None:
        """Count the connection in, or say why not (and leave the counts unchanged)."""
        server = config.server
        hostname = server.hostname
        full = self.full(config)
        if full is not None:
            return full
        if self.per_client.get(address, 0) >= server.max_connections_per_client:
            return Refusal(421, "4.7.0", f"{hostname} Too many connections from your "
                           "address, try again later")
        self.total += 1
        self.per_client[address] = self.per_client.get(address, 0) + 1
        return None

    def release(self, address: str) -> None:
        self.total -= 1
        left = self.per_client.get(address, 1) - 1
        if left > 0:
            self.per_client[address] = left
        else:
            self.per_client.pop(address, None)


class InboundFactory(Factory):
    """
    Builds L{ESMTPServer} protocols for one listener.

    @ivar proxied: the listener is behind C{haproxy:}; protocols wait for the PROXY
        header before greeting (the client's address is known only then).
    """

    #: One log line per connection is enough; "Starting factory" twice is noise.
    noisy = False

    protocol = ESMTPServer  # type: ignore[assignment]

    def __init__(self, service: "InboundService", listener: ListenerConfig,
                 proxied: bool = False) -> None:
        self.service = service
        self.listener = listener
        self.proxied = proxied
        #: TLS from the first byte: the listener's own TLS, or an C{ssl:} endpoint.
        self.implicit_tls = listener.implicit_tls or _inner_description(
            listener.endpoint).startswith("ssl:")

    # The service owns everything shared; these read it at connection time.
    @property
    def config(self) -> Config:
        return self.service.config

    @property
    def clock(self) -> Any:
        return self.service.clock

    @property
    def spool(self) -> Any:
        return self.service.spool

    @property
    def delivery(self) -> Any:
        return self.service.delivery

    @property
    def history(self) -> Any:
        return self.service.history

    @property
    def events(self) -> Any:
        return self.service.events

    @property
    def tls_options(self) -> Any:
        """What STARTTLS uses; C{None} where it is not offered (C{starttls = false})."""
        return self.service.starttls_options(self.listener)

    @property
    def checker(self) -> Any:
        return self.service.checker

    @property
    def auth_failures(self) -> Any:
        return self.service.auth_failures

    @property
    def connections(self) -> ConnectionCounter:
        return self.service.connections

    @property
    def live(self) -> set[ESMTPServer]:
        return self.service.live

    def buildProtocol(self, addr: Any) -> ESMTPServer:
        protocol = ESMTPServer(self)
        return protocol

    def logPrefix(self) -> str:
        return f"xrelay-inbound {self.listener.endpoint}"


def _inner_description(description: str) -> str:
    """The endpoint description inside a C{haproxy:} prefix."""
    if description.lower().startswith("haproxy:"):
        return description[len("haproxy:"):]
    return description
