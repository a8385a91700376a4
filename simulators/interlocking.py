"""The commanded state of the simulated line: switch moves, routes set and cancelled, blocked sections.

One :class:`Interlocking` belongs to the :class:`~simulators.line.LineModel`
(``model.ixl``), the one railway every simulated device looks at; each device's
:class:`~simulators.commands.CommandDesk` calls its operations for the objects
that device owns. An operation either answers at once (``(result, detail)``)
or returns a :class:`Pending` the desk polls after each model step; its result
is due once the line shows what it did, so a COMMAND_RESULT never runs ahead
of the status frames that report its effect.

The rules (docs/icd-decisions.md, "Commands in the simulators"):

* a switch moves only if it is not moving, not held by a route, and its
  section is not occupied, faulty, blocked or locked (state 3, by a route or
  ahead of a train); it reports ``moving`` for a time drawn from ``move_s``
  (2-6 s) and the result is *done* when it arrives. A switch already where it
  is asked to be is done at once;
* a route is set if all its sections are free (state 0, not blocked, not held
  by another route) and each of its switches is in position or movable; its
  sections show *locked* at once, its switches move, its start signal stays
  red until every switch is in position, then shows proceed by the aspect rule
  of :meth:`route_aspect`, and the result is *done*;
* a cancelled route releases its sections and switches and leaves its start
  signal at red until a route from it is set again;
* the spontaneous switch moves of the model leave alone a switch held by a
  route or commanded in the last :data:`HOLD_S` seconds (:meth:`holds`); the
  automatic locking ahead of a train only ever adds a lock.

Used from the simulator's one asyncio thread (commands from protocol callbacks,
``advance`` and the overlays from the model's step).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from enum import IntEnum

from railcodecs import Signals, TrackSections

from .track import RouteLayout, Track

RESULT_DONE, RESULT_REJECTED, RESULT_FAILED, RESULT_STALE_TOKEN = 0, 1, 2, 3   # COMMAND_RESULT.result
MOVE_S = (2.0, 6.0)       # how long a switch takes to move, drawn per move
HOLD_S = 60.0             # a commanded switch is left alone by the spontaneous moves this long
SETTING, SET = "setting", "set"
_IN_THE_WAY = (TrackSections.OCCUPIED, TrackSections.FAULT)


class Detail(IntEnum):
    """COMMAND_RESULT.detail: why a command was rejected or failed (0 with done or stale token)."""

    NONE = 0
    OCCUPIED = 1          # a section (the switch's, or one of the route's) is occupied
    LOCKED = 2            # ... is locked in a route (commanded, or ahead of a train), or the switch is held by a route
    UNKNOWN_OBJECT = 3    # this device has no such switch, section or route (start signal)
    MOVING = 4            # the switch is moving
    BLOCKED = 5           # a section is blocked (op 5)
    FAULT = 6             # a section shows a fault
    NO_TRACK = 7          # the line file has no track: section, so no route is known
    NO_PATH = 8           # the route's signals are not joined by a path
    CANCELLED = 9         # failed: the route was cancelled before it was set


Answer = tuple[int, int]  # (result, detail)
DONE: Answer = (RESULT_DONE, Detail.NONE)


def rejected(detail: Detail) -> Answer:
    return RESULT_REJECTED, detail


@dataclass
class RouteSet:
    route: int
    layout: RouteLayout
    state: str = SETTING


class Pending(ABC):
    """An accepted command whose result is not due yet."""

    @abstractmethod
    def poll(self) -> Answer | None:
        """The result once due, else None."""


class SwitchArrival(Pending):
    def __init__(self, model, switch: int, move_no: int) -> None:
        self.model, self.switch, self.move_no = model, switch, move_no

    def poll(self) -> Answer | None:
        return DONE if self.model.arrived.get(self.switch, 0) >= self.move_no else None


class RouteCleared(Pending):
    def __init__(self, ixl: "Interlocking", rs: RouteSet) -> None:
        self.ixl, self.rs = ixl, rs

    def poll(self) -> Answer | None:
        if self.rs.state == SET:
            return DONE
        if self.ixl.routes.get(self.rs.route) is not self.rs:
            return RESULT_FAILED, Detail.CANCELLED
        return None


class NextStep(Pending):
    """Done after the model's next step (when the status shows the change)."""

    def __init__(self, model) -> None:
        self.model, self.t = model, model.t

    def poll(self) -> Answer | None:
        return DONE if self.model.t > self.t else None


