"""The simulated interlockings obey COMMANDs (issue 16, item 4).

Most tests drive the sans-IO parts directly: a :class:`LineModel` stepped in
logical time and one :class:`CommandDesk` per device, as ``DeviceSim`` uses
them (receive a command, step the model, poll for results). The line is the
demo line and its ``track:`` (zones Z1 = 101-110 with switches 301-303, Z2 =
111-120 with 304, 305; switch 301 in 103, 302 in 108, 305 in 113, 303 has no
place), routes planned by the gateway's planner, and one lone train held
standing where the model places it: the model's loop runs through the
devices' sections in the order listed, and CI-1's list is reordered here so
that the train's head stands on 103, 108 is locked ahead of it and its tail
stands on 120. One test runs the whole path over TCP against the capturing
stand-in gateway of test_simulators.py.
"""
from __future__ import annotations

import copy
import math
import random

import pytest

from gateway.app.config import parse
from railcodecs import Command, CommandResult, Signals, Switches, TrackSections
from simulators import line as line_module
from simulators.commands import SEEN_IDS, CommandDesk
from simulators.interlocking import HOLD_S, Detail
from simulators.line import LineModel
from simulators.runner import Options, Simulation
from simulators.track import RouteLayout, Track, no_planner

from gateway_harness import DEMO
from test_simulators import Capture, SimThread

SWITCH_NORMAL, SWITCH_REVERSE, SET_ROUTE, CANCEL_ROUTE, BLOCK, UNBLOCK = 1, 2, 3, 4, 5, 6
DONE, REJECTED, FAILED, STALE = 0, 1, 2, 3
FAST = (0.2, 0.4)
DT = 0.1
ROUTES = {401: {"from": 201, "to": 204},      # CI-1: 102-106 over 301 normal; 103 is under the train
          402: {"from": 207, "to": 210},      # CI-2: 112-116 over 305 normal
          403: {"from": 208, "to": 210}}      # CI-2: 113-116 over 305 normal (shares 113-116 with 402)
#: the routes as worked out by hand on the demo track (the planner must agree)
BY_HAND = {401: RouteLayout((102, 103, 104, 105, 106), ((301, Switches.NORMAL),), 201, 204),
           402: RouteLayout((112, 113, 114, 115, 116), ((305, Switches.NORMAL),), 207, 210),
           403: RouteLayout((113, 114, 115, 116), ((305, Switches.NORMAL),), 208, 210)}


def answer(command_id: int, result: int, detail: int = 0) -> CommandResult:
    return CommandResult(command_id, result, int(detail))


def line_config(track: bool = True, heartbeat_ms: int = 500):
    d = copy.deepcopy(DEMO)
    d["gateway"]["heartbeat_ms"] = heartbeat_ms
    d["trains"] = {"heartbeat_ms": 1000, "ids": [1025], "consists": {}}
    d["devices"][0]["sections"] = [103, 108, 101, 102, 104, 105, 106, 107, 109, 110]   # the loop starts at 103
    if track:
        d["track"]["routes"] = ROUTES
    else:
        del d["track"]
    return parse(d, "commands-test")


@pytest.fixture(autouse=True)
def no_spontaneous_moves(monkeypatch):
    """Only commands move switches (a test that wants the model's own moves sets the rate again)."""
    monkeypatch.setattr(line_module, "SWITCH_EVERY_S", math.inf)


