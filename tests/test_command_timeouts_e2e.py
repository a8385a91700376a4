"""The command path's timeouts and the unreachable device, end to end: the real gateway (command stage,
admin API, in-process zone locks) and the simulated interlockings over real TCP on both nets.

The engine's own tests (tests/test_command_engine.py) drive every timeout with timestamps; here the
real clock, the real commands thread and the real device run them: a selection nobody operates
expires and frees its zone, a switch slower than its feedback timeout fails the command, and a device
that goes away fails a command it has not answered. Each ends the zone's lease: another operator then
selects in the zone.
"""
from __future__ import annotations

import pytest
from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until
from test_command_path import free_switch, http, switch_value
from test_simulators import SimThread
from test_simulators_vs_gateway import at_ports

from gateway.app import config
from railcodecs import Switches
from simulators.runner import Options, Simulation


@pytest.fixture
def slow_line(tmp_path, request):
    """(gateway, config, simulator thread): selections expire after 1 s, a switch command must end within
    ``request.param`` s (default 1), and the simulated switches take 3-3.5 s to move."""
    feedback_s = getattr(request, "param", 1)
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}          # the relay is QuietRelay: no Kafka
    del raw["trains"]                                             # every section stays free
    raw["control"] = {"select_timeout_s": 1, "feedback_timeout_s": {"switch": feedback_s}}
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        sim = SimThread(Simulation(at_ports(cfg, gw.ports), Options(seed=4, duration_s=30.0, heartbeat_ms=250,
                                                                      field_events=False,
                                                                      switch_move_s=(3.0, 3.5)))).start()
        try:
            wait_until(lambda: all(gw.line.registry.devices[d].reachable for d in (257, 258)), timeout=10,
                       what="CI-1 and CI-2 up")
            yield gw, cfg, sim
        finally:
            sim.sim.stopping = True


def _select(gw, cfg, sw: int, value: str, operator: str) -> dict:
    code, doc = http(gw, cfg, "POST", "/commands/select",
                     {"kind": "switch", "object": sw, "value": value, "operator": operator})
    assert code == 200, doc
    return doc["selection"]


def _operated(gw, cfg) -> tuple[int, dict]:
    """Alice selects a free switch of CI-1 to its other position and operates it: (switch, selection)."""
    sw = free_switch(gw)
    sel = _select(gw, cfg, sw, "reverse" if switch_value(gw, sw) == Switches.NORMAL else "normal", "alice")
    code, doc = http(gw, cfg, "POST", "/commands/operate", {"selection": sel["selection_id"], "operator": "alice"})
    assert code == 200, doc
    return sw, sel


def _ended(gw, cfg, selection_id: str, timeout: float) -> dict:
    def ended():
        _, cmds = http(gw, cfg, "GET", "/commands")
        return next((c for c in cmds["recent"] if c["selection_id"] == selection_id), None)
    return wait_until(ended, timeout=timeout, what=f"the end of {selection_id}")


def _zone_is_free(gw, cfg, sw: int) -> None:
    """Another operator selects the switch (the zone's lease was released), then cancels."""
    value = "reverse" if switch_value(gw, sw) == Switches.NORMAL else "normal"
    sel = _select(gw, cfg, sw, value, "bob")
    code, doc = http(gw, cfg, "POST", "/commands/cancel", {"selection": sel["selection_id"], "operator": "bob"})
    assert code == 200, doc


def test_a_selection_nobody_operates_expires_and_frees_its_zone(slow_line):
    gw, cfg, _ = slow_line
    sw = free_switch(gw)
    start = switch_value(gw, sw)
    sel = _select(gw, cfg, sw, "reverse" if start == Switches.NORMAL else "normal", "alice")
    end = _ended(gw, cfg, sel["selection_id"], timeout=10)
    assert end["state"] == "EXPIRED", end
    code, doc = http(gw, cfg, "POST", "/commands/operate", {"selection": sel["selection_id"], "operator": "alice"})
    assert code in (409, 410) and "expired" in doc["error"].lower(), (code, doc)    # too late: nothing sent
    assert gw.commands.stats()["sent"] == 0 and switch_value(gw, sw) == start
    _zone_is_free(gw, cfg, sw)


def test_a_switch_slower_than_its_feedback_timeout_fails_the_command(slow_line):
    gw, cfg, _ = slow_line
    sw, sel = _operated(gw, cfg)
    end = _ended(gw, cfg, sel["selection_id"], timeout=10)
    # the device is still moving the switch (3-3.5 s) when the 1 s for the result and the feedback ran out
    assert end["state"] == "FAILED" and end["outcome"] == "no COMMAND_RESULT from CI-1 within 1 s", end
    assert switch_value(gw, sw) == Switches.MOVING
    _zone_is_free(gw, cfg, sw)


@pytest.mark.parametrize("slow_line", [30], indirect=True)
def test_a_device_that_goes_away_fails_the_command_it_had_not_answered(slow_line):
    gw, cfg, sim = slow_line
    sw, sel = _operated(gw, cfg)
    sim.sim.stopping = True                      # every simulated device closes its links, mid-move
    end = _ended(gw, cfg, sel["selection_id"], timeout=10)
    assert end["state"] == "FAILED" and "unreachable" in (end.get("outcome") or ""), end
    code, doc = http(gw, cfg, "POST", "/commands/select",
                     {"kind": "switch", "object": sw, "value": "normal", "operator": "bob"})
    assert code == 409 and "unreachable" in doc["error"], (code, doc)      # nothing to command now
