"""Alarm sources: sans-IO adapters that turn what the gateway observes into engine inputs.

Each adapter takes an observation with its time and returns a list of
:data:`~alarms.model.AlarmInput` (raise / clear / info); none reads a clock.

* :class:`GatewayEventSource` -- EventLog conditions (``*_LOST``, coupling)
  become raise/clear with the severity of :data:`SEVERITY`; the plain events
  CONSIST_COUPLED / CONSIST_DECOUPLED become info events.
* :class:`ThreatMonitor` -- per-link receiver counters (cumulative, as in
  ``LinkChecks.errors``) become EN 50159 threat alarms when the count within
  ``window_s`` reaches the configured limit (limits are counts per window,
  not per second). A threat alarm clears when its count in the window has
  fallen below half the limit (for a limit of 1: a whole clean window).
* :func:`device_alarm_inputs` -- a DEVICE_ALARM frame raises or clears
  ``<device>/DEVICE_ALARM_<code>/<object_id>`` with the ICD severity.
* :class:`ObjectStateSource` -- ObjectState listener callbacks: a switch in
  position ``lost`` for longer than ``switch_lost_s`` raises
  ``SWITCH_POSITION_LOST`` (found by :meth:`ObjectStateSource.tick`); a track
  section in ``fault`` raises ``TRACK_SECTION_FAULT`` at once. Any other value
  clears.

REPETITION counts the link's ``duplicate`` errors. The normal second copy of
a dual-net frame is not one of them: the receiver counts it apart as a
dual-net copy (``codecs/sequence.py``), so only repeats that dual nets do not
explain (a second copy on the same net, a third copy) can raise it.
Call ``sample(name, link.errors, now, device="CI-1")``.

Threading: not thread-safe. The alarm service owns one :class:`Sources` and
feeds it from the alarm thread (IO threads only submit the observations).
"""
from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

from alarms.observations import DeviceAlarmFrame, GatewayEvent, ObjectChange, ThreatSample
from alarms.model import SEVERITY_BY_ICD, AlarmInput, AlarmKey, ClearAlarm, InfoEvent, RaiseAlarm

#: EventLog condition -> severity
SEVERITY = {"DEVICE_COMM_LOST": "critical", "LINK_REDUNDANCY_LOST": "major", "TRAIN_COMM_LOST": "major",
            "COUPLING_DOUBLE_MASTER": "critical", "COUPLING_DOUBLE_SLAVE": "major", "COUPLING_MISMATCH": "major",
            "COUPLING_TIMEOUT": "minor",
            # an unexpected exception in a link's handler closed the link (gateway/net/connection.py);
            # cleared at the device's next confirmed session (gateway/app/context.py)
            "LINK_FAULT": "major"}
#: clear-event name -> condition (EventLog names clears ``*_RESTORED`` or ``<name>_CLEARED``)
_CLEARED_BY = {"LINK_REDUNDANCY_RESTORED": "LINK_REDUNDANCY_LOST", "DEVICE_COMM_RESTORED": "DEVICE_COMM_LOST",
               "TRAIN_COMM_RESTORED": "TRAIN_COMM_LOST", **{f"{c}_CLEARED": c for c in SEVERITY}}
INFO_EVENTS = ("CONSIST_COUPLED", "CONSIST_DECOUPLED", "GATEWAY_STOPPING")

#: threat alarm -> (receiver counters it sums, threat_rates setting name, severity)
THREATS = {"CORRUPTION": (("bad_crc", "bad_payload"), "corruption", "major"),
           "FRAME_LOSS": (("gap",), "frame_loss", "minor"),
           "DELAYED_DATA": (("stale",), "delayed_data", "minor"),
           "REPETITION": (("duplicate",), "repetition", "minor"),
           "MASQUERADE_SUSPECTED": (("bad_mac", "missing_mac", "unknown_source", "wrong_destination"),
                                    "masquerade", "critical")}


#: conditions whose raise and clear take the service's priority lane (with device alarms, operator actions)
CRITICAL_CONDITIONS = frozenset(c for c, sev in SEVERITY.items() if sev == "critical")


def lane_of(item) -> str:
    """The alarm service's lane for an observation or input (``alarms/service.py``): ``priority`` for
    device alarm frames and critical conditions (raise and clear alike, so a key keeps one lane);
    ``sheddable`` for threat samples and info events, the only inputs that may be sampled away;
    ``essential`` for everything else (conditions and object changes are facts not sent again)."""
    if isinstance(item, DeviceAlarmFrame):
        return "priority"
    if isinstance(item, GatewayEvent):
        if item.active is None:
            return "sheddable"
        return "priority" if _CLEARED_BY.get(item.name, item.name) in CRITICAL_CONDITIONS else "essential"
    if isinstance(item, (ThreatSample, InfoEvent)):
        return "sheddable"
    return "essential"


def key_part(text: str) -> str:
    """A name as a key part: '/' would split the key string."""
    return str(text).strip().replace("/", "_") or "-"


