"""
A wall clock the clock-step tests can step: loaded at interpreter start (before Twisted
binds C{time.time}) by the relay process those tests start, it adds the seconds written
in C{$XRELAY_TEST_CLOCK_OFFSET_FILE} to C{time.time()}; C{time.monotonic()} is left
alone, as an NTP step leaves it.

(libfaketime was tried first: with a changing offset its C{clock_nanosleep} makes
Python's C{time.sleep} fail with EINVAL, and without C{DONT_FAKE_MONOTONIC} waits hang.)
"""

import os
import time

_path = os.environ.get("XRELAY_TEST_CLOCK_OFFSET_FILE")
if _path:
    _real_time = time.time
    _real_monotonic = time.monotonic
    _cache = [0.0, -1.0]  # offset, when read (monotonic)

    def _offset() -> float:
        now = _real_monotonic()
        if now - _cache[1] > 0.1:
            try:
                with open(_path) as f:
                    _cache[0] = float(f.read().strip() or 0)
            except (OSError, ValueError):
                pass
            _cache[1] = now
        return _cache[0]

    def _stepped_time() -> float:
        return _real_time() + _offset()

    def _stepped_time_ns() -> int:
        return int(_stepped_time() * 1e9)

    time.time = _stepped_time
    time.time_ns = _stepped_time_ns
