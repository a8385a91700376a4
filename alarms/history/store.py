"""Alarm history: every journaled alarm event as one row, queryable by time, source and code.

Two stores behind one interface, :class:`HistoryStore`:

* :class:`SqliteHistory` — the embedded default, ``<state_dir>/history.db``.
* :class:`MysqlHistory` — MySQL/MariaDB through a bounded DBUtils ``PooledDB``
  of PyMySQL connections (ping on checkout, returned on any exception,
  rebuilt in a forked child).

The history is a derived copy of the journal (``alarms/journal.py``), written
by the history thread (``alarms/history_writer.py``); the CLI
(``gateway alarms history``) and status read it. Rows are deduplicated by
``event_id`` (a unique key; inserting the same batch twice adds nothing), so a
replay after an outage is harmless. ``max_event_seq(gateway_id)`` is the
writer's watermark: each batch is one transaction of consecutive journal rows,
so every event up to the maximum is present.

Schema: the store creates and migrates it itself. ``schema_version`` holds one
row; ``MIGRATIONS`` is the ordered list of steps, each applied once, in order.
A store built with ``migrate=False`` (the gateway's history writer) contacts
nobody in its constructor and migrates on first use (:meth:`HistoryStore.ensure_schema`,
from the writer thread): a MySQL server that is down when the gateway starts
only delays the history, it never stops the start.

Retention: :meth:`HistoryStore.prune` deletes rows older than a cutoff in
batches (one short transaction each, walking the ``idx_time`` index that
version 1 of both schemas already has, so no migration), always keeping each
gateway's row of the highest ``event_seq``: it is the writer's watermark, and
without it a restarted writer would copy the journal again from further back.
The retention thread (``alarms/retention.py``) calls it with the
``history.retention_days`` cutoff. :meth:`HistoryStore.disk_bytes` reports the
space used (SQLite: the files; MySQL: the table's data and index length, an
InnoDB estimate). Deleted space is reused by later inserts; nothing shrinks
the files.

Threading: a store may be shared by threads. SQLite serialises calls on one
connection with a lock; MySQL gives each call its own pooled connection.
"""
from __future__ import annotations

import json
import os
import sqlite3
import threading
import weakref
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import pymysql
from dbutils.pooled_db import PooledDB

MAX_LIMIT = 100_000
COLUMNS = ("event_seq", "event_id", "gateway_id", "alarm_key", "source", "code", "object", "severity",
           "transition", "state", "operator", "text", "time_ms", "doc")
_MYSQL_TABLE = """CREATE TABLE alarm_history (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  event_seq BIGINT NOT NULL, event_id VARCHAR(64) NOT NULL, gateway_id INT NOT NULL,
  alarm_key VARCHAR(255) NOT NULL, source VARCHAR(128) NOT NULL, code VARCHAR(128) NOT NULL,
  object VARCHAR(128) NOT NULL, severity VARCHAR(16) NOT NULL, transition VARCHAR(32) NOT NULL,
  state VARCHAR(32) NULL, operator VARCHAR(255) NULL, text TEXT NULL, time_ms BIGINT NOT NULL,
  doc LONGTEXT NOT NULL,
  UNIQUE KEY uq_event_id (event_id), KEY idx_time (time_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"""
_SQLITE_TABLE = """CREATE TABLE alarm_history (
  id INTEGER PRIMARY KEY,
  event_seq INTEGER NOT NULL, event_id TEXT NOT NULL UNIQUE, gateway_id INTEGER NOT NULL,
  alarm_key TEXT NOT NULL, source TEXT NOT NULL, code TEXT NOT NULL, object TEXT NOT NULL,
  severity TEXT NOT NULL, transition TEXT NOT NULL, state TEXT, operator TEXT, text TEXT,
  time_ms INTEGER NOT NULL, doc TEXT NOT NULL)"""
# Version 1 is the table; version 2 the indexes for source/code queries and the watermark.
MIGRATIONS: dict[str, list[tuple[int, list[str]]]] = {
    "mysql": [
        (1, [_MYSQL_TABLE]),
        (2, ["ALTER TABLE alarm_history ADD KEY idx_source_time (source, time_ms),"
             " ADD KEY idx_code_time (code, time_ms), ADD KEY idx_gateway_seq (gateway_id, event_seq)"]),
    ],
    "sqlite": [
        (1, [_SQLITE_TABLE, "CREATE INDEX idx_time ON alarm_history (time_ms)"]),
        (2, ["CREATE INDEX idx_source_time ON alarm_history (source, time_ms)",
             "CREATE INDEX idx_code_time ON alarm_history (code, time_ms)",
             "CREATE INDEX idx_gateway_seq ON alarm_history (gateway_id, event_seq)"]),
    ],
}


