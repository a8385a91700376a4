"""Logging throughput: DoubleBufferHandler vs QueueHandler+QueueListener vs FileHandler.

The same records (same logger setup, same format, same message) go through
three handler set-ups:

  (a) double-buffer  gateway.base.async_log.DoubleBufferHandler(path)
  (b) queue          logging.handlers.QueueHandler -> QueueListener -> FileHandler
  (c) file           logging.FileHandler (synchronous, stdlib)

Two numbers per set-up, both in records/s:

  caller      records / (time from the common start until the last emitting
              thread returns) -- the throughput callers see;
  end-to-end  records / (time from the common start until the handler is
              closed, i.e. every record has been written and the file
              flushed/closed -- handed to the OS, no fsync).

plus the process CPU time (all threads, t0 to closed) per record, which
other load on the machine disturbs less than wall time.

Each set-up runs --repeat times (set-ups interleaved so drift hits all of
them alike); the median is reported. Line counts are checked after each run.

    .venv/bin/python bench/log_bench.py --records 200000 --threads 4 [--out r.json]
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import logging.handlers
import os
import pathlib
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time

try:
    from gateway.base.async_log import DoubleBufferHandler
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from gateway.base.async_log import DoubleBufferHandler

FMT = "%(asctime)s %(levelname)s %(threadName)s %(name)s: %(message)s"
KINDS = ("double-buffer", "queue", "file")
_ids = itertools.count()


def _setup(kind: str, path: pathlib.Path, logger: logging.Logger):
    """Attach the handler(s) for `kind`; return a callable that drains and closes them."""
    formatter = logging.Formatter(FMT)
    if kind == "double-buffer":
        h = DoubleBufferHandler(path)
        h.setFormatter(formatter)
        logger.addHandler(h)
        return h.close
    if kind == "queue":
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(formatter)  # formatting happens in the listener thread, as usual
        q: queue.SimpleQueue = queue.SimpleQueue()
        logger.addHandler(logging.handlers.QueueHandler(q))
        listener = logging.handlers.QueueListener(q, fh)
        listener.start()

        def finish() -> None:
            listener.stop()  # drains the queue, joins the listener thread
            fh.close()
        return finish
    if kind == "file":
        fh = logging.FileHandler(path, encoding="utf-8")
        fh.setFormatter(formatter)
        logger.addHandler(fh)
        return fh.close
    raise ValueError(kind)


def run_once(kind: str, records: int, threads: int, tmpdir: pathlib.Path) -> dict:
    path = tmpdir / f"{kind}-{next(_ids)}.log"
    logger = logging.getLogger(f"railgate.bench.{kind}.{next(_ids)}")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    finish = _setup(kind, path, logger)

    counts = [records // threads + (1 if t < records % threads else 0) for t in range(threads)]
    start = threading.Barrier(threads + 1)

    def work(t: int, n: int) -> None:
        info = logger.info
        start.wait()
        for i in range(n):
            info("link %s state %s -> %s seq=%d rtt_ms=%.2f", "ixl-07", "UP", "DEGRADED", i, 3.25)

    workers = [threading.Thread(target=work, args=(t, n), name=f"emit-{t}")
               for t, n in enumerate(counts)]
    for w in workers:
        w.start()
    start.wait()
    c0, t0 = time.process_time(), time.perf_counter()
    for w in workers:
        w.join()
    t1 = time.perf_counter()
    finish()
    t2, c2 = time.perf_counter(), time.process_time()
    for h in list(logger.handlers):
        logger.removeHandler(h)

    with open(path, "rb") as f:
        lines = sum(1 for _ in f)
    if lines != records:
        raise SystemExit(f"{kind}: expected {records} lines on file, found {lines}")
    path.unlink()
    return {"caller_s": t1 - t0, "end_to_end_s": t2 - t0, "cpu_us_per_record": (c2 - c0) / records * 1e6,
            "caller_rps": records / (t1 - t0), "end_to_end_rps": records / (t2 - t0)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000, help="records per run (all threads)")
    ap.add_argument("--threads", type=int, default=4, help="emitting threads")
    ap.add_argument("--repeat", type=int, default=3, help="runs per set-up; the median is reported")
    ap.add_argument("--out", help="also write the results as JSON to this file")
    args = ap.parse_args(argv)
    if args.records <= 0 or args.threads <= 0 or args.repeat <= 0:
        ap.error("--records, --threads and --repeat must be > 0")

    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="log_bench-") as tmp:
        for _ in range(args.repeat):
            for kind in KINDS:
                runs[kind].append(run_once(kind, args.records, args.threads, pathlib.Path(tmp)))

    med = {k: {m: statistics.median(r[m] for r in runs[k])
               for m in ("caller_rps", "end_to_end_rps", "caller_s", "end_to_end_s", "cpu_us_per_record")}
           for k in KINDS}

    print(f"{args.records} records, {args.threads} emitting threads, median of {args.repeat} runs; "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    print()
    print("| handler | caller (records/s) | end-to-end (records/s) "
          "| caller vs (b) | caller vs (c) | e2e vs (b) | e2e vs (c) | CPU (µs/record) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, kind in zip("abc", KINDS):
        m, b, c = med[kind], med["queue"], med["file"]
        print(f"| ({label}) {kind} | {m['caller_rps']:,.0f} | {m['end_to_end_rps']:,.0f} "
              f"| {m['caller_rps'] / b['caller_rps']:.2f}x | {m['caller_rps'] / c['caller_rps']:.2f}x "
              f"| {m['end_to_end_rps'] / b['end_to_end_rps']:.2f}x "
              f"| {m['end_to_end_rps'] / c['end_to_end_rps']:.2f}x | {m['cpu_us_per_record']:.1f} |")
    print()
    for kind in KINDS:
        lo = min(r["caller_rps"] for r in runs[kind])
        hi = max(r["caller_rps"] for r in runs[kind])
        print(f"{kind}: caller records/s over the runs {lo:,.0f} .. {hi:,.0f}")

    if args.out:
        result = {"records": args.records, "threads": args.threads, "repeat": args.repeat,
                  "python": platform.python_version(), "cpus": os.cpu_count(),
                  "format": FMT, "median": med, "runs": runs}
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


def run(smoke: bool = False) -> list[dict]:
    """The bench/run.py convention: the three handlers, median of the runs, records/s."""
    records, threads, repeat = (2_000, 2, 1) if smoke else (100_000, 4, 3)
    runs: dict[str, list[dict]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory(prefix="log_bench-") as tmp:
        for _ in range(repeat):
            for kind in KINDS:
                runs[kind].append(run_once(kind, records, threads, pathlib.Path(tmp)))
    rows = []
    for label, kind in zip("abc", KINDS):
        caller = statistics.median(r["caller_rps"] for r in runs[kind])
        e2e = statistics.median(r["end_to_end_rps"] for r in runs[kind])
        rows.append({"name": f"Logging ({label}) {kind}: caller", "value": round(caller), "unit": "records/s",
                     "note": f"{records:,} records, {threads} threads, median of {repeat}"})
        rows.append({"name": f"Logging ({label}) {kind}: end-to-end", "value": round(e2e), "unit": "records/s"})
    return rows


if __name__ == "__main__":
    raise SystemExit(main())
