"""`gateway alarms list|ack|shelve|unshelve`: operator actions through the admin API.

The gateway owns the alarm table; these commands never touch the journal or
the stores. They POST ``/alarms/action`` (or GET ``/alarms``) on the admin
address given by ``--url`` or by a line config's ``gateway.admin``. Exit 0
when the gateway applied the action, 1 when it refused it (the reason is
printed: unknown alarm, illegal transition, 401 without the token...) or
could not be reached, 2 on bad usage or an unreadable token file.

An action needs the gateway's admin token, sent as ``Authorization: Bearer``:
read from ``--token-file``, else from the file the config given with ``-c``
names (``gateway.admin.token_file``, default ``<state_dir>/admin.token``,
which the gateway creates at its first start, mode 0600: run as its user).
``list`` only reads and needs none. What the gateway answers is printed
through ``safe_text`` (``gateway/cli/status_cmd.py``).

Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from gateway.cli.status_cmd import _OPENER, DEFAULT_URL, FETCH_TIMEOUT_S, admin_url
from gateway.cli.terminal_text import safe_text


def _parser(action: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gateway alarms {action or 'list'}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"admin API base URL (default {DEFAULT_URL})")
    where.add_argument("-c", "--config", help="line config YAML: use its gateway.admin host and port")
    p.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    if action is not None:
        p.add_argument("key", help="the alarm key, source/CODE/object (e.g. CI-1/DEVICE_COMM_LOST/-)")
        p.add_argument("--operator", required=True, help="the operator's name (audited; 1..64 characters)")
        p.add_argument("--reason", help="why (journaled with the action; up to 500 characters)")
        p.add_argument("--token-file", help="the gateway's admin token file (default: the one -c CONFIG names)")
    if action == "shelve":
        p.add_argument("--minutes", type=float, required=True, help="how long to shelve (minutes)")
    return p


def _request(url: str, body: dict | None, token: str | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST", headers=headers)
    try:
        with _OPENER.open(req, timeout=FETCH_TIMEOUT_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        try:
            return exc.code, json.loads(exc.read())
        except ValueError:
            return exc.code, {"error": exc.reason}


def _run(action: str | None, argv: list[str] | None) -> int:
    try:
        args = _parser(action).parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    base, cfg = args.url or DEFAULT_URL, None
    if args.config:
        from gateway.app.config import load  # only -c needs YAML
        try:
            cfg = load(args.config)
            base = admin_url(cfg.gateway.admin)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"gateway alarms: cannot use config {args.config}: {exc}\n")
            return 2
    base = base.rstrip("/")
    token = None
    if action is None:
        url, body = f"{base}/alarms", None
    else:
        url = f"{base}/alarms/action"
        body = {"action": action, "key": args.key, "operator": args.operator}
        if action == "shelve":
            body["minutes"] = args.minutes
        if args.reason is not None:
            body["reason"] = args.reason
        try:
            token = _token(args.token_file, cfg)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"gateway alarms {action}: cannot read the admin token: "
                             f"{getattr(exc, 'strerror', None) or exc}{_where(exc)}\n")
            return 2
    try:
        code, answer = _request(url, body, token)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        sys.stderr.write(f"gateway alarms: cannot reach {url}: {safe_text(getattr(exc, 'reason', exc))}\n")
        return 1
    if code != 200:
        error = answer.get("error") if isinstance(answer, dict) else answer
        hint = " (no token sent: give --token-file or -c CONFIG)" if code == 401 and token is None else ""
        sys.stderr.write(f"gateway alarms {action or 'list'}: refused ({code}): {safe_text(error)}{hint}\n")
        return 1
    out = sys.stdout
    if args.json:
        out.write(json.dumps(answer) + "\n")  # ensure_ascii: every non-ASCII character escaped
    elif action is None:
        for e in answer["alarms"]:
            who = f" by {e['operator']}" if e.get("operator") else ""
            out.write(safe_text(f"{e['alarm']['key']:<44} {e['severity']:<8} {e['state']:<14}{who}  {e['text']}")
                      + "\n")
        out.write(f"{len(answer['alarms'])} alarms (event_seq {safe_text(answer['event_seq'])})\n")
    else:
        for ev in answer["events"]:
            out.write(safe_text(f"{ev['alarm']['key']}: {ev['previous_state']} -> {ev['state']} "
                                f"by {ev['operator']} (seq {ev['event_seq']})") + "\n")
    return 0


def _token(path: str | None, cfg) -> str | None:
    """The admin token from ``--token-file``, else from the file of ``-c CONFIG``; None without either."""
    if path is None and cfg is None:
        return None
    from gateway.app.admin_routes import read_token, token_path
    return read_token(path or token_path(cfg))


def _where(exc: BaseException) -> str:
    name = getattr(exc, "filename", None)
    return f" ({name})" if name else ""


def list_main(argv=None) -> int:
    return _run(None, argv)


def ack_main(argv=None) -> int:
    return _run("ack", argv)


def shelve_main(argv=None) -> int:
    return _run("shelve", argv)


def unshelve_main(argv=None) -> int:
    return _run("unshelve", argv)
