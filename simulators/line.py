"""A seeded model of the line's state, built from the gateway's own line file.

The line file is read with :func:`gateway.app.config.load` (the same validated file
and the same ``ConfigError`` messages as the gateway); this module only adds
what the simulators need on top of it (:func:`signing_key`,
:func:`unconfigured_id`).

:class:`LineModel` is the "railway" every simulated device and train looks
at: the sections of all devices form one loop (first half up, second half
down), units (a consist or a lone train) run round it, stopping at a station
every third section and never closer than a safety margin behind the unit
ahead. From that follow, each step:

* section states: occupied under a unit, locked-in-route just ahead of it,
  otherwise free; now and then a free section goes to *fault* for a few
  seconds (a DEVICE_ALARM is raised and later cleared by its devices);
* signal aspects: red at the entry of an occupied or faulty section, yellow
  when the section after it is, green otherwise;
* switches: now and then one moves (position 2, *moving*, for 2-6 s) and locks
  in normal or reverse, unless commanded state holds it;
* commanded state (:mod:`simulators.interlocking`, ``model.ixl``): switches moved
  on command, routes set (their sections locked, their start signal cleared
  once the switches are in position) and cancelled, blocked sections. Where
  switches and signals stand, the zones and the routes come from the line
  file's ``track:`` section (:mod:`simulators.track`). The units run round the
  loop whatever the switches show: the loop is the simulator's stand-in for
  the track, the topology is the interlocking's;
* platform doors: now and then a door obstruction alarm, cleared later.

Everything random comes from the one ``random.Random`` handed in, and
:meth:`LineModel.step` takes the logical time step, so a seed gives the same
line history on every run. Used from the simulator's one asyncio thread.
"""
from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass

from gateway.app.config import KINDS, Config, Device, Trains
from railcodecs import DeviceAlarm, Signals, Switches, TrackSections

from .interlocking import MOVE_S, Interlocking
from .track import Track

PLATFORM_DOORS = KINDS["platform_doors"]


def signing_key(device: Device) -> bytes | None:
    """The key a device signs its frames with: its configured key unless ``mac: off``.

    The gateway verifies with the same rule (``gateway.app.context.Context.mac_policy``), so a
    device with ``mac: optional`` and no key sends unsigned frames.
    """
    return device.mac_key if device.mac != "off" else None


def unconfigured_id(cfg: Config) -> int:
    """A node id no one in this line uses (the masquerade fault's ``src``)."""
    used = {cfg.gateway.id, *(d.id for d in cfg.devices), *cfg.trains.ids}
    return next(i for i in range(0xFFFE, 0, -1) if i not in used)


# --- the line model -----------------------------------------------------------------

SECTION_CM = (4000, 9000)        # section lengths drawn per section
CAR_CM = 2000                    # one train (car set) in a consist
SAFE_CM = 3000                   # never closer than this behind the unit ahead
CRUISE_CM_S = (1000, 1600)
ACCEL, DECEL = 120.0, 150.0      # cm/s^2
DWELL_S = (2.0, 5.0)
STATION_EVERY = 3
SWITCH_EVERY_S = 40.0            # mean time between spontaneous moves of one switch
FAULT_EVERY_S = 600.0            # mean time between faults of one section
DOOR_ALARM_EVERY_S = 90.0        # mean time between door alarms of one PSD
TRACK_FAULT, DOOR_OBSTRUCTED = 0x0101, 0x0301


@dataclass
class Unit:
    trains: tuple[int, ...]      # head first
    pos: float                   # head position, cm along the loop
    cruise: float
    speed: float = 0.0
    dwell: float = 0.0           # at a station, doors open
    hold: float = 0.0            # standing for another reason (coupling), doors closed


@dataclass
class Changes:
    sections: list[int]
    signals: list[int]
    switches: list[int]
    alarms: list[tuple[tuple[int, ...], DeviceAlarm]]   # (owning device ids, alarm)


