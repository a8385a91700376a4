"""Retention: Journal.prune keeps every row still needed, HistoryStore.prune on SQLite and the real
MariaDB, the RetentionPruner thread with real writers, and its figures in the gateway's status."""
from __future__ import annotations

import functools
import secrets
import socket
import sqlite3
import tempfile
import time
from datetime import timezone

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarms.history.store import MysqlHistory, SqliteHistory
from alarms.history_writer import HistorySink, HistoryWriter
from alarms.journal import Journal, disk_bytes
from alarms.live.live_table import LiveTable, redis_client
from alarms.model import STATES, AlarmEvent, AlarmKey, iso_time
from alarms.retention import DAY_MS, NO_FLOOR, RetentionPruner, writers_floor
from test_history_fixtures import mysql_db, redis_prefix, rows_of, store  # noqa: F401

KEYS = ("CI-1/DEVICE_COMM_LOST/-", "CI-2/SWITCH_LOST/301", "CI-3/TRACK_SECTION_FAULT/111", "CI-1/THREAT/-")


def event(seq: int, key: str, transition: str, state: str, time_ms: int, gateway_id: int = 1) -> AlarmEvent:
    """An AlarmEvent built through the model (not the engine), so any sequence can be journaled."""
    return AlarmEvent(
        event_id=secrets.token_hex(16), event_seq=seq, gateway_id=gateway_id, line="demo-line-1",
        alarm=AlarmKey.parse(key), severity="info" if transition == "info" else "major", text=f"{transition} {key}",
        transition=transition, previous_state="NORMAL", state=state, active=state in ("UNACK", "ACKED"),
        chattering=False, operator="op1" if transition == "ack" else None, shelved_until_ms=None,
        raised_ms=time_ms, time_ms=time_ms, time=iso_time(time_ms, timezone.utc))


def seqs(journal: Journal) -> dict[int, int]:
    """event_seq -> time_ms of every row."""
    return {r.event_seq: r.time_ms for r in journal.read_after(0, 1_000_000)}


def delivery(path: str) -> tuple[int, list[int]]:
    """(through_seq, delivered_ahead seqs), read from the file."""
    db = sqlite3.connect(path)
    try:
        through = db.execute("SELECT through_seq FROM delivery").fetchone()[0]
        return through, [r[0] for r in db.execute("SELECT event_seq FROM delivered_ahead ORDER BY 1")]
    finally:
        db.close()


# -- Journal.prune: the property ----------------------------------------------------------------

_events = st.lists(st.tuples(st.sampled_from(KEYS), st.sampled_from(("raise", "clear", "ack", "info")),
                             st.sampled_from(STATES), st.integers(0, 100)), min_size=1, max_size=40)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(evs=_events, data=st.data())
def test_prune_keeps_every_needed_row_and_deletes_only_old_ones(evs, data):
    """Random journals (times in any order, random delivery marks in several reports, random writer
    watermark and cutoff, small batches): exactly the old rows nothing needs go, and everything a
    reader sees (latest_states, pending, last_seq, undelivered) is as before."""
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/journal.db"
        j = Journal(path, fsync_commits=False)
        j.append([event(i + 1, k, tr, stt, t) for i, (k, tr, stt, t) in enumerate(evs)])
        n = len(evs)
        for _ in range(data.draw(st.integers(0, 3), "delivery reports")):
            j.mark_delivered(data.draw(st.sets(st.integers(1, n)), "delivered"))
        floor = data.draw(st.none() | st.integers(0, n), "writer watermark")
        cutoff = data.draw(st.integers(0, 101), "cutoff")
        batch = data.draw(st.integers(1, 7), "batch")

        before = seqs(j)
        latest = j.latest_states()
        pending = j.pending(limit=10_000)
        undelivered, last = j.undelivered(), j.last_seq()
        needed = ({e.event_seq for e in latest} | {r.event_seq for r in pending} | {last}
                  | {s for s in before if floor is not None and s > floor})
        deleted = j.prune(cutoff, keep_after_seq=floor, batch=batch)

        after = seqs(j)
        gone = set(before) - set(after)
        assert needed <= set(after)
        assert all(before[s] < cutoff for s in gone)
        assert gone == {s for s, t in before.items() if t < cutoff and s not in needed}   # nothing else kept
        assert deleted == len(gone)
        assert j.latest_states() == latest and j.pending(limit=10_000) == pending
        assert j.undelivered() == undelivered and j.last_seq() == last
        assert j.prune(cutoff, keep_after_seq=floor, batch=batch) == 0            # nothing left to do

        # the engine numbers on from last_seq(); the relay's watermark still crosses the pruned seqs
        j.append([event(last + 1, KEYS[0], "raise", "UNACK", 50)])
        assert j.last_seq() == last + 1
        j.mark_delivered(r.event_seq for r in j.pending(limit=10_000))
        assert j.undelivered() == 0 and delivery(path) == (last + 1, [])
        j.close()


