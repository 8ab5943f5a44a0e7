"""
The one place where xrelay's stages are wired together.

L{makeService} is used by C{twistd xrelay}, by C{xrelay.tac} and by programs that embed
xrelay; none of them builds the stages itself.  The order matters: the control channel
takes the spool lock and the spool recovers before anything else starts, tokens and
delivery start before the listeners accept mail, and on stop the listeners close first
(MultiService stops its children in reverse order).
"""

from __future__ import annotations

import os
import re
import signal
from typing import TYPE_CHECKING, Any, Mapping

import attrs
from twisted.application.service import MultiService, Service
from twisted.cred.checkers import ICredentialsChecker
from twisted.logger import Logger

from xrelay.config import (
    AccountConfig,
    Config,
    ConfigError,
    with_accounts,
)
from xrelay.configfile import account_from_table, read_config
from xrelay.interfaces import IInboundHandler, IRelayEvents, ISpool, ITokenSource, ITransport

if TYPE_CHECKING:
    # Built in makeService only: importing this module stays cheap (no twisted.mail).
    from xrelay.delivery import DeliveryEngine
    from xrelay.inbound import InboundService
    from xrelay.operations.control import ControlService
    from xrelay.tokens import TokenService
from xrelay.sandboxdefault import sandbox_with_dropins

log = Logger(namespace="xrelay")


class RecoveringSpoolService(Service):
    """Recovers the spool (crash leftovers) before any other stage starts."""

    def __init__(self, spool: ISpool) -> None:
        self.spool = spool

    def startService(self) -> None:
        self.spool.recover()
        Service.startService(self)


class _TransportsClosing(Service):
    """Closes the upstream connections at stop."""

    def __init__(self, relay: "RelayService") -> None:
        self.relay = relay

    def stopService(self) -> Any:
        from twisted.internet.defer import gatherResults, maybeDeferred

        Service.stopService(self)
        return gatherResults(
            [maybeDeferred(t.close) for t in self.relay.transports.values()],
            consumeErrors=True)


