"""Scaling: the gateway's TCP ingest with io_threads 1, 2 and 4 (same bytes as tcp_ingest_bench).

The compiled reader takes a busy link's bytes in bulk passes without the GIL
(``FastReader._bulk_pass``: ``recv`` and ``FastLink._run_nogil``), so a second
IO loop decodes on a second core; the
machine's two cores are shared with the load generator and the kernel's
loopback TCP, so each row's note gives the gateway's and the sender's CPU over
the run (% of one core): how busy the machine was, and what a loop costs per
frame. Median of ``ROUNDS`` interleaved runs.
"""
from __future__ import annotations

import os

from bench.common import median, row
from bench.tcp_ingest_bench import DEVICES, measure

THREADS = (1, 2, 4)
FRAMES = 600_000  # per link: 12,000,000 frames, about a second of the compiled gateway with one loop
# (150,000 until 2026-11-29: 0.25 s with one loop and 0.15 s with two, of which the senders' start took a
# share that weighed on two loops more; bench/results/io-threads-bulk-2026-11-29.txt has both on one build)
ROUNDS = 3


def run(smoke: bool = False) -> list[dict]:
    devices, frames, rounds = (1, 100, 1) if smoke else (DEVICES, FRAMES, ROUNDS)
    fps = {t: [] for t in THREADS}
    cpu = {t: [] for t in THREADS}       # (gateway, sender) % of one core over each run
    for _ in range(rounds):
        for t in THREADS:
            m = measure("gateway", devices=devices, frames=frames, io_threads=t)
            fps[t].append(m["fps"])
            cpu[t].append((m["cpu_pct"], m["load_cpu_pct"]))
    base = median(fps[1])
    rows = []
    for t in THREADS:
        m = median(fps[t])
        g, s = median([c[0] for c in cpu[t]]), median([c[1] for c in cpu[t]])
        rows.append(row(f"TCP ingest, gateway io_threads={t}", round(m), "frames/s",
                        note=f"{m / base:.2f} x io_threads=1; {2 * devices} links, median of {rounds}; "
                             f"CPU over the run, % of one core (the machine has {os.cpu_count()}): gateway "
                             f"{g:.0f}, sender {s:.0f} (its loopback TCP included)"))
    if 2 in fps:
        r2 = median(fps[2]) / base
        rows.append(row("TCP ingest ratio io_threads 2 / 1", round(r2, 3), "x", ">= 1.6", r2 >= 1.6))
    return rows


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
