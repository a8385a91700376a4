"""Select before operate with feedback (gateway/commands): the table is the spec, and the engine makes every move.

Sans-IO: a fake LineView (the engine's own port, not a service) and real Lease values; no clock, no socket.
"""
from __future__ import annotations

import itertools

import pytest

from gateway.adapters.zone_locks import InProcessZoneLocks, Lease, LockHeld, LockNotOwned
from gateway.commands import model as m
from gateway.commands.engine import (AcquireLock, AlreadySelected, Audit, BadValue, CommandEngine, DeviceUnreachable,
                                     ExtendLock, Interlocked, NotSelected, ReleaseLock, Reply, SelectionExpired, Send,
                                     UnknownObject, WrongOperator, WrongState)
from gateway.commands.settings import ControlSettings, LockSettings, parse_control, zone_locks
from railcodecs import Command, CommandResult, Switches, TrackSections
from test_history_fixtures import redis_prefix  # noqa: F401

TZ = "Asia/Shanghai"
NOW = 1_764_403_200_000            # 2025-11-29T08:00:00Z = 16:00 in Shanghai
CI1, CI2 = 10, 11

# the spec, written out independently of gateway/commands/model.py
EXPECTED = {
    ("NEW", "select"): "SELECTING",
    ("SELECTING", "lock_granted"): "SELECTED",
    ("SELECTING", "lock_refused"): "REFUSED",
    ("SELECTING", "cancel"): "CANCELLED",
    ("SELECTING", "select_timeout"): "EXPIRED",
    ("SELECTING", "unreachable"): "FAILED",
    ("SELECTING", "abandon"): "FAILED",
    ("SELECTED", "operate"): "OPERATING",
    ("SELECTED", "cancel"): "CANCELLED",
    ("SELECTED", "select_timeout"): "EXPIRED",
    ("SELECTED", "unreachable"): "FAILED",
    ("SELECTED", "lock_lost"): "FAILED",
    ("SELECTED", "lock_expired"): "FAILED",
    ("SELECTED", "abandon"): "FAILED",
    ("OPERATING", "result_done"): "AWAIT_FEEDBACK",
    ("OPERATING", "result_done_no_feedback"): "DONE",
    ("OPERATING", "result_rejected"): "FAILED",
    ("OPERATING", "result_failed"): "FAILED",
    ("OPERATING", "result_stale"): "FAILED",
    ("OPERATING", "result_timeout"): "FAILED",
    ("OPERATING", "feedback"): "OPERATING",
    ("OPERATING", "unreachable"): "FAILED",
    ("OPERATING", "lock_lost"): "OPERATING",
    ("OPERATING", "abandon"): "FAILED",
    ("AWAIT_FEEDBACK", "feedback"): "DONE",
    ("AWAIT_FEEDBACK", "feedback_timeout"): "FAILED",
    ("AWAIT_FEEDBACK", "unreachable"): "FAILED",
    ("AWAIT_FEEDBACK", "lock_lost"): "AWAIT_FEEDBACK",
    ("AWAIT_FEEDBACK", "abandon"): "FAILED",
}


class FakeLine:
    """The engine's LineView: CI-1 (10) has switches 5, 6, 9 (zone Z1, section 100 / none / none) and 8 (zone
    Z2), route 3 and section 20; CI-2 (11) has switch 7 (zone = its device name)."""

    def __init__(self) -> None:
        self.objects = {("switch", 5): (CI1, "CI-1"), ("switch", 6): (CI1, "CI-1"), ("switch", 8): (CI1, "CI-1"),
                        ("switch", 9): (CI1, "CI-1"), ("route", 3): (CI1, "CI-1"), ("section", 20): (CI1, "CI-1"),
                        ("switch", 7): (CI2, "CI-2")}
        self.zones = {("switch", 5): "Z1", ("switch", 6): "Z1", ("switch", 9): "Z1", ("switch", 8): "Z2",
                      ("route", 3): "R3", ("section", 20): "S20"}
        self.up = {CI1: True, CI2: True}
        self.values: dict[tuple[str, int], int] = {("switch", 5): Switches.NORMAL}
        self.sections = {100: TrackSections.FREE}
        self.switch_sections = {5: 100}

    def device_of(self, kind, object_id):
        return self.objects.get((kind, object_id))

    def reachable(self, device_id):
        return self.up.get(device_id, False)

    def value(self, kind, object_id):
        return self.values.get((kind, object_id))

    def section_state(self, section_id):
        return self.sections.get(section_id)

    def section_of_switch(self, switch_id):
        return self.switch_sections.get(switch_id)

    def zone_of(self, kind, object_id):
        return self.zones.get((kind, object_id)) or self.objects[(kind, object_id)][1]


def only(actions, cls):
    return [a for a in actions if isinstance(a, cls)]


def events(actions):
    return [a.event for a in actions if isinstance(a, Audit)]


def moves(actions):
    return [(e.previous_state, e.transition, e.state) for e in events(actions)]


class Selecting:
    """What ``Rig.select`` started: the selection's id, and its zone's AcquireLock (None: it joined a lease)."""

    def __init__(self, selection_id: str, zone: str, acquire: AcquireLock | None, actions: list) -> None:
        self.selection_id, self.zone, self.acquire, self.actions = selection_id, zone, acquire, actions

    @property
    def holder(self) -> str:
        return self.acquire.holder

    @property
    def ttl_ms(self) -> int:
        return self.acquire.ttl_ms


class Rig:
    """An engine, its fake line and the time; helpers that drive one command along."""

    def __init__(self, **settings) -> None:
        self.line = FakeLine()
        self.settings = ControlSettings(workstation="GW-A", **settings)
        self.engine = CommandEngine(7, "demo-line-1", TZ, self.settings, self.line, start_ms=NOW)
        self.now = NOW
        self.fence = 5000
        self.leases: dict[str, Lease] = {}          # zone -> the lease last granted for it

    def select(self, kind="switch", obj=5, value="reverse", operator="alice", ws="WS1", req="r-sel") -> Selecting:
        acts = self.engine.select(req, kind, obj, value, operator, ws, self.now)
        ev = events(acts)[0]
        return Selecting(ev.selection_id, ev.zone, (only(acts, AcquireLock) or [None])[0], acts)

    def grant(self, selecting: Selecting | str, ttl_ms: int = 10_000) -> list:
        """Grant the zone (of a Selecting, or named) a new lease."""
        zone = selecting if isinstance(selecting, str) else selecting.zone
        holder = "WS1" if isinstance(selecting, str) or selecting.acquire is None else selecting.holder
        self.fence += 1
        lease = Lease(zone, holder, f"tok{self.fence}", self.fence, ttl_ms)
        self.leases[zone] = lease
        return self.engine.lock_granted(zone, lease, self.now)

    def release(self, zone: str = "Z1") -> ReleaseLock:
        return ReleaseLock(zone, self.leases[zone])

    def selected(self, **kw) -> str:
        selecting = self.select(**kw)
        if selecting.acquire is not None:          # else it joined a lease its zone holds already
            self.grant(selecting)
        return selecting.selection_id

    def operated(self, **kw) -> tuple[str, Command]:
        sel = self.selected(**kw)
        send, = only(self.engine.operate("r-op", sel, kw.get("operator", "alice"), self.now), Send)
        return sel, send.command

    def result(self, cmd: Command, code: int, detail: int = 0, device: int = CI1) -> list:
        return self.engine.on_result(device, CommandResult(cmd.command_id, code, detail), self.now)

    def state(self, sel: str) -> str:
        return self.engine.state_of(sel)

    def unchanged(self):
        """A fingerprint of everything a refused request must leave as it was."""
        return (self.engine.selections(), self.engine.stats()["event_seq"], self.engine.next_deadline_ms())


