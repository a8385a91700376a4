"""The command path's stage: the select-before-operate engine in a thread of its own, wired to the line.

::

    admin API ── select / operate / cancel ──┐
    IO threads ── COMMAND_RESULT, status ────┼──▶ [queue, lock] ──▶ commands thread:
    EventLog ─── DEVICE_COMM_LOST ───────────┘                        CommandEngine (gateway/commands/engine.py)
                                                                       actions, in order:
                                                                         Audit       -> AuditJournal (fsync) + relay wake
                                                                         Acquire/Extend/ReleaseLock -> ZoneLocks
                                                                           (per zone; answers go back by zone)
                                                                         Send        -> Context.send_to_device (both nets)
                                                                         Reply       -> the request's Future

The engine is sans-IO; this stage does its IO: the zone locks (in-process,
Redis or Redlock: ``gateway/commands/settings.zone_locks``), the audit journal
(``<state_dir>/commands.db``) and its Kafka relay (``<prefix>.commands.<YYYYMMDD>``),
the frames. Lock calls are non-blocking and run in the commands thread: a
Redis round trip delays the next command, never an IO thread.

Feedback: the stage is an ObjectState listener only while a command is open
(it subscribes at the first and unsubscribes after the last: the IO threads
call no Python for it otherwise, a storm's tens of thousands of changes a
second included), and then queues a change only for an object an open command
waits on (``_watched``, a set read without a lock: a membership test under
the GIL).

Threading: public methods say their thread; the engine, the journal and the
lock client are used only by the commands thread.
"""
from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

from gateway.commands import model as m
from gateway.commands.audit import JOURNAL_FILE, AuditJournal, AuditRelay
from gateway.commands.engine import (AcquireLock, Audit, CommandEngine, ExtendLock, ReleaseLock, Reply, Send)
from gateway.commands.routes import NoRoute, UnknownSignal, plan
from gateway.commands.settings import zone_locks
from railcodecs import Signals, Switches, TrackSections

log = logging.getLogger("railgate.commands")

#: ObjectState kind names (listener's first argument) -> the command model's kind
_KIND_OF = {"SWITCHES": "switch", "TRACK_SECTIONS": "section", "SIGNALS": "signal"}
#: sections a route plan avoids: not free (occupied, fault, locked in a route)
_UNAVAILABLE = (TrackSections.OCCUPIED, TrackSections.FAULT, TrackSections.LOCKED)
RECENT = 50


class LineView:
    """``gateway.commands.engine.LineView`` over the gateway's line: its config, live object state,
    registry and track topology. Any thread (every read is of an immutable value or under the GIL)."""

    def __init__(self, cfg, line) -> None:
        self.cfg, self.line, self.track = cfg, line, cfg.track
        self._owner: dict[tuple[str, int], tuple[int, str]] = {}
        for d in cfg.devices:
            for kind, ids in (("switch", d.switches), ("section", d.sections), ("signal", d.signals)):
                for i in ids:
                    self._owner.setdefault((kind, i), (d.id, d.name))   # the first device listing it commands it
        self._route_plans: dict[int, object] = {}

    def device_of(self, kind: str, object_id: int):
        if kind == "route":
            r = self.track.routes.get(object_id) if self.track is not None else None
            return None if r is None else self._owner.get(("signal", r.from_signal))
        return self._owner.get((kind, object_id))

    def reachable(self, device_id: int) -> bool:
        return self.line.registry.devices[device_id].reachable

    def _table_value(self, table, kind: str, object_id: int):
        owner = self._owner.get((kind, object_id))
        row = table.get((owner[0], object_id)) if owner is not None else None
        return None if row is None else row[0]

    def value(self, kind: str, object_id: int):
        objects = self.line.objects
        if kind == "switch":
            return self._table_value(objects.switches, "switch", object_id)
        if kind == "section":
            return self._table_value(objects.sections, "section", object_id)
        if kind == "route":     # set: its sections locked and its start signal not at stop (see model)
            route_plan = self._route_plan(object_id)
            if route_plan is None:
                return None
            r = self.track.routes[object_id]
            aspect = self._table_value(objects.signals, "signal", r.from_signal)
            locked = all(self.section_state(s) == TrackSections.LOCKED for s in route_plan.sections)
            return m.ROUTE_SET if locked and aspect not in (None, Signals.RED) else m.ROUTE_CLEAR
        return None

    def _route_plan(self, route_id: int):
        if route_id not in self._route_plans:
            r = self.track.routes.get(route_id) if self.track is not None else None
            try:
                self._route_plans[route_id] = None if r is None else plan(self.track, r.from_signal, r.to_signal)
            except ValueError:
                self._route_plans[route_id] = None
        return self._route_plans[route_id]

    def section_state(self, section_id: int):
        return self._table_value(self.line.objects.sections, "section", section_id)

    def section_of_switch(self, switch_id: int):
        if self.track is None or switch_id not in self.track.switches:
            return None
        return self.track.switches[switch_id].section

    def zone_of(self, kind: str, object_id: int) -> str:
        zone = None
        if self.track is not None:
            if kind == "switch":
                zone = self.track.zone_of_switch(object_id)
            elif kind == "section":
                zone = self.track.zone_of_section(object_id)
            elif kind == "route" and object_id in self.track.routes:
                route_plan = self._route_plan(object_id)
                if route_plan is not None and route_plan.switches:
                    zone = self.track.zone_of_switch(route_plan.switches[0][0])
                if zone is None:
                    start = self.track.signals[self.track.routes[object_id].from_signal].section
                    zone = self.track.zone_of_section(start)
        if zone is None:
            owner = self.device_of(kind, object_id)
            zone = owner[1] if owner is not None else "-"
        return zone

    def unavailable_sections(self) -> frozenset[int]:
        """Sections a route plan must avoid now: occupied, in fault, locked in a route."""
        return frozenset(sid for (_, sid), (value, _) in list(self.line.objects.sections.items())
                         if value in _UNAVAILABLE)


