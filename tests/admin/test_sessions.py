"""
Admin sessions expire when idle and after a maximum age (on a task.Clock), signing in
replaces the identifier, and CSRF tokens compare exactly.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from xrelay.admin.sessions import IDLE_TIMEOUT, MAX_AGE, SessionStore


def test_idle_session_expires() -> None:
    clock = Clock()
    store = SessionStore(clock)
    session = store.new()
    clock.advance(IDLE_TIMEOUT - 1)
    assert store.get(session.identifier) is session
    clock.advance(IDLE_TIMEOUT + 1)
    assert store.get(session.identifier) is None


def test_busy_session_still_ends_at_max_age() -> None:
    clock = Clock()
    store = SessionStore(clock)
    session = store.new()
    while clock.seconds() < MAX_AGE - 60:
        clock.advance(60)
        assert store.get(session.identifier) is session
    clock.advance(120)
    assert store.get(session.identifier) is None


def test_signing_in_replaces_the_identifier_and_token() -> None:
    store = SessionStore(Clock())
    anonymous = store.new()
    signed_in = store.authenticate(anonymous)
    assert signed_in.authenticated
    assert signed_in.identifier != anonymous.identifier
    assert signed_in.csrf_token != anonymous.csrf_token
    assert store.get(anonymous.identifier) is None
    assert store.get(signed_in.identifier) is signed_in


def test_csrf_comparison() -> None:
    session = SessionStore(Clock()).new()
    assert session.csrf_matches(session.csrf_token)
    assert not session.csrf_matches(session.csrf_token[:-1])
    assert not session.csrf_matches("")
    assert not session.csrf_matches(None)
    assert not session.csrf_matches("é" * 10)
    assert session.csrf_token not in repr(session)
    assert session.identifier not in repr(session)
