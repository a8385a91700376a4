"""The gateway's wall clock in epoch milliseconds (what frames carry).

One function, in the lowest layer, so that the line (``gateway.line.line``, its default clock) and
the compiled reactor (``gateway/net/_reactor.pyx``, which reads the same clock in C when a link's
connection uses this one) name the same object. Any thread.
"""
from __future__ import annotations

import time


def wall_clock_ms() -> int:
    """Epoch milliseconds from the system clock: ``int(time.time() * 1000)``."""
    return int(time.time() * 1000)
