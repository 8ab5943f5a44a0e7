"""
The disk reserve: new mail is refused (C{452 4.3.1}) while the spool's file system has
less than C{server.min_free_space} bytes free, so that what the relay owes to mail it
already accepted (bounces, state changes, the token cache) still finds room.

Only the inbound side goes through L{ReservingSpool}; the delivery engine writes bounces
and records to the spool itself, into the reserve.  This module never deletes anything
to make room.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

from twisted.logger import Logger
from zope.interface import implementer

from xrelay.envelope import Envelope
from xrelay.interfaces import IIncomingMessage, ISpool, SpoolFull

__all__ = ["ReservingSpool", "free_bytes"]

log = Logger()

#: Seconds between two warnings about the reserve (one line, not one per message).
WARN_EVERY = 60.0

#: Seconds a measurement of free space is reused: C{statvfs} at most this often, not
#: twice per message (MAIL and DATA both ask) under load ...
MEASURE_EVERY = 0.1
#: ... while free space is at least this many times the reserve; nearer to it, every
#: question measures again, so that space running out is seen at once.
HEADROOM = 3


def free_bytes(directory: str) -> int:
    """Bytes an unprivileged writer may still use on the file system of C{directory}."""
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


@implementer(ISpool)
class ReservingSpool:
    """
    The spool as the inbound side sees it: L{incoming} refuses while free space is
    below the reserve; everything else is the spool's own.

    @param minimum: the reserve in bytes, asked each time (a reload may change it).
    @param free: how many bytes are free (L{free_bytes} of the spool folder).
    """

    def __init__(self, spool: ISpool, minimum: Callable[[], int],
                 free: Callable[[], int] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.spool = spool
        self._minimum = minimum
        self._free = free or (lambda: free_bytes(spool.directory))
        self._clock = clock
        self._warned = -WARN_EVERY
        self._measured = float("-inf")
        self._last_free = 0

    def shortfall(self) -> str | None:
        """
        Why new mail cannot be taken now (free space below the reserve), or C{None}.
        The inbound side may ask at MAIL already, to answer 452 4.3.1 there.
        """
        minimum = self._minimum()
        if not minimum:
            return None
        now = self._clock()
        if (now - self._measured >= MEASURE_EVERY or now < self._measured
                or self._last_free < HEADROOM * minimum):
            self._last_free, self._measured = self._free(), now
        free = self._last_free
        if free >= minimum:
            return None
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warn("spool: {free} bytes free in {directory}, below "
                     "server.min_free_space ({minimum}); new mail gets 452 4.3.1 until "
                     "space is freed", free=free, minimum=minimum,
                     directory=self.spool.directory)
        return f"{free} bytes free, below server.min_free_space"

    def incoming(self, envelope: Envelope, bounce_of: str | None = None
                 ) -> IIncomingMessage:
        why = self.shortfall()
        if why is not None:
            raise SpoolFull(why)
        return self.spool.incoming(envelope, bounce_of)

    def recover(self) -> None:
        self.spool.recover()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.spool, name)