# -- the table ---------------------------------------------------------------------------------

def test_table_is_the_spec():
    assert m.TABLE == EXPECTED
    assert set(m.STATES) == {s for pair in EXPECTED for s in pair[:1]} | set(EXPECTED.values())
    assert m.TERMINAL == {"DONE", "FAILED", "CANCELLED", "EXPIRED", "REFUSED"}
    assert not any(s in m.TERMINAL for s, _ in EXPECTED)          # nothing leaves a terminal state


@pytest.mark.parametrize("state,event", list(itertools.product(m.STATES, m.EVENTS)))
def test_every_pair(state, event):
    if (state, event) in EXPECTED:
        assert m.step(state, event, "command 1") == EXPECTED[(state, event)]
    else:
        with pytest.raises(m.IllegalCommandTransition) as err:
            m.step(state, event, "command 1 (switch 5)")
        assert f"command 1 (switch 5): {event} is not allowed in state {state}" in str(err.value)
        assert (err.value.state, err.value.event) == (state, event)


def test_unknown_names_are_refused():
    with pytest.raises(ValueError, match="unknown command state 'BOGUS'"):
        m.step("BOGUS", "select")
    with pytest.raises(ValueError, match="unknown command event 'explode'"):
        m.step("NEW", "explode")


def bring_to(rig: Rig, state: str, kind: str):
    """(selection id, sent command or None) of one command brought to ``state``."""
    obj, value = {"switch": (5, "reverse"), "section": (20, "block"), "route": (3, "set")}[kind]
    if state == "NEW":
        return None, None
    if state == "SELECTING":
        return rig.select(kind=kind, obj=obj, value=value).selection_id, None
    if state == "SELECTED":
        return rig.selected(kind=kind, obj=obj, value=value), None
    sel, cmd = rig.operated(kind=kind, obj=obj, value=value)
    if state == "AWAIT_FEEDBACK":
        rig.result(cmd, m.RESULT_DONE)
    return sel, cmd


def apply(rig: Rig, event: str, sel: str, cmd: Command | None, kind: str) -> list:
    e = rig.engine
    timeouts = {"select_timeout": rig.settings.select_timeout_s,
                "result_timeout": rig.settings.feedback_timeout_s[kind],
                "feedback_timeout": rig.settings.feedback_timeout_s[kind]}
    if event in timeouts:
        return e.tick(rig.now + int(timeouts[event] * 1000))
    codes = {"result_done": 0, "result_done_no_feedback": 0, "result_rejected": 1, "result_failed": 2,
             "result_stale": 3}
    if event in codes:
        return rig.result(cmd, codes[event])
    if event == "select":
        return e.select("r", kind, 5, "reverse", "alice", "WS1", rig.now)
    if event == "lock_granted":
        return rig.grant("Z1")
    if event == "lock_refused":
        return e.lock_refused("Z1", "zone Z1: held by WS2 for 2000 ms more", rig.now)
    if event == "operate":
        return e.operate("r-op", sel, "alice", rig.now)
    if event == "cancel":
        return e.cancel("r-c", sel, "alice", rig.now)
    if event == "feedback":
        return e.on_status(kind, 5, Switches.REVERSE, rig.now)
    if event == "unreachable":
        rig.line.up[CI1] = False
        return e.on_unreachable(CI1, rig.now)
    if event == "lock_lost":
        return e.lock_lost("Z1", "zone Z1: extend refused", rig.now)
    if event == "lock_expired":                   # an operate after the lease's 10 s validity
        return e.operate("r-op", sel, "alice", rig.now + 10_000)
    if event == "abandon":              # a restarted gateway, given the journal's last event of the command
        restarted = CommandEngine(7, "demo-line-1", TZ, rig.settings, rig.line, last_seq=rig.last_event.seq)
        return restarted.abandon([rig.last_event], rig.now)
    raise AssertionError(event)


@pytest.mark.parametrize("state,event", sorted(EXPECTED))
def test_the_engine_makes_every_move_of_the_table(state, event):
    """Each entry of the table, made by driving the engine (not by calling step), and journaled as that move."""
    kind = "section" if event == "result_done_no_feedback" else "switch"
    rig = Rig()
    journaled = []
    original = rig.engine._move

    def spy(*a, **kw):
        audit = original(*a, **kw)
        journaled.append(audit.event)
        return audit
    rig.engine._move = spy
    sel, cmd = bring_to(rig, state, kind)
    rig.last_event = journaled[-1] if journaled else None
    acts = apply(rig, event, sel, cmd, kind)
    last = events(acts)[-1]
    assert (last.previous_state, last.transition, last.state) == (state, event, EXPECTED[(state, event)])
    if last.state in m.TERMINAL:
        assert last.outcome


# -- the happy path ----------------------------------------------------------------------------

def test_select_lock_operate_result_feedback_done_with_the_audit_trail_in_order():
    rig = Rig()
    e = rig.engine
    acts = e.select("r-sel", "switch", 5, "reverse", "alice", "WS1", rig.now)
    acquire, = only(acts, AcquireLock)
    assert acquire == AcquireLock("Z1", "WS1", 10_000)
    assert moves(acts) == [("NEW", "select", "SELECTING")] and not only(acts, Reply)   # answered with the lock
    sel = events(acts)[0].selection_id

    rig.now += 40
    lease = Lease("Z1", "WS1", "tok", 987_654_321_000, 10_000)
    acts = e.lock_granted("Z1", lease, rig.now)
    reply, = only(acts, Reply)
    assert reply.request_id == "r-sel" and reply.ok and not reply.termination
    assert reply.payload["selection_id"] == sel and reply.payload["fencing_token"] == 987_654_321_000
    assert reply.payload["expires_ms"] == NOW + 30_000 and reply.payload["state"] == "SELECTED"

    rig.now += 2000
    acts = e.operate("r-op", sel, "alice", rig.now)
    assert [type(a) for a in acts] == [Audit, Send, Reply]          # journaled before it is sent
    send = acts[1]
    command_id = events(acts)[0].command_id
    assert send.device_id == CI1
    assert send.command == Command(command_id, 2, 5, 0, 987_654_321_000)
    assert acts[2].request_id == "r-op" and acts[2].ok and not acts[2].termination

    rig.now += 300
    acts = e.on_result(CI1, CommandResult(command_id, 0, 5), rig.now)
    assert moves(acts) == [("OPERATING", "result_done", "AWAIT_FEEDBACK")] and not only(acts, ReleaseLock)
    assert rig.state(sel) == "AWAIT_FEEDBACK"

    rig.now += 1500
    assert e.on_status("switch", 5, Switches.MOVING, rig.now) == []
    acts = e.on_status("switch", 5, Switches.REVERSE, rig.now)
    assert moves(acts) == [("AWAIT_FEEDBACK", "feedback", "DONE")]
    assert only(acts, ReleaseLock) == [ReleaseLock("Z1", lease)]
    done, = only(acts, Reply)
    assert done.request_id == "r-op" and done.ok and done.termination and done.payload["state"] == "DONE"
    assert rig.state(sel) == "DONE" and e.selections() == [] and e.next_deadline_ms() is None


