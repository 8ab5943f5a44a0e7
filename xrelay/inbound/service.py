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

from twisted.application.service import MultiService
from twisted.internet import defer
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort
from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.tls import TLSMemoryBIOFactory

from xrelay.config import Config, ListenerConfig
from xrelay.inbound.auth import PasswordChecker
from xrelay.inbound.factory import ConnectionCounter, InboundFactory
from xrelay.inbound.protocol import ESMTPServer
from xrelay.interfaces import IDelivery, ISpool
from xrelay.policy import AuthFailures, proxy_trusted

__all__ = ["InboundService", "server_tls_options"]

log = Logger()


def server_tls_options(config: Config) -> CertificateOptions | None:
    """
    TLS options from C{server.tls_cert} (leaf first, then its chain) and
    C{server.tls_key}; C{None} when the server has no certificate.  TLS 1.2 at least.
    """
    if config.server.tls_cert is None or config.server.tls_key is None:
        return None
    with open(config.server.tls_cert, "rb") as f:
        certificates = x509.load_pem_x509_certificates(f.read())
    with open(config.server.tls_key, "rb") as f:
        key = load_pem_private_key(f.read(), password=None)
    return CertificateOptions(
        privateKey=key,
        certificate=certificates[0],
        extraCertChain=certificates[1:],
        raiseMinimumTo=TLSVersion.TLSv1_2,
    )


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
        known = self._proxyInfo is not None
        super().dataReceived(data)
        if not known and self._proxyInfo is not None:
            protocol: Any = self.wrappedProtocol
            while not isinstance(protocol, ESMTPServer) and hasattr(
                protocol, "wrappedProtocol"
            ):
                protocol = protocol.wrappedProtocol
            if isinstance(protocol, ESMTPServer):
                protocol.proxy_header_received()


class _ProxyHeaderWrappingFactory(HAProxyWrappingFactory):
    protocol = _ProxyHeaderWrapper

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
    """

    def __init__(self, config: Config, spool: ISpool, delivery: IDelivery,
                 reactor: Any = None,
                 run_blocking: Callable[..., "Deferred[Any]"] | None = None,
                 clock: Any = None) -> None:
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.reactor = reactor
        self.clock = clock if clock is not None else reactor
        self.spool = spool
        self.delivery = delivery
        self.connections = ConnectionCounter()
        self.auth_failures = AuthFailures()
        self.live: set[ESMTPServer] = set()
        self.ports: list[IListeningPort] = []
        self._run_blocking = run_blocking or (
            lambda f, *a: deferToThreadPool(reactor, reactor.getThreadPool(), f, *a))
        self._listening: list[Deferred[IListeningPort]] = []
        self.config = config
        self.tls_options = server_tls_options(config)
        self.checker = PasswordChecker(config.users, self._run_blocking)

    def reconfigure(self, config: Config) -> None:
        """
        Use a new configuration (users, networks, accounts, limits, certificate) for
        connections made from now on; live ones keep the one they started with.
        Listeners are not changed: a different C{server.listen} needs a restart.
        """
        if [l.endpoint for l in config.server.listen] != [
            l.endpoint for l in self.config.server.listen
        ]:
            log.warn("inbound: server.listen changed; restart xrelay to listen on the "
                     "new endpoints")
        tls_options = server_tls_options(config)
        self.config = config
        self.tls_options = tls_options
        self.checker = PasswordChecker(config.users, self._run_blocking)
        log.info("inbound: configuration reloaded ({users} users, {networks} networks)",
                 users=len(config.users), networks=len(config.relay.allow_networks))

    def _factory_for(self, listener: ListenerConfig) -> tuple[Any, Any]:
        description = listener.endpoint
        proxied = description.lower().startswith("haproxy:")
        if proxied:
            description = description[len("haproxy:"):]
        endpoint = serverFromString(self.reactor, description)
        factory: Any = InboundFactory(self, listener, proxied=proxied)
        if listener.implicit_tls:
            if self.tls_options is None:
                raise ValueError(f"{listener.endpoint}: implicit_tls needs "
                                 "server.tls_cert and server.tls_key")
            factory = TLSMemoryBIOFactory(self.tls_options, False, factory)
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
                log.info("inbound: listening on {endpoint} ({address})",
                         endpoint=listener.endpoint, address=port.getHost())
                return port

            def failed(failure: Any, listener: ListenerConfig = listener) -> Any:
                log.failure("inbound: cannot listen on {endpoint}", failure,
                            endpoint=listener.endpoint)
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
        stopping = [defer.maybeDeferred(port.stopListening) for port in self.ports]
        self.ports = []
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
        return defer.gatherResults(stopping + [done]).addCallback(lambda _: None)
