"""The status document served at /status and shown by `gateway status`.

Built from snapshots read without stopping the loops: counters are plain ints
written by one thread each, so a reader sees each value whole, though not all
of them at one instant. Units are in the key names (``_ms``, ``_s``, ``_cm_s``).

Threading: any thread (the admin server's).
"""
from __future__ import annotations

import time
from datetime import datetime
from zoneinfo import ZoneInfo

KIND_NAMES = {1: "interlocking", 2: "zone_controller", 3: "platform_doors"}


def build_status(gw) -> dict:
    ctx = gw.ctx
    now_ms = ctx.now_ms()
    tz = ZoneInfo(gw.cfg.timezone)
    devices = []
    for dev_id, dl in ctx.registry.devices.items():
        d = dl.device
        sender = ctx.receiver.senders[dev_id]
        current = ctx.registry.links_of(dev_id)
        links = []
        for net in d.nets:
            link = current.get(net)
            if link is not None:
                links.append(link.stats())
            else:
                links.append({"net": net, "alive": False, "state": "down", "peer": None, "loop": None,
                              "rx_frames": 0, "tx_frames": 0, "rx_bytes": 0, "tx_bytes": 0,
                              "last_rx_age_ms": None, "errors": {}})
        devices.append({"id": dev_id, "name": d.name, "kind": KIND_NAMES[d.kind], "reachable": dl.reachable,
                        **sender.counters(), "links": links, "objects": ctx.objects.device_snapshot(dev_id)})
    trains = []
    for tid in gw.cfg.trains.ids:
        st = ctx.objects.trains.get(tid)
        sender = ctx.receiver.senders[tid]
        last = ctx.registry.train_last_rx(tid)
        trains.append({"id": tid, "reachable": ctx.registry.train_reachable(tid),
                       "section_id": st.section_id if st else None, "offset_cm": st.offset_cm if st else None,
                       "speed_cm_s": st.speed_cm_s if st else None, "consist_id": st.consist_id if st else None,
                       "coupling": st.coupling if st else None, "role": st.role if st else None,
                       "last_rx_age_ms": now_ms - last if last is not None else None, **sender.counters()})
    slab = gw.slabs.stats()
    links_pool = gw.link_pool.stats() if hasattr(gw.link_pool, "stats") else {}
    return {
        "gateway_id": gw.cfg.gateway.id, "name": gw.cfg.gateway.name, "line": gw.cfg.line_name,
        "uptime_s": round(time.monotonic() - gw.started_mono, 3),
        "started_at": datetime.fromtimestamp(gw.started_ms / 1000, tz).isoformat(timespec="seconds"),
        "devices": devices, "trains": trains,
        "udp": gw.udp.stats() if gw.udp is not None else {},
        "loops": [lp.stats() for lp in gw.pool.all_loops()] if hasattr(gw.pool, "all_loops") else [],
        "pools": {"slabs": _slab_totals(slab), "links": links_pool},
        "counters": dict(ctx.counters),
        "consists": gw.coupling.snapshot(now_ms) if getattr(gw, "coupling", None) else [],
        "coupling": ({**gw.coupling.totals(), "workers": gw.coupling_workers.stats()}
                     if getattr(gw, "coupling", None) else {}),
        "alarms": gw.alarms.status() if getattr(gw, "alarms", None) is not None else None,
        **ctx.events.snapshot(),
    }


def _slab_totals(stats: dict) -> dict:
    total = stats.get("total", stats)
    return {k: total.get(k) for k in ("in_use", "free", "high_water", "exhausted")}
