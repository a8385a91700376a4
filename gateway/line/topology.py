"""The line's track: sections, switches, signals, switch zones and named routes (the ``track:`` section).

``parse_track(raw)`` validates the section (docs/configuration.md, ``track:``) and returns a frozen
:class:`Topology` and every problem, each as ``track.sections.101.next: expected ..., got ...``; the
config module (``gateway/app/config.py``) adds them to its own. A line file without ``track:`` has
no topology (``None``): commands still work object by object, only route planning needs one.

The model, which the route planner (``gateway/commands/routes.py``) searches:

* A **section** has a length and the position of its midpoint; ``next`` lists its neighbours (an
  edge given on either side is an edge both ways). Its midpoint is ``length_m / 2`` of track away
  from either end, so the track from the midpoint of ``u`` to that of a neighbour ``v`` is
  ``(length_u + length_v) / 2``; no track is shorter than the straight line, so every edge must
  satisfy ``|pos_u - pos_v| <= (length_u + length_v) / 2`` (checked; it makes the planner's
  straight-line heuristic admissible).
* A **switch** has its points in ``section``; ``normal`` and ``reverse`` are neighbours of that
  section on the two legs. Moving between ``section`` and ``normal`` (either way) needs the switch
  normal, between ``section`` and ``reverse`` needs it reverse. A train cannot pass from one leg to
  the other (it would have to reverse in the points), and a junction has points: a section joins
  at most two neighbours plus one per switch it holds (a diamond crossing cannot be expressed).
* A **signal** stands at the end of ``section`` that leads into ``toward``, read by trains moving
  from ``section`` into ``toward``.
* A **zone** (the unit of the switch-zone control lock) names sections and switches; each is in at
  most one zone. A zone may name objects that have no place in the topology (the config module
  checks that every id is an object of a configured device).

:class:`Moves` numbers every move a train can make (from section ``tail`` into ``head``) and lists
the moves that may follow each one: never back into the section it came from, never from one leg
of a switch to the other. Built once per topology; the planner's searches index it.

Pure data and functions, no IO; a Topology is immutable and may be read from any thread.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

SECTION = "track"
NORMAL, REVERSE = "normal", "reverse"
#: the keys of each mapping of the section ("*": every entry)
KEYS = {"track": ("sections", "switches", "signals", "zones", "routes"),
        "sections.*": ("length_m", "pos", "next"),
        "switches.*": ("section", "normal", "reverse"),
        "signals.*": ("section", "toward"),
        "zones.*": ("sections", "switches"),
        "routes.*": ("from", "to")}
#: relative tolerance of the midpoint check, for hand-computed midpoints (the planner scales its
#: heuristic down by more than this, so the heuristic stays consistent: routes.py)
MIDPOINT_SLACK = 1e-9
MAX_LENGTH_M, MAX_COORD_M = 100_000, 1e8
_ZONE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
UnknownKey = Callable[[str, Any, tuple[str, ...]], str]


@dataclass(frozen=True, slots=True)
class Section:
    id: int
    length_m: float
    pos: tuple[float, float]           # the midpoint, metres
    next: tuple[int, ...]              # every neighbour, whichever side listed the edge; sorted


@dataclass(frozen=True, slots=True)
class Switch:
    id: int
    section: int                       # holds the points
    normal: int
    reverse: int

    def position_to(self, leg: int) -> str | None:
        """``"normal"`` / ``"reverse"`` for the move between the switch's section and ``leg``, else None."""
        return NORMAL if leg == self.normal else REVERSE if leg == self.reverse else None


@dataclass(frozen=True, slots=True)
class Signal:
    id: int
    section: int                       # stands at the end of this section ...
    toward: int                        # ... that leads into this one


@dataclass(frozen=True, slots=True)
class Zone:
    name: str
    sections: tuple[int, ...]
    switches: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Route:
    """A named route (ICD COMMAND op 3/4 ``object_id``): from one signal to another."""

    id: int
    from_signal: int
    to_signal: int


