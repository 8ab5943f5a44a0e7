"""
The token state machine and L{RefreshingTokenSource}'s timing, with a L{task.Clock} and a
grant that answers when the test says so (the real grants are tested against the sandbox
in test_microsoft.py and test_google.py).
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import implementer

from xrelay.tokens import NeedsSignIn, TokenUnavailable
from xrelay.tokens.errors import GrantRefused, GrantUnavailable
from xrelay.tokens.source import GrantResult, ITokenGrant, RefreshingTokenSource
from xrelay.tokens.status import (FIRST_BACKOFF, InvalidTransition, Token, TokenLifecycle,
                                  TokenState)


@implementer(ITokenGrant)
@attrs.define
class ScriptedGrant:
    """Each fetch waits until the test fires it: the platform's answers, scripted."""

    hint: str = "run `xrelay login main`"
    pending: list[tuple[bool, Deferred[GrantResult]]] = attrs.field(factory=list)
    changed: bool = False
    recorded: list[Any] = attrs.field(factory=list)

    def fetch(self, force: bool) -> Deferred[GrantResult]:
        d: Deferred[GrantResult] = Deferred()
        self.pending.append((force, d))
        return d

    def credentials_changed(self) -> bool:
        return self.changed

    def record(self, status: Any) -> Deferred[None]:
        self.recorded.append(status)
        return succeed(None)

    def answer(self, token: str, lifetime: float = 3600) -> bool:
        force, d = self.pending.pop(0)
        d.callback(GrantResult(token, lifetime))
        return force

    def refuse(self, reason: str = "invalid_grant: AADSTS50173: revoked") -> None:
        self.pending.pop(0)[1].errback(GrantRefused(reason))

    def unavailable(self, reason: str = "temporarily_unavailable: AADSTS90033") -> None:
        self.pending.pop(0)[1].errback(GrantUnavailable(reason))


def make(clock: Clock) -> tuple[RefreshingTokenSource, ScriptedGrant, list[str]]:
    grant = ScriptedGrant()
    usable: list[str] = []
    source = RefreshingTokenSource("main", grant, clock, on_usable=usable.append)
    return source, grant, usable


