"""The command audit trail: every CommandEvent journaled durably, then relayed to a day topic.

:class:`AuditJournal` is SQLite in WAL mode with ``synchronous=FULL``, the alarm
journal's design (``alarms/journal.py``) cut to what commands need::

    events(seq PK, event_id, command_id, key, time_ms, value BLOB)   -- key: "switch/12" (the Kafka key)
    delivery(through_seq)                                            -- every seq <= through_seq is on Kafka
    delivered_ahead(seq PK)                                          -- delivered above the watermark

:meth:`AuditJournal.append` writes a batch (the Audit actions of one engine call)
in one transaction: one fsync, all or nothing. The gateway appends before it
carries out the Send the batch describes, so a COMMAND never leaves without its
row. Delivery is a watermark plus the few seqs delivered out of order, as the
alarm journal's (no second write of each row). ``events_by_command`` indexes
``command_id`` for the history of one command, the last id at start and
:meth:`open_commands`. No retention yet: audit rows are kept.

:class:`AuditRelay` is one thread that publishes undelivered rows to
``<topic_prefix>.commands.<YYYYMMDD>`` (the event's local date in the line's
zone; topics via ``alarms.kafka.topics.TopicManager``, created on demand with the
configured partitions, never auto-created) with an idempotent confluent_kafka
Producer: key the object (``switch/12``: one object's events stay in order on one
partition), value the journal's bytes. A row is marked delivered only on its
delivery report; a failed or undelivered row is sent again by the next rescan
(at least once: consumers drop repeats by ``event_id``). Unlike the alarm relay
it does not republish a day the (memory-only) embedded broker lost: the journal
keeps the rows, and only the rows not yet delivered go to the recreated topic (a
failed delivery makes the relay ask for its topic again before the resend).

Threading: one ``AuditJournal`` per thread, each with its own connection (the
writer: the gateway's command thread; the relay opens its own). ``AuditRelay``:
``start`` / ``stop`` from the owner thread; ``wake``, ``stats``, ``alive`` from any
thread; the rest runs in the relay thread.
"""
from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from functools import partial
from typing import NamedTuple
from zoneinfo import ZoneInfo

from confluent_kafka import Producer

from alarms.kafka.relay_thread import RelayThread
from alarms.kafka.delivery import mark_delivered, open_wal, undelivered_where, write_transaction
from alarms.kafka.topics import RDKAFKA_LOGGER, TopicError, TopicManager, topic_for
from gateway.commands.model import TERMINAL, CommandEvent

log = logging.getLogger("gateway.commands.audit")

#: the journal's file name in the gateway's state dir
JOURNAL_FILE = "commands.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq        INTEGER PRIMARY KEY,
    event_id   TEXT NOT NULL,
    command_id INTEGER NOT NULL,
    key        TEXT NOT NULL,
    time_ms    INTEGER NOT NULL,
    value      BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_command ON events(command_id, seq);