def test_every_event_of_a_command_carries_the_audit_fields():
    rig = Rig()
    log = []
    acquire = rig.select()
    log += rig.grant(acquire)
    log += rig.engine.operate("r-op", acquire.selection_id, "alice", rig.now)
    cmd = only(log, Send)[0].command
    log += rig.result(cmd, 0, detail=4)
    log += rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now)
    evs = events(log)
    assert [ev.transition for ev in evs] == ["lock_granted", "operate", "result_done", "feedback"]
    assert [ev.seq for ev in evs] == [2, 3, 4, 5]                     # seq 1 was the select
    for ev in evs:
        assert (ev.gateway_id, ev.line, ev.command_id, ev.selection_id) == (7, "demo-line-1", cmd.command_id,
                                                                            acquire.selection_id)
        assert (ev.kind, ev.object_id, ev.device_id, ev.device, ev.value, ev.op) == ("switch", 5, CI1, "CI-1",
                                                                                      "reverse", 2)
        assert (ev.operator, ev.workstation, ev.zone, ev.fencing_token) == ("alice", "WS1", "Z1", rig.fence)
        assert ev.time == "2025-11-29T16:00:00.000+08:00" and ev.time_ms == NOW
        assert m.CommandEvent.decode(ev.encode()) == ev
    assert (evs[2].result, evs[2].detail) == (0, 4) and evs[0].result is None
    assert evs[-1].outcome == "done: CI-1 executed it and the status shows switch 5 reverse"
    assert len({ev.event_id for ev in evs}) == 4


def test_a_status_before_the_result_is_remembered():
    rig = Rig()
    sel, cmd = rig.operated()
    acts = rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now)
    assert moves(acts) == [("OPERATING", "feedback", "OPERATING")] and not only(acts, ReleaseLock)
    assert rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now) == []        # once
    acts = rig.result(cmd, 0)        # the fake line still says NORMAL: only the remembered status confirms
    assert moves(acts) == [("OPERATING", "result_done", "AWAIT_FEEDBACK"), ("AWAIT_FEEDBACK", "feedback", "DONE")]
    assert only(acts, ReleaseLock) and only(acts, Reply)[0].ok


def test_a_status_already_showing_the_value_confirms_at_the_result():
    rig = Rig()
    rig.line.values[("switch", 5)] = Switches.REVERSE       # already reverse: the status never changes
    sel, cmd = rig.operated()
    acts = rig.result(cmd, 0)
    assert [ev.state for ev in events(acts)] == ["AWAIT_FEEDBACK", "DONE"]


def test_result_done_without_feedback_fails_at_the_feedback_timeout():
    rig = Rig()
    sel, cmd = rig.operated()
    rig.result(cmd, 0)
    rig.engine.on_status("switch", 5, Switches.MOVING, rig.now)
    assert not events(rig.engine.tick(NOW + 9_999))
    assert rig.engine.next_deadline_ms() == NOW + 10_000
    acts = rig.engine.tick(NOW + 10_000)
    assert moves(acts) == [("AWAIT_FEEDBACK", "feedback_timeout", "FAILED")]
    assert events(acts)[0].outcome == "CI-1 reported done but the status did not show reverse within 10 s (status 2)"
    assert only(acts, ReleaseLock) == [rig.release()]
    reply, = only(acts, Reply)
    assert reply.request_id == "r-op" and not reply.ok and reply.termination and "did not show reverse" in reply.error


def test_no_result_fails_at_the_timeout_of_its_kind():
    rig = Rig(feedback_timeout_s={"switch": 10.0, "route": 20.0, "section": 5.0})
    sel, cmd = rig.operated(kind="route", obj=3, value="set")
    assert cmd.op == 3
    assert not events(rig.engine.tick(NOW + 19_999))                  # a route's 20 s, not a switch's 10
    acts = rig.engine.tick(NOW + 20_000)
    assert moves(acts) == [("OPERATING", "result_timeout", "FAILED")]
    assert events(acts)[0].outcome == "no COMMAND_RESULT from CI-1 within 20 s" and only(acts, ReleaseLock)


@pytest.mark.parametrize("code,detail,event,outcome", [
    (1, 5, "result_rejected", "rejected by CI-1: a section is blocked (detail 5)"),
    (1, 77, "result_rejected", "rejected by CI-1 (detail 77)"),
    (2, 9, "result_failed", "failed at CI-1: the route was cancelled before it was set (detail 9)"),
    (3, 0, "result_stale", "stale fencing token: the device has seen a newer holder of zone Z1"),
])
def test_a_result_code_fails_the_command_with_its_outcome(code, detail, event, outcome):
    rig = Rig()
    sel, cmd = rig.operated()
    acts = rig.result(cmd, code, detail=detail)
    ev, = events(acts)
    assert (ev.transition, ev.state, ev.result, ev.detail) == (event, "FAILED", code, detail)
    assert outcome in ev.outcome
    assert only(acts, ReleaseLock) == [rig.release()]
    reply, = only(acts, Reply)
    assert not reply.ok and reply.termination and outcome in reply.error
    assert rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now) == []   # over: no feedback afterwards


def test_a_section_block_ends_on_its_result_alone():
    rig = Rig()
    sel, cmd = rig.operated(kind="section", obj=20, value="block")
    assert cmd == Command(cmd.command_id, 5, 20, 0, rig.fence)
    acts = rig.result(cmd, 0)
    assert moves(acts) == [("OPERATING", "result_done_no_feedback", "DONE")]
    assert "no status" in events(acts)[0].outcome and only(acts, ReleaseLock) and only(acts, Reply)[0].ok


@pytest.mark.parametrize("state", ["SELECTING", "SELECTED", "OPERATING", "AWAIT_FEEDBACK"])
def test_the_device_becoming_unreachable_fails_its_commands(state):
    rig = Rig()
    other = rig.selected(kind="switch", obj=7, value="normal", operator="bob", ws="WS2", req="r-other")
    sel, _ = bring_to(rig, state, "switch")
    rig.line.up[CI1] = False
    acts = rig.engine.on_unreachable(CI1, rig.now)
    assert moves(acts) == [(state, "unreachable", "FAILED")]
    assert f"device CI-1 became unreachable (no link up on either net) while the command was {state}" \
        == events(acts)[0].outcome
    assert only(acts, ReleaseLock) == ([] if state == "SELECTING" else [rig.release()])
    # the open request is answered: the select's (lock pending) or the operate's termination; none when selected
    expected = {"SELECTING": [("r-sel", False, False)], "SELECTED": []}.get(state, [("r-op", False, True)])
    assert [(r.request_id, r.ok, r.termination) for r in only(acts, Reply)] == expected
    assert rig.state(other) == "SELECTED"                           # CI-2's command is untouched