class _Call:
    __slots__ = ("fn", "future")

    def __init__(self, fn: Callable, future: Future | None) -> None:
        self.fn, self.future = fn, future


class CommandStage:
    """The commands thread around the engine (see the module doc)."""

    def __init__(self, cfg, line, send: Callable[[int, object, int], list], *, bootstrap: Callable[[], str | None]
                 = lambda: None) -> None:
        """``send(device_id, message, now_ms)``: the context's ``send_to_device``; ``bootstrap()``: the
        Kafka bootstrap servers for the audit relay (None: no relay; the journal keeps everything)."""
        self.cfg, self.line, self._send, self._bootstrap = cfg, line, send, bootstrap
        self.settings = cfg.control
        self.view = LineView(cfg, line)
        self.journal_path = os.path.join(cfg.gateway.state_dir, JOURNAL_FILE)
        self.locks = None
        self.journal: AuditJournal | None = None
        self.engine: CommandEngine | None = None
        self.relay: AuditRelay | None = None
        self._lock = threading.Lock()
        self._wakeup = threading.Event()
        self._queue: list[_Call] = []
        self._running = False
        self._thread: threading.Thread | None = None
        self._pending: dict[str, Future] = {}           # request id -> its Future (commands thread)
        self._requests = 0
        self._watched: set[tuple[str, int]] = set()      # (kind, object) an open command waits on
        self.listening = False                            # subscribed to ObjectState (commands thread)
        self._device_ids = {d.name: d.id for d in cfg.devices}
        self.recent: deque[dict] = deque(maxlen=RECENT)
        self.counters = {"sent": 0, "not_sent": 0, "lock_errors": 0, "audit_errors": 0}

    # -- life (owner thread) ------------------------------------------------------------------
    def start(self) -> None:
        now = self.line.now_ms()
        self.locks = zone_locks(self.settings)
        self.journal = AuditJournal(self.journal_path)
        self.engine = CommandEngine(self.cfg.gateway.id, self.cfg.line_name, self.cfg.timezone, self.settings,
                                    self.view, last_seq=self.journal.last_seq(),
                                    last_command_id=self.journal.last_command_id(), start_ms=now)
        abandoned = self.engine.abandon(self.journal.open_commands(), now)
        bootstrap = self._bootstrap()
        if bootstrap:
            self.relay = AuditRelay(self.journal_path, bootstrap, topic_prefix=self.settings.topic_prefix,
                                    tz=self.cfg.timezone)
            self.relay.start()
        self.line.events.subscribe(self.observe_event)
        self._running = True
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._thread.start()
        if abandoned:
            self._submit(lambda: abandoned)

    def stop(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._running = False
        self._wakeup.set()
        if self._thread is not None:
            self._thread.join(timeout)
        if self.relay is not None:
            self.relay.stop()
        if self.journal is not None:
            self.journal.close()

    # -- requests (any thread) ------------------------------------------------------------------
    def select(self, kind: str, object_id: int, value: str, operator: str, workstation: str | None = None) -> Future:
        """Future of the selection (a dict) once the zone lock answered, or of the CommandError."""
        return self._request(lambda rid, now: self.engine.select(rid, kind, object_id, value, operator,
                                                                  workstation, now))

    def operate(self, selection_id: str, operator: str) -> Future:
        """Future of the command as sent (its end is in ``commands()``), or of the CommandError."""
        return self._request(lambda rid, now: self.engine.operate(rid, selection_id, operator, now))

    def cancel(self, selection_id: str, operator: str) -> Future:
        return self._request(lambda rid, now: self.engine.cancel(rid, selection_id, operator, now))

    def commands(self) -> Future:
        """Future of ``{"open": [...], "recent": [...]}``."""
        return self._submit(lambda: {"open": self.engine.selections(), "recent": list(self.recent)},
                            future=Future())

    def plan_route(self, from_signal: int, to_signal: int):
        """A* over the track avoiding what is unavailable now; ``(plan, route_id)``. Raises UnknownSignal,
        NoRoute, or LookupError when the line has no track topology. Any thread (pure reads)."""
        track = self.cfg.track
        if track is None:
            raise LookupError("this line has no track topology (no track: section in its config)")
        p = plan(track, from_signal, to_signal, self.view.unavailable_sections())
        route_id = next((rid for rid, r in track.routes.items()
                         if (r.from_signal, r.to_signal) == (from_signal, to_signal)), None)
        return p, route_id

    def stats(self) -> dict:
        """Figures for /status. Any thread (approximate while the thread runs)."""
        engine = self.engine.stats() if self.engine is not None else {}
        return {**engine, **self.counters, "relay": self.relay.stats() if self.relay is not None else None}

    # -- observations (IO threads) ------------------------------------------------------------------
    def observe_result(self, device_id: int, msg, now_ms: int) -> None:
        self._submit(lambda: self.engine.on_result(device_id, msg, now_ms))

    def observe_status(self, kind: str, device_id: int, object_id: int, value: int, applied_ms: int) -> None:
        k = _KIND_OF.get(kind)
        if k is None:
            return
        if (k, object_id) in self._watched:
            self._submit(lambda: self.engine.on_status(k, object_id, value, applied_ms))
        if k in ("section", "signal") and ("route", -1) in self._watched:   # a route waits on its sections
            self._submit(self._route_feedback(applied_ms))

    def _route_feedback(self, now_ms: int) -> Callable[[], list]:
        def run() -> list:
            out = []
            for sel in self.engine.selections():
                if sel["kind"] == "route":
                    value = self.view.value("route", sel["object_id"])
                    if value is not None:
                        out += self.engine.on_status("route", sel["object_id"], value, now_ms)
            return out
        return run

    def observe_event(self, ev) -> None:
        """EventLog listener: a device lost (DEVICE_COMM_LOST raised) ends its open commands."""
        if ev.name == "DEVICE_COMM_LOST" and ev.active is True and ev.source in self._device_ids:
            dev = self._device_ids[ev.source]
            self._submit(lambda: self.engine.on_unreachable(dev, ev.time_ms))

    # -- the commands thread ---------------------------------------------------------------------
    def _request(self, fn: Callable[[str, int], list]) -> Future:
        fut: Future = Future()
        with self._lock:
            self._requests += 1
            rid = f"r{self._requests}"

        def run() -> list:
            self._pending[rid] = fut
            try:
                return fn(rid, self.line.now_ms())
            except Exception:
                self._pending.pop(rid, None)
                raise
        return self._submit(run, future=fut, reply=True)

    def _submit(self, fn: Callable, future: Future | None = None, reply: bool = False) -> Future | None:
        with self._lock:
            if not self._running:
                if future is not None:
                    future.set_exception(RuntimeError("the command path is not running"))
                return future
            self._queue.append(_Call(fn, None if reply else future))
            if reply:                       # the engine's Reply completes it; an exception here does too
                self._queue[-1].future = _ErrorOnly(future)
        self._wakeup.set()
        return future

    def _run(self) -> None:
        while True:
            deadline = self.engine.next_deadline_ms()
            wait = 0.5 if deadline is None else max(0.0, min(0.5, (deadline - self.line.now_ms()) / 1000))
            self._wakeup.wait(wait)
            self._wakeup.clear()
            with self._lock:
                batch, self._queue = self._queue, []
                running = self._running
            for call in batch:
                try:
                    result = call.fn()
                except Exception as exc:
                    if call.future is not None:
                        call.future.set_exception(exc)
                    elif not isinstance(exc, ValueError):
                        log.exception("command path: input failed")
                    continue
                if isinstance(call.future, _ErrorOnly):
                    self._do(result)
                elif call.future is not None:
                    call.future.set_result(result)
                elif isinstance(result, list):
                    self._do(result)
            self._do(self.engine.tick(self.line.now_ms()))
            if not running:
                return

    def _do(self, actions: list) -> None:
        """Carry out the engine's actions in order (commands thread); lock answers go back in."""
        audit = [a.event for a in actions if isinstance(a, Audit)]
        if audit:
            try:
                self.journal.append(audit)
            except Exception:
                self.counters["audit_errors"] += 1
                log.exception("command audit journal append failed (%d events)", len(audit))
            if self.relay is not None:
                self.relay.wake()
            for ev in audit:
                if ev.state in m.TERMINAL:
                    self.recent.append({**_summary(ev), "outcome": ev.outcome})
        more: list = []
        for a in actions:
            now = self.line.now_ms()
            if isinstance(a, AcquireLock):
                try:
                    lease = self.locks.acquire(a.zone, a.holder, a.ttl_ms, blocking=False)
                except Exception as exc:
                    more += self.engine.lock_refused(a.zone, str(exc), now)
                else:
                    more += self.engine.lock_granted(a.zone, lease, now)
            elif isinstance(a, ExtendLock):
                try:
                    lease = self.locks.extend(a.lease, a.ttl_ms)
                except Exception as exc:
                    more += self.engine.lock_lost(a.zone, str(exc), now)
                else:
                    more += self.engine.lock_extended(a.zone, lease, now)
            elif isinstance(a, ReleaseLock):
                try:
                    self.locks.release(a.lease)
                except Exception as exc:     # expired meanwhile: nothing to give back
                    self.counters["lock_errors"] += 1
                    log.info("zone %s: release: %s", a.lease.zone, exc)
            elif isinstance(a, Send):
                nets = self._send(a.device_id, a.command, now)
                self.counters["sent" if nets else "not_sent"] += 1
            elif isinstance(a, Reply):
                fut = self._pending.pop(a.request_id, None) if not a.termination else None
                if fut is not None:
                    if a.ok:
                        fut.set_result(a.payload)
                    else:
                        fut.set_exception(m.CommandError(a.error or "refused"))
        self._watched = self._watch_set()
        if bool(self._watched) != self.listening:
            self.listening = bool(self._watched)
            (self.line.objects.subscribe if self.listening else self.line.objects.unsubscribe)(self.observe_status)
        if more:
            self._do(more)

    def _watch_set(self) -> set[tuple[str, int]]:
        watched = {(s["kind"], s["object_id"]) for s in self.engine.selections()}
        if any(k == "route" for k, _ in watched):
            watched.add(("route", -1))
        return watched


class _ErrorOnly:
    """A request's Future: an exception raised by the engine call completes it; a result does not
    (the engine's Reply action will)."""

    __slots__ = ("future",)

    def __init__(self, future: Future) -> None:
        self.future = future

    def set_exception(self, exc: BaseException) -> None:
        self.future.set_exception(exc)


def _summary(ev) -> dict:
    return {"selection_id": ev.selection_id, "command_id": ev.command_id, "kind": ev.kind,
            "object_id": ev.object_id, "value": ev.value, "device": ev.device, "zone": ev.zone,
            "operator": ev.operator, "workstation": ev.workstation, "state": ev.state,
            "fencing_token": ev.fencing_token, "time_ms": ev.time_ms}
