"""Consist coupling engine: pairs the two trains' TRAIN_STATUS reports, runs the
consist state machine, and raises / clears the coupling conditions. Sans-IO:
every call is handed its ``now_ms``; output goes to a *sink* with EventLog's
interface (``raise_condition`` / ``clear_condition`` / ``emit``, source
``consist <id>``), which the gateway wires to ``ctx.events``.

Membership. The configured consists (``trains.consists``) are authoritative:
a report is paired inside the consist its train is configured in. The
report's own ``consist_id`` is *checked*, not followed: naming another
consist counts as a mismatch (0, "not in a consist", is allowed).
Reports from trains in no configured consist are counted and ignored.

Pairing (why results do not depend on thread interleaving). Each side of a
consist numbers its reports 1, 2, 3...; evaluation k pairs report k of
train A with report k of train B, at time max(now_ms of the two). The
thread that deposits the *second* report of pair k (slot arrival counter
reaches 2) claims evaluation k with ``evaluated.compare_and_increment(k-1)``
and runs it. Since one train's reports are ingested in order by one thread
at a time, pair k+1 cannot complete before evaluation k returns, so a
consist's evaluations run one at a time and in order, whichever threads run
them: the outcome is a function of the two per-train report sequences only.
If one side leads by more than ``max_skew`` reports (its partner silent), its
new reports are dropped and counted (memory stays bounded; only there can
timing change the pairing).

Threading: :meth:`CouplingEngine.ingest` from any thread, provided each
train's reports arrive in order from one thread at a time (the worker pool
hashes trains to threads); :meth:`check_timeouts` (timer) and
:meth:`snapshot` from any thread. The sink is called in the calling thread;
state moves and COUPLING_TIMEOUT are done under the consist's small lock so a
timer and a worker cannot raise and clear out of order.
"""
from __future__ import annotations

import threading

from railcodecs.train_messages import TrainStatus

from .atomics import AtomicCounter
from .coupling_settings import CouplingSettings

UNKNOWN, DECOUPLED, COUPLING, COUPLED, DECOUPLING = "unknown", "decoupled", "coupling", "coupled", "decoupling"
REPORTED = {TrainStatus.DECOUPLED: DECOUPLED, TrainStatus.COUPLING: COUPLING, TrainStatus.COUPLED: COUPLED,
            TrainStatus.DECOUPLING: DECOUPLING}
ROLES = {TrainStatus.ROLE_NONE: "none", TrainStatus.MASTER: "master", TrainStatus.SLAVE: "slave"}

#: Every legal move of a consist. UNKNOWN is the state before the first
#: evaluation after start: the gateway may start while a consist is already
#: coupled, so it adopts whatever the trains say (coupled still needs the
#: confirmation run). The two abandon moves (coupling -> decoupled,
#: decoupling -> coupled) are the project's choice. Anything else is refused
#: and counted, and the consist keeps its state.
TRANSITIONS: dict[str, frozenset[str]] = {
    UNKNOWN: frozenset({DECOUPLED, COUPLING, COUPLED, DECOUPLING}),
    DECOUPLED: frozenset({COUPLING}),
    COUPLING: frozenset({COUPLED, DECOUPLED}),
    COUPLED: frozenset({DECOUPLING}),
    DECOUPLING: frozenset({DECOUPLED, COUPLED}),
}
TRANSITIONAL = frozenset({COUPLING, DECOUPLING})

DOUBLE_MASTER, DOUBLE_SLAVE, MISMATCH = "COUPLING_DOUBLE_MASTER", "COUPLING_DOUBLE_SLAVE", "COUPLING_MISMATCH"
TIMEOUT = "COUPLING_TIMEOUT"
CONSIST_COUPLED, CONSIST_DECOUPLED = "CONSIST_COUPLED", "CONSIST_DECOUPLED"
CHECKS = (DOUBLE_MASTER, DOUBLE_SLAVE, MISMATCH)
#: for the alarm stage, which maps EventLog conditions to alarms
SEVERITY = {DOUBLE_MASTER: "critical", DOUBLE_SLAVE: "major", MISMATCH: "major", TIMEOUT: "minor",
            CONSIST_COUPLED: "info", CONSIST_DECOUPLED: "info"}