class Interlocking:
    """Routes, blocks and commanded switches over one :class:`~simulators.line.LineModel`."""

    def __init__(self, model, track: Track, move_s: tuple[float, float] = MOVE_S) -> None:
        self.model, self.track, self.move_s = model, track, move_s
        self.routes: dict[int, RouteSet] = {}
        self.locked_by: dict[int, int] = {}        # section -> route holding it
        self.route_switches: dict[int, int] = {}   # switch -> route holding it
        self.blocked: set[int] = set()
        self.commanded_at: dict[int, float] = {}   # switch -> model time it was last commanded
        self.held_red: set[int] = set()            # start signals of cancelled routes
        self.touched: set[int] = set()             # switches set moving since the model's last step

    # -- operations (a device's CommandDesk) -------------------------------------------------
    def move_switch(self, switch: int, position: int) -> Answer | Pending:
        m = self.model
        if switch not in m.switch_pos:
            return rejected(Detail.UNKNOWN_OBJECT)
        if switch in self.route_switches:
            return rejected(Detail.LOCKED)
        if switch in m.switch_moves:
            return rejected(Detail.MOVING)
        if m.switch_pos[switch] == position:
            self.commanded_at[switch] = m.t
            return DONE
        refusal = self._refusal(self.track.switch_section.get(switch))
        if refusal is not None:
            return rejected(refusal)
        self.commanded_at[switch] = m.t
        return SwitchArrival(m, switch, self._start_move(switch, position))

    def set_route(self, route: int) -> Answer | Pending:
        m = self.model
        if not self.track.has_routes:
            return rejected(Detail.NO_TRACK)
        if route not in self.track.routes:
            return rejected(Detail.UNKNOWN_OBJECT)
        layout = self.track.layout(route)
        if layout is None:
            return rejected(Detail.NO_PATH)
        if route in self.routes:
            return RouteCleared(self, self.routes[route])   # already set or setting: the same answer
        for section in layout.sections:
            refusal = self._refusal(section)
            if refusal is not None:
                return rejected(refusal)
        to_move = []
        for switch, position in layout.switches:
            if switch not in m.switch_pos:
                return rejected(Detail.UNKNOWN_OBJECT)
            if switch in self.route_switches:
                return rejected(Detail.LOCKED)
            if switch in m.switch_moves:
                return rejected(Detail.MOVING)
            if m.switch_pos[switch] != position:
                refusal = self._refusal(self.track.switch_section.get(switch))
                if refusal is not None:
                    return rejected(refusal)
                to_move.append((switch, position))
        rs = self.routes[route] = RouteSet(route, layout)
        self.locked_by.update(dict.fromkeys(layout.sections, route))
        for switch, _ in layout.switches:
            self.route_switches[switch] = route
            self.commanded_at[switch] = m.t
        for switch, position in to_move:
            self._start_move(switch, position)
        self.held_red.discard(layout.start_signal)
        return RouteCleared(self, rs)

    def cancel_route(self, route: int) -> Answer | Pending:
        if not self.track.has_routes:
            return rejected(Detail.NO_TRACK)
        if route not in self.track.routes:
            return rejected(Detail.UNKNOWN_OBJECT)
        rs = self.routes.pop(route, None)
        if rs is not None:
            self.locked_by = {s: r for s, r in self.locked_by.items() if r != route}
            self.route_switches = {sw: r for sw, r in self.route_switches.items() if r != route}
        self.held_red.add(self.track.routes[route][0])
        return NextStep(self.model)

    def block(self, section: int, blocked: bool) -> Answer:
        (self.blocked.add if blocked else self.blocked.discard)(section)
        return DONE

    # -- what the model asks -------------------------------------------------------------
    def holds(self, switch: int) -> bool:
        """True if a spontaneous move must leave ``switch`` alone (held by a route, or commanded lately)."""
        at = self.commanded_at.get(switch)
        return switch in self.route_switches or (at is not None and self.model.t - at < HOLD_S)

    def advance(self) -> None:
        """After the model moved its switches: a route whose switches are all in position is set."""
        m = self.model
        for rs in self.routes.values():
            if rs.state == SETTING and all(m.switch_pos.get(sw) == pos and sw not in m.switch_moves
                                           for sw, pos in rs.layout.switches):
                rs.state = SET

    def take_touched(self) -> set[int]:
        touched, self.touched = self.touched, set()
        return touched

    def lock_sections(self, state: dict[int, int]) -> dict[int, int]:
        """``state`` with the routes' sections locked (an occupied or faulty section shows that instead)."""
        out = dict(state)
        for section in self.locked_by:
            if out.get(section) == TrackSections.FREE:
                out[section] = TrackSections.LOCKED
        return out

    def signal_aspects(self, aspect: dict[int, int], state: dict[int, int], previous: dict[int, int]) -> None:
        """Overrides ``aspect`` (the automatic one) for start signals of routes and of cancelled routes."""
        for signal in self.held_red:
            if signal in aspect:
                aspect[signal] = Signals.RED
        for rs in self.routes.values():
            signal = rs.layout.start_signal
            if signal in aspect:
                aspect[signal] = self.route_aspect(rs, state, previous) if rs.state == SET else Signals.RED

    @staticmethod
    def route_aspect(rs: RouteSet, state: dict[int, int], previous: dict[int, int]) -> int:
        """The line's rule along the route: red when its first section is occupied or faulty, yellow when
        a later one is or the exit signal showed red, green otherwise."""
        sections = rs.layout.sections
        if sections and state.get(sections[0]) in _IN_THE_WAY:
            return Signals.RED
        if any(state.get(s) in _IN_THE_WAY for s in sections[1:]) or \
                previous.get(rs.layout.end_signal) == Signals.RED:
            return Signals.YELLOW
        return Signals.GREEN

    # -- inside ------------------------------------------------------------------------------
    def _refusal(self, section: int | None) -> Detail | None:
        """Why nothing may move or be locked in ``section`` now (None: it is free). Reads the model's
        state of its last step without the commanded locks, and the locks as they are now."""
        if section is None:
            return None
        base = self.model.base_state.get(section, TrackSections.FREE)
        if base == TrackSections.OCCUPIED:
            return Detail.OCCUPIED
        if base == TrackSections.FAULT:
            return Detail.FAULT
        if section in self.blocked:
            return Detail.BLOCKED
        if base == TrackSections.LOCKED or section in self.locked_by:
            return Detail.LOCKED
        return None

    def _start_move(self, switch: int, position: int) -> int:
        m = self.model
        self.touched.add(switch)
        return m.start_move(switch, position, m.t + m.rng.uniform(*self.move_s))
