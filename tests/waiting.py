"""
The one way tests wait for a state: poll a condition on the real reactor, with a
generous timeout for a loaded 2-core machine (never sleep-and-hope).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from twisted.internet import reactor, task

#: Long enough for a busy CI machine; a test that reaches it has failed.
TIMEOUT = 30.0
#: How often the condition is asked.
INTERVAL = 0.02


async def until(condition: Callable[[], Any], timeout: float = TIMEOUT,
                what: str = "") -> None:
    """Wait until C{condition()} is true; fail (naming C{what}) after C{timeout}."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition never became true within {timeout:g}s"
                                 + (f": {what}" if what else ""))
        await task.deferLater(reactor, INTERVAL, lambda: None)
