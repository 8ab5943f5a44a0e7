"""
L{AdminService}: the admin page and C{/metrics} on C{[admin] listen}.

It owns the relay's metrics (a registry of its own, fed by an observer of the stages'
log events, with queue and token gauges read at scrape time) and serves them with the
pages.  It must never listen anywhere but the configured endpoint (loopback by
default), and it serves nothing but the sign-in form until the password is given.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger, globalLogPublisher
from twisted.web.server import Site

from xrelay.admin.web import AdminSite
from xrelay.config import Config
from xrelay.operations.events import EventObserver
from xrelay.operations.metrics import RelayMetrics

__all__ = ["AdminService"]

log = Logger(namespace="xrelay.admin")


class _QuietSite(Site):
    """The admin site without twistd's access log lines (its own events suffice)."""

    def log(self, request: Any) -> None:
        pass


class AdminService(Service):
    """
    @param config: the configuration; C{config.admin} must be set.
    @param relay: the relay whose state the pages show (C{config}, C{spool},
        C{delivery}, C{tokens}); its C{config} is read on every request, so a reload
        takes effect at once.
    @param reactor: the reactor; the global one by default.
    @param publisher: where the stages' log events are observed (for tests).

    @ivar port: the listening port once started (C{port.getHost().port}).
    @ivar metrics: the relay's L{RelayMetrics}.
    """

    name = "admin"

    def __init__(self, config: Config, relay: Any, reactor: Any = None,
                 publisher: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert config.admin is not None, "AdminService needs an [admin] section"
        self.config = config
        self.relay = relay
        self.reactor = reactor
        self.publisher = publisher if publisher is not None else globalLogPublisher
        self.metrics = RelayMetrics()
        self.metrics.watch_queue(relay.spool)
        self.metrics.watch_tokens(lambda: relay.tokens.status().values())
        self.metrics.watch_accounts(lambda: relay.delivery.status().accounts.values())
        self.metrics.watch_expiries(lambda: relay.tokens.expiries())
        self.observer = EventObserver(self.metrics)
        self.site = AdminSite(relay, self.metrics, reactor)
        self.port: Any = None

    def startService(self) -> defer.Deferred[None]:
        Service.startService(self)
        self.publisher.addObserver(self.observer)
        # The ignores below: makeService builds this service only when config.admin is set.
        endpoint = serverFromString(self.reactor, self.config.admin.listen)  # type: ignore[union-attr]
        factory = _QuietSite(self.site)
        d = endpoint.listen(factory)

        def listening(port: Any) -> None:
            self.port = port
            log.info("admin page and /metrics on {listen}",
                     listen=self.config.admin.listen)  # type: ignore[union-attr]

        def failed(failure: Any) -> None:
            self.listen_failure = failure  # the relay refuses to run without it
            log.failure("admin page cannot listen on {listen}", failure=failure,
                        listen=self.config.admin.listen)  # type: ignore[union-attr]
        return d.addCallbacks(listening, failed)

    def stopService(self) -> defer.Deferred[None]:
        Service.stopService(self)
        self.publisher.removeObserver(self.observer)
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)