@dataclass(frozen=True, slots=True)
class Moves:
    """Every move a train can make, numbered: move ``m`` runs from section ``tail[m]`` into ``head[m]``.

    ``after[m]`` lists ``(move, metres)`` for each move that may follow ``m`` (not back into
    ``tail[m]``, not from one switch leg to the other), with the track from the midpoint of
    ``head[m]`` to that of the next head. ``index[(u, v)]`` is the number of the move from u into v;
    ``x[m]``, ``y[m]`` the midpoint of ``head[m]`` (flat tuples: the planner's inner loop indexes them).
    """

    tail: tuple[int, ...]
    head: tuple[int, ...]
    after: tuple[tuple[tuple[int, float], ...], ...]
    index: Mapping[tuple[int, int], int]
    x: tuple[float, ...]
    y: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class Topology:
    """The checked track of a line; build it with :func:`parse_track` (the constructor raises
    ``ValueError`` listing the problems of inconsistent parts). Read-only, any thread."""

    sections: Mapping[int, Section]
    switches: Mapping[int, Switch] = field(default_factory=dict)
    signals: Mapping[int, Signal] = field(default_factory=dict)
    zones: Mapping[str, Zone] = field(default_factory=dict)
    routes: Mapping[int, Route] = field(default_factory=dict)
    moves: Moves = field(init=False, repr=False, compare=False)
    _legs: Mapping[tuple[int, int], tuple[tuple[int, str], ...]] = field(init=False, repr=False, compare=False)
    _signal_at: Mapping[tuple[int, int], int] = field(init=False, repr=False, compare=False)
    _zone_of: Mapping[tuple[str, int], str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = check(self.sections, self.switches, self.signals, self.zones, self.routes)
        if problems:
            raise ValueError("inconsistent track:\n  " + "\n  ".join(problems))
        adjacency = _adjacency(self.sections)
        object.__setattr__(self, "sections", MappingProxyType(
            {sid: s if s.next == adjacency[sid] else Section(sid, s.length_m, s.pos, adjacency[sid])
             for sid, s in sorted(self.sections.items())}))
        for name in ("switches", "signals", "zones", "routes"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        legs: dict[tuple[int, int], list[tuple[int, str]]] = {}
        for sw in sorted(self.switches.values(), key=lambda s: s.id):
            for leg, position in ((sw.normal, NORMAL), (sw.reverse, REVERSE)):
                for edge in ((sw.section, leg), (leg, sw.section)):
                    legs.setdefault(edge, []).append((sw.id, position))
        # a train moving from u into v passes the points in u before those in v
        object.__setattr__(self, "_legs", MappingProxyType({
            (u, v): tuple(sorted(found, key=lambda f: (self.switches[f[0]].section != u, f[0])))
            for (u, v), found in legs.items()}))
        object.__setattr__(self, "_signal_at", MappingProxyType(
            {(s.section, s.toward): s.id for s in self.signals.values()}))
        object.__setattr__(self, "_zone_of", MappingProxyType(
            {**{("section", s): z.name for z in self.zones.values() for s in z.sections},
             **{("switch", s): z.name for z in self.zones.values() for s in z.switches}}))
        object.__setattr__(self, "moves", _moves(self.sections, self.switches))

    # -- queries -----------------------------------------------------------------------
    def neighbours(self, section: int) -> tuple[int, ...]:
        return self.sections[section].next

    def switches_between(self, u: int, v: int) -> tuple[tuple[int, str], ...]:
        """``(switch_id, "normal"|"reverse")`` for every switch the move between u and v (either way)
        needs, those with points in u first; two for a crossover whose points are in adjacent
        sections, none for plain track."""
        return self._legs.get((u, v), ())

    def switch_between(self, u: int, v: int) -> tuple[int, str] | None:
        """The first of :meth:`switches_between` (the points in u, else the lowest id), or None."""
        found = self._legs.get((u, v))
        return found[0] if found else None

    def signal_at(self, section: int, toward: int) -> int | None:
        """The signal a train passes moving from ``section`` into ``toward``, if one stands there."""
        return self._signal_at.get((section, toward))

    def zone_of_section(self, section: int) -> str | None:
        return self._zone_of.get(("section", section))

    def zone_of_switch(self, switch: int) -> str | None:
        return self._zone_of.get(("switch", switch))

    def to_raw(self) -> dict:
        """The topology as a ``track:`` mapping that parses back to an equal topology."""
        raw: dict[str, Any] = {"sections": {s.id: {"length_m": s.length_m, "pos": list(s.pos), "next": list(s.next)}
                                            for s in self.sections.values()}}
        raw["switches"] = {w.id: {"section": w.section, "normal": w.normal, "reverse": w.reverse}
                           for w in self.switches.values()}
        raw["signals"] = {s.id: {"section": s.section, "toward": s.toward} for s in self.signals.values()}
        raw["zones"] = {z.name: {"sections": list(z.sections), "switches": list(z.switches)}
                        for z in self.zones.values()}
        raw["routes"] = {r.id: {"from": r.from_signal, "to": r.to_signal} for r in self.routes.values()}
        return raw


def _moves(sections: Mapping[int, Section], switches: Mapping[int, Switch]) -> Moves:
    barred: dict[int, set[frozenset]] = {}     # section -> leg pairs no train passes between
    for sw in switches.values():
        barred.setdefault(sw.section, set()).add(frozenset((sw.normal, sw.reverse)))
    pairs = [(u, v) for u in sorted(sections) for v in sections[u].next]
    index = {pair: m for m, pair in enumerate(pairs)}
    after = []
    for p, c in pairs:
        no = barred.get(c, ())
        half = sections[c].length_m / 2
        after.append(tuple((index[(c, n)], half + sections[n].length_m / 2) for n in sections[c].next
                           if n != p and frozenset((p, n)) not in no))
    return Moves(tuple(u for u, _ in pairs), tuple(v for _, v in pairs), tuple(after), MappingProxyType(index),
                 tuple(sections[v].pos[0] for _, v in pairs), tuple(sections[v].pos[1] for _, v in pairs))


def _adjacency(sections: Mapping[int, Section]) -> dict[int, tuple[int, ...]]:
    """Every section's neighbours, whichever side listed the edge (ids not in ``sections`` left out)."""
    adj: dict[int, set[int]] = {sid: set() for sid in sections}
    for s in sections.values():
        for n in s.next:
            if n in adj and n != s.id:
                adj[s.id].add(n)
                adj[n].add(s.id)
    return {sid: tuple(sorted(ns)) for sid, ns in adj.items()}


def check(sections: Mapping[int, Section], switches: Mapping[int, Switch], signals: Mapping[int, Signal],
          zones: Mapping[str, Zone], routes: Mapping[int, Route], declared: set[int] | None = None,
          declared_signals: set[int] | None = None) -> list[str]:
    """The problems of parts that are each well-formed but may not fit together (key paths as in
    the line file). ``declared`` / ``declared_signals``: the section and signal ids the file gives,
    even those whose fields were bad (a reference to one of them is not reported again)."""
    declared = set(sections) if declared is None else declared
    declared_signals = set(signals) if declared_signals is None else declared_signals
    adj = _adjacency(sections)
    problems: list[str] = []

    def ref(path: str, sid: int) -> bool:
        if sid in sections:
            return True
        if sid not in declared:
            problems.append(f"{path}: {sid} is not a section (not in track.sections)")
        return False

    measured: set[tuple[int, int]] = set()
    for s in sections.values():
        for n in s.next:
            if n == s.id:
                problems.append(f"track.sections.{s.id}.next: {n} is the section itself")
            elif ref(f"track.sections.{s.id}.next", n) and (edge := (min(s.id, n), max(s.id, n))) not in measured:
                measured.add(edge)
                apart, track = math.dist(s.pos, sections[n].pos), (s.length_m + sections[n].length_m) / 2
                if apart > track * (1 + MIDPOINT_SLACK):
                    problems.append(f"track.sections.{s.id}.next: the midpoints of {s.id} and {n} are {apart:,.1f} m "
                                    f"apart, more than the {track:,.1f} m of track between them (half the sum of "
                                    "their length_m): pos or length_m is wrong")
    held: dict[int, list[Switch]] = {}
    for sw in sorted(switches.values(), key=lambda w: w.id):
        p = f"track.switches.{sw.id}"
        if not ref(f"{p}.section", sw.section):
            continue
        held.setdefault(sw.section, []).append(sw)
        for key in ("normal", "reverse"):
            leg = getattr(sw, key)
            if ref(f"{p}.{key}", leg) and leg not in adj[sw.section]:
                problems.append(f"{p}.{key}: {leg} is not next to {sw.section} (a switch's legs are neighbours "
                                "of the section holding its points)")
        if sw.normal == sw.reverse:
            problems.append(f"{p}.reverse: the same section as normal ({sw.normal})")
        elif twin := next((o for o in held[sw.section][:-1]
                           if {o.normal, o.reverse} == {sw.normal, sw.reverse}), None):
            problems.append(f"{p}: the same section and legs as switch {twin.id}")
    for sid, ns in adj.items():
        if len(ns) > 2 + len(held.get(sid, ())):
            n = len(held.get(sid, ()))
            problems.append(f"track.sections.{sid}.next: {len(ns)} neighbours ({', '.join(map(str, ns))}) "
                            f"but {sid} holds {n} switch{'es' if n != 1 else ''}: a section joins two others, "
                            "plus one for each switch whose points it holds")
    seen: dict[tuple[int, int], int] = {}
    for sig in sorted(signals.values(), key=lambda s: s.id):
        p = f"track.signals.{sig.id}"
        placed = ref(f"{p}.section", sig.section)
        if not ref(f"{p}.toward", sig.toward) or not placed:
            continue
        if sig.toward not in adj[sig.section]:
            problems.append(f"{p}.toward: {sig.toward} is not next to {sig.section}")
        elif (sig.section, sig.toward) in seen:
            problems.append(f"{p}: stands where signal {seen[sig.section, sig.toward]} stands "
                            f"(section {sig.section} toward {sig.toward})")
        else:
            seen[sig.section, sig.toward] = sig.id
    member: dict[tuple[str, int], str] = {}
    for z in zones.values():
        for key, ids in (("sections", z.sections), ("switches", z.switches)):
            for i in ids:
                if (key, i) in member:
                    problems.append(f"track.zones.{z.name}.{key}: {i} is already in zone {member[key, i]} "
                                    "(an object is in one zone)")
                member[key, i] = z.name
    for r in routes.values():
        for key, sig in (("from", r.from_signal), ("to", r.to_signal)):
            if sig not in declared_signals:
                problems.append(f"track.routes.{r.id}.{key}: {sig} is not a signal (not in track.signals)")
        if r.from_signal == r.to_signal:
            problems.append(f"track.routes.{r.id}.to: the same signal as from ({r.from_signal})")
    return problems


# -- the track: section of a line file -------------------------------------------------------

def _unknown_key(path: str, key: Any, known: tuple[str, ...]) -> str:
    return f"{path}.{key}: unknown key (expected one of {', '.join(known)})"


def object_id(key: Any) -> int | None:
    """An object id from a mapping key or list item: 1..65535; a quoted key ("101") is still 101."""
    if isinstance(key, str) and key.isdigit():
        key = int(key)
    return key if type(key) is int and 1 <= key <= 0xFFFF else None


def _length(value: Any) -> float | None:
    ok = type(value) in (int, float) and math.isfinite(value) and 0 < value <= MAX_LENGTH_M
    return float(value) if ok else None


def _point(value: Any) -> tuple[float, float] | None:
    ok = isinstance(value, list) and len(value) == 2 and all(
        type(c) in (int, float) and math.isfinite(c) and abs(c) <= MAX_COORD_M for c in value)
    return (float(value[0]), float(value[1])) if ok else None


class _Parse:
    """Reads the section's mappings, collecting problems instead of stopping at the first."""

    def __init__(self, unknown: UnknownKey) -> None:
        self.unknown, self.problems = unknown, []
        self.declared: dict[str, set] = {key: set() for key in KEYS["track"]}  # ids given, whatever their fields

    def bad(self, path: str, expected: str, value: Any) -> None:
        self.problems.append(f"{path}: expected {expected}{' (required)' if value is None else ''}, got {value!r}")

    def entries(self, raw: dict, key: str, what: str, ids: bool = True) -> dict[Any, dict]:
        """``track.<key>`` as {id: its mapping}: ids checked, each mapping's keys checked."""
        p = f"{SECTION}.{key}"
        table = raw.get(key)
        if table is None:
            return {}
        if not isinstance(table, dict):
            self.bad(p, f"a mapping of {what}", table)
            return {}
        out: dict[Any, dict] = {}
        for k, v in table.items():
            oid = object_id(k) if ids else (k if isinstance(k, str) and _ZONE_NAME.fullmatch(k) else None)
            if oid is None:
                self.bad(f"{p}.{k}", "an object id 1..65535 as key" if ids else
                         "a zone name of letters, digits, '_', '.' and '-' (1..64) as key", k)
            elif oid in self.declared[key]:  # 101 and "101" in one mapping
                self.problems.append(f"{p}.{k}: {oid} is listed twice (as {oid} and as {str(oid)!r})")
            elif not isinstance(v, dict):
                self.declared[key].add(oid)
                self.bad(f"{p}.{k}", f"a mapping {{{', '.join(KEYS[key + '.*'])}}}", v)
            else:
                self.declared[key].add(oid)
                known = KEYS[key + ".*"]
                self.problems += [self.unknown(f"{p}.{k}", x, known) for x in v if x not in known]
                out[oid] = v
        return out

    def ref(self, obj: dict, key: str, path: str, what: str) -> int | None:
        value = obj.get(key)
        oid = object_id(value)
        if oid is None:
            self.bad(f"{path}.{key}", f"{what} id 1..65535", value)
        return oid

    def ids(self, obj: dict, key: str, path: str, what: str) -> tuple[int, ...] | None:
        value = obj.get(key, [])
        got = [object_id(v) for v in value] if isinstance(value, list) else [None]
        if None in got:
            self.bad(f"{path}.{key}", f"a list of {what} ids 1..65535", value)
            return None
        if len(set(got)) != len(got):
            self.bad(f"{path}.{key}", f"a list of {what} ids, each once", value)
            return None
        return tuple(got)


def parse_track(raw: Any, unknown: UnknownKey = _unknown_key) -> tuple[Topology | None, list[str]]:
    """Validate a ``track:`` mapping; return (topology, problems), the topology None when the section is
    absent or has any problem. ``unknown(path, key, known)`` words the problem of an unknown key (the
    config module passes its own, which names the closest known key)."""
    if raw is None:
        return None, []
    if not isinstance(raw, dict):
        return None, [f"{SECTION}: expected a mapping with {', '.join(KEYS['track'])}, got {raw!r}"]
    r = _Parse(unknown)
    r.problems += [unknown(SECTION, k, KEYS["track"]) for k in raw if k not in KEYS["track"]]
    if raw.get("sections") is None:
        r.problems.append(f"{SECTION}.sections: missing (expected a mapping id: {{length_m, pos, next}})")
    raw_sections = r.entries(raw, "sections", "sections id: {length_m, pos, next}")
    sections: dict[int, Section] = {}
    for sid, v in raw_sections.items():
        p = f"{SECTION}.sections.{sid}"
        length, pos = _length(v.get("length_m")), _point(v.get("pos"))
        if length is None:
            r.bad(f"{p}.length_m", f"a length in metres, more than 0 and at most {MAX_LENGTH_M:,}", v.get("length_m"))
        if pos is None:
            r.bad(f"{p}.pos", "[x_m, y_m]: the midpoint's position, two numbers in metres", v.get("pos"))
        nxt = r.ids(v, "next", p, "section")
        if length is not None and pos is not None and nxt is not None:
            sections[sid] = Section(sid, length, pos, nxt)
    switches: dict[int, Switch] = {}
    for wid, v in r.entries(raw, "switches", "switches id: {section, normal, reverse}").items():
        p = f"{SECTION}.switches.{wid}"
        got = [r.ref(v, key, p, "a section") for key in ("section", "normal", "reverse")]
        if None not in got:
            switches[wid] = Switch(wid, *got)
    signals: dict[int, Signal] = {}
    for gid, v in r.entries(raw, "signals", "signals id: {section, toward}").items():
        p = f"{SECTION}.signals.{gid}"
        got = [r.ref(v, key, p, "a section") for key in ("section", "toward")]
        if None not in got:
            signals[gid] = Signal(gid, *got)
    zones: dict[str, Zone] = {}
    for name, v in r.entries(raw, "zones", "zones name: {sections, switches}", ids=False).items():
        p = f"{SECTION}.zones.{name}"
        got = [r.ids(v, key, p, key[:-1] if key == "sections" else "switch") for key in ("sections", "switches")]
        if None not in got:
            zones[name] = Zone(name, *got)
    routes: dict[int, Route] = {}
    for rid, v in r.entries(raw, "routes", "routes id: {from, to}").items():
        p = f"{SECTION}.routes.{rid}"
        got = [r.ref(v, key, p, "a signal") for key in ("from", "to")]
        if None not in got:
            routes[rid] = Route(rid, *got)
    r.problems += check(sections, switches, signals, zones, routes, r.declared["sections"], r.declared["signals"])
    if r.problems:
        return None, r.problems
    return Topology(sections, switches, signals, zones, routes), []
