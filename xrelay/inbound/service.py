"""
The inbound service: one listener per C{server.listen} entry, all sharing the caps on
connections and failed logins, and a reload that changes new connections only.

Builds each listener from its endpoint description: plain (with STARTTLS when the
server has a certificate), implicit TLS (C{implicit_tls = true}, or an C{ssl:}
endpoint), IPv6 (C{tcp6:}), and C{haproxy:} (PROXY protocol v1/v2, so that the
client-address rules apply to the real client behind a load balancer).  This module
must never drop live connections on reload, nor listen on anything the configuration
did not name.
"""

from __future__ import annotations

from typing import Any, Callable

import attrs
from twisted.application.service import MultiService
from twisted.cred.checkers import ICredentialsChecker
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IOpenSSLServerConnectionCreator
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer
from zope.interface.verify import verifyObject

from xrelay.config import Config, ListenerConfig, listener_offers_starttls
from xrelay.inbound.acceptlog import AcceptanceLog
from xrelay.inbound.backlog import with_backlog
from xrelay.inbound.credentials import authenticator_for
from xrelay.inbound.factory import ConnectionCounter, InboundFactory
from xrelay.inbound.handler import PolicyHandler
from xrelay.inbound.protocol import ESMTPServer
from xrelay.inbound.tlsprofile import ListenerTLS, listener_tls
from xrelay.devices.collector import NullDevices
from xrelay.history.sink import NullHistory
from xrelay.interfaces import IDelivery, IDeviceEvents, IInboundHandler, IRelayEvents, ISpool
from xrelay.events import guarded
from xrelay.policy import AuthFailures, proxy_trusted
from xrelay.twistedapi import HAProxyProtocolWrapper, HAProxyWrappingFactory, proxy_header_read

__all__ = ["InboundService", "server_tls_options"]

log = Logger()


def server_tls_options(config: Config, listener: ListenerConfig | None = None
                       ) -> ListenerTLS | None:
    """
    TLS options from C{server.tls_cert} (leaf first, then its chain) and
    C{server.tls_key}, at the listener's C{tls_min_version} (see
    L{xrelay.inbound.tlsprofile}); C{None} when the server has no certificate.
    """
    return listener_tls(config, listener)


@implementer(IOpenSSLServerConnectionCreator)
@attrs.frozen
class _CurrentListenerTLS:
    """An implicit-TLS listener's TLS, looked up per connection (so a reload's new
    certificate is used by new connections)."""

    service: "InboundService"
    listener: ListenerConfig

    def serverConnectionForTLS(self, tlsProtocol: Any) -> Any:
        tls = self.service.listener_tls(self.listener)
        if tls is None:
            raise ValueError(f"{self.listener.endpoint}: implicit_tls needs "
                             "server.tls_cert and server.tls_key")
        return tls.serverConnectionForTLS(tlsProtocol)


class _ProxyHeaderWrapper(HAProxyProtocolWrapper):
    """
    Twisted's PROXY wrapper, believed only from C{server.trusted_proxies}, plus a call
    to the SMTP protocol once the header is read: an SMTP client waits for the
    greeting, so the protocol must greet (and apply the per-client caps to the real
    address) as soon as the address is known.

    A connection from any other address is refused before a byte of it is read: a
    PROXY header is a claim about who the client is, and anyone who can reach the port
    could otherwise claim to be a printer in C{relay.allow_networks}.
    """

    _refused = False

    def makeConnection(self, transport: Any) -> None:
        peer = transport.getPeer()
        real = getattr(peer, "host", str(peer))
        config = self.factory.service.config
        if not proxy_trusted(config, real):
            # Refused before the SMTP protocol (or TLS) is even connected.
            self._refused = True
            self.transport = transport
            log.warn("inbound connection from {peer} on {listener} refused: not in "
                     "server.trusted_proxies, so its PROXY header would not be believed",
                     peer=real, listener=self.factory.listener.endpoint)
            transport.write(f"421 4.7.0 {config.server.hostname} Not a trusted proxy; "
                            "connect to a listener without haproxy:\r\n"
                            .encode("ascii", "replace"))
            transport.loseConnection()
            return
        super().makeConnection(transport)

    def connectionLost(self, reason: Any = None) -> None:
        if self._refused:
            return  # the SMTP protocol never started
        super().connectionLost(reason)

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        known = proxy_header_read(self)
        super().dataReceived(data)
        if not known and proxy_header_read(self):
            protocol: Any = self.wrappedProtocol
            while not isinstance(protocol, ESMTPServer) and hasattr(
                protocol, "wrappedProtocol"
            ):
                protocol = protocol.wrappedProtocol
            if isinstance(protocol, ESMTPServer):
                protocol.proxy_header_received()


