"""The garbage collector in a gateway that owns its process (`gateway run`).

CPython's cyclic collector walks every tracked object in a full (generation 2)
collection, holding the GIL: every Python thread (the alarm thread, the IO
loops' Python steps, the admin API) stops meanwhile. A line's gateway holds
about 100,000 long-lived objects after its links are up (config, links,
tables), and at line load a full collection paused it 30-70 ms, the largest
part of an alarm's worst frame -> Kafka times (bench/alarm_bench.py, traced:
``bench/results/alarm-latency-trace-2026-11-30.txt``).

At the end of the start-up grace the links are up and what lives will mostly
live as long as the process: one collection clears the cyclic garbage made so
far, then ``gc.freeze()`` moves every object alive to the permanent
generation, which later collections do not walk (what the CPython docs advise
for long-lived state, as Instagram's servers do). Objects made later (links
that connect late or reconnect, alarms, requests) are collected as before.
The cost: a frozen object that becomes cyclic garbage later stays (a link of
the start that closes): bounded by what was frozen, once.

Threading: :func:`freeze_long_lived` from the base loop thread, once; the
figures from any thread.
"""
from __future__ import annotations

import gc


def freeze_long_lived() -> int:
    """Collect once, then freeze what lives; returns how many objects are frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


def gc_stats() -> dict:
    """The collector's figures for /status: objects frozen, and per generation the collections run and the
    objects they freed (``gc.get_stats``, as prometheus_client's GCCollector reads them)."""
    stats = gc.get_stats()
    return {"frozen": gc.get_freeze_count(), "collections": [s["collections"] for s in stats],
            "collected": [s["collected"] for s in stats], "uncollectable": [s["uncollectable"] for s in stats]}