def test_a_lock_granted_after_the_selection_ended_is_released_at_once():
    rig = Rig()
    acquire = rig.select()
    acts = rig.engine.cancel("r-c", acquire.selection_id, "alice", rig.now)
    assert moves(acts) == [("SELECTING", "cancel", "CANCELLED")] and not only(acts, ReleaseLock)
    assert {r.request_id: r.ok for r in only(acts, Reply)} == {"r-c": True, "r-sel": False}
    acts = rig.grant(acquire)
    assert acts == [rig.release()]


# -- refusals: a clear error, and nothing changes ------------------------------------------------

@pytest.mark.parametrize("setup,args,error,text", [
    (None, ("switch", 99, "normal"), UnknownObject, "no switch 99 on line demo-line-1"),
    (None, ("route", 42, "set"), UnknownObject, "no route 42 on line demo-line-1"),
    (None, ("signal", 1, "green"), UnknownObject, "'signal' objects are not commanded (kinds: switch, route, section)"),
    (None, ("switch", 5, "left"), BadValue,
     "switch 5: value 'left' is out of range (a switch takes normal or reverse)"),
    (None, ("switch", 5, 1), BadValue, "value 1 is out of range"),
    (None, ("switch", 70_000, "normal"), UnknownObject, "switch id: expected an integer 0..65535, got 70000"),
    ("down", ("switch", 5, "normal"), DeviceUnreachable, "switch 5: device CI-1 is unreachable"),
    ("selected", ("switch", 5, "normal"), AlreadySelected, "switch 5 is already selected by bob at WS2"),
    ("selected", ("switch", 6, "normal"), AlreadySelected, "zone Z1 is held by the selection of switch 5 by bob"),
    ("occupied", ("switch", 5, "normal"), Interlocked, "switch 5: its section 100 is occupied (interlocking: refused)"),
    ("locked", ("switch", 5, "normal"), Interlocked, "its section 100 is locked in a route"),
    ("fault", ("switch", 5, "normal"), Interlocked, "its section 100 is in fault"),
    ("unknown", ("switch", 5, "normal"), Interlocked, "the state of its section 100 is not known yet"),
])
def test_a_refused_select_says_why_and_changes_nothing(setup, args, error, text):
    rig = Rig()
    if setup == "down":
        rig.line.up[CI1] = False
    elif setup == "selected":
        rig.selected(operator="bob", ws="WS2")
    elif setup in ("occupied", "locked", "fault"):
        rig.line.sections[100] = {"occupied": TrackSections.OCCUPIED, "locked": TrackSections.LOCKED,
                                  "fault": TrackSections.FAULT}[setup]
    elif setup == "unknown":
        del rig.line.sections[100]
    before = rig.unchanged()
    with pytest.raises(error) as err:
        rig.engine.select("r", *args, "alice", "WS1", rig.now)
    assert text in str(err.value) and isinstance(err.value, ValueError) and err.value.code
    assert rig.unchanged() == before


def test_a_switch_outside_any_section_and_other_zones_are_selectable():
    rig = Rig()
    rig.selected(operator="bob", ws="WS2")                                   # zone Z1
    assert rig.selected(kind="switch", obj=8, value="normal")                 # zone Z2, no section
    assert rig.selected(kind="switch", obj=7, value="normal")                 # zone CI-2 (device name)


@pytest.mark.parametrize("name", ["", "   ", "a" * 65, "ops\x1b[31m", "ops\nroot"])
def test_operator_names_are_checked(name):
    rig = Rig()
    with pytest.raises(BadValue, match="operator: expected"):
        rig.engine.select("r", "switch", 5, "normal", name, "WS1", rig.now)


def test_a_refused_lock_answers_the_select_with_the_holder():
    rig = Rig()
    acquire = rig.select()
    acts = rig.engine.lock_refused("Z1", "zone Z1: held by WS2 for 2000 ms more", rig.now)
    assert moves(acts) == [("SELECTING", "lock_refused", "REFUSED")] and not only(acts, ReleaseLock)
    reply, = only(acts, Reply)
    assert reply.request_id == "r-sel" and not reply.ok
    assert reply.error == "switch 5 not selected: zone Z1: held by WS2 for 2000 ms more"
    assert rig.selected()                                                     # selectable again


@pytest.mark.parametrize("case,error,text", [
    ("other operator", WrongOperator, "belongs to alice at WS1, not to 'mallory'"),
    ("unknown selection", NotSelected, "operate: no selection 'nope'"),
    ("time is up", SelectionExpired, "expired 0 ms ago (select timeout 30 s)"),
    ("expired by tick", SelectionExpired, "has ended: EXPIRED (selection expired: not operated within 30 s)"),
    ("twice", WrongState, "already operated (command"),
    ("lock pending", WrongState, "still waiting for the lock of zone Z1"),
    ("train entered", Interlocked, "its section 100 is occupied"),
    ("device down", DeviceUnreachable, "device CI-1 is unreachable"),
])
def test_a_refused_operate_says_why_and_changes_nothing(case, error, text):
    rig = Rig()
    if case == "lock pending":
        sel = rig.select().selection_id
    else:
        sel = rig.selected()
    operator = "mallory" if case == "other operator" else "alice"
    if case == "unknown selection":
        sel = "nope"
    elif case == "time is up":
        rig.now = NOW + 30_000
    elif case == "expired by tick":
        rig.engine.tick(NOW + 30_000)
    elif case == "twice":
        rig.engine.operate("r1", sel, "alice", rig.now)
    elif case == "train entered":
        rig.line.sections[100] = TrackSections.OCCUPIED
    elif case == "device down":
        rig.line.up[CI1] = False
    before = rig.unchanged()
    with pytest.raises(error) as err:
        rig.engine.operate("r2", sel, operator, rig.now)
    assert text in str(err.value)
    assert rig.unchanged() == before


def test_cancel_releases_and_only_before_operate():
    rig = Rig()
    sel = rig.selected()
    with pytest.raises(WrongOperator):
        rig.engine.cancel("r", sel, "bob", rig.now)
    acts = rig.engine.cancel("r-c", sel, "alice", rig.now)
    assert moves(acts) == [("SELECTED", "cancel", "CANCELLED")]
    assert events(acts)[0].outcome == "cancelled by alice"
    assert only(acts, ReleaseLock) == [rig.release()]
    assert [(r.request_id, r.ok) for r in only(acts, Reply)] == [("r-c", True)]
    with pytest.raises(WrongState, match="has ended: CANCELLED"):
        rig.engine.operate("r", sel, "alice", rig.now)
    sel, _ = rig.operated()
    before = rig.unchanged()
    with pytest.raises(WrongState, match="cannot be cancelled"):
        rig.engine.cancel("r", sel, "alice", rig.now)
    assert rig.unchanged() == before


