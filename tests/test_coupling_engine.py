"""The coupling engine single-threaded: state table, confirmation, thresholds, timeout, settings."""
from __future__ import annotations

import itertools

import pytest
from coupling_helpers import CPD, CPL, DCP, DEC, MASTER, NONE, SLAVE, T0_MS, Recorder, pair, report

from gateway.coupling.engine import (COUPLED, COUPLING, DECOUPLED, DECOUPLING, DOUBLE_MASTER, DOUBLE_SLAVE, MISMATCH,
                              TIMEOUT, TRANSITIONS, UNKNOWN, CouplingEngine)
from gateway.coupling.settings import CouplingSettings, parse_coupling

A, B, CID = 1025, 1026, 9
SRC = f"consist {CID}"
#: reports that make the consist *observe* each state (coupled needs its confirmation run)
SHOWS = {DECOUPLED: (DEC, NONE, DEC, NONE, False), COUPLING: (CPL, MASTER, CPL, SLAVE, True),
         COUPLED: (CPD, MASTER, CPD, SLAVE, True), DECOUPLING: (DCP, MASTER, DCP, SLAVE, True)}


class Feeder:
    """Both trains report once per step, in the same window (A 30 ms into it, B 90 ms); received 5 ms later."""

    def __init__(self, **settings):
        self.sink = Recorder()
        self.engine = CouplingEngine({CID: (A, B)}, self.sink, CouplingSettings(**settings))
        self.t = T0_MS

    def feed(self, ra, rb, step_ms=1000):
        self.t += step_ms
        assert self.engine.ingest(A, ra, self.t + 30, self.t + 35) == 0
        assert self.engine.ingest(B, rb, self.t + 90, self.t + 95) == 1

    def show(self, state, times=1, step_ms=1000):
        for _ in range(times):
            self.feed(*pair(A, B, CID, *SHOWS[state]), step_ms=step_ms)

    @property
    def consist(self):
        return self.engine.consist_snapshot(self.engine.consists[CID], self.t)


def drive_to(f: Feeder, state: str) -> None:
    """Reach ``state`` by legal moves from UNKNOWN."""
    path = {UNKNOWN: [], DECOUPLED: [DECOUPLED], COUPLING: [DECOUPLED, COUPLING],
            COUPLED: [DECOUPLED, COUPLING, COUPLED], DECOUPLING: [DECOUPLED, COUPLING, COUPLED, DECOUPLING]}[state]
    for s in path:
        f.show(s, times=3 if s == COUPLED else 1)
    assert f.consist["state"] == state


@pytest.mark.parametrize("start,target", [(s, t) for s in TRANSITIONS for t in (DECOUPLED, COUPLING, COUPLED,
                                                                                 DECOUPLING) if t != s])
def test_every_move_of_the_table_legal_or_refused(start, target):
    f = Feeder()
    drive_to(f, start)
    f.show(target, times=3 if target == COUPLED else 1)
    snap = f.consist
    if target in TRANSITIONS[start]:
        assert snap["state"] == target and snap["counters"]["illegal_transitions"] == 0
    else:
        assert snap["state"] == start
        assert snap["counters"]["illegal_transitions"] == 1  # coupled: only once confirmed (third evaluation)


def test_coupled_needs_n_consecutive_confirmations_naming_each_other():
    f = Feeder(confirm_evaluations=4)
    drive_to(f, COUPLING)
    f.show(COUPLED, times=3)
    assert f.consist["state"] == COUPLING and f.consist["counters"]["confirm"] == 3
    f.feed(*pair(A, B, CID, CPD, MASTER, CPD, SLAVE, peers=False))  # coupled, but naming nobody: run restarts
    assert f.consist["counters"]["confirm"] == 0
    f.show(COUPLED, times=3)
    assert f.consist["state"] == COUPLING
    f.show(COUPLED)
    assert f.consist["state"] == COUPLED
    assert [c[1] for c in f.sink.of("emit")] == ["CONSIST_DECOUPLED", "CONSIST_COUPLED"]
    f.show(DECOUPLING)
    f.show(DECOUPLED)
    assert [c[1] for c in f.sink.of("emit")][-1] == "CONSIST_DECOUPLED"


@pytest.mark.parametrize("code,roles", [(DOUBLE_MASTER, (MASTER, MASTER)), (DOUBLE_SLAVE, (SLAVE, SLAVE))])
def test_double_role_raises_at_threshold_and_clears_after_normal_run(code, roles):
    f = Feeder(raise_after=3, clear_after=2)
    drive_to(f, COUPLED)
    bad = pair(A, B, CID, CPD, roles[0], CPD, roles[1])
    good = pair(A, B, CID, CPD, MASTER, CPD, SLAVE)
    f.feed(*bad)
    f.feed(*bad)
    f.feed(*good)  # a normal evaluation resets the run
    f.feed(*bad)
    f.feed(*bad)
    assert f.sink.of("raise") == [] and f.consist["counters"][code.lower()[9:]] == 2
    f.feed(*bad)
    raised = f.sink.of("raise")
    assert [(c[1], c[2], c[3]) for c in raised] == [(code, SRC, f.t + 95)]  # the later receive time of the pair
    assert "evaluations" in raised[0][4] and ("critical" if code == DOUBLE_MASTER else "major") in raised[0][4]
    assert f.consist["alarms"] == [code]
    for _ in range(5):
        f.feed(*bad)  # still the same episode: no second raise
    f.feed(*good)
    f.feed(*bad)  # a short normal run does not clear
    f.feed(*good)
    assert f.sink.of("clear") == []
    f.feed(*good)
    assert [(c[1], c[3]) for c in f.sink.of("clear")] == [(code, f.t + 95)]
    assert f.consist["alarms"] == [] and len(f.sink.of("raise")) == 1
    assert f.engine.totals()["abnormal_evaluations"][code.lower()[9:]] == 11


