"""
The value types the stages hand each other: the bottom layer of xrelay, beside
L{xrelay.envelope}.

A spool entry (L{SpoolEntry}, and L{ISpoolEntry}: what its fields promise), a delivery attempt's outcome (L{OutcomeRecord}), what an
inbound handler may know of a session (L{InboundSession}) and its answer
(L{Refusal}), and what an account's token reports (L{TokenStatus}).  Each name lives
here and nowhere else; L{xrelay.interfaces} describes the seams in these terms, and the
modules that make or read them import them from here.

Frozen attrs values only: this module must never import a stage, do I/O or look at a
clock except to stamp a record that arrives without a time.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import attrs
from zope.interface import Attribute, Interface, implementer

from xrelay.envelope import Envelope, Reply
from xrelay.lifecycle import QUEUED

if TYPE_CHECKING:
    from xrelay.config import Config, UserConfig

__all__ = ["ISpoolEntry", "InboundSession", "OutcomeRecord", "Refusal", "SpoolEntry",
           "TokenStatus"]


class ISpoolEntry(Interface):
    """
    One spooled message as the delivery engine and operators see it: an immutable
    value; a change is a new value returned by L{ISpool.move}.  Every spool hands out
    L{xrelay.records.SpoolEntry} values (which provide this), so that callers and
    spools share one record type; this states what its fields promise.
    """

    entry_id: str = Attribute("The spool's id (L{xrelay.lifecycle.ENTRY_ID} syntax).")
    state: str = Attribute(
        "One of L{xrelay.lifecycle.STATES}, or C{corrupt} for one set aside.")
    sender: str = Attribute("The envelope sender (C{''}: the null sender).")
    recipients: tuple[str, ...] = Attribute("Those still to be delivered.")
    data_path: str = Attribute(
        "A file holding the message exactly as received (CRLF wire format), which a "
        "transport opens and streams; valid while the entry is in the spool.")
    size: int = Attribute("Bytes in C{data_path}.")
    account: str = Attribute("The account chosen at acceptance (C{''}: route by sender).")
    received_at: float = Attribute("When it was accepted (POSIX time).")
    attempts: int = Attribute("Delivery attempts made so far.")
    next_attempt: float = Attribute("For a deferred entry: when it is due.")
    last_reply: Any = Attribute("The last upstream L{Reply} that mattered, or C{None}.")
    failed_recipients: Any = Attribute("C{(recipient, Reply)} pairs that failed for good.")
    bounce_of: "str | None" = Attribute(
        "For a bounce we made, the entry it reports on; a bounce is never bounced.")
    problem: str = Attribute("For an entry set aside as corrupt: why.")
    envelope: "Envelope" = Attribute("The entry's envelope (for a new attempt).")


@implementer(ISpoolEntry)
@attrs.frozen
class SpoolEntry:
    """
    One spooled message as the delivery engine and operators see it.

    @ivar recipients: those still to be delivered (delivered and permanently failed ones
        are removed as results come in).
    @ivar failed_recipients: C{(recipient, Reply)} pairs that failed permanently.
    @ivar bounce_of: for a bounce (DSN) we generated, the id of the entry it reports on;
        a bounce is never itself bounced.
    """

    entry_id: str
    state: str
    sender: str
    recipients: tuple[str, ...]
    data_path: str
    size: int
    account: str = ""
    client_address: str = ""
    client_helo: str = ""
    authenticated_user: str | None = None
    received_at: float = 0.0
    smtputf8: bool = False
    body_8bitmime: bool = False
    original_recipients: tuple[str, ...] = ()
    attempts: int = 0
    next_attempt: float = 0.0
    last_attempt: float | None = None
    last_reply: Reply | None = None
    failed_recipients: tuple[tuple[str, Reply], ...] = ()
    bounce_of: str | None = None
    #: For an entry set aside in C{corrupt/}: why (never stored in a record).
    problem: str = ""

    @classmethod
    def received(cls, entry_id: str, env: Envelope, size: int, data_path: str,
                 bounce_of: str | None = None) -> "SpoolEntry":
        """A message just committed: queued, nothing tried yet (every spool's start)."""
        return cls(
            entry_id=entry_id,
            state=QUEUED,
            sender=env.sender,
            recipients=tuple(env.recipients),
            data_path=data_path,
            size=size,
            account=env.account,
            client_address=env.client_address,
            client_helo=env.client_helo,
            authenticated_user=env.authenticated_user,
            received_at=env.received_at or time.time(),
            smtputf8=env.smtputf8,
            body_8bitmime=env.body_8bitmime,
            original_recipients=tuple(env.recipients),
            bounce_of=bounce_of,
        )

    @property
    def envelope(self) -> Envelope:
        return Envelope(
            sender=self.sender,
            recipients=self.recipients,
            client_address=self.client_address,
            client_helo=self.client_helo,
            authenticated_user=self.authenticated_user,
            account=self.account,
            received_at=self.received_at,
            smtputf8=self.smtputf8,
            body_8bitmime=self.body_8bitmime,
        )

    def to_json(self) -> dict[str, Any]:
        record = attrs.asdict(self, recurse=False)
        for transient in ("entry_id", "state", "data_path", "problem"):
            del record[transient]
        record["id"] = self.entry_id
        record["recipients"] = list(self.recipients)
        record["original_recipients"] = list(self.original_recipients)
        record["last_reply"] = _reply_json(self.last_reply)
        record["failed_recipients"] = [
            {"recipient": r, "reply": _reply_json(reply)}
            for r, reply in self.failed_recipients
        ]
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any], state: str, data_path: str) -> "SpoolEntry":
        get = record.get
        failed = get("failed_recipients")
        return cls(
            record["id"], state, record["sender"], tuple(record["recipients"]),
            data_path, record["size"],
            account=get("account", ""),
            client_address=get("client_address", ""),
            client_helo=get("client_helo", ""),
            authenticated_user=get("authenticated_user"),
            received_at=get("received_at", 0.0),
            smtputf8=get("smtputf8", False),
            body_8bitmime=get("body_8bitmime", False),
            original_recipients=tuple(get("original_recipients", ())),
            attempts=get("attempts", 0),
            next_attempt=get("next_attempt", 0.0),
            last_attempt=get("last_attempt"),
            last_reply=_reply_from(get("last_reply")),
            failed_recipients=tuple(
                (f["recipient"], _reply_from(f["reply"]) or Reply(554, ""))
                for f in failed
            ) if failed else (),
            bounce_of=get("bounce_of"),
        )



