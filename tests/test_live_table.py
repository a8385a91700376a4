"""The Redis live alarm table on the real Redis: replay-safe Lua updates, NORMAL removes, resync."""
from __future__ import annotations

import json
import time

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from alarms.history_writer import HistoryWriter
from alarms.journal import Journal
from alarms.live.live_table import LiveTable, entry_of, journal_snapshot, read_active
from test_history_fixtures import TcpForwarder, event, redis_prefix  # noqa: F401


def ev(seq, key=("CI-1", "DEVICE_COMM_LOST"), tr="raise", prev="NORMAL", st="UNACK", op=None):
    return event(seq, source=key[0], code=key[1], transition=tr, previous=prev, state=st, operator=op).to_json()


def table(client, prefix, snapshot=lambda: (0, [])) -> LiveTable:
    return LiveTable(client, prefix, snapshot)


def test_raise_ack_clear_and_normal_removes(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    t = table(client, prefix)
    assert t.apply_events([ev(1), ev(2, key=("CI-2", "SWITCH_LOST"))]) == 2
    active = read_active(client, prefix)
    assert set(active) == {"CI-1/DEVICE_COMM_LOST/-", "CI-2/SWITCH_LOST/-"}
    entry = active["CI-1/DEVICE_COMM_LOST/-"]
    assert entry == entry_of(ev(1))              # the doc's snapshot entry format, nothing else
    assert entry["state"] == "UNACK" and entry["event_seq"] == 1 and entry["alarm"]["source"] == "CI-1"
    t.apply_events([ev(3, tr="ack", prev="UNACK", st="ACKED", op="op1")])
    assert read_active(client, prefix)["CI-1/DEVICE_COMM_LOST/-"]["operator"] == "op1"
    t.apply_events([ev(4, tr="clear", prev="ACKED", st="NORMAL")])       # cleared and acked: gone
    assert set(read_active(client, prefix)) == {"CI-2/SWITCH_LOST/-"}
    t.apply_events([ev(5, key=("CI-2", "SWITCH_LOST"), tr="clear", prev="UNACK", st="RTN_UNACK")])
    assert read_active(client, prefix)["CI-2/SWITCH_LOST/-"]["state"] == "RTN_UNACK"   # still needs an ack
    assert t.applied_seq() == 5


def test_replays_and_older_events_change_nothing(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    t = table(client, prefix)
    events = [ev(1), ev(2, tr="ack", prev="UNACK", st="ACKED", op="op1"), ev(3, tr="clear", prev="ACKED", st="NORMAL")]
    assert t.apply_events(events) == 3
    assert t.apply_events(events) == 0                      # the whole batch replayed
    assert t.apply_events([events[0]]) == 0                 # an old raise must not resurrect the alarm
    assert read_active(client, prefix) == {}
    t.apply_events([ev(10), ev(9, key=("CI-1", "DEVICE_COMM_LOST"), tr="clear", prev="UNACK", st="NORMAL")])
    assert read_active(client, prefix)["CI-1/DEVICE_COMM_LOST/-"]["event_seq"] == 10   # seq 9 is older
    assert t.applied_seq() == 10
    t.apply_events([event(11, transition="info", state="NORMAL", previous="NORMAL").to_json()])
    assert set(read_active(client, prefix)) == {"CI-1/DEVICE_COMM_LOST/-"} and t.applied_seq() == 11


def test_resync_replaces_the_table_and_sets_the_floor(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    stale = table(client, prefix)
    stale.apply_events([ev(1, key=("OLD", "GONE")), ev(2)])
    snap_entries = [entry_of(ev(5, key=("CI-9", "DEVICE_COMM_LOST")))]
    t = table(client, prefix, snapshot=lambda: (7, snap_entries))
    assert t.resync() == 7
    assert read_active(client, prefix) == {"CI-9/DEVICE_COMM_LOST/-": snap_entries[0]}
    assert t.applied_seq() == 7
    assert t.apply_events([ev(6, key=("NEW", "ALARM"))]) == 0         # folded into the snapshot already
    assert t.apply_events([ev(8, key=("CI-9", "DEVICE_COMM_LOST"), tr="clear", prev="UNACK", st="NORMAL")]) == 1
    assert read_active(client, prefix) == {}


def test_writer_feeds_the_table_and_resyncs_after_redis_comes_back(redis_prefix, tmp_path):  # noqa: F811
    """Redis behind a forwarder: cut it, keep journaling, restore; the table equals the journal's state."""
    client, prefix = redis_prefix
    fwd = TcpForwarder(("127.0.0.1", 6379))
    # no client-side retries: the writer's back-off is the retry policy under test
    via = redis.Redis(host="127.0.0.1", port=fwd.port, socket_timeout=1, socket_connect_timeout=1,
                      retry=Retry(NoBackoff(), 0))
    path = str(tmp_path / "journal.db")
    journal = Journal(path)
    snap_journal = Journal(path)        # the snapshot callable runs in the writer thread: its own object
    t = LiveTable(via, prefix, lambda: journal_snapshot(snap_journal))
    w = HistoryWriter(path, t, name="live", batch=20, poll_s=0.05, backoff_min_s=0.05, backoff_max_s=0.3)
    journal.append([event(s, source=f"CI-{s}") for s in range(1, 11)])          # ten raised
    w.start()
    deadline = time.monotonic() + 10
    while w.stats()["watermark"] != 10:
        assert time.monotonic() < deadline, w.stats()
        time.sleep(0.02)
    assert len(read_active(client, prefix)) == 10
    fwd.cut()
    journal.append([event(s + 10, source=f"CI-{s}", transition="clear", previous="UNACK", state="RTN_UNACK")
                    for s in range(1, 6)])
    journal.append([event(s + 15, source=f"CI-{s}", transition="ack", previous="RTN_UNACK", state="NORMAL",
                          operator="op2") for s in range(1, 4)])
    w.wake()
    while w.stats()["failures"] < 2:
        assert time.monotonic() < deadline + 10, w.stats()
        time.sleep(0.02)
    fwd.restore()
    while w.stats()["watermark"] != 18 or w.stats()["lag_events"]:
        assert time.monotonic() < deadline + 20, w.stats()
        time.sleep(0.02)
    assert t.resyncs >= 2                         # at start and after the outage
    active = read_active(client, prefix)
    expected = {e.key: e.state for e in journal.latest_states()}
    assert {k: v["state"] for k, v in active.items()} == expected
    assert len(active) == 7 and active["CI-4/DEVICE_COMM_LOST/-"]["state"] == "RTN_UNACK"
    assert w.stop(2.0)
    fwd.close()
    journal.close()
    snap_journal.close()


def test_entries_are_compact_json(redis_prefix):  # noqa: F811
    client, prefix = redis_prefix
    table(client, prefix).apply_events([ev(1)])
    raw = client.hget(f"{prefix}:alarms:active", "CI-1/DEVICE_COMM_LOST/-")
    assert json.loads(raw)["severity"] == "critical" and b", " not in raw
