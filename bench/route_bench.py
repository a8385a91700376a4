"""Route planning: A* against a plain Dijkstra on a generated 5,000-section network (issue 16).

The network (:func:`metro_grid`, seeded): 50 parallel lines of 100 sections, 100 m apart
(midpoints jittered by up to 10 m), each section joined to the next on its line and, with
probability 0.5, to the section beside it on the next line. Where a section joins more than two
others it holds points: one switch per connector, its legs the connector and the line's neighbour
at a randomly chosen end, so a train on the line passes straight through and turns into a
connector only from the other end (``gateway/line/topology.py``); no line has a turnback, so a
train heading the wrong way for its destination turns round through connectors, often far off
the straight line (the hard queries, which set the p99s). Lengths are the longest midpoint
distance to a neighbour, rounded up, plus 0-10 m (straight track, a little curve). A signal stands
at both ends of every section, toward its neighbours on the line; 1 % of the sections are
unavailable (occupied).

Each of N random signal pairs is planned with ``plan`` (A*) and ``plan_dijkstra`` (the same moves,
no heuristic) one after the other; the times of the pairs both planned are reported (pairs with no
route are counted in a note). Rows: p99 and p50 per plan in ms, the A*/Dijkstra p99 ratio (target
< 1: A* faster), the mean moves each search settled.

    .venv/bin/python bench/route_bench.py [--smoke]

``run(smoke=False) -> list[dict]`` returns rows for the ``make bench`` harness.
"""
from __future__ import annotations

import argparse
import math
import pathlib
import random
import statistics
import sys
import time

try:
    from gateway.commands.routes import NoRoute, plan, plan_dijkstra
except ImportError:  # run from a checkout without the package installed
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from gateway.commands.routes import NoRoute, plan, plan_dijkstra
from gateway.line.topology import Topology, parse_track

ROWS, COLS, SPACING_M, CONNECT_P, JITTER_M, SLACK_M = 50, 100, 100, 0.5, 10, 10
SEED = 16
SECTIONS = ROWS * COLS


def metro_grid(rows: int = ROWS, cols: int = COLS, seed: int = SEED) -> dict:
    """The ``track:`` mapping of the generated network (module docstring)."""
    rng = random.Random(seed)
    sid = {(r, c): 1 + r * cols + c for r in range(rows) for c in range(cols)}
    pos = {s: (c * SPACING_M + rng.uniform(-JITTER_M, JITTER_M), r * SPACING_M + rng.uniform(-JITTER_M, JITTER_M))
           for (r, c), s in sid.items()}
    line = {s: [sid[r, c + d] for d in (-1, 1) if (r, c + d) in sid] for (r, c), s in sid.items()}
    across: dict[int, list[int]] = {s: [] for s in sid.values()}
    for (r, c), s in sid.items():
        if (r + 1, c) in sid and rng.random() < CONNECT_P:
            across[s].append(sid[r + 1, c])
            across[sid[r + 1, c]].append(s)
    switches: dict[int, dict] = {}
    for s in sid.values():
        if len(line[s]) + len(across[s]) <= 2:
            continue  # a curve or a line end: no points
        ends = rng.sample(line[s], len(line[s]))   # a connector per end of the section
        for k, other in enumerate(across[s]):
            leg = ends[k % len(ends)]
            switches[10_001 + len(switches)] = {"section": s, "normal": leg, "reverse": other}
    lengths = {s: math.ceil(max(math.dist(pos[s], pos[n]) for n in line[s] + across[s])) + rng.randint(0, SLACK_M)
               for s in sid.values()}
    signals = {20_001 + k: {"section": s, "toward": n}
               for k, (s, n) in enumerate((s, n) for s in sid.values() for n in line[s])}
    return {"sections": {s: {"length_m": lengths[s], "pos": list(pos[s]), "next": line[s] + across[s]}
                         for s in sid.values()},
            "switches": switches, "signals": signals}


