"""
The one rule for every file xrelay keeps in C{state_dir} besides the spool (the account
journals and holds, the message history, the token caches and their key): a file that
cannot be read as what it must be is I{set aside} — renamed beside itself as
C{<name>.unreadable-<time>}, so an operator can look at it and nothing reads it again —
with one log line naming the file, the reason and what it costs; the relay then starts
and delivers without it.

Setting aside is a rename in the same folder: it needs no free space, so it works on a
full disk.  When even the rename fails (a read-only or foreign-owned folder) the file is
left where it is, ignored, and the line says so.

This module must never raise out of its functions for a file-system problem, never
delete anything, and never read a file's contents into a log line (a state file may hold
addresses or encrypted tokens).
"""

from __future__ import annotations

import errno
import os
import stat
import time

from twisted.logger import Logger

__all__ = ["UNREADABLE", "is_full", "prepare_folder", "regular_file_problem", "set_aside"]

log = Logger(namespace="xrelay.statefiles")

#: The infix of a set-aside file's name.
UNREADABLE = ".unreadable-"


def is_full(error: BaseException) -> bool:
    """Whether an error is a lack of space (or of quota) rather than a bad file."""
    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def set_aside(path: str, reason: str, cost: str) -> str | None:
    """
    Rename the unreadable C{path} aside and log it once; returns the new name, or
    C{None} when it could not be renamed (then it is only ignored).

    @param reason: what is wrong with it ("a folder, not a file", "line 3: ...").
    @param cost: what the relay loses by not reading it, for the operator.
    """
    aside = f"{path}{UNREADABLE}{time.strftime('%Y%m%dT%H%M%S')}"
    n = 0
    while os.path.lexists(aside if n == 0 else f"{aside}.{n}"):
        n += 1
    if n:
        aside = f"{aside}.{n}"
    try:
        os.rename(path, aside)
    except OSError as e:
        log.error("state file {path} is unreadable ({reason}) and could not be set aside "
                  "({error}): ignored; {cost}; fix: move it away or repair it",
                  path=path, reason=reason, error=e.strerror or str(e), cost=cost)
        return None
    log.error("state file {path} is unreadable ({reason}): set aside as {aside}; {cost}",
              path=path, reason=reason, aside=os.path.basename(aside), cost=cost)
    return aside


def regular_file_problem(path: str) -> str | None:
    """Why C{path} cannot be a state file (C{None}: missing, or a regular file)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as e:
        return e.strerror or str(e)
    if stat.S_ISDIR(st.st_mode):
        return "a folder, not a file"
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    return None


def prepare_folder(path: str, cost: str) -> bool:
    """
    Make sure C{path} is a folder xrelay can use: a file in its place is set aside and
    the folder created (mode 0700).  Returns whether the folder is there; when it is
    not (no space for it, no permission), one line says so and the caller keeps its
    state in memory.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        log.error("state folder {path} cannot be used ({error}); {cost}", path=path,
                  error=e.strerror or str(e), cost=cost)
        return False
    if st is not None and stat.S_ISDIR(st.st_mode):
        return True
    if st is not None:
        set_aside(path, "a file, not a folder", cost)
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        log.error("state folder {path} cannot be created ({error}); {cost} until it can "
                  "(fix: {fix})", path=path, error=e.strerror or str(e), cost=cost,
                  fix="free space in server.state_dir" if is_full(e) else
                  "make server.state_dir writable by the relay's user")
        return False
    return True
