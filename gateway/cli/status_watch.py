"""`gateway status --watch`: the live view, redrawn to fit the terminal.

:func:`render_watch` fits ``shutil.get_terminal_size()``: a summary first (identity, uptime,
devices / links / trains up of configured, active alarms by severity, and per-second rates of
frames applied and received, frame errors and alarm events next to their totals, from the counter
deltas between two refreshes over the gateway's own uptime), then the devices, trains, active
conditions and recent events, each table cut to the rows that fit with "… and N more devices".
Every time on the screen is in one zone: the line's, named once in the header. :func:`watch`
refreshes until Ctrl-C. Runs in the caller's thread; only reads the admin API.
"""
from __future__ import annotations

import shutil
import sys
import time
from datetime import datetime

from gateway.cli.status_cmd import CLEAR, StatusError, _cell, _table, fetch_status, line_zone
from gateway.cli.terminal_text import safe_text


def watch(url: str, show, interval_s: float, limit_s: float | None, *, redraw: bool) -> int:
    """Refresh until Ctrl-C (exit 0) or limit_s elapses (exit 1 if the last refresh failed).
    With ``redraw`` the screen is :func:`render_watch` of this and the previous answer."""
    end = None if limit_s is None else time.monotonic() + limit_s
    ok = True
    previous: tuple[dict, float] | None = None  # (status, monotonic s when fetched)
    try:
        while True:
            try:
                status, ok = fetch_status(url), True
            except StatusError as exc:  # keep watching: a restarting gateway comes back
                status, ok = None, False
                text = f"{CLEAR}{exc}\n" if redraw else f"{exc}\n"
            if status is not None and not redraw:
                text = show(status)
            elif status is not None:
                fetched = time.monotonic()
                before, elapsed_s = (previous[0], fetched - previous[1]) if previous else (None, None)
                text = CLEAR + render_watch(status, before, elapsed_s,
                                            size=shutil.get_terminal_size(), source=f"{url}  every {interval_s:g} s")
                previous = (status, fetched)
            sys.stdout.write(text)
            sys.stdout.flush()
            now = time.monotonic()
            if end is not None and now >= end:
                return 0 if ok else 1
            time.sleep(interval_s if end is None else min(interval_s, end - now))
    except KeyboardInterrupt:
        return 0


# -- the live view (--watch) ---------------------------------------------------------------------
SEVERITY_ORDER = ("critical", "major", "minor", "warning")
_CLOCK = "%Y-%m-%d %H:%M:%S"


def counter_totals(status: dict) -> dict[str, int | None]:
    """The counters the live view shows as rates: frames applied (devices and trains) and received
    (links and UDP), frames rejected (link and UDP errors), alarm events (event_seq). Pure."""
    devices, trains = status.get("devices") or [], status.get("trains") or []
    links = [k for d in devices for k in d.get("links") or []]
    udp = status.get("udp") or {}
    engine = (status.get("alarms") or {}).get("engine") or {}
    return {"applied": sum(x.get("applied") or 0 for x in (*devices, *trains)),
            "received": sum(k.get("rx_frames") or 0 for k in links) + (udp.get("rx_datagrams") or 0),
            "errors": (sum(sum((k.get("errors") or {}).values()) for k in links)
                       + sum((udp.get("errors") or {}).values())),
            "alarm_events": engine.get("event_seq")}


def rates(previous: dict | None, current: dict, elapsed_s: float | None) -> dict[str, float | None]:
    """Per-second rates of :func:`counter_totals` between two answers. The interval is the gateway's
    own (``uptime_s`` delta), else ``elapsed_s`` (the client's); None where there is no interval or
    a counter went back (the gateway restarted). Pure."""
    now, out = counter_totals(current), {}
    before = counter_totals(previous) if previous else {}
    up0, up1 = (previous or {}).get("uptime_s"), current.get("uptime_s")
    dt = up1 - up0 if isinstance(up0, (int, float)) and isinstance(up1, (int, float)) else elapsed_s
    for key, value in now.items():
        old = before.get(key)
        ok = dt is not None and dt > 0 and value is not None and old is not None and value >= old
        out[key] = (value - old) / dt if ok else None
    return out


def _rate(value: float | None) -> str:
    return "-/s" if value is None else f"{value:.1f}/s"


def _summary(status: dict, previous: dict | None, elapsed_s: float | None, zone: str, tz) -> list[str]:
    devices, trains = status.get("devices") or [], status.get("trains") or []
    links = [k for d in devices for k in d.get("links") or []]
    totals, per_s = counter_totals(status), rates(previous, status, elapsed_s)
    engine = (status.get("alarms") or {}).get("engine") or {}
    by_sev = {sev: sum(states.values()) for sev, states in (engine.get("by_severity") or {}).items()}
    sevs = sorted(by_sev, key=lambda s: (SEVERITY_ORDER.index(s) if s in SEVERITY_ORDER else 99, s))
    active = ", ".join(f"{by_sev[s]} {s}" for s in sevs) or ("none" if "by_severity" in engine else "-")
    if "error" in engine:
        active = f"unknown ({engine['error']})"
    try:
        started = datetime.fromisoformat(status["started_at"]).astimezone(tz).strftime(_CLOCK)
    except (KeyError, TypeError, ValueError):
        started = None
    return [
        f"gateway {_cell(status.get('gateway_id'))} {_cell(status.get('name'))}  line {_cell(status.get('line'))}"
        f"  version {_cell(status.get('version'))}  up {_cell(status.get('uptime_s'))} s  since {_cell(started)}",
        f"devices reachable {sum(bool(d.get('reachable')) for d in devices)}/{len(devices)}"
        f"  links up {sum(bool(k.get('alive')) for k in links)}/{len(links)}"
        f"  trains reachable {sum(bool(t.get('reachable')) for t in trains)}/{len(trains)}",
        f"alarms active: {active}  flood {'YES' if engine.get('flood') else 'no'}"
        f"  chattering {_cell(engine.get('chattering'))}",
        f"frames applied {_cell(totals['applied'])} ({_rate(per_s['applied'])})"
        f"  received {_cell(totals['received'])} ({_rate(per_s['received'])})",
        f"frame errors {_cell(totals['errors'])} ({_rate(per_s['errors'])})"
        f"  alarm events {_cell(totals['alarm_events'])} ({_rate(per_s['alarm_events'])})",
    ]


