"""The status document served at /status and shown by `gateway status`.

Built from snapshots read without stopping the loops: counters are plain ints
written by one thread each, so a reader sees each value whole, though not all
of them at one instant. Units are in the key names (``_ms``, ``_s``, ``_cm_s``).

Threading: any thread (the admin loop thread serves it).
"""
from __future__ import annotations

import os
import resource
import threading
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from gateway.app.gc_policy import gc_stats
from gateway.base.version import version

KIND_NAMES = {1: "interlocking", 2: "zone_controller", 3: "platform_doors"}


def build_status(gw) -> dict:
    """The whole status document of one running ``Gateway``, from each part's own ``stats()``."""
    line = gw.line
    now_ms = line.now_ms()
    homes = gw.pool.homes()
    return {
        "gateway_id": gw.cfg.gateway.id, "name": gw.cfg.gateway.name, "line": gw.cfg.line_name, "version": version(),
        "implementation": gw.implementation,
        "uptime_s": round(time.monotonic() - gw.started_mono, 3),
        "timezone": gw.cfg.timezone,  # the line's zone: started_at's offset, and every time a client shows
        "started_at": datetime.fromtimestamp(gw.started_ms / 1000, ZoneInfo(gw.cfg.timezone)).isoformat(
            timespec="seconds"),
        "devices": device_status(line, now_ms), "trains": train_status(line, gw.cfg.trains.ids, now_ms),
        "udp": gw.udp.stats() if gw.udp is not None else {},
        # devices_at_home: the devices whose links live on the loop (gateway.link_placement: device)
        "loops": [{**lp.stats(), "devices_at_home": homes.get(lp.name, 0)} for lp in gw.pool.all_loops()],
        "pools": {"links": gw.link_pool.stats(), "pre_session": gw.pre_session.stats()},
        "counters": dict(gw.ctx.counters),
        "consists": gw.coupling.snapshot(now_ms),
        "coupling": {**gw.coupling.totals(), "workers": gw.coupling_workers.stats()},
        "alarms": gw.alarms.status() if gw.alarms is not None else None,
        "commands": gw.commands.stats() if getattr(gw, "commands", None) is not None else None,
        "identity": gw.identity.stats() if gw.identity is not None else None,
        **line.events.snapshot(),
        "process": process_stats(),
    }


def device_status(line, now_ms: int) -> list[dict]:
    """Each configured device: reachability, receiver counters, its links (down ones too), objects.

    A net whose link is down shows the last link's counters, frozen as it closed (``closed_ms``,
    ``closed_reason``; ages at ``now_ms``, the gateway's wall ms); every net adds totals over all its
    links since the start (``links_opened``, ``rx_frames_total``, ``errors_total``)."""
    out = []
    objects = line.objects.device_snapshots()       # every table walked once, not once per device
    for dev_id, dl in line.registry.devices.items():
        d = dl.device
        nets = line.registry.nets_of(dev_id)
        links = [_link_status(net, nets[net], now_ms) for net in d.nets]
        out.append({"id": dev_id, "name": d.name, "kind": KIND_NAMES[d.kind], "reachable": dl.reachable,
                    **line.receiver.senders[dev_id].counters(), "links": links,
                    "objects": objects.get(dev_id) or {"sections": {}, "signals": {}, "switches": {}}})
    return out


def train_status(line, train_ids, now_ms: int) -> list[dict]:
    """Each configured train: reachability, last reported position and coupling, receiver counters."""
    out = []
    for tid in train_ids:
        st = line.objects.trains.get(tid)
        last = line.registry.train_last_rx(tid)
        out.append({"id": tid, "reachable": line.registry.train_reachable(tid),
                    "section_id": st.section_id if st else None, "offset_cm": st.offset_cm if st else None,
                    "speed_cm_s": st.speed_cm_s if st else None, "consist_id": st.consist_id if st else None,
                    "coupling": st.coupling if st else None, "role": st.role if st else None,
                    "last_rx_age_ms": now_ms - last if last is not None else None,
                    **line.receiver.senders[tid].counters()})
    return out


def _link_status(net: str, rec, now_ms: int) -> dict:
    """One net's entry: the registered link's live ``stats()``, else the last link's frozen counters,
    else (never up) zeros; then the totals over every link of the net (the live one's counts added)."""
    if rec.link is not None:
        entry = rec.link.stats()
        rx, errors = rec.rx_frames + entry["rx_frames"], rec.errors + sum(entry["errors"].values())
    else:
        entry = rec.last.status(now_ms) if rec.last is not None else _down_link(net)
        rx, errors = rec.rx_frames, rec.errors
    entry.update(links_opened=rec.links_opened, rx_frames_total=rx, errors_total=errors)
    return entry


def _down_link(net: str) -> dict:
    """A net no link has come up on since the start."""
    return {"net": net, "alive": False, "state": "down", "peer": None, "loop": None, "rx_frames": 0,
            "tx_frames": 0, "rx_bytes": 0, "tx_bytes": 0, "last_rx_age_ms": None, "errors": {},
            "closed_ms": None, "closed_age_ms": None, "closed_reason": None}


_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def process_stats() -> dict:
    """This process from ``/proc/self`` (Linux), as prometheus_client's ProcessCollector reads it:
    CPU seconds, memory bytes, open and allowed fds, start time (Unix s), Python threads. A figure
    that cannot be read is None. Any thread; a few small reads of /proc, no locks."""
    cpu = os.times()
    out = {"cpu_s": round(cpu.user + cpu.system, 3), "rss_bytes": None, "vms_bytes": None, "open_fds": None,
           "max_fds": resource.getrlimit(resource.RLIMIT_NOFILE)[0], "start_time_s": None,
           "threads": threading.active_count(), "gc": gc_stats()}
    try:
        with open("/proc/self/statm", "rb") as f:
            vms, rss = f.read().split()[:2]
        out["vms_bytes"], out["rss_bytes"] = int(vms) * _PAGE, int(rss) * _PAGE
        out["open_fds"] = len(os.listdir("/proc/self/fd"))
        with open("/proc/self/stat", "rb") as f:  # field 22, after the ")" that ends the command name
            start_ticks = int(f.read().rpartition(b")")[2].split()[19])
        with open("/proc/stat", "rb") as f:
            btime = next(int(ln.split()[1]) for ln in f if ln.startswith(b"btime "))
        out["start_time_s"] = round(btime + start_ticks / _TICKS, 2)
    except (OSError, ValueError, IndexError, StopIteration):
        pass  # not Linux, or /proc not mounted: those figures stay None (absent, not zero)
    return out
