"""
Public test doubles for programs that embed xrelay, and for xrelay's own tests.

L{xrelay.testing.spool.MemorySpool} is an L{xrelay.interfaces.ISpool} that keeps its
entries in memory and passes the same interface tests as the real spool.  Nothing here
may be used in production.
"""

from xrelay.testing.spool import MemoryMessage, MemorySpool

__all__ = ["MemoryMessage", "MemorySpool"]
