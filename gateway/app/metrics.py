"""The status document as Prometheus text (exposition format 0.0.4), served at ``/metrics``.

Status knowledge, not HTTP: :func:`render_metrics` maps the dict built by
``gateway/app/status.py`` to metric families; ``gateway/app/admin_routes.py``
answers ``GET /metrics`` with it. Units are Prometheus base units named in the
metric: the status dict's ``_ms`` ages become ``_seconds``, cm/s becomes
``meters_per_second``. Missing sections give families without samples and
``None`` values give no sample (absent is not zero).

Why hand-written and not ``prometheus_client``: every figure already lives in the
status document (one snapshot, ``/status`` and ``/metrics`` cannot disagree), so
the work is the mapping below, not the exposition; prometheus_client would wrap
it in a custom collector on a per-gateway ``CollectorRegistry`` (tests run many
gateways in one process) and add a dependency to an offline rail-site install
for a 30-line text writer. Its one extra, the ``process_*`` family, is read from
``/proc`` in ``status.py`` (``process_stats``) under the same standard names.
The tests parse the output with prometheus_client's parser when it is installed.

Threading: pure functions; any thread (the admin loop's, in the gateway).
"""
from __future__ import annotations

import math

from gateway.base.version import build_info

PROMETHEUS_TYPE = "text/plain; version=0.0.4; charset=utf-8"

_LOOP_METRICS = (  # (status keys, first present wins; metric; type; help)
    (("iterations",), "railgate_loop_iterations_total", "counter", "Poll iterations of the IO loop."),
    (("events",), "railgate_loop_events_total", "counter", "fd events handled by the IO loop."),
    (("functors", "functors_run"), "railgate_loop_functors_total", "counter", "Cross-thread calls run."),
    (("timers", "timers_run"), "railgate_loop_timers_fired_total", "counter", "Timer callbacks run."),
    (("timers_missed",), "railgate_loop_timers_missed_total", "counter", "Timers that fired late."),
    (("coalesced",), "railgate_loop_coalesced_total", "counter",
     "Polls put off to coalesce wake-ups under load (gateway.loop_coalesce_ms)."),
    (("callback_errors",), "railgate_loop_callback_errors_total", "counter", "Callbacks that raised."),
    (("links",), "railgate_loop_links", "gauge", "TCP links owned by the IO loop."),
    (("fds",), "railgate_loop_fds", "gauge", "File descriptors registered with the IO loop."),
    (("timers_pending",), "railgate_loop_timers_pending", "gauge", "Timers waiting to fire."),
)
_LINK_COUNTERS = (("rx_frames", "Frames received on the link."), ("tx_frames", "Frames sent on the link."),
                  ("rx_bytes", "Bytes received on the link."), ("tx_bytes", "Bytes sent on the link."),
                  ("dual_net_copies", "Second copies of dual-net frames dropped here (expected, not errors)."))
_RECEIVER_COUNTERS = (("applied", "applied", "Frames applied (new sequence numbers)."),
                      ("duplicates", "duplicate", "Frames dropped as duplicates (dual-net copies included)."),
                      ("dual_net_copies", "dual_net_copy", "Of the duplicates: the other net's expected copy."),
                      ("stale", "stale", "Frames dropped as stale (too old or out of order)."),
                      ("gap", "lost", "Frames never received (sequence gaps)."))


