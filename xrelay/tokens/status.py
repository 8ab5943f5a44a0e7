"""
The life of one account's access token, as a state machine, and the status it reports.

States and the events that move between them are listed once, in L{TRANSITIONS}::

    no token ──refresh──▶ refreshing ──refreshed──▶ ok ──(time)──▶ expiring
        ▲                   │   │  ▲                │                │
        │              failed  refused └──refresh───┴────────────────┘
        │                   ▼   ▼
        │          unavailable  refused: needs sign-in | client secret rejected |
        │                       client secret expired | certificate rejected | ...
        │                                 ──signed_in──▶ ok
        └──rejected── ok / expiring

A refusal is named for what it is (L{REFUSED}; the platform's AADSTS code decides which,
see L{xrelay.tokens.aadsts}): "needs sign-in" only where a person signing in helps
(delegated flows); an app's wrong or expired secret is "client secret rejected" or
"client secret expired".

"ok" becomes "expiring" by the passing of time alone (the refresh margin before expiry),
so those two are computed from the clock rather than stored.  This module decides and
remembers; it does no I/O and never sees the clock except through the C{now} it is given,
so it is tested without a reactor.  It must never hold anything but the access token
itself (kept out of C{repr}), and never a refresh token or secret.
"""

from __future__ import annotations

import enum

import attrs


class TokenState(enum.Enum):
    EMPTY = "no token"
    FRESH = "ok"
    EXPIRING = "expiring"
    REFRESHING = "refreshing"
    UNAVAILABLE = "unavailable"
    NEEDS_SIGN_IN = "needs sign-in"
    CLIENT_SECRET_REJECTED = "client secret rejected"
    CLIENT_SECRET_EXPIRED = "client secret expired"
    CERTIFICATE_REJECTED = "certificate rejected"
    APP_NOT_FOUND = "app not found in tenant"
    CONSENT_MISSING = "admin consent missing"
    MFA_REQUIRED = "MFA required"
    REFRESH_TOKEN_EXPIRED = "refresh token expired"
    CONDITIONAL_ACCESS = "blocked by conditional access"
    APP_MISCONFIGURED = "app registration misconfigured"
    TENANT_NOT_FOUND = "tenant not found"
    USER_BLOCKED = "user sign-in blocked"
    #: An app-only refusal that no AADSTS row explains.
    CREDENTIALS_REFUSED = "credentials refused"


S = TokenState

#: The states of a permanent refusal: an operator must act, the account's mail waits.
REFUSED: frozenset[TokenState] = frozenset({
    S.NEEDS_SIGN_IN, S.CLIENT_SECRET_REJECTED, S.CLIENT_SECRET_EXPIRED,
    S.CERTIFICATE_REJECTED, S.APP_NOT_FOUND, S.CONSENT_MISSING, S.MFA_REQUIRED,
    S.REFRESH_TOKEN_EXPIRED, S.CONDITIONAL_ACCESS, S.CREDENTIALS_REFUSED,
    S.APP_MISCONFIGURED, S.TENANT_NOT_FOUND, S.USER_BLOCKED})

#: States in which the account delivers mail.
USABLE: frozenset[TokenState] = frozenset({S.FRESH, S.EXPIRING, S.REFRESHING})

#: event -> (states it may happen in, state it leads to).  C{None} as the target means
#: "whatever the clock says now" (ok or expiring); L{REFUSED} as the target means "the
#: refusal the platform's error names".
TRANSITIONS: dict[str, tuple[frozenset[TokenState], TokenState | frozenset[TokenState] | None]] = {
    "refresh": (frozenset({S.EMPTY, S.FRESH, S.EXPIRING, S.UNAVAILABLE}) | REFUSED,
                S.REFRESHING),
    "refreshed": (frozenset({S.REFRESHING}), None),
    "failed": (frozenset({S.REFRESHING}), S.UNAVAILABLE),
    "refused": (frozenset({S.REFRESHING}), REFUSED),
    "signed_in": (frozenset(S), None),
    "rejected": (frozenset({S.FRESH, S.EXPIRING, S.UNAVAILABLE}), S.EMPTY),
}

#: Back-off after temporary failures of the identity platform: first delay, ceiling.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0
#: Refresh this long before expiry (at most), or a quarter of the token's lifetime for
#: short-lived tokens, so that a token is never used in its last moments.
REFRESH_MARGIN = 300.0


class InvalidTransition(Exception):
    """A programming error: an event that cannot happen in the current state."""


