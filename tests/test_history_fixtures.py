"""Shared helpers for the history, live-table and zone-lock tests (real MariaDB and Redis).

Imported by tests/test_history*.py and tests/test_live_table.py; holds no tests itself.
Databases are ``railgate_t_<random>`` and dropped afterwards; Redis keys use a random prefix
that is deleted afterwards.
"""
from __future__ import annotations

import secrets
import socket
import threading
from datetime import timezone

import pymysql
import pytest
import redis

from alarms.history.store import MysqlHistory, SqliteHistory
from alarms.journal import Journal, JournalRow
from alarms.model import AlarmEvent, AlarmKey, iso_time

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}
T0 = 1_795_425_974_859


def event(seq: int, source: str = "CI-1", code: str = "DEVICE_COMM_LOST", obj: str = "-",
          transition: str = "raise", previous: str = "NORMAL", state: str = "UNACK", operator: str | None = None,
          time_ms: int | None = None, severity: str = "critical", gateway_id: int = 1) -> AlarmEvent:
    t = T0 + seq * 1000 if time_ms is None else time_ms
    if transition == "info":
        severity = "info"
    return AlarmEvent(event_id=secrets.token_hex(16), event_seq=seq, gateway_id=gateway_id, line="demo-line-1",
                      alarm=AlarmKey(source, code, obj), severity=severity, text=f"{code} on {source}",
                      transition=transition, previous_state=previous, state=state,
                      active=state in ("UNACK", "ACKED"), chattering=False, operator=operator,
                      shelved_until_ms=None, raised_ms=t, time_ms=t, time=iso_time(t, timezone.utc))


def rows_of(events: list[AlarmEvent]) -> list[JournalRow]:
    """JournalRows as the journal would return them, without a journal file."""
    return [JournalRow(e.event_seq, e.event_id, e.key, e.time_ms, e.encode()) for e in events]


def journal_with(path: str, events: list[AlarmEvent]) -> Journal:
    j = Journal(path)
    j.append(events)
    return j


def mixed_events(n: int, start: int = 1) -> list[AlarmEvent]:
    """n events over 4 sources and 2 codes, raise/ack/clear cycles."""
    out = []
    cycle = [("raise", "NORMAL", "UNACK", None), ("ack", "UNACK", "ACKED", "op1"), ("clear", "ACKED", "NORMAL", None)]
    for i in range(n):
        seq = start + i
        tr, prev, st, op = cycle[(seq // 8) % 3]
        out.append(event(seq, source=f"CI-{seq % 4 + 1}", code=("DEVICE_COMM_LOST", "SWITCH_LOST")[seq % 2],
                         transition=tr, previous=prev, state=st, operator=op))
    return out


@pytest.fixture
def mysql_db():
    """A fresh database on the real MariaDB; dropped afterwards."""
    name = f"railgate_t_{secrets.token_hex(6)}"
    conn = pymysql.connect(**MYSQL)
    with conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
    try:
        yield name
    finally:
        with conn.cursor() as cur:
            cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()


def mysql_store(database: str, **kw) -> MysqlHistory:
    return MysqlHistory(database=database, **{**MYSQL, **kw})


@pytest.fixture(params=["sqlite", "mysql"])
def store(request, tmp_path):
    """The same HistoryStore tests on both back ends."""
    if request.param == "sqlite":
        s = SqliteHistory(str(tmp_path / "history.db"))
        yield s
        s.close()
    else:
        db = request.getfixturevalue("mysql_db")
        s = mysql_store(db, pool_size=2)
        yield s
        s.close()


@pytest.fixture
def redis_prefix():
    """(client, prefix): a random key prefix on the real Redis, every key under it deleted afterwards."""
    client = redis.Redis(host="127.0.0.1", port=6379)
    prefix = f"railgate_t_{secrets.token_hex(6)}"
    try:
        yield client, prefix
    finally:
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


class TcpForwarder:
    """127.0.0.1:<port> -> target, in test threads; cut() closes the listener and every live
    connection (the server looks down), restore() listens on the same port again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        lst = socket.socket()
        lst.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        lst.bind(("127.0.0.1", self.port))
        lst.listen(64)
        self.port = lst.getsockname()[1]
        self._listener = lst
        threading.Thread(target=self._accept, args=(lst,), daemon=True).start()

    def _accept(self, lst: socket.socket) -> None:
        while True:
            try:
                client, _ = lst.accept()
            except OSError:
                return         # listener closed by cut()
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        try:
            self._listener.shutdown(socket.SHUT_RDWR)   # wakes the accept() blocked in our thread
        except OSError:
            pass
        self._listener.close()
        with self._lock:
            socks, self._socks = self._socks, []
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    close = cut
