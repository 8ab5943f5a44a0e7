"""
When to try a deferred message again, and when to give up on it.

Exponential back-off from C{[delivery] first_retry}, doubling up to
C{max_retry_interval}, with jitter so that a burst deferred together (an upstream outage
at 9:00) does not come back as one burst; a message older than C{max_age} is bounced.
Pure arithmetic over numbers it is given: no clock, no I/O.
"""

from __future__ import annotations

import random
from typing import Callable

import attrs

from xrelay.config import DeliveryConfig

#: Each delay is moved by up to this fraction, either way.
JITTER = 0.2


@attrs.frozen
class RetryPolicy:
    first_retry: float = 60
    max_retry_interval: float = 3600
    max_age: float = 432000
    #: Returns a float in [0, 1); injected so tests can pin the jitter.
    random: Callable[[], float] = attrs.field(default=random.random, eq=False, repr=False)

    @classmethod
    def from_config(cls, config: DeliveryConfig,
                    random: Callable[[], float] | None = None) -> "RetryPolicy":
        kwargs = {} if random is None else {"random": random}
        return cls(config.first_retry, config.max_retry_interval, config.max_age, **kwargs)

    def base_delay(self, attempts: int) -> float:
        """The delay after the C{attempts}-th failed attempt, before jitter."""
        exponent = max(attempts - 1, 0)
        # Bounded exponent: 2**exponent must not overflow for very old entries.
        return min(self.first_retry * 2 ** min(exponent, 40), self.max_retry_interval)

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """
        Seconds to wait after the C{attempts}-th failed attempt; at least what the
        upstream asked for (C{Retry-After}).
        """
        base = self.base_delay(attempts)
        jittered = base * (1 + JITTER * (2 * self.random() - 1))
        if retry_after is not None:
            jittered = max(jittered, retry_after)
        return jittered

    def expired(self, received_at: float, now: float) -> bool:
        """Whether a message received then has been queued too long to try again."""
        return now - received_at >= self.max_age
