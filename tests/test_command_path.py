"""The command path end to end: the real gateway (its command stage, admin API, in-process zone locks,
audit journal) and the simulated interlockings over real TCP on both nets.

Select before operate with feedback: the switch moves (the device reports ``moving``, then the new
position), its COMMAND_RESULT says done, and only then is the command DONE; every step is in the audit
journal with the operator, the workstation and the fencing token. Refusals change nothing.
"""
from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until
from test_simulators import SimThread
from test_simulators_vs_gateway import at_ports

from gateway.app import config
from gateway.app.admin_routes import read_token, token_path
from gateway.commands.audit import AuditJournal
from gateway.commands.model import Interlocked
from railcodecs import Switches, TrackSections
from simulators.runner import Options, Simulation

TERMINAL = {"DONE", "FAILED", "CANCELLED", "EXPIRED", "REFUSED"}


@pytest.fixture
def line(tmp_path):
    """A gateway with the command path and the demo line's simulated devices (switches move in 0.2-0.4 s), and
    one consist of trains (the demo's ten would keep most sections occupied)."""
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}          # the relay is QuietRelay: no Kafka
    raw["trains"]["ids"], raw["trains"]["consists"] = [1025, 1026], {9: [1025, 1026]}
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
        sim = SimThread(Simulation(at_ports(cfg, gw.ports), Options(seed=4, duration_s=25.0, heartbeat_ms=250,
                                                                      field_events=False,
                                                                      switch_move_s=(0.2, 0.4)))).start()
        wait_until(lambda: all(gw.line.registry.devices[d].reachable for d in (257, 258)), timeout=10,
                   what="CI-1 and CI-2 up")
        yield gw, cfg
        sim.sim.stopping = True


