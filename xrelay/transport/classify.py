"""
What an upstream reply means for the delivery engine: delivered, try again later, or
bounce, and, for whole-attempt failures, why (L{FailureKind}).

Pure functions over L{Reply} values, so the rules (and the operator-facing texts) are
tested without sockets.  This module must never do I/O, and never put a token or any
other secret into a detail text: the texts end up in logs, bounces and the admin page.
"""

from __future__ import annotations

import re

from xrelay.envelope import FailureKind, Outcome, Reply

#: Replies meaning "slow down", not "this message is bad": deferring (not bouncing) is
#: the only correct answer, even for the 5xx quota replies Gmail and Exchange send.
_THROTTLING = re.compile(
    r"rate|too many (?:connections|messages|sessions|concurrent)|try again later|throttl|quota|limit exceeded|exceeded the|"
    r"server busy|SubmissionQuotaExceeded|thread limit",
    re.IGNORECASE,
)
#: Quota replies that are 5xx upstream but clear up by themselves (daily sending limits).
_QUOTA_ENHANCED = {"5.4.5", "5.2.2"}
_QUOTA_TEXT = re.compile(r"quota|SubmissionQuotaExceeded|sending limit", re.IGNORECASE)


def outcome_of(reply: Reply) -> Outcome:
    """
    The outcome for the recipients a reply applies to: 2xx delivered, 5xx permanent,
    and everything else (4xx, or a reply code that makes no sense at that step)
    temporary, because guessing "permanent" would bounce mail we might still deliver.
    """
    if 200 <= reply.code < 300:
        return Outcome.DELIVERED
    if 500 <= reply.code < 600 and not is_quota(reply):
        return Outcome.PERMANENT
    return Outcome.TEMPORARY


def is_send_as_denied(reply: Reply) -> bool:
    """Exchange Online's C{554 5.2.252 SendAsDenied; ...} (at MAIL FROM or end of DATA)."""
    return reply.code >= 500 and (
        reply.enhanced == "5.2.252" or "sendasdenied" in reply.text.lower()
    )


def is_too_big(reply: Reply) -> bool:
    """C{552 5.3.4 Message size exceeds fixed maximum message size} and friends."""
    return reply.code == 552 or reply.enhanced in ("5.3.4", "5.2.3")


def is_quota(reply: Reply) -> bool:
    """A 5xx that is really a sending quota (Gmail C{550 5.4.5 Daily user sending
    quota exceeded}, Exchange C{SubmissionQuotaExceeded}): it must be deferred."""
    return reply.code >= 500 and (
        reply.enhanced in _QUOTA_ENHANCED and bool(_QUOTA_TEXT.search(reply.text))
        or "submissionquotaexceeded" in reply.text.lower()
    )


def is_throttling(reply: Reply) -> bool:
    """A temporary reply that asks us to slow down rather than reporting a fault."""
    return (400 <= reply.code < 500 and bool(_THROTTLING.search(reply.text))) or is_quota(
        reply
    )


def failure_of(reply: Reply) -> FailureKind:
    """
    The L{FailureKind} of a reply that failed a whole transaction (MAIL FROM, DATA, or
    the end of DATA).  C{NONE} when the reply code says all there is to say.
    """
    if is_send_as_denied(reply):
        return FailureKind.SEND_AS_DENIED
    if is_too_big(reply):
        return FailureKind.TOO_BIG
    if is_throttling(reply):
        return FailureKind.THROTTLED
    return FailureKind.NONE


def send_as_detail(relay_user: str, sender: str) -> str:
    """
    What an operator must do when the upstream mailbox may not send as the envelope
    sender: the bounce and the admin page show this text.
    """
    return (
        f"The upstream mailbox {relay_user} is not allowed to send as {sender} "
        "(Send As permission missing).  Either grant it in Exchange Online PowerShell: "
        f"Add-RecipientPermission -Identity {sender} -Trustee {relay_user} "
        "-AccessRights SendAs (it can take up to an hour to apply), or set "
        "rewrite_from = true on this account so that xrelay sends from "
        f"{relay_user} and puts {sender} in Reply-To."
    )


def authentication_detail(relay_user: str, reply: Reply) -> str:
    """Why a 535 after a token refresh is deferred rather than bounced, and what to check."""
    return (
        f"The upstream refused the OAuth token for {relay_user} twice (the second time "
        f"with a freshly fetched token): {reply}.  Check that SMTP AUTH is enabled for "
        "the mailbox (Set-CASMailbox -SmtpClientAuthenticationDisabled $false), that the "
        "app has the SMTP.Send (or SMTP.SendAsApp) permission with admin consent, and "
        "for app-only tokens that the app's service principal has been granted access "
        "to the mailbox.  The message stays queued."
    )
