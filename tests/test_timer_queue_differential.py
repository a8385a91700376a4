"""TimerQueue: the compiled twin (``gateway.net._timers``) against the pure reference, step by step.

Two queues, one per implementation, each with its own world of handles and callbacks, are given
the same seeded stream of operations: add (one-shot and repeating, equal deadlines on a coarse
grid, overdue deadlines, a handle's exact deadline, handles made elsewhere and ``add_handle``\\ d,
some cancelled first, some belonging to another queue), cancel from the loop thread (live, already
cancelled and already run handles), ``run_due`` at non-decreasing times (the same time again, a
small step, a deadline exactly, a repeating timer's k-th beat exactly, jumps of several intervals),
``next_timeout``, ``compact``, ``len`` and ``heap_size``. The callbacks record ``(id, now)`` and
some raise, cancel other handles (those due in the same pass among them), cancel themselves, or add
new timers (overdue ones too). After every step both worlds must be equal: the return value (or
the exception), the callbacks run and their order, the counters, ``len``, ``heap_size``,
``_cancelled``, ``stats()``, the error log records, and every live handle's ``when``,
``cancelled`` and ``_in_heap``.

The end of the module holds direct checks of what the stream does not reach (the pure queue is
checked the same way): the garbage collector frees a dropped queue with pending timers, the
cancelled count never goes below zero, ``cancel`` from another thread, a beat count too large for
a double, and an infinite clock.
"""
from __future__ import annotations

import gc
import logging
import random
import threading
import weakref

import pytest

from gateway.net.timer_queue import COMPACT_MIN, TimerHandle, TimerQueue as PureTimerQueue

try:
    from gateway.net._timers import TimerQueue as CompiledTimerQueue
except ImportError:  # not built (no C compiler at install time)
    CompiledTimerQueue = None

NOT_BUILT = "gateway.net._timers is not built (no C compiler at install time): no compiled TimerQueue to check"
needs_compiled = pytest.mark.skipif(CompiledTimerQueue is None, reason=NOT_BUILT)

#: repeat intervals: None (one-shot) most often; grid values (ties), and ones that round (0.1, 1/3)
INTERVALS = (None, None, None, None, None, 0.25, 0.5, 1.0, 0.1, 1 / 3, 0.3, 2.5)
#: where a callback puts a new timer, from its now: overdue, now, on the grid, off it
CHILD_DELTAS = (-0.5, 0.0, 0.0, 0.25, 0.5, 1.0, 0.37)


