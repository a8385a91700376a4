"""Pairing by the sender's report time: lost datagrams, duplicates, late reports, bounded waiting."""
from __future__ import annotations

import pytest
from coupling_helpers import CPD, MASTER, SLAVE, WINDOW_MS, Recorder, at, model_pairs, report

from gateway.coupling.engine import DOUBLE_MASTER, CouplingEngine
from gateway.coupling.settings import CouplingSettings

A, B, CID = 1025, 1026, 9
SRC = f"consist {CID}"
RECV_MS = 7  # network delay: now_ms = time_ms + RECV_MS
#: raise and clear on a single evaluation, so every pair formed shows in the sink
EVERY_PAIR = CouplingSettings(raise_after=1, clear_after=1, confirm_evaluations=1)


def roles(bucket: int) -> tuple[int, int]:
    """Master and slave swap every window; in windows 6 and 7 both trains claim master.

    A pairing shifted by one report combines master/master or slave/slave in
    every window, so it would raise at once.
    """
    if bucket in (6, 7):
        return MASTER, MASTER
    return (MASTER, SLAVE) if bucket % 2 == 0 else (SLAVE, MASTER)


def status(train: int, role: int):
    return report(CPD, role, B if train == A else A, CID)


def sends(lost: dict[int, set[int]], buckets: int = 10, b_first: bool = False):
    """Both trains' reports, window by window, in ingest order: [(train, report, time_ms, now_ms)]."""
    out = []
    for b in range(buckets):
        window = []
        for train, role, offset in ((A, roles(b)[0], 40), (B, roles(b)[1], 120)):
            if b not in lost.get(train, ()):
                t = at(b, offset)
                window.append((train, status(train, role), t, t + RECV_MS))
        out += window[::-1] if b_first else window
    return out


def run(items, engine=None):
    sink = Recorder()
    engine = engine or CouplingEngine({CID: (A, B)}, sink, EVERY_PAIR)
    done = [engine.ingest(*item) for item in items]
    return engine, engine.sink, done


def of_train(items, train):
    return [(r, t, now) for tr, r, t, now in items if tr == train]