class LineModel:
    """The seeded state of the whole line; ``step(dt_s)`` advances it and says what changed."""

    def __init__(self, line: Config, rng: random.Random, field_events: bool = True, track: Track | None = None,
                 move_s: tuple[float, float] = MOVE_S) -> None:
        """``field_events``: spontaneous track circuit faults and platform door alarms (true field
        alarms, as a real line has them); off for a run that must raise no alarm at all. ``track``:
        default from the line file (:meth:`Track.from_config`). ``move_s``: how long a switch takes to
        move (seconds, drawn per move; tests shorten it)."""
        self.rng, self.t = rng, 0.0
        self.field_events = field_events
        order: dict[int, None] = {}
        for d in line.devices:
            order.update(dict.fromkeys(d.sections))
        self.sections = list(order) or list(range(1, 9))      # a line of trains only still has track
        self.owners: dict[int, tuple[int, ...]] = {
            s: tuple(d.id for d in line.devices if s in d.sections) for s in self.sections}
        self.starts, pos = [], 0
        for _ in self.sections:
            self.starts.append(pos)
            pos += rng.randint(*SECTION_CM)
        self.length = pos
        self.stops = [self.starts[i] + (self._end(i) - self.starts[i]) * 0.7
                      for i in range(0, len(self.sections), STATION_EVERY)]
        self.signal_at = self._place_signals(line)
        self.switches = sorted({s for d in line.devices for s in d.switches})
        self.switch_pos = {s: rng.choice((Switches.NORMAL, Switches.REVERSE)) for s in self.switches}
        self.switch_moves: dict[int, tuple[float, int, int]] = {}   # switch -> (until, target, move no)
        self.arrived: dict[int, int] = {}                          # switch -> its last completed move no
        self._moves = 0
        self.faults: dict[int, float] = {}
        self.psds = [d.id for d in line.devices if d.kind == PLATFORM_DOORS]
        self.door_alarms: dict[tuple[int, int], float] = {}
        self.units = self._place_units(line.trains)
        self.unit_of = {t: u for u in self.units for t in u.trains}
        self.ixl = Interlocking(self, track if track is not None else Track.from_config(line), move_s)
        self.base_state = self._section_states()           # without the commanded locks
        self.state = self.ixl.lock_sections(self.base_state)
        self.aspect: dict[int, int] = {}
        self.aspect = self._aspects()

    def _end(self, i: int) -> int:
        return self.starts[i + 1] if i + 1 < len(self.starts) else self.length

    def _place_signals(self, line: Config) -> dict[int, int]:
        index = {s: i for i, s in enumerate(self.sections)}
        out = {}
        for d in line.devices:
            for j, sig in enumerate(d.signals):
                if d.sections:
                    out[sig] = index[d.sections[j * len(d.sections) // len(d.signals)]]
                else:
                    out[sig] = j * len(self.sections) // len(d.signals)
        return out

    def _place_units(self, trains: Trains) -> list[Unit]:
        in_consist = {m: members for members in trains.consists.values() for m in members}
        groups, placed = [], set()
        for t in trains.ids:
            if t not in placed:
                group = in_consist.get(t, (t,))
                groups.append(group)
                placed.update(group)
        n = len(groups)
        return [Unit(g, (self.length * (n - i) / n) % self.length, self.rng.uniform(*CRUISE_CM_S))
                for i, g in enumerate(groups)]

    # -- what devices and trains read ---------------------------------------------
    def items(self, cls, ids) -> tuple[tuple[int, int], ...]:
        """``(id, value)`` pairs for a status message class over ``ids``."""
        table = self.state if cls is TrackSections else self.aspect if cls is Signals else self.switch_pos
        return tuple((i, table.get(i, 0)) for i in ids)

    def train_position(self, train: int) -> tuple[int, int, int, int, int]:
        """``(section_id, offset_cm, speed_cm_s, direction, doors)`` of one train."""
        unit = self.unit_of[train]
        pos = (unit.pos - CAR_CM * unit.trains.index(train)) % self.length
        i = bisect.bisect_right(self.starts, pos) - 1
        direction = 0 if i < (len(self.sections) + 1) // 2 else 1
        return self.sections[i], int(pos - self.starts[i]), int(round(unit.speed)), direction, int(unit.dwell > 0)

    def hold(self, train: int, seconds: float) -> None:
        """Keep a train's unit standing (coupling, decoupling) for ``seconds``."""
        unit = self.unit_of[train]
        unit.hold = max(unit.hold, seconds)

    def start_move(self, switch: int, position: int, until: float) -> int:
        """The switch shows moving until model time ``until``, then ``position``; returns the move's number
        (``arrived[switch]`` reaches it when the switch is there)."""
        self._moves += 1
        self.switch_moves[switch] = (until, position, self._moves)
        self.switch_pos[switch] = Switches.MOVING
        return self._moves

    # -- one step ---------------------------------------------------------------------
    def step(self, dt: float) -> Changes:
        self.t += dt
        alarms: list = []
        self._move(dt)
        moved = self._switches(dt)
        self.ixl.advance()
        if self.field_events:
            self._section_faults(dt, alarms)
            self._doors(dt, alarms)
        self.base_state = self._section_states()
        state = self.ixl.lock_sections(self.base_state)
        sections = [s for s in self.sections if state[s] != self.state[s]]
        self.state = state
        aspect = self._aspects()
        signals = [s for s in self.signal_at if aspect[s] != self.aspect[s]]
        self.aspect = aspect
        return Changes(sections, signals, moved, alarms)

    def _move(self, dt: float) -> None:
        rng, n, length = self.rng, len(self.units), self.length
        for k, u in enumerate(self.units):
            if u.dwell > 0 or u.hold > 0:
                u.speed = 0.0
                was_dwelling = u.dwell > 0
                u.dwell, u.hold = max(0.0, u.dwell - dt), max(0.0, u.hold - dt)
                if was_dwelling and u.dwell == 0:
                    u.pos = (u.pos + 1) % length          # leave the stop point behind
                continue
            ahead = self.units[k - 1] if n > 1 else None  # units run in order, index k-1 is ahead
            gap = (ahead.pos - CAR_CM * len(ahead.trains) - u.pos) % length - SAFE_CM if ahead else math.inf
            k_stop = bisect.bisect_left(self.stops, u.pos)      # the next stop ahead, wrapping round
            to_stop = (self.stops[k_stop % len(self.stops)] - u.pos) % length
            limit = max(0.0, min(gap, to_stop))
            u.speed = min(u.speed + ACCEL * dt, u.cruise, math.sqrt(2 * DECEL * limit))
            step = min(u.speed * dt, limit)
            u.pos = (u.pos + step) % length
            if to_stop - step < 1:
                u.speed, u.dwell = 0.0, rng.uniform(*DWELL_S)

    def _switches(self, dt: float) -> list[int]:
        moved = []
        for sw, (until, target, no) in list(self.switch_moves.items()):
            if until <= self.t:
                del self.switch_moves[sw]
                self.switch_pos[sw] = target
                self.arrived[sw] = no
                moved.append(sw)
        if self.switches and self.rng.random() < len(self.switches) * dt / SWITCH_EVERY_S:
            sw = self.rng.choice(self.switches)
            if sw not in self.switch_moves and not self.ixl.holds(sw):
                until = self.t + self.rng.uniform(*self.ixl.move_s)
                self.start_move(sw, self.rng.choice((Switches.NORMAL, Switches.REVERSE)), until)
                moved.append(sw)
        moved.extend(self.ixl.take_touched())   # set moving by commands since the last step
        return sorted(set(moved))

    def _section_faults(self, dt: float, alarms: list) -> None:
        for sid, until in list(self.faults.items()):
            if until <= self.t:
                del self.faults[sid]
                alarms.append((self.owners[sid], DeviceAlarm(TRACK_FAULT, 2, DeviceAlarm.CLEAR, sid,
                                                             f"track circuit fault {sid}")))
        if self.rng.random() < len(self.sections) * dt / FAULT_EVERY_S:
            sid = self.rng.choice(self.sections)
            if sid not in self.faults and self.state[sid] == TrackSections.FREE and self.owners[sid]:
                self.faults[sid] = self.t + self.rng.uniform(3.0, 10.0)
                alarms.append((self.owners[sid], DeviceAlarm(TRACK_FAULT, 2, DeviceAlarm.RAISE, sid,
                                                             f"track circuit fault {sid}")))

    def _doors(self, dt: float, alarms: list) -> None:
        for (dev, door), until in list(self.door_alarms.items()):
            if until <= self.t:
                del self.door_alarms[(dev, door)]
                alarms.append(((dev,), DeviceAlarm(DOOR_OBSTRUCTED, 3, DeviceAlarm.CLEAR, door,
                                                   f"platform door {door} obstructed")))
        if self.psds and self.rng.random() < len(self.psds) * dt / DOOR_ALARM_EVERY_S:
            dev, door = self.rng.choice(self.psds), self.rng.randint(1, 24)
            if (dev, door) not in self.door_alarms:
                self.door_alarms[(dev, door)] = self.t + self.rng.uniform(2.0, 6.0)
                alarms.append(((dev,), DeviceAlarm(DOOR_OBSTRUCTED, 3, DeviceAlarm.RAISE, door,
                                                   f"platform door {door} obstructed")))

    def _section_states(self) -> dict[int, int]:
        state = dict.fromkeys(self.sections, TrackSections.FREE)
        n = len(self.sections)
        for u in self.units:
            head = bisect.bisect_right(self.starts, u.pos) - 1
            tail = bisect.bisect_right(self.starts, (u.pos - CAR_CM * len(u.trains)) % self.length) - 1
            i = head
            while True:
                state[self.sections[i]] = TrackSections.OCCUPIED
                if i == tail:
                    break
                i = (i - 1) % n
            ahead = self.sections[(head + 1) % n]
            if state[ahead] == TrackSections.FREE:
                state[ahead] = TrackSections.LOCKED
        for sid in self.faults:
            state[sid] = TrackSections.FAULT
        return state

    def _aspects(self) -> dict[int, int]:
        blocked = {s for s, v in self.state.items() if v in (TrackSections.OCCUPIED, TrackSections.FAULT)}
        n, out = len(self.sections), {}
        for sig, i in self.signal_at.items():
            if self.sections[i] in blocked:
                out[sig] = Signals.RED
            elif self.sections[(i + 1) % n] in blocked:
                out[sig] = Signals.YELLOW
            else:
                out[sig] = Signals.GREEN
        self.ixl.signal_aspects(out, self.state, self.aspect)
        return out