def _clock(time_ms, tz) -> str:
    """A time in the screen's one zone, without repeating the zone (the header names it)."""
    if time_ms is None:
        return "-"
    t = datetime.fromtimestamp(time_ms / 1000, tz)
    return t.strftime(_CLOCK) + f".{t.microsecond // 1000:03d}"


def _fit(sections: list[tuple[str, list[str], list[str], str]], budget: int) -> list[str]:
    """``(title, table header lines, row lines, what)`` sections in at most ``budget`` lines: first each
    gets two (a blank line, its title with its count), in order while they last, then the rest goes to
    them in order (devices first); a table cut short ends with "… and N more <what>"."""
    need = [2 + len(head) + len(rows) for _, head, rows, _ in sections]
    give, left = [0] * len(sections), budget
    for i in range(len(sections)):
        if left >= 2:
            give[i], left = 2, left - 2
    for i, n in enumerate(need):
        if give[i]:
            extra = min(n - give[i], left)
            give[i] += extra
            left -= extra
    out: list[str] = []
    for (title, head, rows, what), n in zip(sections, give):
        room = n - 2  # under the blank line and the title
        if n < 2:
            continue
        if room >= len(head) + len(rows):
            out += ["", title, *head, *rows]
        elif room <= len(head):
            out += ["", f"{title}  (no room to list them)"] + [f"  … {len(rows)} {what} not shown"][:room]
        else:
            shown = rows[:room - len(head) - 1]
            out += ["", title, *head, *shown, f"  … and {len(rows) - len(shown)} more {what}"]
    return out


def render_watch(status: dict, previous: dict | None = None, elapsed_s: float | None = None, *,
                 size: tuple[int, int] = (100, 40), source: str = "") -> str:
    """One screen of the live view for a ``(columns, lines)`` terminal; rates need the ``previous``
    answer (and ``elapsed_s`` when the answers carry no uptime). Pure function."""
    cols, lines = max(20, size[0]), max(8, size[1])
    tz, zone = line_zone(status)
    head = [f"{source}  (Ctrl-C to stop)".strip(), f"{datetime.now(tz).strftime(_CLOCK)}  all times in {zone}"]
    summary = _summary(status, previous, elapsed_s, zone, tz)
    devices = status.get("devices") or []
    dev = _table(["ID", "NAME", "KIND", "REACHABLE", "LINKS (net: state)", "APPLIED (frames)", "GAP (frames)"],
                 [[d.get("id"), d.get("name"), d.get("kind"), d.get("reachable"),
                   " ".join(f"{k.get('net')}:{'up' if k.get('alive') else k.get('state') or 'down'}"
                            for k in d.get("links") or []), d.get("applied"), d.get("gap")] for d in devices])
    trains = status.get("trains") or []
    trn = _table(["ID", "REACHABLE", "SECTION", "SPEED (cm/s)", "CONSIST", "LAST RX (ms)", "APPLIED (frames)"],
                 [[t.get("id"), t.get("reachable"), t.get("section_id"), t.get("speed_cm_s"), t.get("consist_id"),
                   t.get("last_rx_age_ms"), t.get("applied")] for t in trains])
    conditions = status.get("conditions") or []
    cnd = _table(["CONDITION", "SOURCE", "SINCE", "DETAIL"],
                 [[c.get("name"), c.get("source"), _clock(c.get("since_ms"), tz), c.get("detail") or ""]
                  for c in conditions])
    events = list(reversed(status.get("events") or []))  # newest first: a cut keeps the latest
    evt = _table(["TIME", "EVENT", "SOURCE", "DETAIL"],
                 [[_clock(e.get("time_ms"), tz), e.get("name"), e.get("source"), e.get("detail") or ""]
                  for e in events])
    sections = [(f"Devices ({len(devices)})", dev[:1] if devices else [], dev[1:] if devices else dev, "devices"),
                (f"Trains ({len(trains)})", trn[:1] if trains else [], trn[1:] if trains else trn, "trains"),
                (f"Active conditions ({len(conditions)})", cnd[:1] if conditions else [],
                 cnd[1:] if conditions else cnd, "conditions"),
                ("Recent events (newest first)", evt[:1] if events else [], evt[1:] if events else evt, "events")]
    body = head + summary + _fit(sections, lines - 1 - len(head) - len(summary))  # the last line: the cursor
    return "".join(_clip(safe_text(line), cols) + "\n" for line in body)


def _clip(line: str, cols: int) -> str:
    return line if len(line) < cols else line[:cols - 2] + "…"
