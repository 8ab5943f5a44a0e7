"""
The device inventory's values: what the relay knows about one client (L{Device}), a
moment of one session that the inbound side reports (L{Sighting}), and how a refusal
is kept (L{LastRefusal}).

A device is one client address with one AUTH user (C{""} when it did not
authenticate): a printer that logs in and one that does not are different devices to
the admin even when they share an address.  A L{Device} is both the stored row and a
change to merge into it (the collector gathers changes between writes), so that the
same merge serves both.

Everything here is bounded: a few HELO names and senders per device, replies cut to
L{REPLY_LIMIT} characters, so no client can make a row grow.  Nothing here may hold a
password or an AUTH response: the user name a device tried is kept, never what it sent
as its password.
"""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["Device", "LastRefusal", "Sighting", "FAILING", "OK", "STATES",
           "MAX_HELO_NAMES", "MAX_SENDERS", "REPLY_LIMIT"]

#: HELO/EHLO names kept per device (the most recent).
MAX_HELO_NAMES = 5
#: Envelope senders kept per device (the most recent).
MAX_SENDERS = 20
#: Characters of a reply or a reason kept.
REPLY_LIMIT = 300

#: Device states (the metric's C{state} label, C{xrelay devices --failing}).
FAILING = "failing"
OK = "ok"
STATES = (FAILING, OK)


def _cut(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= REPLY_LIMIT else text[:REPLY_LIMIT - 1] + "…"


def _recent(kept: list[str], new: list[str], limit: int) -> list[str]:
    """C{kept} then C{new}, each once, the most recent last, at most C{limit}."""
    fresh = list(dict.fromkeys(new))
    return ([k for k in kept if k not in fresh] + fresh)[-limit:]


@attrs.frozen
class Sighting:
    """
    One session at the moment something worth keeping happened: who the client is
    and what it has said so far.

    @ivar tls: the TLS version in use ("TLS 1.2"), "none" for plain text, C{None}
        while a handshake is under way (not known).
    @ivar mechanism: the SASL mechanism of a successful AUTH, or C{None}.
    """

    address: str
    user: str = ""
    helo: str | None = None
    tls: str | None = None
    mechanism: str | None = None
    listener: str = ""


@attrs.frozen
class LastRefusal:
    """
    The last thing the relay refused this device, as the device was told it.

    @ivar stage: "connect", "tls", "auth", "mail", "rcpt" or "data".
    @ivar reply: the reply the device got ("550 5.7.1 Relaying denied: ..."), or for a
        failed TLS handshake the reason in words.
    """

    at: float
    stage: str
    reply: str

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "stage": self.stage, "reply": self.reply}

    @classmethod
    def from_json(cls, value: Any) -> "LastRefusal | None":
        if not isinstance(value, dict):
            return None
        return cls(float(value.get("at", 0.0)), str(value.get("stage", "")),
                   str(value.get("reply", "")))


@attrs.define
class Device:
    """
    What the inventory knows about one client (address and AUTH user).

    Counts are what the relay itself saw: messages accepted (250 after the commit),
    refused (at connection, MAIL, RCPT or the end of DATA), failed AUTH attempts and
    failed TLS handshakes.  Delivered and bounced come from the message trace (see
    L{xrelay.devices.store.outcomes}) and are filled in when the inventory is read.
    """

    address: str
    user: str = ""
    first_seen: float = 0.0
    last_seen: float = 0.0
    helo_names: list[str] = attrs.field(factory=list)
    #: The TLS of its last session: a version ("TLS 1.2"), "none" (plain text), or
    #: C{None} when not known (it never got that far).
    tls: str | None = None
    #: Why the last failed TLS handshake failed, and when.
    tls_failure: str | None = None
    tls_failures: int = 0
    mechanism: str | None = None
    #: The user name given in the last failed AUTH (never the password).
    auth_failed_user: str | None = None
    auth_failures: int = 0
    senders: list[str] = attrs.field(factory=list)
    listeners: list[str] = attrs.field(factory=list)
    accepted: int = 0
    refused: int = 0
    last_accepted: float | None = None
    last_refusal: LastRefusal | None = None
    #: Filled from the message trace when read (not stored).
    delivered: int = 0
    bounced: int = 0

    @property
    def key(self) -> tuple[str, str]:
        return (self.address, self.user)

    @property
    def state(self) -> str:
        """C{failing} when the last thing that happened to it was a refusal."""
        if self.last_refusal is None:
            return OK
        if self.last_accepted is not None and self.last_accepted >= self.last_refusal.at:
            return OK
        return FAILING

    @property
    def failing(self) -> bool:
        return self.state == FAILING

    # -- changes -----------------------------------------------------------------------

    @classmethod
    def seen(cls, sighting: Sighting, at: float) -> "Device":
        """A change: this device was seen now, with what the sighting tells."""
        device = cls(sighting.address, sighting.user, first_seen=at, last_seen=at)
        if sighting.helo:
            device.helo_names = [_cut(sighting.helo[:255]) or ""]
        if sighting.tls:
            device.tls = sighting.tls
        if sighting.mechanism:
            device.mechanism = sighting.mechanism
        if sighting.listener:
            device.listeners = [sighting.listener]
        return device

    def refusal(self, at: float, stage: str, reply: str) -> None:
        self.last_refusal = LastRefusal(at, stage, _cut(reply) or "")

    def merge(self, change: "Device") -> None:
        """Fold a later change into this row (counts add, the newest facts win)."""
        if not self.first_seen or (change.first_seen and change.first_seen < self.first_seen):
            self.first_seen = change.first_seen
        self.last_seen = max(self.last_seen, change.last_seen)
        self.helo_names = _recent(self.helo_names, change.helo_names, MAX_HELO_NAMES)
        self.senders = _recent(self.senders, change.senders, MAX_SENDERS)
        self.listeners = _recent(self.listeners, change.listeners, MAX_HELO_NAMES)
        self.tls = change.tls or self.tls
        self.tls_failure = change.tls_failure or self.tls_failure
        self.tls_failures += change.tls_failures
        self.mechanism = change.mechanism or self.mechanism
        self.auth_failed_user = change.auth_failed_user or self.auth_failed_user
        self.auth_failures += change.auth_failures
        self.accepted += change.accepted
        self.refused += change.refused
        if change.last_accepted is not None:
            self.last_accepted = max(self.last_accepted or 0.0, change.last_accepted)
        if change.last_refusal is not None and (
                self.last_refusal is None or change.last_refusal.at >= self.last_refusal.at):
            self.last_refusal = change.last_refusal

    # -- the stored form ----------------------------------------------------------------

    def stored(self) -> dict[str, Any]:
        """The row as JSON (without the counts that come from the trace)."""
        out = attrs.asdict(self, recurse=False)
        out.pop("delivered")
        out.pop("bounced")
        out["last_refusal"] = (self.last_refusal.as_json()
                               if self.last_refusal is not None else None)
        return out

    @classmethod
    def from_stored(cls, value: dict[str, Any]) -> "Device":
        names = {f.name for f in attrs.fields(cls)} - {"delivered", "bounced"}
        fields = {k: v for k, v in value.items() if k in names}
        fields["last_refusal"] = LastRefusal.from_json(value.get("last_refusal"))
        return cls(**fields)

    def as_json(self) -> dict[str, Any]:
        """What C{xrelay devices --json} prints for this device."""
        out = self.stored()
        out["delivered"] = self.delivered
        out["bounced"] = self.bounced
        out["state"] = self.state
        return out
