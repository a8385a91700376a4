"""The alarm journal's size after a 1-hour alarm storm, measured on a simulated clock.

Called by ``bench/alarm_bench.py`` (its "Alarm journal size after a 1-hour storm" row), in the bench
process, one thread. Nothing here opens a socket or reads the wall clock for the alarms' times.

What runs is the alarm thread's own objects, driven as ``AlarmService._process`` drives them, without
the thread and its queue: :class:`alarms.sources.Sources` turns each observation into inputs,
:class:`alarms.engine.AlarmEngine` (options from :class:`alarms.settings.AlarmSettings`, as the gateway
builds them) turns inputs into events, and one :class:`alarms.journal.Journal` opened as the writer
appends every pass's events in one transaction (fsync), with the priority lane (DEVICE_ALARM frames)
first in each pass and ``sources.tick`` + ``engine.tick`` once a simulated second. A pass is every
observation of :data:`PASS_MS` simulated ms.

The input is the storm of the alarm bench's churn run for ``seconds`` simulated seconds:

* ``bench/load.py line`` with ``faults``: ``devices`` interlockings, 10 frames/s each (every 5th a
  HEARTBEAT), device ``d`` on the 10 ms slot ``d % 10`` of each 100 ms, status frames rotating track
  sections / signals / switches with :func:`bench.load.status_frame`'s values, so every section passes
  through FAULT and every switch through LOST once every four of its frames. The gateway applies one copy
  of the dual-net pair (``ObjectState``: listeners get new or changed values) and its alarm stage forwards
  only changes into or out of FAULT / LOST (``AlarmStage.observe_object``): the same two filters run here
  on one device's frames, and the forwarded changes are replayed for every device at its slot's time.
* the bench's alarm device ``CI-<devices>``: DEVICE_ALARM code 2 (major) at ``RATE_HZ`` frames/s,
  raise then clear of a new object each time (object ids 1, 2, ...).

Threat samples (the gateway's 1 s per-link counters) are left out: a storm of well-formed frames moves no
counter, so they raise nothing. The relay's delivery marks (a watermark row) are left out too. Nothing is
pruned: the journal keeps 7 days, so an hour's storm is all kept.
"""
from __future__ import annotations

import collections
import os
import sqlite3
import time

from bench.common import DEVICE_BASE

PASS_MS = 100                   # simulated ms of observations per alarm-thread pass (one append)
TICK_MS = 1000                  # the service's tick_s
FRAME_MS, SLOTS = 100, 10       # bench/load.py line: 10 frames/s per link, on 10 ms slots


def _forwarded_changes(frames: int) -> list[list[tuple[str, int, int]]]:
    """Per frame index k of one device: the (kind, object, value) changes the alarm stage submits.

    The device's frame k as ``bench/load.py line`` sends it (faults on), through ``ObjectState``'s
    "new or changed" and ``AlarmStage.observe_object``'s "into or out of the alarming value" filters."""
    from bench.load import status_frame
    from gateway.app.alarm_stage import ABNORMAL
    from railcodecs import StreamDecoder

    dec = StreamDecoder()
    values: dict[tuple[str, int], int] = {}
    abnormal: set[tuple[str, int]] = set()
    out: list[list[tuple[str, int, int]]] = []
    seq = 0
    for k in range(frames):
        changes: list[tuple[str, int, int]] = []
        out.append(changes)
        if k % 5 == 4:                  # HEARTBEAT
            continue
        seq += 1
        dec.feed(status_frame(DEVICE_BASE, seq, 0, faults=True))
        msg = next(iter(dec.events())).message
        kind = msg.NAME
        bad = ABNORMAL.get(kind)
        for obj, value in msg.items:
            if values.get((kind, obj)) == value:
                continue                # ObjectState: no change, no listener call
            values[(kind, obj)] = value
            if bad is None:
                continue
            if value == bad:
                abnormal.add((kind, obj))
            elif (kind, obj) in abnormal:
                abnormal.discard((kind, obj))
            else:
                continue
            changes.append((kind, obj, value))
    return out


