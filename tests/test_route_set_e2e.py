"""`gateway route set` end to end: the real CLI (a subprocess) against a real gateway (its admin API, command
stage, in-process zone locks, audit journal) and the simulated interlockings over real TCP on both nets.

The demo line's track: 202 -> 206 runs through sections 103-109 over switches 301 and 302, both in zone Z1,
and no configured route joins those signals, so `route set` selects and operates each switch; the two
selections share zone Z1's one lease (one fencing token). 201 -> 204 is the configured route 401, one
route command. The line runs without trains and the points start reversed, so the route's ``normal`` is a
move; switches move in 0.2-0.4 s and make no moves of their own meanwhile.
"""
from __future__ import annotations

import subprocess
import sys

import pytest
from gateway_harness import ROOT, QuietRelay, RunningGateway, line_config, wait_until
from test_command_path import http
from test_simulators import SimThread
from test_simulators_vs_gateway import at_ports

from gateway.app import config
from gateway.app.admin_routes import token_path
from gateway.commands.audit import AuditJournal
from railcodecs import Switches, TrackSections
from simulators import line as simulated_line
from simulators.runner import Options, Simulation

CI_1 = 257
WAY = range(103, 110)                    # the sections of 202 -> 206


@pytest.fixture
def line(tmp_path, monkeypatch):
    """(gateway, config, simulation): CI-1 and CI-2 up, switches 301 and 302 reversed, the way free."""
    monkeypatch.setattr(simulated_line, "SWITCH_EVERY_S", float("inf"))    # no spontaneous switch moves
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}                     # the relay is QuietRelay: no Kafka
    del raw["trains"]                                                       # every section stays free
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        sim = Simulation(at_ports(cfg, gw.ports), Options(seed=4, duration_s=60.0, heartbeat_ms=250, grace_s=0.2,
                                                           field_events=False, switch_move_s=(0.2, 0.4)))
        sim.model.switch_pos.update({301: Switches.REVERSE, 302: Switches.REVERSE})
        thread = SimThread(sim).start()
        try:
            view = gw.commands.view
            wait_until(lambda: all(gw.line.registry.devices[d].reachable for d in (257, 258))
                       and switch(gw, 301) == switch(gw, 302) == Switches.REVERSE
                       and all(view.section_state(s) == TrackSections.FREE for s in WAY),
                       timeout=10, what="CI-1 and CI-2 up, 301 and 302 reverse, sections 103-109 free")
            yield gw, cfg, sim
        finally:
            sim.stopping = True
            thread.join(10)


def switch(gw, switch_id: int):
    row = gw.line.objects.switches.get((CI_1, switch_id))
    return None if row is None else row[0]


def route_set(gw, cfg, *args: str) -> subprocess.CompletedProcess:
    """`gateway route set ARGS` as an operator runs it, against this gateway's admin API."""
    return subprocess.run([sys.executable, "-m", "gateway", "route", "set", *args,
                           "--url", f"http://127.0.0.1:{gw.ports['admin']}", "--token-file", token_path(cfg),
                           "--wait", "10"], capture_output=True, text=True, timeout=60, cwd=ROOT)


def status_switches(gw, cfg) -> dict[str, str]:
    """Switch id -> position name, as GET /status shows CI-1's objects."""
    code, status = http(gw, cfg, "GET", "/status")
    assert code == 200
    ci1 = next(d for d in status["devices"] if d["id"] == CI_1)
    return {sw: s["value"] for sw, s in ci1["objects"]["switches"].items()}


def journal_events(gw, command_id: int) -> list:
    journal = AuditJournal(gw.commands.journal_path)
    try:
        return journal.events_of(command_id)
    finally:
        journal.close()