def test_the_select_timeout_expires_the_selection_and_releases_the_zone():
    rig = Rig(select_timeout_s=30.0)
    sel = rig.selected()
    assert not events(rig.engine.tick(NOW + 29_999))
    acts = rig.engine.tick(NOW + 30_000)
    assert moves(acts) == [("SELECTED", "select_timeout", "EXPIRED")]
    assert only(acts, ReleaseLock) == [rig.release()]
    assert rig.engine.selections() == []
    rig.now = NOW + 30_000
    assert rig.selected()                                                     # the object and zone are free


def test_the_zone_lock_is_extended_every_half_ttl_while_the_command_is_open():
    rig = Rig(lock_ttl_ms=10_000)
    sel = rig.selected()
    lease = rig.leases["Z1"]
    assert rig.engine.next_deadline_ms() == NOW + 5_000
    assert rig.engine.tick(NOW + 4_999) == []
    assert rig.engine.tick(NOW + 5_000) == [ExtendLock("Z1", lease, 10_000)]
    assert rig.engine.tick(NOW + 5_001) == []                              # not again while the extend runs
    renewed = Lease(lease.zone, lease.holder, lease.token, lease.fencing_token, 10_000)
    assert rig.engine.lock_extended("Z1", renewed, NOW + 5_010) == []     # half its TTL from the extend
    assert rig.engine.tick(NOW + 10_009) == []
    assert rig.engine.tick(NOW + 10_010) == [ExtendLock("Z1", renewed, 10_000)]
    rig.now = NOW + 10_010
    send, = only(rig.engine.operate("r", sel, "alice", rig.now), Send)
    assert rig.engine.tick(NOW + 15_010) == [ExtendLock("Z1", renewed, 10_000)]    # also while operating
    rig.result(send.command, 1)
    assert rig.engine.tick(NOW + 25_000) == []                             # ended: released, never extended
    assert rig.engine.lock_extended("Z1", renewed, NOW + 25_000) == [ReleaseLock("Z1", renewed)]


def test_a_redlock_lease_is_extended_at_half_its_validity():
    rig = Rig()
    acquire = rig.select()
    lease = Lease("Z1", "WS1", "tok", 9, 10_000, validity_ms=6_000)    # the majority took time, clocks drift
    rig.engine.lock_granted("Z1", lease, NOW)
    assert rig.engine.tick(NOW + 2_999) == [] and rig.engine.tick(NOW + 3_000) == [
        ExtendLock("Z1", lease, 10_000)]


def test_a_lost_lock_fails_a_selection_but_not_a_sent_command():
    rig = Rig()
    sel = rig.selected()
    acts = rig.engine.lock_lost("Z1", "zone Z1: extend refused", rig.now)
    assert moves(acts) == [("SELECTED", "lock_lost", "FAILED")] and not only(acts, ReleaseLock)
    sel, cmd = rig.operated()
    acts = rig.engine.lock_lost("Z1", "zone Z1: extend refused", rig.now)
    assert moves(acts) == [("OPERATING", "lock_lost", "OPERATING")]
    assert rig.engine.tick(NOW + 6_000) == []                              # no lease: nothing to extend
    acts = rig.result(cmd, 0) + rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now)
    assert events(acts)[-1].state == "DONE" and not only(acts, ReleaseLock)


# -- one zone, several selections: one shared lease -------------------------------------------------
# FakeLine: switches 5 and 6 are in zone Z1 (5 in section 100, free; 6 in none), 8 in zone Z2.

def replies(actions):
    return [(r.request_id, r.ok) for r in only(actions, Reply)]


def test_two_switches_of_one_zone_share_one_acquire_and_one_lease():
    rig = Rig()
    first = rig.select(obj=5, req="r-5")
    assert first.acquire == AcquireLock("Z1", "WS1", 10_000)
    second = rig.select(obj=6, req="r-6")                 # the same operator at the same workstation
    assert second.acquire is None and not only(second.actions, Reply)        # waits for the pending acquire
    assert moves(second.actions) == [("NEW", "select", "SELECTING")]
    acts = rig.grant(first)
    assert moves(acts) == [("SELECTING", "lock_granted", "SELECTED")] * 2
    assert replies(acts) == [("r-5", True), ("r-6", True)]
    lease = rig.leases["Z1"]
    assert {r.payload["fencing_token"] for r in only(acts, Reply)} == {lease.fencing_token}
    sends = [only(rig.engine.operate(f"r-op{i}", s.selection_id, "alice", rig.now), Send)[0]
             for i, s in enumerate((first, second))]
    assert [(s.command.object_id, s.command.fencing_token) for s in sends] == [(5, lease.fencing_token),
                                                                               (6, lease.fencing_token)]


def test_a_select_in_a_zone_already_held_joins_its_lease_at_once():
    rig = Rig()
    sel_5 = rig.selected(obj=5)
    joined = rig.select(obj=6, value="normal", req="r-6")
    assert joined.acquire is None
    assert moves(joined.actions) == [("NEW", "select", "SELECTING"), ("SELECTING", "lock_granted", "SELECTED")]
    reply, = only(joined.actions, Reply)
    assert reply.request_id == "r-6" and reply.ok and reply.payload["fencing_token"] == rig.leases["Z1"].fencing_token
    assert {s["selection_id"]: s["state"] for s in rig.engine.selections()} == {sel_5: "SELECTED",
                                                                                joined.selection_id: "SELECTED"}
    with pytest.raises(AlreadySelected, match="switch 6 is already selected by alice"):    # one selection per object
        rig.engine.select("r", "switch", 6, "reverse", "alice", "WS1", rig.now)


@pytest.mark.parametrize("first_to_end", ["cancelled 6", "done 5"])
def test_the_zone_is_released_only_when_its_last_selection_ends(first_to_end):
    rig = Rig()
    sel_5, cmd_5 = rig.operated(obj=5)
    sel_6 = rig.selected(obj=6, value="normal", req="r-6")

    def cancel_6():
        return rig.engine.cancel("r-c", sel_6, "alice", rig.now)

    def done_5():
        return rig.result(cmd_5, 0) + rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now)
    first, last = (cancel_6, done_5) if first_to_end == "cancelled 6" else (done_5, cancel_6)
    acts = first()
    assert events(acts)[-1].state in ("CANCELLED", "DONE") and not only(acts, ReleaseLock)   # the other holds it
    assert rig.engine.tick(NOW + 5_000) == [ExtendLock("Z1", rig.leases["Z1"], 10_000)]       # still extended
    acts = last()
    assert events(acts)[-1].state in ("CANCELLED", "DONE") and only(acts, ReleaseLock) == [rig.release()]
    assert rig.engine.selections() == [] and rig.engine.next_deadline_ms() is None
    assert rig.select(obj=6).acquire is not None                          # the zone is asked for again


