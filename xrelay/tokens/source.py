"""
A token source: the part shared by every provider and flow.

L{RefreshingTokenSource} implements L{ITokenSource} over a I{grant} (the provider-specific
way to get a token: msal, Google's token endpoint).  It holds the current token, refreshes
it ahead of expiry on a timer, lets concurrent callers share one refresh, backs off after
temporary failures and stops asking after a permanent refusal until the credentials on
disk change (a new sign-in, possibly by C{xrelay login} in another process).  Its states
live in L{xrelay.tokens.status.TokenLifecycle}.

It must never log, raise or repr a token or a secret: log lines carry the account name,
the state and the platform's error text only.
"""

from __future__ import annotations

import time

from typing import Callable

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface, implementer

from xrelay.interfaces import IRelayEvents, ITokenSource
from xrelay.events import guarded
from xrelay.tokens.errors import (GrantRefused, GrantUnavailable, NeedsSignIn,
                                  TokenUnavailable)
from xrelay.records import TokenStatus
from xrelay.tokens.status import REFUSED, Token, TokenLifecycle, TokenState

log = Logger(namespace="xrelay.tokens")


@attrs.frozen
class GrantResult:
    """What a grant obtained: the access token and its lifetime in seconds."""

    access_token: str = attrs.field(repr=False)
    expires_in: float


class ITokenGrant(Interface):
    """
    How one provider and flow obtains an access token.  The source decides when.
    """

    hint: str = Attribute("What an operator must do when the grant is refused.")

    def fetch(force: bool) -> "Deferred[GrantResult]":
        """
        A token: from the on-disk cache when C{force} is false and it holds a good one,
        else from the platform.  Fails with L{GrantRefused} (permanent) or
        L{GrantUnavailable} (temporary).
        """

    def credentials_changed() -> bool:
        """
        Whether the stored credentials changed since the grant last read them (somebody
        signed in, or replaced the refresh token file).  Cheap: a C{stat}.
        """

    def record(status: TokenStatus) -> "Deferred[None]":
        """Keep the status with the cached credentials, for C{xrelay accounts}."""