COUNTER_NAMES = {DOUBLE_MASTER: "double_master", DOUBLE_SLAVE: "double_slave", MISMATCH: "mismatch"}
MAX_SKEW = 64


def abnormal_checks(cid: int, members: tuple[int, int], ra: TrainStatus, rb: TrainStatus) -> dict[str, bool]:
    """Which checks pair (ra, rb) fails. Pure: the tests' reference model uses it too."""
    a, b = members
    peers_disagree = bool(ra.peer_train or rb.peer_train) and (ra.peer_train, rb.peer_train) != (b, a)
    one_coupled = (ra.coupling == TrainStatus.COUPLED) != (rb.coupling == TrainStatus.COUPLED)
    other_consist = ra.consist_id not in (0, cid) or rb.consist_id not in (0, cid)
    return {DOUBLE_MASTER: ra.role == rb.role == TrainStatus.MASTER,
            DOUBLE_SLAVE: ra.role == rb.role == TrainStatus.SLAVE,
            MISMATCH: peers_disagree or one_coupled or other_consist}


def observed_state(members: tuple[int, int], ra: TrainStatus, rb: TrainStatus) -> str | None:
    """The consist state a pair of reports shows; None when it shows none (one coupled, one not)."""
    ca, cb = ra.coupling, rb.coupling
    if ca == cb == TrainStatus.COUPLED:
        return COUPLED if (ra.peer_train, rb.peer_train) == (members[1], members[0]) else None
    if TrainStatus.DECOUPLING in (ca, cb):
        return DECOUPLING
    if TrainStatus.COUPLING in (ca, cb):
        return COUPLING
    return DECOUPLED if ca == cb == TrainStatus.DECOUPLED else None


class _Slot:
    """Pair k of a consist: the two reports and how many have arrived."""

    __slots__ = ("reports", "arrivals")

    def __init__(self) -> None:
        self.reports: list = [None, None]   # (TrainStatus, now_ms) per side
        self.arrivals = AtomicCounter()


class _Check:
    """Consecutive-evaluation counters of one check; written only by the consist's evaluation in progress."""

    __slots__ = ("abnormal", "normal", "active")

    def __init__(self) -> None:
        self.abnormal = AtomicCounter()
        self.normal = AtomicCounter()
        self.active = False


class Consist:
    """One configured consist: pairing slots, counters, state. Fields are the engine's."""

    def __init__(self, cid: int, members: tuple[int, int]) -> None:
        self.id, self.members, self.source = cid, members, f"consist {cid}"
        self.counts = (AtomicCounter(), AtomicCounter())    # reports deposited per side (pairing index)
        self.slots: dict[int, _Slot] = {}
        self.evaluated = AtomicCounter()                    # evaluations claimed so far
        self.checks = {code: _Check() for code in CHECKS}
        self.confirm = AtomicCounter()                      # consecutive "both coupled, peers agree"
        self.last: list = [None, None]                      # latest report per side (status)
        self.skew_dropped = AtomicCounter()
        self.illegal = AtomicCounter()
        self.order_violations = AtomicCounter()             # a failed claim: the ingest contract was broken
        self.lock = threading.Lock()                        # state, since_ms, timeout_active move together
        self.state, self.since_ms, self.timeout_active = UNKNOWN, None, False


