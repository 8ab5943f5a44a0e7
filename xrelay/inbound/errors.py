"""
The errors the inbound side turns into replies.

L{SpoolFull} is the spool's own exception when L{xrelay.spool} is importable, so that
the protocol recognises what the real spool raises; the fallback only exists so that
the inbound package can be used with another L{ISpool}.  Nothing else lives here.
"""

from __future__ import annotations

try:
    from xrelay.spool import SpoolFull
except ImportError:  # pragma: no cover - only before the spool module exists

    class SpoolFull(Exception):  # type: ignore[no-redef]
        """The spool cannot store the message now (disk full, quota)."""


__all__ = ["SpoolFull"]