def test_everything_old_and_done_leaves_the_alarm_table_and_the_newest_row(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(1, KEYS[0], "raise", "UNACK", 10), event(2, KEYS[1], "raise", "UNACK", 11),
              event(3, KEYS[0], "clear", "NORMAL", 12), event(4, KEYS[2], "info", "NORMAL", 13),
              event(5, KEYS[1], "ack", "ACKED", 14), event(6, KEYS[3], "info", "NORMAL", 15)])
    j.mark_delivered(range(1, 7))
    assert j.prune(1_000) == 4
    assert sorted(seqs(j)) == [5, 6]         # KEYS[1]'s last event (ACKED) and the newest row
    assert j.last_seq() == 6 and [e.event_seq for e in j.latest_states()] == [5]
    reopened = Journal(path)                 # as the alarm thread at the next start
    assert reopened.last_seq() == 6
    reopened.close()
    j.close()


def test_delivered_ahead_rows_survive_so_the_watermark_can_cross_them(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(1, 11)])
    j.mark_delivered([1, 2, 4, 5, 6, 7])     # 3 is the hole
    assert delivery(path) == (2, [4, 5, 6, 7])
    assert j.prune(100) == 6                 # 1, 2, 4..7; 3 (undelivered) and 8..10 stay
    assert sorted(seqs(j)) == [3, 8, 9, 10]
    j.mark_delivered([3, 8, 9, 10])
    assert delivery(path) == (10, []) and j.undelivered() == 0
    j.close()


def test_prune_deletes_in_batches_and_stops_when_asked_between_them(tmp_path):
    j = Journal(str(tmp_path / "journal.db"))
    # odd seqs old, even seqs young (the newest, 199, is old but stays): each batch deletes `batch` rows
    j.append([event(s, KEYS[3], "info", "NORMAL", s if s % 2 else 10_000 + s) for s in range(1, 200)])
    j.mark_delivered(range(1, 200))
    gone: list[int] = []

    def between() -> bool:               # sees each committed batch
        gone.append(199 - len(seqs(j)))
        return len(gone) == 3
    assert j.prune(1_000, batch=10, between_batches=between) == 30
    assert gone == [10, 20, 30] and min(s for s in seqs(j) if s % 2) == 61
    calls: list[int] = []
    assert j.prune(1_000, batch=10, between_batches=lambda: calls.append(1) and False) == 69
    assert len(calls) == 6               # after the 6 full batches; not after the 7th, which had 9
    assert [s for s in seqs(j) if s % 2] == [199] and len(seqs(j)) == 100
    j.close()


def test_disk_bytes_counts_the_file_and_its_wal(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(1, 200)])
    size = sum((tmp_path / f"journal.db{x}").stat().st_size for x in ("", "-wal", "-shm"))
    assert (tmp_path / "journal.db-wal").stat().st_size > 0 and j.disk_bytes() == size
    j.close()
    assert disk_bytes(str(tmp_path / "none.db")) == 0


# -- HistoryStore.prune -----------------------------------------------------------------------