class RelayService(MultiService):
    """
    The whole relay: the running stages, reachable by name for embedding programs, the
    admin page and tests.
    """

    config: Config
    spool: ISpool
    tokens: "TokenService"
    delivery: "DeliveryEngine"
    inbound: "InboundService"
    transports: dict[str, ITransport]
    control: "ControlService"
    history: Any = None
    sandbox: Any = None
    admin: Any = None
    reactor: Any = None
    #: The relay's L{xrelay.operations.metrics.RelayMetrics} (always made; served at
    #: C{/metrics} when the admin page is on).
    metrics: Any = None
    #: The one L{xrelay.interfaces.IRelayEvents} sink its stages report to.
    events: Any = None
    #: The device inventory's collector (L{xrelay.devices.DeviceCollector}), or
    #: C{None} when C{relay.device_inventory} is false.
    devices: Any = None

    def _transport_for(self, account: AccountConfig) -> Any:
        from xrelay.transport import timeouts_for, transport_for

        return transport_for(account, self.tokens.source_for(account.name),
                             reactor=self.reactor, helo_name=self.config.server.hostname,
                             timeouts=timeouts_for(self.config.delivery))

    def reload(self) -> bool:
        """
        Re-read the configuration file (SIGHUP): users, networks and accounts change
        for new connections and deliveries, the queue and live connections stay.  A bad
        new file is refused with a log line, and the old configuration kept.
        """
        try:
            if self.config.path is not None:
                new = read_config(self.config.path)
            elif self.sandbox is not None:
                new = attrs.evolve(
                    _sandbox_accounts(sandbox_with_dropins(self.config.sandbox_dir),
                                      self.sandbox),
                    admin=self.config.admin, setup=self.config.setup)
            else:
                log.info("xrelay: reload asked, but there is no file to re-read")
                return False
        except ConfigError as e:
            log.error("xrelay: configuration not reloaded, keeping the old one: {error}",
                      error=str(e))
            return False
        if new.server.state_dir != self.config.server.state_dir:
            log.warn("xrelay: server.state_dir changes only at restart; keeping {old}",
                     old=self.config.server.state_dir)
            new = attrs.evolve(new, server=attrs.evolve(
                new.server, state_dir=self.config.server.state_dir))
        old_accounts = {a.name: a for a in self.config.accounts}
        self.config = new
        self.tokens.reconfigure(new)
        transports: dict[str, Any] = {}
        for account in new.accounts:
            kept = self.transports.get(account.name)
            if kept is not None and old_accounts.get(account.name) == account:
                transports[account.name] = kept
            else:
                transports[account.name] = self._transport_for(account)
        retired = [t for name, t in self.transports.items()
                   if transports.get(name) is not t]
        self.transports = transports
        self.delivery.reconfigure(new, transports)
        self.inbound.reconfigure(new)
        for transport in retired:
            transport.close()
        log.info("xrelay: configuration reloaded from {path}", path=new.path)
        return True

    def startService(self) -> None:
        from xrelay.startup import StartupRefused, refuse_to_start

        try:
            MultiService.startService(self)
        except StartupRefused as e:
            refuse_to_start(str(e))
        self._all_listening()
        if self.config.path is not None and hasattr(signal, "SIGHUP"):

            def on_hup(signum: int, frame: Any) -> None:
                self.reactor.callFromThread(self.reload)

            try:
                signal.signal(signal.SIGHUP, on_hup)
            except ValueError:
                # Not the main thread (an embedding program runs the reactor
                # elsewhere): it can call reload() itself.
                log.info("xrelay: SIGHUP not handled here; call RelayService.reload()")


    def _sandbox_default(self) -> bool:
        """Whether this relay runs on the sandbox default (no configuration file)."""
        return self.config.path is None and self.config.sandbox_dir is not None

    def _all_listening(self) -> None:
        """
        All or nothing: a listener that could not be opened ends the process (TCP
        listeners fail at once, here; any that fail later end it from the reactor).
        """
        from twisted.python.failure import Failure

        from xrelay.startup import cannot_listen, refuse_to_start, say

        failures = [("server.listen", endpoint, failure)
                    for endpoint, failure in self.inbound.listen_failures]
        admin_failure = getattr(self.admin, "listen_failure", None)
        if admin_failure is not None and self._sandbox_default():
            # The sandbox default's admin page is a bonus to try the wizard: a port
            # taken by something else must not stop the relay a new user is trying.
            log.warn("xrelay: the sandbox's admin page could not listen on {listen} "
                     "(the relay runs without it); set ${variable} to a free port to "
                     "try the setup wizard", listen=self.config.admin.listen,  # type: ignore[union-attr]
                     variable=SANDBOX_ADMIN_PORT_VARIABLE)
        elif admin_failure is not None:  # so config.admin is set: only then is there one
            failures.append(("admin.listen", self.config.admin.listen,  # type: ignore[union-attr]
                             admin_failure))
        if failures:
            what, endpoint, failure = failures[0]
            # Reported here, in one line: not again as an unhandled error at exit.
            self.inbound.when_listening().addErrback(lambda _: None)
            refuse_to_start(cannot_listen(what, endpoint, failure))

        def later(failure: Failure) -> None:
            if not self.inbound.listen_failures:
                return
            endpoint, first = self.inbound.listen_failures[0]
            line = cannot_listen("server.listen", endpoint, first)
            say(line)
            self.reactor.addSystemEventTrigger("after", "shutdown", os._exit, 1)
            self.reactor.stop()
        self.inbound.when_listening().addErrback(later)


def _start_sandbox(config: Config, reactor: Any) -> tuple[Config, Any, Service]:
    """
    Start the embedded sandbox providers and route every sender through its account.
    Binding happens here, synchronously, so that the account's ports are known before
    the other stages are built.
    """
    from twisted.python.filepath import FilePath

    from xrelay.sandbox import Sandbox

    assert config.sandbox_dir is not None
    os.makedirs(config.sandbox_dir, mode=0o700, exist_ok=True)
    sandbox = Sandbox(FilePath(config.sandbox_dir), reactor=reactor)
    sandbox.start()
    from xrelay.sandboxdefault import sandbox_setup, write_sandbox_endpoints

    endpoints = write_sandbox_endpoints(config.sandbox_dir, sandbox)
    config = attrs.evolve(config, setup=sandbox_setup(endpoints))
    if config.admin is None and config.path is None:
        config = attrs.evolve(config, admin=_sandbox_admin(sandbox.directory.path))
    return _sandbox_accounts(config, sandbox), sandbox, _StartedSandboxService(sandbox)


#: The sandbox default's admin page port (8025 unset): the "Add an account" wizard
#: can be tried there against the sandbox tenant.
SANDBOX_ADMIN_PORT_VARIABLE = "XRELAY_SANDBOX_ADMIN_PORT"


