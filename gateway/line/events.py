"""Gateway events and active conditions: what the alarm stage consumes.

Events are facts with a time (``LINK_UP``, ``LINK_DOWN``); conditions are
states that are raised and later cleared (``LINK_REDUNDANCY_LOST``,
``DEVICE_COMM_LOST``, ``TRAIN_COMM_LOST``), each clear published as the
matching ``*_RESTORED`` event. Every event is logged; the recent ones and the
active conditions show in status, and listeners (the alarm stage, tests) get
each one as it is published.

Threading: every method is safe from any thread (IO loops raise and clear
concurrently); listeners are called in the emitting thread, outside the lock,
in emission order per condition.
"""
from __future__ import annotations

import logging
import threading
from collections import deque

from alarms.observations import GatewayEvent

log = logging.getLogger("railgate.events")

RESTORED = {"LINK_REDUNDANCY_LOST": "LINK_REDUNDANCY_RESTORED", "DEVICE_COMM_LOST": "DEVICE_COMM_RESTORED",
            "TRAIN_COMM_LOST": "TRAIN_COMM_RESTORED"}


class EventLog:
    """Recent events (bounded), active conditions, and listeners."""

    def __init__(self, keep: int = 200) -> None:
        self._lock = threading.Lock()
        self._recent: deque[GatewayEvent] = deque(maxlen=keep)
        self._active: dict[tuple[str, str], GatewayEvent] = {}
        self._listeners: list = []
        self.counts: dict[str, int] = {}

    def subscribe(self, listener) -> None:
        """``listener(event)`` is called for every event from now on. Any thread."""
        with self._lock:
            self._listeners = self._listeners + [listener]

    def emit(self, name: str, source: str, time_ms: int, detail: str = "") -> GatewayEvent:
        """Record a plain event. Any thread."""
        return self._publish(GatewayEvent(time_ms, name, source, detail))

    def raise_condition(self, name: str, source: str, time_ms: int, detail: str = "") -> bool:
        """Raise a condition; False if it was already active (nothing emitted). Any thread."""
        ev = GatewayEvent(time_ms, name, source, detail, True)
        with self._lock:
            if (name, source) in self._active:
                return False
            self._active[(name, source)] = ev
        self._publish(ev)
        return True

    def clear_condition(self, name: str, source: str, time_ms: int, detail: str = "") -> bool:
        """Clear a condition, emitting its ``*_RESTORED`` event; False if it was not active. Any thread."""
        with self._lock:
            if self._active.pop((name, source), None) is None:
                return False
        self._publish(GatewayEvent(time_ms, RESTORED.get(name, name + "_CLEARED"), source, detail, False))
        return True

    def is_active(self, name: str, source: str) -> bool:
        return (name, source) in self._active

    def active_conditions(self) -> list[tuple[str, str]]:
        """``(name, source)`` of every condition raised now. Any thread."""
        with self._lock:
            return list(self._active)

    def _publish(self, ev: GatewayEvent) -> GatewayEvent:
        with self._lock:
            self._recent.append(ev)
            self.counts[ev.name] = self.counts.get(ev.name, 0) + 1
            listeners = self._listeners
        level = logging.WARNING if ev.active else logging.INFO
        log.log(level, "%s %s %s", ev.name, ev.source, ev.detail)
        for listener in listeners:
            try:
                listener(ev)
            except Exception:  # a broken consumer must not stop the IO loop that emitted
                log.exception("event listener failed on %s", ev.name)
        return ev

    def snapshot(self, recent: int = 20) -> dict:
        """JSON-ready: active conditions and the most recent events. Any thread."""
        with self._lock:
            active = sorted(self._active.values(), key=lambda e: e.time_ms)
            last = list(self._recent)[-recent:]
        return {"conditions": [{"name": e.name, "source": e.source, "since_ms": e.time_ms, "detail": e.detail}
                               for e in active],
                "events": [e.to_json() for e in last]}
