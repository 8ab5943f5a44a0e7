"""
Start-up is all or nothing: a relay that cannot listen where it was told to, or whose
state folder another process holds, exits at once with one line that names what, why
and the fix, instead of running headless (systemd would show it "active (running)" and
C{Restart=on-failure} would never fire).

This module turns the reasons into those lines; L{xrelay.service.RelayService} decides
to exit.  It must never print a traceback for an operator's mistake.
"""

from __future__ import annotations

import errno
import re
import sys
from typing import Any

from twisted.logger import Logger

__all__ = ["StartupRefused", "cannot_listen", "refuse_to_start", "make_undumpable"]

log = Logger(namespace="xrelay")


class StartupRefused(Exception):
    """The relay must not run; C{str()} is the one line for the operator."""


def _port_of(endpoint: str) -> int | None:
    """The port number in a Twisted endpoint description, when it has one."""
    match = re.search(r"(?:^|:)(?:tcp6?|ssl|haproxy:tcp6?|haproxy:ssl|haproxy):"
                      r"(?:port=)?(\d+)", endpoint)
    return int(match.group(1)) if match else None


def cannot_listen(what: str, endpoint: str, failure: Any) -> str:
    """
    The one line for a listener that could not be opened.

    @param what: which setting it comes from (C{server.listen}, C{admin.listen}).
    @param failure: the L{Failure} of C{endpoint.listen} (normally a
        C{CannotListenError} wrapping the socket error).
    """
    error = getattr(failure, "value", failure)
    cause = getattr(error, "socketError", error)
    number = getattr(cause, "errno", None)
    port = _port_of(endpoint)
    if number == errno.EADDRINUSE:
        reason = "the address is in use by another process"
        fix = (f"stop it (`ss -ltnp 'sport = :{port}'` shows which) or choose another "
               f"port in {what}" if port else f"stop it or change {what}")
    elif number in (errno.EACCES, errno.EPERM) and port is not None and port < 1024:
        reason = "permission denied"
        fix = (f"port {port} needs root or CAP_NET_BIND_SERVICE; the systemd unit "
               "grants it (AmbientCapabilities=CAP_NET_BIND_SERVICE), or listen on a "
               f"port above 1023 in {what}")
    elif number == errno.EADDRNOTAVAIL:
        reason = "that address is not on this machine"
        fix = f"fix interface= in {what} (`ip addr` lists the addresses)"
    else:
        detail = getattr(cause, "strerror", None) or str(cause) or type(cause).__name__
        reason = str(detail)
        fix = f"check {what}"
    return f"xrelay: cannot listen on {endpoint} ({what}): {reason}; {fix}"


def refuse_to_start(line: str) -> None:
    """
    Log the line, print it on standard error (where systemd's journal and a terminal
    see it) and end the process with status 1.
    """
    say(line)
    raise SystemExit(1)


def say(line: str) -> None:
    """
    The line in the log and on the process's own standard error (twistd points
    C{sys.stderr} into its log file; the journal and a terminal read the real one).
    """
    log.critical("{line}", line=line)
    stream = sys.__stderr__
    if stream is None or stream is sys.stderr and _is_log(stream):
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def _is_log(stream: Any) -> bool:
    return type(stream).__name__ == "LoggingFile"


#: prctl(2) option: whether the process may be dumped (core files) or ptrace-attached by
#: its own user.
PR_SET_DUMPABLE = 4
PR_GET_DUMPABLE = 3


def make_undumpable() -> bool:
    """
    Make the daemon non-dumpable (Linux C{prctl(PR_SET_DUMPABLE, 0)}): a crash leaves no
    core file holding access tokens, refresh tokens and the token cache's key, and
    another process of the same user cannot read its memory through ptrace or
    C{/proc/PID/mem}.  The systemd unit also sets C{LimitCORE=0}.  Returns whether it
    took effect (false off Linux, or where prctl is refused: logged, not fatal).
    """
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE) refused")
        return bool(libc.prctl(PR_GET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError) as e:
        log.warn("xrelay: could not make the process non-dumpable ({error}); a crash "
                 "dump could hold tokens: set LimitCORE=0 (systemd) or ulimit -c 0",
                 error=str(e))
        return False
