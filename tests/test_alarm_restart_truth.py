"""Alarms stay true across restarts (issue 13 item 1), through real `gateway run` processes.

* SIGKILL: a LINK_REDUNDANCY_LOST raised before the kill is restored from the journal; when the device
  is back on both nets after the restart, the start-up reconciliation clears it (nothing else would:
  the new process never raised it, so no link-up clears it).
* SIGTERM: a planned stop raises no communication alarm, only a GATEWAY_STOPPING info event, and after
  the restart the device on both nets has no active alarm at all.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request

import yaml
from gateway_harness import Device, process_line, wait_until

from alarms.journal import Journal
from alarms.model import AlarmEvent

GATEWAY = os.path.join(os.path.dirname(sys.executable), "gateway")
KEY = "CI-2/LINK_REDUNDANCY_LOST/-"
COMM = ("CI-2/LINK_REDUNDANCY_LOST/-", "CI-2/DEVICE_COMM_LOST/-")


def _alarms(admin: int) -> dict[str, dict]:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin}/alarms", timeout=5) as r:
        return {a["alarm"]["key"]: a for a in json.loads(r.read())["alarms"]}


def _up(admin: int) -> bool:
    try:
        _alarms(admin)
        return True
    except OSError:
        return False


def _events(journal_path: str) -> list[AlarmEvent]:
    journal = Journal(journal_path)
    try:
        return [AlarmEvent.decode(row.value) for row in journal.read_after(0, 100_000)]
    finally:
        journal.close()


def _connect(ports: dict, nets: str) -> list[Device]:
    devices = []
    for net in nets:
        dev = Device(ports[net], dev_id=258, net="AB".index(net), hb_ms=60_000)  # silent: no timeouts
        dev.hello()
        devices.append(dev)
    return devices


def test_restored_alarms_are_reconciled_and_a_planned_stop_raises_none(tmp_path):
    raw, ports = process_line(str(tmp_path / "state"), heartbeat_ms=200)  # grace: hello 1,000 + 3 x 200 ms
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(raw))
    journal_path = str(tmp_path / "state" / "journal.db")

    def start():
        proc = subprocess.Popen([GATEWAY, "run", "-c", str(path)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        wait_until(lambda: _up(ports["admin"]), timeout=30, what="gateway up")
        return proc

    proc = start()
    try:
        # run 1: CI-2 only on net A -> LINK_REDUNDANCY_LOST (net B never connected); then SIGKILL
        devices = _connect(ports, "A")
        wait_until(lambda: _alarms(ports["admin"]).get(KEY, {}).get("active"), what="redundancy lost raised")
        proc.kill()
        proc.wait(10)
        for d in devices:
            d.close()

        # run 2: the alarm comes back from the journal; CI-2 on both nets; the reconciliation clears it
        proc = start()
        assert _alarms(ports["admin"])[KEY]["active"] is True   # restored before any device is back
        devices = _connect(ports, "AB")
        wait_until(lambda: _alarms(ports["admin"]).get(KEY, {}).get("active") is False, timeout=10,
                   what="restored LINK_REDUNDANCY_LOST cleared by the start-up reconciliation")
        assert _alarms(ports["admin"])[KEY]["state"] == "RTN_UNACK"  # cleared, still to be acknowledged
        seq_before_stop = max(e.event_seq for e in _events(journal_path))

        # planned stop: no communication alarm, one GATEWAY_STOPPING info event
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        for d in devices:
            d.close()
        after = [e for e in _events(journal_path) if e.event_seq > seq_before_stop]
        assert [(e.alarm.code, e.transition) for e in after] == [("GATEWAY_STOPPING", "info")]

        # run 3: back on both nets, nothing about CI-2's communication is active
        proc = start()
        devices = _connect(ports, "AB")
        wait_until(lambda: all(not a["active"] for k, a in _alarms(ports["admin"]).items() if k in COMM),
                   timeout=10, what="no active communication alarm for CI-2")
        for d in devices:
            d.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
