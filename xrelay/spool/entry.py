"""
One spooled message as the delivery engine and operators see it (L{SpoolEntry}), and
how a record's JSON becomes one, with the reason when it cannot.
"""

from __future__ import annotations

import json
import os
from typing import Any


from xrelay.lifecycle import CORRUPT
from xrelay.records import SpoolEntry
from xrelay.spool.record import CorruptEntry, InterruptedCommit, split_record

__all__ = ["CorruptEntry", "InterruptedCommit", "SpoolEntry", "corrupt_entry",
           "parse_record"]




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

