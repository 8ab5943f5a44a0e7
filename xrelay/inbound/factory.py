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

from typing import Any, Callable, Protocol

import attrs
from twisted.internet.protocol import Factory

from xrelay.config import Config, ListenerConfig
from xrelay.inbound.acceptlog import AcceptanceLog
from xrelay.policy import client_in_networks, client_network
from xrelay.records import Refusal

__all__ = ["Admitted", "ConnectionCounter", "InboundFactory", "ListenerHost"]


class ListenerHost(Protocol):
    """
    What a listener's factory reads from the service that owns every listener
    (L{xrelay.inbound.service.InboundService}, which builds the factories): named here
    so that the factory does not import the service above it.
    """

    config: Config
    clock: Any
    spool: Any
    delivery: Any
    history: Any
    events: Any
    checker: Any
    handler: Any
    auth_failures: Any
    connections: "ConnectionCounter"
    live: set[Any]
    acceptance_log: "AcceptanceLog"
    devices: Any

    def starttls_options(self, listener: ListenerConfig) -> Any: ...


@attrs.frozen
class Admitted:
    """A connection counted in; C{probation}: in the authenticated sessions' reserve,
    so it must authenticate within L{xrelay.inbound.protocol.AUTH_RESERVE_SECONDS}."""

    probation: bool = False


