"""
Recovery at start, and setting aside what cannot be read.

What a crash can leave, and what becomes of it (L{recover}):

- C{tmp/*}: a message being received or committed without a spare: never
  acknowledged; removed (info).
- C{active/<id>.json}: an attempt in flight; back to C{queued/}.
- C{<state>/<id>.json.tmp}: a record being rewritten; the old one stands; removed.
- C{queued/<id>.json} empty, or cut short (its check line says more bytes than there
  are), or its data shorter than or different from what the check line says: a commit
  that never finished, so never acknowledged; record and data removed (info; quietly
  for an unused spare pair, both empty).  Never delivered.
- C{data/<id>.eml} without a record in any state folder: owed to nobody.  The spool
  writes data before a record exists and removes a record before its data (L{Spool.remove}
  fsyncs the state folder in between), so such data was either never acknowledged or
  already delivered; removed (info), never set aside.
- Anything else that cannot be read (not JSON, wrong types, a checksum that does not
  match a complete record, a second record of one id, a record without data): real
  corruption, set aside in C{corrupt/} with an error line.
"""

from __future__ import annotations

import os

from twisted.logger import Logger

from xrelay.durable import fsync_directory
from xrelay.spool.host import SpoolHost
from xrelay.lifecycle import ACTIVE, CORRUPT, DEFERRED, QUEUED, STATES
from xrelay.lifecycle import allow as _allow
from xrelay.spool.entry import CorruptEntry, InterruptedCommit, SpoolEntry
from xrelay.spool.incoming import unlink_quietly
from xrelay.spool.record import data_matches


__all__ = ["quarantine", "recover", "set_aside", "write_reason"]

log = Logger()


def recover(spool: SpoolHost) -> dict[str, list[SpoolEntry]]:
    """
    Discard what was never acknowledged (or already delivered), put interrupted
    attempts back in the queue, and set aside what cannot be read.  One pass over each
    folder: linear in the number of entries.  Returns the queued and deferred entries
    read on the way, by state.
    """
    directory = spool.directory
    _clear_tmp(directory)
    _warn_about_strangers(directory)
    moved = _requeue_interrupted(directory)
    data_sizes = _data_sizes(directory)
    found: dict[str, SpoolEntry] = {}
    for state in STATES:
        for item in os.scandir(os.path.join(directory, state)):
            _recover_record(spool, state, item, data_sizes, found)
    _remove_unowned_data(spool, data_sizes, found)
    _withdraw_unreleased_bounces(spool, found)
    for sub in ("data", QUEUED, CORRUPT):
        fsync_directory(os.path.join(directory, sub))
    by_state: dict[str, list[SpoolEntry]] = {QUEUED: [], DEFERRED: []}
    for entry_id in sorted(found):
        entry = found[entry_id]
        if entry.state in by_state:
            by_state[entry.state].append(entry)
    if moved:
        log.info("{count} interrupted deliveries back in the queue", count=moved)
    return by_state


def _clear_tmp(directory: str) -> None:
    """Remove what C{tmp/} holds (never acknowledged); set a folder there aside."""
    tmp = os.path.join(directory, "tmp")
    for name in os.listdir(tmp):
        path = os.path.join(tmp, name)
        if os.path.isdir(path) and not os.path.islink(path):
            set_aside(directory, path, name, "a folder in tmp/")
            continue
        unlink_quietly(path)
        log.info("discarded incomplete spool file {name}", name=name)


def _requeue_interrupted(directory: str) -> int:
    """Put the attempts a crash interrupted back in C{queued/}; how many there were."""
    moved = 0
    for name in os.listdir(os.path.join(directory, ACTIVE)):
        if name.endswith(".json"):
            _allow(ACTIVE, QUEUED, name[:-5])
            os.rename(os.path.join(directory, ACTIVE, name),
                      os.path.join(directory, QUEUED, name))
            moved += 1
    return moved


def _recover_record(spool: SpoolHost, state: str, item: os.DirEntry[str],
                    data_sizes: dict[str, int], found: dict[str, SpoolEntry]) -> None:
    """
    One file of a state folder: a record read into C{found}, or a leftover removed, an
    interrupted commit discarded, a second record or a corrupt one set aside.
    """
    name = item.name
    if name.endswith(".json.tmp"):
        unlink_quietly(item.path)
        return
    if not name.endswith(".json"):
        log.warn("spool: {path} is not a spool record; left alone", path=item.path)
        return
    entry_id = name[:-5]
    if entry_id in found:
        # A crash between the two renames of a transition: keep one.
        quarantine(spool, state, entry_id, f"a second record of {entry_id} "
                   f"(the one in {found[entry_id].state}/ is kept)",
                   with_data=False)
        return
    try:
        entry = _read_checked(spool, state, entry_id, data_sizes)
    except InterruptedCommit as e:
        _discard_interrupted(spool, state, entry_id, item.path, e, data_sizes)
        return
    except CorruptEntry as e:
        quarantine(spool, state, entry_id, str(e))
        return
    found[entry_id] = entry


def _read_checked(spool: SpoolHost, state: str, entry_id: str,
                  data_sizes: dict[str, int]) -> SpoolEntry:
    """A record, its queued data checked against its check line."""
    entry, figures = spool._read_record(state, entry_id, data_sizes)
    if state == QUEUED and figures:
        why = data_matches(entry.data_path, figures, data_sizes.get(entry_id, 0))
        if why is not None:
            raise InterruptedCommit(why)
    return entry


