"""The long differential run: a million mutated frames through the compiled and the pure link path.

::

    python -m tests.fuzz.differential --frames 1000000 [--seed 0] [--jobs 2]
    make fuzz TARGET=differential          # the same, 1,000,000 frames

Each seed is one gateway context per implementation fed the same reproducible stream
(``tests/differential.py``: good frames, copies, repeats, gaps, stale and future times, wrong
destination and source, values out of range, corrupted bytes, garbage, bursts for the GIL-free
scan, random chunking). The first event after which the two differ stops the run with the seed,
the event number and the difference; rerun that seed to reproduce. Not a pytest module.
"""
from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ProcessPoolExecutor

PER_SEED = 5000


def _run(seed: int) -> int:
    sys.path.insert(0, "tests")
    import differential
    return differential.compare(seed, PER_SEED)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000, help="frames to feed in all (default 1,000,000)")
    ap.add_argument("--seed", type=int, default=0, help="first seed (each seed feeds 5,000 events)")
    ap.add_argument("--jobs", type=int, default=2, help="processes (default 2)")
    args = ap.parse_args(argv)
    if args.frames <= 0 or args.jobs <= 0:
        ap.error("--frames and --jobs must be positive")
    from railcodecs import speedups
    if not speedups.available():
        print(f"differential: the compiled core is not available ({speedups.UNAVAILABLE})", file=sys.stderr)
        return 2
    start, fed, seed = time.monotonic(), 0, args.seed
    with ProcessPoolExecutor(args.jobs) as pool:
        while fed < args.frames:
            seeds = list(range(seed, seed + 4 * args.jobs))
            seed += len(seeds)
            try:
                fed += sum(pool.map(_run, seeds))
            except AssertionError as exc:
                print(f"differential: DIFFERENCE after {fed:,} frames: {exc}", file=sys.stderr)
                return 1
            print(f"differential: {fed:,} frames, seeds {args.seed}..{seed - 1}, no difference "
                  f"({time.monotonic() - start:.0f} s)", flush=True)
    print(f"differential: {fed:,} frames through both implementations, no difference, "
          f"{time.monotonic() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