class _Records(logging.Handler):
    """The queue logger's records: message, exception type and text."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append((record.levelname, record.getMessage(), type(exc).__name__, str(exc)))


class World:
    """One queue and what its callbacks act on: the handles by id and the record of runs."""

    def __init__(self, cls):
        self.q = cls()
        self.other = cls()     # another queue, whose handles the first one must refuse
        self.handles = {}      # id -> handle, every one ever made, in order
        self.live = {}         # id -> handle, not cancelled by us and not a one-shot already run
        self.runs = []         # (id, now) per callback run, in order
        self.fires = {}        # id -> runs so far
        self.now = None        # the time of the operation going on
        self.mid_pass = 0      # handles cancelled by a callback of the pass they were due in

    def add(self, tid, when, interval, behaviour):
        h = self.q.add(when, self.callback(tid, behaviour), interval=interval)
        self.handles[tid] = self.live[tid] = h
        return h

    def make(self, tid, when, interval, behaviour):
        h = TimerHandle(when, self.callback(tid, behaviour), (), interval)
        self.handles[tid] = self.live[tid] = h
        return h

    def cancel(self, tid):
        self.live.pop(tid, None)
        self.handles[tid].cancel()

    def callback(self, tid, behaviour):
        kind, seed, depth = behaviour

        def timer_callback():
            n = self.fires.get(tid, 0) + 1
            self.fires[tid] = n
            self.runs.append((tid, self.now))
            h = self.handles[tid]
            if h.interval is None:
                self.live.pop(tid, None)
            rnd = random.Random(f"{seed}:{n}")
            if kind in ("cancel_others", "cancel_others_and_raise"):
                # the nearest deadlines first: often timers due in this very pass
                near = sorted(self.live, key=lambda i: (self.handles[i].when, i))[:8]
                for other in rnd.sample(near, min(len(near), rnd.randint(1, 3))):
                    o = self.handles[other]
                    if other != tid and o._queue is self.q and not o._in_heap and not o.cancelled:
                        self.mid_pass += 1  # popped for this pass, not run yet: must now be skipped
                    self.cancel(other)
                if kind == "cancel_others_and_raise":
                    raise KeyError(tid)
            elif kind == "cancel_self":
                if n >= seed % 3 + 1:
                    self.cancel(tid)
            elif kind == "add":
                for j in range(rnd.randint(1, 2)):
                    self.add(f"{tid}/{n}.{j}", self.now + rnd.choice(CHILD_DELTAS), rnd.choice(INTERVALS),
                             behaviour_for(rnd, depth + 1))
            elif kind == "raise":
                raise RuntimeError(f"timer {tid} run {n}")
            elif kind == "cancel_and_readd_self":
                self.cancel(tid)
                self.add(f"{tid}/{n}", self.now + rnd.choice(CHILD_DELTAS), h.interval, ("plain", seed, depth + 1))

        return timer_callback

    def state(self):
        q = self.q
        return {"len": len(q), "heap_size": q.heap_size, "cancelled": q._cancelled, "fired": q.fired,
                "missed": q.missed, "errors": q.errors, "compactions": q.compactions, "stats": q.stats(),
                "live": [(tid, h.when, h.cancelled, h._in_heap) for tid, h in self.live.items()]}


def behaviour_for(rnd, depth=0):
    kinds = ["plain"] * 6 + ["raise", "cancel_others", "cancel_others", "cancel_self", "cancel_others_and_raise",
                             "cancel_and_readd_self"]
    if depth < 2:
        kinds += ["add", "add"]
    return rnd.choice(kinds), rnd.randrange(1 << 30), depth


def run_differential(seed: int, steps: int) -> dict:
    """Play ``steps`` random operations on both queues; fail at the first difference. Returns tallies."""
    rnd = random.Random(seed)
    pure, compiled = World(PureTimerQueue), World(CompiledTimerQueue)
    worlds = (pure, compiled)
    records = _Records()
    logger = logging.getLogger("gateway.net.timer_queue")
    logger.addHandler(records)
    tally = {}
    now = 0.0
    ids = iter(range(1 << 62))
    try:
        for step in range(steps):
            op, fn = _operation(rnd, pure, now, ids)
            if op.startswith("run_due"):
                now = fn.now
            tally[op] = tally.get(op, 0) + 1
            results, logged = [], []
            for w in worlds:
                w.now = now
                runs_before, logs_before = len(w.runs), len(records.records)
                try:
                    result = ("returned", fn(w))
                except Exception as exc:  # noqa: BLE001 - compared between the two
                    result = ("raised", type(exc).__name__, str(exc))
                results.append(result)
                logged.append((w.runs[runs_before:], records.records[logs_before:]))
            where = f"seed {seed}, step {step}: {op} at now={now!r}"
            assert results[0] == results[1], where
            assert type(results[0][-1]) is type(results[1][-1]), where  # 0.0 is not 0, None is not 0.0
            assert logged[0] == logged[1], where
            assert pure.state() == compiled.state(), where
    finally:
        logger.removeHandler(records)
    assert pure.runs == compiled.runs
    tally["callbacks run"] = len(pure.runs)
    tally["cancelled mid-pass"] = pure.mid_pass
    tally.update({k: getattr(pure.q, k) for k in ("fired", "missed", "errors", "compactions")})
    return tally


def _operation(rnd, pure, now, ids):
    """One operation as ``(name, fn(world))``; values drawn here so that both worlds get the same."""
    r = rnd.random()
    live = list(pure.live.items())
    if r < 0.28:
        tid = f"t{next(ids)}"
        when = _when(rnd, now, live)
        interval, behaviour = rnd.choice(INTERVALS), behaviour_for(rnd)

        def add(w):
            w.add(tid, when, interval, behaviour)  # the handles differ; their state is compared after

        return "add", add
    if r < 0.30:
        first = next(ids)
        burst = [(f"b{first}.{j}", now + 0.25 * rnd.randint(0, 8), rnd.choice(INTERVALS), behaviour_for(rnd))
                 for j in range(rnd.randint(10, 30))]

        def add_burst(w):
            for args in burst:
                w.add(*args)

        return "add burst", add_burst
    if r < 0.32:
        doomed = [tid for tid, _ in live if rnd.random() < 0.7]

        def cancel_many(w):
            for tid in doomed:
                w.cancel(tid)

        return "cancel many", cancel_many
    if r < 0.355:
        q = pure.q
        size, dead = q.heap_size, q._cancelled
        armed = [tid for tid, h in live if h._in_heap and not h.cancelled and h._queue is q]
        need = size // 2 - dead
        if size % 2 == 0 and size > COMPACT_MIN and 0 <= need < len(armed):
            doomed = rnd.sample(armed, need + 1)

            def cancel_to_half(w):
                # exactly half the heap cancelled: no compaction yet; one more: compaction
                for tid in doomed[:-1]:
                    w.cancel(tid)
                at_half = (w.q.next_timeout(now), w.q.compactions, w.q.heap_size, w.q._cancelled)
                w.cancel(doomed[-1])
                return at_half, (w.q.next_timeout(now), w.q.compactions, w.q.heap_size, w.q._cancelled)

            return "cancel to exactly half, then one more", cancel_to_half
        return "len", lambda w: len(w.q)
    if r < 0.375:
        tid = f"h{next(ids)}"
        when = _when(rnd, now, live)
        interval, behaviour = rnd.choice(INTERVALS), behaviour_for(rnd)
        how = rnd.choice(("plain", "plain", "cancelled first", "of another queue"))

        def add_handle(w):
            h = w.make(tid, when, interval, behaviour)
            if how == "cancelled first":
                w.cancel(tid)
            elif how == "of another queue":
                w.other.add_handle(h)
                w.live.pop(tid)
            w.q.add_handle(h)
            return (h._queue is w.q, h._in_heap)

        return f"add_handle ({how})", add_handle
    if r < 0.48:
        if live and rnd.random() < 0.85:
            tid = rnd.choice(live)[0]
        elif pure.handles:
            tid = rnd.choice(list(pure.handles))  # already cancelled or run, most likely
        else:
            return "len", lambda w: len(w.q)
        return "cancel", lambda w: w.cancel(tid)
    if r < 0.78:
        t, how = _next_now(rnd, now, live)

        def run_due(w):
            return w.q.run_due(t)

        run_due.now = t
        return f"run_due ({how})", run_due
    if r < 0.92:
        t = now + rnd.choice((0.0, 0.0, 0.001, 0.25, -0.1))
        return "next_timeout", lambda w: w.q.next_timeout(t)
    if r < 0.94:
        return "compact", lambda w: w.q.compact()
    if r < 0.97:
        return "heap_size", lambda w: w.q.heap_size
    return "len", lambda w: len(w.q)


def _when(rnd, now, live):
    c = rnd.random()
    if c < 0.4:
        return now + 0.25 * rnd.randint(0, 12)          # the grid: many equal deadlines
    if c < 0.55 and live:
        return rnd.choice(live)[1].when                   # exactly another timer's deadline
    if c < 0.65:
        return now - rnd.choice((0.001, 0.5, 3.0))        # overdue already
    if c < 0.72:
        return now
    return now + rnd.uniform(0.0, 4.0)


def _next_now(rnd, now, live):
    c = rnd.random()
    if c < 0.1:
        return now, "same now"
    if c < 0.35:
        return now + rnd.choice((0.001, 0.01, 0.05)), "small step"
    if c < 0.55:
        return now + 0.25 * rnd.randint(1, 4), "grid step"
    if c < 0.7 and live:
        return max(now, rnd.choice(live)[1].when), "a deadline exactly"
    repeating = [h for _, h in live if h.interval is not None]
    if c < 0.85 and repeating:
        h = rnd.choice(repeating)
        return max(now, h.when + rnd.randint(1, 5) * h.interval), "a repeat's k-th beat exactly"
    if c < 0.98:
        return now + rnd.uniform(2.0, 10.0), "jump of several intervals"
    return now + rnd.uniform(100.0, 1000.0), "long stall"


@needs_compiled
@pytest.mark.parametrize("seed", [1, 2, 3, 20240611])
def test_compiled_queue_matches_the_pure_one_step_by_step(seed):
    tally = run_differential(seed, steps=3000)
    # the stream reached what it is meant to compare
    assert tally["callbacks run"] > 1000 and tally["missed"] > 0 and tally["errors"] > 10
    assert tally["cancelled mid-pass"] > 10 and tally.get("add_handle (of another queue)", 0) > 0
    assert tally["compactions"] > tally.get("compact", 0)  # some by the queue itself (push, next_timeout)
    assert tally.get("cancel to exactly half, then one more", 0) >= 5


# -- what the stream does not reach --------------------------------------------------------------------


@pytest.fixture(params=["pure", "compiled"], ids=["queue:pure", "queue:compiled"])
def queue_cls(request):
    if request.param == "compiled" and CompiledTimerQueue is None:
        pytest.skip(NOT_BUILT)
    return PureTimerQueue if request.param == "pure" else CompiledTimerQueue


def test_a_dropped_queue_and_its_pending_timers_are_freed(queue_cls):
    class Callback:
        def __call__(self):
            pass

    cb = Callback()
    freed = weakref.ref(cb)
    q = queue_cls()
    q.add(5.0, cb, interval=1.0)   # the handle refers to the queue (_queue), the queue to the handle
    q.add(6.0, lambda: None).cancel()
    del cb, q
    gc.collect()
    assert freed() is None


def test_the_cancelled_count_never_goes_below_zero(queue_cls):
    q = queue_cls()
    h = q.add(1.0, lambda: None)
    q.add(2.0, lambda: None)
    h.cancel()
    q._cancelled = 0  # as if a racing cancel's increment had been lost
    assert q.next_timeout(0.0) == pytest.approx(2.0)
    assert q._cancelled == 0 and len(q) == 1 and q.heap_size == 1
    h2 = q.add(3.0, lambda: None)
    h2.cancel()
    q._cancelled = 0
    assert q.run_due(5.0) == 1 and q._cancelled == 0 and len(q) == 0


def test_compaction_starts_past_exactly_half(queue_cls):
    q = queue_cls()
    handles = [q.add(float(i), lambda: None) for i in range(2 * COMPACT_MIN)]
    for h in handles[1:COMPACT_MIN + 1]:  # exactly half; the top stays live (nothing is popped)
        h.cancel()
    assert q.next_timeout(0.0) == 0.0
    assert q.compactions == 0 and q.heap_size == 2 * COMPACT_MIN and len(q) == COMPACT_MIN
    handles[COMPACT_MIN + 1].cancel()
    assert q.next_timeout(0.0) == 0.0
    assert q.compactions == 1 and q.heap_size == COMPACT_MIN - 1 == len(q) and q._cancelled == 0


def test_cancel_from_another_thread_counts_on_the_queue(queue_cls):
    q = queue_cls()
    handles = [q.add(float(i), lambda: None) for i in range(200)]
    t = threading.Thread(target=lambda: [h.cancel() for h in handles[:150]])
    t.start()
    t.join()
    assert q._cancelled == 150 and len(q) == 50 and q.heap_size == 200
    assert q.next_timeout(0.0) == pytest.approx(150.0)  # compacted, then the live top
    assert q.compactions == 1 and q.heap_size == 50 and q._cancelled == 0


def test_add_handle_refuses_a_handle_of_another_queue_and_skips_a_cancelled_one(queue_cls):
    q, other = queue_cls(), queue_cls()
    h = other.add(1.0, lambda: None)
    with pytest.raises(ValueError, match="a timer handle belongs to one queue"):
        q.add_handle(h)
    assert h._queue is other and q.heap_size == 0
    dead = TimerHandle(1.0, lambda: None)
    dead.cancel()
    assert q.add_handle(dead) is dead and dead._queue is q and not dead._in_heap and q.heap_size == 0


def _edge(cls, interval, now):
    q, out = cls(), []
    h = q.add(1.0, out.append, interval=interval, args=("x",))
    try:
        result = ("returned", q.run_due(now))
    except Exception as exc:  # noqa: BLE001 - compared between the two
        result = ("raised", type(exc).__name__, str(exc))
    return result, out, h.when, q.missed, q.fired, len(q), q.heap_size


@needs_compiled
@pytest.mark.parametrize("interval, now", [
    (1e-12, 1e5),            # 1e17 missed beats: more than a double counts exactly
    (0.1, 1.0 + 2 ** 60 * 0.1),
    (1.0, float("inf")),     # math.floor(inf): OverflowError, from either queue
    (1 / 3, 1.0 + 3 * (1 / 3)),
])
def test_rearm_edges_match(interval, now):
    assert _edge(CompiledTimerQueue, interval, now) == _edge(PureTimerQueue, interval, now)