def _discard_interrupted(spool: SpoolHost, state: str, entry_id: str, path: str,
                         e: InterruptedCommit, data_sizes: dict[str, int]) -> None:
    """A commit that never finished (never acknowledged): removed from C{queued/};
    anywhere else it cannot be, so it is set aside."""
    if state != QUEUED:
        quarantine(spool, state, entry_id, str(e))
        return
    size = data_sizes.pop(entry_id, 0)
    unlink_quietly(path)
    unlink_quietly(spool._data_path(entry_id))
    if size or not str(e).startswith("empty record"):
        log.info("spool: removed {entry_id}: {reason}; it was never "
                 "acknowledged, so nobody is owed it", entry_id=entry_id,
                 reason=str(e))
    # else: an unused spare pair (both files empty)


def _remove_unowned_data(spool: SpoolHost, data_sizes: dict[str, int],
                         found: dict[str, SpoolEntry]) -> None:
    """Remove message data that no record owns."""
    for stem, size in data_sizes.items():
        if stem in found:
            continue
        unlink_quietly(spool._data_path(stem))
        if size:
            # Data is written before its record exists and removed after it: what has
            # no record was never acknowledged, or was delivered already.
            log.info("spool: removed data/{stem}.eml: message data without a record "
                     "(never acknowledged, or already delivered), owed to nobody",
                     stem=stem)


def _data_sizes(directory: str) -> dict[str, int]:
    """Size of every message data file, by entry id (other names: left alone)."""
    sizes = {}
    for item in os.scandir(os.path.join(directory, "data")):
        if item.name.endswith(".eml") and item.is_file(follow_symlinks=False):
            sizes[item.name[:-4]] = item.stat(follow_symlinks=False).st_size
        else:
            log.warn("spool: {path} is not message data; left alone", path=item.path)
    return sizes


def _warn_about_strangers(directory: str) -> None:
    known = {"tmp", "data", CORRUPT} | set(STATES)
    for item in os.scandir(directory):
        if item.name not in known:
            log.warn("spool: {path} is not part of the spool (the folders are tmp, "
                     "data, {states}, corrupt); left alone and never delivered from",
                     path=item.path, states=", ".join(STATES))


def _withdraw_unreleased_bounces(spool: SpoolHost, found: dict[str, SpoolEntry]) -> None:
    """
    A bounce is committed before its original's record changes, and released only
    after (L{xrelay.delivery.engine}): a crash in between leaves a bounce whose
    original never recorded that attempt (its C{last_attempt} is older than the
    bounce).  That original is tried again and bounced again, so this copy goes.
    """
    for entry_id, bounce in list(found.items()):
        if bounce.bounce_of is None or bounce.attempts or bounce.state != QUEUED:
            continue
        original = found.get(bounce.bounce_of)
        if original is None or original.state not in (QUEUED, DEFERRED):
            continue
        if (original.last_attempt or 0.0) < bounce.received_at:
            log.info("spool: bounce {entry_id} of {original} was never released "
                     "(interrupted); removed, the original is retried",
                     entry_id=entry_id, original=original.entry_id)
            del found[entry_id]
            unlink_quietly(spool._json_path(QUEUED, entry_id))
            unlink_quietly(spool._data_path(entry_id))


# -- corrupt entries -----------------------------------------------------------------

def set_aside(directory: str, path: str, name: str, reason: str) -> str | None:
    """Move one file (or folder) into C{corrupt/} under a free name; never delete."""
    folder = os.path.join(directory, CORRUPT)
    target = os.path.join(folder, name)
    stem, dot, suffix = name.rpartition(".")
    n = 0
    while os.path.lexists(target):
        # Another one of that name was set aside before: X~1.json, X~2.json...
        n += 1
        target = os.path.join(folder, f"{stem}~{n}{dot}{suffix}" if stem else f"{name}~{n}")
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return None  # moved on meanwhile (another reader set it aside)
    log.error("spool: set aside {path} as {target}: {reason}; inspect it, then "
              "delete it or repair and move it back", path=path, target=target,
              reason=reason)
    return target


def quarantine(spool: SpoolHost, state: str, entry_id: str, reason: str,
               with_data: bool = True) -> None:
    """Set an unreadable entry aside: its record, its data, and why."""
    target = set_aside(spool.directory, spool._json_path(state, entry_id),
                       entry_id + ".json", f"{reason} (was in {state}/)")
    if target is None:
        return  # another reader got there first
    stem = os.path.basename(target)[:-5] if target.endswith(".json") else entry_id
    if with_data and os.path.exists(spool._data_path(entry_id)):
        set_aside(spool.directory, spool._data_path(entry_id), stem + ".eml",
                  f"the message data of {entry_id} (now {stem}.eml)")
    write_reason(spool.directory, stem, f"{reason} (was in {state}/)")


def write_reason(directory: str, stem: str, reason: str) -> None:
    """Why C{corrupt/<stem>.*} is there, for C{xrelay queue show}."""
    try:
        with open(os.path.join(directory, CORRUPT, stem + ".reason"), "w",
                  encoding="utf-8") as f:
            f.write(reason + "\n")
    except OSError:
        pass  # a full disk: the log line says why
