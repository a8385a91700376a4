"""AlarmService: the alarm thread that owns the engine, the sources and the journal writer.

::

    any thread ── submit(item) ──▶ [pending list, lock] ──swap──▶ alarm thread:
                                                                 sources.feed / engine.apply (every item)
                                                                 engine.tick, sources.tick (every tick_s)
                                                                 journal.append(all events)  one transaction
                                                                 resolve operator futures
                                                                 wake callbacks (relay, history)

A batch is what is queued when the thread wakes (the list is swapped under
the lock, as muduo's ``doPendingFunctors``), so under load many inputs share
one transaction and one fsync (group commit). Three lanes, taken in this
order on every pass:

* ``priority`` (device alarm frames, critical conditions, operator actions):
  all of it, first, applied and journaled in a transaction of its own and
  handed to the relay before the pass's other inputs are applied. It is also
  looked at every ``PEEK_EVERY`` inputs *within* a pass of the other lanes: what
  arrived is taken there, after the pass's events so far are committed (the
  journal's order stays the engine's ``event_seq`` order). A pass of the
  priority lane itself never takes newer priority inputs before its rest: the
  lane's order is a device's raise-then-clear order. A backlog of object changes in a
  flood delays a device alarm by a few inputs and one commit, neither by the
  backlog nor by the pass in progress;
* essential (every other condition and object change: facts that are not
  sent again): at most ``max_batch`` per pass, never refused;
* sheddable (threat samples, info events): the only inputs that may be
  *sampled away* under load, and each one that is is counted in
  ``sampled_away`` by kind. A threat sample is cumulative, so a newer sample
  of the same link replaces a queued one (the window loses a point, not a
  count); info events beyond ``max_pending`` queued are dropped. At most
  ``max_batch`` per pass.

A pass commits what it has applied whenever ``slice_s`` has gone by since its last commit, so
no transaction holds more than about ``slice_s`` of work, which bounds what a priority input
taken within the pass waits for; a pass that finishes sooner is one transaction.

Order is kept within each lane, and every key's inputs stay in one lane (a
condition's raise and clear have the same lane); an operator action applies
to the alarm as its journal has it then.
Operator futures are resolved only after their events are durable. A journal write that fails is retried
every ``retry_s`` until it succeeds or the service stops (the engine has
already moved; dropping the events would lose them).

Threading contracts are on every public method. The engine, the sources and
the writer's Journal connection are used only by the alarm thread.
"""
from __future__ import annotations

import dataclasses

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

from alarms.engine import AlarmEngine
from alarms.journal import Journal
from alarms.model import AlarmEvent, OperatorAction
from alarms.observations import ThreatSample
from alarms.sources import Sources, lane_of

#: essential (and sheddable) inputs per pass. It bounds how long a pass runs, so how long a device alarm
#: that arrives during one waits: in the storm of bench/alarm_bench.py (about 10,000 object changes a
#: second, 1.6 alarm events per input) a pass of 5,000 took about 0.5 s, most of it the journal append
#: of its 8,000 events; a pass of 1,000 takes about a tenth. Group commit still amortises the fsync
#: (0.2-0.7 ms here) over a thousand inputs.
MAX_BATCH = 1_000

#: within a pass, inputs between two looks at the priority lane (and at the clock, for ``slice_s``)
PEEK_EVERY = 16

#: the longest a pass goes without committing (s). In that storm a pass of 1,000 inputs took 150-750 ms
#: with the IO thread busy (bench/results/storm-passes-fc37e67.txt); committing every 50 ms adds a
#: transaction (an fsync, 0.2-0.7 ms) per 50 ms of work, about 1 %.
SLICE_S = 0.05

log = logging.getLogger("railgate.alarms")


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class ServiceStopped(RuntimeError):
    """The alarm service is not running; the input was not taken."""


class _Call:
    """An item whose result goes back to the submitting thread."""

    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable, future: Future) -> None:
        self.fn, self.future = fn, future