def test_route_set_takes_two_switches_of_one_zone_on_one_lease_then_a_configured_route(line):
    gw, cfg, _ = line
    run = route_set(gw, cfg, "202", "206", "--operator", "alice", "--workstation", "WS-1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "  switches: 301 normal, 302 normal\n" in run.stdout, run.stdout
    assert run.stdout.splitlines()[-1] == "route 202 -> 206 set: 2 of 2 commands DONE", run.stdout
    assert run.stderr == ""

    shown = status_switches(gw, cfg)
    assert (shown["301"], shown["302"]) == ("normal", "normal")          # the points moved
    code, cmds = http(gw, cfg, "GET", "/commands")
    assert code == 200 and cmds["open"] == []
    steps = {c["object_id"]: c for c in cmds["recent"] if c["kind"] == "switch"}
    assert sorted(steps) == [301, 302]
    assert {(c["state"], c["zone"], c["operator"], c["workstation"]) for c in steps.values()} == \
        {("DONE", "Z1", "alice", "WS-1")}
    token = steps[301]["fencing_token"]
    assert token > 0 and steps[302]["fencing_token"] == token             # one lease for the zone, not two
    for c in steps.values():
        events = journal_events(gw, c["command_id"])
        moves = [e.transition for e in events]          # the status may show the move before the result comes
        assert moves[:3] == ["select", "lock_granted", "operate"] and "result_done" in moves, moves
        assert [e.fencing_token for e in events] == [None] + [token] * (len(events) - 1)
        assert (events[-1].transition, events[-1].state, events[-1].value) == ("feedback", "DONE", "normal")

    run = route_set(gw, cfg, "201", "204", "--operator", "alice", "--workstation", "WS-1")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "route id: 401" in run.stdout
    assert run.stdout.splitlines()[-1] == "route 201 -> 204 set: 1 of 1 command DONE", run.stdout
    code, cmds = http(gw, cfg, "GET", "/commands")
    route, = [c for c in cmds["recent"] if c["kind"] == "route"]
    assert (route["object_id"], route["value"], route["state"], route["zone"]) == (401, "set", "DONE", "Z1")
    assert route["fencing_token"] > token                                 # Z1 was released, then taken anew
    assert cmds["open"] == []


def test_a_refused_step_exits_1_naming_it_and_leaves_no_selection_and_the_zone_free(line):
    """CI-1 refuses to move 301 (its section 103 is blocked at the device: TRACK_SECTIONS cannot show it, so
    the gateway's plan and interlocking let it through). The CLI names the step, cancels 302's selection,
    and the zone that both shared is free again for another operator."""
    gw, cfg, sim = line
    sim.model.ixl.blocked.add(103)
    run = route_set(gw, cfg, "202", "206", "--operator", "alice", "--workstation", "WS-1")
    assert run.returncode == 1, run.stdout + run.stderr
    err = run.stderr.splitlines()
    assert err[0] == ("gateway route set: operate 1 of 2 (switch 301 normal) ended FAILED: rejected by CI-1: "
                      "a section is blocked (detail 5)"), run.stderr
    assert err[1].startswith("  cancelled: switch 302 normal (selection ") and err[1].endswith(", never operated)")
    assert err[-1] == "  route 202 -> 206 is NOT set"

    code, cmds = http(gw, cfg, "GET", "/commands")
    assert code == 200 and cmds["open"] == []                             # no selection left open
    ended = {c["object_id"]: c for c in cmds["recent"]}
    assert (ended[301]["state"], ended[302]["state"]) == ("FAILED", "CANCELLED")
    assert ended[301]["fencing_token"] == ended[302]["fencing_token"]    # they had shared zone Z1's lease
    shown = status_switches(gw, cfg)
    assert (shown["301"], shown["302"]) == ("reverse", "reverse")        # nothing moved

    code, doc = http(gw, cfg, "POST", "/commands/select", {"kind": "switch", "object": 302, "value": "normal",
                                                           "operator": "bob", "workstation": "WS-2"})
    assert code == 200, doc                                               # the zone lock is free
    sel = doc["selection"]
    assert (sel["state"], sel["zone"]) == ("SELECTED", "Z1") and sel["fencing_token"] > ended[301]["fencing_token"]
    code, doc = http(gw, cfg, "POST", "/commands/cancel", {"selection": sel["selection_id"], "operator": "bob"})
    assert code == 200, doc
    wait_until(lambda: gw.commands.locks.holder("Z1") is None, timeout=2, what="zone Z1 released")
