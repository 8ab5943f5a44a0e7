"""
The token service: one token source per configured account, their thread pool, and the
sign-in entry points used by C{xrelay login} and the admin page.

L{TokenService} is a Twisted service.  msal calls run in its own thread pool (never the
reactor thread, nor the reactor's shared pool that the spool and password hashing use).
Sources that need sign-in look at the cache files every few seconds, so that a sign-in
done by C{xrelay login} in another process resumes delivery without a restart; listeners
registered with L{TokenService.on_signed_in} are told.

It must never log or expose a token or secret, and never block the reactor thread.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable, Mapping

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool

from xrelay.config import AccountConfig, Config
from xrelay.events import guarded
from xrelay.interfaces import ITokenSource
from xrelay.tokens.cache import AccountCache, load_key
from xrelay.tokens.errors import SignInFailed
from xrelay.tokens.expiry import CredentialExpiry, ExpiryWatch
from xrelay.tokens.google import GoogleGrant
from xrelay.tokens.microsoft import DeviceCodePrompt, MicrosoftGrant, stored_expiry
from xrelay.tokens.source import GrantResult, RefreshingTokenSource
from xrelay.records import TokenStatus
from xrelay.tokens.trust import trust_bundle

log = Logger(namespace="xrelay.tokens")

#: Seconds between looks at the accounts' cache, secret, certificate and refresh token
#: files (a C{stat} each): a changed file gets a token request at once.
SIGN_IN_POLL_INTERVAL = 5.0
#: Seconds between looks at the credentials' expiry dates.
EXPIRY_CHECK_INTERVAL = 3600.0
#: Threads for msal: a device code sign-in occupies one while it waits.
MAX_THREADS = 8


def _daemon_thread(*args: Any, **kwargs: Any) -> threading.Thread:
    return threading.Thread(*args, daemon=True, **kwargs)


def _token_pool() -> ThreadPool:
    """
    The dedicated pool for msal's blocking calls.  Its threads are daemon threads: a
    program that embeds xrelay and exits without stopping the service (or a test run)
    must not hang at interpreter exit waiting for an idle msal worker.  Nothing durable
    depends on them finishing: cache writes are atomic renames.
    """
    pool = ThreadPool(minthreads=0, maxthreads=MAX_THREADS, name="xrelay-tokens")
    # Twisted types threadFactory as type[Thread]; any callable making a Thread works.
    pool.threadFactory = _daemon_thread  # type: ignore[assignment]
    return pool


class TokenService(Service):
    """
    Token sources for all accounts of a configuration.

    @param events: the relay's L{xrelay.interfaces.IRelayEvents} sink, given to every
        token source (refreshes and failures); nothing is counted by default.

    @param external: account name -> an embedding program's own L{ITokenSource} for
        that account (a token it obtains its own way): used as it is, never started,
        refreshed or stopped here; the other accounts get a L{RefreshingTokenSource}.

    @ivar sources: account name -> L{RefreshingTokenSource} (an L{ITokenSource}), for
        the accounts this service obtains tokens for.
    """

    name = "tokens"

    def __init__(self, config: Config, reactor: Any = None,
                 clock: IReactorTime | None = None, events: Any = None,
                 external: Mapping[str, ITokenSource] | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.reactor = reactor
        self.clock: IReactorTime = clock if clock is not None else reactor
        self.config = config
        self.events = guarded(events)
        self.pool = _token_pool()
        self._listeners: list[Callable[[str], None]] = []
        self._poll: LoopingCall | None = None
        self._expiry_poll: LoopingCall | None = None
        self.expiry = ExpiryWatch(config)
        self._key: bytes | None = None
        self._shutdown_trigger: Any = None
        self._device_codes: set[DeviceCodePrompt] = set()
        self.external: dict[str, ITokenSource] = dict(external or {})
        self.sources: dict[str, RefreshingTokenSource] = {}
        for account in config.accounts:
            if account.name not in self.external:
                self.sources[account.name] = self._source(account)

    def source_for(self, account: str) -> ITokenSource:
        """The token source of this account: the embedder's own, or this service's."""
        external = self.external.get(account)
        return external if external is not None else self.sources[account]

    # -- wiring ---------------------------------------------------------------

    @property
    def state_dir(self) -> str:
        return self.config.server.state_dir

    def _cache_key(self) -> bytes:
        if self._key is None:
            self._key = load_key(self.state_dir)
        return self._key

    def _start_pool(self) -> None:
        if not self.pool.started:
            self.pool.start()
            # like the reactor's own pool: never keep the process alive at exit
            self._shutdown_trigger = self.reactor.addSystemEventTrigger(
                "during", "shutdown", self._stop_pool_now)

    def _stop_pool_now(self) -> None:
        self._shutdown_trigger = None
        self._cancel_device_codes()
        if self.pool.started:
            self.pool.stop()

    def _cancel_device_codes(self) -> None:
        for prompt in list(self._device_codes):
            prompt.flow["cancelled"] = True

    def run_blocking(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Run C{f} in the token thread pool (started on first use)."""
        self._start_pool()
        return deferToThreadPool(self.reactor, self.pool, f, *args, **kwargs)

    def _source(self, account: AccountConfig) -> RefreshingTokenSource:
        cache = AccountCache.open(self.state_dir, account.name, self._cache_key())
        bundle = trust_bundle(self.state_dir, account.ca_file)
        grant: MicrosoftGrant | GoogleGrant
        if account.provider == "google":
            grant = GoogleGrant(account, cache, bundle, self.run_blocking, self.reactor)
        else:
            grant = MicrosoftGrant(account, cache, bundle, self.run_blocking)
        return RefreshingTokenSource(account.name, grant, self.clock,
                                     on_usable=self._announce, provider=account.provider,
                                     flow=account.flow, events=self.events)

    def on_signed_in(self, listener: Callable[[str], None]) -> None:
        """
        Call C{listener(account_name)} whenever an account becomes usable again (signed
        in after needing sign-in, or the identity platform is back): the delivery engine
        retries that account's queued mail.
        """
        self._listeners.append(listener)

    def _announce(self, account: str) -> None:
        log.info("Account {account} has a token again; its queued mail can go",
                 account=account)
        for listener in list(self._listeners):
            try:
                listener(account)
            except Exception:
                log.failure("A sign-in listener failed for account {account}",
                            account=account)

    # -- service --------------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._start_pool()
        failing = self._failing_before()
        for name, source in self.sources.items():
            source.start(was_failing=name in failing)
        self._poll = LoopingCall(self._check_sign_ins)
        self._poll.clock = self.clock
        self._poll.start(SIGN_IN_POLL_INTERVAL, now=False)
        self._expiry_poll = LoopingCall(lambda: self.expiry.check(self.clock.seconds()))
        self._expiry_poll.clock = self.clock
        self._expiry_poll.start(EXPIRY_CHECK_INTERVAL, now=True)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        for poll in (self._poll, self._expiry_poll):
            if poll is not None and poll.running:
                poll.stop()
        self._poll = self._expiry_poll = None
        for source in self.sources.values():
            source.stop()
        # stopping joins the threads; a device code wait ends at its next poll
        return self.run_stop()

    def run_stop(self) -> Deferred[None]:
        """Stop the thread pool (joined in another thread: never blocks the reactor)."""
        self._cancel_device_codes()
        if self._shutdown_trigger is not None:
            self.reactor.removeSystemEventTrigger(self._shutdown_trigger)
            self._shutdown_trigger = None
        if not self.pool.started:
            return succeed(None)
        pool = self.pool
        self.pool = _token_pool()
        return deferToThreadPool(self.reactor, self.reactor.getThreadPool(), pool.stop)

    def _failing_before(self) -> set[str]:
        """
        Accounts whose last recorded state (before this start) was a failure: their
        mail was deferred for it, and goes out as soon as a token works again.
        """
        try:
            recorded = stored_status(self.config)
        except Exception:
            log.failure("Could not read the recorded token states")
            return set()
        return {s.account for s in recorded if s.state not in ("ok", "expiring",
                                                                "refreshing", "no token")}

    def _check_sign_ins(self) -> None:
        for source in self.sources.values():
            source.check_signed_in()

    def reconfigure(self, config: Config) -> None:
        """
        Take a new configuration: accounts that are new or changed get a new source,
        unchanged ones keep theirs (and their token), removed ones stop.
        """
        old = {a.name: a for a in self.config.accounts}
        self.config = config
        self.expiry.config = config
        if self.running:
            self.expiry.check(self.clock.seconds())
        sources: dict[str, RefreshingTokenSource] = {}
        for account in config.accounts:
            if account.name in self.external:
                continue
            if old.get(account.name) == account and account.name in self.sources:
                sources[account.name] = self.sources[account.name]
                continue
            sources[account.name] = self._source(account)
            if self.running:
                sources[account.name].start()
        for name, source in self.sources.items():
            if sources.get(name) is not source:
                source.stop()
        kept = [s for name, s in sources.items() if self.sources.get(name) is s]
        self.sources = sources
        # Reload re-reads every secret, certificate and refresh token file: an account
        # that is not ok, or whose files changed, asks for a token now.
        if self.running:
            for source in kept:
                source.recheck()

    # -- status ---------------------------------------------------------------

    def status(self) -> dict[str, TokenStatus]:
        statuses = {name: source.status() for name, source in self.sources.items()}
        for account in self.config.accounts:
            if account.name in self.external:
                statuses[account.name] = self.external[account.name].status()
        return statuses

    def expiries(self) -> list[CredentialExpiry]:
        """The credentials' end dates as last read (at start, hourly, at reload)."""
        return list(self.expiry.expiries)

    # -- sign-in --------------------------------------------------------------

    def _microsoft(self, account: str) -> tuple[RefreshingTokenSource, MicrosoftGrant]:
        source = self.sources.get(account)
        if source is None:
            raise SignInFailed(account, "no such account in the configuration")
        if isinstance(source.grant, GoogleGrant):
            raise SignInFailed(account, "Google accounts sign in in the browser only "
                               "(Sign in with Google on the admin page)")
        if self.config.account(account).flow == "client_credentials":
            raise SignInFailed(account, "this account does not sign in interactively "
                               "(client credentials)")
        if not isinstance(source.grant, MicrosoftGrant):  # an embedder's own grant
            raise SignInFailed(account, "this account's token grant has no Microsoft sign-in")
        return source, source.grant

    def _browser(self, account: str) -> tuple[RefreshingTokenSource,
                                              MicrosoftGrant | GoogleGrant]:
        """The account's grant, if it can sign in in the browser (any Google flow)."""
        source = self.sources.get(account)
        if source is not None and isinstance(source.grant, GoogleGrant):
            return source, source.grant
        return self._microsoft(account)

    def _adopted(self, result: GrantResult, source: RefreshingTokenSource) -> TokenStatus:
        source.signed_in(result)
        return source.status()

    def start_device_code(self, account: str) -> Deferred[DeviceCodePrompt]:
        """
        Begin a device code sign-in: fires with what to show the person (URL and code).
        Then call L{finish_device_code} to wait for them.
        """
        try:
            _, grant = self._microsoft(account)
        except SignInFailed as e:
            return _failed(e)
        return self.run_blocking(grant.initiate_device_code)

    def finish_device_code(self, prompt: DeviceCodePrompt) -> Deferred[TokenStatus]:
        """
        Wait until the person has signed in (or the code expired: L{SignInFailed}); the
        tokens are then stored and the account resumes.  Cancelling the Deferred stops
        the waiting at msal's next poll.
        """
        try:
            source, grant = self._microsoft(prompt.account)
        except SignInFailed as e:
            return _failed(e)
        self._device_codes.add(prompt)
        d = self.run_blocking(grant.complete_device_code, prompt)
        d.addCallback(self._adopted, source)

        def done(result: Any) -> Any:
            self._device_codes.discard(prompt)
            return result
        d.addBoth(done)

        def cancel(d2: Deferred[Any]) -> None:
            prompt.flow["cancelled"] = True
        outer: Deferred[TokenStatus] = Deferred(cancel)
        d.chainDeferred(outer)
        return outer

    def start_auth_code(self, account: str, redirect_uri: str
                        ) -> Deferred[tuple[str, dict[str, Any]]]:
        """
        Begin a browser sign-in (authorization code with PKCE): fires with the URL to
        send the browser to and the flow state to keep (server side) until it returns.
        """
        try:
            _, grant = self._browser(account)
        except SignInFailed as e:
            return _failed(e)
        if isinstance(grant, GoogleGrant):  # no I/O: the URL is built here
            return maybeDeferred(grant.initiate_auth_code, redirect_uri)
        return self.run_blocking(grant.initiate_auth_code, redirect_uri)

    def finish_auth_code(self, account: str, flow: dict[str, Any],
                         query_params: dict[str, str]) -> Deferred[TokenStatus]:
        """
        Redeem the browser's return (the redirect's query parameters): the tokens are
        stored (encrypted), the account is ok and L{on_signed_in} listeners are told.
        Fails with L{SignInFailed}, the account keeping its previous state.
        """
        try:
            source, grant = self._browser(account)
        except SignInFailed as e:
            return _failed(e)
        if isinstance(grant, GoogleGrant):
            d = grant.complete_auth_code(flow, query_params)
        else:
            d = self.run_blocking(grant.complete_auth_code, flow, query_params)
        return d.addCallback(self._adopted, source)


