"""`gateway status`: a running gateway's /status as tables, as JSON, or as a live view.

    gateway status [--url URL | -c CONFIG] [--json] [--watch] [--interval S]

The address is ``--url``, else the ``gateway.admin`` host and port of the line
config given with ``-c``, else :data:`DEFAULT_URL`. The text view puts the
unit of every figure in its column heading or next to it (ms, s, cm, cm/s,
frames, bytes, evaluations). ``--watch`` redraws every ``--interval`` seconds (ANSI home +
clear) until Ctrl-C, or for ``$WATCH_SECONDS`` seconds when that is set; with
``--json`` it prints one JSON document per line instead of redrawing.

The live view is ``gateway/cli/status_watch.py``: it fits the terminal, rates
next to totals, every time in the line's zone.

Exit status: 0 shown, 1 the gateway could not be reached or answered with an
error (with --watch: the last refresh failed), 2 bad usage or config.
Runs in the caller's thread; only reads the admin API.

Everything a gateway answers is shown through :func:`safe_text` (text) or
:func:`json_line` (JSON), here and in every ``gateway alarms`` printer: a
name, a peer address or an alarm text may come from a device or a client,
and a newline or an ESC sequence in it must not forge a line or drive the
operator's terminal.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import urllib.error
import urllib.request
from datetime import datetime, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.cli.terminal_text import safe_text
from railcodecs.train_messages import TrainStatus

DEFAULT_URL = "http://127.0.0.1:17080"
FETCH_TIMEOUT_S = 5.0
CLEAR = "\x1b[H\x1b[2J"  # cursor home, then clear the screen
RECENT_EVENTS = 10
COUPLING = {TrainStatus.DECOUPLED: "decoupled", TrainStatus.COUPLING: "coupling", TrainStatus.COUPLED: "coupled",
            TrainStatus.DECOUPLING: "decoupling"}
ROLE = {TrainStatus.ROLE_NONE: "none", TrainStatus.MASTER: "master", TrainStatus.SLAVE: "slave"}
# The admin API is on the gateway's host or the operations LAN: a proxy from
# http_proxy would only get in the way (and may not know the host at all).
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class StatusError(Exception):
    """The gateway could not be reached or gave an unusable answer; the message says which URL and why."""


def fetch_status(base_url: str, timeout_s: float = FETCH_TIMEOUT_S) -> dict:
    """GET ``base_url``/status and return the decoded dict; raise StatusError."""
    url = status_url(base_url)
    try:
        with _OPENER.open(url, timeout=timeout_s) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = safe_text(exc.read().decode("utf-8", "replace")[:200])
        raise StatusError(f"gateway status: {url} answered {exc.code} {safe_text(exc.reason)}: {detail}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StatusError(f"gateway status: cannot reach {url}: {reason} (is the gateway running?)") from None
    try:
        status = json.loads(body)
    except ValueError as exc:
        raise StatusError(f"gateway status: {url} answered with something that is not JSON: {exc}") from None
    if not isinstance(status, dict):
        raise StatusError(f"gateway status: {url} answered a JSON {type(status).__name__}, expected an object")
    return status


def status_url(base_url: str) -> str:
    base = base_url.rstrip("/")
    return base if base.endswith("/status") else base + "/status"


def url_from_config(path: str) -> str:
    """The admin API's URL from a line config's ``gateway.admin``; raises ConfigError/OSError."""
    from gateway.app.config import load  # only -c needs YAML
    return admin_url(load(path).gateway.admin)


def admin_url(admin) -> str:
    """The URL of the admin API a config's ``gateway.admin`` describes."""
    # a wildcard bind address is not somewhere to connect to: use loopback
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(admin.host, admin.host)
    return f"http://[{host}]:{admin.port}" if ":" in host else f"http://{host}:{admin.port}"


# -- text view --------------------------------------------------------------------------------
def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return safe_text(value)


