"""What the gateway observes, as the alarm pipeline takes it: the pipeline's input vocabulary.

IO threads and the line's EventLog build these and ``AlarmService.submit``
them; the alarm thread turns them into engine inputs (``Sources.feed``). They
live here, in ``alarms/``, because both sides need them and the dependency
arrow points from ``gateway`` to ``alarms`` (never back).

Frozen dataclasses: safe to hand from any thread to the alarm thread.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewayEvent:
    time_ms: int
    name: str
    source: str
    detail: str = ""
    #: for condition events: True raised, False cleared; None for plain events
    active: bool | None = None

    def to_json(self) -> dict:
        out = {"time_ms": self.time_ms, "name": self.name, "source": self.source, "detail": self.detail}
        if self.active is not None:
            out["active"] = self.active
        return out


@dataclass(frozen=True, slots=True)
class ObjectChange:
    kind: str
    device_id: int
    object_id: int
    value: int
    applied_ms: int


@dataclass(frozen=True, slots=True)
class ThreatSample:
    link_name: str
    errors: Mapping[str, int]
    time_ms: int
    device: str | None = None
    #: the link's counters just before ``errors`` when the monitor may not hold them: zeros for a
    #: link's first sample (its counters start at 0), the last counters sent before a settled link's
    #: counters moved again (ThreatMonitor.tick drops a history a window old). None: the monitor's own.
    baseline: Mapping[str, int] | None = None


@dataclass(frozen=True, slots=True)
class DeviceAlarmFrame:
    device: str
    message: object       # railcodecs.DeviceAlarm
    time_ms: int
