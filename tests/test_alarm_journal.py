"""Journal: group commit survives SIGKILL whole-or-absent; pending / mark_delivered / read_after; restart state."""
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from alarms.journal import Journal, JournalError
from alarms.model import AlarmEvent, AlarmKey, iso_time

BATCH = 50


def ev(seq, key="CI-1/X/1", transition="raise", state="UNACK", operator=None):
    k = AlarmKey.parse(key)
    return AlarmEvent(uuid.uuid4().hex, seq, 1, "demo-line-1", k, "info" if transition == "info" else "major",
                      f"batch {(seq - 1) // BATCH}", transition, "NORMAL", state, state in ("UNACK", "ACKED"),
                      False, operator, None, 1000, 1000 + seq, iso_time(1000 + seq, __import__("datetime").timezone.utc))


def test_append_read_pending_delivered(tmp_path):
    j = Journal(str(tmp_path / "j.db"))
    assert j.last_seq() == 0 and j.pending() == [] and j.latest_states() == []
    j.append([ev(1, "CI-1/A/-"), ev(2, "CI-1/B/-"), ev(3, "consist 9/CONSIST_COUPLED/-", "info", "NORMAL")])
    j.append([ev(4, "CI-1/A/-", "ack", "ACKED", "op"), ev(5, "CI-1/B/-", "clear", "RTN_UNACK"),
              ev(6, "CI-1/B/-", "ack", "NORMAL", "op")])
    assert j.last_seq() == 6
    assert [r.event_seq for r in j.pending(limit=4)] == [1, 2, 3, 4]
    j.mark_delivered([1, 3, 99])
    assert [r.event_seq for r in j.pending()] == [2, 4, 5, 6]
    assert [r.event_seq for r in j.read_after(4)] == [5, 6]
    assert [r.event_seq for r in j.read_after(0, limit=2)] == [1, 2]
    row = j.read_after(3, limit=1)[0]
    assert AlarmEvent.decode(row.value).event_id == row.event_id and row.key == "CI-1/A/-"
    latest = j.latest_states()                     # B is NORMAL, info never enters: only A
    assert [(e.key, e.state, e.event_seq) for e in latest] == [("CI-1/A/-", "ACKED", 4)]
    assert j.counts() == {"events": 6, "undelivered": 4, "not_normal": 1}
    j.close()


def test_delivery_watermark_out_of_order_and_holes(tmp_path):
    path = str(tmp_path / "j.db")
    j = Journal(path)
    j.append([ev(s, f"CI-1/K{s}/-") for s in range(1, 11)])
    j.mark_delivered([3, 2, 5, 9])                 # 1 is the hole: nothing below it moves
    assert [r.event_seq for r in j.pending()] == [1, 4, 6, 7, 8, 10]
    j.mark_delivered([1, 4, 4])                    # the hole fills: the watermark runs through 5
    assert [r.event_seq for r in j.pending()] == [6, 7, 8, 10]
    j.mark_delivered([2, 0, -3, 11, 500])          # already delivered, never journaled: ignored
    assert j.undelivered() == 4 and j.counts()["undelivered"] == 4
    j.close()
    j = Journal(path)                              # the state is in the file, not in the object
    assert [r.event_seq for r in j.pending(limit=2)] == [6, 7]
    j.mark_delivered([10, 8, 7, 6])
    assert j.pending() == [] and j.undelivered() == 0
    j.append([ev(11, "CI-1/K11/-")])               # a new row above the watermark is pending
    assert [r.event_seq for r in j.pending()] == [11]
    j.close()