def _sandbox_admin(directory: str) -> Any:
    """
    The sandbox default's admin page on loopback, its password made once and kept in
    C{admin-password.txt} (mode 0600) in the sandbox folder, never logged.
    """
    import secrets

    from xrelay.config import AdminConfig
    from xrelay.durable import write_durably
    from xrelay.passwords import hash_password

    port = os.environ.get(SANDBOX_ADMIN_PORT_VARIABLE, "") or "8025"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"${SANDBOX_ADMIN_PORT_VARIABLE}", "", f"{port!r} is not a "
                          "port number; write one from 1 to 65535, or unset it for 8025")
    path = os.path.join(directory, "admin-password.txt")
    try:
        with open(path, encoding="utf-8") as f:
            password = f.read().strip()
    except FileNotFoundError:
        password = secrets.token_urlsafe(12)
        write_durably(path, (password + "\n").encode("utf-8"), exclusive=True)
    return AdminConfig(listen=f"tcp:{port}:interface=127.0.0.1",
                       password_hash=hash_password(password))


def _sandbox_accounts(config: Config, sandbox: Any) -> Config:
    """
    The sandbox default's accounts: those the setup wizard made (managed drop-ins),
    pointed at this run's sandbox (its ports change at every start; nothing leaves the
    machine), first, so their senders route to them; then the sandbox's own account,
    which takes every other sender.
    """
    account = account_from_table(dict(sandbox.default_account()), "sandbox")
    managed = tuple(attrs.evolve(
        a, authority=sandbox.authority, smtp_host=sandbox.smtp_host,
        smtp_port=sandbox.smtp_port, graph_url=sandbox.graph_url,
        ca_file=sandbox.ca_file, smtp_implicit_tls=False)
        for a in config.accounts if a.provider == "microsoft" and a.name != "sandbox")
    return with_accounts(config, (*managed, account))


class _StartedSandboxService(Service):
    """Stops the embedded sandbox, which L{_start_sandbox} already bound."""

    def __init__(self, sandbox: Any) -> None:
        self.sandbox = sandbox

    def stopService(self) -> Any:
        Service.stopService(self)
        return self.sandbox.stop()


