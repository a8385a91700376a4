"""Degraded start (issue 13, item 3): the history store, Redis or Kafka down when the gateway starts.

The gateway starts anyway, journals every alarm, and each writer catches up from the journal once its
service answers. The services are the real MariaDB and Redis, made "down" by a loopback forwarder
(tests/test_history_fixtures.py's TcpForwarder) whose port is closed until the test restores it; Kafka
is a closed loopback port with the real relay child in front of it.
"""
from __future__ import annotations

import json
import pathlib
import re
import secrets
import socket
import urllib.request

import pytest
import redis
from gateway_harness import Device, QuietRelay, RunningGateway, line_config, wait_until
from test_history_fixtures import MYSQL, TcpForwarder, mysql_db, mysql_store  # noqa: F401

from alarms.journal import Journal
from alarms.live.live_table import journal_snapshot, read_active
from gateway.app import config
from railcodecs import DeviceAlarm

KEY = "CI-2/DEVICE_ALARM_17/301"



def _cfg(tmp_path, **sections) -> config.Config:
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw.update(sections)
    return config.parse(raw, "degraded-start")


def _closed_forwarder() -> TcpForwarder:
    """A forwarder to the real service whose port is closed: the service looks down until restore()."""
    fwd = TcpForwarder(("127.0.0.1", MYSQL["port"]))
    fwd.cut()
    return fwd


def _raise_alarm(gw) -> Device:
    dev = Device(gw.ports["A"], dev_id=258, hb_ms=10_000)
    dev.hello()
    dev.send(DeviceAlarm(17, 2, DeviceAlarm.RAISE, 301, "point machine motor current high"), seq=1)
    return dev


def _journal(cfg) -> list:
    journal = Journal(str(pathlib.Path(cfg.gateway.state_dir) / "journal.db"))
    try:
        return journal.read_after(0, 100_000)
    finally:
        journal.close()


def _admin_status(gw) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{gw.ports['admin']}/status", timeout=5) as r:
        return json.loads(r.read())


def _writer(gw, name: str) -> dict:
    return gw.alarms.status(engine={})["writers"][name]


def test_mysql_down_at_start_then_up_history_complete(tmp_path, mysql_db):  # noqa: F811
    fwd = _closed_forwarder()
    try:
        cfg = _cfg(tmp_path, history={"mysql": {**MYSQL, "port": fwd.port, "database": mysql_db}})
        with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
            dev = _raise_alarm(gw)
            # journaled while MariaDB is away; the writer retries and counts
            wait_until(lambda: any(r.key == KEY for r in _journal(cfg)), what="the alarm journaled")
            wait_until(lambda: _writer(gw, "history")["failures"] >= 2, what="history writer failures")
            down = _admin_status(gw)["alarms"]["writers"]["history"]
            assert down["state"] == "backoff" and down["written"] == 0
            assert f"127.0.0.1:{fwd.port}/{mysql_db}" in down["last_error"]
            fwd.restore()                                  # MariaDB "comes back" on the same port
            last = _journal(cfg)[-1].event_seq
            wait_until(lambda: (w := _writer(gw, "history"))["watermark"] == last and w["lag_events"] == 0,
                       timeout=20, what="the history caught up")
            dev.close()
        journaled = {r.event_id for r in _journal(cfg)}   # after the graceful stop: nothing left to write
        store = mysql_store(mysql_db)
        try:
            assert {r.event_id for r in store.query(limit=10_000)} == journaled
            assert KEY in {r.alarm_key for r in store.query(limit=10_000)}
        finally:
            store.close()
    finally:
        fwd.close()


@pytest.fixture
def redis_prefix():
    prefix = f"rgtest-degraded-{secrets.token_hex(4)}"
    yield prefix
    client = redis.Redis(host="127.0.0.1", port=6379)
    for k in client.scan_iter(f"{prefix}:*"):
        client.delete(k)
    client.close()


def test_redis_down_at_start_then_up_live_table_complete(tmp_path, redis_prefix):
    fwd = TcpForwarder(("127.0.0.1", 6379))
    fwd.cut()
    client = redis.Redis(host="127.0.0.1", port=6379)
    try:
        cfg = _cfg(tmp_path, redis={"url": f"redis://127.0.0.1:{fwd.port}/0", "prefix": redis_prefix})
        with RunningGateway(cfg, admin=True, alarms=True, relay_factory=QuietRelay) as gw:
            dev = _raise_alarm(gw)
            wait_until(lambda: any(r.key == KEY for r in _journal(cfg)), what="the alarm journaled")
            wait_until(lambda: _writer(gw, "live")["failures"] >= 2, what="live writer failures")
            down = _admin_status(gw)["alarms"]["writers"]["live"]
            assert down["state"] == "backoff" and down["written"] == 0 and "LiveTableError" in down["last_error"]
            assert read_active(client, redis_prefix) == {}
            fwd.restore()
            journal = Journal(str(pathlib.Path(cfg.gateway.state_dir) / "journal.db"))
            try:
                def complete():
                    seq, entries = journal_snapshot(journal)
                    table = read_active(client, redis_prefix)
                    applied = int(client.get(f"{redis_prefix}:alarms:seq") or 0)
                    return applied == seq and set(table) == {e["alarm"]["key"] for e in entries}
                wait_until(complete, timeout=20, what="the live table caught up with the journal")
            finally:
                journal.close()
            assert KEY in read_active(client, redis_prefix)
            dev.close()
    finally:
        fwd.close()
        client.close()


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()               # nobody listens: a Kafka bootstrap that refuses every connection
    return port


def test_kafka_down_at_start_gateway_runs_and_journals(tmp_path):
    port = _closed_port()
    cfg = _cfg(tmp_path, kafka={"bootstrap_servers": f"127.0.0.1:{port}"})
    with RunningGateway(cfg, admin=True, alarms=True) as gw:       # the real relay, in its child process
        dev = _raise_alarm(gw)
        wait_until(lambda: any(r.key == KEY for r in _journal(cfg)), what="the alarm journaled")
        # the history (SQLite) is written while Kafka is away
        wait_until(lambda: _writer(gw, "history")["lag_events"] == 0 and _writer(gw, "history")["written"] >= 1,
                   timeout=10, what="history written")

        def relay_reports_down():
            relay = _admin_status(gw)["alarms"]["relay"]
            return relay if relay.get("pending", 0) >= 1 and relay.get("last_error") else None
        relay = wait_until(relay_reports_down, timeout=30, what="relay stats showing the broker down")
        # the relay child runs (no restart loop) and says why nothing goes out
        assert relay["delivered"] == 0 and relay["pid"] is not None and relay["restarts"] == 0
        assert re.search(rf"127\.0\.0\.1:{port}.*Connection refused|brokers are down", relay["last_error"])
        assert _admin_status(gw)["alarms"]["writers"]["history"]["failures"] == 0
        dev.close()
