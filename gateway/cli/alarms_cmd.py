"""`gateway alarms SUBCOMMAND`: the alarm tools, dispatched from :data:`SUBCOMMANDS`; `tail` is here.

``gateway alarms tail`` rebuilds the active alarm table from today's topic
(newest complete snapshot plus the events after it), prints it, then one line
per change until interrupted, following the topic across the line's local
midnight. ``--json``: one JSON object per line (``{"table": [...]}`` first,
then the event messages as published, and ``{"kind": "reset"|"rollover", ...}``).
What comes from the topic is printed through ``safe_text`` / ``json_line``
(``gateway/cli/status_cmd.py``): an alarm text or an operator's name cannot
forge a line or drive the terminal.

Exit status: 0 on Ctrl-C, 2 on bad usage. Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.cli.terminal_text import json_line, safe_text

#: name -> ("module:function", help); each module is imported only when its subcommand runs
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "tail": ("gateway.cli.alarms_cmd:tail_main", "print the live alarm table, then every change (--json)"),
    "history": ("gateway.cli.alarms_history_cmd:main", "query the alarm history (--since, --source, --code)"),
    "list": ("gateway.cli.alarms_action_cmd:list_main", "the gateway's active alarms (admin API)"),
    "ack": ("gateway.cli.alarms_action_cmd:ack_main", "acknowledge an alarm: KEY --operator NAME"),
    "shelve": ("gateway.cli.alarms_action_cmd:shelve_main", "shelve an alarm: KEY --minutes N --operator NAME"),
    "unshelve": ("gateway.cli.alarms_action_cmd:unshelve_main", "unshelve an alarm: KEY --operator NAME"),
}


class UsageError(Exception):
    """Bad command-line input; the message names the option."""


def _iso(ms: int | None, tz: ZoneInfo) -> str:
    return "-" if ms is None else datetime.fromtimestamp(ms / 1000, tz).isoformat(timespec="milliseconds")


def format_entry(e: dict, tz: ZoneInfo) -> str:
    flags = " chattering" if e.get("chattering") else ""
    who = f" by {e['operator']}" if e.get("operator") else ""
    return safe_text(f"{e['alarm']['key']:<40} {e['severity']:<8} {e['state']:<14} raised "
                     f"{_iso(e['raised_ms'], tz)} updated {_iso(e['updated_ms'], tz)} seq {e['event_seq']}{who}"
                     f"{flags}  {e['text']}")


def format_change(c, tz: ZoneInfo) -> str:
    if c.kind != "event":
        return safe_text(f"--- {c.kind}: {c.topic}" + (f" ({len(c.keys)} alarms changed)" if c.keys else ""))
    ev = c.event
    who = f" by {ev['operator']}" if ev.get("operator") else ""
    if ev.get("client"):
        who += f" from {ev['client']}"
    why = f"  (reason: {ev['reason']})" if ev.get("reason") else ""
    return safe_text(f"{_iso(ev['time_ms'], tz)} {ev['alarm']['key']} {ev['transition']} {ev['previous_state']}->"
                     f"{ev['state']} {ev['severity']} seq {ev['event_seq']}{who}  {ev['text']}{why}")


def _embedded_bootstrap(cfg) -> str:
    """The embedded broker's address, which the running gateway writes into its state_dir."""
    from gateway.app.alarm_stage import BOOTSTRAP_FILE
    path = os.path.join(os.path.abspath(cfg.gateway.state_dir), BOOTSTRAP_FILE)
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        raise UsageError(f"{cfg.source}: kafka: embedded, and no running gateway wrote {path}; "
                         "start the gateway or give --bootstrap HOST:PORT") from None


def _settings(args) -> tuple[str, str, str, int | None]:
    """(bootstrap, prefix, tz, gateway_id) from -c CONFIG or the explicit options."""
    if args.config:
        if args.bootstrap or args.prefix or args.tz:
            raise UsageError("give -c CONFIG or --bootstrap/--prefix/--tz, not both")
        from gateway.app.config import ConfigError, load
        try:
            cfg = load(args.config)
        except ConfigError as exc:
            raise UsageError(str(exc)) from None
        pipe = cfg.pipeline
        if pipe.kafka.embedded:
            bootstrap = _embedded_bootstrap(cfg)
        else:
            bootstrap = ",".join(pipe.kafka.bootstrap_servers)
        return bootstrap, pipe.alarms.topic_prefix, cfg.timezone, cfg.gateway.id
    missing = [o for o, v in (("--bootstrap", args.bootstrap), ("--tz", args.tz)) if not v]
    if missing:
        raise UsageError(f"missing {', '.join(missing)} (or give -c CONFIG)")
    return args.bootstrap, args.prefix or "railgate.alarms", args.tz, args.gateway_id


def build_tail_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway alarms tail",
                                description="Print the live alarm table from Kafka, then every change.")
    p.add_argument("-c", "--config", metavar="CONFIG", help="line file (kafka, alarms.topic_prefix, line.timezone)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--prefix", metavar="P", help="topic prefix (default railgate.alarms)")
    p.add_argument("--tz", metavar="ZONE", help="the line's IANA time zone, e.g. Asia/Shanghai")
    p.add_argument("--gateway-id", type=int, metavar="N", help="start at this gateway's newest snapshot")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--from-beginning", action="store_true", help="also print every event of the day so far")
    return p


def tail_main(argv: list[str], *, clock_ms: Callable[[], int] | None = None,
              stop: Callable[[], bool] = lambda: False, out=None) -> int:
    parser = build_tail_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        bootstrap, prefix, tz_name, gateway_id = _settings(args)
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        parser.print_usage(sys.stderr)
        print(f"gateway alarms tail: error: --tz {args.tz!r}: not an IANA time zone ({exc})", file=sys.stderr)
        return 2
    except UsageError as exc:
        parser.print_usage(sys.stderr)
        print(f"gateway alarms tail: error: {exc}", file=sys.stderr)
        return 2
    from alarms.kafka.consumer import AlarmTableConsumer   # late: keeps `gateway --help` free of librdkafka
    kw = {"clock_ms": clock_ms} if clock_ms is not None else {}
    consumer = AlarmTableConsumer(bootstrap, prefix, tz, gateway_id=gateway_id, replay=args.from_beginning, **kw)

    def emit(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    try:
        for c in consumer.changes(stop):
            if c.kind == "loaded":
                rows = sorted(consumer.table.entries.values(), key=lambda e: e["event_seq"])
                if args.json:
                    emit(json_line({"kind": "table", "topic": c.topic, "alarms": rows}))
                else:
                    emit(safe_text(f"=== {c.topic}: {len(rows)} active alarms"))
                    for e in rows:
                        emit(format_entry(e, tz))
                    emit("=== changes")
            elif args.json:
                emit(json_line(c.event if c.kind == "event" else {"kind": c.kind, "topic": c.topic, "keys": c.keys}))
            else:
                emit(format_change(c, tz))
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        rows = "\n".join(f"  {n:<8} {h}" for n, (_, h) in SUBCOMMANDS.items())
        stream = sys.stdout if argv and argv[0] in ("-h", "--help") else sys.stderr
        if argv and argv[0] not in ("-h", "--help"):
            stream.write(f"gateway alarms: unknown subcommand {argv[0]!r}\n")
        stream.write(f"usage: gateway alarms SUBCOMMAND [ARGS]\n\nsubcommands:\n{rows}\n")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    module_name, func = SUBCOMMANDS[argv[0]][0].split(":")
    module = __import__(module_name, fromlist=[func])
    return getattr(module, func)(argv[1:])
