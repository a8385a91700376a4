"""Simulator scale: 1,000 interlockings (2,000 TCP links) and 200 trains from one ``gateway simulate`` process.

The README's claim "one asyncio thread runs every device and train" at line
scale, measured: the real gateway (``bench/servers.py gateway``, its own
process) on a line of ``DEVICES`` interlockings on nets A and B (each with
sections, signals and switches of its own) and ``TRAINS`` trains, and
``python -m simulators`` (the same code as ``gateway simulate``, its own
process, default options: 5 Hz TRAIN_STATUS, 500 ms heartbeats, a status
snapshot a second plus every change) against it. Once the gateway has every
link alive and every train applied (bounded by ``CONNECT_S``), the
simulator's CPU time (/proc/PID/stat) and the frames and datagrams the
gateway counted are read over ``WINDOW_S``; then the simulator is stopped
with SIGTERM (its clean stop: CLOSE on every link) and its summary read for
the tick loop's worst lag (20 ms ticks, whole run including the connect
phase). No target: the figures say whether one process keeps this line.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time

from bench.common import PY, ROOT, cpu_s, line_config, raise_nofile, row, server

DEVICES, TRAINS, WINDOW_S, CONNECT_S = 1000, 200, 10.0, 60.0


def _line(devices: int, trains: int) -> dict:
    """line_config, but each interlocking with objects of its own (a line, not 1,000 copies of one station)."""
    cfg = line_config(devices, trains, heartbeat_ms=500)
    for i, d in enumerate(cfg["devices"]):
        d["sections"] = [10_000 + 10 * i + k for k in range(10)]
        d["signals"] = [30_000 + 6 * i + k for k in range(6)]
        d["switches"] = [40_000 + 3 * i + k for k in range(3)]
    return cfg


def _threads(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("Threads:"):
                return int(line.split()[1])
    return 0


def measure(devices: int, trains: int, window_s: float, connect_s: float) -> dict:
    import yaml
    cfg = _line(devices, trains)
    with tempfile.TemporaryDirectory(prefix="railgate-sim-bench-") as tmp:
        path, summary_path = os.path.join(tmp, "line.yaml"), os.path.join(tmp, "summary.json")
        with open(path, "w") as f:
            yaml.safe_dump(cfg, f)
        with server("gateway", cfg) as srv:
            env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
            t_start = time.monotonic()
            sim = subprocess.Popen([PY, "-m", "simulators", "-c", path, "--summary", summary_path],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                   text=True, cwd=str(ROOT), env=env)
            try:
                deadline = t_start + connect_s
                while True:
                    st = srv.ask("stats")
                    if (st["alive"] >= 2 * devices and st["trains"] >= trains) or time.monotonic() > deadline \
                            or sim.poll() is not None:
                        break
                    time.sleep(0.1)
                connected_s = time.monotonic() - t_start
                if sim.poll() is not None:
                    raise RuntimeError(f"simulator exited ({sim.returncode}): {sim.stderr.read()[-2000:]}")
                threads = _threads(sim.pid)
                s0, c0, t0 = srv.ask("stats"), cpu_s(sim.pid), time.monotonic()
                time.sleep(window_s)
                s1, c1, t1 = srv.ask("stats"), cpu_s(sim.pid), time.monotonic()
                sim.send_signal(signal.SIGTERM)   # our own child, by its pid: the simulator's clean stop
                sim.wait(60)
            finally:
                if sim.poll() is None:
                    sim.kill()
                    sim.wait(5)
                sim.stderr.close()
        with open(summary_path) as f:
            summary = json.load(f)
    counted = (s1["frames"] - s0["frames"]) + (s1["datagrams"] - s0["datagrams"])
    return {"alive": s1["alive"], "links": s1["links"], "trains": s1["trains"], "connected_s": connected_s,
            "cpu_pct": (c1 - c0) / (t1 - t0) * 100, "fps": counted / (t1 - t0), "threads": threads,
            "max_lag_ms": summary["timing"]["max_tick_lag_ms"], "udp_send_errors": summary["timing"]["udp_send_errors"]}


def run(smoke: bool = False) -> list[dict]:
    raise_nofile()
    devices, trains, window, connect = (10, 5, 1.0, 30.0) if smoke else (DEVICES, TRAINS, WINDOW_S, CONNECT_S)
    m = measure(devices, trains, window, connect)
    what = f"{devices:,} interlockings (nets A and B) + {trains} trains, one simulator process"
    return [
        row("Simulator: links alive at the gateway", m["alive"], "links",
            note=f"{what}; of {2 * devices:,}; {m['trains']}/{trains} trains applied; all up after "
                 f"{m['connected_s']:.1f} s"),
        row("Simulator: CPU", round(m["cpu_pct"], 1), "% of one core",
            note=f"{window:g} s window; simulator threads {m['threads']} (one asyncio loop)"),
        row("Simulator: frames + datagrams counted by the gateway", round(m["fps"]), "frames/s"),
        row("Simulator: tick loop max lag", m["max_lag_ms"], "ms",
            note=f"20 ms ticks, whole run incl. connecting; UDP send errors {m['udp_send_errors']}"),
    ]


if __name__ == "__main__":
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
