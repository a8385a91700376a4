"""Route planning over the line's track: the shortest route from one signal to another, by A*.

``plan(topology, from_signal, to_signal, unavailable)`` returns a :class:`RoutePlan`: the sections
the route runs through, the switch positions it needs, the signals it passes and its length.
``plan_dijkstra`` returns the same by a plain Dijkstra search of the same graph (the baseline of
``bench/route_bench.py`` and of the property tests). Callers: ``gateway route plan`` (offline, from
the line file), the config check of named routes (``gateway/app/config.py``) and the simulated
interlocking (``simulators/track.py``). Pure functions of their arguments, no IO; any thread.

What a route is
---------------
Signal A stands at the end of section ``a`` leading into ``a'``; signal B at the end of ``b``
leading into ``b'``. The route from A to B is the train's way from passing A to stopping at B: it
enters ``a'``, runs through sections ``a' = s0, s1, ..., sk = b`` and arrives in ``b`` from any
neighbour but ``b'`` (B is read by trains moving toward ``b'``). Its sections are ``s0..sk``; the
train stands in ``a``, which the route never enters again. Every move obeys the topology's rules
(``gateway/line/topology.py``, :class:`Moves`): never straight back, never leg to leg through
points; ``b`` is entered once, at the end. Sections in ``unavailable`` (occupied, blocked, faulty,
locked in another route) are never entered; ``a`` itself may be occupied (by the train).

Cost
----
``cost_m`` = the sum of ``length_m`` of ``s0..sk`` (from signal A to signal B along the track).
Written per move, with ``L`` the lengths::

    cost = L(s0)/2 + sum over moves (L(s_i-1) + L(s_i))/2 + L(sk)/2

the middle terms being the track from one section's midpoint to the next's (the move weights of
``Moves.after``); the two end terms are constants of the query, so both searches minimise the sum
of move weights and add them back.

The heuristic, and why A* finds the same cost as Dijkstra
---------------------------------------------------------
``h(move into n) = k * |pos_n - pos_b|`` (straight line between midpoints, ``k = 1 - 1e-8``).
The topology guarantees for every edge ``|pos_u - pos_v| <= (L_u + L_v)/2 * (1 + 1e-9)``, so with
``w(u, v) = (L_u + L_v)/2``: ``h(u) - h(v) <= k * |pos_u - pos_v| <= k * (1 + 1e-9) * w(u, v) <= w(u, v)``
by the triangle inequality. ``h`` is therefore *consistent* (hence admissible: summing along any
remaining way from ``n`` to ``b``, ``h(n) <= its weight``), and 0 at ``b``. A* with a consistent
heuristic settles each move at its shortest distance, so the first goal it settles is a cheapest
one: the same cost as Dijkstra's. (``k`` absorbs the check's tolerance and float rounding.)

It also settles no more moves than Dijkstra: every move it settles before the goal has
``g + h <= C*`` and, not being into ``b`` (moves into ``b`` from ``b'`` are never queued), ``h > 0``
as long as no other section has ``b``'s midpoint; so ``g < C*``, and Dijkstra settles every such
move before its goal too. ``expanded`` counts settled moves.

A route sets each switch once, so it cannot pass a section twice. The shortest way under the
move rules can (only by turning round through a loop, which then needs a switch in both
positions); finding the shortest way that never repeats a section is NP-hard in general, so the
planner does not try: such a result is :class:`NoRoute`, naming the section and the switch, and
the operator sets the way as two routes.
"""
from __future__ import annotations

import heapq
import math
from collections.abc import Collection
from dataclasses import dataclass

from gateway.line.topology import Topology

#: scales the heuristic below the straight line (see the module docstring)
H_SCALE = 1 - 1e-8


class UnknownSignal(ValueError):
    """``signal`` (the route's ``role``: "from" or "to") is not a signal of the track."""

    def __init__(self, signal: object, role: str, topology: Topology) -> None:
        self.signal, self.role = signal, role
        known = sorted(topology.signals)
        shown = ", ".join(map(str, known[:12])) + (f" and {len(known) - 12} more" if len(known) > 12 else "")
        super().__init__(f"unknown signal {signal} ({role}): the track's signals are {shown or 'none'}")