class Line:
    """The model and a desk per device, stepped like the simulator: step, then each desk's results."""

    def __init__(self, track: bool = True, move_s=FAST, held: bool = True, planner=None) -> None:
        cfg = line_config(track)
        self.model = LineModel(cfg, random.Random(7), field_events=False, move_s=move_s,
                               track=Track.from_config(cfg, planner))
        if held:
            self.model.hold(1025, 1e9)
        self.desks = {d.name: CommandDesk(d, self.model.ixl) for d in cfg.devices}
        self.results: list[CommandResult] = []
        self.next_id = 1

    def send(self, op: int, obj: int, token: int = 1, device: str = "CI-1", command_id: int | None = None):
        if command_id is None:
            command_id, self.next_id = self.next_id, self.next_id + 1
        return self.desks[device].receive(Command(command_id, op, obj, 0, token))

    def step(self, seconds: float = DT) -> list[CommandResult]:
        due = []
        for _ in range(max(1, round(seconds / DT))):
            self.model.step(DT)
            for desk in self.desks.values():
                due += desk.poll()
        self.results += due
        return due

    def until_result(self, limit_s: float = 10.0) -> tuple[list[CommandResult], float]:
        """Steps until a result is due; (results, logical seconds it took)."""
        t0 = self.model.t
        while self.model.t - t0 < limit_s:
            due = self.step()
            if due:
                return due, self.model.t - t0
        raise AssertionError(f"no COMMAND_RESULT within {limit_s} s")

    def state(self, *sections: int) -> list[int]:
        return [self.model.state[s] for s in sections]

    def other(self, switch: int) -> int:
        return Switches.REVERSE if self.model.switch_pos[switch] == Switches.NORMAL else Switches.NORMAL

    def put(self, switch: int, position: int, device: str) -> None:
        """Move ``switch`` to ``position`` (by command) unless it is there."""
        if self.model.switch_pos[switch] != position:
            assert self.send(op_for(position), switch, device=device) is None
            assert self.until_result()[0][0].result == DONE


def op_for(position: int) -> int:
    return SWITCH_NORMAL if position == Switches.NORMAL else SWITCH_REVERSE


def test_the_line_is_as_the_tests_expect_it():
    line = Line()
    assert line.state(103, 108, 120) == [TrackSections.OCCUPIED, TrackSections.LOCKED, TrackSections.OCCUPIED]
    assert set(line.state(*range(101, 121))) - {TrackSections.FREE} == {TrackSections.OCCUPIED,
                                                                       TrackSections.LOCKED}
    assert {r: line.model.ixl.track.layout(r) for r in ROUTES} == BY_HAND   # the gateway's planner agrees


# -- fencing per zone ---------------------------------------------------------------------------

def test_a_lower_token_is_stale_in_its_own_zone_only():
    line = Line()
    # ZC-1 has sections in both zones
    assert line.send(BLOCK, 104, token=100, device="ZC-1") == answer(1, DONE)     # Z1 now at 100
    assert line.send(BLOCK, 115, token=50, device="ZC-1") == answer(2, DONE)      # Z2: 50 is not stale
    assert line.send(UNBLOCK, 104, token=99, device="ZC-1") == answer(3, STALE)   # Z1: 99 < 100
    assert 104 in line.model.ixl.blocked                                            # ... and nothing done
    assert line.send(UNBLOCK, 115, token=49, device="ZC-1") == answer(4, STALE)   # Z2: 49 < 50
    assert line.send(UNBLOCK, 104, token=100, device="ZC-1") == answer(5, DONE)   # equal: accepted
    assert 104 not in line.model.ixl.blocked
    # CI-2: a switch's zone and a route's (its first switch's: 305, Z2)
    assert line.send(BLOCK, 117, token=70, device="CI-2") == answer(6, DONE)
    before = dict(line.model.switch_pos)
    assert line.send(op_for(line.other(305)), 305, token=69, device="CI-2") == answer(7, STALE)
    assert line.send(SET_ROUTE, 402, token=60, device="CI-2") == answer(8, STALE)
    line.step()
    assert line.model.switch_pos == before and not line.model.switch_moves and not line.model.ixl.routes
    # each device keeps its own tokens: CI-1 has seen nothing of Z1
    assert line.send(op_for(line.other(303)), 303, token=7) is None                 # moving: accepted


