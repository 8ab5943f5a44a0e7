"""
How one inbound client behaves on its connection, counted against the limits that end
it: refused or erroneous commands (C{server.max_errors}, as Postfix's
C{smtpd_hard_error_limit}) and commands that move no mail forward (NOOP, RSET, VRFY,
HELP, EHLO/HELO: C{server.max_junk_commands}, as Postfix's C{smtpd_junk_command_limit}).
Both counts start again once a message is accepted: the limits are on what a client
does I{without delivering mail} (https://www.postfix.org/postconf.5.html).

It also decides which refusals are worth a log line of their own: the first few of a
connection are, the rest are counted and told in one summary line when the connection
ends, so that a client sending 100,000 refused RCPTs cannot write 44 MB of log.

Pure bookkeeping: no I/O, no replies (the protocol speaks), no clock.
"""

from __future__ import annotations

import attrs

__all__ = ["Conduct", "JUNK_COMMANDS", "LOGGED_EACH", "RECIPIENT_OVERSHOOT"]

#: Commands that keep a session alive without moving a message forward.
JUNK_COMMANDS = frozenset({"NOOP", "RSET", "VRFY", "EXPN", "HELP", "EHLO", "HELO"})

#: Recipients refused as too many (452 4.5.3) that do not count as errors, since the
#: last accepted message: Postfix's C{smtpd_recipient_overshoot_limit} default.
RECIPIENT_OVERSHOOT = 1000

#: Refusals of one connection that get a log line each; later ones are summarised.
LOGGED_EACH = 3


@attrs.define
class Conduct:
    """The counts for one connection."""

    max_errors: int
    max_junk: int
    errors: int = 0
    junk: int = 0
    #: Recipients refused as one too many (452 4.5.3) since the last accepted message.
    excess_recipients: int = 0
    #: Refusals seen in all, and the ones not logged one by one (for the summary).
    refusals: int = 0
    unlogged: int = 0
    last_unlogged: str = ""

    def error(self) -> bool:
        """Count one refused or erroneous command; true when the limit is reached."""
        self.errors += 1
        return self.errors >= self.max_errors

    def junk_command(self) -> bool:
        """Count one command that moves no mail; true when it is one too many."""
        self.junk += 1
        return self.junk > self.max_junk

    def excess_recipient(self) -> bool:
        """
        Count one recipient refused as too many (452 4.5.3); true when it must count as
        an error too.  A client sending a long list pipelined gets
        L{RECIPIENT_OVERSHOOT} such replies free, so that it can send the rest in
        another message as RFC 5321 4.5.3.1.10 asks; past them every one is an error
        toward C{max_errors}, so that 100,000 pipelined RCPTs end the connection.
        """
        self.excess_recipients += 1
        return self.excess_recipients > RECIPIENT_OVERSHOOT

    def message_accepted(self) -> None:
        """A message was accepted: the client is doing real work; start counting again."""
        self.errors = 0
        self.junk = 0
        self.excess_recipients = 0

    def log_refusal(self, reply: str) -> bool:
        """Whether this refusal gets a log line of its own (else it is summarised)."""
        self.refusals += 1
        if self.refusals <= LOGGED_EACH:
            return True
        self.unlogged += 1
        self.last_unlogged = reply
        return False

    def summary(self) -> str | None:
        """The summary of the refusals not logged one by one, once; None if none."""
        if not self.unlogged:
            return None
        text = (f"{self.unlogged} more refused commands not logged one by one "
                f"(last: {self.last_unlogged})")
        self.unlogged = 0
        return text
