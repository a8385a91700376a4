"""`gateway alarms list|ack|shelve|unshelve`: operator actions through the admin API.

The gateway owns the alarm table; these commands never touch the journal or
the stores. They POST ``/alarms/action`` (or GET ``/alarms``) on the admin
address given by ``--url`` or by a line config's ``gateway.admin``. Exit 0
when the gateway applied the action, 1 when it refused it (the reason is
printed: unknown alarm, illegal transition...) or could not be reached, 2 on
bad usage.

Runs in the caller's thread.
"""
from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request

from gateway.cli.status_cmd import _OPENER, DEFAULT_URL, FETCH_TIMEOUT_S, url_from_config


def _parser(action: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gateway alarms {action or 'list'}")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--url", help=f"admin API base URL (default {DEFAULT_URL})")
    where.add_argument("-c", "--config", help="line config YAML: use its gateway.admin host and port")
    p.add_argument("--json", action="store_true", help="print the gateway's JSON answer")
    if action is not None:
        p.add_argument("key", help="the alarm key, source/CODE/object (e.g. CI-1/DEVICE_COMM_LOST/-)")
        p.add_argument("--operator", required=True, help="the operator's name (audited)")
    if action == "shelve":
        p.add_argument("--minutes", type=float, required=True, help="how long to shelve (minutes)")
    return p


def _request(url: str, body: dict | None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
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
    base = args.url or DEFAULT_URL
    if args.config:
        try:
            base = url_from_config(args.config)
        except (OSError, ValueError) as exc:
            sys.stderr.write(f"gateway alarms: cannot use config {args.config}: {exc}\n")
            return 2
    base = base.rstrip("/")
    if action is None:
        url, body = f"{base}/alarms", None
    else:
        url = f"{base}/alarms/action"
        body = {"action": action, "key": args.key, "operator": args.operator}
        if action == "shelve":
            body["minutes"] = args.minutes
    try:
        code, answer = _request(url, body)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        sys.stderr.write(f"gateway alarms: cannot reach {url}: {getattr(exc, 'reason', exc)}\n")
        return 1
    if code != 200:
        sys.stderr.write(f"gateway alarms {action or 'list'}: refused ({code}): {answer.get('error')}\n")
        return 1
    if args.json:
        sys.stdout.write(json.dumps(answer) + "\n")
    elif action is None:
        for e in answer["alarms"]:
            who = f" by {e['operator']}" if e.get("operator") else ""
            sys.stdout.write(f"{e['alarm']['key']:<44} {e['severity']:<8} {e['state']:<14}{who}  {e['text']}\n")
        sys.stdout.write(f"{len(answer['alarms'])} alarms (event_seq {answer['event_seq']})\n")
    else:
        for ev in answer["events"]:
            sys.stdout.write(f"{ev['alarm']['key']}: {ev['previous_state']} -> {ev['state']} "
                             f"by {ev['operator']} (seq {ev['event_seq']})\n")
    return 0


def list_main(argv=None) -> int:
    return _run(None, argv)


def ack_main(argv=None) -> int:
    return _run("ack", argv)


def shelve_main(argv=None) -> int:
    return _run("shelve", argv)


def unshelve_main(argv=None) -> int:
    return _run("unshelve", argv)
