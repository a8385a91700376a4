"""AlarmEngine: the alarm table, sans-IO. Inputs in, AlarmEvents out.

Every method takes the time (``now_ms``, gateway wall clock, epoch ms) and
returns the list of :class:`~alarms.model.AlarmEvent` it produced, numbered
with a per-gateway ``event_seq`` that strictly increases and continues from
``start_seq`` (the journal's ``last_seq()``). State moves go through
:func:`alarms.lifecycle.step` (the one table). Nothing here reads a clock,
touches the journal or a socket.

**Nothing is refused.** Every raise enters the table or its flood group;
the table's bound is kept by policy (ISA-18.2, EEMUA 191):

* **Bound.** At most ``max_active`` alarms count against the bound (every
  row of the table except the gateway's own ALARM_TABLE_FULL and
  ALARM_FLOOD). A raise of a new key into a full table first makes room, in
  this order: (a) the oldest RTN_UNACK alarm of the lowest priority is
  *evicted* (``evict``, RTN_UNACK -> NORMAL, cause ``table_full``); (b) when no
  RTN_UNACK alarm is left, the lowest-priority source/code pair with the most
  alarms (at least two) is *grouped*: one alarm ``<source>/FLOOD_<code>/-``
  stands for them (its ``group`` field: member count, active members, first
  and last member) and each member leaves the table with a ``group`` event
  (cause ``table_full``); (c) a new alarm of a pair that already has a group
  joins it, and (d) a new alarm whose pair has alarms of its own in the table
  groups them with it. Critical alarms and DEVICE_ALARM_* are *exempt*:
  never evicted or grouped; when nothing else can make room they enter over
  the bound. ``gateway/ALARM_TABLE_FULL/-`` (critical) is raised when room
  had to be made and clears at 90 % of ``max_active``. A grouped member's
  later raises and clears are journaled as ``group`` events (NORMAL ->
  NORMAL with its ``active``); the group alarm clears when its last member
  clears, and when it leaves the table its members are released.
* **Chattering.** A *cycle* is a raise followed by its clear. When a clear
  completes ``chatter_cycles`` cycles whose raise lies within the last
  ``chatter_window_s``, the alarm is *chattering*: the clear is published with
  ``chattering: true`` and the alarm is *shelved by rule* (``auto_shelve``,
  cause ``chattering``, no end time) unless an operator already shelved it or
  took it out of service. While chattering, its raise/clear inputs only update
  the condition underneath (counted ``suppressed_chatter``). After
  ``chatter_quiet_s`` without a raise or clear, ``auto_unshelve`` lands it in
  UNACK or NORMAL by the condition (like an operator's unshelve). The shelve is
  journaled like any state, and ``restore`` rebuilds the chattering rows and
  the cycle history from the journal: chattering survives a restart.
* **Flood.** Every raise that annunciates (enters UNACK) is a new alarm of its
  source's operator area (``alarms/floods.py``); more than ``flood_alarms``
  within ``flood_window_s`` raises ``gateway/ALARM_FLOOD/<area>`` (major, with
  the rate), cleared when the count is back to half the limit.
* A raise of an alarm already active, or a clear of one not active or not
  known, is no transition: ignored, counted ``ignored_inputs``.

Threading: not thread-safe; owned by the alarm thread (``alarms.service``).
"""
from __future__ import annotations

import heapq
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from datetime import tzinfo
from zoneinfo import ZoneInfo

from alarms import lifecycle
from alarms.floods import AreaFloods
from alarms.lifecycle import ACKED, NORMAL, RTN_UNACK, SHELVED, UNACK, IllegalTransition
from alarms.model import (SEVERITIES, AlarmEvent, AlarmInput, AlarmKey, ClearAlarm, InfoEvent, OperatorAction, RaiseAlarm,
                          iso_time)

TABLE_FULL = AlarmKey("gateway", "ALARM_TABLE_FULL")
FLOOD_CODE = "ALARM_FLOOD"
GROUP_PREFIX = "FLOOD_"
#: the source of an area-level flood group alarm: ``area <name>/FLOOD_<code>/-``
AREA_SOURCE = "area "
ALARM_SEVERITIES = SEVERITIES[:-1]       # info is for info events only
#: the engine's own alarm-management alarms: exempt, and not counted against the bound
_MANAGEMENT = frozenset({"ALARM_TABLE_FULL", FLOOD_CODE})
#: lowest priority first: the order in which RTN_UNACK alarms are evicted (critical never is)
_EVICT_ORDER = ("warning", "minor", "major")
_RANK = {s: i for i, s in enumerate(ALARM_SEVERITIES)}
#: cycle histories kept per slot of the table: alarms evicted or grouped in a storm still chatter
CYCLE_KEYS_PER_SLOT = 4


