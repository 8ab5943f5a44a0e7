"""
What the message trace records, as plain values: the accepted message, and the names of
the outcomes a message can end in.

Building an L{AcceptedMessage} must stay cheap (it happens on the reactor thread when a
message is committed): it copies references and does no parsing; the header fields are
decoded later, by the history's writer thread.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

import attrs

if TYPE_CHECKING:
    from xrelay.inbound.headers import HeaderBlock

#: The outcomes of a message (C{message.status} in the database).
WAITING = "waiting"
DELIVERED = "delivered"
BOUNCED = "bounced"
EXPIRED = "expired"
HANDED_BACK = "handed back"
DELETED = "deleted"

#: What C{--status} asks for -> the outcomes it means.
STATUS_GROUPS: dict[str, tuple[str, ...]] = {
    "delivered": (DELIVERED,),
    "failed": (BOUNCED, EXPIRED, HANDED_BACK, DELETED),
    "waiting": (WAITING,),
}

#: Exchange Online's answer to the final dot carries the id to look up in its own message
#: trace: C{250 2.6.0 <id@...PROD.OUTLOOK.COM> [InternalId=..., Hostname=...] Queued mail
#: for delivery} (the line L{xrelay.sandbox.exchange.ExchangeServer.queued} reproduces).
#: Gmail's C{250 2.0.0 OK  1700000000 id - gsmtp} has no bracketed id: none is taken.
_UPSTREAM_ID = re.compile(r"^250[ -]2\.\d\.\d+ (<[^<>\s]+>)")


def upstream_id(reply: str | None) -> str | None:
    """The message id in an upstream's C{250 2.6.0 <id> ...} reply, if it has one."""
    if not reply:
        return None
    match = _UPSTREAM_ID.match(reply)
    return match.group(1) if match else None


def status_group(status: str) -> str:
    """The C{--status} group ("delivered", "failed", "waiting") of an outcome."""
    for group, outcomes in STATUS_GROUPS.items():
        if status in outcomes:
            return group
    return "waiting"


@attrs.frozen
class AcceptedMessage:
    """One message accepted from a client, as the trace records it."""

    entry_id: str
    received_at: float
    client_address: str
    user: str | None
    sender: str
    recipients: tuple[str, ...]
    size: int
    account: str
    #: The message's own header block (decoded by the writer, never here).
    headers: HeaderBlock | None = None

    @classmethod
    def of(cls, entry_id: str, transaction: Any, protocol: Any) -> "AcceptedMessage":
        """From the inbound transaction that learnt its entry id, and its connection."""
        user = protocol.user
        return cls(entry_id, time.time(), protocol.client_address,
                   user.name if user is not None else None, transaction.sender,
                   tuple(transaction.recipients), transaction.received,
                   transaction.account.name, transaction.headers)