class GatewayEventSource:
    """EventLog ``GatewayEvent`` -> inputs. Events it does not know give nothing."""

    def on_event(self, ev: GatewayEvent) -> list[AlarmInput]:
        name, source = ev.name, key_part(ev.source)
        if ev.active is True and name in SEVERITY:
            return [RaiseAlarm(AlarmKey(source, name), SEVERITY[name], ev.detail or name, ev.time_ms)]
        if ev.active is False and name in _CLEARED_BY:
            return [ClearAlarm(AlarmKey(source, _CLEARED_BY[name]), ev.time_ms)]
        if ev.active is None and name in INFO_EVENTS:
            return [InfoEvent(AlarmKey(source, name), ev.detail or name, ev.time_ms)]
        return []


@dataclass(frozen=True, slots=True)
class ThreatLimits:
    """Counts per ``window_s`` at which a threat alarm is raised (threat_rates of the config)."""

    window_s: float = 10
    corruption: int = 5
    frame_loss: int = 20
    delayed_data: int = 5
    repetition: int = 50
    masquerade: int = 1


class ThreatMonitor:
    """Per-link threat alarms from cumulative receiver counters (see the module doc)."""

    def __init__(self, limits: ThreatLimits = ThreatLimits()) -> None:
        self.limits = limits
        self._window_ms = int(limits.window_s * 1000)
        # link -> deque of (time_ms, totals per threat); the first entry is the baseline
        self._history: dict[str, deque[tuple[int, dict[str, int]]]] = {}
        self._device: dict[str, str] = {}
        self._active: set[tuple[str, str]] = set()

    def sample(self, link_name: str, errors: Mapping[str, int], now_ms: int,
               device: str | None = None, baseline: Mapping[str, int] | None = None) -> list[AlarmInput]:
        """Record the link's cumulative counters at ``now_ms``; raise/clear its threat alarms.

        ``baseline``: the link's counters just before these (``ThreatSample.baseline``), recorded
        first at the same time, so that the errors between the two count in the window even when
        this monitor holds no earlier sample of the link (its first, or one after :meth:`tick`
        dropped a quiet link's history)."""
        out: list[AlarmInput] = []
        if baseline is not None:
            out = self.sample(link_name, baseline, now_ms, device)
        totals = {code: sum(int(errors.get(c, 0)) for c in counters) for code, (counters, _, _) in THREATS.items()}
        hist = self._history.setdefault(link_name, deque())
        if hist and any(totals[k] < hist[-1][1][k] for k in totals):
            hist.clear()                       # counters went back: a new LinkChecks under the same name
        hist.append((now_ms, totals))
        while len(hist) > 1 and hist[1][0] <= now_ms - self._window_ms:
            hist.popleft()                     # keep one sample at or before the window's start as baseline
        if device is not None:
            self._device[link_name] = device
        counts = self._window_counts(link_name)
        source = key_part(self._device.get(link_name, link_name))
        for code, (_, setting, severity) in THREATS.items():
            limit, n, key = getattr(self.limits, setting), counts[code], (link_name, code)
            if key not in self._active and n >= limit:
                self._active.add(key)
                out.append(RaiseAlarm(AlarmKey(source, code, key_part(link_name)), severity,
                                      f"{n} in {self.limits.window_s:g} s on {link_name} (limit {limit})", now_ms))
            elif key in self._active and n * 2 < limit:
                self._active.discard(key)
                out.append(ClearAlarm(AlarmKey(source, code, key_part(link_name)), now_ms))
        return out

    def tick(self, now_ms: int) -> list[AlarmInput]:
        """Clear the threat alarms of links whose last sample is older than the window: a link that
        went away (or a gateway restarted since) has had a quiet window, and no sample will come
        to clear them otherwise. Its history goes too."""
        out: list[AlarmInput] = []
        for link_name, hist in list(self._history.items()):
            if hist and hist[-1][0] > now_ms - self._window_ms:
                continue
            del self._history[link_name]
            source = key_part(self._device.pop(link_name, link_name))
            gone = sorted(k for k in self._active if k[0] == link_name)
            self._active.difference_update(gone)
            out += [ClearAlarm(AlarmKey(source, code, key_part(link_name)), now_ms) for _, code in gone]
        return out

    def active_keys(self) -> set[AlarmKey]:
        """The threat alarms this monitor holds raised."""
        return {AlarmKey(key_part(self._device.get(link, link)), code, key_part(link)) for link, code in self._active}

    def _window_counts(self, link_name: str) -> dict[str, int]:
        hist = self._history[link_name]
        first, last = hist[0][1], hist[-1][1]
        return {k: last[k] - first[k] for k in last}



def device_alarm_inputs(device: str, msg, time_ms: int) -> list[AlarmInput]:
    """An accepted DEVICE_ALARM message (``railcodecs.DeviceAlarm``) of ``device`` -> one input."""
    key = AlarmKey(key_part(device), f"DEVICE_ALARM_{msg.code}", str(msg.object_id))
    if msg.action == msg.RAISE:
        return [RaiseAlarm(key, SEVERITY_BY_ICD[msg.severity], msg.text or key.code, time_ms)]
    return [ClearAlarm(key, time_ms)]


