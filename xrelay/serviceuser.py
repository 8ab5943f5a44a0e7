"""
Checking a configuration as the user the daemon runs as.

Root reads every file, so C{xrelay check-config} run as root would say OK for a secret
that the daemon, running as C{xrelay}, cannot open.  When run as root, check-config
therefore reads the configuration again in a forked child process that has the service
user's uid, gid and groups: the kernel, not a guess from mode bits, decides what is
readable (ACLs and parent folders included).  The child hands back the one-line
L{ConfigError} it finds.  This module never changes the identity of the calling
process, and never prints a file's contents.
"""

from __future__ import annotations

import os
import pwd
import sys

from xrelay.config import ConfigError
from xrelay.configfile import read_config

#: The user contrib/install.sh creates and contrib/systemd/xrelay.service names.
SERVICE_USER = "xrelay"


def checking_user(explicit: str | None) -> pwd.struct_passwd | None:
    """
    Whom to check the configuration as: C{--as-user NAME}; else, when run as root, the
    service user if it exists; else nobody else (C{None}: this process's own reading is
    the check).

    @raise ConfigError: for a user that does not exist, or another user asked for by
        somebody who is not root.
    """
    if explicit is None:
        if os.geteuid() != 0:
            return None
        try:
            return pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return None
    try:
        user = pwd.getpwnam(explicit)
    except KeyError:
        raise ConfigError("--as-user", "", f"no user {explicit!r} on this machine; name "
                          "the user the service runs as (User= in its unit)") from None
    if user.pw_uid == os.geteuid():
        return None
    if os.geteuid() != 0:
        raise ConfigError("--as-user", "", f"only root can check as user {explicit!r}; "
                          "run check-config as root, or as that user")
    return user


def check_as(user: pwd.struct_passwd, path: str) -> None:
    """
    Read the configuration at C{path} again as C{user}, in a forked child that takes
    the user's identity (the code is already loaded: the interpreter need not be
    readable by that user, only the configuration).

    @raise ConfigError: what that user's reading found, prefixed with the user's name.
    """
    # What the reader imports lazily, imported while still root.
    import cryptography.hazmat.primitives.serialization  # noqa: F401
    import cryptography.x509  # noqa: F401
    import twisted.internet.endpoints  # noqa: F401

    path = os.path.abspath(path)
    groups = os.getgrouplist(user.pw_name, user.pw_gid)
    sys.stdout.flush()
    sys.stderr.flush()
    readable, writable = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover (the child's coverage is not collected)
        code = 2
        try:
            os.close(readable)
            os.setgroups(groups)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            os.chdir("/")
            found, code = _read_here(path)
            os.write(writable, found.encode())
        finally:
            os._exit(code)
    os.close(writable)
    with os.fdopen(readable, encoding="utf-8", errors="replace") as pipe:
        found = pipe.read().strip()
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return
    raise ConfigError(f"as user {user.pw_name}", "", found or "the check could not run "
                      f"as this user (exit status {os.waitstatus_to_exitcode(status)})")


def _read_here(path: str) -> tuple[str, int]:
    """The child's side: read the file as this process's user, and the state folder."""
    try:
        config = read_config(path)
    except ConfigError as e:
        return str(e), 1
    state = config.server.state_dir
    if os.path.isdir(state) and not os.access(state, os.W_OK | os.X_OK):
        return (f"{path}: server.state_dir: {state} is not writable by this user; "
                f"chown -R {pwd.getpwuid(os.getuid()).pw_name}: {state}"), 1
    return "", 0