def test_without_a_track_section_each_device_is_one_zone_and_routes_are_unknown():
    line = Line(track=False)
    assert line.send(BLOCK, 104, token=10) == answer(1, DONE)
    assert line.send(op_for(line.other(303)), 303, token=9) == answer(2, STALE)    # same zone: CI-1
    assert line.send(BLOCK, 115, token=1, device="CI-2") == answer(3, DONE)        # zone CI-2
    assert line.send(SET_ROUTE, 401, token=10) == answer(4, REJECTED, Detail.NO_TRACK)
    assert line.send(CANCEL_ROUTE, 401, token=10) == answer(5, REJECTED, Detail.NO_TRACK)


# -- once per command_id ------------------------------------------------------------------------

def test_the_second_copy_of_a_command_gets_nothing_and_acts_not_again():
    line = Line()
    target = line.other(303)
    assert line.send(op_for(target), 303, command_id=42) is None            # moving: the result comes later
    assert line.send(op_for(target), 303, command_id=42) is None            # the net B copy: nothing
    results, _ = line.until_result()
    line.step(1.0)
    assert line.results == results == [answer(42, DONE)]                    # one answer, and it is done
    assert line.send(UNBLOCK, 105, command_id=42) is None                   # an id is never reused


def test_command_ids_are_remembered_for_the_last_4096_only():
    line = Line()
    for i in range(1, SEEN_IDS + 11):
        assert line.send(BLOCK if i % 2 else UNBLOCK, 105, command_id=i).result == DONE
    assert len(line.desks["CI-1"].seen) == SEEN_IDS
    assert line.send(BLOCK, 105, command_id=SEEN_IDS + 10) is None          # still remembered
    assert line.send(BLOCK, 105, command_id=1) == answer(1, DONE)           # forgotten: answered again


# -- switches -----------------------------------------------------------------------------------

def test_a_switch_under_an_occupied_locked_or_blocked_section_or_moving_is_refused():
    line = Line()
    before = dict(line.model.switch_pos)
    assert line.send(op_for(line.other(301)), 301) == answer(1, REJECTED, Detail.OCCUPIED)        # in 103
    assert line.send(op_for(line.other(302)), 302) == answer(2, REJECTED, Detail.LOCKED)          # in 108
    assert line.send(op_for(line.other(305)), 305) == answer(3, REJECTED, Detail.UNKNOWN_OBJECT)  # CI-2's
    assert line.send(BLOCK, 113, device="CI-2") == answer(4, DONE)
    assert line.send(op_for(line.other(305)), 305, device="CI-2") == answer(5, REJECTED, Detail.BLOCKED)
    line.step()
    assert line.model.switch_pos == before and not line.model.switch_moves
    target = line.other(303)
    assert line.send(op_for(target), 303) is None
    assert line.send(op_for(Switches.NORMAL + Switches.REVERSE - target), 303) == \
        answer(7, REJECTED, Detail.MOVING)
    # already where it is asked to be: done at once, even under the train
    assert line.send(op_for(line.model.switch_pos[301]), 301) == answer(8, DONE)


def test_a_switch_reports_moving_for_the_configured_time_then_the_result_is_done():
    line = Line(move_s=FAST)
    target = line.other(305)
    assert line.send(op_for(target), 305, device="CI-2") is None
    assert line.model.items(Switches, [305]) == ((305, Switches.MOVING),)
    changes = line.model.step(DT)                      # the devices owning 305 are told it changed
    assert 305 in changes.switches
    t0 = line.model.t - DT
    while not line.desks["CI-2"].poll():
        assert line.model.switch_pos[305] == Switches.MOVING
        assert line.model.t - t0 < FAST[1] + DT
        line.model.step(DT)
    assert FAST[0] <= line.model.t - t0 + 1e-9 and line.model.switch_pos[305] == target


def test_moves_take_two_to_six_seconds_by_default():
    line = Line(move_s=(2.0, 6.0))
    took = []
    for _ in range(6):
        assert line.send(op_for(line.other(303)), 303) is None
        results, seconds = line.until_result()
        assert results[0].result == DONE
        took.append(seconds)
    assert all(2.0 <= s <= 6.0 + DT for s in took) and len({round(s, 1) for s in took}) > 1, took