class UnknownAlarm(KeyError):
    """An operator action named an alarm that is not in the table (never raised, back to NORMAL, or grouped)."""

    def __str__(self) -> str:
        return f"alarm {self.args[0]}: not in the alarm table (NORMAL, never raised, or in a flood group)"


def is_management(key: AlarmKey) -> bool:
    return key.source == "gateway" and key.code in _MANAGEMENT


def is_exempt(key: AlarmKey, severity: str) -> bool:
    """Never evicted or grouped: critical alarms, the devices' own alarms, the engine's own."""
    return severity == "critical" or key.code.startswith("DEVICE_ALARM") or is_management(key)


class _Group:
    """What a flood group alarm stands for."""

    __slots__ = ("members", "active", "first", "last")

    def __init__(self) -> None:
        self.members: set[AlarmKey] = set()
        self.active = 0
        self.first: str | None = None
        self.last: str | None = None


class _Alarm:
    """One row. ``active`` is the published condition, ``cond`` the latest input; ``group`` is the key of
    the flood group a member belongs to, ``grp`` what a group alarm stands for."""

    __slots__ = ("key", "severity", "text", "state", "active", "cond", "chattering", "operator",
                 "shelved_until_ms", "raised_ms", "updated_ms", "event_seq", "last_flip_ms", "shelved_by",
                 "cause", "group", "grp")

    def __init__(self, key: AlarmKey, severity: str, text: str, now_ms: int) -> None:
        self.key, self.severity, self.text = key, severity, text
        self.state, self.active, self.cond, self.chattering = NORMAL, False, False, False
        self.operator: str | None = None
        self.shelved_until_ms: int | None = None
        self.raised_ms = self.updated_ms = self.last_flip_ms = now_ms
        self.event_seq = 0
        self.shelved_by: str | None = None     # "operator" or "rule" while SHELVED
        self.cause: str | None = None
        self.group: AlarmKey | None = None
        self.grp: _Group | None = None

    def group_json(self) -> dict | None:
        if self.grp is not None:
            g = self.grp
            return {"key": str(self.key), "members": len(g.members), "active": g.active, "first": g.first,
                    "last": g.last}
        return {"key": str(self.group)} if self.group is not None else None

    def to_json(self) -> dict:
        out = {"alarm": self.key.to_json(), "severity": self.severity, "text": self.text, "state": self.state,
               "active": self.active, "chattering": self.chattering, "operator": self.operator,
               "shelved_until_ms": self.shelved_until_ms, "raised_ms": self.raised_ms,
               "updated_ms": self.updated_ms, "event_seq": self.event_seq}
        if self.cause is not None:
            out["cause"] = self.cause
        if self.grp is not None:
            out["group"] = self.group_json()
        return out


def _as_key(key: AlarmKey | str) -> AlarmKey:
    return key if isinstance(key, AlarmKey) else AlarmKey.parse(key)


