"""Scaling: the gateway's TCP ingest with io_threads 1, 2 and 4 (same bytes as tcp_ingest_bench).

The compiled reader takes a busy link's bytes in bulk passes without the GIL
(``FastReader._bulk_pass``: ``recv`` and ``FastLink._run_nogil``), so a second
IO loop decodes on a second core; the machine's two cores are shared with the
load generator and the kernel's loopback TCP.

How it is measured: the three gateways (io_threads 1, 2, 4) run side by side,
each with its 20 links from one sender process (``bench/load.py tcp_bursts``),
and take turns: a burst of ``PER_BURST`` frames a link on one gateway's links
while the others idle, then the next gateway, in the order 1, 2, 4, 4, 2, 1,
1, 2, 4... (``ROUNDS`` bursts each). A burst's rate is the gateway's frames
counted between 10 % and 90 % of the burst (polled every ``POLL_S``), so the
sender's start and the last link's tail are left out. The ratio row is the
median of each round's io_threads 2 / 1, two bursts at most a second apart.

Why turns, not one gateway after the other: this machine's cores change speed
by up to 1.8 x from one second to the next (a CPU-bound probe, alone:
2.0-3.7 units a quarter-second; bench/results/io-threads-bursts-2026-11-30.txt),
so two runs ten seconds apart (a fresh gateway and sender each, as until
2026-11-30) compared the machine's moments as much as the loops: the same code
gave 1.29 to 1.76 x.
"""
from __future__ import annotations

import os
import time

from bench.common import cpu_s, line_config, load, median, ports, row, server, wait_count
from bench.tcp_ingest_bench import DEVICES

THREADS = (1, 2, 4)
PER_BURST = 100_000   # frames a link a burst: 2,000,000 frames, about 0.18 s of one loop, 0.11 s of two
ROUNDS = 12           # bursts per gateway (6 until 2026-11-30); the sender holds ROUNDS x PER_BURST frames a link
POLL_S = 0.002
TIMEOUT_S = 60


def _burst(srv, ld, s: int, j: int, frames: int, poll_s: float) -> dict:
    """One burst on server ``s``: its steady rate (frames/s between 10 and 90 % of the burst), and
    its and the sender's CPU over the whole burst (% of one core)."""
    n0 = srv.ask("stats")["frames"]
    c0, l0 = cpu_s(srv.pid), cpu_s(ld.pid)
    t0 = time.monotonic()
    ld.ask(f"burst {s} {j}")
    lo, hi = n0 + frames // 10, n0 + frames * 9 // 10
    t_lo = t_hi = n_lo = n_hi = None
    while True:
        n = srv.ask("stats")["frames"]
        now = time.monotonic()
        if t_lo is None and n >= lo:
            t_lo, n_lo = now, n
        if n >= hi and t_hi is None:
            t_hi, n_hi = now, n
        if n >= n0 + frames:
            break
        if now - t0 > TIMEOUT_S:
            raise TimeoutError(f"io_threads burst: {n - n0} of {frames} frames in {TIMEOUT_S} s")
        time.sleep(poll_s)
    wall = now - t0
    c1, l1 = cpu_s(srv.pid), cpu_s(ld.pid)
    steady = n_hi > n_lo and t_hi > t_lo   # else the burst came within one poll (smoke sizes): the whole of it
    return {"fps": (n_hi - n_lo) / (t_hi - t_lo) if steady else frames / wall,
            "cpu_pct": (c1 - c0) / wall * 100, "load_cpu_pct": (l1 - l0) / wall * 100}


def measure(devices: int, per_burst: int, rounds: int, threads=THREADS, poll_s: float = POLL_S) -> dict:
    """The gateways with ``threads`` IO loops side by side, ``rounds`` bursts each, in turns
    (1, 2, 4, 4, 2, 1, ...). Returns {io_threads: [burst results in round order]}."""
    cfgs = [line_config(devices, io_threads=t, max_age_ms=600_000) for t in threads]
    srvs = [server("gateway", c) for c in cfgs]
    try:
        with load("tcp_bursts", servers=[ports(c) for c in cfgs], devices=devices,
                  frames=per_burst * rounds, bursts=rounds, max_s=TIMEOUT_S * rounds * len(threads)) as ld:
            frames = ld.ready["frames_per_burst"]
            # every link's handshake counted first: a burst's count starts from a settled figure
            for srv in srvs:
                wait_count(srv, "frames", ld.ready["handshake_frames"], TIMEOUT_S)
            out = {t: [] for t in threads}
            for r in range(rounds):
                order = range(len(threads)) if r % 2 == 0 else reversed(range(len(threads)))
                for i in order:
                    out[threads[i]].append(_burst(srvs[i], ld, i, r, frames, poll_s))
            return out
    finally:
        for s in srvs:
            s.close()


def run(smoke: bool = False) -> list[dict]:
    devices, per_burst, rounds = (1, 100, 2) if smoke else (DEVICES, PER_BURST, ROUNDS)
    res = measure(devices, per_burst, rounds)
    base = median([b["fps"] for b in res[1]])
    rows = []
    for t in THREADS:
        m = median([b["fps"] for b in res[t]])
        g = median([b["cpu_pct"] for b in res[t]])
        s = median([b["load_cpu_pct"] for b in res[t]])
        per_round = [b["fps"] / a["fps"] for a, b in zip(res[1], res[t])]
        rows.append(row(f"TCP ingest, gateway io_threads={t}", round(m), "frames/s",
                        note=f"{m / base:.2f} x io_threads=1 (median of the rounds' ratios "
                             f"{median(per_round):.2f}); {2 * devices} links, median of {rounds} bursts of "
                             f"{per_burst:,} frames a link, the gateways in turns; rate between 10 and 90 % of a "
                             f"burst; CPU over a burst, % of one core (the machine has {os.cpu_count()}): gateway "
                             f"{g:.0f}, sender {s:.0f} (its loopback TCP included)",
                        rounds=[round(r, 3) for r in per_round]))
    r2 = median([b["fps"] / a["fps"] for a, b in zip(res[1], res[2])])
    rows.append(row("TCP ingest ratio io_threads 2 / 1", round(r2, 3), "x", ">= 1.6", r2 >= 1.6,
                    note="median of the rounds' ratios (each round: one burst per gateway, in turns)"))
    return rows


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
