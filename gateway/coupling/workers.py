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

The compiled UDP step (``railcodecs._core.TrainBatch``) hands over one recvmmsg batch at a time
instead (:meth:`CouplingWorkers.submit_batch`): the TRAIN_STATUS reports of consist members as one
bytes object of fixed records, queued once to each worker that has a report in it (the worker
builds the TrainStatus of its own trains' records, in order), and, per worker, how many reports of
trains in no consist the batch accepted: those are counted here (``unconfigured``), as ``ingest``
would count them, without a queue hop or a TrainStatus.

Each worker has its own ``queue.SimpleQueue`` (a C deque with one lock: the
cheapest correct hand-off in CPython, no ``task_done`` bookkeeping). A queue
is bounded by ``high_water`` items (a report, or a batch's records: at most one recvmmsg batch
of reports): above it, ``submit`` drops the report (``submit_batch`` the worker's part of the batch)
and counts it, so a stalled worker cannot eat the gateway's memory.

Threading: ``submit`` and ``submit_batch`` from the UDP loop thread (any single producer per train);
``start`` / ``stop`` from the thread that owns the gateway's life; ``stats``
and ``pending`` from any thread. ``stop`` drains: every report submitted before it is ingested.
"""
from __future__ import annotations

import logging
import queue
import struct
import threading

from railcodecs.train_messages import TrainStatus

log = logging.getLogger("railgate.coupling")

HIGH_WATER = 10_000
_STOP = object()
_BATCH = object()   # first item of a queued submit_batch part: (_BATCH, records, now_ms)
#: a record of submit_batch: u16 train, u64 sender time_ms, the 36-byte TRAIN_STATUS payload
RECORD = struct.Struct(">HQ36s")


class _Worker:
    __slots__ = ("index", "queue", "thread", "reports", "evaluations", "dropped", "errors", "unconfigured",
                 "submitted")

    def __init__(self, index: int) -> None:
        self.index = index
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None
        # each written by one thread only (reports/evaluations/errors: the worker; dropped, unconfigured (the
        # reports of trains in no consist counted by submit_batch) and submitted (the reports queued to
        # this worker, counted before the put): the submitter)
        self.reports = self.evaluations = self.dropped = self.errors = self.unconfigured = self.submitted = 0


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
        w.submitted += 1
        w.queue.put((train_id, report, time_ms, now_ms))
        return True

    @property
    def worker_count(self) -> int:
        """Workers; a train's reports go to worker ``train_id % worker_count``. Any thread."""
        return len(self._workers)

    def paired_trains(self) -> frozenset:
        """The trains whose reports the engine pairs (the others are only counted). Any thread."""
        return self.engine.paired_trains()

    def submit_batch(self, records: bytes, counts, now_ms: int) -> None:
        """One recvmmsg batch's accepted TRAIN_STATUS reports, all received at ``now_ms``.

        ``records``: :data:`RECORD` records of the trains in :meth:`paired_trains`, in arrival order;
        ``counts[i]``: how many of them are worker i's, ``counts[worker_count + i]``: how many reports
        of trains in no consist worker i would have been handed (counted here, as ``ingest`` counts
        them: ``unconfigured``). A worker stopped or over its high water drops its part, counted.
        The UDP loop thread (the one producer of every train's reports)."""
        n = len(self._workers)
        for w in self._workers:
            mine, unconfigured = counts[w.index], counts[n + w.index]
            if not (mine or unconfigured):
                continue
            if self._stopped or w.queue.qsize() >= self.high_water:
                w.dropped += mine + unconfigured
                continue
            if unconfigured:
                w.unconfigured += unconfigured
                self.engine.unconfigured.add(unconfigured)
            if mine:
                w.submitted += mine
                w.queue.put((_BATCH, records, now_ms))

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
            if item[0] is _BATCH:
                self._run_records(w, item[1], item[2])
                continue
            try:
                w.evaluations += ingest(*item)
            except Exception:  # a bad report must not stop the worker (and every train hashed to it)
                w.errors += 1
                log.exception("coupling worker %d: report from train %s failed", w.index, item[0])
            w.reports += 1

    def _run_records(self, w: _Worker, records: bytes, now_ms: int) -> None:
        """This worker's records of one batch (see :meth:`submit_batch`), in order. Worker thread."""
        n, ingest = len(self._workers), self.engine.ingest
        for train_id, time_ms, payload in RECORD.iter_unpack(records):
            if train_id % n != w.index:
                continue
            try:
                w.evaluations += ingest(train_id, TrainStatus.unpack(payload), time_ms, now_ms)
            except Exception:  # as _run: a bad report must not stop the worker
                w.errors += 1
                log.exception("coupling worker %d: report from train %s failed", w.index, train_id)
            w.reports += 1

    def pending(self) -> int:
        """Reports queued to the workers and not yet ingested (one being ingested included); 0 when every
        report submitted so far has been through ``engine.ingest``. Read-only, any thread (a snapshot: it
        only stays 0 while nothing is submitted)."""
        total = 0
        for w in self._workers:
            done = w.reports        # read before submitted: a report counted done was counted submitted
            total += w.submitted - done
        return total

    def stats(self) -> list[dict]:
        """Per worker: queue depth (items), reports ingested (those of trains in no consist included, however
        handed over), evaluations run, drops, errors. Any thread."""
        return [{"worker": w.index, "queue_depth": w.queue.qsize(), "reports": w.reports + w.unconfigured,
                 "evaluations": w.evaluations, "dropped": w.dropped, "errors": w.errors}
                for w in self._workers]