class AlarmEngine:
    """The alarm table of one gateway (see the module doc for the rules).

    ``areas`` maps device names (alarm sources) to operator areas.
    """

    def __init__(self, gateway_id: int, line: str, tz: tzinfo | str = "UTC", *, start_seq: int = 0,
                 max_active: int = 10_000, chatter_cycles: int = 3, chatter_window_s: float = 60,
                 chatter_quiet_s: float | None = None, flood_alarms: int = 10, flood_window_s: float = 600,
                 max_shelve_minutes: float = 1440, areas: Mapping[str, str] | None = None) -> None:
        if max_active < 1 or chatter_cycles < 1 or flood_alarms < 1:
            raise ValueError(f"max_active, chatter_cycles, flood_alarms: expected >= 1, got "
                             f"{max_active}, {chatter_cycles}, {flood_alarms}")
        self.gateway_id, self.line = gateway_id, line
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.max_active, self.low_water = max_active, max_active * 9 // 10
        self.chatter_cycles, self.chatter_ms = chatter_cycles, int(chatter_window_s * 1000)
        self.quiet_ms = int((chatter_window_s if chatter_quiet_s is None else chatter_quiet_s) * 1000)
        self.floods = AreaFloods(areas or {}, flood_alarms, int(flood_window_s * 1000))
        self.max_shelve_minutes = max_shelve_minutes
        self._seq = start_seq
        self._alarms: dict[AlarmKey, _Alarm] = {}
        self._chattering: set[AlarmKey] = set()
        # raise times of recently completed cycles per key; kept apart from the rows because an acked alarm
        # that clears leaves the table, and its next cycle must still count
        self._cycles: dict[AlarmKey, deque[int]] = {}
        self._shelf: list[tuple[int, str, AlarmKey]] = []     # (until_ms, str key, key), lazy cancel
        self._rtn: dict[str, dict[AlarmKey, None]] = {s: {} for s in _EVICT_ORDER}  # evictable, oldest first
        self._groups: dict[tuple[str, str], AlarmKey] = {}    # scope (source, code) -> its group alarm
        # grouping scopes -> their visible non-exempt rows (any state; groupable is checked on use)
        self._by_scope: dict[tuple[str, str], set[AlarmKey]] = {}
        self._no_room = False                                 # the last search found nothing to group
        self._grouped = 0                                     # member rows (not in the visible table)
        self._management = 0                                  # rows of the engine's own alarms
        self._admitting = False                               # making room for a new row: no low-water clear
        self.counters = {"suppressed_chatter": 0, "ignored_inputs": 0, "floods": 0, "chatter_episodes": 0,
                         "auto_shelved": 0, "evicted": 0, "grouped": 0, "over_bound_inserts": 0, "events": 0}

    def apply(self, inp: AlarmInput) -> list[AlarmEvent]:
        """Run one input (the service's queue item) through the engine."""
        if isinstance(inp, RaiseAlarm):
            return self.raise_(inp.key, inp.severity, inp.text, inp.time_ms)
        if isinstance(inp, ClearAlarm):
            return self.clear(inp.key, inp.time_ms)
        if isinstance(inp, InfoEvent):
            return self.info(inp.key, inp.text, inp.time_ms)
        if isinstance(inp, OperatorAction):  # the admin API's: its client and reason go into the event
            until = self._shelve_until(inp.key, inp.minutes, inp.time_ms) if inp.action == "shelve" else None
            return self._operate(inp.key, inp.action, inp.operator, inp.time_ms, until,
                                 client=inp.client, reason=inp.reason)
        raise TypeError(f"alarm engine input: expected RaiseAlarm, ClearAlarm, InfoEvent or OperatorAction, "
                        f"got {type(inp).__name__}")

    # -- process inputs ------------------------------------------------------------------------------------

    def raise_(self, key: AlarmKey | str, severity: str, text: str, now_ms: int) -> list[AlarmEvent]:
        """The condition of ``key`` is active (idempotent while it stays active). Never refused."""
        key = _as_key(key)
        if severity not in ALARM_SEVERITIES:
            raise ValueError(f"alarm {key}: severity expected one of {', '.join(ALARM_SEVERITIES)}, "
                             f"got {severity!r}")
        out: list[AlarmEvent] = []
        self._end_chatter_if_quiet(key, now_ms, out)
        a = self._alarms.get(key)
        if a is None:
            a = self._admit(key, severity, text, now_ms, out)
        if a.cond:
            self.counters["ignored_inputs"] += 1
            return out
        a.cond, a.last_flip_ms = True, now_ms
        if a.group is not None:
            self._member_flip(a, now_ms, out)
        elif a.chattering:
            self.counters["suppressed_chatter"] += 1
        else:
            a.severity, a.text, a.raised_ms = severity, text, now_ms
            self._move(a, "raise", now_ms, out)
        return out

    def clear(self, key: AlarmKey | str, now_ms: int) -> list[AlarmEvent]:
        """The condition of ``key`` is no longer active (ignored if it was not)."""
        key = _as_key(key)
        out: list[AlarmEvent] = []
        self._end_chatter_if_quiet(key, now_ms, out)
        a = self._alarms.get(key)
        if a is None or not a.cond or a.grp is not None:    # a group's condition follows its members only
            self.counters["ignored_inputs"] += 1
            return out
        a.cond, a.last_flip_ms = False, now_ms
        if a.chattering:
            if a.group is not None:
                self._member_flip(a, now_ms, out)
            else:
                self.counters["suppressed_chatter"] += 1
            return out
        began = self._count_cycle(a, now_ms)
        if a.group is not None:
            self._member_flip(a, now_ms, out)
            return out
        self._move(a, "clear", now_ms, out)
        if began and a.state != SHELVED and a.state != lifecycle.OUT_OF_SERVICE:
            a.shelved_by = "rule"
            self.counters["auto_shelved"] += 1
            self._move(a, "auto_shelve", now_ms, out, cause="chattering")
        return out

    def info(self, key: AlarmKey | str, text: str, now_ms: int) -> list[AlarmEvent]:
        """A one-off information event (never enters the table)."""
        key = _as_key(key)
        return [self._event(key, "info", text, "info", NORMAL, NORMAL, False, False, None, None, now_ms, now_ms)]

    def _count_cycle(self, a: _Alarm, now_ms: int) -> bool:
        """A clear completed a cycle: True when the alarm has just become chattering."""
        key = a.key
        cycles = self._cycles.pop(key, None) or deque()
        self._cycles[key] = cycles            # re-inserted: the dict stays ordered by last cycle
        cycles.append(a.raised_ms)
        while cycles and cycles[0] < now_ms - self.chatter_ms:
            cycles.popleft()
        if len(self._cycles) > CYCLE_KEYS_PER_SLOT * self.max_active:   # memory bound: oldest history goes
            del self._cycles[next(iter(self._cycles))]
        if len(cycles) < self.chatter_cycles:
            return False
        a.chattering = True
        self._chattering.add(key)
        self.counters["chatter_episodes"] += 1
        return True

    # -- the bound: admit a new key ----------------------------------------------------------------------

    def _counted(self) -> int:
        return len(self._alarms) - self._grouped - self._management

    def _scopes(self, key: AlarmKey) -> tuple[tuple[str, str], tuple[str, str]]:
        """The two flood-group scopes of a key: its device's ``(source, code)`` and its area's
        ``("area <name>", code)`` (used when no device has two alarms of one code to group)."""
        return (key.source, key.code), (AREA_SOURCE + self.floods.area_of(key.source), key.code)

    def _group_of(self, key: AlarmKey) -> AlarmKey | None:
        device, area = self._scopes(key)
        return self._groups.get(device) or self._groups.get(area)

    def _admit(self, key: AlarmKey, severity: str, text: str, now_ms: int, out: list) -> _Alarm:
        """The row of a new key: in the table, in its flood group, or over the bound (exempt)."""
        exempt = is_exempt(key, severity)
        gkey = None if exempt else self._group_of(key)
        if not is_management(key) and gkey is None and self._counted() >= self.max_active:
            self._admitting = True
            try:
                self._make_room(None if exempt else key, now_ms, out)
            finally:
                self._admitting = False
            gkey = None if exempt else self._group_of(key)
        a = self._alarms[key] = _Alarm(key, severity, text, now_ms)
        if is_management(key):
            self._management += 1
        elif gkey is not None:
            a.group = gkey
            self._grouped += 1
            self._alarms[gkey].grp.members.add(key)
        elif not exempt:
            self._index(a)
            if self._counted() > self.max_active:
                self.counters["over_bound_inserts"] += 1     # nothing could make room (see the module doc)
        return a

    def _index(self, a: _Alarm) -> None:
        """A visible, non-exempt row (an alarm or a device-level group) enters its grouping scopes."""
        device, area = self._scopes(a.key if a.grp is None else AlarmKey(a.key.source, a.key.code[len(GROUP_PREFIX):]))
        if a.grp is None:
            self._by_scope.setdefault(device, set()).add(a.key)
        if not a.key.source.startswith(AREA_SOURCE):
            self._by_scope.setdefault(area, set()).add(a.key)
        self._no_room = False

    def _unindex(self, a: _Alarm) -> None:
        code = a.key.code if a.grp is None else a.key.code[len(GROUP_PREFIX):]
        for scope in self._scopes(AlarmKey(a.key.source, code)):
            keys = self._by_scope.get(scope)
            if keys is not None:
                keys.discard(a.key)
                if not keys:
                    del self._by_scope[scope]

    def _make_room(self, new: AlarmKey | None, now_ms: int, out: list) -> None:
        """Free one slot for the new alarm ``new`` (None: an exempt one), in the module doc's order."""
        self._raise_full(now_ms, out)
        for sev in _EVICT_ORDER:
            oldest = next(iter(self._rtn[sev]), None)
            if oldest is not None:
                self.counters["evicted"] += 1
                self._move(self._alarms[oldest], "evict", now_ms, out, cause="table_full")
                return
        if not self._no_room:
            best = self._group_candidate(2)
            if best is not None:
                self._group(*best, now_ms, out)
                return
            self._no_room = True          # until a non-exempt row moves or enters (_move, _index)
        if new is not None:               # (d): its own scope's alarms, grouped with it
            for scope in self._scopes(new):
                members = self._groupable_in(scope)
                if members:
                    self._group(scope, members, now_ms, out)
                    return

    def _groupable(self, a: _Alarm) -> bool:
        return (a.group is None and not is_exempt(a.key, a.severity)
                and (a.state in (UNACK, ACKED) or (a.state == SHELVED and a.shelved_by == "rule")))

    def _groupable_in(self, scope: tuple[str, str]) -> list[_Alarm]:
        rows = (self._alarms[k] for k in self._by_scope.get(scope, ()))
        return [a for a in rows if self._groupable(a)]

    def _group_candidate(self, least: int) -> tuple[tuple[str, str], list[_Alarm]] | None:
        """The scope to group: the lowest-priority device scope with the most groupable alarms (at least
        ``least``), else the same among area scopes; None when there is none."""
        for area_level in (False, True):
            best, best_key = None, None
            for scope in self._by_scope:
                if scope[0].startswith(AREA_SOURCE) != area_level or len(self._by_scope[scope]) < least:
                    continue
                members = self._groupable_in(scope)
                if len(members) >= least:
                    rank = min(_RANK[a.severity] for a in members)
                    if best_key is None or (rank, len(members)) > best_key:
                        best, best_key = (scope, members), (rank, len(members))
            if best is not None:
                return best
        return None

    def _group(self, scope: tuple[str, str], members: list[_Alarm], now_ms: int, out: list) -> None:
        """One group alarm ``<scope source>/FLOOD_<code>/-`` stands for ``members`` (rows, or device-level
        groups merged into an area group: their members move over and the old group row leaves)."""
        source, code = scope
        members.sort(key=lambda a: (a.raised_ms, a.event_seq))
        gkey = AlarmKey(source, GROUP_PREFIX + code)
        g = self._alarms.get(gkey)
        if g is None:
            g = self._alarms[gkey] = _Alarm(gkey, members[0].severity, "", now_ms)
        if g.grp is None:
            g.grp = _Group()
            if not source.startswith(AREA_SOURCE):
                self._index(g)
        self._groups[scope] = gkey
        for a in members:
            moved = [self._alarms[k] for k in a.grp.members] if a.grp is not None else [a]
            for m in moved:
                g.grp.members.add(m.key)
                g.grp.active += m.cond
                g.grp.first = g.grp.first or m.key.object
                g.grp.last = m.key.object
            g.severity = min(g.severity, a.severity, key=_RANK.__getitem__)
        self._group_condition(g, now_ms, out, force=True)
        for a in members:
            self.counters["grouped"] += 1
            self._unindex(a)
            if a.grp is not None:                   # a device group merged into an area group
                for k in a.grp.members:
                    self._alarms[k].group = gkey
                self._groups.pop((a.key.source, a.key.code[len(GROUP_PREFIX):]), None)
                a.grp, a.group = None, gkey
                a.active = a.cond
                self._move(a, "group", now_ms, out, cause="table_full")
                del self._alarms[a.key]
                continue
            a.group, a.shelved_by, a.operator = gkey, None, None
            self._grouped += 1
            a.active = a.cond
            self._move(a, "group", now_ms, out, cause="table_full")
        self._check_low_water(now_ms, out)

    def _member_flip(self, a: _Alarm, now_ms: int, out: list) -> None:
        """A grouped member's condition changed: journal it, and the group follows its members."""
        g = self._alarms[a.group]
        g.grp.active += 1 if a.cond else -1
        if a.cond:
            g.grp.last = a.key.object
        if a.chattering:
            self.counters["suppressed_chatter"] += 1
        else:
            a.active = a.cond
            self._move(a, "group", now_ms, out, cause="table_full")
        self._group_condition(g, now_ms, out)

    def _group_condition(self, g: _Alarm, now_ms: int, out: list, force: bool = False) -> None:
        """Raise or clear a group alarm when whether any member is active changed (``force``: the text
        changed too, publish the raise of a new group even if it starts with no active member)."""
        grp = g.grp
        g.text = (f"flood of {g.key.code[len(GROUP_PREFIX):]} on {g.key.source}: {grp.active} of "
                  f"{len(grp.members)} alarms active (first {grp.first}, last {grp.last})")
        want = grp.active > 0 or (force and not g.cond)
        if want and not g.cond:
            g.cond = True
            g.raised_ms = now_ms
            self._move(g, "raise", now_ms, out)
        if grp.active == 0 and g.cond:
            g.cond = False
            self._move(g, "clear", now_ms, out)

    def _release(self, g: _Alarm) -> None:
        """A group alarm left the table: its members (all inactive) go with it."""
        self._groups.pop((g.key.source, g.key.code[len(GROUP_PREFIX):]), None)
        for k in g.grp.members:
            m = self._alarms.pop(k, None)
            if m is not None:
                self._grouped -= 1
                self._chattering.discard(k)

    def _raise_full(self, now_ms: int, out: list) -> None:
        full = self._alarms.get(TABLE_FULL)
        if full is None or not full.cond:
            out.extend(self.raise_(TABLE_FULL, "critical",
                                   f"alarm table full ({self.max_active} alarms): returned alarms evicted, floods "
                                   "grouped, critical and device alarms over the bound; nothing is refused", now_ms))

    def _check_low_water(self, now_ms: int, out: list) -> None:
        full = self._alarms.get(TABLE_FULL)
        if full is not None and full.cond and not self._admitting and self._counted() <= self.low_water:
            out.extend(self.clear(TABLE_FULL, now_ms))

    # -- operator actions (audited: operator required) ------------------------------------------------------

    def ack(self, key: AlarmKey | str, operator: str, now_ms: int) -> list[AlarmEvent]:
        return self._operate(key, "ack", operator, now_ms)

    def shelve(self, key: AlarmKey | str, operator: str, minutes: float, now_ms: int) -> list[AlarmEvent]:
        """Shelve for ``minutes`` (0 < minutes <= max_shelve_minutes); ``tick`` expires it."""
        return self._operate(key, "shelve", operator, now_ms, self._shelve_until(key, minutes, now_ms))

    def _shelve_until(self, key, minutes: float, now_ms: int) -> int:
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) \
                or not 0 < minutes <= self.max_shelve_minutes:
            raise ValueError(f"alarm {key}: shelve minutes expected a number in (0, {self.max_shelve_minutes}], "
                             f"got {minutes!r}")
        return now_ms + int(minutes * 60_000)

    def unshelve(self, key: AlarmKey | str, operator: str, now_ms: int) -> list[AlarmEvent]:
        return self._operate(key, "unshelve", operator, now_ms)

    def remove_from_service(self, key: AlarmKey | str, operator: str, now_ms: int) -> list[AlarmEvent]:
        return self._operate(key, "remove_from_service", operator, now_ms)

    def return_to_service(self, key: AlarmKey | str, operator: str, now_ms: int) -> list[AlarmEvent]:
        return self._operate(key, "return_to_service", operator, now_ms)

    def _operate(self, key, transition: str, operator: str, now_ms: int, until: int | None = None, *,
                 client: str | None = None, reason: str | None = None) -> list:
        # every check before any change: a refused action changes nothing
        if not isinstance(operator, str) or not operator.strip():
            raise ValueError(f"{transition} of alarm {key}: operator expected the operator's name, got {operator!r}")
        key = _as_key(key)
        a = self._alarms.get(key)
        if a is None or a.group is not None:
            raise UnknownAlarm(str(key))
        lifecycle.step(a.state, a.active, transition, str(key))      # raises IllegalTransition
        a.operator = operator.strip()
        a.shelved_until_ms = until
        if until is not None:
            heapq.heappush(self._shelf, (until, str(key), key))
            a.shelved_by = "operator"
        if transition in ("unshelve", "return_to_service") and a.chattering:
            self._stop_chatter(a)                  # the operator takes it back: it lands by the condition
            a.active = a.cond
        out: list[AlarmEvent] = []
        self._move(a, transition, now_ms, out, a.operator, client=client, reason=reason)
        return out

    # -- time ----------------------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        """Expire shelves, end quiet chattering, update the floods. Call about once a second."""
        out: list[AlarmEvent] = []
        while self._shelf and self._shelf[0][0] <= now_ms:
            until, _, key = heapq.heappop(self._shelf)
            a = self._alarms.get(key)
            if a is not None and a.state == SHELVED and a.shelved_until_ms == until:
                a.shelved_until_ms = None
                self._move(a, "shelve_expired", now_ms, out)
        for key in list(self._chattering):
            self._end_chatter_if_quiet(key, now_ms, out)
        horizon = now_ms - self.chatter_ms
        while self._cycles:                   # oldest last-cycle first: drop histories out of the window
            key, cycles = next(iter(self._cycles.items()))
            if cycles and cycles[-1] >= horizon:
                break
            del self._cycles[key]
        self._update_floods(now_ms, out)
        return out

    def _stop_chatter(self, a: _Alarm) -> None:
        a.chattering = False
        self._cycles.pop(a.key, None)
        self._chattering.discard(a.key)

    def _end_chatter_if_quiet(self, key: AlarmKey, now_ms: int, out: list) -> None:
        a = self._alarms.get(key)
        if a is None or not a.chattering or now_ms - a.last_flip_ms < self.quiet_ms:
            return
        self._stop_chatter(a)
        if a.group is not None:
            if a.cond != a.active:
                a.active = a.cond
                self._move(a, "group", now_ms, out, cause="chattering")
            return
        if a.cond != a.active and a.cond:
            a.raised_ms = a.last_flip_ms
        if a.state == SHELVED and a.shelved_by == "rule":
            a.active = a.cond
            self._move(a, "auto_unshelve", now_ms, out, cause="chattering")
        elif a.cond != a.active:
            self._move(a, "raise" if a.cond else "clear", now_ms, out)
        elif a.state == NORMAL:
            self._forget(a, now_ms, out)

    # -- the one place state changes and events are made ----------------------------------------------------

    def _move(self, a: _Alarm, transition: str, now_ms: int, out: list, operator: str | None = None, *,
              client: str | None = None, reason: str | None = None, cause: str | None = None) -> None:
        prev = a.state
        a.state, a.active = lifecycle.step(a.state, a.active, transition, str(a.key))
        if a.state != SHELVED:
            a.shelved_until_ms = None
            a.shelved_by = None
        a.cause = cause
        ev = self._event(a.key, a.severity, a.text, transition, prev, a.state, a.active, a.chattering, operator,
                         a.shelved_until_ms, a.raised_ms, now_ms, client=client, reason=reason, cause=cause,
                         group=a.group_json())
        a.event_seq, a.updated_ms = ev.event_seq, now_ms
        out.append(ev)
        if prev == RTN_UNACK:
            for rtn in self._rtn.values():
                rtn.pop(a.key, None)
        if a.state == RTN_UNACK and a.severity in self._rtn and not is_exempt(a.key, a.severity) \
                and a.group is None:
            self._rtn[a.severity][a.key] = None
        if a.state == UNACK and prev != UNACK and not is_management(a.key):
            self.floods.annunciated(a.key.source, now_ms)
            self._update_floods(now_ms, out)
        if a.group is None and a.state in (UNACK, ACKED, SHELVED) and not is_exempt(a.key, a.severity):
            self._no_room = False          # it may be groupable now: the next full table searches again
        if transition == "evict":          # leaves the table; its cycle history stays (it may chatter on)
            a.chattering = False
            self._chattering.discard(a.key)
        if a.state == NORMAL and not a.chattering and a.group is None:
            self._forget(a, now_ms, out)

    def _forget(self, a: _Alarm, now_ms: int, out: list) -> None:
        if self._alarms.pop(a.key, None) is None:
            return
        self._unindex(a)
        if is_management(a.key):
            self._management -= 1
        if a.grp is not None:
            self._release(a)
        self._check_low_water(now_ms, out)

    def _event(self, key, severity, text, transition, prev, state, active, chattering, operator, shelved_until,
               raised_ms, now_ms, *, client=None, reason=None, cause=None, group=None) -> AlarmEvent:
        self._seq += 1
        self.counters["events"] += 1
        return AlarmEvent(uuid.uuid4().hex, self._seq, self.gateway_id, self.line, key, severity, text,
                          transition, prev, state, active, chattering, operator, shelved_until, raised_ms,
                          now_ms, iso_time(now_ms, self.tz), client, reason, cause, group)

    def _update_floods(self, now_ms: int, out: list) -> None:
        for area, flooding in self.floods.update(now_ms):
            key = AlarmKey("gateway", FLOOD_CODE, area)
            if flooding:
                self.counters["floods"] += 1
                out.extend(self.raise_(key, "major", self.floods.describe(area), now_ms))
            else:
                out.extend(self.clear(key, now_ms))

    # -- restart and views ----------------------------------------------------------------------------------

    def restore(self, latest: list[AlarmEvent], recent: Iterable[AlarmEvent] = (), now_ms: int | None = None) -> None:
        """Rebuild the table from the journal before any input: ``latest`` (``latest_states()``, the last
        event of every alarm not NORMAL) and ``recent`` (the events of the last chatter window, seq order:
        the cycle history). A chattering alarm's quiet period starts again at ``now_ms``. A flood group
        comes back with no members: they join again as their raises come in (``settle_groups`` clears a
        group none joined)."""
        for ev in latest:
            if ev.state == NORMAL or ev.transition == "info":
                continue
            a = self._alarms[ev.alarm] = _Alarm(ev.alarm, ev.severity, ev.text, ev.raised_ms)
            a.state, a.active, a.cond = ev.state, ev.active, ev.active
            a.operator, a.shelved_until_ms, a.cause = ev.operator, ev.shelved_until_ms, ev.cause
            a.updated_ms, a.event_seq = ev.time_ms, ev.event_seq
            if is_management(a.key):
                self._management += 1
            if ev.state == SHELVED:
                a.shelved_by = "operator" if ev.shelved_until_ms is not None else "rule"
            if ev.chattering:
                a.chattering, a.last_flip_ms = True, ev.time_ms if now_ms is None else now_ms
                self._chattering.add(a.key)
            if ev.alarm.code.startswith(GROUP_PREFIX) and ev.group is not None and "members" in ev.group:
                a.grp = _Group()
                a.grp.first, a.grp.last = ev.group.get("first"), ev.group.get("last")
                self._groups[(ev.alarm.source, ev.alarm.code[len(GROUP_PREFIX):])] = ev.alarm
            if not is_exempt(a.key, a.severity):
                self._index(a)
            if ev.state == RTN_UNACK and ev.severity in self._rtn and not is_exempt(ev.alarm, ev.severity):
                self._rtn[ev.severity][ev.alarm] = None
            if ev.shelved_until_ms is not None:
                heapq.heappush(self._shelf, (ev.shelved_until_ms, str(ev.alarm), ev.alarm))
            self._seq = max(self._seq, ev.event_seq)
        for ev in recent:
            if ev.transition == "clear" or (ev.transition == "group" and not ev.active and ev.previous_state == NORMAL):
                cycles = self._cycles.pop(ev.alarm, None) or deque()
                self._cycles[ev.alarm] = cycles
                cycles.append(ev.raised_ms)

    def settle_groups(self, now_ms: int) -> list[AlarmEvent]:
        """Clear the flood groups no member has joined since a restart (after the start-up grace)."""
        out: list[AlarmEvent] = []
        for a in [a for a in self._alarms.values() if a.grp is not None and not a.grp.members and a.cond]:
            self._group_condition(a, now_ms, out)
        return out

    @property
    def event_seq(self) -> int:
        """The last event_seq issued."""
        return self._seq

    @property
    def flood(self) -> bool:
        """Whether any area is in flood."""
        return bool(self.floods.flooding)

    def snapshot(self) -> tuple[int, list[dict]]:
        """``(event_seq, entries)``: every alarm not NORMAL as the snapshot message's entries, seq order."""
        rows = sorted((a for a in self._alarms.values() if a.state != NORMAL), key=lambda a: a.event_seq)
        return self._seq, [a.to_json() for a in rows]

    def condition_keys(self) -> list[AlarmKey]:
        """Keys whose condition is held active (``cond``: the latest raise/clear input), in table order;
        grouped members included, group alarms not (their condition is their members')."""
        return [a.key for a in self._alarms.values() if a.cond and a.grp is None]

    def state_of(self, key: AlarmKey | str) -> str:
        a = self._alarms.get(_as_key(key))
        return NORMAL if a is None else a.state

    def status(self) -> dict:
        """JSON-ready counts for the status API (counts are of alarms; no units).

        ``alarms``: rows of the table (grouped members not included); ``over_bound``: alarms counted
        against ``max_active`` beyond it, never more than ``exempt`` (critical and device alarms);
        ``areas``: per operator area, flood state, new alarms in the flood window, chattering and shelved."""
        by_state: dict[str, int] = {}
        areas = {area: {"flood": area in self.floods.flooding, "new_alarms_in_window": self.floods.count(area),
                        "alarms": 0, "chattering": 0, "shelved": 0} for area in self.floods.areas()}
        exempt = 0
        for a in self._alarms.values():
            if a.group is not None:
                continue
            by_state[a.state] = by_state.get(a.state, 0) + 1
            if not is_management(a.key) and is_exempt(a.key, a.severity):
                exempt += 1
            area = areas.setdefault(self.floods.area_of(a.key.source),
                                    {"flood": False, "new_alarms_in_window": 0, "alarms": 0, "chattering": 0,
                                     "shelved": 0})
            area["alarms"] += 1
            area["chattering"] += a.chattering
            area["shelved"] += a.state == SHELVED
        counted = self._counted()
        return {"alarms": len(self._alarms) - self._grouped, "max_active": self.max_active, "counted": counted,
                "over_bound": max(0, counted - self.max_active), "exempt": exempt, "by_state": by_state,
                "chattering": len(self._chattering), "flood": self.flood, "groups": len(self._groups),
                "grouped_members": self._grouped, "areas": areas,
                "new_alarms_in_flood_window": sum(self.floods.count(a) for a in self.floods.areas()),
                "event_seq": self._seq, **self.counters}


__all__ = ["AlarmEngine", "IllegalTransition", "TABLE_FULL", "UnknownAlarm", "is_exempt"]
