"""
The life of one account's access token, as a state machine, and the status it reports.

States and the events that move between them are listed once, in L{TRANSITIONS}::

    no token ──refresh──▶ refreshing ──refreshed──▶ ok ──(time)──▶ expiring
        ▲                   │   │  ▲                │                │
        │              failed  refused └──refresh───┴────────────────┘
        │                   ▼   ▼
        │          unavailable  needs sign-in ──signed_in──▶ ok
        └──rejected── ok / expiring

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


S = TokenState

#: event -> (states it may happen in, state it leads to).  C{None} as the target means
#: "whatever the clock says now" (ok or expiring).
TRANSITIONS: dict[str, tuple[frozenset[TokenState], TokenState | None]] = {
    "refresh": (frozenset({S.EMPTY, S.FRESH, S.EXPIRING, S.UNAVAILABLE, S.NEEDS_SIGN_IN}),
                S.REFRESHING),
    "refreshed": (frozenset({S.REFRESHING}), None),
    "failed": (frozenset({S.REFRESHING}), S.UNAVAILABLE),
    "refused": (frozenset({S.REFRESHING}), S.NEEDS_SIGN_IN),
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

    def state(self, now: float) -> TokenState:
        if self.sign_in_hint is not None and not self.refreshing:
            return S.NEEDS_SIGN_IN
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
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 if self.backoff else FIRST_BACKOFF)
        self.retry_at = now + self.backoff
        return self.retry_at

    def refused(self, error: str, hint: str, now: float) -> None:
        self._move("refused", now)
        self.refreshing = False
        self.token = None
        self.last_error = error
        self.sign_in_hint = hint

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
        )
