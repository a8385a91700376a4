"""AlarmEngine: the alarm table, sans-IO. Inputs in, AlarmEvents out.

Every method takes the time (``now_ms``, gateway wall clock, epoch ms) and
returns the list of :class:`~alarms.model.AlarmEvent` it produced, numbered
with a per-gateway ``event_seq`` that strictly increases and continues from
``start_seq`` (the journal's ``last_seq()``). State moves go through
:func:`alarms.lifecycle.step` (the one table). Nothing here reads a clock,
touches the journal or a socket.

Rules where the brief left room (also in the README section):

* **Chattering.** A *cycle* is a raise of the condition followed by its clear.
  When a clear completes a cycle and at least ``chatter_cycles`` cycles whose
  raise lies within the last ``chatter_window_s`` seconds have completed, the
  alarm becomes *chattering*: that clear is published with
  ``chattering: true`` and further raise/clear inputs of the alarm only update
  the condition underneath (counted ``suppressed_chatter``, no events).
  Operator actions still work and publish. When no raise/clear input has
  arrived for ``chatter_window_s`` (checked by ``tick`` and before every
  input), the flag drops; if the condition then differs from the published
  one, one catch-up ``raise`` or ``clear`` event is published
  (``chattering: false``); otherwise the next event carries the flag.
* **Flood.** Every raise that annunciates (enters UNACK) is a *new alarm*; more
  than ``flood_alarms`` of them within ``flood_window_s`` sets the flood flag
  of :meth:`status` (``floods`` counts how often it was entered).
* **Bound.** At most ``max_active`` alarms are in the table (alarms held in
  NORMAL while chattering count). A raise of a new key beyond that is
  refused and counted ``dropped_over_bound``, and the one gateway alarm
  ``gateway/ALARM_TABLE_FULL/-`` (critical, exempt from the bound) is raised;
  it clears when the table is back to 90 % of ``max_active``. Raises of keys
  already in the table are never refused.
* A raise of an alarm already active, or a clear of one not active or not
  known, is no transition: ignored, counted ``ignored_inputs``.
* ``restore`` after a restart takes the journal's last event per key; the
  chattering history is not journaled, so every alarm restarts unflagged.

Threading: not thread-safe; owned by the alarm thread (``alarms.service``).
"""
from __future__ import annotations

import heapq
import uuid
from collections import deque
from datetime import tzinfo
from zoneinfo import ZoneInfo

from alarms import lifecycle
from alarms.lifecycle import NORMAL, SHELVED, UNACK, IllegalTransition
from alarms.model import (SEVERITIES, AlarmEvent, AlarmInput, AlarmKey, ClearAlarm, InfoEvent, OperatorAction, RaiseAlarm,
                    iso_time)

TABLE_FULL = AlarmKey("gateway", "ALARM_TABLE_FULL")
ALARM_SEVERITIES = SEVERITIES[:-1]       # info is for info events only


class UnknownAlarm(KeyError):
    """An operator action named an alarm that is not in the table (never raised, or back to NORMAL)."""

    def __str__(self) -> str:
        return f"alarm {self.args[0]}: not in the alarm table (NORMAL or never raised)"


class _Alarm:
    """One row of the table. ``active`` is the published condition, ``cond`` the latest input."""

    __slots__ = ("key", "severity", "text", "state", "active", "cond", "chattering", "operator",
                 "shelved_until_ms", "raised_ms", "updated_ms", "event_seq", "last_flip_ms")

    def __init__(self, key: AlarmKey, severity: str, text: str, now_ms: int) -> None:
        self.key, self.severity, self.text = key, severity, text
        self.state, self.active, self.cond, self.chattering = NORMAL, False, False, False
        self.operator: str | None = None
        self.shelved_until_ms: int | None = None
        self.raised_ms = self.updated_ms = self.last_flip_ms = now_ms
        self.event_seq = 0

    def to_json(self) -> dict:
        return {"alarm": self.key.to_json(), "severity": self.severity, "text": self.text, "state": self.state,
                "active": self.active, "chattering": self.chattering, "operator": self.operator,
                "shelved_until_ms": self.shelved_until_ms, "raised_ms": self.raised_ms,
                "updated_ms": self.updated_ms, "event_seq": self.event_seq}


def _as_key(key: AlarmKey | str) -> AlarmKey:
    return key if isinstance(key, AlarmKey) else AlarmKey.parse(key)