def result_of(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def test_transitions_are_checked() -> None:
    """Events that cannot happen in a state are programming errors, not silent flags."""
    life = TokenLifecycle("main")
    with pytest.raises(InvalidTransition):
        life.refreshed(Token("t", 100, 0), 0)
    life.begin_refresh(0)
    assert life.state(0) is TokenState.REFRESHING
    with pytest.raises(InvalidTransition):
        life.begin_refresh(0)
    life.refreshed(Token("t", 1000, 0), 0)
    assert life.state(0) is TokenState.FRESH
    # a quarter of the lifetime (250s) before expiry for short tokens
    assert life.state(749) is TokenState.FRESH
    assert life.state(750) is TokenState.EXPIRING
    assert life.state(1000) is TokenState.EMPTY


def test_long_tokens_refresh_five_minutes_ahead() -> None:
    assert Token("t", 3600, 0).refresh_at == 3300


def test_concurrent_callers_share_one_refresh() -> None:
    clock = Clock()
    source, grant, _ = make(clock)
    waiting = [source.access_token() for _ in range(20)]
    assert len(grant.pending) == 1
    assert source.status().state == "refreshing"
    grant.answer("token-1")
    assert [result_of(d) for d in waiting] == ["token-1"] * 20
    # and later callers get it without asking the grant
    assert result_of(source.access_token()) == "token-1"
    assert grant.pending == []


def test_expiring_token_is_refreshed_before_use() -> None:
    """Ahead of expiry the timer refreshes (forced: msal must not return its cache)."""
    clock = Clock()
    source, grant, _ = make(clock)
    d = source.access_token()
    assert grant.answer("token-1", lifetime=3600) is False
    assert result_of(d) == "token-1"
    clock.advance(3299)
    assert grant.pending == []
    clock.advance(1)  # 300s before expiry: the timer starts the refresh
    assert len(grant.pending) == 1
    d = source.access_token()  # a caller now waits for the new token, not the old one
    assert not d.called
    assert grant.answer("token-2") is True
    assert result_of(d) == "token-2"


def test_expiring_token_is_refreshed_on_use_without_timer() -> None:
    clock = Clock()
    source, grant, _ = make(clock)
    source.access_token()
    grant.answer("token-1", lifetime=3600)
    source.stop()  # no timer: the caller's own request must notice the expiry margin
    clock.advance(3400)
    assert source.status().state == "expiring"
    d = source.access_token()
    assert grant.answer("token-2") is True
    assert result_of(d) == "token-2"


def test_temporary_failure_backs_off() -> None:
    clock = Clock()
    source, grant, usable = make(clock)
    d = source.access_token()
    grant.unavailable()
    failure = result_of(d)
    assert failure.check(TokenUnavailable)
    assert failure.value.retry_at == FIRST_BACKOFF
    assert "temporarily_unavailable" in str(failure.value)
    # while backing off, callers are answered at once without asking the platform
    again = result_of(source.access_token())
    assert again.check(TokenUnavailable)
    assert grant.pending == []
    assert source.status().state == "unavailable"
    clock.advance(FIRST_BACKOFF)
    d = source.access_token()
    grant.unavailable()
    assert result_of(d).value.retry_at == FIRST_BACKOFF + 2 * FIRST_BACKOFF  # doubled
    clock.advance(2 * FIRST_BACKOFF)
    d = source.access_token()
    grant.answer("token-1")
    assert result_of(d) == "token-1"
    assert usable == ["main"]  # the delivery engine hears that the account is back


def test_temporary_failure_keeps_a_still_valid_token() -> None:
    clock = Clock()
    source, grant, _ = make(clock)
    source.access_token()
    grant.answer("token-1", lifetime=3600)
    clock.advance(3300)
    grant.unavailable()  # the timer's refresh failed
    assert result_of(source.access_token()) == "token-1"
    clock.advance(FIRST_BACKOFF)  # the retry timer
    grant.answer("token-2")
    assert result_of(source.access_token()) == "token-2"


def test_refusal_needs_sign_in_until_credentials_change() -> None:
    clock = Clock()
    source, grant, usable = make(clock)
    d = source.access_token()
    grant.refuse()
    failure = result_of(d)
    assert failure.check(NeedsSignIn)
    assert str(failure.value) == ("account 'main' needs sign-in (invalid_grant: "
                                  "AADSTS50173: revoked): run `xrelay login main`")
    status = source.status()
    assert (status.state, status.hint) == ("needs sign-in", "run `xrelay login main`")
    assert status.last_error == "invalid_grant: AADSTS50173: revoked"
    # nobody signed in: no more requests to the platform, however often asked
    for _ in range(3):
        assert result_of(source.access_token()).check(NeedsSignIn)
    source.check_signed_in()
    assert grant.pending == []
    # somebody signed in (maybe another process): the periodic check resumes
    grant.changed = True
    source.check_signed_in()
    assert grant.answer("token-after-login") is False
    assert usable == ["main"]
    assert result_of(source.access_token()) == "token-after-login"
    assert source.status().state == "ok"


def test_rejected_token_is_replaced() -> None:
    clock = Clock()
    source, grant, _ = make(clock)
    source.access_token()
    grant.answer("token-1")
    source.token_rejected("some-older-token")  # not the current one: kept
    assert result_of(source.access_token()) == "token-1"
    source.token_rejected("token-1")
    d = source.access_token()
    assert grant.answer("token-2") is True  # forced past msal's own cache
    assert result_of(d) == "token-2"


def test_repr_and_status_hold_no_token() -> None:
    clock = Clock()
    source, grant, _ = make(clock)
    source.access_token()
    grant.answer("secret-token-value")
    assert "secret-token-value" not in repr(source)
    assert "secret-token-value" not in repr(source.status())
    assert "secret-token-value" not in repr(grant.recorded)


def test_sources_provide_the_token_source_interface() -> None:
    from zope.interface.verify import verifyObject

    from xrelay.interfaces import ITokenSource
    source, grant, _ = make(Clock())
    assert verifyObject(ITokenSource, source)
    assert verifyObject(ITokenGrant, grant)