class HistoryError(Exception):
    """A history store failed; the message names the store (file, or user@host:port/database)."""


class HistoryUnavailable(HistoryError):
    """The store cannot be reached (connection refused or lost): retry later."""


@dataclass(frozen=True, slots=True)
class HistoryRow:
    event_seq: int
    event_id: str
    gateway_id: int
    alarm_key: str
    source: str
    code: str
    object: str
    severity: str
    transition: str
    state: str | None
    operator: str | None
    text: str | None
    time_ms: int
    doc: dict                      # the whole event message (docs/schema/alarm-message.schema.json)


def row_columns(row: Any) -> tuple:
    """A JournalRow (event_seq, event_id, key, time_ms, value: JSON bytes) -> the COLUMNS tuple."""
    try:
        d = json.loads(row.value)
        alarm = d["alarm"]
        return (row.event_seq, row.event_id, int(d["gateway_id"]), row.key, alarm["source"], alarm["code"],
                alarm.get("object") or "-", d["severity"], d["transition"], d.get("state"), d.get("operator"),
                d.get("text"), row.time_ms, row.value.decode("utf-8"))
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise HistoryError(f"journal row event_seq={getattr(row, 'event_seq', '?')}: not an alarm event "
                           f"message ({type(exc).__name__}: {exc})") from None


