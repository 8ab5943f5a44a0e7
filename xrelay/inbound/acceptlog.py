"""
The "queued as" log line, cheap under load: one line per accepted message while
messages come at most L{LINES_PER_SECOND} a second (a printer, an office), and above
that rate one summary line every L{SUMMARY_EVERY} seconds instead of a line per message.

A log line costs the reactor about 83 us through twistd's text observer (issue 28's
profile: 11.7 % of the reactor at 20 clients); a burst of a thousand messages does not
need a thousand lines to be understood, and every message stays in the message trace
(C{xrelay trace}, the history), which records each one whatever the rate.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

__all__ = ["AcceptanceLog", "LINES_PER_SECOND", "SUMMARY_EVERY"]

log = Logger(namespace="xrelay.inbound.transaction")

#: Per-message lines allowed in one second before the summary takes over ...
LINES_PER_SECOND = 10
#: ... and how often the summary is written while it does.
SUMMARY_EVERY = 10.0


class AcceptanceLog:
    """
    The inbound side's record of accepted messages in the log.

    @param clock: an C{IReactorTime} (C{seconds}, C{callLater}).
    """

    def __init__(self, clock: Any) -> None:
        self._clock = clock
        self._second = -1
        self._lines = 0
        self._summary: Any = None
        self._quiet = {"messages": 0, "bytes": 0}
        self._quiet_clients: set[str] = set()
        self._quiet_accounts: set[str] = set()

    def queued(self, message: str, entry: str, client: str, sender: str,
               user: str | None, account: str, count: int, size: int) -> None:
        """One message was acknowledged (its entry is durable)."""
        second = int(self._clock.seconds())
        if second != self._second:
            self._second, self._lines = second, 0
        if self._lines < LINES_PER_SECOND:
            self._lines += 1
            log.info("inbound message {message} queued as {entry} from {client} sender "
                     "{sender} user {user} account {account} recipients {count} size "
                     "{size}", message=message, entry=entry, client=client, sender=sender,
                     user=user, account=account, count=count, size=size)
            return
        self._quiet["messages"] += 1
        self._quiet["bytes"] += size
        self._quiet_clients.add(client)
        self._quiet_accounts.add(account)
        if self._summary is None:
            self._summary = self._clock.callLater(SUMMARY_EVERY, self.flush)

    def flush(self) -> None:
        """Write the summary of the messages that had no line of their own (if any)."""
        if self._summary is not None and self._summary.active():
            self._summary.cancel()
        self._summary = None
        if not self._quiet["messages"]:
            return
        log.info("inbound: {messages} more messages queued ({bytes} bytes, from "
                 "{clients} clients, accounts {accounts}) without a line each: more than "
                 "{rate} a second; `xrelay trace` shows every one",
                 messages=self._quiet["messages"], bytes=self._quiet["bytes"],
                 clients=len(self._quiet_clients),
                 accounts=", ".join(sorted(self._quiet_accounts)), rate=LINES_PER_SECOND)
        self._quiet = {"messages": 0, "bytes": 0}
        self._quiet_clients.clear()
        self._quiet_accounts.clear()