@pytest.mark.parametrize("loser", [A, B])
@pytest.mark.parametrize("b_first", [False, True])
def test_a_lost_datagram_costs_one_pair_and_later_pairs_combine_same_window_reports(loser, b_first):
    items = sends({loser: {3}}, b_first=b_first)
    engine, sink, done = run(items)
    # windows 0..9 but 3: nine pairs, each from one window; the partner's report of window 3 is unpaired
    assert sum(done) == 9 and engine.evaluations.get() == 9
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert (c["unpaired"], c["late"], c["duplicate"], c["overflow"], c["order_violations"]) == (1, 0, 0, 0, 0)
    assert c["last_bucket"] == at(9) // WINDOW_MS and c["waiting"] == [0, 0]
    # only the real double master (windows 6, 7) raises: no shifted master/master or slave/slave pair
    # was formed; each call carries the later receive time of its own window (B's, 120 ms into it)
    assert [(k, name, src, t) for k, name, src, t, _ in sink.calls] == [
        ("emit", "CONSIST_COUPLED", SRC, at(0, 120) + RECV_MS),
        ("raise", DOUBLE_MASTER, SRC, at(6, 120) + RECV_MS),
        ("clear", DOUBLE_MASTER, SRC, at(8, 120) + RECV_MS)]
    pairs, counts = model_pairs(of_train(items, A), of_train(items, B))
    assert [p[0] - at(0) // WINDOW_MS for p in pairs] == [0, 1, 2, 4, 5, 6, 7, 8, 9]
    assert counts["unpaired"] == c["unpaired"] and counts["reports"] == c["reports"]


def test_lost_datagrams_on_both_trains_and_a_long_gap():
    items = sends({A: {1, 5, 6}, B: {2, 6, 7, 8}}, buckets=12)
    engine, sink, done = run(items)
    pairs, counts = model_pairs(of_train(items, A), of_train(items, B))
    assert [p[0] - at(0) // WINDOW_MS for p in pairs] == [0, 3, 4, 9, 10, 11] and sum(done) == 6
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert c["unpaired"] == counts["unpaired"] == 5  # A's 2, 7, 8 and B's 1, 5 (6: lost on both, no report)
    assert c["evaluations"] == 6 and not sink.of("raise")  # windows 6, 7: no pair, so no double master either


@pytest.mark.parametrize("partner_between", [False, True])
def test_duplicate_in_one_window_first_report_wins_whatever_the_timing(partner_between):
    """A's second report of window 5 (slave) is dropped whether B's report came before it or after."""
    first, second = (A, report(CPD, MASTER, B, CID), at(5, 20), at(5, 27)), (A, report(CPD, SLAVE, B, CID),
                                                                             at(5, 180), at(5, 187))
    partner = (B, report(CPD, SLAVE, A, CID), at(5, 100), at(5, 107))
    order = [first, partner, second] if partner_between else [first, second, partner]
    engine, sink, done = run(order)
    assert done == ([0, 1, 0] if partner_between else [0, 0, 1])
    snap = engine.consist_snapshot(engine.consists[CID])
    assert snap["counters"]["duplicate"] == 1 and snap["counters"]["evaluations"] == 1
    assert snap["roles"] == ["master", "slave"]  # the accepted report, not the dropped one
    assert sink.of("raise") == [] and [c[3] for c in sink.of("emit")] == [at(5, 107)]


def test_late_reports_are_dropped_even_above_the_last_evaluated_window():
    items = [(tr, report(CPD, MASTER if tr == A else SLAVE, B if tr == A else A, CID), at(b, off), at(b, off) + 1)
             for b in (5, 6, 7) for tr, off in ((A, 30), (B, 60))]
    engine, sink, done = run(items)
    assert sum(done) == 3
    ra, rb = report(CPD, MASTER, B, CID), report(CPD, SLAVE, A, CID)
    assert engine.ingest(A, ra, at(6, 90), at(7, 150)) == 0         # older than the last evaluated window: late
    assert engine.ingest(A, ra, at(9, 30), at(9, 31)) == 0          # waits for B
    assert engine.ingest(A, ra, at(8, 30), at(9, 40)) == 0          # A's clock went back: late, though 8 > 7
    assert engine.ingest(B, rb, at(8, 60), at(8, 61)) == 0          # A is past window 8: never pairs
    assert engine.ingest(B, rb, at(9, 60), at(9, 61)) == 1
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert (c["late"], c["unpaired"], c["evaluations"], c["reports"]) == (2, 1, 4, [4, 5])
    assert c["last_bucket"] == at(9) // WINDOW_MS
    seq = items + [(A, ra, at(6, 90), 0), (A, ra, at(9, 30), 0), (A, ra, at(8, 30), 0), (B, rb, at(8, 60), 0),
                   (B, rb, at(9, 60), 0)]
    pairs, counts = model_pairs(of_train(seq, A), of_train(seq, B))
    assert len(pairs) == 4 and (counts["late"], counts["unpaired"]) == (2, 1)


def test_waiting_reports_are_bounded_and_discarded_once_the_partner_moves_on():
    sink = Recorder()
    engine = CouplingEngine({CID: (A, B)}, sink, EVERY_PAIR, max_pending=4)
    ra, rb = report(CPD, MASTER, B, CID), report(CPD, SLAVE, A, CID)
    assert [engine.ingest(A, ra, at(b), at(b) + 1) for b in range(10)] == [0] * 10  # B silent
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert c["waiting"] == [4, 0] and c["overflow"] == 6                            # windows 6..9 wait
    assert engine.ingest(B, rb, at(3, 90), at(3, 91)) == 0   # A's 3 was dropped as overflow: no pair
    assert engine.ingest(B, rb, at(8, 90), at(8, 91)) == 1   # pairs 8; A's 6 and 7 can never pair now
    assert engine.ingest(B, rb, at(9, 90), at(9, 91)) == 1
    assert engine.ingest(A, ra, at(10), at(10) + 1) == 0
    assert engine.ingest(B, rb, at(12, 90), at(12, 91)) == 0  # A's 10 discarded, B's 12 waits
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert (c["overflow"], c["unpaired"], c["evaluations"], c["waiting"]) == (6, 4, 2, [0, 1])
    with pytest.raises(ValueError, match="max_pending"):
        CouplingEngine({CID: (A, B)}, sink, max_pending=0)


def test_pair_window_setting_and_unconfigured_trains():
    sink = Recorder()
    engine = CouplingEngine({CID: (A, B)}, sink, CouplingSettings(pair_window_ms=1000))
    ra, rb = report(CPD, MASTER, B, CID), report(CPD, SLAVE, A, CID)
    t = 1_700_000_001_000
    assert engine.ingest(A, ra, t + 50, t + 60) == 0
    assert engine.ingest(B, rb, t + 950, t + 960) == 1       # 900 ms apart, one 1 s window
    assert engine.ingest(A, ra, t + 1000, t + 1010) == 0
    assert engine.ingest(B, rb, t + 999, t + 1020) == 0      # B's second report of the first window
    assert engine.ingest(B, rb, t - 5, t + 1030) == 0        # B's clock went back a window: late
    assert engine.totals()["pair_window_ms"] == 1000
    c = engine.consist_snapshot(engine.consists[CID])["counters"]
    assert (c["duplicate"], c["late"], c["evaluations"], c["waiting"]) == (1, 1, 1, [1, 0])
    assert engine.ingest(4242, ra, t, t) == 0 and engine.unconfigured.get() == 1
