"""Coupling invariants under real threads: 8 threads, thousands of consists, random interleavings.

Every run is compared with a single-threaded oracle fed the same per-train report
order, and with a reference count taken straight from the generated pairs.
"""
from __future__ import annotations

import random
import sys
import threading
from collections import defaultdict

import pytest
from coupling_helpers import CPD, CPL, DCP, DEC, MASTER, NONE, SLAVE, Recorder, report

from gateway.coupling import CHECKS, COUNTER_NAMES, CouplingEngine, abnormal_checks
from gateway.coupling_settings import CouplingSettings
from gateway.coupling_workers import CouplingWorkers

THREADS = 8
CONSISTS = 2000
LENGTH = 14  # reports per train
SETTINGS = CouplingSettings(raise_after=3, clear_after=2, confirm_evaluations=2)


def _pair_for(kind, a, b, cid):
    if kind == "coupled":
        return report(CPD, MASTER, b, cid), report(CPD, SLAVE, a, cid)
    if kind == "double_master":
        return report(CPD, MASTER, b, cid), report(CPD, MASTER, a, cid)
    if kind == "double_slave":
        return report(CPD, SLAVE, b, cid), report(CPD, SLAVE, a, cid)
    if kind == "mismatch":
        return report(CPD, MASTER, b, cid), report(DEC, NONE, 0, cid)
    if kind == "coupling":
        return report(CPL, MASTER, b, cid), report(CPL, SLAVE, a, cid)
    if kind == "decoupling":
        return report(DCP, MASTER, b, cid), report(DCP, SLAVE, a, cid)
    return report(DEC, NONE, 0, cid), report(DEC, NONE, 0, cid)


def make_line(seed: int):
    """consists, and per train its reports in order as (report, now_ms)."""
    rng = random.Random(seed)
    kinds = ("coupled", "double_master", "double_slave", "mismatch", "coupling", "decoupling", "decoupled")
    consists, reports = {}, {}
    for i in range(CONSISTS):
        cid, a, b = i + 1, 10_000 + 2 * i, 10_001 + 2 * i
        consists[cid] = (a, b)
        seq_a, seq_b = [], []
        while len(seq_a) < LENGTH:
            kind = rng.choice(kinds)
            for _ in range(rng.randint(1, 5)):
                ra, rb = _pair_for(kind, a, b, cid)
                base = 1000 * (len(seq_a) + 1)
                seq_a.append((ra, base + rng.randint(0, 400)))
                seq_b.append((rb, base + rng.randint(0, 400)))
        reports[a], reports[b] = seq_a[:LENGTH], seq_b[:LENGTH]
    return consists, reports


def oracle(consists, reports):
    sink = Recorder()
    eng = CouplingEngine(consists, sink, SETTINGS, max_skew=LENGTH + 1)
    for cid, (a, b) in consists.items():
        for (ra, ta), (rb, tb) in zip(reports[a], reports[b]):
            eng.ingest(a, ra, ta)
            eng.ingest(b, rb, tb)
    return eng, sink


def by_source(sink: Recorder) -> dict:
    out = defaultdict(list)
    for kind, name, source, time_ms, _ in sink.calls:
        out[source].append((kind, name, time_ms))
    return out


def reference(consists, reports):
    """Straight from the pairs: abnormal evaluations per check, and the expected raise/clear times."""
    totals = dict.fromkeys(CHECKS, 0)
    expected = defaultdict(list)
    for cid, (a, b) in consists.items():
        runs = {code: [0, 0, False] for code in CHECKS}  # abnormal run, normal run, active
        for (ra, ta), (rb, tb) in zip(reports[a], reports[b]):
            for code, bad in abnormal_checks(cid, (a, b), ra, rb).items():
                r = runs[code]
                if bad:
                    totals[code] += 1
                    r[0], r[1] = r[0] + 1, 0
                    if r[0] == SETTINGS.raise_after and not r[2]:
                        r[2] = True
                        expected[(f"consist {cid}", code)].append(("raise", max(ta, tb)))
                else:
                    r[0], r[1] = 0, r[1] + 1
                    if r[1] == SETTINGS.clear_after and r[2]:
                        r[2] = False
                        expected[(f"consist {cid}", code)].append(("clear", max(ta, tb)))
    return totals, expected


