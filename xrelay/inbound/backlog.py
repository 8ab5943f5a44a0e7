"""
The listen backlog: how many connections the kernel completes and keeps waiting for
C{accept} while the reactor is busy.  Twisted's default is 50; a burst of printers
larger than that (1,000 simultaneous connects in the measurements of issue 28) left
hundreds with a TCP connection and no greeting until their own timeout.  So every
listener that takes a backlog gets at least C{server.max_connections}, unless its
endpoint string names one (C{tcp:25:backlog=64}); the kernel caps it at
C{net.core.somaxconn}.
"""

from __future__ import annotations

import re

__all__ = ["DEFAULT", "with_backlog"]

#: Twisted's own default, the least a listener gets.
DEFAULT = 50

#: Endpoint types whose string takes a C{backlog=} parameter.
_TAKES_BACKLOG = {"tcp", "tcp6", "ssl", "unix"}

_NAMES_BACKLOG = re.compile(r"(?:^|(?<!\\):)backlog=", re.IGNORECASE)


def with_backlog(description: str, max_connections: int) -> str:
    """The endpoint string with a backlog of at least C{max_connections} added."""
    kind = description.split(":", 1)[0].lower()
    if kind not in _TAKES_BACKLOG or _NAMES_BACKLOG.search(description):
        return description
    return f"{description}:backlog={max(max_connections, DEFAULT)}"