@pytest.mark.parametrize("operator,ws", [("bob", "WS2"), ("bob", "WS1"), ("alice", "WS9")])
def test_another_operator_or_workstation_is_refused_in_a_held_zone(operator, ws):
    rig = Rig()
    acquire = rig.select(obj=5)
    for granted in (False, True):                                         # while acquiring, then held
        before = rig.unchanged()
        with pytest.raises(AlreadySelected) as err:
            rig.engine.select("r", "switch", 6, "normal", operator, ws, rig.now)
        assert str(err.value) == ("switch 6: zone Z1 is held by the selection of switch 5 by alice at WS1 "
                                  f"({'SELECTED' if granted else 'SELECTING'})")
        assert rig.unchanged() == before
        if not granted:
            rig.grant(acquire)
    rig.selected(obj=6, value="normal")
    with pytest.raises(AlreadySelected, match="held by the selections of switch 5, switch 6 by alice at WS1"):
        rig.engine.select("r", "switch", 9, "normal", operator, ws, rig.now)


def test_a_refused_acquire_fails_every_selection_waiting_on_it():
    rig = Rig()
    first = rig.select(obj=5, req="r-5")
    rig.select(obj=6, req="r-6")
    acts = rig.engine.lock_refused("Z1", "zone Z1: held by WS2 for 2000 ms more", rig.now)
    assert moves(acts) == [("SELECTING", "lock_refused", "REFUSED")] * 2 and not only(acts, ReleaseLock)
    assert [(r.request_id, r.ok, r.error) for r in only(acts, Reply)] == [
        ("r-5", False, "switch 5 not selected: zone Z1: held by WS2 for 2000 ms more"),
        ("r-6", False, "switch 6 not selected: zone Z1: held by WS2 for 2000 ms more")]
    assert rig.engine.selections() == []
    assert rig.grant(first) == [rig.release()]                            # a late grant: nobody waits for it
    assert rig.select(obj=6, operator="bob", ws="WS2").acquire is not None   # the zone is free here


def test_a_lost_lock_fails_every_selection_of_the_zone_and_spares_its_sent_commands():
    rig = Rig()
    sel_5 = rig.selected(obj=5)
    sel_6 = rig.selected(obj=6, value="normal")
    other = rig.selected(obj=8, value="normal")                          # zone Z2: untouched
    acts = rig.engine.lock_lost("Z1", "zone Z1: extend refused", rig.now)
    assert moves(acts) == [("SELECTED", "lock_lost", "FAILED")] * 2 and not only(acts, ReleaseLock)
    assert [e.selection_id for e in events(acts)] == [sel_5, sel_6]
    assert all(e.outcome == "zone lock of Z1 lost: zone Z1: extend refused" for e in events(acts))
    assert [s["selection_id"] for s in rig.engine.selections()] == [other]

    rig2 = Rig()
    sent, cmd = rig2.operated(obj=5)
    waiting = rig2.selected(obj=6, value="normal")
    acts = rig2.engine.lock_lost("Z1", "zone Z1: extend refused", rig2.now)
    assert moves(acts) == [("OPERATING", "lock_lost", "OPERATING"), ("SELECTED", "lock_lost", "FAILED")]
    assert rig2.engine.tick(NOW + 6_000) == []                            # no lease: nothing to extend
    again = rig2.select(obj=6, value="normal", req="r-again")              # the holder asks for the zone anew
    assert again.acquire == AcquireLock("Z1", "WS1", 10_000) and rig2.state(waiting) == "FAILED"
    acts = rig2.grant(again)
    assert replies(acts) == [("r-again", True)] and rig2.state(sent) == "OPERATING"
    assert only(acts, Reply)[0].payload["fencing_token"] == rig2.leases["Z1"].fencing_token != cmd.fencing_token


def test_the_lease_is_extended_once_per_zone_not_per_selection():
    rig = Rig(lock_ttl_ms=10_000)
    rig.selected(obj=5)
    rig.selected(obj=6, value="normal")
    rig.selected(obj=8, value="normal")
    assert rig.engine.next_deadline_ms() == NOW + 5_000
    acts = rig.engine.tick(NOW + 5_000)
    assert acts == [ExtendLock("Z1", rig.leases["Z1"], 10_000), ExtendLock("Z2", rig.leases["Z2"], 10_000)]
    assert rig.engine.tick(NOW + 5_001) == []


def test_selections_that_all_ended_before_the_grant_have_it_released_and_a_new_one_waits_for_it():
    rig = Rig()
    first = rig.select(obj=5, req="r-5")
    rig.engine.cancel("r-c", first.selection_id, "alice", rig.now)
    rejoin = rig.select(obj=6, req="r-6")                   # the acquire is still out: no second one
    assert rejoin.acquire is None
    with pytest.raises(AlreadySelected, match="zone Z1 is held by the selection of switch 6 by alice"):
        rig.engine.select("r", "switch", 5, "normal", "bob", "WS2", rig.now)
    acts = rig.grant(first)
    assert replies(acts) == [("r-6", True)] and not only(acts, ReleaseLock)
    acts = rig.engine.cancel("r-c2", rejoin.selection_id, "alice", rig.now)
    assert only(acts, ReleaseLock) == [rig.release()]

    lone = rig.select(obj=5, req="r-lone")
    rig.engine.cancel("r-c3", lone.selection_id, "alice", rig.now)
    assert rig.grant(lone) == [rig.release()]               # granted to nobody: released at once
    assert rig.select(obj=5).acquire is not None


# -- operate checks the lease is still valid ---------------------------------------------------------

@pytest.mark.parametrize("validity_ms,at_ms,sent", [(None, 9_999, True), (None, 10_000, False),
                                                     (None, 10_250, False), (6_000, 5_999, True),
                                                     (6_000, 6_000, False)])
def test_an_operate_past_the_lease_validity_sends_nothing(validity_ms, at_ms, sent):
    rig = Rig()
    acquire = rig.select()
    lease = Lease("Z1", "WS1", "tok", 77, 10_000, validity_ms)     # validity_ms None: its TTL (one Redis)
    rig.engine.lock_granted("Z1", lease, NOW)
    acts = rig.engine.operate("r-op", acquire.selection_id, "alice", NOW + at_ms)
    if sent:
        assert only(acts, Send)[0].command.fencing_token == 77 and replies(acts) == [("r-op", True)]
        return
    late = at_ms - (validity_ms or 10_000)
    assert moves(acts) == [("SELECTED", "lock_expired", "FAILED")]
    assert not only(acts, Send) and not only(acts, ReleaseLock)    # not ours any more: nothing released
    text = f"zone Z1: our lock's validity ended {late} ms ago; nothing sent; select again"
    assert events(acts)[0].outcome == text
    reply, = only(acts, Reply)
    assert (reply.request_id, reply.ok, reply.error, reply.termination) == ("r-op", False, text, False)
    assert rig.state(acquire.selection_id) == "FAILED" and rig.engine.selections() == []
    assert rig.engine.tick(NOW + at_ms + 60_000) == []                 # nothing left to extend
    assert rig.select(obj=5).acquire is not None                      # the zone is asked for again


