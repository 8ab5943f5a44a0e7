"""
The state of one inbound mail transaction, from MAIL FROM to the end of DATA or RSET:
a plain record the connection holds and the command groups read and change.

Below the command groups and the type-only connection surface that both name it, so
that neither imports the other for it.  It must never do I/O or speak SMTP.
"""

from __future__ import annotations

import secrets

import attrs

from xrelay.config import AccountConfig
from xrelay.inbound.headers import HeaderBlock
from xrelay.interfaces import IIncomingMessage

__all__ = ["Transaction"]


@attrs.define
class Transaction:
    """One mail transaction, from MAIL FROM to the end of DATA or RSET."""

    sender: str
    account: AccountConfig
    size: int | None = None
    smtputf8: bool = False
    body_8bitmime: bool = False
    recipients: list[str] = attrs.field(factory=list)
    id: str = attrs.field(factory=lambda: secrets.token_hex(6))
    # While DATA is read:
    message: IIncomingMessage | None = None
    received: int = 0
    pending: list[bytes] = attrs.field(factory=list)
    pending_size: int = 0
    #: Why the message will be refused at the end of DATA, once it is known.
    refusal: tuple[int, str, str] | None = None
    previous_crlf: bool = True
    bare_line_ends: int = 0
    #: The message's own header fields, as far as the policy and the trace need them.
    headers: HeaderBlock = attrs.field(factory=HeaderBlock)
    #: A "." line ends DATA whatever its line ends (a trusted device; see leniency).
    lenient_end: bool = False
    #: "." lines that did not end DATA only because of their bare line ends.
    dot_lookalikes: int = 0
    #: The message holds bytes above 127: declared upstream as BODY=8BITMIME.
    eight_bit: bool = False
    #: The largest message the account's route carries, and why (routing).
    size_limit: int = 0
    size_why: str = "server.max_message_size"

    def too_big_text(self) -> str:
        """The 552 5.3.4 text: the limit, and whose it is when it is the account's."""
        if self.size_why == "server.max_message_size":
            return f"Message too big; the limit is {self.size_limit} bytes"
        return (f"Message too big for account {self.account.name}: it carries at most "
                f"{self.size_limit} bytes ({self.size_why})")
