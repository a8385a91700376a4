"""Line-scale load: 2,000 TCP links at 10 frames/s and 500 trains at 5 Hz, gateway beside uvloop.

1,000 interlockings on net A and net B (2,000 links; every 5th frame a
HEARTBEAT, i.e. one per 500 ms heartbeat) and 500 trains sending
TRAIN_STATUS at 5 Hz: 22,500 frames/s offered, paced on a 10 ms tick by a
separate load process (``bench/load.py line``). After a warm-up, the server's
CPU time (user + system, all threads, /proc/PID/stat) over the measured window
gives % of one core and CPU-µs per frame (TCP frames + datagrams the server
counted in the window). The same load then runs against the uvloop server
(``bench/servers.py uvloop``: StreamDecoder + Receiver + apply, and a datagram
protocol for the trains). The gateway also runs its heartbeat timers and
sends a HEARTBEAT per link per 500 ms (4,000 frames/s out); the uvloop server
sends nothing back, which favours it.

Targets (issue 14): gateway < 25 % of one core, and <= 0.5 x the uvloop server's CPU (which does
the same checks in pure Python). The two servers run side by side, each with its own load process,
and take turns (:func:`in_turns`): one's load sends while the other's is paused, ``TURN_WARMUP`` s
and then a measured window of ``SECONDS``, in the order gateway, uvloop, gateway, uvloop, ...,
``PAIRS`` windows each; the rows give the median of the gateway's windows, of uvloop's, and of the
pairs' ratios (a pair's two windows follow each other). Until 2026-11-30 each window had a fresh
server and load, about 20 s apart: this machine's cores change speed by up to 1.8 x from one
second to the next (bench/results/io-threads-bursts-2026-11-30.txt), and the same code gave
0.446 and 0.505 x in two runs (and 0.428, 0.500 and 0.518 x before: the machine's drift between
the windows decided the ratio; bench/results/line-load-pairs-2026-11-30.txt).

The same load also runs against the gateway forced to its pure-Python implementation
(``RAILGATE_PURE=1``) and against the compiled gateway with another allocator preloaded
(``LD_PRELOAD`` of Debian's jemalloc and tcmalloc, each when installed), in shorter windows: the
allocator rows say whether either beats glibc by more than the noise.
"""
from __future__ import annotations

import contextlib
import os
import time

from bench.common import CLK_TCK, cpu_s, line_config, load, median, ports, raise_nofile, row, server

DEVICES, TRAINS, SECONDS, WARMUP = 1000, 500, 5, 3   # WARMUP: the pure and allocator runs'
#: turns of one gateway window and one uvloop window (the rows give their medians), and the sending
#: before each window (the servers are running already)
PAIRS, TURN_WARMUP = 7, 1
#: the shorter window of the pure-implementation and allocator runs
SIDE_SECONDS = 15
ALLOCATORS = {"jemalloc": "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
              "tcmalloc": "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4"}


def measure(kind: str, devices: int, trains: int, seconds: float, warmup: float, env: dict | None = None) -> dict:
    # dead after 20 heartbeats (10 s), not 3: the load opens its 2,000 links one handshake after the other
    # and they stay silent until it starts (3.5 s on a slow day): with 1.5 s the first ones died before
    # the measurement. The per-frame and per-heartbeat work measured is the same.
    cfg = line_config(devices, trains, max_age_ms=600_000, heartbeat_ms=500, dead_after=20)
    with server(kind, cfg, env=env) as srv, load("line", ports=ports(cfg), devices=devices, trains=trains,
                                        seconds=seconds + warmup + 1) as ld:
        ld.proc.stdin.write("go\n")
        ld.proc.stdin.flush()
        time.sleep(warmup)
        s0, c0, t0 = srv.ask("stats"), cpu_s(srv.pid), time.monotonic()
        time.sleep(seconds)
        s1, c1, t1 = srv.ask("stats"), cpu_s(srv.pid), time.monotonic()
        sent = ld._line(seconds + 30)
    frames = (s1["frames"] - s0["frames"]) + (s1["datagrams"] - s0["datagrams"])
    return {"cpu_pct": (c1 - c0) / (t1 - t0) * 100, "cpu_us_per_frame": (c1 - c0) / max(frames, 1) * 1e6,
            "fps": frames / (t1 - t0), "alive": s1.get("alive"), "links": s1.get("links"), "sent": sent}


