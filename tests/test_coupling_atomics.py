"""gateway.base.atomics under contention: 8 threads, exact totals, one winner per compare-and-set."""
from __future__ import annotations

import sys
import threading

from gateway.base.atomics import AtomicCounter, AtomicRef

THREADS = 8
ITERATIONS = 20_000


def _run(target, n=THREADS):
    start = threading.Barrier(n)
    results = [None] * n

    def body(i):
        start.wait()
        results[i] = target(i)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(n)]
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch as often as the interpreter allows: races show up at once
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(old)
    return results


def test_increment_and_add_lose_nothing():
    c = AtomicCounter()
    seen = _run(lambda i: [c.increment() for _ in range(ITERATIONS)] + [c.add(3)])
    assert c.get() == THREADS * (ITERATIONS + 3)
    returned = sorted(v for vals in seen for v in vals[:-1])
    # increment() returns each intermediate value once, except those skipped by the 8 add(3)
    assert len(set(returned)) == len(returned) == THREADS * ITERATIONS


def test_compare_and_increment_has_exactly_one_winner_per_value():
    c = AtomicCounter()
    target = THREADS * 2_000

    def body(i):
        wins = 0
        while True:
            v = c.get()
            if v >= target:
                return wins
            wins += c.compare_and_increment(v)

    wins = _run(body)
    assert sum(wins) == target == c.get()


def test_compare_and_set_counter_and_set():
    c = AtomicCounter(5)
    assert not c.compare_and_set(4, 9) and c.get() == 5
    assert c.compare_and_set(5, 9) and c.get() == 9
    c.set(1)
    assert not c.compare_and_increment(0) and c.compare_and_increment(1) and c.get() == 2
    assert repr(c) == "AtomicCounter(2)"


def test_atomic_ref_claim_by_identity_one_winner():
    rounds = 2_000
    refs = [AtomicRef() for _ in range(rounds)]

    def body(i):
        mine = (i,)
        return [k for k, r in enumerate(refs) if r.compare_and_set(None, mine)]

    claimed = _run(body)
    flat = sorted(k for ks in claimed for k in ks)
    assert flat == list(range(rounds))  # every slot claimed, none twice
    for i, ks in enumerate(claimed):
        assert all(refs[k].get() == (i,) for k in ks)


def test_atomic_ref_identity_not_equality():
    a, b = (1, 2), tuple([1, 2])
    r = AtomicRef(a)
    assert a == b and a is not b
    assert not r.compare_and_set(b, "x")
    assert r.compare_and_set(a, "x") and r.get_and_set("y") == "x" and r.get() == "y"
    r.set(None)
    assert r.get() is None
