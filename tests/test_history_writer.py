"""The history thread against the real journal and the real MariaDB, through a cuttable TCP forwarder."""
from __future__ import annotations

import time

import pytest

from alarms.history.store import SqliteHistory
from alarms.history_writer import HistorySink, HistoryWriter
from alarms.journal import Journal
from test_history_fixtures import TcpForwarder, mixed_events, mysql_db, mysql_store, store  # noqa: F401


def wait_for(cond, timeout_s: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def assert_history_equals_journal(store, journal: Journal) -> None:
    journaled = journal.read_after(0, 1_000_000)
    stored = store.query(limit=100_000, newest_first=False)
    assert [(r.event_seq, r.event_id) for r in stored] == [(j.event_seq, j.event_id) for j in journaled]
    assert [r.doc for r in stored] == [__import__("json").loads(j.value) for j in journaled]


def test_writer_copies_and_resumes_from_the_store_watermark(store, tmp_path):
    path = str(tmp_path / "journal.db")
    journal = Journal(path)
    journal.append(mixed_events(120))
    w = HistoryWriter(path, HistorySink(store, 1), batch=50, poll_s=0.05)
    w.start()
    wait_for(lambda: w.stats()["lag_events"] == 0 and w.stats()["written"] == 120, what="first 120")
    s = w.stats()
    assert s["batches"] == 3 and s["failures"] == 0 and s["watermark"] == 120 and s["state"] == "running"
    journal.append(mixed_events(7, start=121))
    w.wake()
    wait_for(lambda: w.stats()["watermark"] == 127, what="woken writer")
    assert w.stop(2.0) and w.stats()["state"] == "stopped"
    # a new writer (gateway restart) starts from the store's max_event_seq: nothing is written twice
    journal.append(mixed_events(3, start=128))
    w2 = HistoryWriter(path, HistorySink(store, 1), batch=50, poll_s=0.05)
    w2.start()
    wait_for(lambda: w2.stats()["watermark"] == 130, what="restarted writer")
    assert w2.stop(2.0) and w2.stats()["written"] == 3
    assert_history_equals_journal(store, journal)
    journal.close()


def test_stop_drains_what_is_journaled(tmp_path):
    path = str(tmp_path / "journal.db")
    journal = Journal(path)
    store = SqliteHistory(str(tmp_path / "history.db"))
    w = HistoryWriter(path, HistorySink(store, 1), batch=100, poll_s=30.0)   # would sleep 30 s between polls
    w.start()
    wait_for(lambda: w.stats()["state"] == "running", what="writer start")
    journal.append(mixed_events(1000))          # no wake(): only stop() makes it look
    t0 = time.monotonic()
    assert w.stop(10.0)
    assert time.monotonic() - t0 < 5.0
    assert store.count() == 1000 and w.stats()["batches"] == 10
    store.close()
    journal.close()


def test_stop_gives_up_at_the_timeout_when_the_store_is_down(tmp_path, mysql_db):  # noqa: F811
    fwd = TcpForwarder(("127.0.0.1", 3306))
    store = mysql_store(mysql_db, port=fwd.port, connect_timeout_s=1)
    fwd.cut()
    path = str(tmp_path / "journal.db")
    journal = Journal(path)
    journal.append(mixed_events(10))
    w = HistoryWriter(path, HistorySink(store, 1), backoff_min_s=0.05, backoff_max_s=0.2)
    w.start()
    wait_for(lambda: w.stats()["failures"] >= 2, what="failures")
    t0 = time.monotonic()
    assert w.stop(0.5) is False                   # ended, but 10 events are still to write
    assert time.monotonic() - t0 < 3.0
    s = w.stats()
    assert s["written"] == 0 and s["state"] == "stopped"
    assert f"127.0.0.1:{fwd.port}/{mysql_db}" in s["last_error"]
    journal.close()


@pytest.mark.slow
def test_mysql_outage_history_complete_afterwards(tmp_path, mysql_db):  # noqa: F811
    """Cut MariaDB away while events keep being journaled; after it is back the history equals the journal."""
    fwd = TcpForwarder(("127.0.0.1", 3306))
    store = mysql_store(mysql_db, port=fwd.port, pool_size=2, connect_timeout_s=1)
    path = str(tmp_path / "journal.db")
    journal = Journal(path)                       # the alarm thread's journal object
    w = HistoryWriter(path, HistorySink(store, 1), batch=25, poll_s=0.05, backoff_min_s=0.05,
                      backoff_max_s=0.4)
    w.start()
    seq = 0

    def journal_some(n: int) -> None:
        nonlocal seq
        for _ in range(n // 5):
            journal.append(mixed_events(5, start=seq + 1))
            seq += 5
            w.wake()
            time.sleep(0.005)

    journal_some(200)
    wait_for(lambda: w.stats()["watermark"] == 200, what="written before the cut")
    fwd.cut()                                     # MariaDB "down": listener and live sessions gone
    journal_some(300)
    seen = w.stats()["failures"]                  # a failure after the last append reports the full lag
    wait_for(lambda: w.stats()["failures"] >= max(3, seen + 1), what="failures while down")
    down = w.stats()
    assert down["state"] == "backoff" and down["written"] == 200 and down["lag_events"] >= 300
    assert "HistoryUnavailable" in down["last_error"]
    journal_some(100)
    fwd.restore()                                 # back, on the same port
    journal_some(100)
    wait_for(lambda: w.stats()["watermark"] == seq == 700 and w.stats()["lag_events"] == 0,
             what="catch-up after the outage")
    up = w.stats()
    assert up["written"] == 700 and up["state"] == "running"
    assert store.count() == 700
    assert_history_equals_journal(store, journal)
    assert w.stop(2.0)
    store.close()
    fwd.close()
    journal.close()
