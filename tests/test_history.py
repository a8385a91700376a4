"""HistoryStore on SQLite and on the real MariaDB: the same cases on both (the `store` fixture)."""
from __future__ import annotations

import sqlite3

import pymysql
import pytest

from alarms.history.store import MIGRATIONS, HistoryError, HistoryUnavailable, MysqlHistory, SqliteHistory, open_history
from alarms.journal import JournalRow
from alarms.settings import HistorySettings, MysqlSettings
from test_history_fixtures import MYSQL, T0, event, journal_with, mixed_events, mysql_db, mysql_store, rows_of, store  # noqa: F401


def test_schema_is_created_at_the_newest_version(store):
    assert store.schema_version() == MIGRATIONS[store.kind][-1][0] == 2
    assert store.migrate() == 2          # again: nothing to do
    assert store.count() == 0 and store.max_event_seq(1) == 0


def test_insert_columns_and_idempotent_batches(store):
    evs = mixed_events(40)
    rows = rows_of(evs)
    assert store.insert_batch(rows) == 40
    assert store.insert_batch(rows) == 0            # the same batch again: nothing new
    assert store.insert_batch(rows[10:20] + rows_of(mixed_events(5, start=41))) == 5
    assert store.count() == 45
    assert store.max_event_seq(1) == 45 and store.max_event_seq(2) == 0
    got = store.query(limit=1000, newest_first=False)
    assert [r.event_seq for r in got] == list(range(1, 46))
    assert len({r.event_id for r in got}) == 45
    first, e = got[0], evs[0]
    assert (first.event_id, first.gateway_id, first.alarm_key, first.source, first.code, first.object,
            first.severity, first.transition, first.state, first.operator, first.text, first.time_ms) == (
        e.event_id, 1, "CI-2/SWITCH_LOST/-", "CI-2", "SWITCH_LOST", "-", "critical", "raise", "UNACK", None,
        e.text, e.time_ms)
    assert first.doc == e.to_json()
    acked = [r for r in got if r.transition == "ack"]
    assert acked and all(r.operator == "op1" and r.state == "ACKED" for r in acked)


def test_query_filters_order_and_limit(store):
    store.insert_batch(rows_of(mixed_events(64)))
    newest = store.query(limit=5)
    assert [r.event_seq for r in newest] == [64, 63, 62, 61, 60]
    window = store.query(since_ms=T0 + 10_000, until_ms=T0 + 20_000, newest_first=False)
    assert [r.event_seq for r in window] == list(range(10, 20))          # since inclusive, until exclusive
    ci3 = store.query(source="CI-3", code="DEVICE_COMM_LOST", limit=1000)
    assert ci3 and all(r.source == "CI-3" and r.code == "DEVICE_COMM_LOST" for r in ci3)
    assert len(ci3) == len([s for s in range(1, 65) if s % 4 == 2 and s % 2 == 0])
    assert store.query(source="nobody") == []
    with pytest.raises(ValueError, match="limit"):
        store.query(limit=0)


def test_same_time_rows_ordered_by_seq(store):
    store.insert_batch(rows_of([event(s, time_ms=T0) for s in range(1, 6)]))
    assert [r.event_seq for r in store.query()] == [5, 4, 3, 2, 1]


def test_a_bad_row_names_its_seq_and_writes_nothing(store):
    good = rows_of([event(1)])
    bad = JournalRow(2, "f" * 32, "x/Y/-", T0, b'{"not": "an event"}')
    with pytest.raises(HistoryError, match="event_seq=2"):
        store.insert_batch(good + [bad])
    assert store.count() == 0


def _raw_exec(store, statements: list[str]) -> None:
    """Run SQL on the store's database without the store (to build an old schema)."""
    if isinstance(store, SqliteHistory):
        conn = sqlite3.connect(store.path, isolation_level=None)
        for sql in statements:
            conn.execute(sql)
        conn.close()
    else:
        conn = pymysql.connect(database=store.where.rsplit("/", 1)[1], autocommit=True, **MYSQL)
        with conn.cursor() as cur:
            for sql in statements:
                cur.execute(sql)
        conn.close()


def test_migration_from_version_1(store, tmp_path):
    kind, where = store.kind, store.where
    store.close()
    # rebuild the database as version 1 wrote it, with one row in it
    _raw_exec(store, ["DROP TABLE alarm_history", "DROP TABLE schema_version",
                      *MIGRATIONS[kind][0][1], "CREATE TABLE schema_version (version INTEGER NOT NULL)",
                      "INSERT INTO schema_version (version) VALUES (1)"])
    old = event(7)
    cols = "event_seq, event_id, gateway_id, alarm_key, source, code, object, severity, transition, state, " \
           "operator, text, time_ms, doc"
    values = (7, old.event_id, 1, old.key, "CI-1", "DEVICE_COMM_LOST", "-", "critical", "raise", "UNACK", None,
              old.text, old.time_ms, old.encode().decode())
    literal = ", ".join("NULL" if v is None else (str(v) if isinstance(v, int) else "'" + v.replace("'", "''") + "'")
                        for v in values)
    _raw_exec(store, [f"INSERT INTO alarm_history ({cols}) VALUES ({literal})"])
    reopened = SqliteHistory(where) if kind == "sqlite" else mysql_store(where.rsplit("/", 1)[1])
    try:
        assert reopened.schema_version() == 2
        assert [r.event_id for r in reopened.query()] == [old.event_id]
        with reopened._cursor() as cur:
            if kind == "sqlite":
                cur.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'alarm_history'")
            else:
                cur.execute("SELECT DISTINCT index_name FROM information_schema.statistics "
                            "WHERE table_schema = DATABASE() AND table_name = 'alarm_history'")
            names = {r[0] for r in cur.fetchall()}
        assert {"idx_time", "idx_source_time", "idx_code_time", "idx_gateway_seq"} <= names
        assert reopened.insert_batch(rows_of([event(8)])) == 1 and reopened.max_event_seq(1) == 8
    finally:
        reopened.close()


def test_journal_rows_round_trip(store, tmp_path):
    evs = mixed_events(30)
    j = journal_with(str(tmp_path / "journal.db"), evs)
    assert store.insert_batch(j.read_after(0, 100)) == 30
    assert [r.doc for r in store.query(newest_first=False)] == [e.to_json() for e in evs]
    j.close()


def test_mysql_unreachable_names_host_and_database():
    with pytest.raises(HistoryUnavailable, match=r"root@127\.0\.0\.1:1/nowhere"):
        MysqlHistory(host="127.0.0.1", port=1, database="nowhere", connect_timeout_s=1)


def test_mysql_missing_database_is_named():
    with pytest.raises(HistoryError, match="railgate_t_absent") as info:
        MysqlHistory(database="railgate_t_absent", **MYSQL)
    assert "Unknown database" in str(info.value)


def test_open_history_from_config(tmp_path, mysql_db):  # noqa: F811
    s = open_history(HistorySettings(), str(tmp_path / "state"))
    assert isinstance(s, SqliteHistory) and s.path.endswith("state/history.db")
    s.close()
    mysql = MysqlSettings("127.0.0.1", 3306, "root", "", mysql_db, 3)
    m = open_history(HistorySettings("mysql", mysql), str(tmp_path))
    assert isinstance(m, MysqlHistory) and m.pool_size == 3 and m.schema_version() == 2
    m.close()