def _failed(e: Exception) -> Deferred[Any]:
    from twisted.internet.defer import fail
    return fail(e)


def stored_status(config: Config) -> list[TokenStatus]:
    """
    Every account's status as last recorded in the cache files, without network or
    reactor: for C{xrelay accounts} / C{xrelay status}, which run beside the daemon.
    """
    key = load_key(config.server.state_dir)
    now = time.time()
    statuses = []
    for account in config.accounts:
        cache = AccountCache.open(config.server.state_dir, account.name, key)
        data = cache.read()
        meta = data.get("meta") or {}
        expires_at, has_refresh = stored_expiry(data, account)
        has_refresh = has_refresh or bool((data.get("google") or {}).get("refresh_token"))
        expires_at = meta.get("expires_at") or expires_at
        state = meta.get("state")
        if state is None:
            state = "no token" if not data else ("ok" if has_refresh else "no token")
        elif state == "ok" and expires_at is not None and expires_at < now:
            state = "no token"  # the daemon is not running, or has not refreshed yet
        statuses.append(TokenStatus(
            account=account.name, state=state, expires_at=expires_at,
            last_refresh=meta.get("last_refresh"), last_error=meta.get("last_error"),
            hint=meta.get("hint"), provider=account.provider, flow=account.flow))
    return statuses
