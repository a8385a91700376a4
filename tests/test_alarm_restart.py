"""The gateway process SIGKILLed in the middle of an alarm flood, then restarted: nothing that was
journaled is lost. The journal keeps every event exactly once with contiguous event_seq, the
engine comes back with the same active table, event_seq continues, and afterwards the history and
a Kafka consumer (the embedded broker died with the gateway and comes back empty) hold every
journaled event."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request

import yaml
from gateway_harness import Device, process_line, read_alarm_events, wait_until

from gateway.app import config
from alarms.history.store import SqliteHistory
from alarms.journal import Journal
from railcodecs import DeviceAlarm

GATEWAY = os.path.join(os.path.dirname(sys.executable), "gateway")
FLOOD = 3000


def _get(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
        return json.loads(r.read())


def _start(path) -> subprocess.Popen:
    return subprocess.Popen([GATEWAY, "run", "-c", str(path)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _up(admin: int) -> bool:
    try:
        return _get(admin, "/status")["alarms"] is not None
    except OSError:
        return False


def _flood(port: int, first: int, last: int, stop: threading.Event) -> None:
    """Raise DEVICE_ALARM code 9 on objects first..last as fast as the socket takes them."""
    try:
        dev = Device(port, dev_id=258, hb_ms=10_000)
        dev.hello()
        for obj in range(first, last + 1):
            if stop.is_set():
                break
            dev.send(DeviceAlarm(9, 3, DeviceAlarm.RAISE, obj, f"flood {obj}"), seq=obj)
        dev.sock.close()
    except OSError:
        pass  # the gateway was killed under us: that is the point


def test_sigkill_mid_flood_then_restart_loses_nothing(tmp_path):
    raw, ports = process_line(str(tmp_path / "state"), heartbeat_ms=1000)
    raw["alarms"] = {"snapshot_interval_s": 2, "flood": {"alarms": 100000, "window_s": 60},
                     "max_active": 20000}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(raw))
    journal_path = str(tmp_path / "state" / "journal.db")

    proc = _start(path)
    try:
        wait_until(lambda: _up(ports["admin"]), timeout=30, what="gateway up")
        stop = threading.Event()
        sender = threading.Thread(target=_flood, args=(ports["A"], 1, FLOOD, stop), daemon=True)
        sender.start()
        wait_until(lambda: _get(ports["admin"], "/alarms")["event_seq"] > 500, timeout=30,
                   what="the flood half-way journaled")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        stop.set()
        sender.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()

    j = Journal(journal_path)
    killed_at = j.last_seq()
    before = {e.key: e.event_seq for e in j.latest_states()}
    j.close()
    assert killed_at > 500 and len(before) > 0

    proc = _start(path)
    try:
        wait_until(lambda: _up(ports["admin"]), timeout=30, what="gateway up again")
        restored = _get(ports["admin"], "/alarms")
        restored_keys = {a["alarm"]["key"] for a in restored["alarms"]}
        assert {str(k) for k in before} <= restored_keys  # the engine came back with its table
        # the device reconnects (a new session) and raises the rest
        _flood(ports["A"], killed_at + 1, FLOOD + 200, threading.Event())
        wait_until(lambda: _get(ports["admin"], "/alarms")["event_seq"] >= killed_at + 100, timeout=30,
                   what="new events after the restart")

        def settled():
            st = _get(ports["admin"], "/status")["alarms"]
            return st["relay"].get("pending") == 0 and st["writers"]["history"]["lag_events"] == 0
        wait_until(settled, timeout=60, what="relay and history caught up")
        j = Journal(journal_path)
        rows = j.read_after(0, limit=100_000)
        j.close()
        seqs = [r.event_seq for r in rows]
        assert seqs == list(range(1, len(seqs) + 1)), "event_seq contiguous across the kill, no repeat"
        assert len({r.event_id for r in rows}) == len(rows)
        ids = {r.event_id for r in rows}

        # the gateway keeps journaling (the device's disconnect raises conditions): wait for what was read
        history = SqliteHistory(str(tmp_path / "state" / "history.db"))
        wait_until(lambda: ids <= {r.event_id for r in history.query(limit=100_000)}, timeout=30,
                   what="every journaled event in the history")
        in_history = {r.event_id for r in history.query(limit=100_000)}   # read before the journal: it grows
        j = Journal(journal_path)
        journaled_now = {r.event_id for r in j.read_after(0, limit=100_000)}
        j.close()
        assert in_history <= journaled_now  # nothing invented

        read_alarm_events(config.load(str(path)), lambda e: True,
                          lambda evs: ids <= {e["event_id"] for e in evs}, what="every journaled event on Kafka")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    time.sleep(0.2)
