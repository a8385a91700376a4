"""`gateway command select|operate|cancel|list`: select before operate, through the admin API.

    gateway command select KIND OBJECT VALUE --operator NAME [--workstation NAME]
    gateway command operate SELECTION --operator NAME [--wait S]
    gateway command cancel SELECTION --operator NAME
    gateway command list
      (each also: --url URL | -c CONFIG; the three that change state: --token-file F; all: --json)

KIND and VALUE: ``switch normal|reverse``, ``route set|cancel`` (OBJECT a route id of the line
file's ``track.routes``), ``section block|unblock``. ``select`` asks the gateway for the object's
zone lock and prints the selection: its id, zone, fencing token and when it expires (the gateway's
``control.select_timeout_s`` after the select). ``operate`` sends the selected command and then
polls ``GET /commands`` every :data:`POLL_S` until the selection has ended (at most ``--wait``
seconds), and prints how it ended. ``cancel`` drops a selection not yet operated (a sent command
cannot be cancelled: it ends on the device's result, the feedback or a timeout). ``list`` prints
the open commands and the last ended ones.

The gateway decides everything (object, value, zone lock, interlocking, expiry, whose selection it
is); this module only asks and reports. Its address and admin token are found as in ``gateway
alarms ack`` (``gateway/cli/alarms_action_cmd.py``): ``--url``, else ``gateway.admin`` of the
config given with ``-c``, else :data:`~gateway.cli.status_cmd.DEFAULT_URL`; the token from
``--token-file``, else the file that config names. ``list`` only reads and needs none. What the
gateway answers is printed through ``safe_text``: an operator's or a device's name cannot forge a
line or drive the terminal.

Exit status: 0 done (``operate``: only when the command ended DONE); 1 the gateway refused (its
sentence on one line of stderr, with the HTTP status: 400 bad input, 404 unknown object, 409
refused, 503 no command path), the command ended otherwise (FAILED, EXPIRED...: the outcome on
stderr), no outcome within ``--wait``, or no gateway answered; 2 bad usage, an unusable config or
an unreadable token file.

The client half (:class:`AdminClient`, :func:`select`, :func:`operate`, :func:`cancel`,
:func:`wait_ended`) is what ``gateway route set`` (``gateway/cli/route_set.py``) builds on.
Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import http.client
import json
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime

from gateway.cli.status_cmd import _OPENER, DEFAULT_URL, _table, admin_url
from gateway.cli.subcommands import dispatch
from gateway.cli.terminal_text import json_line, safe_text

KINDS = {"switch": ("normal", "reverse"), "route": ("set", "cancel"), "section": ("block", "unblock")}
TERMINAL = frozenset({"DONE", "FAILED", "CANCELLED", "EXPIRED", "REFUSED"})
POLL_S = 0.2                 # how often `operate` asks GET /commands whether its command has ended
DEFAULT_WAIT_S = 30.0        # how long `operate` waits for the end (the gateway's timeouts end it anyway)
#: per request; above the admin server's own deadline for an action, so that its 503 is what we see
REQUEST_TIMEOUT_S = 10.0
_WHY = {400: "bad request", 401: "not authorized", 404: "not found", 409: "refused", 503: "unavailable"}


class Unreachable(Exception):
    """No usable answer from the gateway (connection refused, timeout, not JSON); the message says where."""


class Refused(Exception):
    """The gateway answered with an error status; ``code`` and the gateway's ``error`` sentence."""

    def __init__(self, code: int, error: object, hint: str = "") -> None:
        self.code, self.error = code, error
        super().__init__(f"{_WHY.get(code, 'error')} ({code}): {safe_text(error)}{hint}")


class NotEnded(Exception):
    """``--wait`` ran out before the command ended; the message says its last known state."""


