"""Consist coupling engine: pairs the two trains' TRAIN_STATUS reports, runs the
consist state machine, and raises / clears the coupling conditions. Sans-IO:
every call is handed the report's sender time ``time_ms`` (the common header,
ICD section 5) and the gateway's ``now_ms``; output goes to a *sink* with
EventLog's interface (``raise_condition`` / ``clear_condition`` / ``emit``,
source ``consist <id>``), which the gateway wires to ``ctx.events``.

Pairing rule (by the sender's report time). A report's *bucket* is
``time_ms // pair_window_ms`` (``coupling.pair_window_ms``, default 200 ms,
the 5 Hz report period). Per consist, each member's reports are taken in the
order that train's reports are ingested. (1) A report whose bucket is below
the last bucket that train reported is dropped and counted ``late`` (its
clock went back; this covers every report older than the consist's last
evaluated bucket). A second report in the same bucket is dropped and counted
``duplicate``: the *first* report of a bucket is the one paired. (The later
one cannot win deterministically: when it arrives, the pair may or may not
have been evaluated already, depending on thread timing.) (2) Otherwise it
is the train's report for bucket b. If the partner has a report waiting in
b, the pair is evaluated now, at time max(now_ms) of the two reports. If the
partner has already reported a later bucket, it will never report b: this
report is discarded, ``unpaired``. Otherwise it waits. Partner reports
waiting in buckets below b are discarded, ``unpaired``, for the same reason.
(3) At most ``max_pending`` reports wait per member (64: 12.8 s of silence at
5 Hz); beyond that the oldest is dropped and counted ``overflow``. So the
evaluated pairs are exactly the buckets both trains reported, in increasing
order; a lost datagram costs one pair (the partner's report of that bucket
becomes ``unpaired``) and the next pairs again combine reports sent in the
same window. The rule assumes the two trains' clocks agree to well within one
window: ICD section 6 only bounds each sender's clock to the gateway's by
``max_age_ms``, and a train whose clock is off by d pairs reports sent d apart.

Why results do not depend on thread interleaving. Each train's reports are
ingested in order by one thread at a time, so rule (1) depends on that
train's sequence only and its accepted buckets strictly increase. Rules
(2)-(3) run under the consist's ``pair_lock``, so the two members' steps are
serialized. A bucket b both trains report always pairs: whichever report of
b comes second finds the first one waiting, because discarding it would need
the second train to have reported a bucket above b, which it does only after
b. A bucket only one train reports is discarded exactly once: when the other
train reports a later bucket (at once, if it already has). Pair completion is
monotonic: the call that completes pair b claims its evaluation with
``last_bucket.compare_and_set(previous pair's bucket, b)`` and runs it
outside the lock; a later pair needs the completing train's *next* report,
which is ingested only after that call has returned, so a consist's
evaluations run one at a time and in bucket order (a failed claim means the
ingest contract was broken: counted ``order_violations``, pair skipped). The
outcome is a function of the two per-train sequences of (report, time_ms,
now_ms); only ``overflow`` (how far the partner's worker lags) depends on
timing. The pair lock also orders one evaluation's plain writes before the
next evaluation, which may run in the other member's thread.

Membership. The configured consists (``trains.consists``) are authoritative:
a report is paired inside the consist its train is configured in. The
report's own ``consist_id`` is *checked*, not followed: naming another
consist counts as a mismatch (0, "not in a consist", is allowed).
Reports from trains in no configured consist are counted and ignored.

Threading: :meth:`CouplingEngine.ingest` from any thread, provided each
train's reports arrive in order from one thread at a time (the worker pool
hashes trains to threads); :meth:`check_timeouts` (timer) and
:meth:`snapshot` from any thread. The sink is called in the calling thread;
state moves and COUPLING_TIMEOUT are done under the consist's small ``lock``
so a timer and a worker cannot raise and clear out of order (a separate lock
from ``pair_lock``: a slow sink call by the timer never stalls pairing).
"""
from __future__ import annotations

import threading
from collections import deque

from railcodecs.train_messages import TrainStatus

from gateway.base.atomics import AtomicCounter
from gateway.coupling.settings import CouplingSettings

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
MAX_PENDING = 64   # reports waiting for their partner, per member of a consist


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


class _Member:
    """One train's pairing state inside one consist. Written only under the consist's ``pair_lock``."""

    __slots__ = ("bucket", "waiting", "reports")

    def __init__(self) -> None:
        self.bucket = -1                    # last bucket this train reported here (-1: none yet)
        self.waiting: deque = deque()       # (bucket, (TrainStatus, now_ms)) not paired yet, buckets increasing
        self.reports = 0                    # reports accepted for pairing


class _Check:
    """Consecutive-evaluation counters of one check; written only by the consist's evaluation in progress."""

    __slots__ = ("abnormal", "normal", "active")

    def __init__(self) -> None:
        self.abnormal = AtomicCounter()
        self.normal = AtomicCounter()
        self.active = False