def _history_events() -> list[AlarmEvent]:
    """Gateway 1: seqs 1..20 at day 1..20; gateway 2: seqs 1..5 at day 1..5 (its newest is old)."""
    return ([event(s, KEYS[s % 4], "raise", "UNACK", s * DAY_MS, gateway_id=1) for s in range(1, 21)]
            + [event(s, KEYS[s % 4], "raise", "UNACK", s * DAY_MS, gateway_id=2) for s in range(1, 6)])


def _stored(store) -> set[tuple[int, int]]:
    return {(r.gateway_id, r.event_seq) for r in store.query(limit=1000)}


def test_history_prune_deletes_exactly_the_old_rows(store):  # noqa: F811 - sqlite and the real MariaDB
    store.insert_batch(rows_of(_history_events()))
    # one gateway first: gateway 2's rows stay whatever their age
    assert store.prune(10 * DAY_MS, gateway_id=1, batch=3) == 9
    assert _stored(store) == {(1, s) for s in range(10, 21)} | {(2, s) for s in range(1, 6)}
    # then all: gateway 2's newest row (its writer's watermark) stays although it is old
    assert store.prune(15 * DAY_MS, batch=2) == 5 + 4
    assert _stored(store) == {(1, s) for s in range(15, 21)} | {(2, 5)}
    assert store.max_event_seq(1) == 20 and store.max_event_seq(2) == 5
    assert store.prune(15 * DAY_MS) == 0
    assert store.disk_bytes() > 0


def test_sqlite_history_prune_walks_the_time_index(tmp_path):
    """The DELETEs prune runs, as SQLite plans them: through idx_time, no sort, no full scan."""
    store = SqliteHistory(str(tmp_path / "history.db"))
    store.insert_batch(rows_of(_history_events()))
    statements: list[str] = []
    store._connect().set_trace_callback(statements.append)   # the expanded SQL, bound values in place
    assert store.prune(10 * DAY_MS, gateway_id=1, batch=3) == 9 and store.prune(12 * DAY_MS) == 6
    deletes = [sql for sql in statements if sql.startswith("DELETE")]
    assert len(deletes) == 4 + 1             # 9 rows in batches of 3 (the 4th finds none), then one
    db = sqlite3.connect(store.path)
    for sql in deletes:
        plan = " | ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + sql))
        assert "INDEX idx_time (time_ms<?)" in plan and "TEMP B-TREE" not in plan, plan
    db.close()
    store.close()


# -- the pruner thread --------------------------------------------------------------------------

