"""
L{AdminService}: the admin page and C{/metrics} on C{[admin] listen}.

It serves the relay's metrics (C{relay.metrics}, which C{makeService} makes whether or
not the admin page is on, and the stages feed directly) with the pages.  It must never listen anywhere but the configured endpoint (loopback by
default), and it serves nothing but the sign-in form until the password is given.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet import defer
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.web.server import Site

from xrelay.admin.web import AdminSite
from xrelay.config import Config

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
        C{delivery}, C{tokens}, C{metrics}); its C{config} is read on every request, so
        a reload takes effect at once.
    @param reactor: the reactor; the global one by default.

    @ivar port: the listening port once started (C{port.getHost().port}).
    @ivar metrics: the relay's L{xrelay.operations.metrics.RelayMetrics}, served at
        C{/metrics}.
    """

    name = "admin"

    def __init__(self, config: Config, relay: Any, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        assert config.admin is not None, "AdminService needs an [admin] section"
        self.config = config
        self.relay = relay
        self.reactor = reactor
        self.metrics = relay.metrics
        self.site = AdminSite(relay, self.metrics, reactor)
        self.port: Any = None

    def startService(self) -> defer.Deferred[None]:
        Service.startService(self)
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
        port, self.port = self.port, None
        if port is None:
            return defer.succeed(None)
        return defer.maybeDeferred(port.stopListening)
