#!/usr/bin/env python3
"""Container health checks for the railgate image (installed as /usr/local/bin/railgate-healthcheck).

    railgate-healthcheck [URL]            the gateway: GET URL answers 2xx within --timeout seconds
                                          (default URL: $RAILGATE_HEALTH_URL, else
                                          http://127.0.0.1:8080/status)
    railgate-healthcheck --tcp-peer PORT  the simulators: this network namespace has an established
                                          TCP connection to remote port PORT (a device link up)

Exit status 0 healthy, 1 unhealthy (the reason on one line: Docker keeps it in `docker inspect`).
Standard library only; no proxy (the admin API is on loopback).
"""
from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request

DEFAULT_URL = "http://127.0.0.1:8080/status"
_TCP_ESTABLISHED = "01"


def check_http(url: str, timeout: float) -> str | None:
    """None when ``url`` answers 2xx, else why not."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as resp:
            resp.read(1)
            return None if 200 <= resp.status < 300 else f"{url}: HTTP {resp.status}"
    except urllib.error.HTTPError as exc:
        return f"{url}: HTTP {exc.code}"
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", with its reason
        return f"{url}: {exc}"


def established_to(port: int, tables=("/proc/net/tcp", "/proc/net/tcp6")) -> int:
    """How many TCP connections in this network namespace are ESTABLISHED to remote ``port``."""
    count = 0
    for table in tables:
        try:
            with open(table) as f:
                next(f, None)  # the heading
                for line in f:
                    fields = line.split()
                    if len(fields) > 3 and fields[3] == _TCP_ESTABLISHED:
                        count += int(fields[2].rsplit(":", 1)[1], 16) == port
        except FileNotFoundError:
            continue
    return count


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="railgate-healthcheck", description=__doc__.split("\n\n")[0])
    p.add_argument("url", nargs="?", default=os.environ.get("RAILGATE_HEALTH_URL") or DEFAULT_URL)
    p.add_argument("--tcp-peer", type=int, metavar="PORT", help="healthy when a TCP link to PORT is established")
    p.add_argument("--timeout", type=float, default=3.0)
    args = p.parse_args(argv)
    if args.tcp_peer is not None:
        n = established_to(args.tcp_peer)
        problem = None if n else f"no established TCP connection to port {args.tcp_peer}"
        ok_text = f"{n} established TCP connection(s) to port {args.tcp_peer}"
    else:
        problem = check_http(args.url, args.timeout)
        ok_text = f"{args.url}: ok"
    print(problem or ok_text)
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