class AlarmEngine:
    """The alarm table of one gateway (see the module doc for the rules)."""

    def __init__(self, gateway_id: int, line: str, tz: tzinfo | str = "UTC", *, start_seq: int = 0,
                 max_active: int = 10_000, chatter_cycles: int = 3, chatter_window_s: float = 60,
                 flood_alarms: int = 10, flood_window_s: float = 600, max_shelve_minutes: float = 1440) -> None:
        if max_active < 1 or chatter_cycles < 1 or flood_alarms < 1:
            raise ValueError(f"max_active, chatter_cycles, flood_alarms: expected >= 1, got "
                             f"{max_active}, {chatter_cycles}, {flood_alarms}")
        self.gateway_id, self.line = gateway_id, line
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.max_active, self.low_water = max_active, max_active * 9 // 10
        self.chatter_cycles, self.chatter_ms = chatter_cycles, int(chatter_window_s * 1000)
        self.flood_alarms, self.flood_ms = flood_alarms, int(flood_window_s * 1000)
        self.max_shelve_minutes = max_shelve_minutes
        self._seq = start_seq
        self._alarms: dict[AlarmKey, _Alarm] = {}
        self._chattering: set[AlarmKey] = set()
        # raise times of recently completed cycles per key; kept apart from the rows because an acked alarm
        # that clears leaves the table, and its next cycle must still count
        self._cycles: dict[AlarmKey, deque[int]] = {}
        self._shelf: list[tuple[int, str, AlarmKey]] = []     # (until_ms, str key, key), lazy cancel
        self._annunciations: deque[int] = deque()
        self.flood = False
        self.counters = {"dropped_over_bound": 0, "suppressed_chatter": 0, "ignored_inputs": 0, "floods": 0,
                         "chatter_episodes": 0, "events": 0}

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
        """The condition of ``key`` is active (idempotent while it stays active)."""
        key = _as_key(key)
        if severity not in ALARM_SEVERITIES:
            raise ValueError(f"alarm {key}: severity expected one of {', '.join(ALARM_SEVERITIES)}, "
                             f"got {severity!r}")
        out: list[AlarmEvent] = []
        self._end_chatter_if_quiet(key, now_ms, out)
        a = self._alarms.get(key)
        if a is None:
            if key != TABLE_FULL and len(self._alarms) - (TABLE_FULL in self._alarms) >= self.max_active:
                self.counters["dropped_over_bound"] += 1
                self._raise_full(now_ms, out)
                return out
            a = self._alarms[key] = _Alarm(key, severity, text, now_ms)
        if a.cond:
            self.counters["ignored_inputs"] += 1
            return out
        a.cond, a.last_flip_ms = True, now_ms
        if a.chattering:
            self.counters["suppressed_chatter"] += 1
            return out
        a.severity, a.text, a.raised_ms = severity, text, now_ms
        self._move(a, "raise", now_ms, out)
        return out

    def clear(self, key: AlarmKey | str, now_ms: int) -> list[AlarmEvent]:
        """The condition of ``key`` is no longer active (ignored if it was not)."""
        key = _as_key(key)
        out: list[AlarmEvent] = []
        self._end_chatter_if_quiet(key, now_ms, out)
        a = self._alarms.get(key)
        if a is None or not a.cond:
            self.counters["ignored_inputs"] += 1
            return out
        a.cond, a.last_flip_ms = False, now_ms
        if a.chattering:
            self.counters["suppressed_chatter"] += 1
            return out
        cycles = self._cycles.pop(key, None) or deque()
        self._cycles[key] = cycles            # re-inserted: the dict stays ordered by last cycle
        cycles.append(a.raised_ms)
        while cycles and cycles[0] < now_ms - self.chatter_ms:
            cycles.popleft()
        if len(self._cycles) > self.max_active:
            del self._cycles[next(iter(self._cycles))]
        if len(cycles) >= self.chatter_cycles:
            a.chattering = True
            self._chattering.add(key)
            self.counters["chatter_episodes"] += 1
        self._move(a, "clear", now_ms, out)
        return out

    def info(self, key: AlarmKey | str, text: str, now_ms: int) -> list[AlarmEvent]:
        """A one-off information event (never enters the table)."""
        key = _as_key(key)
        return [self._event(key, "info", text, "info", NORMAL, NORMAL, False, False, None, None, now_ms, now_ms)]

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
        if a is None:
            raise UnknownAlarm(str(key))
        lifecycle.step(a.state, a.active, transition, str(key))      # raises IllegalTransition
        a.operator = operator.strip()
        a.shelved_until_ms = until
        if until is not None:
            heapq.heappush(self._shelf, (until, str(key), key))
        out: list[AlarmEvent] = []
        self._move(a, transition, now_ms, out, a.operator, client=client, reason=reason)
        return out

    # -- time ----------------------------------------------------------------------------------------------

    def tick(self, now_ms: int) -> list[AlarmEvent]:
        """Expire shelves, end quiet chattering, update the flood flag. Call about once a second."""
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
        self._update_flood(now_ms)
        return out

    def _end_chatter_if_quiet(self, key: AlarmKey, now_ms: int, out: list) -> None:
        a = self._alarms.get(key)
        if a is None or not a.chattering or now_ms - a.last_flip_ms < self.chatter_ms:
            return
        a.chattering = False
        self._cycles.pop(key, None)
        self._chattering.discard(key)
        if a.cond != a.active:
            if a.cond:
                a.raised_ms = a.last_flip_ms
            self._move(a, "raise" if a.cond else "clear", now_ms, out)
        elif a.state == NORMAL:
            self._forget(a, now_ms, out)

    # -- the one place state changes and events are made ----------------------------------------------------

    def _move(self, a: _Alarm, transition: str, now_ms: int, out: list, operator: str | None = None, *,
              client: str | None = None, reason: str | None = None) -> None:
        prev = a.state
        a.state, a.active = lifecycle.step(a.state, a.active, transition, str(a.key))
        if a.state != SHELVED:
            a.shelved_until_ms = None
        ev = self._event(a.key, a.severity, a.text, transition, prev, a.state, a.active, a.chattering, operator,
                         a.shelved_until_ms, a.raised_ms, now_ms, client=client, reason=reason)
        a.event_seq, a.updated_ms = ev.event_seq, now_ms
        out.append(ev)
        if a.state == UNACK and prev != UNACK:
            self._annunciations.append(now_ms)
            self._update_flood(now_ms)
        if a.state == NORMAL and not a.chattering:
            self._forget(a, now_ms, out)

    def _forget(self, a: _Alarm, now_ms: int, out: list) -> None:
        del self._alarms[a.key]
        full = self._alarms.get(TABLE_FULL)
        if full is not None and full.cond and a.key != TABLE_FULL and len(self._alarms) - 1 <= self.low_water:
            out.extend(self.clear(TABLE_FULL, now_ms))

    def _raise_full(self, now_ms: int, out: list) -> None:
        full = self._alarms.get(TABLE_FULL)
        if full is None or not full.cond:
            out.extend(self.raise_(TABLE_FULL, "critical", f"alarm table full ({self.max_active} alarms): "
                                   "new alarms are refused", now_ms))

    def _event(self, key, severity, text, transition, prev, state, active, chattering, operator, shelved_until,
               raised_ms, now_ms, *, client=None, reason=None) -> AlarmEvent:
        self._seq += 1
        self.counters["events"] += 1
        return AlarmEvent(uuid.uuid4().hex, self._seq, self.gateway_id, self.line, key, severity, text,
                          transition, prev, state, active, chattering, operator, shelved_until, raised_ms,
                          now_ms, iso_time(now_ms, self.tz), client, reason)

    def _update_flood(self, now_ms: int) -> None:
        q = self._annunciations
        while q and q[0] <= now_ms - self.flood_ms:
            q.popleft()
        flood = len(q) > self.flood_alarms
        if flood and not self.flood:
            self.counters["floods"] += 1
        self.flood = flood

    # -- restart and views ----------------------------------------------------------------------------------

    def restore(self, latest: list[AlarmEvent]) -> None:
        """Rebuild the table from the journal's ``latest_states()`` (before any input)."""
        for ev in latest:
            if ev.state == NORMAL or ev.transition == "info":
                continue
            a = self._alarms[ev.alarm] = _Alarm(ev.alarm, ev.severity, ev.text, ev.raised_ms)
            a.state, a.active, a.cond = ev.state, ev.active, ev.active
            a.operator, a.shelved_until_ms = ev.operator, ev.shelved_until_ms
            a.updated_ms, a.event_seq = ev.time_ms, ev.event_seq
            if ev.shelved_until_ms is not None:
                heapq.heappush(self._shelf, (ev.shelved_until_ms, str(ev.alarm), ev.alarm))
            self._seq = max(self._seq, ev.event_seq)

    @property
    def event_seq(self) -> int:
        """The last event_seq issued."""
        return self._seq

    def snapshot(self) -> tuple[int, list[dict]]:
        """``(event_seq, entries)``: every alarm not NORMAL as the snapshot message's entries, seq order."""
        rows = sorted((a for a in self._alarms.values() if a.state != NORMAL), key=lambda a: a.event_seq)
        return self._seq, [a.to_json() for a in rows]

    def condition_keys(self) -> list[AlarmKey]:
        """Keys whose condition is held active (``cond``: the latest raise/clear input), in table order."""
        return [a.key for a in self._alarms.values() if a.cond]

    def state_of(self, key: AlarmKey | str) -> str:
        a = self._alarms.get(_as_key(key))
        return NORMAL if a is None else a.state

    def status(self) -> dict:
        """JSON-ready counts for the status API (counts are of alarms; no units)."""
        by_state: dict[str, int] = {}
        for a in self._alarms.values():
            by_state[a.state] = by_state.get(a.state, 0) + 1
        return {"alarms": len(self._alarms), "max_active": self.max_active, "by_state": by_state,
                "chattering": len(self._chattering), "flood": self.flood,
                "new_alarms_in_flood_window": len(self._annunciations), "event_seq": self._seq, **self.counters}


__all__ = ["AlarmEngine", "IllegalTransition", "TABLE_FULL", "UnknownAlarm"]