# -- routes -------------------------------------------------------------------------------------

def test_route_set_locks_moves_then_clears_the_signal_and_cancel_releases():
    line = Line()
    line.put(305, Switches.REVERSE, "CI-2")             # route 402 needs 305 normal: make it move
    assert line.model.aspect[207] == Signals.GREEN      # automatic, nothing near
    set_id = line.next_id
    assert line.send(SET_ROUTE, 402, device="CI-2") is None
    assert line.model.switch_pos[305] == Switches.MOVING
    line.step()
    assert line.state(112, 113, 114, 115, 116) == [TrackSections.LOCKED] * 5
    assert line.model.aspect[207] == Signals.RED        # switches not yet in position
    assert line.send(SET_ROUTE, 403, device="CI-2") == answer(line.next_id - 1, REJECTED, Detail.LOCKED)
    assert line.send(SWITCH_REVERSE, 305, device="CI-2") == answer(line.next_id - 1, REJECTED, Detail.LOCKED)
    while True:
        due = line.step()
        if due:
            break
        assert line.model.aspect[207] == Signals.RED
    assert due == [answer(set_id, DONE)]
    assert line.model.switch_pos[305] == Switches.NORMAL and line.model.aspect[207] == Signals.GREEN
    line.step(HOLD_S + 1)                               # stays set, whatever the time
    assert line.state(112, 113, 114, 115, 116) == [TrackSections.LOCKED] * 5
    assert line.send(SWITCH_REVERSE, 305, device="CI-2") == answer(line.next_id - 1, REJECTED, Detail.LOCKED)

    assert line.send(CANCEL_ROUTE, 402, device="CI-2") is None    # done once the status shows it
    assert line.step() == [answer(line.next_id - 1, DONE)]
    assert line.state(112, 113, 114, 115, 116) == [TrackSections.FREE] * 5
    assert line.model.aspect[207] == Signals.RED
    line.step(5)
    assert line.model.aspect[207] == Signals.RED        # at stop until a route from it is set
    assert line.send(SET_ROUTE, 403, device="CI-2") is None       # 113-116 are free again
    assert line.step() == [answer(line.next_id - 1, DONE)]       # 305 is in position already
    assert line.state(112, 113, 114, 115, 116) == [TrackSections.FREE] + [TrackSections.LOCKED] * 4
    assert line.model.aspect[208] == Signals.GREEN and line.model.aspect[207] == Signals.RED


def test_a_route_cancelled_while_setting_fails():
    line = Line()
    line.put(305, Switches.REVERSE, "CI-2")
    first = line.next_id
    assert line.send(SET_ROUTE, 402, device="CI-2") is None
    assert line.send(CANCEL_ROUTE, 402, device="CI-2") is None
    due, _ = line.until_result()
    assert sorted((r.command_id, r.result, r.detail) for r in due) == [(first, FAILED, Detail.CANCELLED),
                                                                        (first + 1, DONE, 0)]
    line.step(1.0)                                      # the points finish their move, nothing is locked
    assert line.model.switch_pos[305] == Switches.NORMAL and not line.model.ixl.locked_by


@pytest.mark.parametrize("route, device, before, detail", [
    (401, "CI-1", None, Detail.OCCUPIED),                 # 103 is under the train
    (401, "CI-2", None, Detail.UNKNOWN_OBJECT),           # starts at CI-1's signal 201
    (499, "CI-2", None, Detail.UNKNOWN_OBJECT),           # no such route
    (402, "CI-2", (BLOCK, 114), Detail.BLOCKED),
])
def test_a_route_that_cannot_be_set_is_rejected_and_nothing_moves(route, device, before, detail):
    line = Line()
    if before:
        line.send(*before, device=device)
    positions = dict(line.model.switch_pos)
    result = line.send(SET_ROUTE, route, device=device)
    assert (result.result, result.detail) == (REJECTED, detail)
    line.step()
    assert line.model.switch_pos == positions and not line.model.ixl.locked_by
    assert TrackSections.LOCKED not in line.state(104, 105, 106, 112, 113, 114)