def http(gw, cfg, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    req = urllib.request.Request(f"http://127.0.0.1:{gw.ports['admin']}{path}", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    if method == "POST":
        req.add_header("Authorization", f"Bearer {read_token(token_path(cfg))}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def switch_value(gw, switch: int):
    row = gw.line.objects.switches.get((257, switch))
    return None if row is None else row[0]


def free_switch(gw, candidates=(301, 302, 303)) -> int:
    """A switch of CI-1 whose section is free now (the simulated trains run round the line)."""
    view = gw.commands.view
    for _ in range(100):
        for sw in candidates:
            if switch_value(gw, sw) in (Switches.NORMAL, Switches.REVERSE) and \
                    view.section_state(view.section_of_switch(sw)) == TrackSections.FREE:
                return sw
        time.sleep(0.1)
    raise AssertionError("no switch of CI-1 with a free section")


def test_select_operate_feedback_done_through_the_admin_api(line):
    gw, cfg = line
    sw = free_switch(gw)
    want = "reverse" if switch_value(gw, sw) == Switches.NORMAL else "normal"
    assert not gw.commands.listening            # no command open: the IO threads call nothing of it
    code, doc = http(gw, cfg, "POST", "/commands/select",
                     {"kind": "switch", "object": sw, "value": want, "operator": "alice", "workstation": "WS-1"})
    assert code == 200, doc
    assert gw.commands.listening
    sel = doc["selection"]
    assert sel["state"] == "SELECTED" and sel["zone"] == "Z1" and sel["fencing_token"] > 0
    code, again = http(gw, cfg, "POST", "/commands/select",
                       {"kind": "switch", "object": sw, "value": want, "operator": "bob"})
    assert code == 409 and "selected" in again["error"]                  # reserved for alice
    code, doc = http(gw, cfg, "POST", "/commands/operate", {"selection": sel["selection_id"], "operator": "bob"})
    assert code == 409                                                     # not bob's selection
    code, doc = http(gw, cfg, "POST", "/commands/operate", {"selection": sel["selection_id"], "operator": "alice"})
    assert code == 200 and doc["selection"]["state"] == "OPERATING"
    seen = set()

    def ended():
        seen.add(switch_value(gw, sw))
        _, cmds = http(gw, cfg, "GET", "/commands")
        return next((c for c in cmds["recent"] if c["selection_id"] == sel["selection_id"]), None)
    done = wait_until(ended, timeout=15, what="the command's end")
    assert done["state"] == "DONE", done
    wait_until(lambda: not gw.commands.listening, timeout=5, what="the stage off the ObjectState listeners")
    assert switch_value(gw, sw) == (Switches.REVERSE if want == "reverse" else Switches.NORMAL)
    journal = AuditJournal(gw.commands.journal_path)
    try:
        events = journal.events_of(done["command_id"]) if hasattr(journal, "events_of") else []
    finally:
        journal.close()
    states = [e.state for e in events]
    assert states[-3:] == ["OPERATING", "AWAIT_FEEDBACK", "DONE"], states
    assert {(e.operator, e.workstation) for e in events} == {("alice", "WS-1")}
    assert {e.fencing_token for e in events if e.state != "SELECTING"} == {sel["fencing_token"]}


def test_refusals_are_clear_and_change_nothing(line):
    gw, cfg = line
    cases = [({"kind": "switch", "object": 399, "value": "normal", "operator": "a"}, 404, "399"),
             ({"kind": "switch", "object": 301, "value": "sideways", "operator": "a"}, 400, "sideways"),
             ({"kind": "switch", "object": 301, "value": "normal"}, 400, "operator"),
             ({"kind": "switch", "object": 301, "value": "normal", "operator": "a", "x": 1}, 400, "'x'")]
    for body, code, text in cases:
        got, doc = http(gw, cfg, "POST", "/commands/select", body)
        assert got == code and text in doc["error"], (body, got, doc)
    got, doc = http(gw, cfg, "POST", "/commands/operate", {"selection": "nope", "operator": "a"})
    assert got == 409 and "nope" in doc["error"]
    _, cmds = http(gw, cfg, "GET", "/commands")
    assert cmds == {"open": [], "recent": []}
    assert gw.commands.stats()["sent"] == 0


def test_a_switch_under_an_occupied_section_is_refused(tmp_path):
    """A device of our own (tests/gateway_harness.py) reports section 103, under switch 301, occupied."""
    from gateway_harness import Device
    from railcodecs import Switches as Sw
    from railcodecs import TrackSections as Ts
    raw = line_config(state_dir=str(tmp_path / "state"), hello_timeout_ms=60_000).raw
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        dev = Device(gw.ports["A"], dev_id=257, key=cfg.device(257).mac_key, hb_ms=10_000)
        dev.hello()
        dev.send(Sw(((301, Sw.NORMAL),)), seq=1)
        dev.send(Ts(((103, Ts.OCCUPIED),)), seq=2)
        wait_until(lambda: gw.commands.view.section_state(103) == Ts.OCCUPIED, what="section 103 occupied")
        with pytest.raises(Interlocked) as err:
            gw.commands.select("switch", 301, "reverse", "alice").result(5)
        assert "103" in str(err.value) and "occupied" in str(err.value)
        dev.send(Ts(((103, Ts.LOCKED),)), seq=3)
        wait_until(lambda: gw.commands.view.section_state(103) == Ts.LOCKED, what="section 103 locked")
        with pytest.raises(Interlocked):
            gw.commands.select("switch", 301, "reverse", "alice").result(5)
        assert gw.commands.commands().result(5)["open"] == [] and gw.commands.stats()["sent"] == 0
        dev.send(Ts(((103, Ts.FREE),)), seq=4)
        wait_until(lambda: gw.commands.view.section_state(103) == Ts.FREE, what="section 103 free")
        sel = gw.commands.select("switch", 301, "reverse", "alice").result(5)
        assert sel["state"] == "SELECTED"
        dev.close()


def test_route_plan_avoids_what_is_not_free(line):
    gw, cfg = line
    before = gw.commands.view.unavailable_sections()
    code, doc = http(gw, cfg, "GET", "/routes/plan?from=201&to=204")
    assert code in (200, 409), doc
    if code == 200:
        plan = doc["plan"]
        # the simulated consist moves on: a section unavailable both before and after the plan was so meanwhile
        unavailable = before & gw.commands.view.unavailable_sections()
        assert plan["sections"] and not set(plan["sections"]) & unavailable
    code, doc = http(gw, cfg, "GET", "/routes/plan?from=201&to=999")
    assert code == 404 and "999" in doc["error"]
    code, doc = http(gw, cfg, "GET", "/routes/plan?from=x")
    assert code == 400


def test_the_cli_selects_operates_and_lists_against_the_real_gateway(line, capsys):
    """`gateway command select / operate / list` and `gateway route plan --url` through the admin API."""
    from gateway.cli import command_cmd, route_cmd
    gw, cfg = line
    url, token = f"http://127.0.0.1:{gw.ports['admin']}", token_path(cfg)
    sw = free_switch(gw)
    want = "reverse" if switch_value(gw, sw) == Switches.NORMAL else "normal"
    assert command_cmd.main(["select", "switch", str(sw), want, "--operator", "carol", "--workstation", "WS-2",
                             "--url", url, "--token-file", token]) == 0
    out = capsys.readouterr().out
    sel = next(c for c in gw.commands.commands().result(5)["open"] if c["object_id"] == sw)
    assert sel["selection_id"] in out and "Z1" in out and str(sel["fencing_token"]) in out
    assert command_cmd.main(["operate", sel["selection_id"], "--operator", "carol", "--url", url,
                             "--token-file", token, "--wait", "15"]) == 0
    out = capsys.readouterr().out
    assert "DONE" in out and switch_value(gw, sw) == (Switches.REVERSE if want == "reverse" else Switches.NORMAL)
    assert command_cmd.main(["list", "--url", url]) == 0
    assert sel["selection_id"][:8] in capsys.readouterr().out
    assert command_cmd.main(["operate", sel["selection_id"], "--operator", "carol", "--url", url,
                             "--token-file", token]) == 1           # ended: nothing to operate
    assert "gateway command operate" in capsys.readouterr().err
    assert route_cmd.main(["plan", "201", "204", "--url", url]) in (0, 1)
