"""
The life of one account's access token, as a state machine, and the status it reports.

States and the events that move between them are listed once, in L{TABLE}::

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
from typing import Iterator

import attrs

from xrelay.records import TokenStatus
from xrelay.statemachine import NoTransition, StateTable


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

def _rows() -> Iterator[tuple[TokenState, str, TokenState]]:
    """
    The one table of token transitions, as C{(state, event, next state)}.  The states
    on the left are those L{TokenLifecycle.state} shows; "refreshed" and "signed_in"
    lead to "ok", which the clock alone turns into "expiring" (and a token past its
    expiry into "no token").  A refusal is one event per refusal state, named
    C{"refused: <state>"} (the platform's error names which).
    """
    for state in frozenset({S.EMPTY, S.FRESH, S.EXPIRING, S.UNAVAILABLE}) | REFUSED:
        yield state, "refresh", S.REFRESHING
    yield S.REFRESHING, "refreshed", S.FRESH
    yield S.REFRESHING, "failed", S.UNAVAILABLE
    for refusal in REFUSED:
        yield S.REFRESHING, refused_event(refusal), refusal
    for state in S:
        yield state, "signed_in", S.FRESH
    for state in (S.FRESH, S.EXPIRING, S.UNAVAILABLE):
        yield state, "rejected", S.EMPTY


def refused_event(state: TokenState) -> str:
    """The event of a permanent refusal named C{state}."""
    return f"refused: {state.value}"


#: Every transition of an account's token (L{xrelay.statemachine}).
TABLE: StateTable[TokenState] = StateTable("token", _rows())

#: Back-off after temporary failures of the identity platform: first delay, ceiling.
FIRST_BACKOFF = 5.0
MAX_BACKOFF = 300.0
#: Refresh this long before expiry (at most), or a quarter of the token's lifetime for
#: short-lived tokens, so that a token is never used in its last moments.
REFRESH_MARGIN = 300.0


#: The one error of every state table, under the name this module's callers know.
InvalidTransition = NoTransition


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
    The state of one account's token.  The state is the table's output: each event
    moves L{held} through L{TABLE}, and only the passing of time refines it (L{state}).
    """

    account: str
    token: Token | None = None
    #: The state the last event led to (L{TABLE}'s output).
    held: TokenState = S.EMPTY
    sign_in_hint: str | None = None
    retry_at: float | None = None
    backoff: float = 0.0
    last_refresh: float | None = None
    last_error: str | None = None
    #: Which refusal (one of L{REFUSED}) was the last one.
    refusal: TokenState = S.NEEDS_SIGN_IN
    failing_since: float | None = None

    @property
    def refreshing(self) -> bool:
        return self.held is S.REFRESHING

    def state(self, now: float) -> TokenState:
        """
        L{held}, as the clock shows it: a token is "ok" until its refresh is due
        ("expiring") and "no token" once expired; a back-off ("unavailable") ends at
        C{retry_at}, after which the token, if any, shows again.
        """
        held = self.held
        if held is S.UNAVAILABLE and (self.retry_at is None or now >= self.retry_at):
            held = S.FRESH
        if held is not S.FRESH:
            return held
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

    def _move(self, event: str, now: float) -> None:
        self.held = TABLE.next(self.state(now), event, self.account)

    # -- events ---------------------------------------------------------------

    def begin_refresh(self, now: float) -> None:
        self._move("refresh", now)

    def refreshed(self, token: Token, now: float) -> None:
        self._move("refreshed", now)
        self._have(token, now)

    def failed(self, error: str, now: float) -> float:
        """A temporary failure: back off.  Returns when to try again."""
        self._move("failed", now)
        self.last_error = error
        self._failing(now)
        self.backoff = min(MAX_BACKOFF, self.backoff * 2 if self.backoff else FIRST_BACKOFF)
        self.retry_at = now + self.backoff
        return self.retry_at

    def refused(self, error: str, hint: str, now: float,
                state: TokenState = S.NEEDS_SIGN_IN) -> None:
        """A permanent refusal, named C{state} (one of L{REFUSED})."""
        if state not in REFUSED:
            raise NoTransition(f"{self.account}: refused into {state.value}", state,
                               "refused")
        self._move(refused_event(state), now)
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
        if not TABLE.allows(self.state(now), "rejected"):
            return  # already being replaced, or never had one: nothing to forget
        self._move("rejected", now)
        self.token = None
        self.retry_at = None

    def _have(self, token: Token, now: float) -> None:
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
