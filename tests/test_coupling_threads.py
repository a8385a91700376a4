"""Coupling invariants under real threads: 8 threads, thousands of consists, random interleavings,
random datagram loss, duplicates and late reports.

Every run is compared with a single-threaded engine fed the same per-train report
order (in another interleaving), and with a reference taken straight from the pairs
that the pairing rule restated as set arithmetic (``coupling_helpers.model_pairs``) gives.
"""
from __future__ import annotations

import itertools
import random
import sys
import threading
from collections import defaultdict

import pytest
from coupling_helpers import (CPD, CPL, DCP, DEC, MASTER, NONE, SLAVE, WINDOW_MS, Recorder, at, model_pairs,
                              periodic_times, report)

from gateway.coupling.engine import CHECKS, COUNTER_NAMES, CouplingEngine, abnormal_checks
from gateway.coupling.settings import CouplingSettings
from gateway.coupling.workers import CouplingWorkers

THREADS = 8
CONSISTS = 2000
WINDOWS = 16     # report windows per train (3.2 s at 5 Hz)
LOSS = 0.08      # datagrams lost per train
DUPLICATE = 0.04  # a second report in the same window (it must lose to the first)
LATE = 0.03      # a report stamped two windows back (it must be dropped)
SETTINGS = CouplingSettings(raise_after=3, clear_after=2, confirm_evaluations=2)
KINDS = ("coupled", "double_master", "double_slave", "mismatch", "coupling", "decoupling", "decoupled")


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
    """consists, and per train its reports in order as (report, time_ms, now_ms).

    Each window has a kind (runs of 1..5 windows) that both trains report; each
    train reports at 5 Hz with its own phase, loses datagrams at random, and now
    and then sends a duplicate (another kind, later in the window) or a late
    report (two windows back). now_ms = time_ms + 1..20 ms of network delay.
    """
    rng = random.Random(seed)
    consists, reports = {}, {}
    for i in range(CONSISTS):
        cid, a, b = i + 1, 10_000 + 2 * i, 10_001 + 2 * i
        consists[cid] = (a, b)
        kinds = []
        while len(kinds) < WINDOWS:
            kinds += [rng.choice(KINDS)] * rng.randint(1, 5)
        for side, train in enumerate((a, b)):
            seq = []
            for bucket, t in periodic_times(rng, WINDOWS, loss=LOSS):
                seq.append((_pair_for(kinds[bucket], a, b, cid)[side], t, t + rng.randint(1, 20)))
                if rng.random() < DUPLICATE:
                    t2 = t + rng.randint(1, 20)
                    seq.append((_pair_for(rng.choice(KINDS), a, b, cid)[side], t2, t2 + rng.randint(1, 20)))
                if bucket >= 2 and rng.random() < LATE:
                    t3 = at(bucket - 2, rng.randint(0, WINDOW_MS - 1))
                    seq.append((_pair_for(rng.choice(KINDS), a, b, cid)[side], t3, t + 25))
            reports[train] = seq
    return consists, reports


def oracle(consists, reports):
    """The same engine, one thread, the two trains of a consist strictly alternating."""
    sink = Recorder()
    eng = CouplingEngine(consists, sink, SETTINGS, max_pending=WINDOWS * 3)
    for a, b in consists.values():
        for ia, ib in itertools.zip_longest(reports[a], reports[b]):
            for train, item in ((a, ia), (b, ib)):
                if item is not None:
                    eng.ingest(train, *item)
    return eng, sink


def by_source(sink: Recorder) -> dict:
    out = defaultdict(list)
    for kind, name, source, time_ms, _ in sink.calls:
        out[source].append((kind, name, time_ms))
    return out


def reference(consists, reports):
    """From the model's pairs: evaluations, abnormal evaluations per check, the expected raise/clear
    times, and the pairing counters per consist."""
    totals = dict.fromkeys(CHECKS, 0)
    expected, counters, evaluations = defaultdict(list), {}, 0
    for cid, (a, b) in consists.items():
        pairs, counters[cid] = model_pairs(reports[a], reports[b])
        evaluations += len(pairs)
        runs = {code: [0, 0, False] for code in CHECKS}  # abnormal run, normal run, active
        for _, ra, rb, now_ms in pairs:
            for code, bad in abnormal_checks(cid, (a, b), ra, rb).items():
                r = runs[code]
                if bad:
                    totals[code] += 1
                    r[0], r[1] = r[0] + 1, 0
                    if r[0] == SETTINGS.raise_after and not r[2]:
                        r[2] = True
                        expected[(f"consist {cid}", code)].append(("raise", now_ms))
                else:
                    r[0], r[1] = 0, r[1] + 1
                    if r[1] == SETTINGS.clear_after and r[2]:
                        r[2] = False
                        expected[(f"consist {cid}", code)].append(("clear", now_ms))
    return evaluations, totals, expected, counters


