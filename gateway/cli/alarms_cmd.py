"""`gateway alarms SUBCOMMAND`: the alarm tools, dispatched from :data:`SUBCOMMANDS`; `tail` is here.

``gateway alarms tail`` rebuilds the active alarm table from today's topic
(newest complete snapshot plus the events after it), prints it, then one line
per change until interrupted, following the topic across the line's local
midnight. ``--json``: one JSON object per line (``{"table": [...]}`` first,
then the event messages as published, and ``{"kind": "reset"|"rollover", ...}``).
What comes from the topic is printed through ``safe_text`` / ``json_line``
(``gateway/cli/status_cmd.py``): an alarm text or an operator's name cannot
forge a line or drive the terminal.

Following the gateway (``-c`` with ``kafka: embedded``): the embedded broker
gets a new port at every gateway start, written to ``<state_dir>/kafka.bootstrap``.
The file is read again every ``FOLLOW_CHECK_S``; when it names another broker
the consumer is closed, a new one is made on the new address and the table is
rebuilt from the newest snapshot as at start (printed again after a line
``=== the gateway's broker moved ...``). A broker that does not answer is one
line on stderr per change (``broker at X unreachable, waiting for the
gateway``, then ``broker at X answers again``); librdkafka's own reconnect
lines never reach the terminal (``alarms/kafka/consumer.py``).

``--date YYYYMMDD`` replays that day (of the line's zone) and exits: every event
of ``<prefix>.<YYYYMMDD>`` from the beginning, then the table at its end. If the
broker does not have the topic (the embedded broker forgets everything at a
restart; external topics may have expired) and ``-c`` is given, the day comes
from the history store (``history:``) instead. The first line says which source
was used (``=== source: topic ...`` / ``=== source: history ...``; ``--json``:
``{"kind": "source", ...}``). A day neither has: the history's answer, no
events and an empty table.

Exit status: 0 on Ctrl-C (or after a ``--date`` replay), 1 the day could not be
read (its topic missing and no history to read: no ``-c``, or the store fails;
or the topic not read to its end within ``REPLAY_TIMEOUT_S``), 2 on bad usage. Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.cli.subcommands import dispatch
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


#: how often `tail -c` reads the gateway's bootstrap file again (embedded broker), seconds
FOLLOW_CHECK_S = 0.5
#: how long `tail --date` may take to read a day's topic to its end
REPLAY_TIMEOUT_S = 120.0


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


def _bootstrap_file(cfg) -> str:
    from gateway.app.alarm_stage import BOOTSTRAP_FILE
    return os.path.join(os.path.abspath(cfg.gateway.state_dir), BOOTSTRAP_FILE)


def _read_bootstrap(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip() or None
    except OSError:
        return None


def _load(args):
    from gateway.app.config import ConfigError, load
    try:
        return load(args.config)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None


def _settings(args) -> tuple[str, str, str, int | None]:
    """(bootstrap, prefix, tz, gateway_id) from -c CONFIG or the explicit options."""
    if args.config:
        if args.bootstrap or args.prefix or args.tz:
            raise UsageError("give -c CONFIG or --bootstrap/--prefix/--tz, not both")
        cfg = _load(args)
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
    p.add_argument("--date", metavar="YYYYMMDD", help="replay that day (topic, else the history store) and exit")
    return p


def _day(text: str) -> date:
    try:
        if len(text) != 8 or not text.isdigit():
            raise ValueError
        return datetime.strptime(text, "%Y%m%d").date()
    except ValueError:
        raise UsageError(f"--date {text!r}: expected YYYYMMDD, e.g. 20261124") from None


def _noon_ms(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, 12, tzinfo=tz).timestamp() * 1000)


def tail_main(argv: list[str], *, clock_ms: Callable[[], int] | None = None,
              stop: Callable[[], bool] = lambda: False, out=None) -> int:
    parser = build_tail_parser()
    args = parser.parse_args(argv)
    out = out or sys.stdout
    try:
        day = _day(args.date) if args.date else None
        cfg = _load(args) if args.config else None
        follow = _bootstrap_file(cfg) if cfg is not None and cfg.pipeline.kafka.embedded else None
        if follow is not None and day is not None and _read_bootstrap(follow) is None:
            bootstrap, prefix, tz_name, gateway_id = "", cfg.pipeline.alarms.topic_prefix, cfg.timezone, None
        else:
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
    def emit(line: str) -> None:
        out.write(line + "\n")
        out.flush()

    if day is not None:
        return _replay_day(day, bootstrap, prefix, tz, cfg, args.json, emit)
    from alarms.kafka.consumer import AlarmTableConsumer   # late: keeps `gateway --help` free of librdkafka
    kw = {"clock_ms": clock_ms} if clock_ms is not None else {}

    def new_consumer(address: str):
        return AlarmTableConsumer(address, prefix, tz, gateway_id=gateway_id, replay=args.from_beginning, **kw)

    consumer = new_consumer(bootstrap)
    next_check, reachable = time.monotonic() + FOLLOW_CHECK_S, True

    def note(text: str) -> None:               # the outage and the move: one line each, on stderr
        print(f"gateway alarms tail: {text}", file=sys.stderr, flush=True)

    try:
        while not stop():
            for c in consumer.poll():
                _print_change(c, consumer, args.json, tz, emit)
            if consumer.reachable != reachable:
                reachable = consumer.reachable
                note(f"broker at {bootstrap} answers again" if reachable else
                     f"broker at {bootstrap} unreachable, waiting for the gateway")
            if follow is not None and time.monotonic() >= next_check:
                next_check = time.monotonic() + FOLLOW_CHECK_S
                moved = _read_bootstrap(follow)     # None: the gateway stopped (it removes the file)
                if moved is not None and moved != bootstrap:
                    consumer.close()
                    note(f"the gateway's broker moved from {bootstrap} to {moved}: reloading the table")
                    if not args.json:
                        emit(safe_text(f"=== the gateway's broker moved to {moved}"))
                    bootstrap, reachable = moved, True
                    consumer = new_consumer(bootstrap)
    except KeyboardInterrupt:
        pass
    finally:
        consumer.close()
    return 0


def _print_change(c, consumer, as_json: bool, tz: ZoneInfo, emit) -> None:
    if c.kind == "loaded":
        rows = sorted(consumer.table.entries.values(), key=lambda e: e["event_seq"])
        if as_json:
            emit(json_line({"kind": "table", "topic": c.topic, "alarms": rows}))
        else:
            emit(safe_text(f"=== {c.topic}: {len(rows)} active alarms"))
            for e in rows:
                emit(format_entry(e, tz))
            emit("=== changes")
    elif as_json:
        emit(json_line(c.event if c.kind == "event" else {"kind": c.kind, "topic": c.topic, "keys": c.keys}))
    else:
        emit(format_change(c, tz))


def _topic_exists(bootstrap: str, topic: str) -> bool:
    """Whether the broker has ``topic``; False when it does not answer either."""
    from alarms.kafka.topics import TopicError, TopicManager
    if not bootstrap:
        return False
    try:
        return TopicManager(bootstrap, timeout_s=5.0, admin_config={"logger": _quiet()}).exists(topic)
    except TopicError:
        return False


def _quiet():
    from alarms.kafka.consumer import RDKAFKA_LOGGER
    return RDKAFKA_LOGGER


def _replay_day(day: date, bootstrap: str, prefix: str, tz: ZoneInfo, cfg, as_json: bool, emit) -> int:
    """``--date``: the day's topic from the beginning, else (with -c) the history store; then exit."""
    from alarms.kafka.consumer import AlarmTable, Change
    from alarms.kafka.topics import next_midnight_ms, topic_for
    noon = _noon_ms(day, tz)
    topic = topic_for(prefix, noon, tz)

    def source(kind: str, where: str) -> None:
        emit(json_line({"kind": "source", "source": kind, "where": where}) if as_json
             else safe_text(f"=== source: {kind} {where}"))

    def finish(table: AlarmTable, name: str) -> int:
        rows = sorted(table.entries.values(), key=lambda e: e["event_seq"])
        if as_json:
            emit(json_line({"kind": "table", "topic": name, "alarms": rows, "end_of_day": True}))
        else:
            emit(safe_text(f"=== end of {name}: {len(rows)} alarms active"))
            for e in rows:
                emit(format_entry(e, tz))
        return 0

    if _topic_exists(bootstrap, topic):
        from alarms.kafka.consumer import AlarmTableConsumer
        source("topic", f"{topic} on {bootstrap}")
        consumer = AlarmTableConsumer(bootstrap, prefix, tz, replay=True, clock_ms=lambda: noon)
        deadline = time.monotonic() + REPLAY_TIMEOUT_S
        try:
            while not consumer.loaded:
                if time.monotonic() > deadline:
                    print(f"gateway alarms tail: {topic} on {bootstrap}: not read to its end within "
                          f"{REPLAY_TIMEOUT_S:.0f} s (broker gone?)", file=sys.stderr)
                    return 1
                for c in consumer.poll():
                    if c.kind == "event":
                        _print_change(c, consumer, as_json, tz, emit)
            return finish(consumer.table, topic)
        finally:
            consumer.close()
    if cfg is None:
        print(f"gateway alarms tail: no topic {topic} on {bootstrap} (give -c CONFIG to read the history store)",
              file=sys.stderr)
        return 1
    from alarms.history.store import MAX_LIMIT, HistoryError, open_history
    state_dir = os.path.abspath(cfg.gateway.state_dir)
    try:
        store = open_history(cfg.pipeline.history, state_dir, migrate=False)
    except HistoryError as exc:
        print(f"gateway alarms tail: no topic {topic}, and the history store cannot be read: {exc}", file=sys.stderr)
        return 1
    table, seen = AlarmTable(), set()
    start, end = _day_start(day, tz), next_midnight_ms(noon, tz)
    try:
        source("history", f"{store.where} (no topic {topic} on {bootstrap or 'a running broker'})")
        while True:
            rows = store.query(since_ms=start, until_ms=end, limit=MAX_LIMIT, newest_first=False)
            fresh = [r for r in rows if r.event_id not in seen]
            for r in fresh:
                seen.add(r.event_id)
                table.apply_event(r.doc)
                c = Change("event", topic, r.doc, True)
                emit(json_line(r.doc) if as_json else format_change(c, tz))
            if len(rows) < MAX_LIMIT or not fresh:
                break
            start = rows[-1].time_ms      # next page: from the last time (same-ms rows deduplicated above)
    except HistoryError as exc:
        print(f"gateway alarms tail: the history store cannot be read: {exc}", file=sys.stderr)
        return 1
    finally:
        store.close()
    return finish(table, f"{topic} (history)")


def _day_start(day: date, tz: ZoneInfo) -> int:
    return int(datetime(day.year, day.month, day.day, tzinfo=tz).timestamp() * 1000)


def main(argv: list[str] | None = None) -> int:
    return dispatch("alarms", SUBCOMMANDS, argv)
