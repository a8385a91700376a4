"""`gateway route set` and the live `gateway route plan`: a route on the running line, through the admin API.

    gateway route plan FROM TO (--url URL | -c CONFIG --live) [--json]
    gateway route set FROM TO --operator NAME [--workstation NAME] [--wait S]
                      [--url URL | -c CONFIG] [--token-file F]

The live plan is the gateway's: ``GET /routes/plan?from=FROM&to=TO`` plans on the line's
occupancy as the gateway sees it now (occupied, locked, faulty and blocked sections avoided) and
says which configured route (``track.routes``) has these two signals, if one has. The offline plan
from the line file alone is ``gateway/cli/route_cmd.py``, which hands argv here when it holds
``--url`` or ``--live`` (:func:`wants_live`).

``route set`` commands what that plan needs, as one fenced operation:

1. Plan (as above). A plan with a ``route_id`` is one step, the route command
   ``route ROUTE_ID set`` (the interlocking moves the switches and locks the sections). Without one,
   every switch of the plan is a step, ``switch ID POSITION`` in the order the route passes them
   (also those already in position: the selection holds the switch there until the end).
2. Select every step. Each selection holds its zone's lock, with that zone's fencing token, which
   the device compares before it acts: while the operation runs no other workstation (and no other
   gateway of a redundant pair) can command those zones. Steps in one zone share its lock: the
   gateway takes a zone once for one operator at one workstation, gives every selection of that
   zone the same fencing token, and releases the zone when the last of them ends; so a plan with
   two switches in one zone is set in one operation. If any select fails, every selection made so
   far is cancelled, nothing has moved, and the step that failed is named.
3. Operate the steps one at a time, each waited for until it ends (``--wait`` seconds at most).
   When one ends other than DONE, the steps not yet operated are cancelled and the report names
   the ones done, the one that failed and the ones cancelled. Switches already moved stay moved:
   a sent command cannot be called back, and the report says so.

A selection expires ``control.select_timeout_s`` after its select (30 s by default): the steps
of one operation must all be operated within it, else the late one ends EXPIRED, which fails the
operation like any other failure. Ctrl-C cancels what is selected and not yet operated.

Exit status: 0 planned / every step DONE; 1 unknown signal, no route, a refused step (the
gateway's sentence on stderr), no outcome within ``--wait``, or no gateway answered; 2 bad
usage, an unusable config or token file; 130 interrupted. Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from gateway.cli.command_cmd import (DEFAULT_WAIT_S, AdminClient, NotEnded, Refused, Unreachable, UsageProblem,
                                     _positive, add_where, cancel, client_of, describe_selection, operate, select,
                                     wait_ended)
from gateway.cli.terminal_text import json_line, safe_text

#: what makes `gateway route plan` live rather than offline
LIVE_FLAGS = ("--url", "--live")


@dataclass(frozen=True, slots=True)
class Step:
    kind: str
    object_id: int
    value: str

    def __str__(self) -> str:
        return safe_text(f"{self.kind} {self.object_id} {self.value}")


def wants_live(argv: list[str]) -> bool:
    """True when ``gateway route plan`` argv asks for the gateway's plan (``--url``, ``--live``)."""
    head = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in LIVE_FLAGS or a.startswith("--url=") for a in head)


def fetch_plan(client: AdminClient, from_signal: int, to_signal: int) -> dict:
    """The gateway's plan; raises Refused (404 unknown signal, 409 no route) or Unreachable."""
    answer = client.get(f"/routes/plan?from={from_signal}&to={to_signal}")
    plan = answer.get("plan")
    if not isinstance(plan, dict) or not isinstance(plan.get("switches"), list):
        raise Unreachable("the answer to /routes/plan has no plan (expected {\"plan\": {...}})")
    return plan


def steps_of(plan: dict) -> list[Step]:
    """The commands that set the plan's route: its configured route, else each of its switches."""
    if plan.get("route_id") is not None:
        return [Step("route", int(plan["route_id"]), "set")]
    return [Step("switch", int(sw), str(pos)) for sw, pos in plan["switches"]]


