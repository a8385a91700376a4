"""TCP ingest: the gateway beside the practical limit, uvloop and plain asyncio, on the same bytes.

20 links (10 interlockings on net A and net B) each get HELLO and then the
same pre-encoded status frames (``railcodecs.encode``; seq 1..N on both nets,
a HEARTBEAT every 50 frames), blasted by a separate sender process
(``bench/load.py tcp_blast``). A server's figure is the frames it decoded
divided by the wall time from "go" until its count reached the total (polled
every 10 ms over a pipe), plus its CPU time per frame from /proc. The four
servers run one after another, interleaved over ``ROUNDS`` rounds; the median
is reported. ``max_age_ms`` is raised to 600 s for this line so that frames
encoded before the run are applied, not dropped as stale, however long the
slowest server takes.

The gateway runs the shipped configuration: ``io_threads`` is left to its
default (1, ``gateway/app/config.py``; ``config/demo-line.yaml`` does not set
it); the row's note names the value. ``bench/scaling_bench.py`` varies it.

Targets (issue "benchmarks and performance targets"): gateway >= 0.6 x limit
and >= 1.0 x uvloop, in frames/s.
"""
from __future__ import annotations

import time

from bench.common import cpu_s, effective_io_threads, line_config, load, median, ports, row, server, wait_count

KINDS = ("gateway", "limit", "uvloop", "asyncio")
LABELS = {"gateway": "(a) gateway, every ICD check + state apply", "limit": "(b) limit: epoll, header + CRC only",
          "uvloop": "(c) uvloop BufferedProtocol + StreamDecoder + Receiver",
          "asyncio": "(d) asyncio StreamReader, typical integrator"}
DEVICES = 10            # x 2 nets = 20 links
FRAMES = 40_000         # per link, full run: 800,000 frames, long enough for the 10 ms count polling
ROUNDS = 3
TIMEOUT_S = 60


def measure(kind: str, *, devices: int, frames: int, io_threads: int | None = None) -> dict:
    """One run of one server: frames/s (wall) and CPU-µs per frame. ``io_threads`` None: the shipped default."""
    cfg = line_config(devices, io_threads=io_threads, max_age_ms=600_000)
    with server(kind, cfg) as srv, load("tcp_blast", ports=ports(cfg), devices=devices, frames=frames,
                                        max_s=TIMEOUT_S) as ld:
        total = ld.ready["frames_total"]
        c0, l0 = cpu_s(srv.pid), cpu_s(ld.pid)
        t0 = time.monotonic()
        ld.proc.stdin.write("go\n")
        ld.proc.stdin.flush()
        n, t1 = wait_count(srv, "frames", total, TIMEOUT_S)
        c1, l1 = cpu_s(srv.pid), cpu_s(ld.pid)
    wall = t1 - t0
    return {"frames": n, "total": total, "seconds": wall, "fps": n / wall,
            "cpu_us_per_frame": (c1 - c0) / max(n, 1) * 1e6, "complete": n >= total,
            "io_threads": effective_io_threads(cfg),
            # % of one core over the window: the server's, and the sender's (its loopback TCP included)
            "cpu_pct": (c1 - c0) / wall * 100, "load_cpu_pct": (l1 - l0) / wall * 100}


def run(smoke: bool = False) -> list[dict]:
    devices, frames, rounds = (2, 300, 1) if smoke else (DEVICES, FRAMES, ROUNDS)
    results: dict[str, list[dict]] = {k: [] for k in KINDS}
    for _ in range(rounds):
        for kind in KINDS:
            results[kind].append(measure(kind, devices=devices, frames=frames))
    fps = {k: median([r["fps"] for r in rs]) for k, rs in results.items()}
    cpu = {k: median([r["cpu_us_per_frame"] for r in rs]) for k, rs in results.items()}
    rows = []
    for k in KINDS:
        incomplete = sum(not r["complete"] for r in results[k])
        rows.append(row(f"TCP ingest {LABELS[k]}", round(fps[k]), "frames/s",
                        note=f"{2 * devices} links, {results[k][0]['total']:,} frames/run, median of {rounds}"
                             + (f"; io_threads {results[k][0]['io_threads']} (shipped default)"
                                if k == "gateway" else "")
                             + (f"; {incomplete} run(s) timed out" if incomplete else "")))
        rows.append(row(f"TCP ingest {LABELS[k]}: CPU", round(cpu[k], 2), "CPU-µs/frame"))
    r_limit = fps["gateway"] / fps["limit"]
    r_uv = fps["gateway"] / fps["uvloop"]
    rows.append(row("TCP ingest ratio gateway / limit", round(r_limit, 3), "x", ">= 0.6", r_limit >= 0.6))
    rows.append(row("TCP ingest ratio gateway / uvloop", round(r_uv, 3), "x", ">= 2.0", r_uv >= 2.0))
    rows.append(row("TCP ingest ratio gateway / asyncio", round(fps["gateway"] / fps["asyncio"], 3), "x"))
    return rows


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
