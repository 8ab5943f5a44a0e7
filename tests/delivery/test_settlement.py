"""
The classification of one attempt (L{xrelay.delivery.settlement.settle}): pure, no
reactor, no spool.  The engine applies it; these tests pin what it decides.
"""

from __future__ import annotations

from xrelay.delivery.settlement import NO_RESULT, settle
from xrelay.envelope import DeliveryResult, FailureKind, Outcome, RecipientResult, Reply

OK = Reply(250, "2.0.0 OK")
LATER = Reply(451, "4.7.0 try later")
NO = Reply(550, "5.1.1 no such user")


def result(*pairs: tuple[str, Outcome, Reply],
           failure: FailureKind = FailureKind.NONE) -> DeliveryResult:
    return DeliveryResult(tuple(RecipientResult(r, o, reply) for r, o, reply in pairs),
                          failure)


def test_each_recipient_lands_by_its_own_reply_and_the_unnamed_wait() -> None:
    settled = settle(("a", "b", "c", "d"), result(
        ("a", Outcome.DELIVERED, OK), ("b", Outcome.TEMPORARY, LATER),
        ("c", Outcome.PERMANENT, NO)), expired=False)
    assert [r.recipient for r in settled.delivered] == ["a"]
    assert [(r.recipient, r.reply) for r in settled.temporary] == [("b", LATER),
                                                                  ("d", NO_RESULT)]
    assert [(f.recipient, f.reply, f.expired) for f in settled.permanent] == [
        ("c", NO, False)]
    assert settled.last_reply(None) == LATER


def test_credential_trouble_never_bounces() -> None:
    settled = settle(("a", "b"), result(("a", Outcome.PERMANENT, NO),
                                        ("b", Outcome.DELIVERED, OK),
                                        failure=FailureKind.AUTHENTICATION), expired=False)
    assert [r.recipient for r in settled.temporary] == ["a"] and not settled.permanent
    assert [r.recipient for r in settled.delivered] == ["b"]


def test_an_expired_entry_fails_what_would_wait() -> None:
    settled = settle(("a",), result(("a", Outcome.TEMPORARY, LATER)), expired=True)
    assert not settled.temporary
    assert [(f.recipient, f.expired) for f in settled.permanent] == [("a", True)]


def test_without_a_stored_bounce_the_failures_wait() -> None:
    settled = settle(("a", "b"), result(("a", Outcome.PERMANENT, NO),
                                        ("b", Outcome.DELIVERED, OK)), expired=False)
    waiting = settled.without_bounce()
    assert not waiting.permanent
    assert [(r.recipient, r.outcome, r.reply) for r in waiting.temporary] == [
        ("a", Outcome.TEMPORARY, NO)]
    assert settle((), result(), expired=False).last_reply(OK) == OK