def render_live_plan(plan: dict) -> str:
    """The text of a live plan, in the lines of ``RoutePlan.describe`` (ends with a newline)."""
    sections, signals = plan.get("sections") or [], plan.get("signals") or []
    switches = ", ".join(f"{sw} {pos}" for sw, pos in plan.get("switches") or []) or "none"
    cost = plan.get("cost_m")
    length = f"{cost:,.1f} m" if isinstance(cost, (int, float)) else "? m"
    lines = [f"route {plan.get('from')} -> {plan.get('to')}: {length} through {len(sections)} "
             f"section{'s' if len(sections) != 1 else ''} (live: the gateway's plan on the line's occupancy now)",
             f"  sections: {' '.join(map(str, sections))}",
             f"  switches: {switches}",
             f"  signals:  {' '.join(map(str, signals))}"]
    if plan.get("zones"):
        lines.append(f"  zones:    {' '.join(map(str, plan['zones']))}")
    rid = plan.get("route_id")
    lines.append(f"  route id: {rid} (track.routes: `route set` sends one route command)" if rid is not None else
                 "  route id: none configured (`route set` selects and operates each switch)")
    return "\n".join(safe_text(line) for line in lines) + "\n"


def _parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gateway route {action}")
    p.add_argument("from_signal", type=int, metavar="FROM", help="the start signal's id")
    p.add_argument("to_signal", type=int, metavar="TO", help="the end signal's id")
    add_where(p)
    if action == "plan":
        p.add_argument("--live", action="store_true", help="the gateway's plan (implied by --url; with -c: the "
                                                           "gateway of that config, not the line file offline)")
        p.add_argument("--json", action="store_true", help="print the gateway's JSON answer (one line)")
    else:
        p.add_argument("--operator", required=True, metavar="NAME",
                       help="the operator's name (audited with each command)")
        p.add_argument("--workstation", metavar="NAME",
                       help="the workstation named to others as the zone locks' holder")
        p.add_argument("--wait", type=_positive, default=DEFAULT_WAIT_S, metavar="S",
                       help=f"how long to wait for each command to end, seconds (default {DEFAULT_WAIT_S:g})")
        p.add_argument("--token-file", metavar="FILE",
                       help="the gateway's admin token file (default: the one -c CONFIG names)")
    return p


def _start(action: str, argv: list[str] | None) -> tuple[argparse.Namespace, AdminClient] | int:
    try:
        args = _parser(action).parse_args(sys.argv[1:] if argv is None else argv)
        return args, client_of(args, writes=action == "set")
    except SystemExit as exc:  # argparse has printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    except UsageProblem as exc:
        sys.stderr.write(f"gateway route {action}: {exc}\n")
        return 2


def _planned(action: str, argv: list[str] | None) -> tuple[argparse.Namespace, AdminClient, dict] | int:
    """Parse, connect and fetch the gateway's plan: (args, client, plan), or the exit status (1, 2)."""
    started = _start(action, argv)
    if isinstance(started, int):
        return started
    args, client = started
    try:
        return args, client, fetch_plan(client, args.from_signal, args.to_signal)
    except (Refused, Unreachable) as exc:
        sys.stderr.write(f"gateway route {action}: {exc}\n")
        return 1


def plan_main(argv: list[str] | None = None) -> int:
    planned = _planned("plan", argv)
    if isinstance(planned, int):
        return planned
    args, _, plan = planned
    sys.stdout.write(json_line({"plan": plan}) + "\n" if args.json else render_live_plan(plan))
    return 0


def set_main(argv: list[str] | None = None) -> int:
    planned = _planned("set", argv)
    if isinstance(planned, int):
        return planned
    args, client, plan = planned
    sys.stdout.write(render_live_plan(plan))
    return RouteSetting(client, args.operator, args.workstation, args.wait).run(plan)


