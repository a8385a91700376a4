"""The alarm journal: every AlarmEvent, durable before anyone else sees it.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Journal.append` writes a
whole batch in one transaction, so one fsync covers every event the alarm
thread produced from one drained queue (group commit), and after a crash a
batch is either all there or not there at all.

Tables::

    events(event_seq PK, event_id, key, time_ms, value BLOB)
    latest(key PK, event_seq) WITHOUT ROWID        -- only keys whose last state is not NORMAL
    delivery(through_seq)                          -- every event_seq <= through_seq is on Kafka
    delivered_ahead(event_seq PK)                  -- delivered out of order, above through_seq

``events`` feeds the Kafka relay (``pending`` / ``mark_delivered``) and the
history writer (``read_after`` from its own watermark); ``latest`` is what the
engine restores from at start (``latest_states``). Info events never enter
``latest`` (they never enter the alarm table).

Delivery is a watermark, not a flag on each row: marking a row delivered
would rewrite its page (the whole ~0.5 KB event) a second time, and an index
on the flag cost more than the insert itself (bench/alarm_bench.py). Delivery
reports arrive mostly in order, so ``delivered_ahead`` holds only the few
seqs delivered before a lower one. ``event_id`` is not indexed: the engine
makes it from ``uuid4`` and the history store, which needs it as a key,
indexes it there. ``latest`` points at the key's last event instead of
holding a second copy of it: half the bytes per alarm, and one B-tree (no
rowid) for the upsert that runs for every alarm. A journal written by an
older version (a ``delivered`` column and its partial index; a ``latest``
with a copy of the value) is migrated once when opened.

Retention: :meth:`Journal.prune` deletes old events, run hourly by the
retention thread (``alarms/retention.py``), never by the alarm thread. It
keeps every row still needed: the rows ``latest`` points at (engine restore,
live-table snapshot), undelivered rows (the relay), rows above the history
writers' lowest watermark (``keep_after_seq``) and always the newest row, so
``last_seq()``, from which the engine numbers on, survives any prune (no
separate high-water table: one row is cheaper than a second write per
append). ``delivered_ahead`` rows of pruned seqs stay: each waits for the
undelivered hole below it (kept), and the watermark can only move over it
while it is there; ``mark_delivered`` removes it then. Deleted pages are
reused by later appends; the file does not shrink (no VACUUM), so
:meth:`Journal.disk_bytes` levels off at the retention's working set.

Checkpoints: SQLite copies the WAL back into the database file when a
commit finds the WAL over ``wal_autocheckpoint`` pages, in the connection that
committed. The alarm thread opens its journal as the writer
(``writer=True``): its threshold is high (:data:`WRITER_CHECKPOINT_PAGES`,
a fallback for a gateway whose relay is down), so the checkpoint work, up to
25 ms at a time, runs in the relay's connection (its commits of delivery
marks, default threshold), not in the path of an alarm. Measured: 8.5 -> 6.4
µs per event appended in batches of 1,000.

The relay opens its journal with ``fsync_commits=False`` (``synchronous=NORMAL``,
still atomic): a delivery mark lost in a power cut only sends that event again,
and consumers drop repeats by ``event_id``. Its commits then hold the write
lock for microseconds instead of an fsync, which the alarm thread would wait
for (SQLite's busy handler sleeps 1, 2, 5 ms...).

Threading: one ``Journal`` object per thread, each with its own connection on
the same file; WAL lets readers run beside the one writer. A busy writer is
waited for up to ``busy_timeout_ms``. Not safe to share one object between
threads that use it at the same time.
"""
from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from alarms.kafka.delivery import mark_delivered, open_wal, undelivered_where, write_transaction
from alarms.model import AlarmEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_seq INTEGER PRIMARY KEY,
    event_id  TEXT NOT NULL,
    key       TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    value     BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS latest (
    key       TEXT PRIMARY KEY,
    event_seq INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS delivery (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO delivery(id, through_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS delivered_ahead (
    event_seq INTEGER PRIMARY KEY
);
"""
#: undelivered rows: above the watermark and not delivered ahead of it
_UNDELIVERED = undelivered_where("event_seq")


#: rows prune may delete (the caller adds the time and seq bounds): delivered, not an alarm's last event
_PRUNABLE = ("(event_seq <= (SELECT through_seq FROM delivery) "
             "OR event_seq IN (SELECT event_seq FROM delivered_ahead)) "
             "AND event_seq NOT IN (SELECT event_seq FROM latest)")


#: the alarm thread's wal_autocheckpoint (4 KiB pages: 64 MiB of WAL before it checkpoints itself)
WRITER_CHECKPOINT_PAGES = 16_384


class JournalError(RuntimeError):
    """The journal file could not be opened or written; the message names the file."""


class JournalRow(NamedTuple):
    """One journaled event as readers get it (a tuple: the relay builds one per event)."""

    event_seq: int
    event_id: str
    key: str
    time_ms: int
    value: bytes


class Journal:
    """One connection on the journal file (see the module doc for the thread rule)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000, writer: bool = False,
                 fsync_commits: bool = True) -> None:
        self.path = str(path)
        self._db = open_wal(self.path, "the alarm journal", JournalError, busy_timeout_ms=busy_timeout_ms,
                            fsync_commits=fsync_commits)
        try:
            if writer:
                self._db.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
            self._db.executescript(_SCHEMA)
            self._migrate_delivered_flag()
            self._migrate_latest_copy()
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{self.path}: cannot open the alarm journal: {exc}") from None

    def append(self, events: Sequence[AlarmEvent]) -> None:
        """Write ``events`` in one transaction; durable (fsynced) when it returns. Nothing on error."""
        if not events:
            return
        rows = [(e.event_seq, e.event_id, str(e.alarm), e.time_ms, e.encode()) for e in events]
        last: dict[str, AlarmEvent] = {}
        for e, row in zip(events, rows):
            if e.transition != "info":
                last[row[2]] = e
        upserts = [(k, e.event_seq) for k, e in last.items() if e.state != "NORMAL"]
        normal = [(k,) for k, e in last.items() if e.state == "NORMAL"]
        try:
            self._transaction(
                ("INSERT INTO events(event_seq, event_id, key, time_ms, value) VALUES (?,?,?,?,?)", rows),
                ("INSERT OR REPLACE INTO latest(key, event_seq) VALUES (?,?)", upserts),
                ("DELETE FROM latest WHERE key = ?", normal))
        except sqlite3.IntegrityError as exc:
            raise JournalError(f"{self.path}: append of seqs {rows[0][0]}..{rows[-1][0]} refused: {exc} "
                               "(event_seq already journaled)") from None
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: append of {len(rows)} events failed: {exc}") from None

    def last_seq(self) -> int:
        """The highest journaled ``event_seq``; 0 when empty."""
        return self._one("SELECT COALESCE(MAX(event_seq), 0) FROM events")[0]

    def latest_states(self) -> list[AlarmEvent]:
        """The last event of every key whose state is not NORMAL, in seq order (for engine restore)."""
        return [AlarmEvent.decode(v) for v in self.latest_values()]

    def latest_values(self) -> list[bytes]:
        """:meth:`latest_states` as the journaled bytes (each event's message, as written), not decoded: the
        snapshots read these every few seconds, and validating 2,500 events took 90 ms of the relay thread."""
        rows = self._all("SELECT e.value FROM latest l JOIN events e ON e.event_seq = l.event_seq "
                         "ORDER BY l.event_seq")
        return [bytes(r[0]) for r in rows]

    def recent(self, since_ms: int, limit: int = 200_000, slack_ms: int = 60_000) -> list[AlarmEvent]:
        """The events with ``time_ms >= since_ms``, seq order (the engine's chattering history at start).

        ``time_ms`` is not indexed: the rows are read newest first by seq and
        the walk stops at the first one older than ``since_ms - slack_ms`` (a
        wall clock stepped back by up to the slack does not cut it short), or
        after ``limit`` rows."""
        out: list[AlarmEvent] = []
        try:
            cur = self._db.execute("SELECT time_ms, value FROM events ORDER BY event_seq DESC LIMIT ?", (limit,))
            for time_ms, value in cur:
                if time_ms < since_ms - slack_ms:
                    break
                if time_ms >= since_ms:
                    out.append(AlarmEvent.decode(value))
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: read failed: {exc}") from None
        out.reverse()
        return out

    def pending(self, limit: int = 1000, after: int = 0) -> list[JournalRow]:
        """Events not yet marked delivered to Kafka, oldest first (only seqs above ``after``)."""
        return self._rows(f"WHERE event_seq > ? AND {_UNDELIVERED} ORDER BY event_seq LIMIT ?", (after, limit))

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """Mark events delivered (one transaction); unknown and already delivered seqs are ignored
        (``alarms/kafka/delivery.py``: the watermark and the few delivered ahead of it)."""
        new = {int(s) for s in seqs}
        if not new:
            return
        try:
            with self._write() as db:
                mark_delivered(db, new, "event_seq")
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: mark_delivered of {len(new)} events failed: {exc}") from None

    def undelivered(self) -> int:
        """How many journaled events are not yet marked delivered."""
        return self._one(f"SELECT COUNT(*) FROM events WHERE {_UNDELIVERED}")[0]

    def read_after(self, seq: int, limit: int = 1000) -> list[JournalRow]:
        """Events with ``event_seq > seq``, oldest first (the history writer's catch-up)."""
        return self._rows("WHERE event_seq > ? ORDER BY event_seq LIMIT ?", (seq, limit))

    def counts(self) -> dict:
        """``{"events": n, "undelivered": n, "not_normal": n}`` for status."""
        return {"events": self._one("SELECT COUNT(*) FROM events")[0], "undelivered": self.undelivered(),
                "not_normal": self._one("SELECT COUNT(*) FROM latest")[0]}

    def prune(self, before_ms: int, keep_after_seq: int | None = None, batch: int = 5000,
              between_batches: Callable[[], bool] | None = None) -> int:
        """Delete events with ``time_ms < before_ms`` that nothing needs any more; return how many.

        Kept whatever their age: the rows ``latest`` points at, undelivered rows, rows with
        ``event_seq > keep_after_seq`` (not yet in every history sink; None: no such bound) and the
        newest row (``last_seq()`` is unchanged). Each round looks for the next ``batch`` rows to
        delete in a read (no lock: WAL readers do not block the writer), then deletes that seq range,
        the conditions checked again, in one short write transaction. ``between_batches`` is called
        after each committed batch that may have more behind it; it should sleep a little (so the
        alarm thread's append, waiting on the busy lock, gets in) and return True to stop there.
        Each condition can only turn from "keep" to "may go" while the journal is in use (latest
        moves to new rows, delivery only advances), so a row found deletable stays so. A prune lost
        in a power cut only runs again. Raises JournalError (earlier batches stay deleted).
        """
        if batch < 1:
            raise ValueError(f"{self.path}: prune batch must be >= 1, got {batch}")
        newest = self.last_seq()
        hi = newest - 1 if keep_after_seq is None else min(newest - 1, keep_after_seq)
        find = (f"SELECT event_seq FROM events WHERE event_seq > ? AND event_seq <= ? AND time_ms < ? "
                f"AND {_PRUNABLE} ORDER BY event_seq LIMIT ?")
        delete = f"DELETE FROM events WHERE event_seq > ? AND event_seq <= ? AND time_ms < ? AND {_PRUNABLE}"
        deleted, cursor = 0, 0
        while cursor < hi:
            found = self._all(find, (cursor, hi, before_ms, batch))
            if not found:
                break
            end = found[-1][0]
            try:
                with self._write() as db:
                    deleted += db.execute(delete, (cursor, end, before_ms)).rowcount
            except sqlite3.Error as exc:
                raise JournalError(f"{self.path}: prune of seqs {cursor + 1}..{end} failed: {exc} "
                                   f"({deleted} rows deleted before)") from None
            cursor = end
            if len(found) < batch:
                break
            if between_batches is not None and between_batches():
                break
        return deleted

    def disk_bytes(self) -> int:
        """Bytes on disk: the database file, its -wal and -shm (a missing file counts 0). Any thread."""
        return disk_bytes(self.path)

    def close(self) -> None:
        self._db.close()

    def _migrate_delivered_flag(self) -> None:
        """A journal of the first schema kept a ``delivered`` flag on each row: turn it into the watermark.

        Checked again under the write lock: two connections may open an old file at once."""
        def old(db: sqlite3.Connection) -> bool:
            return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_undelivered'"
                              ).fetchone() is not None
        if not old(self._db):
            return
        with self._write() as db:
            if not old(db):
                return
            first_open = db.execute("SELECT MIN(event_seq) FROM events WHERE delivered = 0").fetchone()[0]
            through = (first_open - 1 if first_open is not None
                       else db.execute("SELECT COALESCE(MAX(event_seq), 0) FROM events").fetchone()[0])
            db.execute("UPDATE delivery SET through_seq = ?", (through,))
            db.execute("INSERT OR IGNORE INTO delivered_ahead(event_seq) "
                       "SELECT event_seq FROM events WHERE delivered = 1 AND event_seq > ?", (through,))
            db.execute("DROP INDEX events_undelivered")

    def _migrate_latest_copy(self) -> None:
        """``latest`` of the first schema held a copy of each event: keep only the pointer (checked again
        under the write lock, as above)."""
        def old(db: sqlite3.Connection) -> bool:
            return "value" in {r[1] for r in db.execute("PRAGMA table_info(latest)")}
        if not old(self._db):
            return
        with self._write() as db:
            if not old(db):
                return
            db.execute("CREATE TABLE latest_pointers (key TEXT PRIMARY KEY, event_seq INTEGER NOT NULL) "
                       "WITHOUT ROWID")
            db.execute("INSERT INTO latest_pointers SELECT key, event_seq FROM latest")
            db.execute("DROP TABLE latest")
            db.execute("ALTER TABLE latest_pointers RENAME TO latest")

    def _write(self):
        """One write transaction on this connection (``alarms/kafka/delivery.write_transaction``)."""
        return write_transaction(self._db)

    def _transaction(self, *statements: tuple[str, list]) -> None:
        """Run ``executemany`` statements in one write transaction (one fsync at COMMIT); all or nothing."""
        with self._write() as db:
            for sql, params in statements:
                db.executemany(sql, params)

    def _rows(self, where: str, params: tuple) -> list[JournalRow]:
        sql = "SELECT event_seq, event_id, key, time_ms, value FROM events " + where
        return list(map(JournalRow._make, self._all(sql, params)))   # sqlite3 gives BLOBs as bytes

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: read failed: {exc}") from None

    def _one(self, sql: str) -> tuple:
        return self._all(sql)[0]


def disk_bytes(path: str) -> int:
    """Bytes of the journal at ``path``: the file, its -wal and -shm; 0 for each that is missing.
    Opens nothing (the retention thread's status reads it from any thread)."""
    total = 0
    for name in (path, path + "-wal", path + "-shm"):
        try:
            total += os.stat(name).st_size
        except FileNotFoundError:
            pass
    return total