def _table(headers: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    if not rows:
        return [indent + "(none)"]
    cells = [headers] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    return [indent + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]


def _errors(errors: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted((errors or {}).items())) or "-"


def _closed(link: dict) -> str | None:
    """When and why a down link's last link closed: "1520 ms ago: peer closed the connection"."""
    age, why = link.get("closed_age_ms"), link.get("closed_reason")
    if age is None and not why:
        return None
    return ("-" if age is None else f"{age} ms ago") + (f": {why}" if why else "")


def _code(names: dict, value) -> str | None:
    return None if value is None else f"{names.get(value, '?')} ({value})"


def _when(time_ms, tz) -> str:
    if time_ms is None:
        return "-"
    return datetime.fromtimestamp(time_ms / 1000, tz).isoformat(timespec="milliseconds")


def line_zone(status: dict) -> tuple[tzinfo, str]:
    """The zone every time is shown in, and its name: the status's ``timezone``, else the offset
    ``started_at`` carries, else UTC."""
    try:
        zone = ZoneInfo(status["timezone"])
        return zone, f"{status['timezone']} ({_offset_name(zone)})"
    except (KeyError, TypeError, ValueError, ZoneInfoNotFoundError):
        pass
    try:
        tz = datetime.fromisoformat(status["started_at"]).tzinfo
    except (KeyError, TypeError, ValueError):
        tz = None
    return (tz, _offset_name(tz)) if tz is not None else (timezone.utc, "UTC")


def _offset_name(tz: tzinfo) -> str:
    offset = datetime.now(tz).strftime("%z")  # +0800
    return f"UTC{offset[:3]}:{offset[3:]}"


def render_text(status: dict) -> str:
    """The readable view of a status dict, every line through :func:`safe_text`. Pure function."""
    tz = line_zone(status)[0]  # show event times in the line's zone
    out = [f"gateway {_cell(status.get('gateway_id'))} {_cell(status.get('name'))}"
           f"  version {_cell(status.get('version'))} ({_cell(status.get('implementation'))})  up {_cell(status.get('uptime_s'))} s"
           f"  started {_cell(status.get('started_at'))}", ""]

    devices = status.get("devices") or []
    out.append(f"Devices ({len(devices)})")
    # one table for the devices so their columns line up, each row followed by its links
    dev_lines = _table(["ID", "NAME", "KIND", "REACHABLE", "APPLIED (frames)", "DUPLICATES (frames)",
                        "GAP (frames)", "STALE (frames)"],
                       [[d.get("id"), d.get("name"), d.get("kind"), d.get("reachable"), d.get("applied"),
                         d.get("duplicates"), d.get("gap"), d.get("stale")] for d in devices])
    out += dev_lines[:1] if devices else ["  (none configured)"]
    for d, line in zip(devices, dev_lines[1:]):
        out.append(line)
        # a link that is down shows its last link's counters (frozen as it closed), then since when and why
        out += _table(["NET", "ALIVE", "STATE", "PEER", "LOOP", "LAST RX (ms)", "RX (frames)", "TX (frames)",
                       "RX (bytes)", "TX (bytes)", "ERRORS (frames by reason)", "CLOSED"],
                      [[k.get("net"), k.get("alive"), k.get("state"), k.get("peer"), k.get("loop"),
                        k.get("last_rx_age_ms"), k.get("rx_frames"), k.get("tx_frames"), k.get("rx_bytes"),
                        k.get("tx_bytes"), _errors(k.get("errors")), _closed(k)] for k in d.get("links") or []],
                      indent="      ")

    trains = status.get("trains") or []
    out += ["", f"Trains ({len(trains)})"]
    out += _table(["ID", "REACHABLE", "SECTION", "OFFSET (cm)", "SPEED (cm/s)", "CONSIST", "COUPLING", "ROLE",
                   "LAST RX (ms)", "APPLIED (frames)", "GAP (frames)", "STALE (frames)"],
                  [[t.get("id"), t.get("reachable"), t.get("section_id"), t.get("offset_cm"), t.get("speed_cm_s"),
                    t.get("consist_id"), _code(COUPLING, t.get("coupling")), _code(ROLE, t.get("role")),
                    t.get("last_rx_age_ms"), t.get("applied"), t.get("gap"), t.get("stale")] for t in trains])

    consists = status.get("consists") or []
    out += ["", f"Consists ({len(consists)})"]
    out += _table(["ID", "MEMBERS", "STATE", "FOR (s)", "ROLES", "DOUBLE MASTER (evals)", "DOUBLE SLAVE (evals)",
                   "MISMATCH (evals)", "CONFIRM (evals)", "EVALUATIONS", "ILLEGAL (moves)", "ALARMS"],
                  [[c.get("id"), "+".join(str(m) for m in c.get("members") or []), c.get("state"),
                    None if c.get("state_age_ms") is None else round(c["state_age_ms"] / 1000, 1),
                    "/".join(str(r) for r in c.get("roles") or []), *_consist_counters(c.get("counters") or {}),
                    ", ".join(c.get("alarms") or []) or "-"] for c in consists])
    workers = (status.get("coupling") or {}).get("workers") or []
    if workers:
        out.append("  coupling workers: " + ", ".join(
            f"#{w.get('worker')} queue {_cell(w.get('queue_depth'))} reports, {_cell(w.get('evaluations'))} evals"
            for w in workers))

    out += _alarm_lines(status.get("alarms"))

    udp = status.get("udp") or {}
    out += ["", f"UDP: {_cell(udp.get('rx_datagrams'))} datagrams received, errors: {_errors(udp.get('errors'))}"]

    loops = status.get("loops") or []
    out += ["", f"IO loops ({len(loops)})"]
    out += _table(["NAME", "LINKS", "ITERATIONS", "EVENTS", "FUNCTORS (calls)", "TIMERS (fired)"],
                  [[lp.get("name"), lp.get("links"), lp.get("iterations"), lp.get("events"),
                    lp.get("functors", lp.get("functors_run")), lp.get("timers", lp.get("timers_run"))]
                   for lp in loops])

    pools = status.get("pools") or {}
    links = pools.get("links") or {}
    out += ["", "Pools",
            f"  link buffers:  {_cell(links.get('in_use'))} in use of {_cell(links.get('max', links.get('max_items')))}"
            f", refused {_cell(links.get('refused'))} connections"]

    events = (status.get("events") or [])[-RECENT_EVENTS:]
    out += ["", f"Recent events (last {len(events)} of at most {RECENT_EVENTS})"]
    out += _table(["TIME", "EVENT", "SOURCE", "DETAIL"],
                  [[_when(e.get("time_ms"), tz), e.get("name"), e.get("source"), e.get("detail") or ""]
                   for e in events])

    conditions = status.get("conditions") or []
    out += ["", f"Active conditions ({len(conditions)})"]
    out += _table(["CONDITION", "SOURCE", "SINCE", "DETAIL"],
                  [[c.get("name"), c.get("source"), _when(c.get("since_ms"), tz), c.get("detail") or ""]
                   for c in conditions])

    admin = status.get("admin")
    if admin:
        out += ["", f"Admin API: {_cell(admin.get('connections'))} connections from {_cell(admin.get('clients'))} "
                    f"addresses (at most {_cell(admin.get('max_connections'))}, "
                    f"{_cell(admin.get('max_per_client'))} per address, {_cell(admin.get('reserved'))} reserved)",
                f"  refused {_cell(admin.get('refused'))} connections ({_cell(admin.get('refused_per_client'))} at "
                f"their address's cap), evicted {_cell(admin.get('evicted'))} idle, timed out "
                f"{_cell(admin.get('timed_out'))}; unauthorized {_cell(admin.get('unauthorized'))} requests (401)"]
    # cells are escaped already (column widths count the escapes); a line built otherwise is escaped here
    return "\n".join(safe_text(line) for line in out) + "\n"


def _alarm_lines(alarms: dict | None) -> list[str]:
    """The alarm stage in a few lines: table, flood, relay to Kafka, history and live-table writers."""
    if not alarms:
        return []
    eng, relay = alarms.get("engine") or {}, alarms.get("relay") or {}
    by_state = ", ".join(f"{n} {s}" for s, n in sorted((eng.get("by_state") or {}).items())) or "none"
    lines = ["", f"Alarms: {_cell(eng.get('alarms'))} in the table of {_cell(eng.get('max_active'))} ({by_state}), "
                 f"chattering {_cell(eng.get('chattering'))}, flood {'YES' if eng.get('flood') else 'no'}, "
                 f"event_seq {_cell(eng.get('event_seq'))}",
             *_bound_lines(eng),
             f"  Kafka relay: {_cell(relay.get('delivered'))} events delivered, {_cell(relay.get('pending'))} pending, "
             f"{_cell(relay.get('snapshots'))} snapshots, producer recreated {_cell(relay.get('recreated'))} times"
             + (f", relay restarts {_cell(relay['restarts'])}" if "restarts" in relay else "")]
    ret = alarms.get("retention")
    if ret:
        lines.append(f"  disk: journal {_mib(ret.get('journal_bytes'))}, history {_mib(ret.get('history_bytes'))}; "
                     f"retention {_cell(ret.get('retention_days'))} d journal, "
                     f"{_cell(ret.get('history_retention_days'))} d history; pruned {_cell(ret.get('deleted'))} "
                     f"journal and {_cell(ret.get('history_deleted'))} history rows")
    for name, w in (alarms.get("writers") or {}).items():
        lines.append(f"  {name} writer: {_cell(w.get('written'))} events written, lag {_cell(w.get('lag_events'))}"
                     f" events, {_cell(w.get('failures'))} failures ({w.get('state')})"
                     + (f", last error: {w['last_error']}" if w.get("last_error") else ""))
    return lines


def _mib(n) -> str:
    return "-" if n is None else f"{n / 1048576:.1f} MiB"


def _bound_lines(eng: dict) -> list[str]:
    """How the bound was kept (nothing is refused), what was sampled away, and each operator area."""
    svc = eng.get("service") or {}
    away = ", ".join(f"{n} {k}" for k, n in sorted((svc.get("sampled_away") or {}).items())) or "none"
    lines = [f"  bound: {_cell(eng.get('evicted'))} evicted, {_cell(eng.get('grouped'))} grouped into "
             f"{_cell(eng.get('groups'))} flood groups, {_cell(eng.get('auto_shelved'))} shelved by rule, "
             f"{_cell(eng.get('over_bound'))} over the bound (exempt {_cell(eng.get('exempt'))}); "
             f"sampled away under load: {away}"]
    areas = eng.get("areas") or {}
    if areas:
        lines.append("  areas: " + "; ".join(
            f"{name} {'FLOOD' if a.get('flood') else 'ok'} ({_cell(a.get('new_alarms_in_window'))} new in window, "
            f"{_cell(a.get('chattering'))} chattering, {_cell(a.get('shelved'))} shelved)"
            for name, a in sorted(areas.items())))
    return lines


def _consist_counters(counters: dict) -> list:
    return [counters.get(k) for k in ("double_master", "double_slave", "mismatch", "confirm", "evaluations",
                                      "illegal_transitions")]


# -- command -----------------------------------------------------------------------------------
def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gateway status", description="Show a running gateway's status.")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"admin API base URL (default {DEFAULT_URL})")
    where.add_argument("-c", "--config", help="line config YAML: connect to its gateway.admin host and port")
    p.add_argument("--json", action="store_true", help="print the status JSON instead of tables")
    p.add_argument("--watch", action="store_true", help="refresh until Ctrl-C (or $WATCH_SECONDS seconds)")
    p.add_argument("--interval", type=_positive_seconds, default=1.0, metavar="S",
                   help="seconds between refreshes with --watch (default 1)")
    return p


def main(argv: list[str] | None = None) -> int:
    from gateway.cli.status_watch import watch  # the live view: only for --watch
    try:
        args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse has printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    url = args.url or DEFAULT_URL
    if args.config:
        try:
            url = url_from_config(args.config)
        except (OSError, ValueError) as exc:  # ConfigError is a ValueError; its message lists the problems
            sys.stderr.write(f"gateway status: cannot use config {args.config}: {exc}\n")
            return 2
    show = (lambda s: json.dumps(s, indent=None if args.watch else 2) + "\n") if args.json else render_text
    if not args.watch:
        try:
            sys.stdout.write(show(fetch_status(url)))
        except StatusError as exc:
            sys.stderr.write(f"{exc}\n")
            return 1
        return 0
    seconds = os.environ.get("WATCH_SECONDS")
    try:
        limit_s = float(seconds) if seconds else None
    except ValueError:
        sys.stderr.write(f"gateway status: WATCH_SECONDS: expected seconds, got {seconds!r}\n")
        return 2
    return watch(url, show, args.interval, limit_s, redraw=not args.json)