class HistoryStore(ABC):
    """The interface; SQL shared by both back ends (``_ph`` is the driver's placeholder)."""

    kind: str
    _ph: str
    where: str                     # for error messages: the file or user@host:port/database
    _schema_ready = False          # migrate() has succeeded on this object

    @abstractmethod
    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        """A cursor in one transaction: committed on success, rolled back on any exception."""

    @abstractmethod
    def _insert_rows(self, cur: Any, cols: list[tuple]) -> int:
        """Insert, skipping rows whose event_id is present; return how many were new."""

    def close(self) -> None:
        """Release connections. Any thread, once, after the last call."""

    def migrate(self, target: int | None = None) -> int:
        """Bring the schema to ``target`` (default: the newest); return the version reached.

        A failed step raises the store's error (HistoryError or HistoryUnavailable) naming the step:
        its version, the schema version the store is at, and the statement."""
        step: tuple[int, int, str] | None = None          # (version, from version, statement) running
        try:
            with self._cursor() as cur:
                cur.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
                self._schema_lock(cur, True)
                try:
                    cur.execute("SELECT version FROM schema_version")
                    got = cur.fetchone()
                    current = got[0] if got else 0
                    if got is None:
                        cur.execute("INSERT INTO schema_version (version) VALUES (0)")
                    for version, statements in MIGRATIONS[self.kind]:
                        if current < version <= (target or version):
                            # MySQL commits each DDL statement implicitly: a crash between a step and its
                            # version update leaves the step to be repaired by hand (the error names it).
                            for sql in statements:
                                step = (version, current, sql)
                                cur.execute(sql)
                            step = None
                            cur.execute(f"UPDATE schema_version SET version = {self._ph}", (version,))
                            current = version
                finally:
                    self._schema_lock(cur, False)
            self._schema_ready = current == MIGRATIONS[self.kind][-1][0]
        except HistoryError as exc:
            if step is None:
                raise
            version, at, sql = step
            raise type(exc)(f"{exc} (schema migration {at} -> {version} failed at: {' '.join(sql.split())[:120]};"
                            f" the schema_version table still says {at})") from exc
        return current

    def ensure_schema(self) -> None:
        """Migrate unless this object already did: the first use of a store built with
        ``migrate=False``. Raises like :meth:`migrate` (HistoryUnavailable while the server is down)."""
        if not self._schema_ready:
            self.migrate()

    def _schema_lock(self, cur: Any, take: bool) -> None:
        """Serialise concurrent migrations (several gateways starting at once); SQLite: BEGIN IMMEDIATE."""

    def schema_version(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT version FROM schema_version")
            got = cur.fetchone()
        return got[0] if got else 0

    def insert_batch(self, rows: Sequence[Any]) -> int:
        """Insert journal rows in one transaction; rows already present (same event_id) are skipped.

        Returns the number of new rows. Raises HistoryUnavailable when the store is down (nothing is
        written), HistoryError for a row that is not an alarm event.
        """
        if not rows:
            return 0
        cols = [row_columns(r) for r in rows]
        with self._cursor() as cur:
            return self._insert_rows(cur, cols)

    def max_event_seq(self, gateway_id: int) -> int:
        """The highest event_seq stored for this gateway, 0 when none: the history writer's watermark."""
        with self._cursor() as cur:
            cur.execute(f"SELECT MAX(event_seq) FROM alarm_history WHERE gateway_id = {self._ph}", (gateway_id,))
            got = cur.fetchone()
        return int(got[0] or 0)

    def prune(self, before_ms: int, gateway_id: int | None = None, batch: int = 5000,
              between_batches: Callable[[], bool] | None = None) -> int:
        """Delete rows with ``time_ms < before_ms`` (of one gateway, or all), ``batch`` rows per
        transaction; return how many. Each gateway's row of the highest event_seq stays (the writer's
        watermark, see the module doc). ``between_batches``: called after each full batch, returns
        True to stop there (as ``Journal.prune``). Raises HistoryUnavailable / HistoryError; batches
        already committed stay deleted."""
        if batch < 1:
            raise ValueError(f"history prune: batch must be >= 1, got {batch}")
        deleted = 0
        while True:
            with self._cursor() as cur:
                where, args = [f"time_ms < {self._ph}"], [before_ms]
                if gateway_id is not None:  # "+ 0": no index on it, so idx_time is walked, not idx_gateway_seq
                    where.append(f"gateway_id + 0 = {self._ph}")
                    args.append(gateway_id)
                keep = self._watermark_ids(cur, gateway_id)
                if keep:
                    where.append(f"id NOT IN ({', '.join([self._ph] * len(keep))})")
                    args.extend(keep)
                n = self._delete_oldest(cur, " AND ".join(where), args, batch)
            deleted += n
            if n < batch or (between_batches is not None and between_batches()):
                return deleted

    def _watermark_ids(self, cur: Any, gateway_id: int | None) -> list[int]:
        """Ids of each gateway's rows of its highest event_seq (idx_gateway_seq answers both queries)."""
        ph = self._ph
        if gateway_id is None:
            cur.execute("SELECT gateway_id, MAX(event_seq) FROM alarm_history GROUP BY gateway_id")
        else:
            cur.execute(f"SELECT gateway_id, MAX(event_seq) FROM alarm_history WHERE gateway_id = {ph} "
                        "GROUP BY gateway_id", (gateway_id,))
        ids: list[int] = []
        for gw, seq in cur.fetchall():
            cur.execute(f"SELECT id FROM alarm_history WHERE gateway_id = {ph} AND event_seq = {ph}", (gw, seq))
            ids.extend(int(r[0]) for r in cur.fetchall())
        return ids

    @abstractmethod
    def _delete_oldest(self, cur: Any, where: str, args: list, limit: int) -> int:
        """Delete at most ``limit`` rows matching ``where``, oldest ``time_ms`` first; return how many."""

    @abstractmethod
    def disk_bytes(self) -> int:
        """Bytes the history takes on disk (see the module doc). Any thread; raises like a query."""

    def count(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COUNT(*) FROM alarm_history")
            return int(cur.fetchone()[0])

    def query(self, since_ms: int | None = None, until_ms: int | None = None, source: str | None = None,
              code: str | None = None, limit: int = 1000, newest_first: bool = True) -> list[HistoryRow]:
        """Rows with since_ms <= time_ms < until_ms (each bound optional), of one source and/or code.

        Ordered by (time_ms, event_seq), newest first by default, oldest first with
        ``newest_first=False``; at most ``limit`` rows (1..MAX_LIMIT).
        """
        if not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"history query: limit must be 1..{MAX_LIMIT}, got {limit}")
        where, args = [], []
        for clause, value in (("time_ms >= ", since_ms), ("time_ms < ", until_ms), ("source = ", source),
                              ("code = ", code)):
            if value is not None:
                where.append(clause + self._ph)
                args.append(value)
        order = "DESC" if newest_first else "ASC"
        sql = (f"SELECT {', '.join(COLUMNS)} FROM alarm_history"
               f"{' WHERE ' + ' AND '.join(where) if where else ''}"
               f" ORDER BY time_ms {order}, event_seq {order} LIMIT {int(limit)}")
        with self._cursor() as cur:
            cur.execute(sql, tuple(args))
            fetched = cur.fetchall()
        return [HistoryRow(*r[:-1], doc=json.loads(r[-1])) for r in fetched]


class SqliteHistory(HistoryStore):
    """The embedded store: one SQLite file (WAL), one connection behind a lock, reopened after fork."""

    kind, _ph = "sqlite", "?"

    def __init__(self, path: str, *, migrate: bool = True) -> None:
        """``migrate=False``: open and migrate on first use (:meth:`ensure_schema`)."""
        self.path = self.where = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._pid = os.getpid()
        if migrate:
            self.migrate()

    def _connect(self) -> sqlite3.Connection:
        if self._conn is not None and self._pid == os.getpid():
            return self._conn
        # A forked child must not use the parent's SQLite handle (sqlite.org/howtocorrupt.html 2.6):
        # it drops the reference without closing and opens its own.
        self._conn, self._pid = None, os.getpid()
        try:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is safe in WAL mode (no corruption) and the journal can refill a lost tail.
            conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise HistoryUnavailable(f"sqlite history {self.path}: cannot open: {exc}") from None
        self._conn = conn
        return conn

    @contextmanager
    def _cursor(self) -> Iterator[sqlite3.Cursor]:
        with self._lock:
            conn = self._connect()
            cur = conn.cursor()
            try:
                cur.execute("BEGIN IMMEDIATE")
                yield cur
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise HistoryError(f"sqlite history {self.path}: {exc}") from exc
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            finally:
                cur.close()

    def _insert_rows(self, cur: sqlite3.Cursor, cols: list[tuple]) -> int:
        # executemany reuses one prepared statement inside the single transaction: SQLite's fast path
        # (a multi-row VALUES list would be bounded by SQLITE_MAX_VARIABLE_NUMBER and is no faster).
        before = cur.connection.total_changes
        cur.executemany(f"INSERT INTO alarm_history ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
                        " ON CONFLICT(event_id) DO NOTHING", cols)
        return cur.connection.total_changes - before

    def _delete_oldest(self, cur: sqlite3.Cursor, where: str, args: list, limit: int) -> int:
        # SQLite has no DELETE ... LIMIT (unless built with it): pick the ids through idx_time first
        cur.execute(f"DELETE FROM alarm_history WHERE id IN (SELECT id FROM alarm_history WHERE {where} "
                    f"ORDER BY time_ms LIMIT {int(limit)})", tuple(args))
        return cur.rowcount

    def disk_bytes(self) -> int:
        total = 0
        for path in (self.path, self.path + "-wal", self.path + "-shm"):
            try:
                total += os.stat(path).st_size
            except FileNotFoundError:
                pass
        return total

    def close(self) -> None:
        with self._lock:
            if self._conn is not None and self._pid == os.getpid():
                self._conn.close()
            self._conn = None


class MysqlHistory(HistoryStore):
    """MySQL/MariaDB through a bounded PooledDB (``pool_size`` connections, callers wait for one).

    Each call checks a connection out (pinged, reconnected if the server dropped it), runs one
    transaction and returns it to the pool on success and on any exception (rolled back first).
    Fork safety, as redis-py's ``_checkpid``: the pool remembers its pid; in a forked child the
    inherited sockets are closed without COM_QUIT (the parent's sessions stay alive) and a new pool
    is built on first use.
    """

    kind, _ph = "mysql", "%s"

    def __init__(self, host: str = "127.0.0.1", port: int = 3306, user: str = "root", password: str = "",
                 database: str = "railgate", pool_size: int = 4, connect_timeout_s: float = 5.0,
                 io_timeout_s: float = 30.0, create_database: bool = False, migrate: bool = True) -> None:
        """``migrate=False``: no connection here; the schema is checked on first use
        (:meth:`ensure_schema`), so a server that is down does not fail the constructor."""
        if not 1 <= pool_size <= 256:
            raise ValueError(f"mysql history: pool_size must be 1..256, got {pool_size}")
        self.where = f"{user}@{host}:{port}/{database}"
        self.pool_size = pool_size
        self._kwargs = dict(host=host, port=port, user=user, password=password, charset="utf8mb4",
                            connect_timeout=connect_timeout_s, read_timeout=io_timeout_s,
                            write_timeout=io_timeout_s)
        self._database = database
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._pool: PooledDB | None = None
        self._raw: weakref.WeakSet = weakref.WeakSet()   # every PyMySQL connection this process made
        ref = weakref.ref(self)
        os.register_at_fork(after_in_child=lambda: (s := ref()) is not None and s._forget_parent())
        if create_database:
            self._create_database()
        if migrate:
            self.migrate()

    def _create_database(self) -> None:
        try:
            conn = pymysql.connect(**self._kwargs)
        except pymysql.err.Error as exc:
            raise HistoryUnavailable(f"mysql history {self.where}: cannot connect: {exc}") from None
        try:
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE IF NOT EXISTS `{self._database}` CHARACTER SET utf8mb4")
        finally:
            conn.close()

    def _connect_raw(self) -> pymysql.Connection:
        conn = pymysql.connect(database=self._database, **self._kwargs)
        self._raw.add(conn)
        return conn

    def _forget_parent(self) -> None:
        """In a forked child: drop the parent's connections without telling the server."""
        for conn in list(self._raw):
            conn._force_close()       # socket close only: the parent's session is untouched
        self._raw = weakref.WeakSet()
        if self._pool is not None:
            self._pool._lock = threading.Condition()   # may have been held by a parent thread at fork
        self._pool, self._pid, self._lock = None, os.getpid(), threading.Lock()

    def _get_pool(self) -> PooledDB:
        if self._pid != os.getpid():   # fork without the at-fork hook (e.g. a C extension's fork)
            self._forget_parent()
        pool = self._pool
        if pool is None:
            with self._lock:
                if self._pool is None:
                    self._pool = PooledDB(self._connect_raw, mincached=0, maxcached=self.pool_size,
                                          maxconnections=self.pool_size, blocking=True, ping=1, reset=True,
                                          failures=(pymysql.err.OperationalError, pymysql.err.InterfaceError,
                                                    pymysql.err.InternalError))
                pool = self._pool
        return pool

    @contextmanager
    def _cursor(self) -> Iterator[Any]:
        try:
            conn = self._get_pool().connection(shareable=False)
        except pymysql.err.Error as exc:
            raise HistoryUnavailable(f"mysql history {self.where}: cannot connect: {exc}") from None
        try:
            raw = conn.dbapi_connection
            if not raw.open:
                # DBUtils' ping-and-reconnect swallows a failed reconnect and hands out the dead
                # connection (the next query says only "(0, '')"): reconnect here to report why.
                try:
                    raw.connect()
                except pymysql.err.Error as exc:
                    raise HistoryUnavailable(f"mysql history {self.where}: cannot connect: {exc}") from None
            cur = conn.cursor()
            try:
                yield cur
            finally:
                cur.close()
            conn.commit()
        except BaseException as exc:
            try:
                conn.rollback()
            except Exception:          # noqa: BLE001 - broken connection: the next checkout's ping replaces it
                pass
            if isinstance(exc, (pymysql.err.OperationalError, pymysql.err.InterfaceError)):
                raise HistoryUnavailable(f"mysql history {self.where}: {exc}") from exc
            if isinstance(exc, pymysql.err.Error):
                raise HistoryError(f"mysql history {self.where}: {exc}") from exc
            raise
        finally:
            conn.close()               # back to the pool (PooledDB rolls back anything left open)

    def _schema_lock(self, cur: Any, take: bool) -> None:
        # a named lock belongs to the session, which goes back to the pool: release it explicitly
        cur.execute("SELECT GET_LOCK('railgate_history_schema', 30)" if take
                    else "SELECT RELEASE_LOCK('railgate_history_schema')")

    def _insert_rows(self, cur: Any, cols: list[tuple]) -> int:
        # PyMySQL's executemany rewrites this into multi-row INSERT statements of up to 1 MB each.
        # ON DUPLICATE KEY UPDATE (a no-op) rather than INSERT IGNORE: only a repeated event_id is
        # skipped; a value the column cannot hold stays an error instead of a truncation warning.
        return cur.executemany(
            f"INSERT INTO alarm_history ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})"
            " ON DUPLICATE KEY UPDATE event_id = event_id", cols) or 0

    def _delete_oldest(self, cur: Any, where: str, args: list, limit: int) -> int:
        return cur.execute(f"DELETE FROM alarm_history WHERE {where} ORDER BY time_ms LIMIT {int(limit)}",
                           tuple(args))

    def disk_bytes(self) -> int:
        with self._cursor() as cur:
            cur.execute("SELECT COALESCE(SUM(data_length + index_length), 0) FROM information_schema.tables "
                        "WHERE table_schema = DATABASE() AND table_name = 'alarm_history'")
            return int(cur.fetchone()[0])

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pid == os.getpid():
                self._pool.close()
            self._pool = None


def open_history(settings: Any, state_dir: str, *, migrate: bool = True) -> HistoryStore:
    """The store a validated ``history:`` setting names (``alarms.settings.HistorySettings``:
    ``kind`` sqlite -> ``<state_dir>/history.db``, or mysql with its ``mysql`` settings).

    ``migrate=False``: nothing is contacted yet (the history writer migrates on first use, see
    :meth:`HistoryStore.ensure_schema`); with True an unreachable server raises HistoryUnavailable."""
    if settings.kind == "sqlite":
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        return SqliteHistory(os.path.join(state_dir, "history.db"), migrate=migrate)
    m = settings.mysql
    return MysqlHistory(host=m.host, port=m.port, user=m.user, password=m.password, database=m.database,
                        pool_size=m.pool_size, migrate=migrate)
