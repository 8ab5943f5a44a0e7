"""
The folders above C{server.state_dir}: whoever may write in one of them can rename the
state folder (or the folder holding it) away and put one of their own in its place,
under a running relay that keeps writing spool files, the token cache and its key there.
So every folder from C{/} down to the state folder must belong to root or to the user
the relay runs as, and be writable by nobody else; a folder with the sticky bit (C{/tmp})
is accepted, since there only an entry's owner may rename or remove it.

Checked at start (L{xrelay.checks.problems}: the daemon refuses to start, C{xrelay
check-config} prints the same line).  Pure reads: nothing here changes a folder.  The
state folder itself is checked by L{xrelay.checks} (owner, mode), its subfolders too.
"""

from __future__ import annotations

import os
import stat

__all__ = ["parent_folder_problems"]


def _ancestors(path: str) -> list[str]:
    """Every existing folder from C{/} down to C{path}'s parent, as written and resolved."""
    found: list[str] = []
    for start in (os.path.abspath(path), os.path.realpath(path)):
        folder = os.path.dirname(start)
        chain = []
        while True:
            chain.append(folder)
            parent = os.path.dirname(folder)
            if parent == folder:
                break
            folder = parent
        found.extend(f for f in reversed(chain) if f not in found)
    return found


def parent_folder_problems(state_dir: str, uid: int | None = None) -> list[str]:
    """
    One line per unsafe folder above C{state_dir}, each with the command that fixes it
    (empty when all is well).  C{uid}: the user the relay runs as (default: this
    process's effective user).
    """
    me = os.geteuid() if uid is None else uid
    problems = []
    for folder in _ancestors(state_dir):
        try:
            st = os.lstat(folder)
        except FileNotFoundError:
            continue  # not made yet: the first existing folder above it is checked
        except OSError as e:
            problems.append(f"{folder} (above state_dir) cannot be examined "
                            f"({e.strerror}); fix its permissions")
            continue
        if stat.S_ISLNK(st.st_mode):
            try:
                st = os.stat(folder)  # the link's target is checked by its own path too
            except OSError:
                continue
        if st.st_uid not in (0, me):
            problems.append(
                f"{folder} (above state_dir) is owned by uid {st.st_uid}, who could swap "
                f"the state folder under the running relay; chown root {folder} (or "
                "move state_dir under a folder of root's or the relay's user)")
            continue
        writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
        if writable and not st.st_mode & stat.S_ISVTX:
            who = "others" if st.st_mode & stat.S_IWOTH else "its group"
            problems.append(
                f"{folder} (above state_dir) is writable by {who} (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could swap the state folder under "
                f"the running relay; chmod go-w {folder}")
    return problems
