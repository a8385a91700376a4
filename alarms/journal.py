"""The alarm journal: every AlarmEvent, durable before anyone else sees it.

SQLite in WAL mode with ``synchronous=FULL``: :meth:`Journal.append` writes a
whole batch in one transaction, so one fsync covers every event the alarm
thread produced from one drained queue (group commit), and after a crash a
batch is either all there or not there at all.

Tables::

    events(event_seq PK, event_id UNIQUE, key, time_ms, value BLOB, delivered 0/1)
    latest(key PK, event_seq, state, value BLOB)   -- only keys whose last state is not NORMAL

``events`` feeds the Kafka relay (``pending`` / ``mark_delivered``) and the
history writer (``read_after`` from its own watermark); ``latest`` is what the
engine restores from at start (``latest_states``). Info events never enter
``latest`` (they never enter the alarm table).

Threading: one ``Journal`` object per thread, each with its own connection on
the same file; WAL lets readers run beside the one writer. A busy writer is
waited for up to ``busy_timeout_ms``. Not safe to share one object between
threads that use it at the same time.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .model import AlarmEvent

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    event_seq INTEGER PRIMARY KEY,
    event_id  TEXT NOT NULL UNIQUE,
    key       TEXT NOT NULL,
    time_ms   INTEGER NOT NULL,
    value     BLOB NOT NULL,
    delivered INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_undelivered ON events(event_seq) WHERE delivered = 0;
CREATE TABLE IF NOT EXISTS latest (
    key       TEXT PRIMARY KEY,
    event_seq INTEGER NOT NULL,
    state     TEXT NOT NULL,
    value     BLOB NOT NULL
);
"""


class JournalError(RuntimeError):
    """The journal file could not be opened or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class JournalRow:
    event_seq: int
    event_id: str
    key: str
    time_ms: int
    value: bytes


class Journal:
    """One connection on the journal file (see the module doc for the thread rule)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000) -> None:
        self.path = str(path)
        try:
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, one per append
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=busy_timeout_ms / 1000)
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: cannot open the alarm journal: {exc}") from None
        try:
            mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise JournalError(f"{self.path}: cannot put the alarm journal in WAL mode (got {mode!r})")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise JournalError(f"{self.path}: cannot open the alarm journal: {exc}") from None

    def append(self, events: Sequence[AlarmEvent]) -> None:
        """Write ``events`` in one transaction; durable (fsynced) when it returns. Nothing on error."""
        if not events:
            return
        rows = [(e.event_seq, e.event_id, e.key, e.time_ms, e.encode()) for e in events]
        latest: dict[str, tuple] = {}
        for e, row in zip(events, rows):
            if e.transition != "info":
                latest[e.key] = (e.key, e.event_seq, e.state, row[4])
        upserts = [v for v in latest.values() if v[2] != "NORMAL"]
        normal = [(v[0],) for v in latest.values() if v[2] == "NORMAL"]
        try:
            self._transaction(
                ("INSERT INTO events(event_seq, event_id, key, time_ms, value) VALUES (?,?,?,?,?)", rows),
                ("INSERT INTO latest(key, event_seq, state, value) VALUES (?,?,?,?) ON CONFLICT(key) DO UPDATE "
                 "SET event_seq=excluded.event_seq, state=excluded.state, value=excluded.value", upserts),
                ("DELETE FROM latest WHERE key = ?", normal))
        except sqlite3.IntegrityError as exc:
            raise JournalError(f"{self.path}: append of seqs {rows[0][0]}..{rows[-1][0]} refused: {exc} "
                               "(event_seq or event_id already journaled)") from None
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: append of {len(rows)} events failed: {exc}") from None

    def last_seq(self) -> int:
        """The highest journaled ``event_seq``; 0 when empty."""
        return self._one("SELECT COALESCE(MAX(event_seq), 0) FROM events")[0]

    def latest_states(self) -> list[AlarmEvent]:
        """The last event of every key whose state is not NORMAL, in seq order (for engine restore)."""
        rows = self._all("SELECT value FROM latest ORDER BY event_seq")
        return [AlarmEvent.decode(r[0]) for r in rows]

    def pending(self, limit: int = 1000) -> list[JournalRow]:
        """Events not yet marked delivered to Kafka, oldest first."""
        return self._rows("WHERE delivered = 0 ORDER BY event_seq LIMIT ?", (limit,))

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """Mark events delivered (one transaction); unknown seqs are ignored."""
        params = [(int(s),) for s in seqs]
        if not params:
            return
        try:
            self._transaction(("UPDATE events SET delivered = 1 WHERE event_seq = ?", params))
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: mark_delivered of {len(params)} events failed: {exc}") from None

    def read_after(self, seq: int, limit: int = 1000) -> list[JournalRow]:
        """Events with ``event_seq > seq``, oldest first (the history writer's catch-up)."""
        return self._rows("WHERE event_seq > ? ORDER BY event_seq LIMIT ?", (seq, limit))

    def counts(self) -> dict:
        """``{"events": n, "undelivered": n, "not_normal": n}`` for status."""
        ev, und = self._one("SELECT COUNT(*), COALESCE(SUM(delivered = 0), 0) FROM events")
        return {"events": ev, "undelivered": und, "not_normal": self._one("SELECT COUNT(*) FROM latest")[0]}

    def close(self) -> None:
        self._db.close()

    def _transaction(self, *statements: tuple[str, list]) -> None:
        """Run ``executemany`` statements in one write transaction (one fsync at COMMIT); all or nothing."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            for sql, params in statements:
                db.executemany(sql, params)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _rows(self, where: str, params: tuple) -> list[JournalRow]:
        sql = "SELECT event_seq, event_id, key, time_ms, value FROM events " + where
        return [JournalRow(s, i, k, t, bytes(v)) for s, i, k, t, v in self._all(sql, params)]

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise JournalError(f"{self.path}: read failed: {exc}") from None

    def _one(self, sql: str) -> tuple:
        return self._all(sql)[0]
