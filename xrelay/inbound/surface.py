"""
What the command mixins (L{xrelay.inbound.smtpauth.AuthCommands},
L{xrelay.inbound.transaction.MailCommands},
L{xrelay.inbound.sessioncommands.SessionCommands}) may use of their connection,
L{xrelay.inbound.protocol.ESMTPServer}, for the type checker only.

The mixins cannot name C{ESMTPServer} as their base (it inherits from them, a cycle
mypy rejects), so they are checked against this surface instead, and C{ESMTPServer}
against it in turn.  A plain class, not a C{typing.Protocol}: mypy lets a mixin's
assignment redefine a protocol member's type (C{helo = ""} would make it C{str}).  This module must never be imported at run time: it holds no
behaviour.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from xrelay.config import Config, UserConfig
    from xrelay.inbound.conduct import Conduct
    from xrelay.inbound.factory import InboundFactory
    from xrelay.inbound.lines import LineBuffer
    from xrelay.inbound.mailtransaction import Transaction
    from xrelay.records import Refusal
    from xrelay.streams import IStreamTransport

__all__ = ["ServerSurface"]


class ServerSurface:
    """The attributes and replies of one inbound connection."""

    factory: InboundFactory
    config: Config
    clock: Any
    checker: Any
    tls_options: Any
    lines: LineBuffer
    transport: IStreamTransport
    state: str
    client_address: str
    helo: str | None
    esmtp: bool
    tls: bool
    user: UserConfig | None
    transaction: Transaction | None
    conduct: Conduct
    auth_failures: int
    _login_name: str

    def reply(self, code: int, enhanced: str, text: str) -> None: ...

    def error(self, code: int, enhanced: str, text: str) -> None: ...

    def refuse(self, refusal: Refusal) -> None: ...

    def write_lines(self, code: int, texts: list[str]) -> None: ...

    def close(self) -> None: ...

    def _starttls_available(self) -> bool:
        raise NotImplementedError  # SessionCommands'

    def _drop_transaction(self, why: str) -> None:
        raise NotImplementedError  # MailCommands'
