"""Liveness: how long after a device goes silent the gateway declares its link dead.

A gateway process (heartbeat 100 ms, dead after 3 heartbeats) and 20 device
links (10 interlockings x nets A and B) driven from threads of this process:
each link says HELLO, sends a HEARTBEAT every 100 ms for a random 0.3-1.0 s,
then goes silent and waits for the gateway's CLOSE reason 1 (heartbeat
timeout). Detection time = CLOSE received - last byte sent. ``ROUNDS`` rounds
of 20 links give the distribution.

Target: every detection (max) within 3 x heartbeat + 50 ms = 350 ms.
"""
from __future__ import annotations

import random
import socket
import threading
import time

from bench.common import DEVICE_BASE, GATEWAY_ID, handshake, line_config, ports, row, server
from railcodecs import DEVICE_RX_TYPES, Close, Heartbeat, StreamDecoder, encode

HB_MS = 100
DEVICES = 10
ROUNDS = 4


def _link(port: int, dev: int, net: int, rng: random.Random, out: list) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        dec = StreamDecoder(types=DEVICE_RX_TYPES)
        handshake(s, dev, net, HB_MS)
        silent_at = time.monotonic() + rng.uniform(0.3, 1.0)
        hb = 0
        s.settimeout(0.01)
        last_tx = time.monotonic()
        while True:  # heartbeats until silent_at (bounded: silent_at is at most 1 s away)
            now = time.monotonic()
            if now >= silent_at:
                break
            if now - last_tx >= HB_MS / 1000 or hb == 0:
                hb += 1
                s.sendall(encode(Heartbeat(hb), src=dev, dst=GATEWAY_ID, seq=0, time_ms=int(time.time() * 1000)))
                last_tx = time.monotonic()
            try:
                data = s.recv(65536)
                if data:
                    dec.feed(data)
                    list(dec.events())
            except (socket.timeout, TimeoutError):
                pass
        deadline = last_tx + 5.0
        while time.monotonic() < deadline:  # silent now: wait for CLOSE reason 1
            try:
                data = s.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            t = time.monotonic()
            if not data:
                out.append(("eof", (t - last_tx) * 1000))
                return
            dec.feed(data)
            for ev in dec.events():
                if getattr(ev, "message", None) is not None and isinstance(ev.message, Close):
                    out.append((ev.message.reason, (t - last_tx) * 1000))
                    return
        out.append(("none", None))


def run(smoke: bool = False) -> list[dict]:
    devices, rounds = (2, 1) if smoke else (DEVICES, ROUNDS)
    cfg = line_config(devices, heartbeat_ms=HB_MS)
    rng = random.Random(7)
    results: list = []
    with server("gateway", cfg) as srv:
        p = ports(cfg)
        for _ in range(rounds):
            threads = [threading.Thread(target=_link, args=(p[net_name], DEVICE_BASE + d, net, rng, results))
                       for d in range(devices) for net, net_name in ((0, "A"), (1, "B"))]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            time.sleep(0.2)
        srv.ask("stats")
    times = sorted(ms for reason, ms in results if reason == Close.HEARTBEAT_TIMEOUT)
    missed = len(results) - len(times)
    limit = 3 * HB_MS + 50

    def pct(q):
        return times[min(len(times) - 1, int(q * len(times)))] if times else float("nan")

    worst = times[-1] if times else float("inf")
    note = f"{len(times)} links, heartbeat {HB_MS} ms" + (f"; {missed} without CLOSE reason 1" if missed else "")
    return [
        row("Liveness: dead-link detection p50", round(pct(0.5), 1), "ms", note=note),
        row("Liveness: dead-link detection p99", round(pct(0.99), 1), "ms"),
        row("Liveness: dead-link detection max", round(worst, 1), "ms", f"<= {limit} (3 x heartbeat + 50 ms)",
            worst <= limit and not missed),
    ]


if __name__ == "__main__":
    import json
    import sys
    print(json.dumps(run(smoke="--smoke" in sys.argv), indent=1))