def makeService(config: Config, reactor: Any = None,
                credentials_checker: ICredentialsChecker | None = None,
                events: IRelayEvents | None = None,
                inbound_handler: IInboundHandler | None = None,
                spool: ISpool | None = None,
                token_sources: Mapping[str, ITokenSource] | None = None) -> RelayService:
    """
    Build the relay for this configuration.

    @param reactor: the reactor to use; the global one by default.
    @param spool: where accepted mail is kept until delivered: any L{ISpool} (an
        embedding program's own, or L{xrelay.testing.spool.MemorySpool} in its tests);
        the durable spool under C{server.state_dir} by default.  Recovered at start,
        before anything else runs.
    @param token_sources: account name -> an L{ITokenSource} of the embedding program
        for that account (it obtains the account's access tokens its own way); the
        relay's own sign-in (msal, Google) for the other accounts.
    @param credentials_checker: who may SMTP AUTH: any C{twisted.cred}
        C{ICredentialsChecker} for C{IUsernamePassword} (an embedding program's LDAP or
        database); the configuration's C{[[users]]} by default.
    @param inbound_handler: what each SMTP session may do (connect, HELO, MAIL, RCPT,
        the message's headers, end of data): any L{xrelay.interfaces.IInboundHandler},
        typically a subclass of L{xrelay.inbound.handler.PolicyHandler}; the relay's
        own policy by default.  Kept across reloads, like the checker.
    @raise xrelay.startup.StartupRefused: when the machine around the configuration
        would make the relay fail later (L{xrelay.checks.problems}: an unusable or
        unsafe state_dir); its text is the one line to show.
    @param events: an embedding program's own L{xrelay.interfaces.IRelayEvents} sink,
        told every event the relay's metrics are told (a failing one is logged, never
        allowed to break mail).
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor

    from xrelay.delivery import DeliveryEngine
    from xrelay.history import open_history
    from xrelay.operations.listing import ListedSpool
    from xrelay.inbound import InboundService
    from xrelay.operations.control import ControlService
    from xrelay.events import FanOutEvents, guarded
    from xrelay.operations.metrics import RelayMetrics
    from xrelay.spool import Spool
    from xrelay.tokens import TokenService

    top = RelayService()
    top.setName("xrelay")
    top.reactor = reactor
    if config.sandbox_dir is not None:
        config, top.sandbox, sandbox_service = _start_sandbox(config, reactor)
        sandbox_service.setServiceParent(top)

    from xrelay.checks import problems, warnings
    from xrelay.startup import StartupRefused

    for problem in problems(config):
        raise StartupRefused(f"xrelay: {problem}")
    for warning in warnings(config):
        log.warn("xrelay: {warning}", warning=warning)
    os.makedirs(config.server.state_dir, mode=0o700, exist_ok=True)
    top.config = config
    # One sink per relay, given to every stage: counts never come from the (process-wide)
    # log, so two relays in one process keep their own.
    top.metrics = RelayMetrics()
    top.events = guarded(FanOutEvents(top.metrics, events) if events is not None
                         else top.metrics)
    # First of the relay's own stages: it takes the spool lock that keeps `xrelay
    # queue ...` from editing the spool behind the daemon's back, before recovery.
    top.control = ControlService(top, reactor=reactor)
    top.control.setServiceParent(top)
    # The listing of the queue is served from what the daemon remembers (issue 24); an
    # embedder's own spool is used as it is.
    top.spool = spool if spool is not None else ListedSpool(Spool(
        os.path.join(config.server.state_dir, "spool"), reactor=reactor))
    RecoveringSpoolService(top.spool).setServiceParent(top)

    unknown = sorted(set(token_sources or ()) - {a.name for a in config.accounts})
    if unknown:
        raise ValueError(f"token_sources names accounts the configuration does not "
                         f"have: {', '.join(unknown)}")
    top.tokens = TokenService(config, reactor=reactor, events=top.events,
                              external=token_sources)
    top.tokens.setServiceParent(top)

    top.transports = {account.name: top._transport_for(account)
                      for account in config.accounts}
    # Listed before the engine, so stopped after it: in-flight attempts finish on
    # their connections, then the idle connections are closed.
    _TransportsClosing(top).setServiceParent(top)
    # Before the engine and the listeners, so stopped after them: the last records of a
    # stopping relay are still written.
    top.history = open_history(config, reactor)
    top.history.setServiceParent(top)
    if config.relay.device_inventory:
        from xrelay.devices import DeviceCollector

        # Before the listeners, so stopped after them: their last events are written.
        top.devices = DeviceCollector(
            lambda: top.config, reactor,
            known_user=lambda name: any(u.name == name for u in top.config.users))
        top.devices.setServiceParent(top)
    top.delivery = DeliveryEngine(config, top.spool, top.transports, reactor=reactor,
                                  state_dir=config.server.state_dir, history=top.history,
                                  events=top.events)
    top.delivery.setServiceParent(top)
    top.tokens.on_signed_in(top.delivery.resume_account)

    from xrelay.diskspace import ReservingSpool

    # New mail only through the reserve: bounces and state changes keep their room.
    inbound_spool = ReservingSpool(top.spool, lambda: top.config.server.min_free_space)
    top.inbound = InboundService(config, inbound_spool, top.delivery, reactor=reactor,
                                 credentials_checker=credentials_checker,
                                 history=top.history, events=top.events,
                                 inbound_handler=inbound_handler)
    if top.devices is not None:
        top.inbound.devices = top.devices
    top.inbound.setServiceParent(top)
    top.metrics.watch_relay(top)

    if config.admin is not None:
        from xrelay.admin import AdminService

        top.admin = AdminService(config, top, reactor=reactor)
        top.admin.setServiceParent(top)

    if top.sandbox is not None:
        _announce_sandbox(config, top.sandbox)
    return top


def _announce_sandbox(config: Config, sandbox: Any) -> None:
    listen = config.server.listen[0].endpoint
    log.info(
        "xrelay: running on the embedded sandbox default ({listen}); nothing leaves this "
        "machine.  Send a test message with:\n"
        "    swaks --server {server} --from printer@example.com --to client@example.net\n"
        "and find it as an .eml file under {mailbox}",
        listen=listen, server=client_reach(listen),
        mailbox=os.path.join(config.sandbox_dir or "", "mailbox"),
    )
    if config.admin is not None and config.path is None:
        admin_port = config.admin.listen.split(":")[1]
        log.info(
            "xrelay: try the setup wizard: http://localhost:{port}/setup (admin password "
            "in {password}; the sandbox tenant's admins and their passwords in {users})",
            port=admin_port,
            password=os.path.join(config.sandbox_dir or "", "admin-password.txt"),
            users=os.path.join(config.sandbox_dir or "", "sandbox-users.txt"))


def client_reach(endpoint: str) -> str:
    """
    Where a client on this machine reaches a C{tcp:}/C{tcp6:} listener, as swaks's
    C{--server} takes it: C{127.0.0.1:2525}, C{[::1]:2525} (a wildcard interface is
    reached on loopback).
    """
    _, port, *options = re.split(r"(?<!\\):", endpoint)
    interface = next((o.split("=", 1)[1] for o in options if o.startswith("interface=")),
                     "").replace("\\", "")
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(interface, interface)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