def _reply_json(reply: Reply | None) -> dict[str, Any] | None:
    return None if reply is None else {"code": reply.code, "text": reply.text}


def _reply_from(record: dict[str, Any] | None) -> Reply | None:
    return None if record is None else Reply(record["code"], record["text"])


@attrs.frozen
class OutcomeRecord:
    """One attempt's outcome, for the admin page and metrics."""

    entry_id: str
    sender: str
    account: str
    at: float
    #: "delivered", "deferred", "failed" (or "partial": some delivered, rest deferred).
    outcome: str
    delivered: int
    deferred: int
    failed: int
    reply: str


@attrs.frozen
class InboundSession:
    """
    What a handler may know about one SMTP session, at the moment it is asked.

    @ivar client_address: the client's IP address (behind C{haproxy:}, the real client's).
    @ivar helo: the EHLO/HELO name, C{None} before it (C{""} for a lenient MAIL without).
    @ivar user: the authenticated relay user (its C{name} and C{senders}), or C{None}.
    @ivar tls: whether the connection is encrypted (STARTTLS done, or implicit TLS).
    @ivar starttls_offered: whether STARTTLS is available and not yet done (a refusal
        may tell the client to use it).
    @ivar config: the configuration snapshot this connection runs under.
    @ivar sender: the envelope sender of the transaction under way, C{None} outside one.
    """

    client_address: str
    helo: str | None
    user: UserConfig | None
    tls: bool
    starttls_offered: bool
    config: Config
    sender: str | None = None

    @property
    def user_name(self) -> str | None:
        """The authenticated user's name, or C{None}."""
        return self.user.name if self.user is not None else None


@attrs.frozen
class Refusal:
    """
    A decision against the client, as the reply the protocol sends.

    @ivar code: basic status code.
    @ivar enhanced: RFC 3463 enhanced status code.
    @ivar text: what the client's administrator needs to know to fix it.
    """

    code: int
    enhanced: str
    text: str

    def __str__(self) -> str:
        return f"{self.code} {self.enhanced} {self.text}"



@attrs.frozen
class TokenStatus:
    """
    What the admin page, the metrics and C{xrelay accounts} show for one account.

    @ivar state: one of L{TokenState}'s values ("ok", "expiring", "needs sign-in", ...).
    @ivar expires_at: POSIX time the current access token expires, if there is one.
    @ivar last_refresh: POSIX time of the last successful token request.
    @ivar last_error: the last failure, without secrets.
    @ivar hint: what an operator should do, when something must be done.
    """

    account: str
    state: str
    expires_at: float | None = None
    last_refresh: float | None = None
    last_error: str | None = None
    hint: str | None = None
    provider: str | None = None
    flow: str | None = None
    #: POSIX time since which the account has had no usable token (failures or a
    #: refusal), for the health check's grace period; C{None} while it works.
    failing_since: float | None = None