class NoRoute(ValueError):
    """No route from ``from_signal`` to ``to_signal``; the message says why.

    ``shortest_walk_m``: when the shortest way passes a section twice (the module docstring), its length.
    """

    def __init__(self, from_signal: int, to_signal: int, why: str, shortest_walk_m: float | None = None) -> None:
        self.from_signal, self.to_signal, self.shortest_walk_m = from_signal, to_signal, shortest_walk_m
        super().__init__(f"no route from {from_signal} to {to_signal}{why}")


@dataclass(frozen=True, slots=True)
class RoutePlan:
    sections: tuple[int, ...]                  # a' .. b: the sections the route locks, in order
    switches: tuple[tuple[int, str], ...]      # (switch id, "normal" | "reverse"), in the order passed
    signals: tuple[int, ...]                   # from the start signal to the end signal, in order
    cost_m: float                              # sum of the sections' length_m
    expanded: int                              # moves the search settled
    zones: tuple[str, ...] = ()                # zones of its sections and switches (the locks to hold)
    algorithm: str = "A*"

    def describe(self) -> str:
        """Several lines of text: the route's signals, length, sections, switches and zones."""
        switches = ", ".join(f"{sw} {pos}" for sw, pos in self.switches) or "none"
        lines = [f"route {self.signals[0]} -> {self.signals[-1]}: {self.cost_m:,.1f} m through "
                 f"{len(self.sections)} section{'s' if len(self.sections) != 1 else ''}",
                 f"  sections: {' '.join(map(str, self.sections))}",
                 f"  switches: {switches}",
                 f"  signals:  {' '.join(map(str, self.signals))}"]
        if self.zones:
            lines.append(f"  zones:    {' '.join(self.zones)}")
        lines.append(f"  ({self.algorithm}: {self.expanded:,} moves settled)")
        return "\n".join(lines)


def plan(topology: Topology, from_signal: int, to_signal: int,
         unavailable: Collection[int] = frozenset()) -> RoutePlan:
    """The shortest route by A*; raises UnknownSignal or NoRoute."""
    return _plan(topology, from_signal, to_signal, unavailable, _astar, "A*")


def plan_dijkstra(topology: Topology, from_signal: int, to_signal: int,
                  unavailable: Collection[int] = frozenset()) -> RoutePlan:
    """The shortest route by a plain Dijkstra search of the same moves (no heuristic)."""
    return _plan(topology, from_signal, to_signal, unavailable, _dijkstra, "Dijkstra")


def _plan(t: Topology, start: int, end: int, unavailable: Collection[int], search, name: str) -> RoutePlan:
    for signal, role in ((start, "from"), (end, "to")):
        if signal not in t.signals:
            raise UnknownSignal(signal, role, t)
    if start == end:
        raise NoRoute(start, end, ": a route runs between two different signals")
    a_sig, b_sig = t.signals[start], t.signals[end]
    a, first, b, wrong = a_sig.section, a_sig.toward, b_sig.section, b_sig.toward
    if b == a:
        raise NoRoute(start, end, f": signal {end} stands in section {a}, where the train at signal {start} stands")
    if b == first and a == wrong:
        raise NoRoute(start, end, f": signal {end} stands in section {b}, just beyond signal {start}, facing the "
                                  "other way")
    blocked = frozenset(unavailable) | {a}
    if first in unavailable:
        raise NoRoute(start, end, f": section {first}, just beyond signal {start}, is unavailable "
                                  "(occupied/blocked)")
    if b in unavailable:
        raise NoRoute(start, end, f": section {b}, where signal {end} stands, is unavailable (occupied/blocked)")
    moves = t.moves
    goal, parent, expanded = search(t, moves.index[(a, first)], b, wrong, blocked)
    if goal is None:
        avoided = sorted(s for s in set(unavailable) if s in t.sections and s != a)
        if avoided and search(t, moves.index[(a, first)], b, wrong, frozenset({a}))[0] is not None:
            raise NoRoute(start, end, f" avoiding section{'s' if len(avoided) > 1 else ''} "
                                      f"{', '.join(map(str, avoided))} (occupied/blocked)")
        raise NoRoute(start, end, f": no way along the track leads from section {first} into section {b} "
                                  f"toward {wrong}" + (" even on a free line" if avoided else ""))
    chain = []
    while goal != -1:
        chain.append(moves.head[goal])
        goal = parent[goal]
    sections = tuple(reversed(chain))
    cost = math.fsum(t.sections[s].length_m for s in sections)
    way = (a, *sections)
    if len(set(way)) != len(way):
        raise NoRoute(start, end, _twice(t, way), cost)
    switches = tuple(sw for u, v in zip(way, way[1:]) for sw in t.switches_between(u, v))
    passed = tuple(s for u, v in zip(way, way[1:]) if (s := t.signal_at(u, v)) is not None)
    zones = [t.zone_of_section(s) for s in sections] + [t.zone_of_switch(sw) for sw, _ in switches]
    return RoutePlan(sections, switches, (*passed, end), cost, expanded,
                     tuple(dict.fromkeys(z for z in zones if z is not None)), name)