def check_against_oracle(eng, sink, consists, reports):
    o_eng, o_sink = oracle(consists, reports)
    evaluations, totals, expected, counters = reference(consists, reports)
    assert eng.evaluations.get() == o_eng.evaluations.get() == evaluations
    got_totals = eng.totals()
    assert got_totals == o_eng.totals()
    assert got_totals["abnormal_evaluations"] == {COUNTER_NAMES[c]: n for c, n in totals.items()}
    # the pairing counters, consist by consist, are the model's; nothing overflowed, no claim failed
    for c in eng.consists.values():
        got = eng.consist_snapshot(c)["counters"]
        want = counters[c.id]
        assert (got["unpaired"], got["late"], got["duplicate"], got["reports"]) == \
               (want["unpaired"], want["late"], want["duplicate"], want["reports"]), c.id
        assert got["overflow"] == got["order_violations"] == 0
    # the data really exercises every rule
    for key in ("unpaired", "late", "duplicate"):
        assert sum(v[key] for v in counters.values()) > CONSISTS // 10, key
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
        pairs, _ = model_pairs(reports[a], reports[b])
        k = next(i for i, p in enumerate(pairs) if p[3] == time_ms)  # windows are 200 ms apart: unique
        assert k + 1 >= SETTINGS.raise_after
        window = pairs[k + 1 - SETTINGS.raise_after:k + 1]
        assert all(abnormal_checks(cid, (a, b), ra, rb)[name] for _, ra, rb, _ in window)


@pytest.fixture
def fast_switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # many more thread switches than normal: interleavings vary a lot
    yield
    sys.setswitchinterval(old)


@pytest.mark.parametrize("seed", [1, 2])
def test_random_interleavings_with_loss_equal_the_single_threaded_oracle(seed, fast_switching):
    consists, reports = make_line(seed)
    rng = random.Random(seed * 7919)
    sink = Recorder()
    eng = CouplingEngine(consists, sink, SETTINGS, max_pending=WINDOWS * 3)
    # every train to one random thread (its reports stay in order there); each thread interleaves its trains randomly
    work = [[] for _ in range(THREADS)]
    for train in reports:
        work[rng.randrange(THREADS)].append(train)
    plans = []
    for trains in work:
        order = [t for t in trains for _ in reports[t]]
        rng.shuffle(order)
        plans.append(order)
    start = threading.Barrier(THREADS)

    def body(order):
        nxt = defaultdict(int)
        start.wait()
        for train in order:
            item = reports[train][nxt[train]]
            nxt[train] += 1
            eng.ingest(train, *item)

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
    eng = CouplingEngine(consists, sink, SETTINGS, max_pending=WINDOWS * 3)
    pool = CouplingWorkers(eng, THREADS, high_water=10 ** 9)
    pool.start()
    rng = random.Random(5)
    trains = list(reports)
    longest = max(len(seq) for seq in reports.values())
    for k in range(longest):  # one submitter, as the UDP loop; trains in a random order each round
        rng.shuffle(trains)
        for train in trains:
            if k < len(reports[train]):
                assert pool.submit(train, *reports[train][k])
    assert pool.stop()
    stats = pool.stats()
    assert sum(w["reports"] for w in stats) == sum(len(seq) for seq in reports.values())
    assert sum(w["evaluations"] for w in stats) == reference(consists, reports)[0]
    assert all(w["queue_depth"] == 0 and w["errors"] == 0 for w in stats)
    assert not pool.submit(trains[0], reports[trains[0]][0][0], 0, 0)  # stopped: refused, counted
    assert sum(w["dropped"] for w in pool.stats()) == 1
    check_against_oracle(eng, sink, consists, reports)
