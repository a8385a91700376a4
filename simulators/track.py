"""What a simulated interlocking knows of the track: where switches and signals stand, zones, routes.

Built once per run from the line file (:meth:`Track.from_config`) and handed to
the :class:`~simulators.line.LineModel`; read by :mod:`simulators.interlocking`
(which section holds a switch, what a route locks) and by
:mod:`simulators.commands` (the fencing zone of a command's object).

With a ``track:`` section (format: docs/configuration.md)::

    sections: {101: {length_m: 400, pos: [200, 0], next: [102]}, ...}
    switches: {301: {section: 103, normal: 104, reverse: 113}, ...}
    signals:  {201: {section: 101, toward: 102}, ...}
    zones:    {Z1: {sections: [...], switches: [...]}, ...}
    routes:   {401: {from: 201, to: 204}, ...}

the zones and routes are the file's. A route id names one path, the one the
*planner* returns for its two signals on the free line (:data:`Planner`: by
default the gateway's A*, ``gateway/commands/routes.py``, so the device sets
the sections and switches the gateway plans; a test may hand in another); it is
planned once and kept. Without ``track:`` every device is one zone named after
it, a device's switches stand on its own sections spread evenly (as the line
model places signals), and no route is known.

Objects of a ``track:`` file that are in no zone fall back to the device's zone.
Plain data, no IO; built and read in the simulator's one asyncio thread.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from gateway.app.config import Config
from gateway.commands.routes import plan
from railcodecs import Switches


@dataclass(frozen=True, slots=True)
class RouteLayout:
    """What setting a route takes: its sections (locked), its switches and their positions, its signals."""

    sections: tuple[int, ...]
    switches: tuple[tuple[int, int], ...]     # (switch id, Switches.NORMAL or Switches.REVERSE)
    start_signal: int
    end_signal: int


#: (start signal, end signal) -> the route's layout, or None when there is no path
Planner = Callable[[int, int], "RouteLayout | None"]
_POSITIONS = {"normal": Switches.NORMAL, "reverse": Switches.REVERSE}


def layout_from_plan(plan, start_signal: int, end_signal: int) -> RouteLayout:
    """A ``RoutePlan`` (``sections``, ``switches=((id, "normal"|"reverse"), ...)``) as a RouteLayout."""
    return RouteLayout(tuple(plan.sections), tuple((sw, _POSITIONS[pos]) for sw, pos in plan.switches),
                       start_signal, end_signal)


def no_planner(start_signal: int, end_signal: int) -> None:
    """No route can be set (COMMAND_RESULT rejected, no path)."""
    return None


def gateway_planner(topology) -> Planner:
    """The gateway's A* over ``topology`` (a ``gateway.line.topology.Topology``), on the free line."""
    def planner(start_signal: int, end_signal: int) -> RouteLayout | None:
        try:
            return layout_from_plan(plan(topology, start_signal, end_signal), start_signal, end_signal)
        except ValueError:   # NoRoute, UnknownSignal: the config check plans every route, so rare
            return None
    return planner


@dataclass
class Track:
    """Switch and signal places, zones and routes. ``has_routes``: the line file has a ``track:`` section."""

    switch_section: dict[int, int] = field(default_factory=dict)
    signal_section: dict[int, int] = field(default_factory=dict)
    section_zone: dict[int, str] = field(default_factory=dict)
    switch_zone: dict[int, str] = field(default_factory=dict)
    routes: dict[int, tuple[int, int]] = field(default_factory=dict)     # route id -> (from signal, to signal)
    has_routes: bool = False
    planner: Planner = no_planner
    _layouts: dict[int, RouteLayout | None] = field(default_factory=dict, repr=False)

    # -- building ----------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Config, planner: Planner | None = None) -> "Track":
        """From the line file's ``track:`` section if it has one (``cfg.track``, checked by the config
        module), else the per-device fallback."""
        topology = getattr(cfg, "track", None)
        if topology is not None:
            return cls.from_raw(topology.to_raw(), planner or gateway_planner(topology))
        return cls.fallback(cfg)

    @classmethod
    def from_raw(cls, raw: dict, planner: Planner | None = None) -> "Track":
        """From a ``track:`` mapping as written in the line file (ids may be ints or digit strings)."""
        t = cls(has_routes=True, planner=planner or no_planner)
        for sw, spec in (raw.get("switches") or {}).items():
            t.switch_section[int(sw)] = int(spec["section"])
        for sig, spec in (raw.get("signals") or {}).items():
            t.signal_section[int(sig)] = int(spec["section"])
        for zone, spec in (raw.get("zones") or {}).items():
            for s in spec.get("sections") or ():
                t.section_zone[int(s)] = str(zone)
            for sw in spec.get("switches") or ():
                t.switch_zone[int(sw)] = str(zone)
        for rid, spec in (raw.get("routes") or {}).items():
            t.routes[int(rid)] = (int(spec["from"]), int(spec["to"]))
        return t

    @classmethod
    def fallback(cls, cfg: Config) -> "Track":
        """No ``track:``: each device's switches spread over its own sections; zones are the devices."""
        t = cls()
        for d in cfg.devices:
            if not d.sections:
                continue
            for j, sw in enumerate(d.switches):
                t.switch_section.setdefault(sw, d.sections[j * len(d.sections) // len(d.switches)])
        return t

    # -- reading -----------------------------------------------------------------------
    def layout(self, route: int) -> RouteLayout | None:
        """The route's layout (planned once), or None if the route is unknown or has no path."""
        if route not in self._layouts:
            ends = self.routes.get(route)
            self._layouts[route] = None if ends is None else self.planner(*ends)
        return self._layouts[route]

    def zone(self, kind: str, obj: int, device: str) -> str:
        """The fencing zone of a ``"switch"``, ``"section"`` or ``"route"``; ``device``'s own when none.

        A route's zone is its first switch's, else its start signal's section's.
        """
        if kind == "switch":
            return self.switch_zone.get(obj, device)
        if kind == "section":
            return self.section_zone.get(obj, device)
        layout = self.layout(obj)
        if layout is not None and layout.switches:
            return self.switch_zone.get(layout.switches[0][0], device)
        ends = self.routes.get(obj)
        section = self.signal_section.get(ends[0]) if ends else None
        return device if section is None else self.section_zone.get(section, device)