def test_a_route_without_a_path_is_rejected():
    line = Line(planner=no_planner)
    assert line.send(SET_ROUTE, 402, device="CI-2") == answer(1, REJECTED, Detail.NO_PATH)


def test_the_models_own_moves_and_locks_leave_commanded_state_alone(monkeypatch):
    monkeypatch.setattr(line_module, "SWITCH_EVERY_S", 1.0)    # a spontaneous move every 0.2 s or so
    line = Line(held=False)                                     # the train runs round the loop
    assert line.send(SET_ROUTE, 402, device="CI-2") is None
    assert line.send(op_for(line.other(304)), 304, device="CI-2") is None
    while len(line.results) < 2:
        line.until_result()
    assert [r.result for r in line.results] == [DONE, DONE]
    commanded_304 = line.model.switch_pos[304]
    moved, passed, after_pass = set(), False, []
    for _ in range(round(180 / DT)):            # the train reaches 112 at about 110 s, leaves 116 by 165 s
        was = dict(line.model.switch_pos)
        line.step()
        moved |= {sw for sw in was if line.model.switch_pos[sw] != was[sw]}
        assert line.model.switch_pos[305] == Switches.NORMAL
        if line.model.t < HOLD_S - 1:
            assert line.model.switch_pos[304] == commanded_304
        states = line.state(112, 113, 114, 115, 116)
        assert set(states) <= {TrackSections.LOCKED, TrackSections.OCCUPIED}, states
        passed |= TrackSections.OCCUPIED in states
        if passed and TrackSections.OCCUPIED not in states:
            after_pass.append(states)
    assert passed and after_pass                      # the train went through the route, which stayed locked
    assert {301, 302, 303} <= moved and 305 not in moved   # the others moved on their own
    assert 304 in moved                               # 304 too, once its hold was over


# -- over TCP -----------------------------------------------------------------------------------

def test_over_tcp_a_command_on_both_nets_moves_the_switch_once_and_reports_moving_then_done():
    with Capture(line_config(heartbeat_ms=250)) as cap:
        sim = Simulation(cap.config(), Options(seed=4, duration_s=2.0, heartbeat_ms=250, trains=(),
                                               field_events=False, switch_move_s=FAST))
        target = Switches.REVERSE if sim.model.switch_pos[303] == Switches.NORMAL else Switches.NORMAL
        cap.command = Command(77, op_for(target), 303, 0, 5)    # to every device link, net A and net B
        SimThread(sim).start().join()
        cap.wait_settled()
    ci1 = [(net, f) for net, f in cap.frames if f.src == 257]
    results = {f.seq: f for _, f in ci1 if f.name == "COMMAND_RESULT"}
    assert len(results) == 1                                          # one answer, copied on both nets
    (seq, result), = results.items()
    assert result.message == answer(77, DONE)
    assert {net for net, f in ci1 if f.name == "COMMAND_RESULT"} == {"A", "B"}
    shown = [(f.seq, f.time_ms, dict(f.message.items)[303]) for _, f in ci1
             if f.name == "SWITCHES" and 303 in dict(f.message.items)]
    moving = [t for s, t, pos in shown if s < seq and pos == Switches.MOVING]
    assert moving and any(pos == target for s, _, pos in shown if s < seq)   # moving, there, then done
    assert result.time_ms - moving[0] >= 100
    assert all(pos != Switches.MOVING for s, _, pos in shown if s > seq)
    others = {(f.src, f.seq): f.message for _, f in cap.frames if f.name == "COMMAND_RESULT" and f.src != 257}
    assert sorted((src, r.result, r.detail) for (src, _), r in others.items()) == [
        (src, REJECTED, Detail.UNKNOWN_OBJECT) for src in (258, 513, 769)]   # not their switch