class _Families:
    """Metric families in first-use order; every family renders HELP and TYPE, even with no samples."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_: str, value, /, **labels: object) -> None:
        family = self._families.setdefault(name, (kind, help_, []))
        if isinstance(value, bool):
            value = int(value)
        if not isinstance(value, (int, float)):
            return  # None (not known yet) has no sample; absent is not zero
        text = ("NaN" if math.isnan(value) else "+Inf" if value == math.inf else "-Inf" if value == -math.inf
                else repr(value))
        pairs = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels.items())
        family[2].append(f"{name}{{{pairs}}} {text}" if pairs else f"{name} {text}")

    def render(self) -> str:
        out = []
        for name, (kind, help_, samples) in self._families.items():
            out += [f"# HELP {name} {help_.replace(chr(92), chr(92) * 2)}", f"# TYPE {name} {kind}", *samples]
        return "\n".join(out) + "\n"


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _scaled(value, factor: float):
    return value / factor if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def render_metrics(status: dict) -> str:
    """The status dict (``gateway/app/status.py``) as Prometheus text 0.0.4. Pure; any thread.

    Missing sections give families without samples; ``None`` values give no sample.
    """
    f = _Families()
    # the status's version is the serving gateway's; a status without one (older, or a test's) gets ours
    build = {**build_info(status.get("implementation")),
             **({"version": status["version"]} if status.get("version") else {})}
    f.add("railgate_info", "gauge", "Gateway identity in labels; always 1.", 1, gateway_id=status.get("gateway_id", ""),
          name=status.get("name", ""), version=build["version"])
    f.add("railgate_build_info", "gauge", "The running build in labels (version, Python version, hot-path "
          "implementation); always 1.", 1, **build)
    f.add("railgate_uptime_seconds", "gauge", "Seconds since the gateway started.", status.get("uptime_s"))
    for d in status.get("devices", ()):
        dev = d.get("id")
        f.add("railgate_device_info", "gauge", "Configured device; name and kind in labels; always 1.", 1,
              device=dev, name=d.get("name", ""), kind=d.get("kind", ""))
        f.add("railgate_device_reachable", "gauge", "1 if the device is reachable on a net.", d.get("reachable"),
              device=dev)
        _receiver(f, "device", d, device=dev)
        for link in d.get("links", ()):
            where = {"device": dev, "net": link.get("net")}
            f.add("railgate_link_up", "gauge", "1 if the link is alive (heartbeats arriving).", link.get("alive"),
                  **where)
            for key, help_ in _LINK_COUNTERS:
                f.add(f"railgate_link_{key}_total", "counter", help_, link.get(key), **where)
            f.add("railgate_link_last_rx_age_seconds", "gauge", "Seconds since the link last received a frame.",
                  _scaled(link.get("last_rx_age_ms"), 1000), **where)
            f.add("railgate_link_errors_total", "counter", "Frames rejected on the link, by reason.", None)
            for reason, n in sorted((link.get("errors") or {}).items()):
                f.add("railgate_link_errors_total", "counter", "", n, **where, reason=reason)
    for t in status.get("trains", ()):
        train = t.get("id")
        f.add("railgate_train_reachable", "gauge", "1 if the train reports within its heartbeat.",
              t.get("reachable"), train=train)
        f.add("railgate_train_speed_meters_per_second", "gauge", "Last reported train speed.",
              _scaled(t.get("speed_cm_s"), 100), train=train)
        f.add("railgate_train_last_rx_age_seconds", "gauge", "Seconds since the train's last datagram.",
              _scaled(t.get("last_rx_age_ms"), 1000), train=train)
        _receiver(f, "train", t, train=train)
    udp = status.get("udp") or {}
    f.add("railgate_udp_rx_datagrams_total", "counter", "UDP datagrams received.", udp.get("rx_datagrams"))
    f.add("railgate_udp_errors_total", "counter", "UDP datagrams rejected, by reason.", None)
    for reason, n in sorted((udp.get("errors") or {}).items()):
        f.add("railgate_udp_errors_total", "counter", "", n, reason=reason)
    for loop in status.get("loops", ()):
        for keys, name, kind, help_ in _LOOP_METRICS:
            key = next((k for k in keys if k in loop), None)
            if key is not None:  # loops report links or fds, not both: no family that is always empty
                f.add(name, kind, help_, loop[key], loop=loop.get("name"))
    pools = status.get("pools") or {}
    links = pools.get("links") or {}
    f.add("railgate_pool_links", "gauge", "Link buffer sets in use.", links.get("in_use"), state="in_use")
    f.add("railgate_pool_links_max", "gauge", "Most link buffer sets allowed.",
          links.get("max", links.get("max_items")))
    f.add("railgate_pool_links_refused_total", "counter", "Connections refused: link pool full.", links.get("refused"))
    f.add("railgate_condition_active", "gauge", "Active conditions (1 each), by name and source.", None)
    for cond in status.get("conditions", ()):
        f.add("railgate_condition_active", "gauge", "", 1, name=cond.get("name"), source=cond.get("source"))
    f.add("railgate_gateway_counter_total", "counter", "Gateway-wide counters (reloads, ...), by name.", None)
    for name, n in sorted((status.get("counters") or {}).items()):
        f.add("railgate_gateway_counter_total", "counter", "", n, counter=name)
    _alarm_pipeline(f, status.get("alarms") or {})
    _coupling(f, status.get("coupling") or {})
    _admin(f, status.get("admin") or {})
    _process(f, status.get("process") or {})
    return f.render()


def _receiver(f: _Families, kind: str, obj: dict, **labels) -> None:
    for key, outcome, help_ in _RECEIVER_COUNTERS:
        f.add(f"railgate_{kind}_frames_{outcome}_total", "counter", help_, obj.get(key), **labels)


# -- the alarm pipeline: engine and service (the alarm thread's answer), relay, writers -------------------
_ENGINE_COUNTERS = (  # (engine status key, metric, help)
    ("events", "railgate_alarm_events_total", "Alarm events the engine produced (each journaled)."),
    ("evicted", "railgate_alarm_evicted_total",
     "RTN_UNACK alarms evicted from a full table (RTN_UNACK -> NORMAL, cause table_full)."),
    ("grouped", "railgate_alarm_grouped_total", "Alarms grouped into a flood group alarm (<source>/FLOOD_<code>/-)."),
    ("auto_shelved", "railgate_alarm_auto_shelved_total", "Chattering alarms shelved by rule."),
    ("over_bound_inserts", "railgate_alarm_over_bound_inserts_total",
     "Non-exempt alarms that entered a full table because nothing could make room."),
    ("suppressed_chatter", "railgate_alarm_suppressed_chatter_total", "Annunciations held back as chatter."),
    ("chatter_episodes", "railgate_alarm_chatter_episodes_total", "Times an alarm started chattering."),
    ("floods", "railgate_alarm_floods_total", "Alarm floods begun (ISA-18.2 rate over the flood threshold)."),
    ("ignored_inputs", "railgate_alarm_ignored_inputs_total", "Inputs that changed nothing (e.g. a clear of "
     "an alarm not raised)."),
)
_SERVICE_COUNTERS = (  # (service stats key, metric, help)
    ("inputs", "railgate_alarm_inputs_total", "Observations the alarm thread took in."),
    ("dropped_queue_full", "railgate_alarm_inputs_refused_total",
     "Info events dropped under load (the sheddable lane was full); see railgate_alarm_inputs_sampled_away_total."),
    ("input_errors", "railgate_alarm_input_errors_total", "Observations the sources could not turn into inputs."),
    ("appends", "railgate_journal_appends_total", "Group commits to the alarm journal."),
    ("events", "railgate_journal_events_total", "Alarm events appended to the journal since the start."),
    ("append_retries", "railgate_journal_append_retries_total", "Journal appends that failed and were retried."),
)
_RELAY_COUNTERS = (  # (relay stats key, metric, help)
    ("produced", "railgate_relay_produced_total", "Journal events handed to the Kafka producer."),
    ("delivered", "railgate_relay_delivered_total", "Journal events Kafka acknowledged (marked delivered)."),
    ("failed", "railgate_relay_failed_total", "Deliveries Kafka reported failed (retried from the journal)."),
    ("republished", "railgate_relay_republished_total", "Events sent again (today's journal after a start)."),
    ("snapshot_failures", "railgate_relay_snapshot_failures_total", "Alarm table snapshots not delivered."),
    ("restarts", "railgate_relay_restarts_total", "Times the relay child process was restarted."),
)
_WRITER_COUNTERS = (("written", "Journal events the writer stored."),
                    ("failures", "Writes that failed (retried with a back-off)."))


def _alarm_pipeline(f: _Families, alarms: dict) -> None:
    """``status["alarms"]``: None or {} without the alarm stage (families, no samples)."""
    engine = alarms.get("engine") or {}
    service = engine.get("service") or {}
    f.add("railgate_alarm_engine_answered", "gauge", "1 if the alarm thread answered this scrape in time "
          "(the alarm_* figures below are then present).", (1 if "error" not in engine else 0) if alarms else None)
    f.add("railgate_alarms", "gauge", "Alarms in the table, by ISA-18.2 state.", None)
    for state, n in sorted((engine.get("by_state") or {}).items()):
        f.add("railgate_alarms", "gauge", "", n, state=state)
    f.add("railgate_alarms_active", "gauge", "Alarms not NORMAL, by severity and state.", None)
    for severity, states in sorted((engine.get("by_severity") or {}).items()):
        for state, n in sorted(states.items()):
            f.add("railgate_alarms_active", "gauge", "", n, severity=severity, state=state)
    f.add("railgate_alarms_max", "gauge", "Size of the alarm table (max_active).", engine.get("max_active"))
    f.add("railgate_alarms_chattering", "gauge", "Alarms chattering now.", engine.get("chattering"))
    f.add("railgate_alarm_flood", "gauge", "1 while an alarm flood is on.", engine.get("flood"))
    f.add("railgate_alarm_flood_window_new", "gauge", "New alarms in the flood window now.",
          engine.get("new_alarms_in_flood_window"))
    f.add("railgate_alarms_over_bound", "gauge", "Alarms beyond max_active (only exempt: critical and device "
          "alarms).", engine.get("over_bound"))
    f.add("railgate_alarm_groups", "gauge", "Flood group alarms in the table.", engine.get("groups"))
    f.add("railgate_alarm_area_flood", "gauge", "1 while the operator area is in flood (EEMUA 191).", None)
    f.add("railgate_alarm_area_new", "gauge", "New alarms of the operator area in the flood window.", None)
    f.add("railgate_alarm_area_chattering", "gauge", "Chattering alarms of the operator area.", None)
    f.add("railgate_alarm_area_shelved", "gauge", "Shelved alarms of the operator area.", None)
    for area, a in sorted((engine.get("areas") or {}).items()):
        f.add("railgate_alarm_area_flood", "gauge", "", a.get("flood"), area=area)
        f.add("railgate_alarm_area_new", "gauge", "", a.get("new_alarms_in_window"), area=area)
        f.add("railgate_alarm_area_chattering", "gauge", "", a.get("chattering"), area=area)
        f.add("railgate_alarm_area_shelved", "gauge", "", a.get("shelved"), area=area)
    f.add("railgate_alarm_inputs_sampled_away_total", "counter", "Sheddable inputs (threat samples, info "
          "events) not taken under load, by kind.", None)
    for kind, n in sorted((service.get("sampled_away") or {}).items()):
        f.add("railgate_alarm_inputs_sampled_away_total", "counter", "", n, kind=kind)
    f.add("railgate_alarm_event_seq", "gauge", "Sequence number of the last journaled alarm event (kept "
          "across restarts).", engine.get("event_seq"))
    for key, name, help_ in _ENGINE_COUNTERS:
        f.add(name, "counter", help_, engine.get(key))
    for key, name, help_ in _SERVICE_COUNTERS:
        f.add(name, "counter", help_, service.get(key))
    f.add("railgate_journal_last_append_seconds", "gauge", "Duration of the last journal group commit.",
          _scaled(service.get("last_append_ms"), 1000))
    ret = alarms.get("retention") or {}
    f.add("railgate_journal_disk_bytes", "gauge", "Alarm journal on disk (database, WAL, shared memory).",
          ret.get("journal_bytes"))
    f.add("railgate_history_disk_bytes", "gauge", "Alarm history on disk (SQLite files; MySQL data + index).",
          ret.get("history_bytes"))
    f.add("railgate_journal_pruned_total", "counter", "Journal rows deleted by retention.", ret.get("deleted"))
    f.add("railgate_history_pruned_total", "counter", "History rows deleted by retention.",
          ret.get("history_deleted"))
    relay = alarms.get("relay") or {}
    for key, name, help_ in _RELAY_COUNTERS:
        f.add(name, "counter", help_, relay.get(key))
    f.add("railgate_relay_backlog_events", "gauge", "Journaled events not yet delivered to Kafka.",
          relay.get("pending"))
    f.add("railgate_relay_in_flight_events", "gauge", "Events produced, delivery report not yet in.",
          relay.get("in_flight"))
    alive = relay.get("alive", (relay["pid"] is not None) if "pid" in relay else None)
    f.add("railgate_relay_up", "gauge", "1 if the relay (child process) is running.", alive)
    writers = sorted((alarms.get("writers") or {}).items())  # history, and live with Redis
    f.add("railgate_alarm_writer_up", "gauge", "1 if the writer is running (not backing off, not stopped).",
          None)
    for writer, st in writers:
        f.add("railgate_alarm_writer_up", "gauge", "", st.get("state") == "running", writer=writer)
    for key, help_ in _WRITER_COUNTERS:
        f.add(f"railgate_alarm_writer_{key}_total", "counter", help_, None)
        for writer, st in writers:
            f.add(f"railgate_alarm_writer_{key}_total", "counter", help_, st.get(key), writer=writer)
    f.add("railgate_alarm_writer_lag_events", "gauge", "Journaled events the writer has not stored yet.", None)
    for writer, st in writers:
        f.add("railgate_alarm_writer_lag_events", "gauge", "", st.get("lag_events"), writer=writer)


def _coupling(f: _Families, coupling: dict) -> None:
    f.add("railgate_coupling_evaluations_total", "counter", "Coupling evaluations of a consist.",
          coupling.get("evaluations"))
    f.add("railgate_coupling_unconfigured_reports_total", "counter", "Train reports naming no configured "
          "consist.", coupling.get("unconfigured_reports"))
    f.add("railgate_coupling_abnormal_evaluations_total", "counter", "Evaluations that found a fault, by kind.",
          None)
    for kind, n in sorted((coupling.get("abnormal_evaluations") or {}).items()):
        f.add("railgate_coupling_abnormal_evaluations_total", "counter", "", n, kind=kind)
    for what in ("raised", "cleared"):
        name = f"railgate_coupling_conditions_{what}_total"
        f.add(name, "counter", f"Coupling conditions {what}, by name.", None)
        for cond, n in sorted((coupling.get(what) or {}).items()):
            f.add(name, "counter", "", n, condition=cond)
    for key, kind, help_ in (("queue_depth", "gauge", "Reports waiting for the coupling worker."),
                             ("reports", "counter", "Reports the coupling worker took."),
                             ("evaluations", "counter", "Evaluations the coupling worker ran."),
                             ("dropped", "counter", "Reports dropped: the worker's queue was full."),
                             ("errors", "counter", "Evaluations that raised.")):
        name = f"railgate_coupling_worker_{key}" + ("_total" if kind == "counter" else "")
        f.add(name, kind, help_, None)
        for w in coupling.get("workers") or ():
            f.add(name, kind, help_, w.get(key), worker=w.get("worker"))


def _admin(f: _Families, admin: dict) -> None:
    f.add("railgate_admin_connections", "gauge", "Open admin API connections.", admin.get("connections"))
    for key, help_ in (("refused", "Admin connections refused: too many open."),
                       ("refused_per_client", "Admin connections refused: too many from one client."),
                       ("evicted", "Idle admin connections closed to make room."),
                       ("timed_out", "Admin requests answered 408/503 at a deadline."),
                       ("unauthorized", "Admin requests refused without a valid token (401).")):
        f.add(f"railgate_admin_{key}_total", "counter", help_, admin.get(key))


def _process(f: _Families, proc: dict) -> None:
    """The standard ``process_*`` names (as prometheus_client's ProcessCollector), from ``status["process"]``."""
    f.add("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
          proc.get("cpu_s"))
    f.add("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", proc.get("rss_bytes"))
    f.add("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", proc.get("vms_bytes"))
    f.add("process_open_fds", "gauge", "Number of open file descriptors.", proc.get("open_fds"))
    f.add("process_max_fds", "gauge", "Maximum number of open file descriptors.", proc.get("max_fds"))
    f.add("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
          proc.get("start_time_s"))
    f.add("railgate_threads", "gauge", "Python threads alive in the gateway process.", proc.get("threads"))
    gc = proc.get("gc") or {}
    for name, key, help_ in (("python_gc_collections_total", "collections", "Number of times this generation was collected"),
                             ("python_gc_objects_collected_total", "collected", "Objects collected during gc"),
                             ("python_gc_objects_uncollectable_total", "uncollectable",
                              "Uncollectable objects found during GC")):
        for gen, value in enumerate(gc.get(key) or ()):
            f.add(name, "counter", help_, value, generation=gen)
    f.add("railgate_gc_frozen_objects", "gauge", "Objects frozen out of the collector's scans after the start-up grace "
          "(gc.freeze; 0 before it, and in a gateway embedded in another program).", gc.get("frozen"))
