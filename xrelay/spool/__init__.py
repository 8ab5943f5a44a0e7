"""
The durable spool: accepted messages on disk until they are delivered or bounced.

Layout under the spool folder, readable with ordinary tools::

    tmp/<id>.eml, tmp/<id>.json      being received or committed without a spare pair;
                                     never an entry
    data/<id>.eml                    message bytes exactly as received (CRLF wire format)
    queued/<id>.json                 envelope + delivery record, ready to be sent
    active/<id>.json                 an attempt is in flight
    deferred/<id>.json               waiting for its next attempt (see next_attempt)
    failed/<id>.json                 permanently failed and bounced; kept for inspection
    corrupt/<name>                   set aside: records that cannot be read and their data
                                     (never deleted here)

A record (C{<state>/<id>.json}) is a check line (its length and CRC-32, and for the
record a commit wrote, the data's size and CRC-32) followed by the record's JSON:
L{xrelay.spool.record} describes the format; C{jq . queued/<id>.json} shows both.

An entry exists exactly when its complete record is in one of the state folders.  A
message is received into a I{spare pair} made ahead by a thread (empty C{data/<id>.eml}
and C{queued/<id>.json}, both names already durable: L{xrelay.spool.spares}); its
commit writes the record into its place and fdatasyncs both files, one round, no name
change (L{xrelay.spool.commit}).  It is acknowledged only after both fdatasyncs
returned.  So a crash at any instant leaves every acknowledged entry complete; what was
never acknowledged (an empty or cut-short record in C{queued/}, data shorter than its
check line says, data without a record) is what recovery removes, with an info line
(L{xrelay.spool.recovery}).  Empty records and spare pairs in C{queued/} are not
entries: listings skip them.

A state transition is one C{rename} of the C{.json}; a changed record is first
rewritten in place (temporary file, fsync, rename).  Which transitions exist is one
table, L{LIFECYCLE}, and L{Spool.move} refuses any other.  A delivered entry loses
its record first (durably) and its data after, so data without a record is always
owed to nobody.

A record that cannot be read (not JSON, not an object, missing or mistyped keys, a
checksum that does not match, an id that differs from its file name, a folder named
C{*.json}, no or empty message data) is moved to C{corrupt/} with an error log line
naming the file and the reason, by recovery and by every reader (the engine, C{xrelay
queue}, the control socket, the admin page): one bad file never stops the relay or a
listing.  Folders the spool does not know (an operator's C{hold/}) are left alone,
with a warning.

The package, by job: L{entry} (the entry value and reading a record's JSON),
L{record} (the on-disk record format), L{incoming} (a message being received),
L{spares}, L{commit} (the commit and the spool's own thread pool), L{recovery},
L{store} (L{Spool} itself).

This package must never acknowledge (fire a commit) before the bytes are durable, never
keep a message's bytes in memory, and never leave a half-written message behind when
the disk is full.
"""

from __future__ import annotations

from xrelay.interfaces import NotAnEntryId, SpoolFull, TransitionRefused, UnknownEntry
from xrelay.lifecycle import (ACTIVE, CORRUPT, DEFERRED, DELIVERED, ENTRY_ID, FAILED,
                              LIFECYCLE, QUEUED, RECEIVED, STATES, check_entry_id,
                              is_entry_id)
from xrelay.spool.entry import CorruptEntry, InterruptedCommit, SpoolEntry
from xrelay.spool.incoming import Incoming
from xrelay.spool.spares import BUSY
from xrelay.spool.store import Spool, run_inline

#: Older names, kept for code and tests written against the single module.
_Incoming = Incoming
_SPARES = BUSY

__all__ = [
    "ACTIVE",
    "CORRUPT",
    "CorruptEntry",
    "DEFERRED",
    "DELIVERED",
    "ENTRY_ID",
    "FAILED",
    "Incoming",
    "InterruptedCommit",
    "LIFECYCLE",
    "NotAnEntryId",
    "QUEUED",
    "RECEIVED",
    "Spool",
    "SpoolEntry",
    "SpoolFull",
    "STATES",
    "TransitionRefused",
    "UnknownEntry",
    "check_entry_id",
    "is_entry_id",
    "run_inline",
]