def simulate(tmp: str, *, devices: int, seconds: int, max_active: int, alarm_hz: int,
             t0_ms: int | None = None, engine_options: dict | None = None) -> dict:
    """Run the storm for ``seconds`` simulated seconds; the journal's figures and the wall time taken.

    ``engine_options``: AlarmEngine's keywords (default: the shipped ``AlarmSettings().engine_options()``);
    ``max_active`` replaces theirs."""
    from alarms.engine import AlarmEngine
    from alarms.journal import Journal
    from alarms.observations import DeviceAlarmFrame, ObjectChange
    from alarms.settings import AlarmSettings
    from alarms.sources import Sources
    from railcodecs import DeviceAlarm

    settings = AlarmSettings()
    options = dict(settings.engine_options() if engine_options is None else engine_options, max_active=max_active)
    names = {DEVICE_BASE + d: f"CI-{d}" for d in range(devices + 1)}
    alarm_device = names[DEVICE_BASE + devices]
    path = os.path.join(tmp, "storm-journal.db")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.unlink(path + suffix)
    t0 = (time.time_ns() // 1_000_000 // 1000) * 1000 if t0_ms is None else t0_ms

    frames = seconds * 1000 // FRAME_MS + 1
    per_frame = _forwarded_changes(frames)
    sources = Sources(names, settings.switch_lost_s, settings.threat_rates)
    journal = Journal(path, writer=True)
    engine = AlarmEngine(1, "bench-line", "UTC", **options)     # a new journal: nothing to restore

    by_transition: collections.Counter = collections.Counter()
    inputs = events_n = appends = wal_peak = 0
    alarm_period_ms = 1000 // alarm_hz
    next_alarm, alarm_i, obj = 0, 0, 0
    next_tick = 0
    end_ms = seconds * 1000
    w0 = time.perf_counter()
    try:
        for pass_start in range(0, end_ms, PASS_MS):
            pass_end = pass_start + PASS_MS
            batch: list = []
            while next_alarm < pass_end:            # the priority lane: taken first in the pass
                if alarm_i % 2 == 0:
                    obj += 1
                    msg = DeviceAlarm(2, 2, DeviceAlarm.RAISE, obj, f"bench raise {obj}")
                else:
                    msg = DeviceAlarm(2, 2, DeviceAlarm.CLEAR, obj, "")
                batch.append(DeviceAlarmFrame(alarm_device, msg, t0 + next_alarm))
                alarm_i += 1
                next_alarm = alarm_i * alarm_period_ms
            # the line's frames sent in [pass_start, pass_end): frame k of device d at k * 100 + (d % 10) * 10 ms
            for slot_ms in range(pass_start, pass_end, FRAME_MS // SLOTS):
                k, slot = divmod(slot_ms, FRAME_MS)
                slot //= FRAME_MS // SLOTS
                changes = per_frame[k] if k < frames else ()
                if not changes:
                    continue
                now = t0 + slot_ms
                for d in range(slot, devices, SLOTS):
                    dev = DEVICE_BASE + d
                    for kind, o, value in changes:
                        batch.append(ObjectChange(kind, dev, o, value, now))
            events = []
            for item in batch:                      # AlarmService._process
                for inp in sources.feed(item):
                    events += engine.apply(inp)
            if pass_end > next_tick:                # the service's tick: after the pass's inputs, at its end
                now = t0 + pass_end
                for inp in sources.tick(now):
                    events += engine.apply(inp)
                events += engine.tick(now)
                next_tick += TICK_MS
            if events:
                journal.append(events)
                appends += 1
                by_transition.update(e.transition for e in events)
            inputs += len(batch)
            events_n += len(events)
            if pass_start % 60_000 == 0:
                wal_peak = max(wal_peak, _size(path + "-wal"))
        wal_peak = max(wal_peak, _size(path + "-wal"))
        journaled = journal.counts()["events"]
        status = engine.status()
    finally:
        journal.close()
    run_s = time.perf_counter() - w0
    # the writer's close (the last connection) checkpointed the WAL into the database file; make sure
    db = sqlite3.connect(path)
    try:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        db.close()
    size = _size(path) + _size(path + "-wal")
    return {"bytes": size, "events": events_n, "journaled": journaled, "inputs": inputs, "appends": appends,
            "wal_peak": wal_peak, "wall_s": run_s, "seconds": seconds, "devices": devices,
            "max_active": max_active, "by_transition": dict(by_transition), "table": status.get("alarms"),
            "alarm_frames": alarm_i}


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0