class AdminClient:
    """The admin API at ``base`` (no trailing slash), with the admin token for POSTs (None: none sent)."""

    def __init__(self, base: str, token: str | None = None, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.base, self.token, self.timeout_s = base.rstrip("/"), token, timeout_s

    def get(self, path: str) -> dict:
        return self._call(path, None)

    def post(self, path: str, body: dict) -> dict:
        return self._call(path, body)

    def _call(self, path: str, body: dict | None) -> dict:
        """The JSON object of a 200 answer; raises Refused (any other status) or Unreachable."""
        headers = {"Content-Type": "application/json"}
        if body is not None and self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method="GET" if body is None else "POST",
                                     headers=headers)
        try:
            with _OPENER.open(req, timeout=self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            try:
                answer = json.loads(exc.read())
            except (ValueError, OSError, http.client.HTTPException):
                answer = {"error": exc.reason}
            error = answer.get("error", answer) if isinstance(answer, dict) else answer
            hint = " (no token sent: give --token-file or -c CONFIG)" if exc.code == 401 and self.token is None \
                else ""
            raise Refused(exc.code, error, hint) from None
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", None) or exc
            if isinstance(reason, ConnectionRefusedError):
                raise Unreachable(f"no gateway at {self.base}: connection refused") from None
            raise Unreachable(f"no answer from {self.base}{path}: {safe_text(reason)}") from None
        try:
            answer = json.loads(raw)
        except ValueError:
            raise Unreachable(f"{self.base}{path} answered something that is not JSON") from None
        if not isinstance(answer, dict):
            raise Unreachable(f"{self.base}{path} answered a JSON {type(answer).__name__}, expected an object")
        return answer


# -- the requests ---------------------------------------------------------------------------------
def _selection(answer: dict, path: str) -> dict:
    s = answer.get("selection")
    if not isinstance(s, dict) or not isinstance(s.get("selection_id"), str):
        raise Unreachable(f"the answer to {path} has no selection (expected {{\"selection\": {{...}}}})")
    return s


def select(client: AdminClient, kind: str, object_id: int, value: str, operator: str,
           workstation: str | None = None) -> dict:
    """POST /commands/select; the selection (SELECTED: its zone lock is held). Raises Refused/Unreachable."""
    body = {"kind": kind, "object": object_id, "value": value, "operator": operator}
    if workstation is not None:
        body["workstation"] = workstation
    return _selection(client.post("/commands/select", body), "/commands/select")


def operate(client: AdminClient, selection_id: str, operator: str) -> dict:
    """POST /commands/operate; the selection as sent (OPERATING). Raises Refused/Unreachable."""
    return _selection(client.post("/commands/operate", {"selection": selection_id, "operator": operator}),
                      "/commands/operate")


def cancel(client: AdminClient, selection_id: str, operator: str) -> dict:
    """POST /commands/cancel; the selection as cancelled. Raises Refused/Unreachable."""
    return _selection(client.post("/commands/cancel", {"selection": selection_id, "operator": operator}),
                      "/commands/cancel")


def find(commands: dict, selection_id: str) -> dict | None:
    """The entry of ``selection_id`` in a GET /commands answer (an ended one wins), or None."""
    for group in ("recent", "open"):
        for entry in reversed(commands.get(group) or []):
            if isinstance(entry, dict) and entry.get("selection_id") == selection_id:
                return entry
    return None


def wait_ended(client: AdminClient, selection_id: str, wait_s: float, poll_s: float | None = None,
               clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> dict:
    """Poll GET /commands until the selection is in a terminal state and return its entry (with
    ``outcome``); raises NotEnded after ``wait_s``. A failed poll is retried until then."""
    poll_s = POLL_S if poll_s is None else poll_s
    deadline = clock() + wait_s
    last_state, last_error = "not listed", None
    while True:
        try:
            entry = find(client.get("/commands"), selection_id)
            last_error = None
        except (Refused, Unreachable) as exc:
            entry, last_error = None, exc
        if entry is not None:
            last_state = safe_text(entry.get("state"))
            if entry.get("state") in TERMINAL:
                return entry
        if clock() >= deadline:
            polled = f"; the last poll failed: {last_error}" if last_error else ""
            raise NotEnded(f"selection {selection_id}: not ended within {wait_s:g} s, still {last_state}{polled}; "
                           "the gateway ends it on the device's result, the feedback or its timeout "
                           "(`gateway command list`)")
        sleep(poll_s)


def what(s: dict) -> str:
    """``switch 301 reverse``: the object and value of a selection, safe for the terminal."""
    return safe_text(f"{s.get('kind')} {s.get('object_id')} {s.get('value')}")


def expiry(s: dict, now_s: float | None = None) -> str:
    """``expires 2026-11-29T10:15:30+08:00 (in 29.8 s)`` from the selection's ``expires_ms`` (epoch ms)."""
    ms = s.get("expires_ms")
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return "expiry unknown"
    left = ms / 1000 - (time.time() if now_s is None else now_s)
    at = datetime.fromtimestamp(ms / 1000).astimezone().isoformat(timespec="seconds")
    return f"expires {at} (in {left:.1f} s)" if left > 0 else f"expired at {at} ({-left:.1f} s ago)"


def describe_selection(s: dict) -> str:
    """One line: the selection's id, object, state, zone, fencing token and expiry."""
    return safe_text(f"selection {s.get('selection_id')}: {what(s)} {s.get('state')} "
                     f"(command {s.get('command_id')}, device {s.get('device')}), zone {s.get('zone')}, "
                     f"fencing token {s.get('fencing_token')}, {expiry(s)}")


# -- the command line -----------------------------------------------------------------------------
def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError(f"expected seconds, more than 0 and at most 3600, got {text!r}")
    return value


def _parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gateway command {action}")
    if action == "select":
        p.add_argument("kind", choices=tuple(KINDS), metavar="KIND",
                       help="what to command: switch, route or section")
        p.add_argument("object", type=int, metavar="OBJECT",
                       help="the object's id (a route: its id in the line file's track.routes)")
        p.add_argument("value", metavar="VALUE",
                       help="switch: normal|reverse; route: set|cancel; section: block|unblock")
        p.add_argument("--workstation", metavar="NAME", help="the workstation named to others as the zone "
                                                             "lock's holder (default: the gateway's "
                                                             "control.workstation)")
    elif action in ("operate", "cancel"):
        p.add_argument("selection", metavar="SELECTION", help="the selection id `gateway command select` printed")
    if action == "operate":
        p.add_argument("--wait", type=_positive, default=DEFAULT_WAIT_S, metavar="S",
                       help=f"how long to wait for the command to end, seconds (default {DEFAULT_WAIT_S:g})")
    if action != "list":
        p.add_argument("--operator", required=True, metavar="NAME",
                       help="the operator's name (audited with the command)")
        p.add_argument("--token-file", metavar="FILE",
                       help="the gateway's admin token file (default: the one -c CONFIG names)")
    add_where(p)
    p.add_argument("--json", action="store_true", help="print the gateway's JSON answer (one line)")
    return p


def add_where(p: argparse.ArgumentParser) -> None:
    """``--url URL | -c CONFIG``: where the admin API is."""
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", metavar="URL", help=f"admin API base URL (default {DEFAULT_URL})")
    where.add_argument("-c", "--config", metavar="CONFIG", help="line config YAML: use its gateway.admin host and port "
                                              "(and its admin token file)")


class UsageProblem(Exception):
    """The config or the token file cannot be used (exit 2); the message is the line for stderr."""


def client_of(args: argparse.Namespace, writes: bool) -> AdminClient:
    """The admin API of ``--url`` / ``-c``; with the token when ``writes``. Raises UsageProblem."""
    base, cfg = args.url or DEFAULT_URL, None
    if args.config:
        from gateway.app.config import load  # only -c needs YAML
        try:
            cfg = load(args.config)
            base = admin_url(cfg.gateway.admin)
        except (OSError, ValueError) as exc:
            raise UsageProblem(f"cannot use config {args.config}: {exc}") from None
    token = None
    if writes and (args.token_file or cfg is not None):
        from gateway.app.admin_routes import read_token, token_path
        try:
            token = read_token(args.token_file or token_path(cfg))
        except (OSError, ValueError) as exc:
            name = getattr(exc, "filename", None)
            raise UsageProblem(f"cannot read the admin token: {getattr(exc, 'strerror', None) or exc}"
                               + (f" ({name})" if name else "")) from None
    return AdminClient(base, token)


def _run(action: str, argv: list[str] | None) -> int:
    prog = f"gateway command {action}"
    try:
        args = _parser(action).parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse has printed the usage problem (2) or --help (0)
        return int(exc.code or 0)
    try:
        client = client_of(args, writes=action != "list")
    except UsageProblem as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 2
    out = sys.stdout
    try:
        if action == "select":
            s = select(client, args.kind, args.object, args.value, args.operator, args.workstation)
            out.write(json_line({"selection": s}) + "\n" if args.json else
                      describe_selection(s) + f"\n  operate: gateway command operate {safe_text(s['selection_id'])} "
                                              f"--operator {safe_text(args.operator)}\n")
            return 0
        if action == "cancel":
            s = cancel(client, args.selection, args.operator)
            out.write(json_line({"selection": s}) + "\n" if args.json else
                      safe_text(f"selection {s['selection_id']}: {what(s)} {s.get('state')}") + "\n")
            return 0
        if action == "list":
            answer = client.get("/commands")
            out.write(json_line(answer) + "\n" if args.json else render_list(answer))
            return 0
        s = operate(client, args.selection, args.operator)
        if not args.json:
            out.write(safe_text(f"selection {s['selection_id']}: {what(s)} {s.get('state')} "
                                f"(command {s.get('command_id')}); waiting up to {args.wait:g} s") + "\n")
            out.flush()
        entry = wait_ended(client, s["selection_id"], args.wait)
    except (Refused, Unreachable, NotEnded) as exc:
        sys.stderr.write(f"{prog}: {exc}\n")
        return 1
    except KeyboardInterrupt:  # only the wait can take long; the command was sent and cannot be called back
        sys.stderr.write(f"{prog}: interrupted; selection {safe_text(args.selection)} was sent and ends by itself "
                         "(`gateway command list`)\n")
        return 130
    line = safe_text(f"selection {entry['selection_id']}: {what(entry)} {entry['state']}: {entry.get('outcome')}")
    if args.json:
        out.write(json_line({"selection": entry}) + "\n")
    elif entry["state"] == "DONE":
        out.write(line + "\n")
    if entry["state"] != "DONE":
        sys.stderr.write(f"{prog}: {line}\n")
        return 1
    return 0


def render_list(answer: dict) -> str:
    """The text of ``gateway command list``: the open commands, then the recent ended ones."""
    open_, recent = answer.get("open") or [], answer.get("recent") or []
    now_s = time.time()

    def left(s: dict) -> str | None:
        ms = s.get("expires_ms")
        if s.get("state") not in ("SELECTING", "SELECTED") or not isinstance(ms, (int, float)):
            return None
        return f"{max(0.0, ms / 1000 - now_s):.1f}"
    lines = [f"open commands: {len(open_)}"]
    lines += _table(["SELECTION", "COMMAND", "KIND", "OBJECT", "VALUE", "STATE", "ZONE", "TOKEN", "OPERATOR",
                     "WORKSTATION", "EXPIRES IN (s)"],
                    [[s.get("selection_id"), s.get("command_id"), s.get("kind"), s.get("object_id"), s.get("value"),
                      s.get("state"), s.get("zone"), s.get("fencing_token"), s.get("operator"),
                      s.get("workstation"), left(s)] for s in open_ if isinstance(s, dict)])
    lines.append(f"recent (ended, newest last): {len(recent)}")
    lines += _table(["SELECTION", "COMMAND", "KIND", "OBJECT", "VALUE", "STATE", "OPERATOR", "OUTCOME"],
                    [[s.get("selection_id"), s.get("command_id"), s.get("kind"), s.get("object_id"), s.get("value"),
                      s.get("state"), s.get("operator"), s.get("outcome")] for s in recent if isinstance(s, dict)])
    return "\n".join(lines) + "\n"


def select_main(argv=None) -> int:
    return _run("select", argv)


def operate_main(argv=None) -> int:
    return _run("operate", argv)


def cancel_main(argv=None) -> int:
    return _run("cancel", argv)


def list_main(argv=None) -> int:
    return _run("list", argv)


#: name -> (function, help)
SUBCOMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "select": (select_main, "select an object: KIND OBJECT VALUE --operator NAME (takes its zone lock)"),
    "operate": (operate_main, "operate a selection: SELECTION --operator NAME; waits for the end (--wait S)"),
    "cancel": (cancel_main, "drop a selection not yet operated: SELECTION --operator NAME"),
    "list": (list_main, "the open commands and the last ended ones"),
}


def main(argv: list[str] | None = None) -> int:
    return dispatch("command", SUBCOMMANDS, argv)