def _wait(cond, timeout_s: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


def _dead_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_pruner_thread_prunes_journal_and_history_behind_the_writer(store, tmp_path):  # noqa: F811
    now = 400 * DAY_MS
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    old = [event(s, KEYS[3], "info", "NORMAL", now - (200 - s) * DAY_MS) for s in range(1, 101)]   # 100..199 days
    recent = [event(s, KEYS[3], "info", "NORMAL", now - DAY_MS) for s in range(101, 111)]
    j.append(old + recent + [event(111, KEYS[0], "raise", "UNACK", now - 300 * DAY_MS)])
    j.mark_delivered(range(1, 112))
    writer = HistoryWriter(path, HistorySink(store, 1), batch=40, poll_s=0.05)
    pruner = RetentionPruner(path, lambda: writers_floor([writer]), history=store, gateway_id=1,
                             journal_retention_days=7, history_retention_days=150, first_run_s=0,
                             interval_s=0.1, batch=30, clock_ms=lambda: now)
    pruner.start()
    try:
        _wait(lambda: pruner.stats()["skipped"] >= 1, what="a round skipped: the writer has no watermark yet")
        assert pruner.stats()["deleted"] == 0 and len(seqs(j)) == 111
        writer.start()
        s = _wait(lambda: (s := pruner.stats())["deleted"] >= 100 and s["history_deleted"] >= 49 and s,
                  what="pruning rounds behind the writer")
    finally:
        assert pruner.stop(5.0)
        writer.stop()
    # journal: the 100 old rows went; the recent ones, the raised alarm (latest) and the newest stay
    assert sorted(seqs(j)) == list(range(101, 112))
    # history: rows older than 150 days (seqs 1..49) went, but not seq 111, the watermark
    assert sorted(r.event_seq for r in store.query(limit=1000)) == list(range(50, 112))
    assert s["deleted"] == 100 and s["history_deleted"] == 49 and s["failures"] == 0 and s["last_error"] is None
    assert s["journal_bytes"] == j.disk_bytes() > 0 and s["history_bytes"] > 0
    assert s["retention_days"] == 7 and s["history_retention_days"] == 150 and s["last_run_ms"] == now
    j.close()


def test_writers_floor_waits_for_history_and_ignores_a_live_table_that_resyncs(tmp_path, redis_prefix):  # noqa: F811
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(1, 31)])
    history = SqliteHistory(str(tmp_path / "history.db"))
    history.insert_batch(j.read_after(0, 20))         # the history has 1..20
    hist = HistoryWriter(path, HistorySink(history, 1), poll_s=30)   # resumes at 20, copies on, sleeps
    down = MysqlHistory(port=_dead_port(), database="railgate_none", connect_timeout_s=0.5, migrate=False)
    unknown = HistoryWriter(path, HistorySink(down, 1), backoff_min_s=0.05, backoff_max_s=0.1, name="mysql")
    live = HistoryWriter(path, LiveTable(redis_client(f"redis://127.0.0.1:{_dead_port()}/0", 0.5), "rgtest",
                                         lambda: (j.last_seq(), [])), backoff_min_s=0.05, name="live")
    # a live table that runs (the real Redis), resynced at seq 25: it follows from there row by row
    live_up = HistoryWriter(path, LiveTable(redis_client("redis://127.0.0.1:6379/0"), redis_prefix[1],
                                            lambda: (25, [])), poll_s=30, name="live")
    assert writers_floor([live_up], resyncing=("live",)) == NO_FLOOR    # not started: it resyncs first
    assert writers_floor([]) == NO_FLOOR
    assert writers_floor([hist]) is None                                   # not started: unknown
    for w in (hist, unknown, live, live_up):
        w.start()
    try:
        _wait(lambda: hist.stats()["watermark"] == 30, what="history writer running")
        _wait(lambda: live_up.stats()["watermark"] == 30, what="live writer on the real Redis")
        assert writers_floor([live_up], resyncing=("live",)) == 30    # while it runs it holds rows back
        _wait(lambda: unknown.stats()["failures"] >= 1 and live.stats()["failures"] >= 1, what="failures")
        assert writers_floor([hist, live], resyncing=("live",)) == 30     # the live table resyncs: no bound
        assert writers_floor([hist, live]) is None                         # unless it follows row by row
        assert writers_floor([hist, unknown, live], resyncing=("live",)) is None   # MySQL never answered
        pruner = RetentionPruner(path, lambda: writers_floor([hist, unknown]), first_run_s=0, clock_ms=lambda: 10**6)
        assert pruner.run_once() == {"deleted": 0, "history_deleted": 0, "skipped": True}
        assert pruner.stats()["skipped"] == 1 and len(seqs(j)) == 30
    finally:
        for w in (hist, unknown, live, live_up):
            w.stop(1.0)
    history.close()
    j.close()


def test_a_failing_round_is_counted_and_the_next_one_runs(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(1, 11)])
    j.mark_delivered(range(1, 11))
    down = MysqlHistory(port=_dead_port(), database="railgate_none", connect_timeout_s=0.5, migrate=False)
    pruner = RetentionPruner(path, lambda: NO_FLOOR, history=down, clock_ms=lambda: 10 * DAY_MS)
    assert pruner.run_once() == {"deleted": 9, "history_deleted": 0, "skipped": False}
    s = pruner.stats()
    assert s["failures"] == 1 and "HistoryUnavailable" in s["last_error"] and s["history_bytes"] is None
    assert s["runs"] == 1 and s["deleted"] == 9
    j.close()