def _twice(t: Topology, way: tuple[int, ...]) -> str:
    """Why a way that passes a section twice is no route: the section, and a switch needed both ways."""
    seen: set[int] = set()
    again = next(s for s in way if s in seen or seen.add(s))
    wanted: dict[int, set[str]] = {}
    for u, v in zip(way, way[1:]):
        for sw, pos in t.switches_between(u, v):
            wanted.setdefault(sw, set()).add(pos)
    twice = [sw for sw, positions in wanted.items() if len(positions) > 1]
    both = next((sw for sw in twice if t.switches[sw].section == again), twice[0] if twice else None)
    need = f", and switch {both} would be needed normal and reverse" if both is not None else ""
    return (f": the shortest way passes section {again} twice (it turns round through a loop{need}); "
            "set it as two routes")


def _astar(t: Topology, start: int, goal: int, wrong: int, blocked: frozenset):
    """A* over the moves from ``start`` to a move into ``goal`` not from ``wrong``.
    Returns (goal move or None, parent map, moves settled)."""
    moves = t.moves
    head, tail, after, xs, ys = moves.head, moves.tail, moves.after, moves.x, moves.y
    gx, gy = t.sections[goal].pos
    hypot, push, pop, inf = math.hypot, heapq.heappush, heapq.heappop, math.inf
    g = {start: 0.0}
    parent = {start: -1}
    heap = [(H_SCALE * hypot(xs[start] - gx, ys[start] - gy), start)]
    closed: set[int] = set()
    while heap:
        _, m = pop(heap)
        if m in closed:
            continue
        closed.add(m)
        if head[m] == goal:               # never from b': such moves are not queued, nor is the start
            return m, parent, len(closed)  # move one (_plan refuses that route first)
        gm = g[m]
        for n, w in after[m]:
            s = head[n]
            if s in blocked or s == goal and tail[n] == wrong:
                continue                  # b is entered once, at the end: never the wrong way
            g2 = gm + w
            if g2 < g.get(n, inf):
                g[n] = g2
                parent[n] = m
                push(heap, (g2 + H_SCALE * hypot(xs[n] - gx, ys[n] - gy), n))
    return None, parent, len(closed)


def _dijkstra(t: Topology, start: int, goal: int, wrong: int, blocked: frozenset):
    """Plain Dijkstra over the same moves; same answer shape as :func:`_astar`."""
    head, tail, after = t.moves.head, t.moves.tail, t.moves.after
    push, pop, inf = heapq.heappush, heapq.heappop, math.inf
    dist = {start: 0.0}
    parent = {start: -1}
    heap = [(0.0, start)]
    closed: set[int] = set()
    while heap:
        d, m = pop(heap)
        if m in closed:
            continue
        closed.add(m)
        if head[m] == goal:
            return m, parent, len(closed)
        for n, w in after[m]:
            s = head[n]
            if s in blocked or s == goal and tail[n] == wrong:
                continue
            d2 = d + w
            if d2 < dist.get(n, inf):
                dist[n] = d2
                parent[n] = m
                push(heap, (d2, n))
    return None, parent, len(closed)