class CouplingEngine:
    """All consists of the line. See the module docstring for the threading contract."""

    def __init__(self, consists: dict[int, tuple[int, int]], sink, settings: CouplingSettings | None = None,
                 *, max_skew: int = MAX_SKEW) -> None:
        self.settings = settings or CouplingSettings()
        self.sink, self.max_skew = sink, max_skew
        self.timeout_ms = int(self.settings.transition_timeout_s * 1000)
        self.consists = {cid: Consist(cid, members) for cid, members in sorted(consists.items())}
        self._by_train: dict[int, list[tuple[Consist, int]]] = {}
        for c in self.consists.values():
            for side, train in enumerate(c.members):
                self._by_train.setdefault(train, []).append((c, side))
        # line-wide totals: contended by every worker, hence atomics
        self.evaluations = AtomicCounter()
        self.abnormal_total = {code: AtomicCounter() for code in CHECKS}
        self.raised = {code: AtomicCounter() for code in (*CHECKS, TIMEOUT)}
        self.cleared = {code: AtomicCounter() for code in (*CHECKS, TIMEOUT)}
        self.unconfigured = AtomicCounter()

    @classmethod
    def from_config(cls, cfg, sink, settings: CouplingSettings | None = None) -> CouplingEngine:
        return cls(cfg.trains.consists, sink, settings)

    # -- reports -------------------------------------------------------------------------------
    def ingest(self, train_id: int, report: TrainStatus, now_ms: int) -> int:
        """One accepted TRAIN_STATUS; returns how many evaluations this call ran (0 or 1 per consist).

        Any thread, but one train's reports in order from one thread at a time.
        """
        entries = self._by_train.get(train_id)
        if entries is None:
            self.unconfigured.increment()
            return 0
        done = 0
        for c, side in entries:
            mine = c.counts[side]
            k = mine.get() + 1
            if k - c.counts[1 - side].get() > self.max_skew:
                c.skew_dropped.increment()
                continue
            c.last[side] = report
            slot = c.slots.get(k) or c.slots.setdefault(k, _Slot())  # setdefault: one slot even if both race
            slot.reports[side] = (report, now_ms)
            mine.set(k)
            if slot.arrivals.increment() != 2:   # the lock in increment() publishes the report to the other side
                continue
            del c.slots[k]
            if not c.evaluated.compare_and_increment(k - 1):
                c.order_violations.increment()
                continue
            self._evaluate(c, slot.reports[0], slot.reports[1])
            done += 1
        return done

    def _evaluate(self, c: Consist, pa, pb) -> None:
        (ra, ta), (rb, tb) = pa, pb
        now_ms = max(ta, tb)
        self.evaluations.increment()
        s = self.settings
        for code, bad in abnormal_checks(c.id, c.members, ra, rb).items():
            chk = c.checks[code]
            if bad:
                self.abnormal_total[code].increment()
                chk.normal.set(0)
                run = chk.abnormal.get()
                if not chk.abnormal.compare_and_increment(run):  # only this evaluation writes it
                    c.order_violations.increment()
                if run + 1 == s.raise_after and not chk.active:
                    chk.active = True
                    self.raised[code].increment()
                    self.sink.raise_condition(code, c.source, now_ms, self._detail(code, c, ra, rb, run + 1))
            else:
                chk.abnormal.set(0)
                run = chk.normal.get()
                if not chk.normal.compare_and_increment(run):
                    c.order_violations.increment()
                if run + 1 == s.clear_after and chk.active:
                    chk.active = False
                    self.cleared[code].increment()
                    self.sink.clear_condition(code, c.source, now_ms,
                                              f"{run + 1} consecutive normal evaluations")
        seen = observed_state(c.members, ra, rb)
        target = seen
        if seen == COUPLED:
            if c.confirm.increment() < s.confirm_evaluations:
                target = None
        else:
            c.confirm.set(0)
        with c.lock:
            if target is not None and target != c.state:
                self._move(c, target, now_ms)
            self._timeout_locked(c, now_ms)

    def _move(self, c: Consist, target: str, now_ms: int) -> None:
        """Caller holds c.lock."""
        if target not in TRANSITIONS[c.state]:
            c.illegal.increment()
            return
        c.state, c.since_ms = target, now_ms
        if c.timeout_active and target not in TRANSITIONAL:
            c.timeout_active = False
            self.cleared[TIMEOUT].increment()
            self.sink.clear_condition(TIMEOUT, c.source, now_ms, f"consist {target}")
        if target == COUPLED:
            self.sink.emit(CONSIST_COUPLED, c.source, now_ms, "trains {} and {} coupled".format(*c.members))
        elif target == DECOUPLED:
            self.sink.emit(CONSIST_DECOUPLED, c.source, now_ms, "trains {} and {} decoupled".format(*c.members))

    def _timeout_locked(self, c: Consist, now_ms: int) -> None:
        if c.state in TRANSITIONAL and not c.timeout_active and now_ms - c.since_ms > self.timeout_ms:
            c.timeout_active = True
            self.raised[TIMEOUT].increment()
            self.sink.raise_condition(TIMEOUT, c.source, now_ms,
                                      f"{c.state} for {(now_ms - c.since_ms) / 1000:.1f} s "
                                      f"(limit {self.timeout_ms / 1000:g} s)")

    @staticmethod
    def _detail(code: str, c: Consist, ra: TrainStatus, rb: TrainStatus, run: int) -> str:
        a, b = c.members
        what = {DOUBLE_MASTER: "both report master", DOUBLE_SLAVE: "both report slave",
                MISMATCH: f"disagree (coupling {REPORTED[ra.coupling]}/{REPORTED[rb.coupling]}, "
                          f"peer {ra.peer_train}/{rb.peer_train}, consist {ra.consist_id}/{rb.consist_id})"}[code]
        return f"severity {SEVERITY[code]}: trains {a} and {b} {what} for {run} evaluations"

    # -- timer and status ----------------------------------------------------------------------
    def check_timeouts(self, now_ms: int) -> int:
        """Raise COUPLING_TIMEOUT for consists stuck in coupling/decoupling; returns how many. Any thread."""
        before = self.raised[TIMEOUT].get()
        for c in self.consists.values():
            with c.lock:
                self._timeout_locked(c, now_ms)
        return self.raised[TIMEOUT].get() - before

    def consist_snapshot(self, c: Consist, now_ms: int | None = None) -> dict:
        """JSON-ready view of one consist. Any thread (values read one by one, not at one instant)."""
        with c.lock:
            state, since, timeout = c.state, c.since_ms, c.timeout_active
        last = list(c.last)
        alarms = [code for code in CHECKS if c.checks[code].active] + ([TIMEOUT] if timeout else [])
        counters = {COUNTER_NAMES[code]: c.checks[code].abnormal.get() for code in CHECKS}
        counters.update(confirm=c.confirm.get(), evaluations=c.evaluated.get(), illegal_transitions=c.illegal.get(),
                        skew_dropped=c.skew_dropped.get(), reports=[n.get() for n in c.counts])
        return {"id": c.id, "members": list(c.members), "state": state, "state_since_ms": since,
                "state_age_ms": None if since is None or now_ms is None else now_ms - since,
                "roles": [None if r is None else ROLES[r.role] for r in last],
                "peers": [None if r is None else r.peer_train for r in last],
                "counters": counters, "alarms": alarms}

    def snapshot(self, now_ms: int | None = None) -> list[dict]:
        """Every consist, by id. Any thread."""
        return [self.consist_snapshot(c, now_ms) for c in self.consists.values()]

    def totals(self) -> dict:
        """Line-wide counters. Any thread."""
        return {"evaluations": self.evaluations.get(), "unconfigured_reports": self.unconfigured.get(),
                "abnormal_evaluations": {COUNTER_NAMES[k]: v.get() for k, v in self.abnormal_total.items()},
                "raised": {k: v.get() for k, v in self.raised.items()},
                "cleared": {k: v.get() for k, v in self.cleared.items()}}
