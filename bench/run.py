"""Run every benchmark module; write bench/results/latest.json, the table in BENCHMARKS.md, README's targets.

    .venv/bin/python -m bench.run            # the full run (make bench), under 15 minutes on 2 cores
    .venv/bin/python -m bench.run --smoke    # seconds: proves every benchmark still produces numbers
    .venv/bin/python -m bench.run --only tcp_ingest,udp

The convention: every module ``bench/<name>_bench.py`` exposes
``run(smoke: bool = False) -> list[dict]`` returning rows
``{"name", "value", "unit"}`` plus, for a target row, ``"target"`` (text) and
``"met"`` (bool), and optionally ``"note"``. Modules are discovered by that
file name, run in ``ORDER`` and then any others alphabetically, each in this
process, one after another (they start their own server and load processes).
A module that raises gives an error row; the others still run.

A full run (not ``--smoke``, not ``--out``) rewrites two generated blocks
from the result: the whole table in BENCHMARKS.md (between ``BEGIN`` and
``END``) and the targets table in README.md's Benchmarks section (between
``README_BEGIN`` and ``README_END``: every row with a target, met or not).
Both name the commit and date of the run, so every figure there is one
recorded in bench/results/latest.json. Figures quoted in hand-written prose
must be taken from the same file.

``--smoke`` never judges speed: it only checks that every module returned
rows with numeric values and units (see tests/test_bench_smoke.py).
"""
from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import os
import pathlib
import platform
import re
import subprocess
import sys
import time
import traceback

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

from bench.common import ROOT, raise_nofile  # noqa: E402

ORDER = ["tcp_ingest", "line_load", "udp", "liveness", "scaling", "micro", "fastpath", "log", "coupling", "simulator",
         "alarm", "route"]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:begin (written by `make bench`) -->", "<!-- bench:end -->"
README = ROOT / "README.md"
README_BEGIN, README_END = "<!-- bench:targets:begin (written by `make bench`) -->", "<!-- bench:targets:end -->"


def discover() -> list[str]:
    found = {p.name[:-len("_bench.py")] for p in (ROOT / "bench").glob("*_bench.py")}
    return [n for n in ORDER if n in found] + sorted(found - set(ORDER))


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        # the results of an earlier run (this run rewrites them) do not make the code "uncommitted"
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".",
                                     ":(exclude)BENCHMARKS.md", ":(exclude)bench/results"], cwd=ROOT,
                                    capture_output=True, text=True, timeout=10).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "unknown", False
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"host": platform.node(), "cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "commit": commit + ("+uncommitted changes" if dirty else ""),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "load_avg_at_start": os.getloadavg()}