def check_against_oracle(eng, sink, consists, reports):
    o_eng, o_sink = oracle(consists, reports)
    totals, expected = reference(consists, reports)
    assert eng.evaluations.get() == o_eng.evaluations.get() == CONSISTS * LENGTH
    got_totals = eng.totals()
    assert got_totals == o_eng.totals()
    assert got_totals["abnormal_evaluations"] == {COUNTER_NAMES[c]: n for c, n in totals.items()}
    assert all(sum(v.get() for v in (c.order_violations, c.skew_dropped)) == 0 for c in eng.consists.values())
    # each consist's calls, in the order it made them, equal the oracle's
    assert by_source(sink) == by_source(o_sink)
    # exactly one raise and one clear per episode, at the reference's evaluation; raises alternate with clears
    got = defaultdict(list)
    for kind, name, source, time_ms, _ in sink.calls:
        if name in CHECKS:
            got[(source, name)].append((kind, time_ms))
    assert got == expected
    for seq in got.values():
        assert [k for k, _ in seq] == ["raise", "clear"] * (len(seq) // 2) + ["raise"] * (len(seq) % 2)
    assert sum(len(v) for v in expected.values()) > CONSISTS  # the data really has episodes
    assert [eng.consist_snapshot(c) for c in eng.consists.values()] == \
           [o_eng.consist_snapshot(c) for c in o_eng.consists.values()]


def never_before_threshold(sink, consists, reports):
    """At each raise, the raise_after evaluations ending there were all abnormal for that check."""
    for kind, name, source, time_ms, _ in sink.calls:
        if kind != "raise" or name not in CHECKS:
            continue
        cid = int(source.split()[1])
        a, b = consists[cid]
        pairs = list(zip(reports[a], reports[b]))
        k = next(i for i, ((_, ta), (_, tb)) in enumerate(pairs) if max(ta, tb) == time_ms)
        assert k + 1 >= SETTINGS.raise_after
        window = pairs[k + 1 - SETTINGS.raise_after:k + 1]
        assert all(abnormal_checks(cid, (a, b), ra, rb)[name] for (ra, _), (rb, _) in window)


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many more thread switches than normal: interleavings vary a lot
    yield
    sys.setswitchinterval(old)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_interleavings_equal_the_single_threaded_oracle(seed, fast_switching):
    consists, reports = make_line(seed)
    rng = random.Random(seed * 7919)
    sink = Recorder()
    eng = CouplingEngine(consists, sink, SETTINGS, max_skew=LENGTH + 1)
    # every train to one random thread (its reports stay in order there); each thread interleaves its trains randomly
    work = [[] for _ in range(THREADS)]
    for train in reports:
        work[rng.randrange(THREADS)].append(train)
    plans = []
    for trains in work:
        order = [t for t in trains for _ in range(LENGTH)]
        rng.shuffle(order)
        plans.append(order)
    start = threading.Barrier(THREADS)

    def body(order):
        nxt = defaultdict(int)
        start.wait()
        for train in order:
            r, t = reports[train][nxt[train]]
            nxt[train] += 1
            eng.ingest(train, r, t)

    threads = [threading.Thread(target=body, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_against_oracle(eng, sink, consists, reports)
    never_before_threshold(sink, consists, reports)


def test_worker_pool_of_8_equals_the_oracle(fast_switching):
    consists, reports = make_line(3)
    sink = Recorder()
    eng = CouplingEngine(consists, sink, SETTINGS, max_skew=LENGTH + 1)
    pool = CouplingWorkers(eng, THREADS, high_water=10 ** 9)
    pool.start()
    rng = random.Random(5)
    trains = list(reports)
    for k in range(LENGTH):  # one submitter, as the UDP loop; trains in a random order each round
        rng.shuffle(trains)
        for train in trains:
            r, t = reports[train][k]
            assert pool.submit(train, r, t)
    assert pool.stop()
    stats = pool.stats()
    assert sum(w["reports"] for w in stats) == len(reports) * LENGTH
    assert sum(w["evaluations"] for w in stats) == CONSISTS * LENGTH
    assert all(w["queue_depth"] == 0 and w["errors"] == 0 for w in stats)
    assert not pool.submit(trains[0], reports[trains[0]][0][0], 0)  # stopped: refused, counted
    assert sum(w["dropped"] for w in pool.stats()) == 1
    check_against_oracle(eng, sink, consists, reports)