@implementer(ITokenSource)
@attrs.define(eq=False)
class RefreshingTokenSource:
    """
    One account's tokens, kept valid.

    @ivar on_usable: called with the account name when the account becomes usable again
        after needing sign-in or after the platform was unavailable: the delivery engine
        then retries the account's queued mail at once.
    @ivar events: the relay's L{IRelayEvents} sink (refreshes and failures).
    """

    account_name: str
    grant: ITokenGrant
    clock: IReactorTime
    on_usable: Callable[[str], None] = lambda name: None
    provider: str | None = None
    flow: str | None = None
    events: IRelayEvents = attrs.field(default=None, converter=guarded)
    lifecycle: TokenLifecycle = attrs.field(init=False)
    _waiters: list[Deferred[Token]] = attrs.field(init=False, factory=list)
    _timer: IDelayedCall | None = attrs.field(init=False, default=None)
    _force_next: bool = attrs.field(init=False, default=False)
    _stopped: bool = attrs.field(init=False, default=False)
    _announce_first: bool = attrs.field(init=False, default=False)

    def __attrs_post_init__(self) -> None:
        self.lifecycle = TokenLifecycle(self.account_name)

    # -- ITokenSource ---------------------------------------------------------

    def access_token(self) -> Deferred[str]:
        now = self.clock.seconds()
        state = self.lifecycle.state(now)
        if state is TokenState.FRESH:
            assert self.lifecycle.token is not None
            return succeed(self.lifecycle.token.value)
        if state in REFUSED and not self.grant.credentials_changed():
            return fail(self._needs_sign_in())
        if state is TokenState.UNAVAILABLE:
            usable = self.lifecycle.usable_token(now)
            if usable is not None:
                return succeed(usable.value)
            return fail(TokenUnavailable(self.account_name,
                                         self.lifecycle.last_error or "backing off",
                                         self.lifecycle.retry_at))
        # no token, expiring, being refreshed, or signed in again elsewhere: wait for
        # the (one) refresh; an expiring token is replaced before it is used.
        return self._refresh().addCallback(lambda token: token.value)

    def token_rejected(self, token: str) -> None:
        current = self.lifecycle.token
        if current is None or current.value != token:
            return  # an older token: the current one may be fine
        log.warn("Upstream rejected the access token of account {account}; "
                 "the next delivery gets a new one", account=self.account_name)
        self.lifecycle.rejected(self.clock.seconds())
        self._force_next = True

    def status(self) -> TokenStatus:
        return self.lifecycle.status(self.clock.seconds(), self.provider, self.flow)

    # -- for the service ------------------------------------------------------

    def signed_in(self, result: GrantResult) -> None:
        """An interactive sign-in stored new credentials and brought this token."""
        now = self.clock.seconds()
        was = self.lifecycle.state(now)
        token = Token(result.access_token, now + result.expires_in, now)
        self.lifecycle.signed_in(token, now)
        self._force_next = False
        log.info("Account {account} signed in; token valid until {until}",
                 account=self.account_name, expires_at=token.expires_at,
                 until=time.strftime("%Y-%m-%d %H:%M:%S UTC",
                                     time.gmtime(token.expires_at)))
        self._schedule(token.refresh_at)
        self._record()
        if was is not TokenState.FRESH:
            self._announce_usable()

    def check_signed_in(self) -> None:
        """
        Called periodically (every few seconds): when the stored credentials changed
        (somebody signed in, maybe in another process; a secret, certificate or refresh
        token file was replaced), ask for a token now, whatever the state: a refused
        account resumes at once, and a bad new secret shows before the old token ends.
        """
        if self._stopped:
            return
        now = self.clock.seconds()
        if (self.lifecycle.state(now) is not TokenState.REFRESHING
                and self.grant.credentials_changed()):
            log.info("The credentials of account {account} changed; asking for a token",
                     account=self.account_name)
            self._refresh().addErrback(lambda f: None)  # logged in _refresh

    def recheck(self) -> None:
        """
        At reload: an account that is not ok, or whose credentials changed, asks for a
        token now (not at its back-off time); an ok one keeps its token.
        """
        if self._stopped:
            return
        state = self.lifecycle.state(self.clock.seconds())
        if state is TokenState.REFRESHING:
            return
        if self.grant.credentials_changed() or state not in (TokenState.FRESH,
                                                             TokenState.EXPIRING):
            log.info("Reload: asking for a token for account {account} (was {state})",
                     account=self.account_name, state=state.value)
            self.lifecycle.retry_at = None  # the back-off is for unchanged conditions
            self._refresh().addErrback(lambda f: None)  # logged in _refresh

    def start(self, was_failing: bool = False) -> None:
        """
        Fetch a first token in the background, so that problems show at start.

        @param was_failing: the account had no working token when the relay last
            recorded its state (before a restart): its waiting mail goes out as soon as
            this first token arrives, not at its back-off time.
        """
        self._stopped = False
        self._announce_first = was_failing
        self._refresh().addErrback(lambda f: None)

    def stop(self) -> None:
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- refreshing -----------------------------------------------------------

    def _needs_sign_in(self) -> NeedsSignIn:
        return NeedsSignIn(self.account_name, self.lifecycle.sign_in_hint or self.grant.hint,
                           self.lifecycle.last_error or "", self.lifecycle.refusal.value)

    def _explain(self, reason: str) -> tuple[TokenState, str]:
        """What the refusal is and what to do: the grant's table, if it has one."""
        explain = getattr(self.grant, "explain", None)
        if explain is not None:
            try:
                state, hint = explain(reason)
                return state, hint
            except Exception:
                log.failure("Could not explain the refusal for account {account}",
                            account=self.account_name)
        return TokenState.NEEDS_SIGN_IN, self.grant.hint

    def _refresh(self) -> Deferred[Token]:
        """Start a refresh, or join the one in flight."""
        waiter: Deferred[Token] = Deferred()
        self._waiters.append(waiter)
        if len(self._waiters) > 1:
            return waiter
        now = self.clock.seconds()
        before = self.lifecycle.state(now)
        # once this process has held a token, msal's cache cannot hold a better one:
        # ask the platform (msal would judge expiry by its own clock)
        force = self._force_next or self.lifecycle.token is not None
        self.lifecycle.begin_refresh(now)
        log.debug("Refreshing the token of account {account} (was {state})",
                  account=self.account_name, state=before.value)
        try:
            d = self.grant.fetch(force)
        except Exception:
            d = fail()
        d.addCallbacks(self._fetched, self._fetch_failed, errbackArgs=(before,))
        return waiter

    def _fetched(self, result: GrantResult) -> None:
        now = self.clock.seconds()
        was_usable = self.lifecycle.sign_in_hint is None and self.lifecycle.backoff == 0
        if self._announce_first:
            self._announce_first = False
            was_usable = False
        token = Token(result.access_token, now + result.expires_in, now)
        self.lifecycle.refreshed(token, now)
        self._force_next = False
        log.info("New access token for account {account}, valid for {lifetime:.0f}s",
                 account=self.account_name, lifetime=result.expires_in)
        self.events.token_refreshed(self.account_name)
        self._schedule(token.refresh_at)
        self._record().addCallback(lambda _: self._release(token))
        if not was_usable:
            self._announce_usable()

    def _fetch_failed(self, failure: Failure, before: TokenState) -> None:
        now = self.clock.seconds()
        if isinstance(failure.value, GrantRefused):
            reason = failure.value.reason
            state, hint = self._explain(reason)
            self.lifecycle.refused(reason, hint, now, state)
            self._force_next = False  # a new sign-in brings its own fresh token
            log.error("Account {account}: {state}: {error}. Its mail waits in the "
                      "queue; to resume, {hint}", account=self.account_name,
                      state=state.value, error=reason, hint=hint)
            self.events.token_failed(self.account_name, "needs_sign_in")
            signed_out = self._needs_sign_in()
            self._record().addCallback(lambda _: self._release(signed_out))
            return
        if isinstance(failure.value, GrantUnavailable):
            reason = failure.value.reason
        else:
            log.failure("Unexpected failure refreshing the token of account {account}",
                        failure, account=self.account_name)
            reason = f"unexpected error ({type(failure.value).__name__})"
        retry_at = self.lifecycle.failed(reason, now)
        log.warn("No token for account {account}: {error}; retrying in {delay:.0f}s",
                 account=self.account_name, error=reason, delay=retry_at - now)
        self.events.token_failed(self.account_name, "unavailable")
        usable = self.lifecycle.usable_token(now)
        outcome: Token | Exception
        if usable is not None:
            self._schedule(retry_at)
            outcome = usable
        else:
            outcome = TokenUnavailable(self.account_name, reason, retry_at)
        self._record().addCallback(lambda _: self._release(outcome))

    def _release(self, outcome: Token | Exception) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if isinstance(outcome, Exception):
                waiter.errback(Failure(outcome))
            else:
                waiter.callback(outcome)

    def _schedule(self, at: float) -> None:
        if self._stopped:
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = self.clock.callLater(max(0.0, at - self.clock.seconds()), self._ahead)

    def _ahead(self) -> None:
        """The refresh timer: renew before the token is needed in its last moments."""
        self._timer = None
        now = self.clock.seconds()
        state = self.lifecycle.state(now)
        if state in (TokenState.EXPIRING, TokenState.EMPTY):
            self._refresh().addErrback(lambda f: None)  # logged in _fetch_failed
        elif state is TokenState.FRESH and self.lifecycle.token is not None:
            self._schedule(self.lifecycle.token.refresh_at)

    def _announce_usable(self) -> None:
        try:
            self.on_usable(self.account_name)
        except Exception:
            log.failure("A listener failed on account {account} becoming usable",
                        account=self.account_name)

    def _record(self) -> Deferred[None]:
        """Store the status beside the credentials (for `xrelay accounts`); never fails."""
        def ignore(failure: Failure) -> None:
            log.failure("Could not store the token status of account {account}",
                        failure, account=self.account_name)
        try:
            return self.grant.record(self.status()).addErrback(ignore)
        except Exception:
            ignore(Failure())
            return succeed(None)


