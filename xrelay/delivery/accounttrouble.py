"""
What one attempt's result says about its upstream account, as pure functions of the
account and the result: a hold (and of which kind), a Send As refusal, or nothing (the
result is about the message or its recipients only); the fix to show; and the result
made temporary while the account is held.

The reply texts' meanings are L{xrelay.replies}' table; what to do about them (holding,
probing, resuming, logging, saving) is L{xrelay.delivery.accounts.AccountStates}'.  This
module must never keep state, log or touch a file.
"""

from __future__ import annotations

import attrs

from xrelay.config import AccountConfig
from xrelay.envelope import DeliveryResult, FailureKind, Outcome, RecipientResult, Reply
from xrelay.replies import Decision, Hold, KnownReply, recognise

__all__ = ["account_fix", "account_trouble", "could_not_connect", "delivered_any",
           "temporary"]


def account_trouble(account: AccountConfig, result: DeliveryResult
                    ) -> tuple[Hold | None, KnownReply | None, Reply]:
    """
    (hold kind, row, reply) when the result is about the account; (None, row,
    reply) for a Send As refusal; (None, None, ...) when the result is about the
    message or its recipients only.
    """
    undelivered = [r for r in result.recipients if r.outcome is not Outcome.DELIVERED]
    if not undelivered:
        return None, None, Reply(250, "")
    reply = undelivered[0].reply
    app_only = account.flow == "client_credentials"
    if result.failure is FailureKind.CONNECTION and could_not_connect(reply):
        return Hold.UNREACHABLE, None, reply
    for r in undelivered:
        row = recognise(r.reply, app_only)
        if row is None:
            continue
        if row.decision is Decision.HOLD_ACCOUNT and row.hold is not None:
            return row.hold, row, r.reply
        if row.decision is Decision.HOLD_SENDER:
            return None, row, r.reply
    return None, None, reply


def account_fix(account: AccountConfig, row: KnownReply | None) -> str:
    """The fix a hold shows: the known reply's advice, else how to make the upstream
    reachable (no known reply: it could not be reached)."""
    if row is not None:
        return row.advice(user=account.user, client_id=account.client_id or "",
                          account=account.name)
    return _UNREACHABLE_FIX.format(where=f"{account.smtp_host}:{account.smtp_port}"
                                   if account.transport == "smtp" else account.graph_url,
                                   account=account.name)


_UNREACHABLE_FIX = (
    "xrelay cannot reach {where}: check the network, DNS, a firewall or proxy in between, "
    "and smtp_host/smtp_port (or graph_url) of account {account}.  The account backs off "
    "as a whole: one probe connection per back-off step, the mail stays queued.")


#: The steps of setting up an upstream connection, as the transport names them in its
#: "4.4.2 Upstream <host>: <why> during <step>" replies (L{xrelay.transport.pool}).
_SETUP_STEPS = ("connect", "TLS handshake", "greeting", "EHLO", "STARTTLS", "AUTH")


def could_not_connect(reply: Reply) -> bool:
    """
    The upstream cannot be reached or set up (refused, timed out, dropped before AUTH
    was done): the account backs off as a whole.  A connection lost in the middle of a
    transaction is that message's trouble; the token endpoint being down is the token
    states' (its replies are 4.7.0, not 4.4.2).
    """
    if reply.enhanced != "4.4.2":
        return False
    step = reply.text.rsplit(" during ", 1)[-1].strip() if " during " in reply.text else ""
    return step in _SETUP_STEPS or step.startswith("AUTH") or \
        reply.text.startswith("4.4.2 Graph request")


def delivered_any(result: DeliveryResult) -> bool:
    return any(r.outcome is Outcome.DELIVERED for r in result.recipients)


def temporary(result: DeliveryResult, failure: FailureKind, detail: str
               ) -> DeliveryResult:
    """The same result with nothing permanent: held mail waits, it is not bounced."""
    recipients = tuple(
        r if r.outcome is not Outcome.PERMANENT else
        RecipientResult(r.recipient, Outcome.TEMPORARY, r.reply)
        for r in result.recipients)
    return attrs.evolve(result, recipients=recipients, failure=failure, detail=detail)