class AlarmService:
    """The alarm thread. ``engine_options`` go to :class:`AlarmEngine` (max_active, chatter_..., flood_...)."""

    def __init__(self, journal_path: str, *, gateway_id: int, line: str, tz: str = "UTC",
                 sources: Sources | None = None, engine_options: dict | None = None, tick_s: float = 1.0,
                 max_pending: int = 100_000, max_batch: int = MAX_BATCH, slice_s: float = SLICE_S,
                 retry_s: float = 1.0, clock: Callable[[], int] = wall_ms) -> None:
        self.journal_path = journal_path
        self._engine_args = dict(gateway_id=gateway_id, line=line, tz=tz, **(engine_options or {}))
        self.sources = sources if sources is not None else Sources()
        self.tick_s, self.max_pending, self.retry_s, self.clock = tick_s, max_pending, retry_s, clock
        self.max_batch, self.slice_s = max_batch, slice_s
        self.engine: AlarmEngine | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._pending: list = []
        self._priority: list = []               # taken whole on every pass, before _pending
        self._shed: list = []                   # sheddable info events, after _pending
        self._threats: dict = {}                # link name -> its newest queued ThreatSample
        self._wake: list[Callable[[], None]] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self.stats = {"batches": 0, "appends": 0, "inputs": 0, "events": 0, "max_batch_inputs": 0,
                      "max_batch_events": 0, "preempted": 0, "dropped_queue_full": 0, "input_errors": 0, "append_retries": 0,
                      "last_append_ms": 0.0, "sampled_away": {}}

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> None:
        """Open the journal, restore the engine, start the thread. Raises the open error. Owner thread."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("alarm service: already started")
            self._running = True
        self._thread = threading.Thread(target=self._run, name="alarms", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError(f"alarm service: not ready after {timeout} s (journal {self.journal_path})")
        if self._start_error is not None:
            self._thread.join()
            raise self._start_error

    def stop(self, timeout: float = 10.0) -> None:
        """Refuse new input, drain what is queued into the journal, close it, join. Owner thread."""
        with self._lock:
            self._running = False
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def subscribe(self, wake: Callable[[], None]) -> None:
        """``wake()`` is called in the alarm thread after every append (keep it short). Any thread."""
        with self._lock:
            self._wake = self._wake + [wake]

    # -- input -------------------------------------------------------------------------------------------------

    def submit(self, item, *, priority: bool = False) -> bool:
        """Queue an AlarmInput or an observation (GatewayEvent, ObjectChange, ThreatSample, DeviceAlarmFrame).

        Any thread; never blocks on the engine or the disk. False only when the
        service is stopped. The lane is :func:`alarms.sources.lane_of` the item
        (``priority=True`` forces the priority lane): essential inputs are never
        refused, their rate bounded by the links and devices that produce them;
        sheddable ones (threat samples, info events) are sampled away under load
        as the module doc says, counted in ``sampled_away``.
        """
        lane = "priority" if priority else lane_of(item)
        with self._lock:
            if not self._running:
                return False
            idle = not self._pending and not self._priority and not self._shed and not self._threats
            if lane == "priority":
                self._priority.append(item)
            elif lane == "essential":
                self._pending.append(item)
            elif isinstance(item, ThreatSample):
                older = self._threats.pop(item.link_name, None)
                if older is not None:
                    self._sampled_away("threat_sample")
                    if older.baseline is not None and item.baseline is None:
                        # the older sample's baseline is the link's start or a settled link's last
                        # counters: the newer one replaces its counters, not that point
                        item = dataclasses.replace(item, baseline=older.baseline)
                self._threats[item.link_name] = item
            elif len(self._shed) >= self.max_pending:
                self.stats["dropped_queue_full"] += 1
                self._sampled_away("info_event")
                return True
            else:
                self._shed.append(item)
        if idle:
            # a non-empty queue has had its set() since the alarm thread's last clear(): once per batch
            # (Event.set takes a Condition, ~2 µs, and a flood submits tens of thousands a second)
            self._wakeup.set()
        return True

    def pending(self) -> int:
        """Inputs queued (every lane, ``call`` items included) and not yet taken by the alarm thread. Read-only,
        any thread. 0 does not mean the thread is idle: a pass may still be processing what it took (a ``call``
        queued once this is 0 gets its result in a later pass, so after everything queued before it)."""
        with self._lock:
            return len(self._priority) + len(self._pending) + len(self._shed) + len(self._threats)

    def _sampled_away(self, kind: str) -> None:
        """Count one sheddable input not taken (under ``_lock``)."""
        away = self.stats["sampled_away"]
        away[kind] = away.get(kind, 0) + 1

    def call(self, fn: Callable[[AlarmEngine], object]) -> Future:
        """Run ``fn(engine)`` in the alarm thread; its events (a list of AlarmEvent, if it returns one) are
        journaled first, then the future gets the result or the exception. Any thread."""
        fut: Future = Future()
        with self._lock:
            if not self._running:
                fut.set_exception(ServiceStopped(f"alarm service stopped (journal {self.journal_path})"))
                return fut
            idle = not self._pending and not self._priority and not self._shed and not self._threats
            self._priority.append(_Call(fn, fut))
        if idle:
            self._wakeup.set()
        return fut

    def operate(self, action: OperatorAction) -> Future:
        """An operator action (admin API thread): the future gets its events once durable, or the error
        (UnknownAlarm, IllegalTransition, ValueError) with nothing changed. Any thread."""
        return self.call(lambda engine: engine.apply(action))

    def reconcile(self, conditions: set, now_ms: int) -> Future:
        """Clear the alarms of gateway-observed codes that neither ``conditions`` (the EventLog's
        active conditions, as AlarmKeys) nor a source holds: after a restart, the stale ones restored
        from the journal (``Sources.reconcile``). Future of the events. Any thread."""
        def run(engine: AlarmEngine) -> list[AlarmEvent]:
            events: list[AlarmEvent] = []
            for inp in self.sources.reconcile(engine.condition_keys(), conditions, now_ms):
                events += engine.apply(inp)
            return events + engine.settle_groups(now_ms)
        return self.call(run)

    def snapshot(self) -> Future:
        """Future of ``engine.snapshot()`` taken in the alarm thread (Kafka relay). Any thread."""
        return self.call(lambda engine: engine.snapshot())

    def status(self) -> Future:
        """Future of the engine's status plus the service counters. Any thread."""
        def run(engine: AlarmEngine) -> dict:
            with self._lock:                  # sampled_away is counted by submitting threads
                service = {**self.stats, "sampled_away": dict(self.stats["sampled_away"]),
                           "queued": {"priority": len(self._priority), "essential": len(self._pending),
                                      "sheddable": len(self._shed) + len(self._threats)}}
            return {**engine.status(), "service": service}
        return self.call(run)

    # -- the alarm thread --------------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            journal = Journal(self.journal_path, writer=True)
            engine = self.engine = AlarmEngine(start_seq=journal.last_seq(), **self._engine_args)
            now = self.clock()
            # the table, and the raise/clear history of the last chatter window: chattering survives a restart
            engine.restore(journal.latest_states(), journal.recent(now - engine.chatter_ms), now_ms=now)
        except BaseException as exc:  # reported to start()'s caller
            self._start_error = exc
            with self._lock:
                self._running = False
            self._ready.set()
            return
        self._ready.set()
        next_tick = time.monotonic()
        try:
            while True:
                self._wakeup.wait(max(0.0, next_tick - time.monotonic()))
                self._wakeup.clear()
                with self._lock:
                    urgent, self._priority = self._priority, []
                    batch: list = []
                    more = self._take(batch, self._pending)
                    if self._threats:
                        batch += self._threats.values()
                        self._threats = {}
                    more |= self._take(batch, self._shed)
                    if more:
                        self._wakeup.set()          # the rest in the next pass
                    running = self._running
                tick = time.monotonic() >= next_tick
                if tick:
                    next_tick = time.monotonic() + self.tick_s
                if urgent:  # journaled and handed to the relay before the pass's other inputs are applied
                    self._process(engine, journal, urgent, False, priority_pass=True)
                if batch or tick:
                    self._process(engine, journal, batch, tick)
                if not running:
                    with self._lock:
                        if not self._pending and not self._priority and not self._shed and not self._threats:
                            break
        finally:
            journal.close()

    def _take(self, batch: list, lane: list) -> bool:
        """Move at most ``max_batch`` items of ``lane`` to ``batch`` (under ``_lock``); True if some are left."""
        if len(lane) <= self.max_batch:
            batch += lane
            lane.clear()
            return False
        batch += lane[:self.max_batch]
        del lane[:self.max_batch]
        return True

    def _process(self, engine: AlarmEngine, journal: Journal, batch: list, tick: bool, *,
                 priority_pass: bool = False) -> None:
        """Apply ``batch`` (then the tick's inputs), commit the events, resolve the futures, wake.

        Every ``PEEK_EVERY`` inputs: if ``slice_s`` has gone by, or (in a pass of the other lanes) priority
        inputs wait, the events so far are committed (and the relay woken); then, in a pass of the other
        lanes, the waiting priority inputs are taken, as a pass of their own, before the rest of this one.
        A ``priority_pass`` (the priority lane's own inputs) never takes newer priority inputs before its
        rest: that would reorder the lane (a clear applied before its raise is ignored)."""
        events: list[AlarmEvent] = []
        replies: list[tuple[Future, bool, object]] = []
        n_events = 0
        t_commit = time.perf_counter()
        for i, item in enumerate(batch):
            if i and not i % PEEK_EVERY and (
                    (self._priority and not priority_pass)              # unlocked peek: a hint
                    or time.perf_counter() - t_commit >= self.slice_s):
                n_events += self._interleave(engine, journal, events, take_priority=not priority_pass)
                t_commit = time.perf_counter()
            if isinstance(item, _Call):
                try:
                    result = item.fn(engine)
                except Exception as exc:
                    replies.append((item.future, False, exc))
                    continue
                if isinstance(result, list) and all(isinstance(e, AlarmEvent) for e in result):
                    events += result
                replies.append((item.future, True, result))
                continue
            try:
                inputs = self.sources.feed(item)
                for inp in (inputs if inputs is not None else [item]):
                    events += engine.apply(inp)
            except Exception:  # one bad input must not stop the alarm thread
                self.stats["input_errors"] += 1
                log.exception("alarm input refused: %r", item)
        if tick:
            if not priority_pass and self._priority:
                n_events += self._interleave(engine, journal, events)
            now = self.clock()
            try:
                for inp in self.sources.tick(now):
                    events += engine.apply(inp)
                events += engine.tick(now)
            except Exception:
                self.stats["input_errors"] += 1
                log.exception("alarm tick failed")
        n_events += self._commit(journal, events)
        for fut, ok, value in replies:        # every event of the pass is durable now
            fut.set_result(value) if ok else fut.set_exception(value)
        s = self.stats
        s["batches"] += 1
        s["inputs"] += len(batch)
        s["max_batch_inputs"] = max(s["max_batch_inputs"], len(batch))
        s["max_batch_events"] = max(s["max_batch_events"], n_events)

    def _interleave(self, engine: AlarmEngine, journal: Journal, events: list[AlarmEvent], *,
                    take_priority: bool = True) -> int:
        """Within a pass: commit ``events`` (emptied), then (``take_priority``) run the priority inputs that
        wait as a pass of their own; returns how many events were committed."""
        n = self._commit(journal, events)
        events.clear()
        if not take_priority:
            return n
        with self._lock:
            urgent, self._priority = self._priority, []
        if urgent:
            self.stats["preempted"] += 1
            self._process(engine, journal, urgent, False, priority_pass=True)
        return n

    def _commit(self, journal: Journal, events: list[AlarmEvent]) -> int:
        """Journal ``events`` in one transaction, then wake the followers; returns how many."""
        if not events:
            return 0
        self._append(journal, events)
        self.stats["events"] += len(events)
        for wake in self._wake:
            try:
                wake()
            except Exception:
                log.exception("alarm wake callback failed")
        return len(events)

    def _append(self, journal: Journal, events: list[AlarmEvent]) -> None:
        if not events:
            return
        while True:
            t0 = time.perf_counter()
            try:
                journal.append(events)
            except Exception:
                self.stats["append_retries"] += 1
                log.exception("alarm journal append of %d events failed; retrying in %s s", len(events), self.retry_s)
                with self._lock:
                    if not self._running:
                        log.error("alarm service stopping: %d events not journaled", len(events))
                        return
                time.sleep(self.retry_s)
                continue
            self.stats["appends"] += 1
            self.stats["last_append_ms"] = round((time.perf_counter() - t0) * 1000, 3)
            return
