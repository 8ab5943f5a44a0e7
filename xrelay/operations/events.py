"""
The old home of the event helpers, which now live beside their seam in L{xrelay.events}
(the stages use them, and the stages must not import the operator package).  Kept so
that code written against this path goes on working; new code imports L{xrelay.events}.
"""

from __future__ import annotations

from xrelay.events import FanOutEvents, GuardedEvents, NullEvents, guarded, report_outcome
from xrelay.lifecycle import entry_received_at

__all__ = ["FanOutEvents", "GuardedEvents", "NullEvents", "entry_received_at", "guarded",
           "report_outcome"]
