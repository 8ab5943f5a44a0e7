"""
What an upstream reply means for the delivery engine: delivered, try again later, or
bounce, and, for whole-attempt failures, why (L{FailureKind}).

The rules are the rows of L{xrelay.replies.KNOWN_REPLIES}; this module only turns a
row's decision into the transport's vocabulary (L{Outcome}, L{FailureKind}), so that
there is one table of provider replies and no second set of patterns here.  Pure
functions: no I/O, and never a token or other secret in a detail text (the texts end up
in logs, bounces and the admin page).
"""

from __future__ import annotations

from xrelay.envelope import FailureKind, Outcome, Reply
from xrelay.replies import Decision, Hold, recognise


def outcome_of(reply: Reply) -> Outcome:
    """
    The outcome for the recipients a reply applies to: 2xx delivered; 5xx permanent
    unless the table says the condition clears up or belongs to the account (a daily
    limit, a restricted mailbox: bouncing would lose mail the account will deliver
    later); everything else (4xx, or a code that makes no sense at that step)
    temporary, because guessing "permanent" would bounce mail we might still deliver.
    """
    if 200 <= reply.code < 300:
        return Outcome.DELIVERED
    if 500 <= reply.code < 600:
        row = recognise(reply)
        if row is not None and row.decision in (Decision.HOLD_ACCOUNT,
                                                Decision.RETRY_MESSAGE):
            return Outcome.TEMPORARY
        return Outcome.PERMANENT
    return Outcome.TEMPORARY


def is_send_as_denied(reply: Reply) -> bool:
    """Exchange's C{554 5.2.252 SendAsDenied; ...} or C{550 5.7.60 SMTP; Client does not
    have permissions to send as this sender} (at MAIL FROM or end of DATA)."""
    row = recognise(reply)
    return reply.code >= 500 and row is not None and row.decision is Decision.HOLD_SENDER


def is_too_big(reply: Reply) -> bool:
    """C{552 5.3.4 Message size exceeds fixed maximum message size} and friends."""
    row = recognise(reply)
    return row is not None and row.name == "too-big"


def is_quota(reply: Reply) -> bool:
    """A 5xx that is really a sending quota (Gmail C{550 5.4.5 Daily user sending
    limit exceeded}, Exchange C{SubmissionQuotaExceeded}): it must be deferred."""
    row = recognise(reply)
    return reply.code >= 500 and row is not None and row.hold is Hold.DAILY_LIMIT


def is_throttling(reply: Reply) -> bool:
    """A reply that asks us to slow down (or wait for a limit) rather than a fault."""
    row = recognise(reply)
    return row is not None and row.hold in (Hold.THROTTLED, Hold.DAILY_LIMIT)


def failure_of(reply: Reply) -> FailureKind:
    """
    The L{FailureKind} of a reply that failed a whole transaction (MAIL FROM, DATA, or
    the end of DATA).  C{NONE} when the reply code says all there is to say.
    """
    row = recognise(reply)
    if row is None:
        return FailureKind.NONE
    if row.decision is Decision.HOLD_SENDER:
        return FailureKind.SEND_AS_DENIED
    if row.name == "too-big":
        return FailureKind.TOO_BIG
    if row.hold in (Hold.THROTTLED, Hold.DAILY_LIMIT):
        return FailureKind.THROTTLED
    if row.hold is not None:
        return FailureKind.ACCOUNT_HELD
    return FailureKind.NONE


def send_as_detail(relay_user: str, sender: str, account: str = "") -> str:
    """
    What an operator must do when the upstream mailbox may not send as the envelope
    sender: the bounce and the admin page show this text.
    """
    row = recognise(Reply(554, "5.2.252 SendAsDenied"))
    assert row is not None
    return row.advice(user=relay_user, sender=sender, account=account or "this account")


def authentication_detail(relay_user: str, reply: Reply, app_only: bool = False,
                          client_id: str = "") -> str:
    """Why a 535 after a token refresh is deferred rather than bounced, and what to check."""
    row = recognise(reply, app_only)
    if row is not None and row.hold is not None:
        return f"The upstream refused AUTH for {relay_user}: {reply}.  " + row.advice(
            user=relay_user, client_id=client_id)
    return (
        f"The upstream refused the OAuth token for {relay_user} twice (the second time "
        f"with a freshly fetched token): {reply}.  Check that SMTP AUTH is enabled for "
        "the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), that the "
        "app has the SMTP.Send (or SMTP.SendAsApp) permission with admin consent, and "
        "for app-only tokens that the app's service principal has been granted access "
        "to the mailbox.  The message stays queued."
    )
