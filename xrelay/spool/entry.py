"""
One spooled message as the delivery engine and operators see it (L{SpoolEntry}), and
how a record's JSON becomes one, with the reason when it cannot.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import attrs
from zope.interface import implementer

from xrelay.envelope import Envelope, Reply
from xrelay.interfaces import ISpoolEntry
from xrelay.lifecycle import CORRUPT, QUEUED

__all__ = ["CorruptEntry", "InterruptedCommit", "SpoolEntry", "corrupt_entry",
           "parse_record"]


class CorruptEntry(Exception):
    """A record that cannot be read; C{str()} is the reason, for the log line."""


class InterruptedCommit(CorruptEntry):
    """
    A commit that never finished: an empty or cut-short record in C{queued/}, or data
    shorter than (or different from) what the record's check line says.  Such an entry
    was never acknowledged (the acknowledgement waits for both fdatasyncs), so it is
    owed to nobody: recovery removes it with an info line, and it is never delivered.
    """


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


#: One decoder for every record (json.loads on bytes first guesses their encoding).
_decode = json.JSONDecoder().decode

#: Keys every record has, and their JSON types.
_REQUIRED = {"id": str, "sender": str, "recipients": list, "size": int}


def parse_record(body: bytes, state: str, entry_id: str, data_path: str,
                 data_size: int | None) -> SpoolEntry:
    """
    The entry a record's JSON (its body, after the check line) describes.

    @param data_size: the size of its message data file, C{None} when there is none.
    @raise CorruptEntry: with the reason, when the record cannot be trusted.
    """
    try:
        record = _decode(body.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptEntry("not JSON" if body.strip() else "empty record") from e
    if not isinstance(record, dict):
        raise CorruptEntry(f"the record is a JSON {type(record).__name__}, not an object")
    for key, kind in _REQUIRED.items():
        if key not in record:
            raise CorruptEntry(f"the record has no {key!r}")
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            raise CorruptEntry(f"{key!r} in the record is not a {kind.__name__}")
    if record["id"] != entry_id:
        raise CorruptEntry(f"the record's id {str(record['id'])[:80]!r} differs from its "
                           "file name")
    if not all(isinstance(r, str) for r in record["recipients"]):
        raise CorruptEntry("'recipients' in the record are not all strings")
    if data_size is None:
        raise CorruptEntry("its message data is missing")
    if data_size == 0:
        raise CorruptEntry("its message data is empty (zero bytes)")
    try:
        return SpoolEntry.from_json(record, state, data_path)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise CorruptEntry(f"the record does not parse ({type(e).__name__}: "
                           f"{str(e)[:80]})") from None


def corrupt_entry(directory: str, stem: str) -> SpoolEntry:
    """What is known of an entry set aside in C{corrupt/}: whatever its record gives."""
    from xrelay.spool.record import split_record

    folder = os.path.join(directory, CORRUPT)
    record: Any = None
    try:
        with open(os.path.join(folder, stem + ".json"), "rb") as f:
            record = json.loads(split_record(f.read(), strict=False)[0])
    except (OSError, ValueError, UnicodeDecodeError, CorruptEntry):
        pass
    if not isinstance(record, dict):
        record = {}
    try:
        problem = open(os.path.join(folder, stem + ".reason"), encoding="utf-8",
                       errors="replace").read().strip()
    except OSError:
        problem = "set aside (no reason recorded)"
    data_path = os.path.join(folder, stem + ".eml")
    try:
        size = os.stat(data_path).st_size
    except OSError:
        size = 0

    def text(key: str) -> str:
        value = record.get(key)
        return value if isinstance(value, str) else ""

    recipients = record.get("recipients")
    number = record.get("received_at")
    return SpoolEntry(
        entry_id=stem, state=CORRUPT, sender=text("sender"),
        recipients=tuple(r for r in recipients if isinstance(r, str))
        if isinstance(recipients, list) else (),
        data_path=data_path, size=size, account=text("account"),
        client_address=text("client_address"),
        received_at=float(number) if isinstance(number, (int, float)) else 0.0,
        problem=problem)


def _reply_json(reply: Reply | None) -> dict[str, Any] | None:
    return None if reply is None else {"code": reply.code, "text": reply.text}


def _reply_from(record: dict[str, Any] | None) -> Reply | None:
    return None if record is None else Reply(record["code"], record["text"])