def test_an_extension_renews_the_validity_and_a_lapsed_lease_shared_with_others_is_checked_by_its_extend():
    rig = Rig()
    sel_5 = rig.selected(obj=5)
    sel_6 = rig.selected(obj=6, value="normal")
    lease = rig.leases["Z1"]
    assert rig.engine.lock_extended("Z1", lease, NOW + 5_000) == []      # valid until NOW + 15 s now
    assert only(rig.engine.operate("r-5", sel_5, "alice", NOW + 14_999), Send)
    acts = rig.engine.operate("r-6", sel_6, "alice", NOW + 15_000)
    assert moves(acts) == [("SELECTED", "lock_expired", "FAILED")] and not only(acts, ReleaseLock)
    assert rig.engine.tick(NOW + 15_001) == [ExtendLock("Z1", lease, 10_000)]     # switch 5's command still open


def test_results_that_are_not_ours_are_counted_and_ignored():
    rig = Rig()
    sel, cmd = rig.operated()
    assert rig.engine.on_result(CI1, CommandResult(cmd.command_id + 256, 0, 0), rig.now) == []
    assert rig.result(cmd, 3, device=CI2) == []                            # another device answering our id
    assert rig.state(sel) == "OPERATING"
    rig.result(cmd, 0)
    assert rig.result(cmd, 0) == []                                        # a repeat
    assert {k: rig.engine.stats()[k] for k in ("unknown_results", "foreign_results", "late_results")} == \
        {"unknown_results": 1, "foreign_results": 1, "late_results": 1}


# -- command ids and restarts ------------------------------------------------------------------

def test_command_ids_carry_the_gateway_and_continue_from_the_journal():
    rig = Rig()
    _, a = rig.operated()
    _, b = rig.operated(kind="switch", obj=7, value="normal")
    assert a.command_id & 0xFF == 7 and b.command_id == a.command_id + 256
    minutes = (NOW // 1000 - m.COMMAND_ID_EPOCH_S) // 60
    assert a.command_id >> 8 == minutes                                   # empty journal: the time floor
    later = m.command_id_of(minutes + 5000, 7)
    e = CommandEngine(7, "demo-line-1", TZ, rig.settings, rig.line, last_command_id=later, start_ms=NOW)
    acquire, = only(e.select("r", "switch", 5, "normal", "alice", None, NOW), AcquireLock)
    assert acquire.holder == "GW-A"                                        # no workstation named: the setting's
    assert e.selections()[0]["command_id"] == later + 256
    assert m.first_command_counter(m.command_id_of(m.COUNTER_MAX - 1, 7), NOW) == m.COUNTER_MAX
    assert m.first_command_counter(m.command_id_of(m.COUNTER_MAX, 7), NOW) == 1           # wraps, never 0
    assert m.next_command_counter(m.COUNTER_MAX) == 1


def test_abandon_journals_the_commands_a_restart_left_open():
    rig = Rig()
    sel, cmd = rig.operated()
    last = events(rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now))[-1]
    e2 = CommandEngine(7, "demo-line-1", TZ, rig.settings, rig.line, last_seq=last.seq, start_ms=NOW + 60_000)
    acts = e2.abandon([last], NOW + 60_000)
    ev, = events(acts)
    assert (ev.previous_state, ev.transition, ev.state, ev.seq) == ("OPERATING", "abandon", "FAILED", last.seq + 1)
    assert (ev.command_id, ev.fencing_token, ev.operator) == (cmd.command_id, cmd.fencing_token, "alice")
    assert "the gateway restarted while the command was OPERATING" in ev.outcome


def test_a_command_event_checks_its_fields():
    rig = Rig()
    ev = events(rig.engine.select("r", "switch", 5, "normal", "alice", "WS1", NOW))[0]
    fields = {f: getattr(ev, f) for f in ev.__dataclass_fields__}
    with pytest.raises(m.ModelError, match="state: expected SELECTING"):
        m.CommandEvent(**{**fields, "state": "DONE"})
    with pytest.raises(m.ModelError, match="op: expected 1"):
        m.CommandEvent(**{**fields, "op": 2})
    with pytest.raises(m.ModelError, match="outcome: expected a sentence"):
        m.CommandEvent(**{**fields, "transition": "cancel", "previous_state": "SELECTING", "state": "CANCELLED"})
    with pytest.raises(m.ModelError, match="result"):
        m.CommandEvent(**{**fields, "result": 0})
    assert ev.to_json()["object"] == "switch/5" and ev.to_json()["object_kind"] == "switch"


# -- with the real in-process zone locks: two gateways, one zone ---------------------------------

class Clock:
    def __init__(self) -> None:
        self.s = 1000.0

    def __call__(self) -> float:
        return self.s


def carry_out(engine: CommandEngine, actions: list, locks, now_ms: int, sent: list) -> list:
    """What the gateway does with the engine's actions (lock calls answered back into the engine)."""
    out = []
    for a in actions:
        out.append(a)
        if isinstance(a, AcquireLock):
            try:
                lease = locks.acquire(a.zone, a.holder, a.ttl_ms, blocking=False)
            except LockHeld as exc:
                out += carry_out(engine, engine.lock_refused(a.zone, str(exc), now_ms), locks, now_ms, sent)
            else:
                out += carry_out(engine, engine.lock_granted(a.zone, lease, now_ms), locks, now_ms, sent)
        elif isinstance(a, ReleaseLock):
            try:
                locks.release(a.lease)
            except LockNotOwned:
                pass
        elif isinstance(a, Send):
            sent.append(a)
    return out


class FencingDevice:
    """A device that refuses a fencing token lower than the highest it has seen (the ICD's result 3)."""

    def __init__(self) -> None:
        self.fence = 0

    def execute(self, cmd: Command) -> CommandResult:
        if cmd.fencing_token < self.fence:
            return CommandResult(cmd.command_id, m.RESULT_STALE, 0)
        self.fence = cmd.fencing_token
        return CommandResult(cmd.command_id, m.RESULT_DONE, 0)


