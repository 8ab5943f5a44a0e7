"""
What one delivery attempt came to for each recipient of a spool entry: delivered,
waiting for another attempt, or failed for good (and to be bounced).

A pure classification: the engine (L{xrelay.delivery.engine.DeliveryEngine}) asks it
and then applies the answer (the spool record, the bounce, the schedule, the report).
This module must never touch the spool, the clock or the network.
"""

from __future__ import annotations

import attrs

from xrelay.delivery.bounce import FailedRecipient
from xrelay.envelope import DeliveryResult, FailureKind, Outcome, RecipientResult, Reply

__all__ = ["NO_RESULT", "TOKEN_TROUBLE", "Settlement", "settle"]

#: Failures that mean "our credentials", never "this message": defer, never bounce.
TOKEN_TROUBLE = (FailureKind.NEEDS_SIGN_IN, FailureKind.AUTHENTICATION)

#: A recipient the transport reported nothing about: tried again later.
NO_RESULT = Reply(451, "4.3.0 The upstream gave no result for this recipient")


@attrs.frozen
class Settlement:
    """The recipients of one attempt, by what happens to them next."""

    delivered: tuple[RecipientResult, ...] = ()
    temporary: tuple[RecipientResult, ...] = ()
    permanent: tuple[FailedRecipient, ...] = ()

    def without_bounce(self) -> "Settlement":
        """
        The bounce for the permanent failures could not be stored (full disk): those
        recipients wait like temporary failures and are tried again with back-off.
        """
        waiting = tuple(RecipientResult(f.recipient, Outcome.TEMPORARY, f.reply)
                        for f in self.permanent)
        return attrs.evolve(self, temporary=self.temporary + waiting, permanent=())

    def last_reply(self, previous: Reply | None) -> Reply | None:
        """The reply the entry's record shows: the first problem, else the 2xx."""
        problems = [r.reply for r in self.temporary] + [f.reply for f in self.permanent]
        if problems:
            return problems[0]
        return self.delivered[0].reply if self.delivered else previous


def settle(recipients: tuple[str, ...], result: DeliveryResult,
           expired: bool) -> Settlement:
    """
    Sort the entry's C{recipients} by C{result}.

    A recipient the result does not name waits (L{NO_RESULT}); with credential trouble
    (L{TOKEN_TROUBLE}) nobody is bounced, whatever the replies say; and when the entry
    is C{expired} (older than C{max_age}) what would wait fails for good instead.
    """
    by_recipient = {r.recipient: r for r in result.recipients}
    delivered: list[RecipientResult] = []
    temporary: list[RecipientResult] = []
    permanent: list[FailedRecipient] = []
    for recipient in recipients:
        r = by_recipient.get(recipient) or RecipientResult(recipient, Outcome.TEMPORARY,
                                                           NO_RESULT)
        outcome = r.outcome
        if result.failure in TOKEN_TROUBLE and outcome is not Outcome.DELIVERED:
            outcome = Outcome.TEMPORARY
        if outcome is Outcome.DELIVERED:
            delivered.append(r)
        elif outcome is Outcome.TEMPORARY:
            temporary.append(r)
        else:
            permanent.append(FailedRecipient(recipient, r.reply))
    if temporary and expired:
        permanent += [FailedRecipient(r.recipient, r.reply, expired=True)
                      for r in temporary]
        temporary = []
    return Settlement(tuple(delivered), tuple(temporary), tuple(permanent))
