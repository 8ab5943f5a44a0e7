"""
Where the sandbox's providers put the messages they accept: a list in memory for tests
to assert on, and files on disk (C{<directory>/mailbox/<recipient>/<id>.eml} with
C{<id>.json} beside it) for a person trying xrelay to open.

The bytes are kept exactly as received (after un-dot-stuffing), so a test can compare
them with what the device sent.  Never records credentials: only the envelope, the
authenticated mailbox and the mechanism name.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from typing import Callable

import attrs
from twisted.python.filepath import FilePath


@attrs.frozen
class DeliveredMessage:
    """
    One accepted message.

    @ivar mailbox: the mailbox that submitted it (the authenticated user).
    @ivar connection: the SMTP connection number (1-based), or 0 for Graph.
    @ivar via: C{"smtp"} or C{"graph"}.
    """

    id: str
    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes = attrs.field(repr=False)
    mailbox: str
    auth_mechanism: str
    connection: int
    received_at: float
    via: str = "smtp"
    message_id: str = ""


def _folder_name(address: str) -> str:
    """A recipient address as a safe single path segment."""
    name = re.sub(r"[^A-Za-z0-9@._+=-]", "_", address.lower()).lstrip(".")
    return name or "_"


@attrs.define
class Mailbox:
    """The accepted messages, in arrival order."""

    directory: FilePath
    now: Callable[[], float] = time.time
    messages: list[DeliveredMessage] = attrs.field(factory=list)

    def deliver(
        self,
        mail_from: str,
        rcpt_to: tuple[str, ...],
        data: bytes,
        mailbox: str,
        auth_mechanism: str,
        connection: int,
        via: str = "smtp",
        message_id: str = "",
    ) -> DeliveredMessage:
        """Keep the message and write one copy per recipient folder."""
        message = DeliveredMessage(
            uuid.uuid4().hex, mail_from, tuple(rcpt_to), data, mailbox, auth_mechanism, connection,
            self.now(), via, message_id,
        )
        meta = {
            "id": message.id, "mail_from": mail_from, "rcpt_to": list(rcpt_to), "mailbox": mailbox,
            "auth_mechanism": auth_mechanism, "connection": connection, "time": message.received_at,
            "via": via, "message_id": message_id, "size": len(data),
        }
        for folder in dict.fromkeys(_folder_name(r) for r in (rcpt_to or (mailbox,))):
            target = self.directory.child(folder)
            if not target.exists():
                target.makedirs()
            target.child(message.id + ".eml").setContent(data)
            target.child(message.id + ".json").setContent(json.dumps(meta, indent=2).encode())
        self.messages.append(message)
        return message

    def for_recipient(self, address: str) -> list[DeliveredMessage]:
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_to)]

    def clear(self) -> None:
        """Forget the in-memory list (the files stay for the person looking)."""
        del self.messages[:]
