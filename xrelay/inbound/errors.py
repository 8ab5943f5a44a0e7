"""
The errors the inbound side turns into replies.

L{SpoolFull} is the one every L{ISpool} raises (L{xrelay.interfaces}), so that the
protocol recognises it from any spool.  Nothing else lives here.
"""

from __future__ import annotations

from xrelay.interfaces import SpoolFull

__all__ = ["SpoolFull"]