@attrs.frozen
class TokenStatus:
    """
    What the admin page, the metrics and C{xrelay accounts} show for one account.

    @ivar state: one of L{TokenState}'s values ("ok", "expiring", "needs sign-in", ...).
    @ivar expires_at: POSIX time the current access token expires, if there is one.
    @ivar last_refresh: POSIX time of the last successful token request.
    @ivar last_error: the last failure, without secrets.
    @ivar hint: what an operator should do, when something must be done.
    """

    account: str
    state: str
    expires_at: float | None = None
    last_refresh: float | None = None
    last_error: str | None = None
    hint: str | None = None
    provider: str | None = None
    flow: str | None = None
    #: POSIX time since which the account has had no usable token (failures or a
    #: refusal), for the health check's grace period; C{None} while it works.
    failing_since: float | None = None


@attrs.frozen
class Token:
    """An access token and when it stops working."""

    value: str = attrs.field(repr=False)
    expires_at: float
    obtained_at: float

    @property
    def refresh_at(self) -> float:
        lifetime = max(0.0, self.expires_at - self.obtained_at)
        return self.expires_at - min(REFRESH_MARGIN, lifetime / 4)


@attrs.define
class TokenLifecycle:
    """
    The state of one account's token; every change goes through L{_move}.
    """

    account: str
    token: Token | None = None
    refreshing: bool = False
    sign_in_hint: str | None = None
    retry_at: float | None = None
    backoff: float = 0.0
    last_refresh: float | None = None
    last_error: str | None = None
    #: Which refusal (one of L{REFUSED}) while C{sign_in_hint} is set.
    refusal: TokenState = S.NEEDS_SIGN_IN
    failing_since: float | None = None

    def state(self, now: float) -> TokenState:
        if self.sign_in_hint is not None and not self.refreshing:
            return self.refusal
        if self.refreshing:
            return S.REFRESHING
        if self.retry_at is not None and now < self.retry_at:
            return S.UNAVAILABLE
        if self.token is None or now >= self.token.expires_at:
            return S.EMPTY
        if now >= self.token.refresh_at:
            return S.EXPIRING
        return S.FRESH

    def usable_token(self, now: float) -> Token | None:
        """The current token if it has not expired (even if a refresh is due)."""
        if self.token is not None and now < self.token.expires_at:
            return self.token
        return None

    def _move(self, event: str, now: float) -> TokenState:
        allowed, target = TRANSITIONS[event]
        current = self.state(now)
        if current not in allowed:
            raise InvalidTransition(f"{event} in state {current.value}")
        if isinstance(target, frozenset):
            return self.refusal
        return target if target is not None else S.FRESH

    # -- events ---------------------------------------------------------------

    def begin_refresh(self, now: float) -> None:
        self._move("refresh", now)
        self.refreshing = True

    def refreshed(self, token: Token, now: float) -> None:
        self._move("refreshed", now)
        self._have(token, now)

    def failed(self, error: str, now: float) -> float:
        """A temporary failure: back off.  Returns when to try again."""
        self._move("failed", now)
        self.refreshing = False
        self.last_error = error
        self._failing(now)
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 if self.backoff else FIRST_BACKOFF)
        self.retry_at = now + self.backoff
        return self.retry_at

    def refused(self, error: str, hint: str, now: float,
                state: TokenState = S.NEEDS_SIGN_IN) -> None:
        """A permanent refusal, named C{state} (one of L{REFUSED})."""
        if state not in REFUSED:
            raise InvalidTransition(f"refused into {state.value}")
        self._move("refused", now)
        self.refreshing = False
        self.token = None
        self.last_error = error
        self.sign_in_hint = hint
        self.refusal = state
        self._failing(now)

    def _failing(self, now: float) -> None:
        if self.failing_since is None:
            self.failing_since = now

    def signed_in(self, token: Token, now: float) -> None:
        self._move("signed_in", now)
        self._have(token, now)

    def rejected(self, now: float) -> None:
        """The upstream refused the current token: forget it."""
        if self.state(now) not in TRANSITIONS["rejected"][0]:
            return  # already being replaced, or never had one: nothing to forget
        self._move("rejected", now)
        self.token = None
        self.retry_at = None

    def _have(self, token: Token, now: float) -> None:
        self.refreshing = False
        self.token = token
        self.sign_in_hint = None
        self.retry_at = None
        self.backoff = 0.0
        self.last_refresh = now
        self.last_error = None
        self.refusal = S.NEEDS_SIGN_IN
        self.failing_since = None

    def status(self, now: float, provider: str | None = None,
               flow: str | None = None) -> TokenStatus:
        return TokenStatus(
            account=self.account,
            state=self.state(now).value,
            expires_at=self.token.expires_at if self.token else None,
            last_refresh=self.last_refresh,
            last_error=self.last_error,
            hint=self.sign_in_hint,
            provider=provider,
            flow=flow,
            failing_since=self.failing_since,
        )