class Consist:
    """One configured consist: pairing state, counters, state. Fields are the engine's."""

    def __init__(self, cid: int, members: tuple[int, int]) -> None:
        self.id, self.members, self.source = cid, members, f"consist {cid}"
        # pairing: everything in this group is read and written under pair_lock
        self.pair_lock = threading.Lock()
        self.sides = (_Member(), _Member())
        self.paired = -1                                    # bucket of the last completed pair
        self.unpaired = self.late = self.duplicate = self.overflow = 0
        # evaluation
        self.last_bucket = AtomicCounter(-1)                # bucket of the last claimed evaluation
        self.evaluations = AtomicCounter()
        self.checks = {code: _Check() for code in CHECKS}
        self.confirm = AtomicCounter()                      # consecutive "both coupled, peers agree"
        self.last: list = [None, None]                      # latest accepted report per side (status)
        self.illegal = AtomicCounter()
        self.order_violations = AtomicCounter()             # a failed claim: the ingest contract was broken
        self.lock = threading.Lock()                        # state, since_ms, timeout_active move together
        self.state, self.since_ms, self.timeout_active = UNKNOWN, None, False


class CouplingEngine:
    """All consists of the line. See the module docstring for the threading contract."""

    def __init__(self, consists: dict[int, tuple[int, int]], sink, settings: CouplingSettings | None = None,
                 *, max_pending: int = MAX_PENDING) -> None:
        if max_pending < 1:
            raise ValueError(f"coupling: max_pending must be at least 1, got {max_pending}")
        self.settings = settings or CouplingSettings()
        self.sink, self.max_pending = sink, max_pending
        self.window_ms = self.settings.pair_window_ms
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

    def paired_trains(self) -> frozenset:
        """The trains of the configured consists: a report of any other train is only counted
        (``unconfigured``). Any thread (fixed at construction)."""
        return frozenset(self._by_train)

    # -- reports -------------------------------------------------------------------------------
    def ingest(self, train_id: int, report: TrainStatus, time_ms: int, now_ms: int) -> int:
        """One accepted TRAIN_STATUS sent at ``time_ms`` (sender's clock), received at ``now_ms`` (ours).

        Returns how many evaluations this call ran (0 or 1 per consist). Any
        thread, but one train's reports in order from one thread at a time.
        """
        entries = self._by_train.get(train_id)
        if entries is None:
            self.unconfigured.increment()
            return 0
        bucket = time_ms // self.window_ms
        done = 0
        for c, side in entries:
            with c.pair_lock:
                pair = self._pair_locked(c, side, bucket, (report, now_ms))
                if pair is None:
                    continue
                previous, c.paired = c.paired, bucket
            if not c.last_bucket.compare_and_set(previous, bucket):
                c.order_violations.increment()
                continue
            self._evaluate(c, *pair)
            done += 1
        return done

    def _pair_locked(self, c: Consist, side: int, bucket: int, entry: tuple):
        """Rules (1)-(3) of the module docstring; returns (A's entry, B's entry) when bucket completes a pair.

        Caller holds c.pair_lock. Invariant: reports wait on one side at most,
        and every waiting bucket is above the other member's last bucket.
        """
        me, partner = c.sides[side], c.sides[1 - side]
        if bucket <= me.bucket:
            if bucket == me.bucket:
                c.duplicate += 1
            else:
                c.late += 1
            return None
        me.bucket = bucket
        me.reports += 1
        c.last[side] = entry[0]
        waiting = partner.waiting
        while waiting and waiting[0][0] < bucket:  # this train is past them: they can never pair
            waiting.popleft()
            c.unpaired += 1
        if waiting and waiting[0][0] == bucket:
            theirs = waiting.popleft()[1]
            return (entry, theirs) if side == 0 else (theirs, entry)
        if partner.bucket >= bucket:  # the partner is past b, or its b was dropped as overflow: no pair
            c.unpaired += 1
            return None
        if len(me.waiting) >= self.max_pending:
            me.waiting.popleft()
            c.overflow += 1
        me.waiting.append((bucket, entry))
        return None

    def _evaluate(self, c: Consist, pa, pb) -> None:
        (ra, ta), (rb, tb) = pa, pb
        now_ms = max(ta, tb)
        self.evaluations.increment()
        c.evaluations.increment()
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
        with c.pair_lock:
            last = list(c.last)
            pairing = {"unpaired": c.unpaired, "late": c.late, "duplicate": c.duplicate, "overflow": c.overflow,
                       "reports": [m.reports for m in c.sides], "waiting": [len(m.waiting) for m in c.sides]}
        alarms = [code for code in CHECKS if c.checks[code].active] + ([TIMEOUT] if timeout else [])
        counters = {COUNTER_NAMES[code]: c.checks[code].abnormal.get() for code in CHECKS}
        counters.update(confirm=c.confirm.get(), evaluations=c.evaluations.get(), illegal_transitions=c.illegal.get(),
                        last_bucket=c.last_bucket.get(), order_violations=c.order_violations.get(), **pairing)
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
                "pair_window_ms": self.window_ms,
                "abnormal_evaluations": {COUNTER_NAMES[k]: v.get() for k, v in self.abnormal_total.items()},
                "raised": {k: v.get() for k, v in self.raised.items()},
                "cleared": {k: v.get() for k, v in self.cleared.items()}}