class RouteSetting:
    """One ``route set``: select every step, then operate them one at a time; undo what is undoable."""

    def __init__(self, client: AdminClient, operator: str, workstation: str | None, wait_s: float) -> None:
        self.client, self.operator, self.workstation, self.wait_s = client, operator, workstation, wait_s
        self.selected: list[tuple[Step, dict]] = []   # selected, not yet operated
        self.done: list[Step] = []
        self.out, self.err = sys.stdout, sys.stderr

    def run(self, plan: dict) -> int:
        try:
            steps = steps_of(plan)
        except (KeyError, TypeError, ValueError):
            self.err.write("gateway route set: the gateway's plan names no usable route_id or switches "
                           "(expected \"switches\": [[id, \"normal\"|\"reverse\"], ...])\n")
            return 1
        name = safe_text(f"route {plan.get('from')} -> {plan.get('to')}")
        if not steps:
            self.out.write(f"{name} passes no switch and has no configured route: nothing to command\n")
            return 0
        try:
            failed = self._select_all(steps) or self._operate_all(steps)
        except KeyboardInterrupt:
            self.err.write("gateway route set: interrupted\n")
            self._undo()
            return 130
        if failed:
            self.err.write(f"gateway route set: {failed}\n")
            self._undo()
            self.err.write(f"  {name} is NOT set\n")
            return 1
        self.out.write(f"{name} set: {len(steps)} of {len(steps)} command{'s' if len(steps) > 1 else ''} DONE\n")
        return 0

    def _select_all(self, steps: list[Step]) -> str | None:
        """Select each step; the failure's sentence, or None when every select was granted."""
        for i, step in enumerate(steps, 1):
            try:
                s = select(self.client, step.kind, step.object_id, step.value, self.operator, self.workstation)
            except (Refused, Unreachable) as exc:
                return f"select {i} of {len(steps)} ({step}) failed: {exc}"
            self.selected.append((step, s))
            self.out.write(f"  selected {step}: {describe_selection(s)}\n")
        return None

    def _operate_all(self, steps: list[Step]) -> str | None:
        """Operate the selections in order, each waited for; the failure's sentence, or None when all DONE."""
        for i in range(1, len(steps) + 1):
            step, s = self.selected.pop(0)
            where = f"operate {i} of {len(steps)} ({step})"
            try:
                operate(self.client, s["selection_id"], self.operator)
            except (Refused, Unreachable) as exc:
                self.selected.insert(0, (step, s))   # not sent (interlocked, expired...): cancel it with the rest
                return f"{where} failed, nothing sent: {exc}"
            self.out.write(f"  operating {step}...\n")
            self.out.flush()
            try:
                entry = wait_ended(self.client, s["selection_id"], self.wait_s)
            except NotEnded as exc:
                return f"{where}: the command was sent; {exc}"
            except KeyboardInterrupt:
                self.err.write(f"gateway route set: {step} was sent and ends by itself (`gateway command list`)\n")
                raise
            if entry.get("state") != "DONE":
                return safe_text(f"{where} ended {entry.get('state')}: {entry.get('outcome')}")
            self.done.append(step)
            self.out.write(safe_text(f"  done {step}: {entry.get('outcome')}") + "\n")
        return None

    def _undo(self) -> None:
        """Cancel every selection not operated and say what stays as it is."""
        for step, s in self.selected:
            try:
                cancel(self.client, s["selection_id"], self.operator)
                self.err.write(f"  cancelled: {step} (selection {safe_text(s['selection_id'])}, never operated)\n")
            except (Refused, Unreachable) as exc:
                self.err.write(f"  not cancelled: {step} (selection {safe_text(s['selection_id'])}): {exc}; "
                               "an open selection expires by itself (`gateway command list`)\n")
        self.selected.clear()
        for step in self.done:
            moved = "stays moved" if step.kind == "switch" else "stays as commanded"
            self.err.write(f"  done: {step} ({moved}: a command sent is not called back)\n")