@attrs.define
class ConnectionCounter:
    """
    Live connections in total, per client address and per client network, with the
    shares that keep one source from taking every slot:
     - connections still waiting for their PROXY header (their address is unknown) may
       hold at most L{header_share} slots;
     - clients outside C{relay.allow_networks} may not take the last
       C{server.reserved_connections} slots, which are the printers';
     - of the slots left to them, the last C{server.reserved_auth_connections} are for
       sessions that authenticate (devices sending from outside the printers'
       networks, the port-587 case).  Whether a client will authenticate is not known
       when it connects, so a client taking one of them is on probation: it must
       authenticate within C{xrelay.inbound.protocol.AUTH_RESERVE_SECONDS} or it is
       closed, and each network may have one client on probation at a time, so that
       a few networks holding the shared slots cannot also hold the reserve;
     - one /24 (IPv4) or /64 (IPv6) may hold C{server.max_connections_per_network}.
    """

    total: int = 0
    per_client: dict[str, int] = attrs.field(factory=dict)
    per_network: dict[str, int] = attrs.field(factory=dict)
    #: Connections on C{haproxy:} listeners whose PROXY header has not come yet: they
    #: count against C{max_connections}, within their small share.
    awaiting_header: int = 0
    #: Connections in the authenticated sessions' reserve that have not authenticated
    #: yet, per client network.
    probation: dict[str, int] = attrs.field(factory=dict)

    @staticmethod
    def header_share(config: Config) -> int:
        """Slots that connections without their PROXY header yet may hold together."""
        return max(1, config.server.max_connections // 10)

    def full(self, config: Config) -> Refusal | None:
        """Whether one more connection of unknown address would exceed the total cap."""
        if self.total + self.awaiting_header >= config.server.max_connections:
            return Refusal(421, "4.7.0", f"{config.server.hostname} Too many "
                           "connections, try again later")
        return None

    def await_header(self, config: Config) -> Refusal | None:
        """Count in a connection that has not sent its PROXY header, or say why not."""
        full = self.full(config)
        if full is not None:
            return full
        if self.awaiting_header >= self.header_share(config):
            return Refusal(421, "4.7.0", f"{config.server.hostname} Too many "
                           "connections without a PROXY header, try again later")
        self.awaiting_header += 1
        return None

    @staticmethod
    def reserves(config: Config) -> tuple[int, int]:
        """The slots kept for C{relay.allow_networks}, and for authenticated sessions."""
        server = config.server
        networks = min(server.reserved_connections, server.max_connections // 2)
        sessions = min(server.reserved_auth_connections,
                       (server.max_connections - networks) // 2)
        return networks, sessions

    def admit(self, address: str, config: Config) -> Refusal | Admitted:
        """Count the connection in, or say why not (and leave the counts unchanged)."""
        server = config.server
        hostname = server.hostname
        full = self.full(config)
        if full is not None:
            return full
        busy = Refusal(421, "4.7.0", f"{hostname} Too many connections, try again later")
        for_networks, for_sessions = self.reserves(config)
        network = client_network(address)
        in_use = self.total + self.awaiting_header
        probation = False
        if (for_networks or for_sessions) and not client_in_networks(config, address):
            if in_use >= server.max_connections - for_networks:
                return busy
            if in_use >= server.max_connections - for_networks - for_sessions:
                if self.probation.get(network, 0):
                    return busy
                probation = True
        if self.per_client.get(address, 0) >= server.max_connections_per_client:
            return Refusal(421, "4.7.0", f"{hostname} Too many connections from your "
                           "address, try again later")
        if self.per_network.get(network, 0) >= max(server.max_connections_per_network,
                                                   server.max_connections_per_client):
            return Refusal(421, "4.7.0", f"{hostname} Too many connections from your "
                           "network, try again later")
        self.total += 1
        self.per_client[address] = self.per_client.get(address, 0) + 1
        self.per_network[network] = self.per_network.get(network, 0) + 1
        if probation:
            self.probation[network] = self.probation.get(network, 0) + 1
        return Admitted(probation)

    def end_probation(self, address: str) -> None:
        """A connection admitted on probation authenticated, or went away."""
        self._decrement(self.probation, client_network(address))

    def release(self, address: str) -> None:
        self.total -= 1
        for counts, key in ((self.per_client, address),
                            (self.per_network, client_network(address))):
            self._decrement(counts, key)

    @staticmethod
    def _decrement(counts: dict[str, int], key: str) -> None:
        left = counts.get(key, 1) - 1
        if left > 0:
            counts[key] = left
        else:
            counts.pop(key, None)


class InboundFactory(Factory):
    """
    Builds L{ESMTPServer} protocols for one listener.

    @ivar proxied: the listener is behind C{haproxy:}; protocols wait for the PROXY
        header before greeting (the client's address is known only then).
    """

    #: One log line per connection is enough; "Starting factory" twice is noise.
    noisy = False

    def __init__(self, service: ListenerHost, listener: ListenerConfig,
                 connection: Callable[["InboundFactory"], Any], proxied: bool = False
                 ) -> None:
        """
        @param connection: makes the protocol of one connection from this factory
            (L{xrelay.inbound.protocol.ESMTPServer}: the service, which knows both,
            passes it; this module stays below the protocol it serves).
        """
        self.service = service
        self.connection = connection
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
    def devices(self) -> Any:
        """The device inventory's collector (L{xrelay.devices.DeviceCollector})."""
        return self.service.devices

    @property
    def tls_options(self) -> Any:
        """What STARTTLS uses; C{None} where it is not offered (C{starttls = false})."""
        return self.service.starttls_options(self.listener)

    @property
    def checker(self) -> Any:
        return self.service.checker

    @property
    def handler(self) -> Any:
        """The inbound handler (L{xrelay.interfaces.IInboundHandler}): what the
        session may do."""
        return self.service.handler

    @property
    def auth_failures(self) -> Any:
        return self.service.auth_failures

    @property
    def connections(self) -> ConnectionCounter:
        return self.service.connections

    @property
    def live(self) -> set[Any]:
        return self.service.live

    def buildProtocol(self, addr: Any) -> Any:
        return self.connection(self)

    def logPrefix(self) -> str:
        return f"xrelay-inbound {self.listener.endpoint}"


def _inner_description(description: str) -> str:
    """The endpoint description inside a C{haproxy:} prefix."""
    if description.lower().startswith("haproxy:"):
        return description[len("haproxy:"):]
    return description
