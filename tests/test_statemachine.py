"""
The one state-machine mechanism (L{xrelay.statemachine}) and the tables that use it:
every state/event pair of the token, account and spool-entry tables lands where the
table says, through the objects' own event methods, and nowhere else (L{NoTransition}).
Unit tests: no reactor, the clock is a number.
"""

from __future__ import annotations

from typing import Callable

import pytest

from xrelay.delivery.accounts import HELD, OK, STATES as ACCOUNT_STATES
from xrelay.delivery.accounts import TABLE as ACCOUNT_TABLE
from xrelay.delivery.accounts import AccountHold
from xrelay.lifecycle import LIFECYCLE, TABLE as ENTRY_TABLE, TransitionRefused, allow
from xrelay.statemachine import NoTransition, StateTable
from xrelay.tokens.status import (REFUSED, TABLE as TOKEN_TABLE, Token, TokenLifecycle,
                                  TokenState, refused_event)

S = TokenState
NOW = 10_000.0


def test_a_table_answers_its_rows_and_refuses_the_rest() -> None:
    table = StateTable("door", [("shut", "open", "open"), ("open", "close", "shut")])
    assert table.next("shut", "open") == "open"
    with pytest.raises(NoTransition, match="front: no door transition 'close' from shut"):
        table.next("shut", "close", "front")
    assert table.states() == {"shut", "open"} and table.events() == {"open", "close"}
    with pytest.raises(ValueError, match="two transitions"):
        StateTable("door", [("shut", "open", "open"), ("shut", "open", "shut")])


# -- tokens -------------------------------------------------------------------------


def in_state(state: TokenState) -> TokenLifecycle:
    """A token's lifecycle brought to C{state} through its own events."""
    life = TokenLifecycle("main")
    if state is S.EMPTY:
        return life
    if state is S.FRESH:
        life.signed_in(Token("t", NOW + 3600, NOW), NOW)
    elif state is S.EXPIRING:
        life.signed_in(Token("t", NOW + 100, NOW - 3000), NOW)
    else:
        life.begin_refresh(NOW)
        if state is S.UNAVAILABLE:
            life.failed("busy", NOW)
        elif state in REFUSED:
            life.refused("no", "sign in", NOW, state)
    assert life.state(NOW) is state
    return life


def fresh() -> Token:
    return Token("new", NOW + 3600, NOW)


TOKEN_EVENTS: dict[str, Callable[[TokenLifecycle], object]] = {
    "refresh": lambda life: life.begin_refresh(NOW),
    "refreshed": lambda life: life.refreshed(fresh(), NOW),
    "failed": lambda life: life.failed("busy", NOW),
    "signed_in": lambda life: life.signed_in(fresh(), NOW),
    **{refused_event(r): (lambda life, r=r: life.refused("no", "hint", NOW, r))
       for r in REFUSED},
}


@pytest.mark.parametrize("state", list(S), ids=lambda s: s.value)
@pytest.mark.parametrize("event", sorted(TOKEN_EVENTS) + ["rejected"])
def test_every_token_event_lands_where_the_table_says(state: TokenState,
                                                      event: str) -> None:
    life = in_state(state)
    if event == "rejected":
        life.rejected(NOW)  # a rejection with nothing to forget is ignored, by design
        expected = TOKEN_TABLE.next(state, event) if TOKEN_TABLE.allows(
            state, event) else state
        assert life.state(NOW) is expected
        return
    if not TOKEN_TABLE.allows(state, event):
        with pytest.raises(NoTransition):
            TOKEN_EVENTS[event](life)
        assert life.state(NOW) is state  # nothing changed
        return
    TOKEN_EVENTS[event](life)
    assert life.state(NOW) is TOKEN_TABLE.next(state, event)


def test_a_failure_after_a_refusal_is_unavailable_as_the_table_says() -> None:
    """The disagreement the flags had: refused, refresh, failed showed the refusal."""
    life = in_state(S.CLIENT_SECRET_EXPIRED)
    life.begin_refresh(NOW)
    retry_at = life.failed("temporarily_unavailable", NOW)
    assert life.state(NOW) is S.UNAVAILABLE
    assert life.state(retry_at) is S.EMPTY  # the back-off over: a token is asked again


def test_the_clock_alone_turns_ok_into_expiring_and_no_token() -> None:
    life = TokenLifecycle("main")
    life.signed_in(Token("t", 1000, 0), 0)
    assert [life.state(t) for t in (0, 749, 750, 1000)] == [
        S.FRESH, S.FRESH, S.EXPIRING, S.EMPTY]


def test_the_token_table_covers_every_state() -> None:
    assert TOKEN_TABLE.states() == set(S)
    assert all(TOKEN_TABLE.allows(s, "signed_in") for s in S)


# -- accounts ------------------------------------------------------------------------


def account_in(state: str) -> AccountHold:
    hold = AccountHold("main")
    if state != OK:
        hold._move("hold", state)
    assert hold.state == state
    return hold


ACCOUNT_EVENTS = ["probe", "resume"] + [f"hold: {k}" for k in HELD] + [
    f"probe_failed: {k}" for k in HELD]


@pytest.mark.parametrize("state", ACCOUNT_STATES)
@pytest.mark.parametrize("event", ACCOUNT_EVENTS)
def test_every_account_event_lands_where_the_table_says(state: str, event: str) -> None:
    hold = account_in(state)
    name, _, kind = event.partition(": ")

    def move() -> None:
        hold._move(name, kind or None)

    if not ACCOUNT_TABLE.allows(state, event):
        with pytest.raises(NoTransition):
            move()
        assert hold.state == state
        return
    move()
    assert hold.state == ACCOUNT_TABLE.next(state, event)


# -- spool entries -------------------------------------------------------------------


@pytest.mark.parametrize("old", sorted(LIFECYCLE))
def test_every_entry_move_is_allowed_exactly_as_the_lifecycle_says(old: str) -> None:
    targets = set(LIFECYCLE) | {"delivered", "corrupt"}
    for new in sorted(targets):
        if new in LIFECYCLE[old]:
            allow(old, new, "x")
            assert ENTRY_TABLE.next(old, new) == new
        else:
            with pytest.raises(TransitionRefused, match=f"x: no transition from {old}"):
                allow(old, new, "x")
    assert TransitionRefused is NoTransition
