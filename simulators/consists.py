"""Coupling of a consist's two trains over time: the normal cycle and the ``--scenario`` episodes.

What each member reports in TRAIN_STATUS (both always send the configured
``consist_id``; member 0 is the first train listed in the line file)::

    phase          coupling     role (member 0, member 1)   peer_train
    coupling       1 both       0, 0                        the other train
    coupled        2 both       1 master, 2 slave           the other train
    decoupling     3 both       1, 2                        the other train
    decoupled      0 both       0, 0                        0
    double_master  2 both       1, 1                        the other train
    double_slave   2 both       2, 2                        the other train
    mismatch       2 / 0        1 / 0                       the other train / 0

A run starts with ``coupling`` for a few reports, then ``coupled``. A consist
without scenarios then follows the seeded normal cycle: coupled for 60-180 s,
decoupling for a few reports, decoupled for 10-30 s, coupling again.

``--scenario CONSIST:KIND[@START_S[+DURATION_S]]`` (logical seconds from the
start; KIND couple, decouple, double_master, double_slave, mismatch) replaces
the normal cycle of that consist: at START (default 0) the episode begins;
after DURATION the consist is back to normal ``coupled`` (``decouple``:
couples again through ``coupling``), so one abnormal episode is one raise and
one clear downstream. Without DURATION it lasts to the end of the run.

Pure timeline logic, no IO; used from the simulator's one asyncio thread.
"""
from __future__ import annotations

import bisect
import random
from dataclasses import dataclass

KINDS = ("couple", "decouple", "double_master", "double_slave", "mismatch")
TRANSITION_REPORTS = 5                      # coupling / decoupling last this many status reports
COUPLED_S, DECOUPLED_S = (60.0, 180.0), (10.0, 30.0)
MOVING_PHASES = ("coupled", "double_master", "double_slave", "mismatch")


class ScenarioError(ValueError):
    """A --scenario value that does not parse; the message names the bad part."""


@dataclass(frozen=True, slots=True)
class Scenario:
    consist: int
    kind: str
    start_s: float = 0.0
    duration_s: float | None = None


def parse_scenario(text: str) -> Scenario:
    """``CONSIST:KIND[@START_S[+DURATION_S]]``, e.g. ``11:double_master@5+10``."""
    head, _, timing = text.partition("@")
    cid, sep, kind = head.partition(":")
    if not sep or not cid.isdigit() or not 1 <= int(cid) <= 0xFFFF:
        raise ScenarioError(f"--scenario {text!r}: expected CONSIST:KIND[@START_S[+DURATION_S]], e.g. 11:double_master@5+10")
    if kind not in KINDS:
        raise ScenarioError(f"--scenario {text!r}: unknown kind {kind!r}; one of {', '.join(KINDS)}")
    start, duration = 0.0, None
    if timing:
        start_text, plus, dur_text = timing.partition("+")
        try:
            start = float(start_text)
            duration = float(dur_text) if plus else None
        except ValueError:
            raise ScenarioError(f"--scenario {text!r}: timing {timing!r} is not START_S[+DURATION_S]") from None
        if start < 0 or (duration is not None and duration <= 0):
            raise ScenarioError(f"--scenario {text!r}: START_S must be >= 0 and DURATION_S > 0")
    return Scenario(int(cid), kind, start, duration)


class ConsistTimeline:
    """The phase of one consist at any logical time."""

    def __init__(self, consist_id: int, members: tuple[int, int], scenarios: list[Scenario],
                 rng: random.Random, report_s: float) -> None:
        self.consist_id, self.members = consist_id, members
        self.rng, self.transition_s = rng, TRANSITION_REPORTS * report_s
        self.cycle = not scenarios
        self.times: list[float] = [0.0, self.transition_s]
        self.phases: list[str] = ["coupling", "coupled"]
        for sc in sorted(scenarios, key=lambda s: s.start_s):
            self._cut(sc.start_s)
            self._episode(sc)

    def _cut(self, t: float) -> None:
        i = bisect.bisect_left(self.times, t)
        del self.times[i:], self.phases[i:]

    def _add(self, t: float, phase: str) -> None:
        self.times.append(t)
        self.phases.append(phase)

    def _episode(self, sc: Scenario) -> None:
        t, tr = sc.start_s, self.transition_s
        if sc.kind == "couple":
            self._add(t, "coupling")
            self._add(t + tr, "coupled")
        elif sc.kind == "decouple":
            self._add(t, "decoupling")
            self._add(t + tr, "decoupled")
            if sc.duration_s is not None:
                self._add(t + max(sc.duration_s, 2 * tr), "coupling")
                self._add(t + max(sc.duration_s, 2 * tr) + tr, "coupled")
        else:
            self._add(t, sc.kind)
            if sc.duration_s is not None:
                self._add(t + sc.duration_s, "coupled")

    def _extend(self, t: float) -> None:
        """The seeded normal cycle, generated as far as ``t``."""
        rng, tr = self.rng, self.transition_s
        while self.times[-1] <= t:
            end = self.times[-1]
            self._add(end + rng.uniform(*COUPLED_S), "decoupling")
            self._add(self.times[-1] + tr, "decoupled")
            self._add(self.times[-1] + rng.uniform(*DECOUPLED_S), "coupling")
            self._add(self.times[-1] + tr, "coupled")

    def phase(self, t: float) -> str:
        if self.cycle:
            self._extend(t)
        return self.phases[bisect.bisect_right(self.times, t) - 1]

    def report(self, train: int, t: float) -> tuple[int, int, int, bool]:
        """``(coupling, role, peer_train, standing)`` that ``train`` reports at logical time ``t``."""
        phase = self.phase(t)
        me = self.members.index(train)
        peer = self.members[1 - me]
        standing = phase not in MOVING_PHASES
        if phase == "coupling":
            return 1, 0, peer, standing
        if phase in ("coupled", "decoupling"):
            return (2 if phase == "coupled" else 3), me + 1, peer, standing
        if phase == "decoupled":
            return 0, 0, 0, standing
        if phase == "double_master":
            return 2, 1, peer, standing
        if phase == "double_slave":
            return 2, 2, peer, standing
        return (2, 1, peer, standing) if me == 0 else (0, 0, 0, standing)   # mismatch