CREATE TABLE IF NOT EXISTS delivery (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    through_seq INTEGER NOT NULL
);
INSERT OR IGNORE INTO delivery(id, through_seq) VALUES (1, 0);
CREATE TABLE IF NOT EXISTS delivered_ahead (
    seq INTEGER PRIMARY KEY
);
"""
_UNDELIVERED = undelivered_where("seq")
#: librdkafka settings of the relay's producer (``producer_config`` may override any)
PRODUCER_DEFAULTS = {"enable.idempotence": True, "acks": "all", "linger.ms": 1, "message.timeout.ms": 30_000,
                     "allow.auto.create.topics": False, "reconnect.backoff.max.ms": 1000,
                     "partitioner": "murmur2_random"}


class AuditError(RuntimeError):
    """The audit journal could not be opened or written; the message names the file."""


class AuditRow(NamedTuple):
    seq: int
    event_id: str
    command_id: int
    key: str
    time_ms: int
    value: bytes


class AuditJournal:
    """One connection on the audit journal file (see the module doc for the thread rule)."""

    def __init__(self, path: str, *, busy_timeout_ms: int = 10_000, fsync_commits: bool = True) -> None:
        self.path = str(path)
        self._db = open_wal(self.path, "the command audit journal", AuditError, busy_timeout_ms=busy_timeout_ms,
                            fsync_commits=fsync_commits)
        try:
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            self._db.close()
            raise AuditError(f"{self.path}: cannot open the command audit journal: {exc}") from None

    def append(self, events: Sequence[CommandEvent]) -> None:
        """Write ``events`` in one transaction; durable (fsynced) when it returns; nothing on error."""
        if not events:
            return
        rows = [(e.seq, e.event_id, e.command_id, e.object_key, e.time_ms, e.encode()) for e in events]
        try:
            with self._write() as db:
                db.executemany("INSERT INTO events(seq, event_id, command_id, key, time_ms, value) "
                               "VALUES (?,?,?,?,?,?)", rows)
        except sqlite3.IntegrityError as exc:
            raise AuditError(f"{self.path}: append of seqs {rows[0][0]}..{rows[-1][0]} refused: {exc} "
                             "(seq already journaled)") from None
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: append of {len(rows)} events failed: {exc}") from None

    def last_seq(self) -> int:
        """The highest journaled seq; 0 when empty (the engine's ``last_seq``)."""
        return self._all("SELECT COALESCE(MAX(seq), 0) FROM events")[0][0]

    def last_command_id(self) -> int:
        """The highest command id journaled; 0 when empty (the engine's ``last_command_id``)."""
        return self._all("SELECT COALESCE(MAX(command_id), 0) FROM events")[0][0]

    def events_of(self, command_id: int) -> list[CommandEvent]:
        """Every event of one command, in order."""
        return [CommandEvent.decode(r[0]) for r in
                self._all("SELECT value FROM events WHERE command_id = ? ORDER BY seq", (command_id,))]

    def open_commands(self) -> list[CommandEvent]:
        """The last event of each command whose last state is not terminal (for ``CommandEngine.abandon``)."""
        rows = self._all("SELECT e.value FROM events e JOIN (SELECT MAX(seq) AS seq FROM events "
                         "GROUP BY command_id) last ON e.seq = last.seq ORDER BY e.seq")
        return [ev for ev in map(CommandEvent.decode, (r[0] for r in rows)) if ev.state not in TERMINAL]

    def pending(self, limit: int = 1000, after: int = 0) -> list[AuditRow]:
        """Rows not yet marked delivered, oldest first (only seqs above ``after``)."""
        return self._rows(f"WHERE seq > ? AND {_UNDELIVERED} ORDER BY seq LIMIT ?", (after, limit))

    def read_after(self, seq: int, limit: int = 1000) -> list[AuditRow]:
        return self._rows("WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit))

    def mark_delivered(self, seqs: Iterable[int]) -> None:
        """Mark rows delivered in one transaction; unknown and already delivered seqs are ignored."""
        new = {int(s) for s in seqs}
        if not new:
            return
        try:
            with self._write() as db:
                mark_delivered(db, new, "seq")
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: mark_delivered of {len(new)} rows failed: {exc}") from None

    def delivered_through(self) -> int:
        """The watermark: every seq up to it is delivered."""
        return self._all("SELECT through_seq FROM delivery")[0][0]

    def undelivered(self) -> int:
        return self._all(f"SELECT COUNT(*) FROM events WHERE {_UNDELIVERED}")[0][0]

    def counts(self) -> dict:
        """``{"events": n, "undelivered": n}`` for status."""
        return {"events": self._all("SELECT COUNT(*) FROM events")[0][0], "undelivered": self.undelivered()}

    def close(self) -> None:
        self._db.close()

    def _write(self):
        """One write transaction on this connection (``alarms/kafka/delivery.write_transaction``)."""
        return write_transaction(self._db)

    def _rows(self, where: str, params: tuple) -> list[AuditRow]:
        return list(map(AuditRow._make, self._all(
            "SELECT seq, event_id, command_id, key, time_ms, value FROM events " + where, params)))

    def _all(self, sql: str, params: tuple = ()) -> list[tuple]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise AuditError(f"{self.path}: read failed: {exc}") from None


class AuditRelay(RelayThread):
    """Relays one audit journal to the command day topics (see the module doc)."""

    THREAD_NAME = "command-audit-relay"

    def __init__(self, journal_path: str, bootstrap: str, *, topic_prefix: str, tz: ZoneInfo | str,
                 partitions: int = 3, replication_factor: int = 1, producer_config: dict | None = None,
                 poll_interval_s: float = 0.5, batch: int = 1000, retry_s: float = 1.0) -> None:
        """``topic_prefix``: ControlSettings.topic_prefix (the topics are ``<it>.commands.<YYYYMMDD>``)."""
        self.journal_path, self.bootstrap = journal_path, bootstrap
        self.day_prefix = f"{topic_prefix}.commands"
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.partitions, self.replication_factor = partitions, replication_factor
        self.poll_interval_s, self.batch, self.retry_s = poll_interval_s, batch, retry_s
        # librdkafka's lines (a "Connection refused" per reconnect) to a DEBUG logger, never to stderr
        self._conf = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "logger": RDKAFKA_LOGGER,
                      **(producer_config or {})}
        super().__init__({"produced": 0, "delivered": 0, "failed": 0, "pending": 0, "last_error": None})
        self._in_flight: set[int] = set()                # relay thread only
        self._done: list[int] = []
        self._rescan = True                              # read pending() instead of read_after(cursor)
        self._rescan_pos = 0                             # the rescan has handled every pending row up to here
        self._cursor = 0                                 # highest seq handed to the producer

    def topic_of(self, time_ms: int) -> str:
        """``<prefix>.commands.<YYYYMMDD>`` of an event at ``time_ms`` (local date in the line's zone)."""
        return topic_for(self.day_prefix, time_ms, self.tz)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Flush what is in flight (up to 5 s), mark it, join. Owner thread."""
        super().stop(timeout_s)

    # -- relay thread ------------------------------------------------------------------------------
    def _run(self) -> None:
        journal = AuditJournal(self.journal_path, fsync_commits=False)   # a lost mark only resends
        topics = self._topics = TopicManager(self.bootstrap, self.partitions, self.replication_factor,
                                             timeout_s=2.0)
        producer = Producer(self._conf)
        try:
            while not self._stopping.is_set():
                producer.poll(0.01 if self._in_flight else 0)
                self._settle(journal)
                sent = self._produce(journal, producer, topics)
                with self._lock:
                    self._stats["pending"] = journal.undelivered()
                if not sent and not self._in_flight:
                    self._wake.wait(self.poll_interval_s)
                    self._wake.clear()
        except Exception:
            log.exception("command audit relay: stopped by an unexpected error (journal %s, broker %s)",
                          self.journal_path, self.bootstrap)
            raise
        finally:
            producer.flush(5.0)
            self._settle(journal)
            journal.close()
            topics.close()              # the producer's connections close when this frame's reference goes

    def _settle(self, journal: AuditJournal) -> None:
        if self._done:
            done, self._done = self._done, []
            journal.mark_delivered(done)
            self._count("delivered", len(done))

    def _produce(self, journal: AuditJournal, producer: Producer, topics: TopicManager) -> int:
        rescan = self._rescan
        rows = (journal.pending(self.batch, after=self._rescan_pos) if rescan
                else journal.read_after(self._cursor, self.batch))
        sent = handled = 0
        try:
            for row in rows:
                if row.seq not in self._in_flight:
                    producer.produce(topics.ensure(self.topic_of(row.time_ms)), row.value, row.key.encode(),
                                     on_delivery=partial(self._on_delivery, row.seq))
                    self._in_flight.add(row.seq)
                    sent += 1
                handled += 1
        except (BufferError, TopicError) as exc:
            with self._lock:
                self._stats["last_error"] = str(exc)
            if isinstance(exc, TopicError):
                self._stopping.wait(self.retry_s)
        if handled:
            self._cursor = max(self._cursor, rows[handled - 1].seq)
            if rescan:
                self._rescan_pos = rows[handled - 1].seq
        if rescan and handled == len(rows) < self.batch:
            self._rescan = False          # every pending row is in flight: new ones come by read_after
        elif not rescan and handled < len(rows):
            self._rescan, self._rescan_pos = True, 0     # the rest is still pending: the next pass takes it
        self._count("produced", sent)
        return sent

    def _on_delivery(self, seq: int, err, msg) -> None:
        self._in_flight.discard(seq)
        if err is None:
            self._done.append(seq)
            return
        self._count("failed")
        self._rescan, self._rescan_pos = True, 0     # still pending in the journal: sent again
        # ensure() asks the broker again before the resend: a restarted embedded broker lost the topic
        # (the answer is "already exists" when it did not)
        self._topics.forget(msg.topic())
        with self._lock:
            self._stats["last_error"] = f"seq {seq} to {msg.topic()}: {err.str()}"
