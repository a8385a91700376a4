"""Alarm floods per operator area (EEMUA 191): new alarms in a sliding window, sans-IO.

An *operator area* is a configured group of devices (``alarms.areas``); a
device in no area, and the gateway itself, are in area ``line``. Every alarm
that annunciates (enters UNACK) is a *new alarm* of its source's area. An
area is *in flood* while more than ``limit`` new alarms lie within the last
``window_ms`` (EEMUA 191: more than 10 in 10 minutes per operator); the
flood ends when the count has fallen to half the limit or below, so a rate
hovering at the limit does not make the flood alarm itself chatter.

The engine turns :meth:`AreaFloods.update`'s changes into the raise and the
clear of ``gateway/ALARM_FLOOD/<area>``.

Threading: not thread-safe; owned by the alarm engine's thread.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping

DEFAULT_AREA = "line"


class AreaFloods:
    """New-alarm windows of every area that has had one."""

    def __init__(self, areas: Mapping[str, str], limit: int, window_ms: int) -> None:
        self._area_of = dict(areas)             # device name -> area
        self.limit, self.window_ms = limit, window_ms
        self._new: dict[str, deque[int]] = {}
        self.flooding: set[str] = set()

    def area_of(self, source: str) -> str:
        """The area of an alarm source: a device's configured area, an area group's own (``area <name>``)."""
        if source.startswith("area "):
            return source[5:]
        return self._area_of.get(source, DEFAULT_AREA)

    def areas(self) -> list[str]:
        """Every configured area, then the others that have had a new alarm."""
        known = dict.fromkeys(self._area_of.values())
        known.update(dict.fromkeys(self._new))
        return list(known)

    def annunciated(self, source: str, now_ms: int) -> None:
        """A new alarm of ``source``'s area (call :meth:`update` after)."""
        self._new.setdefault(self.area_of(source), deque()).append(now_ms)

    def update(self, now_ms: int) -> list[tuple[str, bool]]:
        """Drop new alarms out of the window; ``[(area, flooding)]`` for each area whose flood began or ended."""
        changes = []
        for area, q in self._new.items():
            while q and q[0] <= now_ms - self.window_ms:
                q.popleft()
            n = len(q)
            if area not in self.flooding and n > self.limit:
                self.flooding.add(area)
                changes.append((area, True))
            elif area in self.flooding and n <= self.limit // 2:
                self.flooding.discard(area)
                changes.append((area, False))
        return changes

    def count(self, area: str) -> int:
        """New alarms of ``area`` in the window (as of the last :meth:`update`)."""
        q = self._new.get(area)
        return len(q) if q else 0

    def describe(self, area: str) -> str:
        n, minutes = self.count(area), self.window_ms / 60_000
        return (f"alarm flood in area {area}: {n} new alarms in {minutes:g} min "
                f"({n / minutes:.1f}/min, limit {self.limit} per {minutes:g} min)")
