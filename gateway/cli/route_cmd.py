"""`gateway route SUBCOMMAND`: route tools; `plan` finds the shortest route between two signals.

    gateway route plan FROM TO -c CONFIG [--unavailable 105,106] [--dijkstra]

``plan`` reads the line file's ``track:`` (validated as ``gateway run`` validates it) and prints the
route from signal FROM to signal TO: its length, the sections it runs through, the switch positions
it needs, the signals it passes and the zones whose locks it takes (``render_plan``). It plans
offline: sections given with ``--unavailable`` (occupied, blocked, faulty, locked in another route)
are avoided, nothing else is known of the line's state. ``--dijkstra`` plans with the plain
Dijkstra search instead of A* (the same length; more moves settled). The planner and its
definition of a route are in ``gateway/commands/routes.py``.

Where a plan's inputs come from is one function, :func:`offline_input`; a live mode (the running
gateway's occupancy through the admin API, ``--url``) adds another beside it.

Exit status: 0 planned (the route on stdout); 1 no route, an unknown signal or section, a line
file that is invalid or has no ``track:`` (one line on stderr saying which); 2 bad usage. Runs in
the caller's thread.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Collection
from dataclasses import dataclass

from gateway.cli.subcommands import dispatch
from gateway.commands.routes import NoRoute, RoutePlan, UnknownSignal, plan, plan_dijkstra
from gateway.line.topology import Topology

#: name -> ("module:function", help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "plan": ("gateway.cli.route_cmd:plan_main", "shortest route FROM TO (-c CONFIG, --unavailable 105,106; "
             "--url URL or -c CONFIG --live: the running gateway's, avoiding what is not free now)"),
    "set": ("gateway.cli.route_set:set_main",
            "select and operate what the live plan needs: FROM TO --operator NAME (--url URL | -c CONFIG)"),
}


class RouteInputError(Exception):
    """The input cannot be planned on (the message is the one line for stderr)."""


@dataclass(frozen=True)
class PlanInput:
    topology: Topology
    unavailable: frozenset[int]


def render_plan(result: RoutePlan, unavailable: Collection[int] = ()) -> str:
    """The text ``gateway route plan`` prints for a plan (ends with a newline)."""
    text = result.describe()
    if unavailable:
        text += f"\n  avoided:  {' '.join(map(str, sorted(unavailable)))} (unavailable)"
    return text + "\n"


def parse_sections(text: str) -> frozenset[int]:
    """``"105,106"`` -> {105, 106} (spaces allowed, empty for none); RouteInputError otherwise."""
    items = [part.strip() for part in text.split(",") if part.strip()]
    if any(not part.isdigit() or not 1 <= int(part) <= 0xFFFF for part in items):
        raise RouteInputError(f"--unavailable: expected section ids separated by commas (e.g. 105,106), got {text!r}")
    return frozenset(int(part) for part in items)


def offline_input(config_path: str, unavailable_text: str) -> PlanInput:
    """The topology of the line file and the sections named unavailable; RouteInputError if unusable."""
    from gateway.app.config import ConfigError, load  # the validation `gateway run` does
    unavailable = parse_sections(unavailable_text)
    try:
        cfg = load(config_path)
    except ConfigError as exc:
        if len(exc.problems) == 1:
            raise RouteInputError(f"{exc.source}: {exc.problems[0]}") from None
        raise RouteInputError(f"{exc.source}: {len(exc.problems)} problems in the line file, the first: "
                              f"{exc.problems[0]} (`gateway check -c {config_path}` lists them all)") from None
    if cfg.track is None:
        raise RouteInputError(f"{config_path}: the line file has no track: section, so there is nothing to plan "
                              "on (docs/configuration.md, `track:`)")
    unknown = sorted(unavailable - set(cfg.track.sections))
    if unknown:
        raise RouteInputError(f"--unavailable: {', '.join(map(str, unknown))} "
                              f"{'is not a section' if len(unknown) == 1 else 'are not sections'} of the track")
    return PlanInput(cfg.track, unavailable)


def _plan_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway route plan",
                                description="The shortest route from one signal to another, from the line file.")
    p.add_argument("from_signal", type=int, metavar="FROM", help="the start signal's id")
    p.add_argument("to_signal", type=int, metavar="TO", help="the end signal's id")
    p.add_argument("-c", "--config", metavar="CONFIG", help="the line file (YAML) with a track: section")
    p.add_argument("--unavailable", default="", metavar="IDS",
                   help="sections the route must avoid (occupied, blocked...), e.g. 105,106")
    p.add_argument("--dijkstra", action="store_true", help="plan with the plain Dijkstra search instead of A*")
    return p


def plan_main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from gateway.cli.route_set import plan_main as live_plan_main
    from gateway.cli.route_set import wants_live
    if wants_live(argv):          # --url or --live: the running gateway plans on its live occupancy
        return live_plan_main(argv)
    p = _plan_parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:  # argparse has printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    if not args.config:
        p.print_usage(sys.stderr)
        sys.stderr.write("gateway route plan: give -c CONFIG, the line file whose track: to plan on\n")
        return 2
    try:
        given = offline_input(args.config, args.unavailable)
        search = plan_dijkstra if args.dijkstra else plan
        result = search(given.topology, args.from_signal, args.to_signal, given.unavailable)
    except (RouteInputError, NoRoute, UnknownSignal) as exc:
        sys.stderr.write(f"gateway route plan: {exc}\n")
        return 1
    sys.stdout.write(render_plan(result, given.unavailable))
    return 0


def main(argv: list[str] | None = None) -> int:
    return dispatch("route", SUBCOMMANDS, argv)