@pytest.mark.parametrize("ra,rb", [
    (report(CPD, MASTER, B), report(DEC, NONE, 0)),               # one coupled, one not
    (report(CPD, MASTER, B), report(CPD, SLAVE, 1099)),           # peers disagree
    (report(CPL, MASTER, B), report(CPL, SLAVE, 0)),              # one names a peer, the other nobody
    (report(CPD, MASTER, B, 10), report(CPD, SLAVE, A)),          # names another consist
])
def test_mismatch_cases(ra, rb):
    f = Feeder()
    for _ in range(3):
        f.feed(ra, rb)
    assert [c[1] for c in f.sink.of("raise")] == [MISMATCH]


def test_normal_pairs_raise_nothing():
    f = Feeder()
    for state in (DECOUPLED, COUPLING, COUPLED, COUPLED, COUPLED, DECOUPLING, DECOUPLED):
        f.show(state)
    f.feed(report(DEC, NONE, 0, 0), report(DEC, NONE, 0, 0))  # consist_id 0 is "not in a consist": allowed
    assert f.sink.of("raise") == [] and f.consist["state"] == DECOUPLED


def test_transition_timeout_raised_by_timer_and_cleared_on_leaving():
    f = Feeder(transition_timeout_s=30)
    drive_to(f, COUPLING)
    entered = f.t + 95  # the evaluation's time: the later receive time of its pair
    assert f.engine.check_timeouts(entered + 30_000) == 0  # not *longer* than 30 s yet
    assert f.engine.check_timeouts(entered + 30_001) == 1
    assert f.engine.check_timeouts(entered + 60_000) == 0  # raised once
    assert [(c[0], c[1], c[2]) for c in f.sink.of(name=TIMEOUT)] == [("raise", TIMEOUT, SRC)]
    assert TIMEOUT in f.consist["alarms"]
    f.t += 61_000
    f.show(COUPLED, times=3)
    assert [c[0] for c in f.sink.of(name=TIMEOUT)] == ["raise", "clear"] and f.consist["alarms"] == []
    f.show(DECOUPLING)
    f.show(DECOUPLING, step_ms=31_000)  # an evaluation past the limit raises it too
    assert [c[0] for c in f.sink.of(name=TIMEOUT)] == ["raise", "clear", "raise"]
    f.show(DECOUPLED)
    assert [c[0] for c in f.sink.of(name=TIMEOUT)][-1] == "clear"


def test_parse_coupling_defaults_values_and_problems():
    assert parse_coupling(None) == (CouplingSettings(), [])
    assert parse_coupling({}) == (CouplingSettings(1, 3, 3, 3, 30.0, 200), [])
    s, problems = parse_coupling({"workers": 8, "transition_timeout_s": 2.5, "clear_after": 5, "pair_window_ms": 100})
    assert problems == [] and (s.workers, s.transition_timeout_s, s.clear_after, s.pair_window_ms) == (8, 2.5, 5, 100)
    assert isinstance(parse_coupling({"transition_timeout_s": 10})[0].transition_timeout_s, float)
    _, problems = parse_coupling({"workers": 0, "raise_after": "3", "confirm_evaluations": 2.0,
                                  "transition_timeout_s": -1, "pair_window_ms": 200.0, "wokers": 2})
    assert problems == [
        "coupling.wokers: expected one of workers, confirm_evaluations, raise_after, clear_after, "
        "transition_timeout_s, pair_window_ms, got an unknown key",
        "coupling.workers: expected an integer 1..64, got 0",
        "coupling.confirm_evaluations: expected an integer 1..1000, got 2.0",
        "coupling.raise_after: expected an integer 1..1000, got '3'",
        "coupling.transition_timeout_s: expected a number of seconds 0.1..86400, got -1",
        "coupling.pair_window_ms: expected an integer 10..10000, got 200.0"]
    assert parse_coupling([1]) == (CouplingSettings(), ["coupling: expected a mapping, got [1]"])
    assert parse_coupling({"workers": True})[1] == ["coupling.workers: expected an integer 1..64, got True"]
    assert parse_coupling({"pair_window_ms": 9})[1] == ["coupling.pair_window_ms: expected an integer 10..10000, got 9"]
    assert parse_coupling({"pair_window_ms": 10_000}) == (CouplingSettings(pair_window_ms=10_000), [])


def test_table_is_complete_and_closed():
    states = {UNKNOWN, DECOUPLED, COUPLING, COUPLED, DECOUPLING}
    assert set(TRANSITIONS) == states
    assert all(targets <= states - {UNKNOWN} for targets in TRANSITIONS.values())
    cycle = [DECOUPLED, COUPLING, COUPLED, DECOUPLING, DECOUPLED]
    assert all(b in TRANSITIONS[a] for a, b in itertools.pairwise(cycle))