def in_turns(devices: int, trains: int, pairs: int, seconds: float, warmup: float) -> list[tuple[dict, dict]]:
    """The gateway and the uvloop server side by side, each with its own load, taking turns: one's load
    sends for ``warmup`` + ``seconds`` (measured: the last ``seconds``) while the other's is paused, in
    the order gateway, uvloop, gateway, uvloop... ``pairs`` turns each (not gateway, uvloop, uvloop,
    gateway: the gateway's links would be silent through two turns, longer than its dead time).
    [(gateway, uvloop)] window by window, a pair's two windows one after the other."""
    kinds = ("gateway", "uvloop")
    # dead after 20 heartbeats (10 s): a server's links are silent through the other's turn
    cfgs = {k: line_config(devices, trains, max_age_ms=600_000, heartbeat_ms=500, dead_after=20) for k in kinds}
    span = pairs * (seconds + warmup) + 5
    with contextlib.ExitStack() as stack:
        srvs = {k: stack.enter_context(server(k, cfgs[k])) for k in kinds}
        # the gateway's load last: its links are silent from their handshake to its first turn
        lds = {k: stack.enter_context(load("line", ports=ports(cfgs[k]), devices=devices, trains=trains,
                                           seconds=span, turns=True, max_s=4 * span + 60))
               for k in ("uvloop", "gateway")}
        out = []
        for i in range(pairs):
            got = {}
            for k in kinds:
                got[k] = _turn(srvs[k], lds[k], seconds, warmup, srvs[kinds[1 - kinds.index(k)]].pid)
            out.append((got["gateway"], got["uvloop"]))
        return out


def _turn(srv, ld, seconds: float, warmup: float, other: int) -> dict:
    """One server's turn: its load resumed, ``warmup``, a measured window of ``seconds``, paused.
    ``other``: the pid of the server waiting its turn, whose CPU over the window is told too (an idle
    gateway still sends its 4,000 heartbeats a second)."""
    ld.ask("resume")
    time.sleep(warmup)
    s0, c0, o0, t0 = srv.ask("stats"), cpu_s(srv.pid), cpu_s(other), time.monotonic()
    time.sleep(seconds)
    s1, c1, o1, t1 = srv.ask("stats"), cpu_s(srv.pid), cpu_s(other), time.monotonic()
    ld.ask("pause")
    frames = (s1["frames"] - s0["frames"]) + (s1["datagrams"] - s0["datagrams"])
    return {"cpu_pct": (c1 - c0) / (t1 - t0) * 100, "cpu_us_per_frame": (c1 - c0) / max(frames, 1) * 1e6,
            "fps": frames / (t1 - t0), "alive": s1.get("alive"), "links": s1.get("links"),
            "other_cpu_pct": (o1 - o0) / (t1 - t0) * 100}


def _per(a: dict, b: dict, seconds: float) -> tuple[float, str]:
    """``a``'s CPU over ``b``'s, and a note when ``b`` used less than one CPU clock tick in its window (a
    smoke run's few links): then the ratio is against one tick, an upper bound, and the note says so."""
    tick_pct = 100 / CLK_TCK / seconds
    if b["cpu_pct"] >= tick_pct:
        return a["cpu_pct"] / b["cpu_pct"], ""
    return a["cpu_pct"] / tick_pct, f"the divisor used under one CPU clock tick in {seconds:g} s: against one tick"


