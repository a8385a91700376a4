"""`gateway simulate` / `python -m simulators`: run device and train simulators against a gateway.

    gateway simulate -c config/demo-line.yaml [--host H] [--devices CI-1,ZC-1 | N] [--trains 1025,1026 | N]
                     [--rate HZ] [--seed N] [--duration S] [--summary FILE]
                     [--fault NAME=RATE ...] [--at T:KIND:TARGET[:NET] ...] [--scenario CONSIST:KIND[@S[+D]] ...]

Exit 0 after a clean stop (duration reached, Ctrl-C or SIGTERM), 1 if the run
failed, 2 on bad usage or an invalid line file (the message names the problem).
The summary JSON (``summary.py``) is printed on stdout at exit and written to
``--summary``. Runs in the main thread, which owns the asyncio loop.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from dataclasses import replace

from gateway.app.config import ConfigError, Endpoint, load
from gateway.base.version import version_line

from .consists import ScenarioError, parse_scenario
from .faults import FaultPlan, FaultSpecError, parse_at, parse_rate
from .runner import TICK_MS, Options, Simulation
from .summary import write

MAX_RATE_HZ = 1000 / (2 * TICK_MS)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway simulate", description="Simulate the line's devices and trains.")
    p.add_argument("-c", "--config", default="config/demo-line.yaml", help="YAML line file (the gateway's)")
    p.add_argument("--host", help="connect here instead of the line file's listen hosts")
    p.add_argument("--devices", help="device names/ids, comma separated, or a count of the first N (0: none)")
    p.add_argument("--trains", help="train ids, comma separated, or a count of the first N (0: none)")
    p.add_argument("--rate", type=float, default=5.0, help=f"TRAIN_STATUS per train per second (default 5, max {MAX_RATE_HZ:g})")
    p.add_argument("--heartbeat-ms", type=int, help="heartbeat_ms offered in HELLO (default: gateway.heartbeat_ms)")
    p.add_argument("--seed", type=int, default=1, help="seed of the line model and every fault (default 1)")
    p.add_argument("--duration", type=float, help="stop after S seconds (default: until Ctrl-C / SIGTERM)")
    p.add_argument("--summary", help="write the JSON summary here too")
    p.add_argument("--fault", action="append", default=[], metavar="NAME=RATE",
                   help="probability per sequenced frame: drop, duplicate, reorder, corrupt, delay, replay, "
                        "masquerade, wrong_key, garbage")
    p.add_argument("--no-field-events", action="store_true",
                   help="no spontaneous track circuit faults or door alarms (a line that should raise no alarm)")
    p.add_argument("--faults-for", type=float, metavar="S",
                   help="inject faults only in the first S seconds (then a clean tail, e.g. to read counters)")
    p.add_argument("--at", action="append", default=[], metavar="T:KIND:TARGET[:NET]",
                   help="one fault at second T: 5:kill_link:CI-1:A, 3:hb_stop:CI-2:B, 2:corrupt:1025")
    p.add_argument("--scenario", action="append", default=[], metavar="CONSIST:KIND[@START_S[+DURATION_S]]",
                   help="coupling episode: couple, decouple, double_master, double_slave, mismatch")
    p.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    p.add_argument("--version", action="version", version=version_line())
    return p


def _select(text: str | None, items: list, key, what: str, flag: str) -> tuple | None:
    """``--devices``/``--trains``: None (all), a count, or a comma list of names/ids."""
    if text is None:
        return None
    text = text.strip()
    if text.isdigit() and (int(text) == 0 or int(text) <= len(items) and not any(key(i) == text for i in items)):
        return tuple(items[:int(text)])
    by_key = {key(i): i for i in items}
    chosen = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part not in by_key:
            raise ValueError(f"{flag}: no {what} {part!r} in the line file (known: {', '.join(by_key)}), "
                             f"and not a count 0..{len(items)}")
        chosen.append(by_key[part])
    return tuple(chosen)


def build(argv: list[str] | None) -> tuple[Simulation, str | None]:
    """Parse the command line into a ready Simulation; argparse exits 2, ValueError/ConfigError on bad values."""
    p = _parser()
    args = p.parse_args(argv)
    if not 0 < args.rate <= MAX_RATE_HZ:
        p.error(f"--rate: expected 0 < HZ <= {MAX_RATE_HZ:g}, got {args.rate:g}")
    if args.duration is not None and args.duration <= 0:
        p.error(f"--duration: expected seconds > 0, got {args.duration:g}")
    if args.faults_for is not None and args.faults_for < 0:
        p.error(f"--faults-for: expected seconds >= 0, got {args.faults_for:g}")
    if args.heartbeat_ms is not None and not 50 <= args.heartbeat_ms <= 60_000:
        p.error(f"--heartbeat-ms: expected 50..60000, got {args.heartbeat_ms}")
    cfg = load(args.config)
    if args.host:
        gw = cfg.gateway
        cfg = replace(cfg, gateway=replace(gw, **{k: Endpoint(args.host, getattr(gw, k).port)
                                                  for k in ("net_a", "net_b", "udp")}))
    rates = dict(parse_rate(f) for f in args.fault)
    plan = FaultPlan(args.seed, rates, [parse_at(a) for a in args.at])
    opts = Options(seed=args.seed, duration_s=args.duration, rate_hz=args.rate, heartbeat_ms=args.heartbeat_ms,
                   plan=plan, faults_for_s=args.faults_for, field_events=not args.no_field_events,
                   scenarios=[parse_scenario(s) for s in args.scenario],
                   devices=_select(args.devices, list(cfg.devices), lambda d: d.name, "device", "--devices"),
                   trains=_select(args.trains, list(cfg.trains.ids), str, "train", "--trains"))
    return Simulation(cfg, opts), args.summary


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        sim, summary_path = build(argv)
    except SystemExit as exc:  # argparse printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    except ConfigError as exc:
        print(f"gateway simulate: invalid line file\n{exc}", file=sys.stderr)
        return 2
    except (FaultSpecError, ScenarioError, ValueError) as exc:
        print(f"gateway simulate: {exc}", file=sys.stderr)
        return 2
    level = _parser().parse_known_args(argv)[0].log_level
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        summary = asyncio.run(_run(sim))
    except OSError as exc:
        print(f"gateway simulate: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(write(summary, summary_path))
    return 0


async def _run(sim: Simulation) -> dict:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, sim.request_stop)
        except (RuntimeError, ValueError):
            pass  # not the main thread (tests): the duration stops the run
    return await sim.run()