def test_a_stopping_pruner_ends_its_round_after_the_current_batch(tmp_path):
    path = str(tmp_path / "journal.db")
    j = Journal(path)
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(1, 101)])
    j.mark_delivered(range(1, 101))
    history = SqliteHistory(str(tmp_path / "history.db"))
    history.insert_batch(j.read_after(0, 100))
    pruner = RetentionPruner(path, lambda: NO_FLOOR, history=history, history_retention_days=7, batch=10,
                             clock_ms=lambda: 10 * DAY_MS)
    t0 = time.monotonic()
    pruner.run_once()
    assert time.monotonic() - t0 >= 9 * pruner.pause_s               # a pause after each full batch
    assert len(seqs(j)) == 1 and history.count() == 1
    j.append([event(s, KEYS[3], "info", "NORMAL", s) for s in range(101, 201)])
    j.mark_delivered(range(101, 201))
    history.insert_batch(j.read_after(100, 100))
    assert pruner.stop(1.0)                  # never started: stop only sets the flag a round looks at
    assert pruner.run_once() == {"deleted": 10, "history_deleted": 0, "skipped": False}
    assert len(seqs(j)) == 91 and history.count() == 101
    history.close()
    j.close()


def test_pruner_brings_up_the_schema_of_a_store_nobody_has_used_yet(tmp_path):
    """The gateway builds its store with migrate=False; the pruner may be the first to use it."""
    path = str(tmp_path / "journal.db")
    Journal(path).close()
    fresh = SqliteHistory(str(tmp_path / "history.db"), migrate=False)
    pruner = RetentionPruner(path, lambda: NO_FLOOR, history=fresh, clock_ms=lambda: 10 * DAY_MS)
    assert pruner.run_once() == {"deleted": 0, "history_deleted": 0, "skipped": False}
    s = pruner.stats()
    assert s["failures"] == 0 and s["last_error"] is None and s["history_bytes"] > 0
    assert fresh.count() == 0
    fresh.close()


# -- through the gateway ------------------------------------------------------------------------

def test_gateway_status_shows_retention_with_disk_bytes(tmp_path, monkeypatch):
    import yaml

    from gateway.app import alarm_stage, config
    from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until

    state = tmp_path / "state"
    state.mkdir()
    now = int(time.time() * 1000)
    j = Journal(str(state / "journal.db"))      # a journal of a gateway that ran for a while
    j.append([event(s, KEYS[3], "info", "NORMAL", now - (100 - s) * DAY_MS - DAY_MS // 2) for s in range(1, 51)]
             + [event(s, KEYS[3], "info", "NORMAL", now - 3_600_000) for s in range(51, 61)])
    j.mark_delivered(range(1, 61))
    j.close()
    raw = line_config(state_dir=str(state), hello_timeout_ms=60_000).raw
    # not embedded: no broker, the relay is quiet; an address of its own, so no other test's gateway holds
    # this identity's lock file meanwhile
    raw["kafka"] = {"bootstrap_servers": f"127.0.0.1:{_dead_port()}"}
    raw["alarms"] = {"journal_retention_days": 3}
    raw["history"] = {"retention_days": 60}
    (tmp_path / "line.yaml").write_text(yaml.safe_dump(raw))
    cfg = config.load(str(tmp_path / "line.yaml"))
    # the stage's own pruner, only sooner than the hourly default
    monkeypatch.setattr(alarm_stage, "RetentionPruner",
                        functools.partial(RetentionPruner, first_run_s=0.1, interval_s=0.2))
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        def pruned():
            r = gw.status()["alarms"]["retention"]
            return r if r["deleted"] >= 50 and r["history_deleted"] >= 40 else None
        r = wait_until(pruned, timeout=15, what="retention rounds in the gateway's status")
    # journal: the 50 rows of 50.5..99.5 days ago went, the last hour's stay; history: those over 60 days
    assert r["deleted"] == 50 and r["history_deleted"] == 40 and r["failures"] == 0
    assert r["journal_bytes"] > 0 and r["history_bytes"] > 0
    assert r["retention_days"] == 3 and r["history_retention_days"] == 60 and r["interval_s"] == 0.2