def test_journal_of_the_first_schema_is_migrated(tmp_path):
    """A journal with a per-row ``delivered`` flag keeps what it said was delivered, and stays appendable."""
    import sqlite3
    path = str(tmp_path / "old.db")
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE events (event_seq INTEGER PRIMARY KEY, event_id TEXT NOT NULL UNIQUE, key TEXT NOT NULL,
                             time_ms INTEGER NOT NULL, value BLOB NOT NULL, delivered INTEGER NOT NULL DEFAULT 0);
        CREATE INDEX events_undelivered ON events(event_seq) WHERE delivered = 0;
        CREATE TABLE latest (key TEXT PRIMARY KEY, event_seq INTEGER NOT NULL, state TEXT NOT NULL,
                             value BLOB NOT NULL);""")
    for s in range(1, 7):
        e = ev(s, f"CI-1/K{s}/-")
        db.execute("INSERT INTO events VALUES (?,?,?,?,?,?)",
                   (s, e.event_id, e.key, e.time_ms, e.encode(), int(s in (1, 2, 4))))
        if s in (2, 5):
            db.execute("INSERT INTO latest VALUES (?,?,?,?)", (e.key, s, e.state, e.encode()))
    db.commit()
    db.close()
    j = Journal(path)
    assert [r.event_seq for r in j.pending()] == [3, 5, 6]
    assert [e.event_seq for e in j.latest_states()] == [2, 5]          # the table now points at the events
    j.append([ev(7, "CI-1/K7/-")])
    j.mark_delivered([3])
    assert [r.event_seq for r in j.pending()] == [5, 6, 7] and j.counts()["events"] == 7
    j.close()
    j = Journal(path)
    assert [r.event_seq for r in j.pending()] == [5, 6, 7]             # migrated once, not again
    assert [e.event_seq for e in j.latest_states()] == [2, 5, 7]


def test_duplicate_seq_refused_whole_batch(tmp_path):
    j = Journal(str(tmp_path / "j.db"))
    j.append([ev(1)])
    with pytest.raises(JournalError, match=r"j\.db: append of seqs 2\.\.1 refused"):
        j.append([ev(2, "CI-1/Y/-"), ev(1)])
    assert j.last_seq() == 1 and len(j.read_after(0)) == 1 and [e.key for e in j.latest_states()] == ["CI-1/X/1"]


def test_open_errors_name_the_file(tmp_path):
    with pytest.raises(JournalError, match=r"/no/such/dir/j\.db: cannot open"):
        Journal("/no/such/dir/j.db")
    bad = tmp_path / "garbage.db"
    bad.write_bytes(b"not sqlite" * 1000)
    with pytest.raises(JournalError, match=r"garbage\.db: cannot open the alarm journal: file is not a database"):
        Journal(str(bad))


CHILD = textwrap.dedent(f"""
    import sys
    sys.path.insert(0, {os.path.dirname(__file__)!r})
    from test_alarm_journal import ev, BATCH
    from alarms.journal import Journal
    j = Journal(sys.argv[1])
    seq = j.last_seq()
    while True:
        j.append([ev(seq + i + 1, f"CI-1/X/{{(seq + i) % 97}}") for i in range(BATCH)])
        seq += BATCH
        print(seq, flush=True)
""")


def test_sigkill_mid_append_leaves_whole_batches(tmp_path):
    path = str(tmp_path / "j.db")
    for round_ in range(3):
        p = subprocess.Popen([sys.executable, "-c", CHILD, path], stdout=subprocess.PIPE, text=True)
        acked = 0
        deadline = time.monotonic() + 30
        while acked < (round_ + 1) * 20 * BATCH and time.monotonic() < deadline:
            acked = int(p.stdout.readline())
        time.sleep(0.01 * round_)                  # land the kill at different points of an append
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        j = Journal(path)
        last = j.last_seq()
        assert last >= acked and last % BATCH == 0         # nothing reported durable is lost; no partial batch
        seqs = []
        while True:
            rows = j.read_after(seqs[-1] if seqs else 0, limit=5000)
            if not rows:
                break
            seqs += [r.event_seq for r in rows]
        assert seqs == list(range(1, last + 1))
        for r in j.read_after(last - BATCH, limit=BATCH):
            assert AlarmEvent.decode(r.value).text == f"batch {(last - 1) // BATCH}"
        assert len(j.latest_states()) == min(97, last)
        j.close()
