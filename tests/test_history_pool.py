"""MysqlHistory's pool on the real MariaDB: returned on exceptions, survives a killed session and fork."""
from __future__ import annotations

import gc
import os
import threading

import pymysql
import pytest

from alarms.history.store import HistoryError
from test_history_fixtures import MYSQL, event, mysql_db, mysql_store, rows_of  # noqa: F401


def connection_id(store) -> int:
    with store._cursor() as cur:
        cur.execute("SELECT CONNECTION_ID()")
        return cur.fetchone()[0]


def in_thread(fn, timeout_s: float = 10.0):
    """Run fn in a thread; fail (instead of hanging) if a leaked connection blocks the pool."""
    out: list = []
    t = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    t.start()
    t.join(timeout_s)
    assert not t.is_alive(), "pool checkout blocked: a connection was not returned"
    return out[0]


def test_connection_returned_on_sql_and_python_errors(mysql_db):  # noqa: F811
    store = mysql_store(mysql_db, pool_size=1)
    first = connection_id(store)
    for _ in range(5):
        with pytest.raises(HistoryError, match=f"root@127.0.0.1:3306/{mysql_db}.*no_such_table"):
            with store._cursor() as cur:
                cur.execute("SELECT * FROM no_such_table")
        with pytest.raises(RuntimeError):
            with store._cursor() as cur:
                cur.execute("INSERT INTO schema_version (version) VALUES (99)")
                raise RuntimeError("caller bug mid-transaction")
    # pool_size 1: had any of the ten leaked, this would block
    assert in_thread(lambda: connection_id(store)) == first
    assert store._pool._connections == 0 and len(store._pool._idle_cache) == 1
    with store._cursor() as cur:
        cur.execute("SELECT COUNT(*) FROM schema_version WHERE version = 99")
        assert cur.fetchone()[0] == 0            # the interrupted transaction was rolled back
    store.close()


def test_killed_session_is_replaced_on_checkout(mysql_db):  # noqa: F811
    store = mysql_store(mysql_db, pool_size=1)
    victim = connection_id(store)
    admin = pymysql.connect(**MYSQL)
    with admin.cursor() as cur:
        cur.execute(f"KILL {victim}")
    admin.close()
    assert store.insert_batch(rows_of([event(1)])) == 1    # ping on checkout reconnected
    assert connection_id(store) != victim
    store.close()


def test_pool_is_bounded(mysql_db):  # noqa: F811
    store = mysql_store(mysql_db, pool_size=2)
    seen, barrier = set(), threading.Barrier(6)

    def work():
        barrier.wait()
        for _ in range(20):
            seen.add(connection_id(store))

    threads = [threading.Thread(target=work) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    assert not any(t.is_alive() for t in threads)
    assert 1 <= len(seen) <= 2                 # six threads shared two sessions
    store.close()


def test_forked_child_gets_its_own_connection_and_leaves_the_parents_alone(mysql_db):  # noqa: F811
    store = mysql_store(mysql_db, pool_size=2)
    parent_id = connection_id(store)
    rfd, wfd = os.pipe()
    gc.collect()        # garbage of earlier tests (librdkafka handles) must not be finalized in the child
    pid = os.fork()
    if pid == 0:                               # the child: report, drop everything, exit
        code = 1
        try:
            child_id = connection_id(store)
            store.insert_batch(rows_of([event(2)]))
            os.write(wfd, f"{child_id}\n".encode())
            del store
            gc.collect()                       # finalizers of the inherited pool must not QUIT it
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd) as r:
        child_id = int(r.read().strip() or 0)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert child_id and child_id != parent_id
    assert connection_id(store) == parent_id   # the parent's session survived the child
    assert store.max_event_seq(1) == 2         # and sees what the child wrote
    store.close()
