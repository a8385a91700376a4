"""The alarm stage of the gateway: builds the pipeline of docs/alarm-pipeline.md and feeds it.

::

    EventLog conditions ─┐
    ObjectState changes ─┤ submit(observation)     alarm thread          relay (Kafka)
    DEVICE_ALARM frames ─┼────────────────────▶  engine → journal ──▶  history writer (SQLite/MySQL)
    threat samples (1 s) ┘                                     wake    live table (Redis, optional)
    admin API actions ───────────────────────▶  (futures, never waited for in a loop)

Everything here is an adapter: the engine and the sources are sans-IO in
``alarms/``; the services (embedded broker or real Kafka, SQLite or MySQL,
Redis) are chosen by the config's ``kafka:``, ``history:`` and ``redis:``.

Threading: built and started in the base loop thread before the IO loops
take traffic (``start``), stopped after them (``stop``). ``observe_*`` are
called from IO loop threads and only queue; ``sample_threats`` runs on a base
loop timer. ``engine_status``, ``alarm_table`` and ``operate`` return futures
the alarm thread completes: the admin API (``gateway/app/admin_routes.py``)
answers with them without waiting. Only ``status()`` without an engine part
waits, at most ``ACTION_TIMEOUT_S``, for synchronous callers outside any loop.
"""
from __future__ import annotations

import logging
import os
import time
from concurrent.futures import Future

from alarms.history.store import open_history
from alarms.history_writer import HistorySink, HistoryWriter
from alarms.journal import Journal
from alarms.model import AlarmKey, OperatorAction
from alarms.observations import DeviceAlarmFrame, ObjectChange, ThreatSample
from alarms.retention import RetentionPruner, writers_floor
from alarms.service import AlarmService
from alarms.sources import SECTION_FAULT, SWITCH_LOST, Sources, key_part

log = logging.getLogger("railgate.alarms")

ACTION_TIMEOUT_S = 5.0
#: the object values that raise an alarm; every other change matters only when it ends one
ABNORMAL = {"TRACK_SECTIONS": SECTION_FAULT, "SWITCHES": SWITCH_LOST}
BOOTSTRAP_FILE = "kafka.bootstrap"   # in state_dir: where `gateway alarms tail -c` finds an embedded broker