def _median_window(ms: list[dict]) -> dict:
    """The window with the median CPU of an odd number of windows (its frames/s and counts go with it)."""
    return sorted(ms, key=lambda m: m["cpu_pct"])[len(ms) // 2]


def run(smoke: bool = False) -> list[dict]:
    raise_nofile()
    devices, trains, seconds, warmup = (20, 10, 0.7, 0.3) if smoke else (DEVICES, TRAINS, SECONDS, WARMUP)
    side = 0.7 if smoke else SIDE_SECONDS
    pairs = [(gw, uv, *_per(gw, uv, seconds))
             for gw, uv in in_turns(devices, trains, 1 if smoke else PAIRS, seconds, 0.3 if smoke else TURN_WARMUP)]
    gw, uv = _median_window([p[0] for p in pairs]), _median_window([p[1] for p in pairs])
    ratio = median([p[2] for p in pairs])
    ratio_note = "; ".join(sorted({p[3] for p in pairs if p[3]}))
    rounds = ", ".join(f"{p[0]['cpu_pct']:.1f} / {p[1]['cpu_pct']:.1f} % = {p[2]:.3f} x" for p in pairs)
    pure = measure("gateway", devices, trains, side, warmup, env={"RAILGATE_PURE": "1"})
    what = (f"{2 * devices} links x 10 frames/s + {trains} trains x 5 Hz, median of {len(pairs)} windows of "
            f"{seconds:g} s in turns with uvloop's")
    to_pure, pure_note = _per(gw, pure, side)
    rows = [
        row("Line load: gateway CPU", round(gw["cpu_pct"], 1), "% of one core", "< 25", gw["cpu_pct"] < 25,
            note=f"{what}; {gw['fps']:,.0f} frames/s counted; links alive at end {gw['alive']}/{gw['links']}"),
        row("Line load: gateway CPU per frame", round(gw["cpu_us_per_frame"], 2), "CPU-µs/frame"),
        row("Line load: uvloop server CPU", round(uv["cpu_pct"], 1), "% of one core",
            note=f"median of {len(pairs)} windows of {seconds:g} s in turns with the gateway's; {uv['fps']:,.0f} "
                 f"frames/s counted; the idle gateway beside it (its heartbeats) "
                 f"{median([p[1]['other_cpu_pct'] for p in pairs]):.1f} %, the idle uvloop server beside the "
                 f"gateway {median([p[0]['other_cpu_pct'] for p in pairs]):.1f} %"),
        row("Line load: uvloop server CPU per frame", round(uv["cpu_us_per_frame"], 2), "CPU-µs/frame"),
        row("Line load ratio gateway / uvloop CPU", round(ratio, 3), "x", "<= 0.5", ratio <= 0.5,
            note=f"median of the pairs' ratios (gateway / uvloop, the two windows in turns): {rounds}"
                 + (f" ({ratio_note})" if ratio_note else "")),
        row("Line load: gateway, pure-Python implementation, CPU", round(pure["cpu_pct"], 1), "% of one core",
            note=f"RAILGATE_PURE=1, {side:g} s; {pure['cpu_us_per_frame']:.1f} CPU-µs/frame; compiled / pure "
                 f"{to_pure:.2f} x" + (f" ({pure_note})" if pure_note else "")),
    ]
    base = measure("gateway", devices, trains, side, warmup)  # glibc, same window as the allocator runs
    missing = [name for name, path in ALLOCATORS.items() if not os.path.exists(path)]
    rows.append(row("Line load: gateway CPU, glibc malloc", round(base["cpu_pct"], 1), "% of one core",
                    note=f"{side:g} s window, the reference of the allocator rows"
                         + (f"; not installed, not measured: {', '.join(missing)}" if missing else "")))
    for name, path in ALLOCATORS.items():
        if name in missing:
            continue
        m = measure("gateway", devices, trains, side, warmup, env={"LD_PRELOAD": path})
        to_glibc, glibc_note = _per(m, base, side)
        rows.append(row(f"Line load: gateway CPU, {name}", round(m["cpu_pct"], 1), "% of one core",
                        note=f"LD_PRELOAD={path}; {to_glibc:.3f} x glibc" + (f" ({glibc_note})" if glibc_note else "")))
    return rows


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
