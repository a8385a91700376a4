"""A journal relayed to Kafka: its SQLite connection (WAL, one write transaction per batch) and its
delivery watermark (which rows the broker has acknowledged).

Shared by the alarm journal (``alarms/journal.py``) and the command audit journal
(``gateway/commands/audit.py``), whose SQLite files both hold::

    events(<seq> PK, ...)   delivery(through_seq)   delivered_ahead(<seq> PK)

Delivery is a watermark, not a flag per row (rewriting a row's page to flag it
cost more than the insert): every seq up to ``through_seq`` is delivered, and
the few delivered before a lower one wait in ``delivered_ahead`` until the hole
below them is filled.

Threading: runs inside the caller's write transaction, on the caller's connection.
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager


def open_wal(path: str, what: str, error: type[Exception], *, busy_timeout_ms: int = 10_000,
             fsync_commits: bool = True) -> sqlite3.Connection:
    """A connection on ``path`` in WAL mode, ``synchronous=FULL`` (``NORMAL`` without ``fsync_commits``);
    ``isolation_level=None``: the caller's :func:`write_transaction` issues BEGIN/COMMIT. Failures raise
    ``error`` naming the file and ``what`` it is (e.g. "the alarm journal")."""
    try:
        db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_ms / 1000)
    except sqlite3.Error as exc:
        raise error(f"{path}: cannot open {what}: {exc}") from None
    try:
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise error(f"{path}: cannot put {what} in WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={'FULL' if fsync_commits else 'NORMAL'}")
    except sqlite3.Error as exc:
        db.close()
        raise error(f"{path}: cannot open {what}: {exc}") from None
    except BaseException:
        db.close()
        raise
    return db


@contextmanager
def write_transaction(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction (BEGIN IMMEDIATE: the write lock first); COMMIT on leaving, ROLLBACK on error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        db.execute("ROLLBACK")
        raise
    db.execute("COMMIT")


def undelivered_where(seq: str) -> str:
    """The SQL condition of an undelivered row of ``events`` (its seq column named ``seq``)."""
    return (f"{seq} > (SELECT through_seq FROM delivery) "
            f"AND {seq} NOT IN (SELECT {seq} FROM delivered_ahead)")


def mark_delivered(db: sqlite3.Connection, new: set[int], seq: str) -> None:
    """Record ``new`` seqs delivered, in the open write transaction on ``db``; seqs not journaled or
    already delivered are ignored. The watermark moves over every seq delivered without a hole below it."""
    through = db.execute("SELECT through_seq FROM delivery").fetchone()[0]
    last = db.execute(f"SELECT COALESCE(MAX({seq}), 0) FROM events").fetchone()[0]
    new = {s for s in new if through < s <= last}
    if not new:
        return
    done = new.union(r[0] for r in db.execute(f"SELECT {seq} FROM delivered_ahead"))
    moved = through
    while moved + 1 in done:
        moved += 1
    if moved != through:
        db.execute("UPDATE delivery SET through_seq = ?", (moved,))
        db.execute(f"DELETE FROM delivered_ahead WHERE {seq} <= ?", (moved,))
    db.executemany(f"INSERT OR IGNORE INTO delivered_ahead({seq}) VALUES (?)", [(s,) for s in new if s > moved])