SECTION_FAULT, SWITCH_LOST = 2, 3       # indexes in gateway.line.object_state SECTION_STATES / POSITIONS
CODE_OF_KIND = {"TRACK_SECTIONS": "TRACK_SECTION_FAULT", "SWITCHES": "SWITCH_POSITION_LOST"}


class ObjectStateSource:
    """Track sections in fault and switches lost for too long, from ObjectState changes."""

    def __init__(self, device_names: Mapping[int, str], switch_lost_s: float = 5) -> None:
        self.device_names = dict(device_names)
        self.switch_lost_ms = int(switch_lost_s * 1000)
        self._lost_since: dict[tuple[int, int], int] = {}     # switches lost, not yet alarmed
        self._alarmed: set[tuple[str, int, int]] = set()       # (kind, device, object) raised

    def on_change(self, kind: str, device_id: int, object_id: int, value: int, applied_ms: int) -> list[AlarmInput]:
        """One ObjectState listener callback."""
        if kind == "TRACK_SECTIONS":
            return self._set(("TRACK_SECTIONS", device_id, object_id), value == SECTION_FAULT,
                             "TRACK_SECTION_FAULT", "major", "track section in fault", applied_ms)
        if kind == "SWITCHES":
            obj = (device_id, object_id)
            if value == SWITCH_LOST:
                self._lost_since.setdefault(obj, applied_ms)
                return self.tick(applied_ms)
            self._lost_since.pop(obj, None)
            return self._set(("SWITCHES", device_id, object_id), False, "SWITCH_POSITION_LOST", "", "", applied_ms)
        return []

    def tick(self, now_ms: int) -> list[AlarmInput]:
        """Raise SWITCH_POSITION_LOST for switches lost longer than switch_lost_s."""
        out: list[AlarmInput] = []
        for (dev, obj), since in list(self._lost_since.items()):
            if now_ms - since > self.switch_lost_ms:
                del self._lost_since[(dev, obj)]
                out += self._set(("SWITCHES", dev, obj), True, "SWITCH_POSITION_LOST", "major",
                                 f"switch position lost for more than {self.switch_lost_ms / 1000:g} s", now_ms)
        return out

    def _set(self, ident: tuple[str, int, int], on: bool, code: str, severity: str, text: str,
             time_ms: int) -> list[AlarmInput]:
        key = AlarmKey(key_part(self.device_names.get(ident[1], str(ident[1]))), code, str(ident[2]))
        if on and ident not in self._alarmed:
            self._alarmed.add(ident)
            return [RaiseAlarm(key, severity, text, time_ms)]
        if not on and ident in self._alarmed:
            self._alarmed.discard(ident)
            return [ClearAlarm(key, time_ms)]
        return []

    def active_keys(self) -> set[AlarmKey]:
        """The object alarms this source holds raised."""
        return {AlarmKey(key_part(self.device_names.get(dev, str(dev))), CODE_OF_KIND[kind], str(obj))
                for kind, dev, obj in self._alarmed}


#: the alarm codes these sources raise from what the gateway observes (``reconcile`` may clear them)
OWNED_CODES = frozenset(SEVERITY) | frozenset(THREATS) | frozenset(CODE_OF_KIND.values())


class Sources:
    """All adapters behind one ``feed(observation)``; owned by the alarm thread."""

    def __init__(self, device_names: Mapping[int, str] | None = None, switch_lost_s: float = 5,
                 limits: ThreatLimits = ThreatLimits()) -> None:
        self.events = GatewayEventSource()
        self.threats = ThreatMonitor(limits)
        self.objects = ObjectStateSource(device_names or {}, switch_lost_s)

    def feed(self, item) -> list[AlarmInput] | None:
        """Inputs for an observation; None if ``item`` is not an observation (an AlarmInput, say)."""
        if isinstance(item, ObjectChange):
            return self.objects.on_change(item.kind, item.device_id, item.object_id, item.value, item.applied_ms)
        if isinstance(item, ThreatSample):
            return self.threats.sample(item.link_name, item.errors, item.time_ms, item.device, item.baseline)
        if isinstance(item, DeviceAlarmFrame):
            return device_alarm_inputs(item.device, item.message, item.time_ms)
        if isinstance(item, GatewayEvent):
            return self.events.on_event(item)
        return None

    def tick(self, now_ms: int) -> list[AlarmInput]:
        return self.objects.tick(now_ms) + self.threats.tick(now_ms)

    def reconcile(self, raised: list[AlarmKey], conditions: set[AlarmKey], now_ms: int) -> list[AlarmInput]:
        """After a restart, clear what the gateway no longer observes.

        ``raised``: the keys whose condition the engine holds active (restored from the journal, or
        raised since); ``conditions``: the EventLog conditions active now. An alarm of a code these
        sources own (communication, coupling, threat, object state) is cleared when neither the
        EventLog nor a source holds it: the process that raised it is gone, and nothing would ever
        send its clear. DEVICE_ALARM_* are the devices' own and are left alone.
        """
        held = conditions | self.threats.active_keys() | self.objects.active_keys()
        return [ClearAlarm(key, now_ms) for key in raised if key.code in OWNED_CODES and key not in held]