def network() -> Topology:
    topology, problems = parse_track(metro_grid())
    if problems:
        raise AssertionError(f"generated network invalid: {problems[:3]}")
    return topology


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))]


def measure(t: Topology, pairs: int, seed: int = SEED) -> dict:
    """Plan ``pairs`` random signal pairs with both searches; times in ms of the pairs both planned."""
    rng = random.Random(seed + 1)
    signals = sorted(t.signals)
    unavailable = frozenset(rng.sample(sorted(t.sections), len(t.sections) // 100))
    times: dict[str, list[float]] = {"A*": [], "Dijkstra": []}
    settled: dict[str, list[int]] = {"A*": [], "Dijkstra": []}
    lengths, failed = [], 0
    clock = time.perf_counter
    for _ in range(pairs):
        a, b = rng.sample(signals, 2)
        got = {}
        for name, search in (("A*", plan), ("Dijkstra", plan_dijkstra)):
            t0 = clock()
            try:
                got[name] = search(t, a, b, unavailable)
            except NoRoute:
                got[name] = None
            got[name + " ms"] = (clock() - t0) * 1000
        if got["A*"] is None or got["Dijkstra"] is None:
            failed += 1
            continue
        if abs(got["A*"].cost_m - got["Dijkstra"].cost_m) > 1e-6:
            raise AssertionError(f"{a} -> {b}: A* {got['A*'].cost_m} m, Dijkstra {got['Dijkstra'].cost_m} m")
        for name in times:
            times[name].append(got[name + " ms"])
            settled[name].append(got[name].expanded)
        lengths.append(got["A*"].cost_m)
    if not lengths:
        raise AssertionError("no pair had a route")
    return {"times": times, "settled": settled, "failed": failed, "planned": len(lengths),
            "mean_km": statistics.fmean(lengths) / 1000, "unavailable": len(unavailable)}


def run(smoke: bool = False) -> list[dict]:
    """Rows {"name", "value", "unit"} (+ target/met on the ratio row)."""
    t = network()
    pairs = 25 if smoke else 500
    m = measure(t, pairs)
    a, d = m["times"]["A*"], m["times"]["Dijkstra"]
    a99, d99 = _pct(a, 99), _pct(d, 99)
    size = f"{SECTIONS:,} sections"
    note = (f"{m['planned']} of {pairs} random signal pairs planned by both (the rest have no route); "
            f"{len(t.sections):,} sections, {len(t.switches):,} switches, {len(t.signals):,} signals, "
            f"{m['unavailable']} sections unavailable; mean route {m['mean_km']:.1f} km")
    return [
        {"name": f"Route plan A* p99 ({size})", "value": round(a99, 2), "unit": "ms", "note": note},
        {"name": f"Route plan Dijkstra p99 ({size})", "value": round(d99, 2), "unit": "ms"},
        {"name": "Route plan A* / Dijkstra p99", "value": round(a99 / d99, 3), "unit": "x",
         "target": "< 1 (A* faster)", "met": a99 < d99},
        {"name": f"Route plan A* p50 ({size})", "value": round(_pct(a, 50), 2), "unit": "ms"},
        {"name": f"Route plan Dijkstra p50 ({size})", "value": round(_pct(d, 50), 2), "unit": "ms"},
        {"name": "Route plan A*: moves settled, mean", "value": round(statistics.fmean(m["settled"]["A*"])),
         "unit": "moves"},
        {"name": "Route plan Dijkstra: moves settled, mean",
         "value": round(statistics.fmean(m["settled"]["Dijkstra"])), "unit": "moves"},
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a small, quick run")
    args = p.parse_args(argv)
    rows = run(smoke=args.smoke)
    width = max(len(r["name"]) for r in rows)
    print(f"{'benchmark'.ljust(width)}  {'value':>12}  unit")
    for r in rows:
        target = f"  (target {r['target']}: {'met' if r['met'] else 'not met'})" if "target" in r else ""
        print(f"{r['name'].ljust(width)}  {r['value']:>12,}  {r['unit']}{target}")
    print(rows[0]["note"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