def test_a_holder_paused_past_its_ttl_sends_nothing_and_its_delayed_command_is_refused_by_the_device():
    """Gateway A holds zone Z1 for switches 5 and 6 (one lease); it operates 5 in time, but that COMMAND is
    delayed on its way, and A pauses 12 s without a tick (its 10 s lease runs out). B takes the zone and
    operates with a higher token. A resumes: the operate of 6 sends nothing (the lease's validity is over);
    A's delayed COMMAND reaches the device, which refuses it (result 3), and A's release frees nothing of B's."""
    clock = Clock()
    locks = InProcessZoneLocks(clock)
    line = FakeLine()
    settings = ControlSettings(workstation="GW", lock_ttl_ms=10_000)
    a = CommandEngine(1, "demo-line-1", TZ, settings, line, start_ms=NOW)
    b = CommandEngine(2, "demo-line-1", TZ, settings, line, start_ms=NOW)
    device, sent_a, sent_b = FencingDevice(), [], []

    acts = carry_out(a, a.select("a1", "switch", 5, "reverse", "alice", "WS1", NOW), locks, NOW, sent_a)
    sel_5 = events(acts)[0].selection_id
    assert only(acts, Reply)[0].ok
    acts = carry_out(a, a.select("a2", "switch", 6, "reverse", "alice", "WS1", NOW), locks, NOW, sent_a)
    sel_6 = events(acts)[0].selection_id
    assert only(acts, Reply)[0].ok and not only(acts, AcquireLock)               # joined the zone's lease
    acts = carry_out(b, b.select("b1", "switch", 5, "normal", "bob", "WS2", NOW + 100), locks, NOW + 100, sent_b)
    refused, = only(acts, Reply)
    assert not refused.ok and "zone Z1: held by WS1 for" in refused.error       # the holder, to the other server
    carry_out(a, a.operate("a3", sel_5, "alice", NOW + 9_000), locks, NOW + 9_000, sent_a)
    delayed = sent_a[-1].command                                                  # on its way, not there yet

    clock.s += 12.0                          # A pauses 12 s without a tick: its 10 s lease runs out
    t = NOW + 12_000
    acts = carry_out(b, b.select("b2", "switch", 5, "normal", "bob", "WS2", t), locks, t, sent_b)
    sel_b = events(acts)[0].selection_id
    carry_out(b, b.operate("b3", sel_b, "bob", t), locks, t, sent_b)
    assert device.execute(sent_b[-1].command).result == m.RESULT_DONE

    acts = carry_out(a, a.operate("a4", sel_6, "alice", t + 50), locks, t + 50, sent_a)   # A resumes
    assert moves(acts) == [("SELECTED", "lock_expired", "FAILED")] and len(sent_a) == 1     # nothing sent
    reply, = only(acts, Reply)
    assert not reply.ok and reply.error == "zone Z1: our lock's validity ended 2050 ms ago; nothing sent; select again"
    assert not only(acts, ReleaseLock)                                    # switch 5's command still holds the zone

    assert delayed.fencing_token < sent_b[-1].command.fencing_token
    result = device.execute(delayed)
    acts = carry_out(a, a.on_result(CI1, result, t + 60), locks, t + 60, sent_a)
    failed, = events(acts)
    assert (failed.transition, failed.state) == ("result_stale", "FAILED")
    assert failed.outcome.startswith("stale fencing token: the device has seen a newer holder of zone Z1")
    assert not only(acts, Reply)[0].ok and only(acts, ReleaseLock)        # the zone's last: released ...
    assert locks.holder("Z1") == "WS2"                                    # ... by token: B's lock stays


# -- settings ----------------------------------------------------------------------------------

def test_control_defaults():
    s, problems = parse_control(None, gateway_name="gw-east")
    assert problems == [] and s == ControlSettings(workstation="gw-east")
    assert (s.select_timeout_s, s.feedback_timeout_s, s.lock_ttl_ms) == (30.0, {"switch": 10.0, "route": 20.0,
                                                                                "section": 5.0}, 10_000)
    assert (s.locks.kind, s.topic_prefix, s.audit_topic_prefix) == ("in_process", "railgate", "railgate.commands")
    assert parse_control({}, gateway_name="gw-east") == (s, [])


def test_control_section_is_read():
    s, problems = parse_control({"select_timeout_s": 20, "feedback_timeout_s": {"route": 40},
                                 "lock_ttl_ms": 4000, "workstation": "WS-9", "topic_prefix": "line1",
                                 "locks": {"kind": "redis", "urls": ["redis://127.0.0.1:6379/0"], "prefix": "rg"}})
    assert problems == []
    assert s.select_timeout_s == 20.0 and s.feedback_timeout_s == {"switch": 10.0, "route": 40.0, "section": 5.0}
    assert (s.lock_ttl_ms, s.workstation, s.audit_topic_prefix) == (4000, "WS-9", "line1.commands")
    assert s.locks == LockSettings("redis", ("redis://127.0.0.1:6379/0",), "rg")


@pytest.mark.parametrize("raw,problem", [
    ([], "control: expected a mapping, got []"),
    ({"select_timeout": 3}, "control.select_timeout: expected one of select_timeout_s,"),
    ({"select_timeout_s": 0}, "control.select_timeout_s: expected a number of seconds 1..3600, got 0"),
    ({"select_timeout_s": True}, "control.select_timeout_s: expected a number of seconds 1..3600, got True"),
    ({"feedback_timeout_s": {"signal": 3}}, "control.feedback_timeout_s.signal: expected one of switch, route"),
    ({"feedback_timeout_s": {"switch": "10"}}, "control.feedback_timeout_s.switch: expected a number of seconds"),
    ({"feedback_timeout_s": 10}, "control.feedback_timeout_s: expected a mapping of switch, route, section"),
    ({"lock_ttl_ms": 100}, "control.lock_ttl_ms: expected an integer 500..600000, got 100"),
    ({"workstation": "ws\n2"}, "control.workstation: expected printable characters"),
    ({"topic_prefix": "rail gate"}, "control.topic_prefix: expected 1..100 of A-Z a-z 0-9 . _ -"),
    ({"locks": {"kind": "zookeeper"}}, "control.locks.kind: expected one of in_process, redis, got 'zookeeper'"),
    ({"locks": {"kind": "redis"}}, "control.locks.urls: expected at least one redis:// URL for kind redis"),
    ({"locks": {"kind": "redis", "urls": ["http://x"]}}, "control.locks.urls: expected a list of redis://"),
    ({"locks": {"urls": ["redis://127.0.0.1:6379"]}}, "control.locks.urls: only for kind redis"),
    ({"locks": {"kind": "redis", "urls": ["redis://a:1", "redis://a:1"]}},
     "control.locks.urls: expected each Redis master once"),
    ({"locks": {"kind": "redis", "url": "redis://a:1"}}, "control.locks.url: expected one of kind, urls, prefix"),
])
def test_control_problems_name_the_key(raw, problem):
    s, problems = parse_control(raw)
    assert any(p.startswith(problem) for p in problems), problems


def test_control_unknown_keys_are_worded_by_the_caller():
    _, problems = parse_control({"lock_tll_ms": 1}, unknown=lambda path, key, known: f"{path}.{key}: nope")
    assert problems == ["control.lock_tll_ms: nope"]


def test_zone_locks_in_process():
    locks = zone_locks(ControlSettings())
    lease = locks.acquire("Z1", "WS1", 1000, blocking=False)
    assert isinstance(locks, InProcessZoneLocks) and lease.fencing_token > 0


def test_zone_locks_on_redis_from_one_url(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    settings, problems = parse_control({"locks": {"kind": "redis", "urls": ["redis://127.0.0.1:6379/0"],
                                                  "prefix": prefix}})
    assert problems == []
    locks = zone_locks(settings)            # Redlock when gateway/adapters/redlock.py exists, else RedisZoneLocks
    lease = locks.acquire("Z1", "WS1", 5000, blocking=False)
    with pytest.raises(LockHeld, match="zone Z1: held by WS1"):
        locks.acquire("Z1", "WS2", 5000, blocking=False)
    assert any(k.decode().startswith(prefix) for k in client.scan_iter(f"{prefix}*"))
    locks.release(lease)
    assert locks.acquire("Z1", "WS2", 5000, blocking=False).fencing_token > lease.fencing_token