class _ProxyHeaderWrappingFactory(HAProxyWrappingFactory):
    # Twisted types the wrapper's factory as WrappingFactory[Self], so no subclass of a
    # wrapper fits its factory's protocol attribute (Twisted's own policies.py ignores
    # this too).
    protocol = _ProxyHeaderWrapper  # type: ignore[assignment]

    def __init__(self, wrapped: Any, service: "InboundService",
                 listener: ListenerConfig) -> None:
        super().__init__(wrapped)
        self.service = service
        self.listener = listener


class InboundService(MultiService):
    """
    Listens on every C{config.server.listen} entry and hands accepted messages to the
    spool and the delivery engine.

    @param run_blocking: runs a blocking callable, returning a Deferred (the password
        check); the reactor's thread pool by default.
    @param clock: for idle timeouts and the AUTH back-off; the reactor by default (tests
        pass a L{task.Clock} while the sockets stay real).
    @param credentials_checker: who may SMTP AUTH (any C{twisted.cred} checker for
        C{IUsernamePassword}); the C{[[users]]} table by default.  It is kept across
        reloads.
    @param events: the relay's L{IRelayEvents} sink (connections, failed AUTH, accepted
        messages); nothing is counted by default.
    @param inbound_handler: what each session may do (an L{IInboundHandler}); the
        relay's policy (L{PolicyHandler}) by default.  Kept across reloads: it reads the
        configuration from the session it is asked about.
    """

    def __init__(self, config: Config, spool: ISpool, delivery: IDelivery,
                 reactor: Any = None,
                 run_blocking: Callable[..., "Deferred[Any]"] | None = None,
                 clock: Any = None,
                 credentials_checker: ICredentialsChecker | None = None,
                 history: Any = None, events: IRelayEvents | None = None,
                 inbound_handler: IInboundHandler | None = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        #: The "queued as" lines, a summary instead above 10 a second.
        self.acceptance_log = AcceptanceLog(self.clock)
        self.spool = spool
        self.delivery = delivery
        #: Where accepted messages are recorded for the message trace (IMessageHistory).
        self.history = history if history is not None else NullHistory()
        #: Where connections, failed AUTH and accepted messages are counted.
        self.events = guarded(events)
        #: Where each client's refusals, messages, AUTH and TLS are kept (the device
        #: inventory; makeService sets the relay's collector when it is on).
        self.devices: IDeviceEvents = NullDevices()
        self.connections = ConnectionCounter()
        self.auth_failures = AuthFailures()
        self.live: set[ESMTPServer] = set()
        self.ports: list[IListeningPort] = []
        #: endpoint description -> its port, once bound (for the health check).
        self.bound: dict[str, IListeningPort] = {}
        self._run_blocking = run_blocking or (
            lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self._listening: list[Deferred[IListeningPort]] = []
        #: (endpoint, failure) of each listener that could not be opened: the relay
        #: refuses to run without all of them (L{xrelay.service.RelayService}).
        self.listen_failures: list[tuple[str, Failure]] = []
        self.config = config
        self.tls_options = server_tls_options(config)
        self._listener_tls = self._tls_by_listener(config)
        self._credentials_checker = credentials_checker
        self.handler = inbound_handler if inbound_handler is not None else PolicyHandler()
        # Loudly here, at wiring, rather than as a 451 on the first MAIL.
        verifyObject(IInboundHandler, self.handler)
        self.checker = authenticator_for(config.users, self._run_blocking,
                                         credentials_checker)

    def reconfigure(self, config: Config) -> None:
        """
        Use a new configuration (users, networks, accounts, limits, certificate) for
        connections made from now on; live ones keep the one they started with.
        Listeners are not changed: a different C{server.listen} needs a restart.
        """
        if [listener.endpoint for listener in config.server.listen] != [
            listener.endpoint for listener in self.config.server.listen
        ]:
            log.warn("inbound: server.listen changed; restart xrelay to listen on the "
                     "new endpoints")
        tls_options = server_tls_options(config)
        by_listener = self._tls_by_listener(config)
        self.config = config
        self.tls_options = tls_options
        self._listener_tls = by_listener
        self.checker = authenticator_for(config.users, self._run_blocking,
                                         self._credentials_checker)
        log.info("inbound: configuration reloaded ({users} users, {networks} networks)",
                 users=len(config.users), networks=len(config.relay.allow_networks))

    def _tls_by_listener(self, config: Config) -> dict[ListenerConfig, ListenerTLS | None]:
        return {listener: listener_tls(config, listener)
                for listener in config.server.listen}

    def listener_tls(self, listener: ListenerConfig) -> ListenerTLS | None:
        """The TLS of one listener (its own C{tls_min_version}) under the current
        configuration."""
        if listener not in self._listener_tls:
            self._listener_tls[listener] = listener_tls(self.config, listener)
        return self._listener_tls[listener]

    def starttls_options(self, listener: ListenerConfig) -> ListenerTLS | None:
        """What STARTTLS uses on this listener; C{None} when it is not offered there."""
        if not listener_offers_starttls(self.config.server, listener):
            return None
        return self.listener_tls(listener)

    def _factory_for(self, listener: ListenerConfig) -> tuple[Any, Any]:
        description = listener.endpoint
        proxied = description.lower().startswith("haproxy:")
        if proxied:
            description = description[len("haproxy:"):]
        endpoint = serverFromString(self.reactor, with_backlog(
            description, self.config.server.max_connections))
        factory: Any = InboundFactory(self, listener, ESMTPServer, proxied=proxied)
        if listener.implicit_tls:
            if self.tls_options is None:
                raise ValueError(f"{listener.endpoint}: implicit_tls needs "
                                 "server.tls_cert and server.tls_key")
            factory = TLSMemoryBIOFactory(_CurrentListenerTLS(self, listener), False,
                                          factory)
        if proxied:
            if not self.config.server.trusted_proxies:
                raise ValueError(f"{listener.endpoint}: a haproxy: listener needs "
                                 "server.trusted_proxies (the load balancers' addresses)")
            factory = _ProxyHeaderWrappingFactory(factory, self, listener)
        return endpoint, factory

    def startService(self) -> None:
        super().startService()
        for listener in self.config.server.listen:
            endpoint, factory = self._factory_for(listener)
            d = endpoint.listen(factory)

            def listening(port: IListeningPort, listener: ListenerConfig = listener
                          ) -> IListeningPort:
                self.ports.append(port)
                self.bound[listener.endpoint] = port
                log.info("inbound: listening on {endpoint} ({address})",
                         endpoint=listener.endpoint, address=port.getHost())
                return port

            def failed(failure: Any, listener: ListenerConfig = listener) -> Any:
                # Reported by whoever waits on when_listening (the relay: one line
                # with the cause and the fix, then it exits), never as a traceback.
                self.listen_failures.append((listener.endpoint, failure))
                return failure

            d.addCallbacks(listening, failed)
            self._listening.append(d)

    def when_listening(self) -> "Deferred[list[IListeningPort]]":
        """Fires with the listening ports (in C{server.listen} order) once all listen."""

        def observe(d: "Deferred[IListeningPort]") -> "Deferred[IListeningPort]":
            out: Deferred[IListeningPort] = Deferred()

            def forward(result: Any) -> Any:
                if isinstance(result, Failure):
                    out.errback(result)
                    return None  # already logged by startService
                out.callback(result)
                return result

            d.addBoth(forward)
            return out

        return defer.gatherResults([observe(d) for d in self._listening],
                                   consumeErrors=True)

    def stopService(self) -> "Deferred[None]":
        """
        Stop listening, tell idle clients 421 at once, give transactions in flight up
        to C{server.shutdown_timeout} seconds, then cut what is left.
        """
        super().stopService()
        stopping: list[Deferred[Any]] = [defer.maybeDeferred(port.stopListening)
                                         for port in self.ports]
        self.ports = []
        self.bound = {}
        self._listening = []
        for protocol in list(self.live):
            protocol.shutdown()
        done: Deferred[None] = Deferred()

        def check() -> None:
            if not self.live or done.called:
                if not done.called:
                    done.callback(None)
                return
            self.reactor.callLater(0.05, check)

        def give_up() -> None:
            for protocol in list(self.live):
                log.warn("inbound: cutting connection from {client} at shutdown",
                         client=protocol.client_address)
                protocol.transport.abortConnection()
            if not done.called:
                done.callback(None)

        timer = self.reactor.callLater(self.config.server.shutdown_timeout, give_up)
        done.addBoth(lambda r: timer.cancel() if timer.active() else None)
        check()
        # The summary of messages without a line of their own, before the process ends.
        done.addCallback(lambda _: self.acceptance_log.flush())
        return defer.gatherResults(stopping + [done]).addCallback(lambda _: None)