def check_rows(name: str, rows) -> list[str]:
    """What is wrong with a module's rows (empty list: fine). Values only, never speeds."""
    problems = []
    if not isinstance(rows, list) or not rows:
        return [f"{name}: run() returned no rows"]
    for r in rows:
        if not isinstance(r, dict) or not {"name", "value", "unit"} <= set(r):
            problems.append(f"{name}: malformed row {r!r}")
            continue
        v = r["value"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            problems.append(f"{name}: {r['name']}: value {v!r} is not a finite number")
        if not r["unit"]:
            problems.append(f"{name}: {r['name']}: no unit")
        if "target" in r and not isinstance(r.get("met"), bool):
            problems.append(f"{name}: {r['name']}: target without met/not met")
    return problems


def run_all(smoke: bool, only: list[str] | None = None) -> dict:
    raise_nofile()
    meta = machine()
    meta["mode"] = "smoke" if smoke else "full"
    modules = {}
    for name in discover():
        if only and name not in only:
            continue
        t0 = time.monotonic()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            mod = importlib.import_module(f"bench.{name}_bench")
            rows = mod.run(smoke=smoke)
            modules[name] = {"rows": rows, "seconds": round(time.monotonic() - t0, 1)}
        except Exception:
            modules[name] = {"rows": [], "seconds": round(time.monotonic() - t0, 1),
                             "error": traceback.format_exc(limit=5)}
        print(f"[bench] {name}: {time.monotonic() - t0:.1f} s", file=sys.stderr, flush=True)
    meta["load_avg_at_end"] = os.getloadavg()
    return {"meta": meta, "modules": modules}


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    return f"{v:,}"


def table(result: dict) -> str:
    m = result["meta"]
    total_s = sum(mod["seconds"] for mod in result["modules"].values())
    lines = [f"Machine: {m['host']}, {m['cpu']}, {m['cpus']} CPUs; {m['implementation']} {m['python']}; "
             f"commit {m['commit']}; {m['date']}; {m['mode']} run, {total_s:.0f} s.  ",
             f"Load average (1/5/15 min) at start {', '.join(f'{x:.2f}' for x in m['load_avg_at_start'])}, "
             f"at end {', '.join(f'{x:.2f}' for x in m['load_avg_at_end'])} "
             "(other processes share the machine: compare ratios measured in one run)."
             + "".join(f"  \nRe-run later: {', '.join(r['modules'])} on {r['date']} (commit {r['commit']})."
                       for r in m.get("partial_reruns", [])), "",
             "| benchmark | value | unit | target | met | note |", "|---|---:|---|---|---|---|"]
    for name, mod in result["modules"].items():
        if mod.get("error"):
            last = mod["error"].strip().splitlines()[-1].replace("|", "/")
            lines.append(f"| **{name}: error** | | | | | {last} |")
        for r in mod["rows"]:
            met = "" if "target" not in r else ("met" if r["met"] else "**not met**")
            lines.append(f"| {r['name']} | {_fmt(r['value'])} | {r['unit']} | {r.get('target', '')} | {met} "
                         f"| {r.get('note', '')} |")
    return "\n".join(lines)


def targets(result: dict) -> str:
    """README's headline: every row with a target, from one recorded run (its commit and date named)."""
    m = result["meta"]
    reruns = "".join(f"; {', '.join(r['modules'])} re-run at commit {r['commit']} on {r['date']}"
                     for r in m.get("partial_reruns", []))
    lines = [f"From the {m['mode']} run at commit {m['commit']} on {m['date']} ({m['cpus']} CPUs, "
             f"{m['implementation']} {m['python']}){reruns}; `bench/results/latest.json`.", "",
             "| target | measured | met |", "|---|---|---|"]
    for name, mod in result["modules"].items():
        if mod.get("error"):
            lines.append(f"| {name} | error (see BENCHMARKS.md) | |")
        for r in mod["rows"]:
            if "target" in r:
                # a bare number (or comparison) as target is in the row's unit
                tgt = r["target"] + (f" {r['unit']}" if re.fullmatch(r"[<>=]*\s*[\d,.]+", r["target"]) else "")
                lines.append(f"| {r['name']}: {tgt} | {_fmt(r['value'])} {r['unit']} | "
                             f"{'yes' if r['met'] else '**no**'} |")
    return "\n".join(lines)


def _replace_block(path: pathlib.Path, begin: str, end: str, body: str, create: str | None) -> bool:
    """Rewrite the text between ``begin`` and ``end`` in ``path``; without the markers append (``create``) or skip."""
    block = f"{begin}\n{body}\n{end}"
    if not path.exists():
        if create is None:
            return False
        path.write_text(create)
    text = path.read_text()
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    elif create is not None:
        text += "\n" + block + "\n"
    else:
        return False
    path.write_text(text)
    return True


def write_doc(result: dict) -> None:
    _replace_block(DOC, BEGIN, END, table(result), create=f"# Benchmarks\n\n{BEGIN}\n{END}\n")
    if not _replace_block(README, README_BEGIN, README_END, targets(result), create=None):
        print(f"[bench] {README.name}: no {README_BEGIN} ... {README_END} block, not written", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="seconds: check that numbers come out, never speeds")
    ap.add_argument("--only", help="comma-separated module names (e.g. tcp_ingest,udp)")
    ap.add_argument("--out", help="JSON output (default bench/results/latest.json; smoke: not written)")
    args = ap.parse_args(argv)
    result = run_all(args.smoke, args.only.split(",") if args.only else None)
    problems = [p for name, mod in result["modules"].items()
                for p in ([f"{name}: raised\n{mod['error']}"] if mod.get("error") else check_rows(name, mod["rows"]))]
    latest = RESULTS / "latest.json"
    if args.only and not args.smoke and not args.out and latest.exists():
        # re-run some modules: keep the others' rows from the last full run, note the mix
        old = json.loads(latest.read_text())
        old["modules"].update(result["modules"])
        old["meta"].setdefault("partial_reruns", []).append(
            {"modules": sorted(result["modules"]), "date": result["meta"]["date"],
             "commit": result["meta"]["commit"], "load_avg_at_start": result["meta"]["load_avg_at_start"]})
        result = old
    out = args.out or (None if args.smoke else str(latest))
    if out:
        pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
        pathlib.Path(out).write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
    if not args.smoke and not args.out:
        write_doc(result)
    print(table(result))
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
