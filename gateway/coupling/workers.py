"""Coupling worker threads: take TRAIN_STATUS reports off the UDP loop and feed
the coupling engine (:mod:`gateway.coupling.engine`).

::

    UDP loop thread ── submit(train, report, time_ms, now_ms) ──▶ queue[train % workers] ──▶ coupling-N thread
                                                                                             engine.ingest(...)

A train always goes to the same worker (``train_id % workers``), so its
reports are ingested in arrival order by one thread: the engine's contract.
``time_ms`` is the sender's clock from the frame header (the engine pairs by
it), ``now_ms`` the gateway's receive time.
Consecutive train ids (a consist's two cars, 1025 and 1026) land on different
workers, so a pair is usually completed by whichever of the two threads gets
its report second.

Each worker has its own ``queue.SimpleQueue`` (a C deque with one lock: the
cheapest correct hand-off in CPython, no ``task_done`` bookkeeping). A queue
is bounded by ``high_water`` reports: above it, ``submit`` drops the report
and counts it, so a stalled worker cannot eat the gateway's memory.

Threading: ``submit`` from the UDP loop thread (any single producer per train);
``start`` / ``stop`` from the thread that owns the gateway's life; ``stats``
from any thread. ``stop`` drains: every report submitted before it is ingested.
"""
from __future__ import annotations

import logging
import queue
import threading

log = logging.getLogger("railgate.coupling")

HIGH_WATER = 10_000
_STOP = object()


class _Worker:
    __slots__ = ("index", "queue", "thread", "reports", "evaluations", "dropped", "errors")

    def __init__(self, index: int) -> None:
        self.index = index
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        # each written by one thread only (reports/evaluations/errors: the worker; dropped: the submitter)
        self.reports = self.evaluations = self.dropped = self.errors = 0


class CouplingWorkers:
    """A fixed pool of worker threads, one queue each, trains hashed to workers by id."""

    def __init__(self, engine, workers: int = 4, *, high_water: int = HIGH_WATER) -> None:
        if workers < 1:
            raise ValueError(f"coupling workers: expected at least 1, got {workers}")
        self.engine, self.high_water = engine, high_water
        self._workers = [_Worker(i) for i in range(workers)]
        self._running = False
        self._stopped = False

    def start(self) -> None:
        """Start the threads. Owner thread, once."""
        if self._running or self._stopped:
            raise RuntimeError("coupling workers: start() once, before stop()")
        self._running = True
        for w in self._workers:
            w.thread = threading.Thread(target=self._run, args=(w,), name=f"coupling-{w.index}", daemon=True)
            w.thread.start()

    def submit(self, train_id: int, report, time_ms: int, now_ms: int) -> bool:
        """Queue one report; False if dropped (pool stopped, or the worker's queue over its high water).

        The producer thread of that train (the UDP loop thread). Cost: one modulo, one qsize, one put.
        """
        w = self._workers[train_id % len(self._workers)]
        if self._stopped or w.queue.qsize() >= self.high_water:
            w.dropped += 1
            return False
        w.queue.put((train_id, report, time_ms, now_ms))
        return True

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Ingest everything already queued, then end the threads; True if all ended in time. Owner thread."""
        if self._stopped:
            return True
        self._stopped = True
        for w in self._workers:
            w.queue.put(_STOP)
        ok = True
        for w in self._workers:
            if w.thread is not None:
                w.thread.join(timeout_s)
                ok = ok and not w.thread.is_alive()
        self._running = False
        return ok

    def _run(self, w: _Worker) -> None:
        get, ingest = w.queue.get, self.engine.ingest
        while True:
            item = get()
            if item is _STOP:
                return
            try:
                w.evaluations += ingest(*item)
            except Exception:  # a bad report must not stop the worker (and every train hashed to it)
                w.errors += 1
                log.exception("coupling worker %d: report from train %s failed", w.index, item[0])
            w.reports += 1

    def stats(self) -> list[dict]:
        """Per worker: queue depth (reports), reports ingested, evaluations run, drops, errors. Any thread."""
        return [{"worker": w.index, "queue_depth": w.queue.qsize(), "reports": w.reports,
                 "evaluations": w.evaluations, "dropped": w.dropped, "errors": w.errors}
                for w in self._workers]
