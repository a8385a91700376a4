"""Coupling engine throughput: evaluations per second with 1, 2, 4 and 8 worker threads.

One submitter thread (as the UDP loop) puts every report into a
:class:`gateway.coupling.workers.CouplingWorkers` pool; the clock runs from
the first submit until ``stop()`` has drained every queue. Reports are
pre-built (a mix of normal, double-master, double-slave and mismatch pairs)
so only queueing, pairing and evaluation are timed. A "direct" row feeds
the engine from the calling thread without any queue, for reference.

On a GIL build the workers take turns on one core's worth of bytecode: more
workers add queue hand-offs and lock traffic but no parallel evaluation, so
expect the figures to stay flat or fall as workers are added.

    .venv/bin/python bench/coupling_bench.py [--smoke]

``run(smoke=False) -> list[dict]`` returns rows ``{"name", "value", "unit"}``
for the ``make bench`` harness.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

try:
    from gateway.coupling.engine import CouplingEngine
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from gateway.coupling.engine import CouplingEngine
from gateway.coupling.settings import CouplingSettings
from gateway.coupling.workers import CouplingWorkers
from railcodecs import TrainStatus

WORKER_COUNTS = (1, 2, 4, 8)
M, S = TrainStatus.MASTER, TrainStatus.SLAVE
T0_MS = 1_700_000_000_000  # sender clock of the first round (epoch ms, on a window boundary)


class _NullSink:
    """Drops the engine's output: the bench times the engine, not the event log."""

    def raise_condition(self, *args) -> bool:
        return True

    clear_condition = emit = raise_condition


def _workload(consists: int, length: int):
    """(consist map, submit order [(train, report, time_ms, now_ms)]) in rounds, as trains report at 5 Hz.

    Round k is pairing window k (200 ms, the default ``pair_window_ms``): train A
    sends 20 ms into it, train B 120 ms, each received 3 ms later.
    """
    line, order = {}, []
    pattern = [(M, S)] * 4 + [(M, M)] * 4 + [(S, S)] * 4 + [(M, S)] * 4
    for i in range(consists):
        line[i + 1] = (10_000 + 2 * i, 10_001 + 2 * i)
    for k in range(length):
        for cid, (a, b) in line.items():
            ra_role, rb_role = pattern[(k + cid) % len(pattern)]
            coupling = TrainStatus.COUPLED if (k + cid) % 11 else TrainStatus.DECOUPLED  # some mismatches
            t = T0_MS + k * 200
            order.append((a, TrainStatus(104, 0, 0, 0, 0, cid, TrainStatus.COUPLED, ra_role, b, 0, 0), t + 20, t + 23))
            order.append((b, TrainStatus(104, 0, 0, 0, 0, cid, coupling, rb_role, a, 0, 0), t + 120, t + 123))
    return line, order


def _once(line, order, workers: int | None) -> float:
    engine = CouplingEngine(line, _NullSink(), max_pending=len(order))
    t0 = time.perf_counter()
    if workers is None:
        ingest = engine.ingest
        for item in order:
            ingest(*item)
    else:
        pool = CouplingWorkers(engine, workers, high_water=len(order) + 1)
        pool.start()
        submit = pool.submit
        for item in order:
            submit(*item)
        pool.stop()
    elapsed = time.perf_counter() - t0
    expected = len(order) // 2
    if engine.evaluations.get() != expected:
        raise AssertionError(f"{engine.evaluations.get()} evaluations, expected {expected}")
    return expected / elapsed


def run(smoke: bool = False) -> list[dict]:
    """Rows {"name", "value", "unit"}: evaluations/s per worker count (median of the repeats)."""
    consists, length, repeat = (200, 5, 1) if smoke else (1000, 20, 3)
    line, order = _workload(consists, length)
    default = CouplingSettings().workers
    rates = {w: statistics.median(_once(line, order, w) for _ in range(repeat)) for w in (None, *WORKER_COUNTS)}
    rows = [{"name": "coupling evaluations, direct (no queue)", "value": round(rates[None]), "unit": "evaluations/s",
             "note": f"{consists:,} consists x {length} pairing windows = {len(order) // 2:,} evaluations, "
                     f"median of {repeat}"},
            {"name": "coupling: one evaluation, direct", "value": round(1e6 / rates[None], 1), "unit": "µs"}]
    for workers in WORKER_COUNTS:
        rows.append({"name": f"coupling evaluations, {workers} worker{'s' if workers > 1 else ''}",
                     "value": round(rates[workers]), "unit": "evaluations/s",
                     "note": f"{rates[workers] / rates[1]:.2f} x 1 worker"
                             + ("; the default (coupling.workers)" if workers == default else "")})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a small, quick run")
    args = p.parse_args(argv)
    rows = run(smoke=args.smoke)
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark'.ljust(width)}  {'value':>12}  unit")
    for r in rows:
        print(f"{r['name'].ljust(width)}  {r['value']:>12,}  {r['unit']}")
    print(f"python {sys.version.split()[0]}, GIL {'on' if getattr(sys, '_is_gil_enabled', lambda: True)() else 'off'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
