"""
What the Graph transport sends and how an exchange with Graph ends: the MIME header
rewrite that makes Graph deliver to exactly the envelope (Graph has no envelope: it
reads To, Cc and Bcc, https://learn.microsoft.com/graph/api/user-sendmail), and
L{GraphStop}, an exchange that ends the attempt with a result for every recipient.

Pure functions and values: no I/O.  Never changes a message whose fields already name
exactly its envelope.
"""

from __future__ import annotations

import email.utils

from xrelay.envelope import DeliveryResult, FailureKind, OutboundMessage, Outcome, Reply

__all__ = ["with_envelope_recipients", "GraphStop"]


def _header_fields(head: bytes) -> list[list[bytes]]:
    """The header block as fields, each a list of its lines (folded lines included)."""
    fields: list[list[bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1].append(line)
        elif line:
            fields.append([line])
    return fields


def _addresses(field: list[bytes]) -> list[tuple[str, str]]:
    value = b" ".join(line.strip() for line in field).split(b":", 1)[1]
    return email.utils.getaddresses([value.decode("utf-8", "replace")])


def with_envelope_recipients(data: bytes, recipients: "tuple[str, ...]") -> bytes:
    """
    The message with To, Cc and Bcc naming exactly C{recipients}: To and Cc keep the
    envelope recipients they name (with their display names), an address that is no
    envelope recipient is dropped, and every envelope recipient they do not name goes
    into one Bcc field (replacing any Bcc the message had).  Unchanged when the fields
    already name exactly the envelope.
    """
    end = data.find(b"\r\n\r\n")
    head = data[: end + 2] if end >= 0 else data
    wanted = {r.lower() for r in recipients}
    fields = _header_fields(head)
    if _named(fields) == wanted:
        return data
    kept: list[bytes] = []
    shown: set[str] = set()
    for field in fields:
        rewritten = _kept_field(field, wanted, shown)
        if rewritten is not None:
            kept.append(rewritten)
    hidden = [r for r in dict.fromkeys(recipients) if r.lower() not in shown]
    if hidden:
        kept.insert(0, b"Bcc: " + ", ".join(hidden).encode("utf-8"))
    return b"\r\n".join(kept) + b"\r\n" + data[len(head):]


def _field_name(field: list[bytes]) -> bytes:
    return field[0].split(b":", 1)[0].strip()


def _named(fields: list[list[bytes]]) -> set[str]:
    """The addresses To, Cc and Bcc name, in lower case."""
    named: set[str] = set()
    for field in fields:
        if _field_name(field).lower() in (b"to", b"cc", b"bcc"):
            named.update(a.lower() for _, a in _addresses(field) if a)
    return named


def _kept_field(field: list[bytes], wanted: set[str], shown: set[str]) -> bytes | None:
    """
    One header field as the rewritten message has it, C{None} when it goes: Bcc goes
    (it is rebuilt), To and Cc keep the wanted addresses not yet C{shown} (which this
    adds to), other fields and address-less groups stay as they are.
    """
    name = _field_name(field)
    if name.lower() == b"bcc":
        return None
    if name.lower() not in (b"to", b"cc"):
        return b"\r\n".join(field)
    entries = _addresses(field)
    if not any(a for _, a in entries):
        return b"\r\n".join(field)  # a group with no address ("undisclosed")
    keep = [(n, a) for n, a in entries if a and a.lower() in wanted
            and a.lower() not in shown]
    shown.update(a.lower() for _, a in keep)
    if not keep:
        return None
    value = ", ".join(email.utils.formataddr(entry) for entry in keep)
    return name + b": " + value.encode("utf-8")


class GraphStop(Exception):
    """A Graph exchange that ends the attempt, with the result for every recipient."""

    def __init__(self, outcome: Outcome, reply: Reply,
                 failure: FailureKind = FailureKind.NONE, detail: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(str(reply))
        self.outcome, self.reply, self.failure = outcome, reply, failure
        self.detail, self.retry_after = detail, retry_after

    def result(self, message: OutboundMessage) -> DeliveryResult:
        if self.failure is FailureKind.SEND_AS_DENIED:
            self.detail = self.detail.replace("<sender>", message.sender)
        return DeliveryResult.for_all(message.recipients, self.outcome, self.reply,
                                      self.failure, self.detail, self.retry_after)
