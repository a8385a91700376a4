"""`gateway alarms history`: the alarm history of a line, from the configured store.

    gateway alarms history -c CONFIG [--since T] [--until T] [--source NAME] [--code CODE]
                           [--limit N] [--oldest-first] [--json]

T is an ISO 8601 time (``2026-11-24T01:00``, ``2026-11-24``; without an offset it is in the
line's time zone, ``line.timezone``) or relative to now: ``-90s``, ``-15m``, ``-1h``, ``-2d``.
``--since`` is inclusive, ``--until`` exclusive. Rows come newest first (``--oldest-first``
to reverse), at most ``--limit`` (default 100).

Text: one line per event, its time in the line's zone, then ``#event_seq``, severity,
transition, ``previous->state``, the alarm key, the operator and the client address the action
came from (if any), the text and the operator's reason (if any). ``--json``: the stored event
message (docs/alarm-pipeline.md), one per line. Both through ``safe_text`` / ``json_line``
(``gateway/cli/status_cmd.py``): a control character in a stored name or text is printed as an
escape and cannot forge a line.

The store is ``history:`` of the config: ``<state_dir>/history.db`` (SQLite, the default) or
``{mysql: {...}}``. Exit status: 0 printed (possibly nothing), 1 the store could not be read,
2 bad usage or config. Runs in the caller's thread; only reads.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from datetime import datetime, tzinfo
from zoneinfo import ZoneInfo

from alarms.history.store import MAX_LIMIT, HistoryError, HistoryRow, open_history

from gateway.cli.terminal_text import json_line, safe_text

_RELATIVE = re.compile(r"-(\d+)([smhd])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class _Usage(Exception):
    pass


def parse_time(text: str, tz: tzinfo, now_ms: int) -> int:
    """An ISO 8601 time (naive: in ``tz``) or ``-<n>{s,m,h,d}`` before ``now_ms`` -> epoch ms."""
    m = _RELATIVE.fullmatch(text.strip())
    if m:
        return now_ms - int(m.group(1)) * _UNIT_S[m.group(2)] * 1000
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise _Usage(f"{text!r} is neither an ISO 8601 time (2026-11-24T01:00) nor relative (-15m, -1h, -2d)") \
            from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=tz)
    return int(dt.timestamp() * 1000)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway alarms history",
                                description="Show the alarm history from the configured store.")
    p.add_argument("-c", "--config", required=True, help="line config (YAML); its history: names the store")
    p.add_argument("--since", help="from this time, inclusive: ISO 8601 (line's zone if no offset) or -1h")
    p.add_argument("--until", help="up to this time, exclusive: same forms as --since")
    p.add_argument("--source", help="only this source (CI-1, 'train 1025', gateway)")
    p.add_argument("--code", help="only this alarm code (DEVICE_COMM_LOST)")
    p.add_argument("--limit", type=int, default=100, help=f"at most N rows, 1..{MAX_LIMIT} (default 100)")
    p.add_argument("--oldest-first", action="store_true", help="oldest first (default: newest first)")
    p.add_argument("--json", action="store_true", help="one stored event message (JSON) per line")
    return p


def format_row(row: HistoryRow, tz: tzinfo) -> str:
    """One history row as one line; every field that came from a device or a client escaped."""
    when = datetime.fromtimestamp(row.time_ms / 1000, tz).isoformat(timespec="milliseconds")
    prev = row.doc.get("previous_state")
    states = f"{prev}->{row.state}" if prev and row.state else (row.state or "-")
    who = f" by {row.operator}" if row.operator else ""
    if row.doc.get("client"):
        who += f" from {row.doc['client']}"
    why = f"  (reason: {row.doc['reason']})" if row.doc.get("reason") else ""
    return safe_text(f"{when}  #{row.event_seq:<6} {row.severity:<8} {row.transition:<19} {states:<21} "
                     f"{row.alarm_key}{who}  {row.text or ''}{why}".rstrip())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse takes "-1h" for an option: glue relative times to their flag ("--since=-1h")
    for i in range(len(argv) - 1, 0, -1):
        if argv[i - 1] in ("--since", "--until") and _RELATIVE.fullmatch(argv[i]):
            argv[i - 1:i + 1] = [f"{argv[i - 1]}={argv[i]}"]
    try:
        args = _parser().parse_args(argv)   # bad options: argparse prints usage and the problem
    except SystemExit as exc:
        return int(exc.code or 0)
    from gateway.app.config import ConfigError, load
    try:
        cfg = load(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"gateway alarms history: {exc}\n")
        return 2
    tz = ZoneInfo(cfg.timezone)
    now_ms = int(time.time() * 1000)
    try:
        if not 1 <= args.limit <= MAX_LIMIT:
            raise _Usage(f"--limit must be 1..{MAX_LIMIT}, got {args.limit}")
        since = parse_time(args.since, tz, now_ms) if args.since else None
        until = parse_time(args.until, tz, now_ms) if args.until else None
        if since is not None and until is not None and since >= until:
            raise _Usage(f"--since ({args.since}) must be before --until ({args.until})")
    except _Usage as exc:
        sys.stderr.write(f"gateway alarms history: {exc}\n")
        return 2
    spec = cfg.pipeline.history                 # validated by gateway.app.config (alarms/settings.py)
    state_dir = os.path.abspath(cfg.gateway.state_dir)
    if spec.kind == "sqlite" and not os.path.exists(os.path.join(state_dir, "history.db")):
        sys.stderr.write(f"gateway alarms history: no history yet: {os.path.join(state_dir, 'history.db')} "
                         "does not exist (has the gateway run with this config?)\n")
        return 1
    try:
        store = open_history(spec, state_dir)
    except HistoryError as exc:
        sys.stderr.write(f"gateway alarms history: {exc}\n")
        return 1
    try:
        rows = store.query(since, until, args.source, args.code, args.limit, newest_first=not args.oldest_first)
    except HistoryError as exc:
        sys.stderr.write(f"gateway alarms history: {exc}\n")
        return 1
    finally:
        store.close()
    out = sys.stdout
    for row in rows:
        out.write((json_line(row.doc, separators=(",", ":")) if args.json else format_row(row, tz)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