class AlarmStage:
    """The alarm pipeline beside one gateway. See the module docstring for threads."""

    def __init__(self, cfg, line, *, udp_checks=None, relay_factory=None) -> None:
        """``line``: the line's state (``gateway.line.line.Line``: clock, events, objects, registry);
        ``udp_checks``: the UDP endpoint's receiver counters, sampled for threat alarms."""
        self.cfg, self.line, self.udp_checks = cfg, line, udp_checks
        p = cfg.pipeline
        self.state_dir = os.path.abspath(cfg.gateway.state_dir)
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        self.journal_path = os.path.join(self.state_dir, "journal.db")
        names = {d.id: d.name for d in cfg.devices}
        self.device_names = names
        self.service = AlarmService(
            self.journal_path, gateway_id=cfg.gateway.id, line=cfg.line_name, tz=cfg.timezone,
            sources=Sources(names, p.alarms.switch_lost_s, p.alarms.threat_rates),
            engine_options=p.alarms.engine_options(), clock=line.now_ms)
        self.broker = None
        self._last_engine: tuple[float, dict] | None = None   # (monotonic s, engine_status answer)
        self.relay = None
        self.writers: list[HistoryWriter] = []
        self.pruner: RetentionPruner | None = None
        self._relay_factory = relay_factory
        # (device id, net) -> (the link's LinkChecks, its errors as last sampled, when they last moved,
        # settled: a sample more than a threat window after that was sent); base loop thread only
        self._threat_sent: dict[tuple[int, str], tuple] = {}
        self._threat_window_ms = int(p.alarms.threat_rates.window_s * 1000)

    # -- life (base loop thread) ------------------------------------------------------------
    def start(self) -> None:
        """Start the alarm thread, the broker (embedded), the relay, the writers and the retention thread.

        No outside service has to answer: the relay child, the history writer and the live-table
        writer each retry theirs (Kafka, MySQL, Redis) with a back-off and catch up from the
        journal, which is local, when it returns."""
        p = self.cfg.pipeline
        self.service.start()
        bootstrap = self.bootstrap = self._bootstrap()
        self.relay = self._new_relay(bootstrap)
        self.relay.start()
        self.service.subscribe(self.relay.wake)
        # migrated on first use in the writer thread: a store that is down at start delays the history only
        store = open_history(p.history, self.state_dir, migrate=False)
        self.writers.append(HistoryWriter(self.journal_path, HistorySink(store, self.cfg.gateway.id)))
        if p.redis is not None:
            from alarms.live.live_table import LiveTable, journal_snapshot, redis_client

            def snapshot():
                journal = Journal(self.journal_path)
                try:
                    return journal_snapshot(journal)
                finally:
                    journal.close()
            self.writers.append(HistoryWriter(self.journal_path,
                                              LiveTable(redis_client(p.redis.url), p.redis.prefix, snapshot),
                                              name="live"))
        for writer in self.writers:
            writer.start()
            self.service.subscribe(writer.wake)
        # journal rows above the lowest writer watermark stay; the live table resyncs from `latest`
        self.pruner = RetentionPruner(
            self.journal_path, lambda: writers_floor(self.writers, resyncing=("live",)), history=store,
            gateway_id=self.cfg.gateway.id, journal_retention_days=p.alarms.journal_retention_days,
            history_retention_days=p.history.retention_days, clock_ms=self.line.now_ms)
        self.pruner.start()
        self.attach()
        log.info("alarm stage up: journal %s, kafka %s, history %s%s", self.journal_path, bootstrap,
                 p.history.kind, f", redis {p.redis.url}" if p.redis else "")

    def attach(self) -> None:
        """Subscribe to the line: its events (lanes by kind: ``alarms.sources.lane_of``) and its
        objects' changes into or out of an alarming value (the apply filters them: only FAULT
        sections and LOST switches reach :meth:`observe_object`). Called by :meth:`start`."""
        self.line.events.subscribe(self.service.submit)
        self.line.objects.subscribe(self.observe_object, only=ABNORMAL)

    def stop(self) -> None:
        """Drain the alarm thread into the journal, then flush the relay and writers; stop the broker."""
        self.service.stop()
        if self.pruner is not None:
            self.pruner.stop()
        for writer in self.writers:
            writer.wake()
            writer.stop()
        if self.relay is not None:
            self.relay.wake()
            self.relay.stop()
        if self.broker is not None:
            self.broker.stop()
            try:
                os.unlink(os.path.join(self.state_dir, BOOTSTRAP_FILE))
            except FileNotFoundError:
                pass

    def _bootstrap(self) -> str:
        kafka = self.cfg.pipeline.kafka
        if not kafka.embedded:
            return ",".join(kafka.bootstrap_servers)
        from alarms.kafka.broker import EmbeddedBroker
        self.broker = EmbeddedBroker(os.path.join(self.state_dir, "broker.log")).start()
        with open(os.path.join(self.state_dir, BOOTSTRAP_FILE), "w") as f:
            f.write(self.broker.bootstrap + "\n")
        return self.broker.bootstrap

    def _new_relay(self, bootstrap: str):
        a, kafka = self.cfg.pipeline.alarms, self.cfg.pipeline.kafka
        kwargs = dict(topic_prefix=a.topic_prefix, tz=self.cfg.timezone, gateway_id=self.cfg.gateway.id,
                      line=self.cfg.line_name, partitions=a.partitions, replication_factor=a.replication_factor,
                      snapshot_interval_s=a.snapshot_interval_s, producer_config=dict(kafka.config))
        if self._relay_factory is not None:
            return self._relay_factory(self.journal_path, bootstrap, **kwargs)
        from alarms.kafka.relay_process import RelaySupervisor
        # an embedded broker starts empty with the gateway: today's journal goes out again, so an HMI
        # joining after a gateway restart still sees the whole day (duplicates are dropped by event_id)
        return RelaySupervisor(self.journal_path, bootstrap, log_path=os.path.join(self.state_dir, "relay.log"),
                               republish_first=self.cfg.pipeline.kafka.embedded, **kwargs)

    # -- observations (IO loop threads: queue only) ----------------------------------------
    def observe_object(self, kind: str, device_id: int, object_id: int, value: int, applied_ms: int) -> None:
        """A section into or out of FAULT, a switch into or out of LOST (the only changes the object
        state hands this listener: see :meth:`attach`); a busy line's other changes, thousands a
        second, can raise or clear nothing and cost no call."""
        self.service.submit(ObjectChange(kind, device_id, object_id, value, applied_ms))

    def observe_device_alarm(self, device_name: str, message, time_ms: int) -> None:
        self.service.submit(DeviceAlarmFrame(device_name, message, time_ms))

    def reconcile(self) -> None:
        """After the start-up grace: clear restored alarms that what the links show no longer holds
        (a restart must not leave false communication or threat alarms). Base loop timer, once."""
        conditions = {AlarmKey(key_part(source), name) for name, source in self.line.events.active_conditions()}
        self.service.reconcile(conditions, self.line.now_ms())

    def sample_threats(self) -> None:
        """Per-link cumulative error counters to the threat monitor. Base loop timer, every second.

        A link whose counters have not moved for more than a threat window is sent once more (that
        sample finds no error in its window: the monitor's counts are 0 and its threat alarms clear,
        exactly as with a sample every second) and then skipped until they move or the link is
        replaced: at line scale a sample per link per second was most of the base loop's time
        (bench/results/profile-line-load-564e3e4.txt), for links with nothing to say. A link whose
        counters are all 0 (it never counted an error) is settled by its first sample: its window
        holds no error, whatever the monitor's history of it (at line load, the first minute after a
        start sampled all 2,000 links every second: py-spy, 8 % of a core in the base loop).

        The monitor forgets a link whose last sample is a window old (``ThreatMonitor.tick``), so the
        first sample after a settled spell carries the counters it settled at as its ``baseline``, and
        a link's first sample carries zeros: the errors since then count in the window as with a
        sample every second (a single masquerade, whose limit is 1, raises its alarm)."""
        now_ms = self.line.now_ms()
        registry = self.line.registry
        sent, window_ms = self._threat_sent, self._threat_window_ms
        for dev_id, dl in registry.devices.items():
            for net, link in registry.links_of(dev_id).items():
                if link is None:
                    continue
                checks = link.checks
                errors = checks.errors
                last = sent.get((dev_id, net))
                baseline = None
                # (dict's ==, not Counter's, which is Python code: a snapshot is a plain copy)
                if last is not None and last[0] is checks and dict.__eq__(last[1], errors):
                    if last[3]:
                        continue  # settled: nothing in its window since the sample that said so
                    snapshot, changed_ms = last[1], last[2]
                    sent[(dev_id, net)] = (checks, snapshot, changed_ms, now_ms - changed_ms > window_ms)
                else:
                    if last is None or last[0] is not checks:
                        baseline = {}         # a new link: its counters started at 0
                    elif last[3]:
                        baseline = last[1]    # settled, maybe forgotten by the monitor: where they stood
                    snapshot = dict(errors)
                    # counters that are all 0 have only ever been 0: the window's counts are 0 now and
                    # stay 0 until they move, so this one sample says all there is to say
                    sent[(dev_id, net)] = (checks, snapshot, now_ms, not any(snapshot.values()))
                self.service.submit(ThreatSample(f"net {net}", dict(snapshot), now_ms, dl.device.name,
                                                 baseline))
        udp = self.udp_checks
        if udp is not None:
            self.service.submit(ThreatSample("udp", dict(udp.errors), now_ms, "trains"))

    # -- status and operator actions (any thread; only status() without ``engine`` waits) ----------
    def engine_status(self) -> Future:
        """Future of the engine's status and the service counters, plus ``by_severity`` ({severity:
        {state: alarms}} of the alarms not NORMAL), completed by the alarm thread (at once with
        ServiceStopped when it is not running). Any thread; never blocks."""
        service = self.service

        def figures(engine) -> dict:  # the alarm thread: one pass over the table's non-NORMAL rows
            by_severity: dict[str, dict[str, int]] = {}
            for row in engine.snapshot()[1]:
                states = by_severity.setdefault(row["severity"], {})
                states[row["state"]] = states.get(row["state"], 0) + 1
            out = {**engine.status(), "by_severity": by_severity, "service": dict(service.stats)}
            self._last_engine = (time.monotonic(), out)   # one reference store: read by any thread
            return out
        return service.call(figures)

    def last_engine_status(self) -> dict | None:
        """The alarm thread's last answer to :meth:`engine_status`, with ``age_s``; None before the first.
        For a status that cannot wait for a busy alarm thread (a storm). Any thread."""
        last = self._last_engine
        if last is None:
            return None
        return {**last[1], "age_s": round(time.monotonic() - last[0], 3)}

    def relay_alive(self) -> bool:
        """Whether the relay runs: its ``alive`` flag, else a child pid (the supervisor's), else True for a
        stand-in that reports neither. Any thread; never blocks (the relay's last stats)."""
        relay = self.relay
        if relay is None:
            return False
        alive = getattr(relay, "alive", None)
        if isinstance(alive, bool):
            return alive
        stats = relay.stats()
        return stats["pid"] is not None if "pid" in stats else True

    def status(self, engine: dict | None = None) -> dict:
        """JSON-ready: engine status, relay, writer and retention stats. Any thread.

        ``engine``: the alarm thread's answer to :meth:`engine_status` (or an ``{"error": ...}``
        standing for it), so nothing waits. Without it this waits up to ``ACTION_TIMEOUT_S`` for the
        alarm thread: for synchronous callers (``Gateway.status()``, tests), never in an event loop.
        """
        if engine is None:
            try:
                engine = self.engine_status().result(ACTION_TIMEOUT_S)
            except Exception as exc:  # a stopped or busy alarm thread must not break the status
                engine = {"error": str(exc) or type(exc).__name__}
        out = {"engine": engine, "relay": self.relay.stats() if self.relay else {},
               "writers": {w.name: w.stats() for w in self.writers},
               "retention": self.pruner.stats() if self.pruner else {}}
        if self.broker is not None:
            out["embedded_broker"] = {"bootstrap": self.broker.bootstrap, "pid": self.broker.pid}
        return out

    def alarm_table(self) -> Future:
        """Future of ``(event_seq, [alarm entries])``, the engine's snapshot taken in the alarm thread.
        Any thread; never blocks."""
        return self.service.snapshot()

    def operate(self, request: dict, client: str | None = None) -> Future:
        """An operator action, ``{"action": "ack"|"shelve"|..., "key": "src/CODE/obj", "operator": NAME,
        "minutes": N, "reason": TEXT}``, to the alarm thread; ``client``: the address it came from,
        journaled with its events. A malformed one (bad key, operator or reason: see
        ``alarms.model.OperatorAction``) raises ModelError (a ValueError) or TypeError here; otherwise
        the future gets the action's events once journaled, or UnknownAlarm, IllegalTransition or
        ValueError with nothing changed. Any thread; never blocks."""
        action = OperatorAction(request.get("action"), request.get("key"), request.get("operator"),
                                self.line.now_ms(), request.get("minutes"), request.get("reason"), client)
        log.info("operator action requested: %s %s by %s from %s", action.action, action.key, action.operator, client)
        return self.service.operate(action)
