"""The Kafka relay: journal rows -> day topics, marked delivered only on a delivery report.

One thread (:meth:`KafkaRelay.start`) owns a Journal connection, an idempotent
librdkafka producer and a :class:`~alarms.kafka.topics.TopicManager`. Each pass:

1. serve delivery reports (``poll``); successes are marked delivered in one
   journal transaction per ``SETTLE_INTERVAL_S`` (or per ``batch`` of them, and
   always before the relay waits for a wake-up); failures only leave the
   in-flight set (the row is still pending in the journal and is sent again by
   the next rescan, which walks forward from the oldest pending row);
2. if the broker may have restarted (librdkafka said all brokers are down, a
   message timed out, or every ``topic_check_s``), compare the known topics'
   ids with the broker's; a topic that vanished or has a new id means the
   broker lost its data (the embedded broker is memory-only): purge, recreate
   the producer (the broker no longer knows its producer id, and librdkafka
   would retry UNKNOWN_PRODUCER_ID until the message timeout), republish the
   current day's rows from the journal and a fresh snapshot;
3. produce new rows (``read_after`` the highest seq produced) or, after a
   failure or at start, every pending row not in flight (``pending``). A row is
   never in flight twice: ``_in_flight`` holds the seqs between ``produce`` and
   their report;
4. publish a snapshot every ``snapshot_interval_s`` and when the day changes. Its
   chunks are built by a :class:`~alarms.kafka.snapshots.SnapshotWorker` thread
   (the provider is called there), so no alarm waits for a snapshot's build;
   the relay thread only produces them.

``republish_today`` (a supervisor restarting a relay that crashed, see
alarms/kafka/relay_process.py) sends today's rows again before anything else: the
dead relay may have missed a broker restart that lost them, and a new relay
knows no topics, so it could not tell.

Values are the journal's bytes verbatim, key the alarm key, topic by the row's
own ``time_ms``. A fatal producer error recreates the producer. Nothing here
blocks the alarm thread: it only calls :meth:`wake`.

Threading: ``start``, ``stop`` from the owner (service) thread; ``wake`` and
``stats`` from any thread; the snapshot provider in the snapshot worker's
thread; everything else runs in the relay thread.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from functools import partial
from zoneinfo import ZoneInfo

from confluent_kafka import KafkaError, Producer

from alarms.journal import Journal
from alarms.kafka.relay_thread import RelayThread
from alarms.kafka.snapshots import SnapshotProvider, SnapshotWorker, build_chunks
from alarms.kafka.topics import (TopicError, TopicManager, day_start_ms, next_midnight_ms, snapshot_key, snapshot_partition,
                     topic_for)

log = logging.getLogger("alarms.kafka.relay")

#: ``partitioner``: murmur2 of the key, positive-masked, modulo the partition count: the Java client's
#: default, so a Java or JS client agrees on which partition holds an alarm key (librdkafka's own default,
#: ``consistent_random``, is CRC-32). ``kafka.config`` may override any of these. docs/hmi-developer.md
PRODUCER_DEFAULTS = {"enable.idempotence": True, "acks": "all", "linger.ms": 1,
                     "message.timeout.ms": 30_000, "allow.auto.create.topics": False,
                     "reconnect.backoff.max.ms": 1000, "partitioner": "murmur2_random"}


#: delivered seqs are marked in the journal at least this often (or per ``batch`` of them): one short
#: write transaction per interval instead of one per poll, which the alarm thread's appends would queue behind
SETTLE_INTERVAL_S = 0.02


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class KafkaRelay(RelayThread):
    """Relays one journal file to Kafka (see the module doc).

    ``batch`` rows are read per pass and at most ``max_in_flight`` wait for their
    report: 100,000 is librdkafka's own queue (``queue.buffering.max.messages``);
    a full queue raises BufferError, which only ends the pass early. Measured
    on a 60,000-event backlog: 17,000 events/s at 1,000/20,000, 50,000 at
    5,000/100,000 (bench/alarm_bench.py for the pipeline figures).
    """

    THREAD_NAME = "kafka-relay"

    def __init__(self, journal_path: str, bootstrap: str, *, topic_prefix: str, tz: ZoneInfo | str,
                 gateway_id: int, line: str, partitions: int = 3, replication_factor: int = 1,
                 snapshot_provider: SnapshotProvider | None = None, snapshot_interval_s: float = 10.0,
                 producer_config: dict | None = None, poll_interval_s: float = 0.5, batch: int = 5000,
                 max_in_flight: int = 100_000, topic_check_s: float = 5.0, flush_timeout_s: float = 5.0,
                 republish_today: bool = False, clock_ms: Callable[[], int] = _wall_ms) -> None:
        self.journal_path, self.bootstrap, self.prefix = journal_path, bootstrap, topic_prefix
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.gateway_id, self.line = gateway_id, line
        self.partitions, self.replication_factor = partitions, replication_factor
        self.snapshot_provider, self.snapshot_interval_s = snapshot_provider, snapshot_interval_s
        self.poll_interval_s, self.batch, self.max_in_flight = poll_interval_s, batch, max_in_flight
        self.topic_check_s, self.flush_timeout_s, self.clock_ms = topic_check_s, flush_timeout_s, clock_ms
        self.republish_today = republish_today
        self._conf = {"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, **(producer_config or {})}
        super().__init__({"produced": 0, "delivered": 0, "failed": 0, "recreated": 0, "in_flight": 0, "pending": 0,
                          "snapshots": 0, "snapshot_failures": 0, "broker_data_lost": 0, "republished": 0,
                          "last_error": None})
        # relay-thread state
        self._in_flight: set[int] = set()
        self._done: list[int] = []             # delivered seqs, marked after each poll
        self._rescan = True                    # read pending() (start, after a failure) instead of read_after
        self._rescan_pos = 0                   # the rescan has handled every pending row up to this seq
        self._cursor = 0                       # highest seq produced by this relay
        self._replay: tuple[int, int] | None = None    # (next seq - 1, last seq) of a day being republished
        self._check_broker = False
        self._recreate = False
        self._producer: Producer | None = None
        self._snapshot_topic: str | None = None
        self._next_snapshot = 0.0
        self._snapshots: SnapshotWorker | None = None   # started by the relay thread (with a provider)
        self._day: tuple[int, int, str] = (0, 0, "")   # [start, end) ms of the day and its topic
        self._settle_due = 0.0                 # next time delivered seqs are marked in the journal

    # -- owner / any thread (start, wake, alive, stats: RelayThread) -----------------------------
    def stop(self, timeout_s: float | None = None) -> None:
        """Stop: flush what is in flight for up to ``flush_timeout_s``, then join. Owner thread."""
        super().stop(timeout_s if timeout_s is not None else self.flush_timeout_s + 10)

    # -- relay thread -----------------------------------------------------------------------------
    def _run(self) -> None:
        journal = Journal(self.journal_path, fsync_commits=False)   # delivery marks: see Journal's doc
        self.topics = TopicManager(self.bootstrap, self.partitions, self.replication_factor, timeout_s=2.0)
        self._producer = self._new_producer()
        if self.snapshot_provider is not None:
            self._snapshots = SnapshotWorker(self.snapshot_provider, self._chunks, self._wake.set).start()
        if self.republish_today:
            self._republish_today(journal, journal.last_seq())
        last_check = time.monotonic()
        try:
            while not self._stopping.is_set():
                self._producer.poll(0.01 if self._in_flight else 0)
                if (len(self._done) >= self.batch or not self._in_flight
                        or time.monotonic() >= self._settle_due):
                    self._settle(journal)       # before any idle wait: marks never wait for a wake-up
                if self._check_broker or time.monotonic() - last_check > self.topic_check_s:
                    last_check = time.monotonic()
                    self._verify_broker(journal)
                if self._recreate:
                    self._replace_producer(journal)
                busy = self._produce_rows(journal)
                self._maybe_snapshot()
                self._publish_stats(journal)
                if not busy and not self._in_flight:
                    self._wake.wait(self.poll_interval_s)
                    self._wake.clear()
        except Exception:
            log.exception("kafka relay: stopped by an unexpected error (journal %s, broker %s)",
                          self.journal_path, self.bootstrap)
            raise
        finally:
            if self._snapshots is not None:
                self._snapshots.stop()
            self._producer.flush(self.flush_timeout_s)
            self._settle(journal)
            self._publish_stats(journal)
            journal.close()
            self.topics.close()
            self._producer = None       # its connections close with it (see TopicManager.close)

    def _new_producer(self) -> Producer:
        conf = dict(self._conf)
        conf["error_cb"] = self._on_error
        return Producer(conf)

    def _on_error(self, err: KafkaError) -> None:
        # called from poll() in the relay thread
        if err.fatal():
            log.error("kafka relay: fatal producer error %s: recreating the producer", err)
            self._recreate = True
        elif err.code() in (KafkaError._ALL_BROKERS_DOWN, KafkaError._MSG_TIMED_OUT):
            self._check_broker = True
        with self._lock:
            self._stats["last_error"] = err.str()

    def _settle(self, journal: Journal) -> None:
        self._settle_due = time.monotonic() + SETTLE_INTERVAL_S
        if self._done:
            done, self._done = self._done, []
            journal.mark_delivered(done)
            self._count("delivered", len(done))

    def _verify_broker(self, journal: Journal) -> None:
        try:
            lost = self.topics.lost()
        except TopicError as exc:
            log.info("kafka relay: broker check failed (%s); will retry", exc)
            self.topics.reconnect()
            return                  # unreachable: keep the flag, look again next pass
        self._check_broker = False
        if not lost:
            return
        log.warning("kafka relay: broker %s lost topics %s (restarted?): republishing today's events",
                    self.bootstrap, ", ".join(lost))
        self._count("broker_data_lost")
        self._recreate = True
        if topic_for(self.prefix, self.clock_ms(), self.tz) in lost:
            self._republish_today(journal, self._cursor)

    def _republish_today(self, journal: Journal, through_seq: int) -> None:
        """Send today's rows up to ``through_seq`` again (delivered or not) and a fresh snapshot."""
        first = self._first_seq_since(journal, day_start_ms(self.clock_ms(), self.tz))
        self._replay = (first - 1, max(through_seq, first - 1))
        self._snapshot_topic = None              # a fresh snapshot for the empty topic

    def _first_seq_since(self, journal: Journal, since_ms: int) -> int:
        """Smallest seq with time_ms >= since_ms (binary search; seqs are issued in time order)."""
        lo, hi = 1, journal.last_seq() + 1
        while lo < hi:
            mid = (lo + hi) // 2
            row = journal.read_after(mid - 1, 1)
            if row and row[0].time_ms < since_ms:
                lo = row[0].event_seq + 1
            else:
                hi = mid
        return lo

    def _replace_producer(self, journal: Journal) -> None:
        old = self._producer
        old.purge(in_queue=True, in_flight=True)
        old.poll(0)                 # the purged messages' reports: out of flight, still pending
        old.flush(0)
        self._settle(journal)
        self._in_flight.clear()
        self._rescan, self._rescan_pos, self._recreate = True, 0, False
        self._producer = self._new_producer()
        self._count("recreated")

    def _produce_rows(self, journal: Journal) -> bool:
        room = self.max_in_flight - len(self._in_flight)
        if room <= 0:
            return True
        limit = min(self.batch, room)
        replaying = self._replay is not None
        if replaying:
            rows = journal.read_after(self._replay[0], limit)
            rows = [r for r in rows if r.event_seq <= self._replay[1]]
        elif self._rescan:
            rows = journal.pending(limit, after=self._rescan_pos)
        else:
            rows = journal.read_after(self._cursor, limit)
        sent, handled, last = 0, 0, 0
        # the per-row loop of the relay (50,000 rows/s): bound methods and the set in locals
        in_flight, produce, report = self._in_flight, self._producer.produce, self._on_delivery_seq
        ensure, day_topic = self.topics.ensure, self._day_topic
        try:
            for seq, _, key, time_ms, value in rows:
                if seq not in in_flight:
                    produce(ensure(day_topic(time_ms)), value, key.encode(), on_delivery=partial(report, seq))
                    in_flight.add(seq)
                    last = seq
                    sent += 1
                handled += 1
        except BufferError:
            pass                    # local queue full: serve reports first
        except TopicError as exc:
            with self._lock:
                self._stats["last_error"] = str(exc)
            self._check_broker = True
            self._stopping.wait(0.2)
        self._cursor = max(self._cursor, last)      # rows come in seq order
        self._count("produced", sent)
        complete = handled == len(rows) and len(rows) < limit
        if replaying:
            self._count("republished", sent)
            if complete:
                self._replay = None
            elif handled:
                self._replay = (rows[handled - 1].event_seq, self._replay[1])
        elif self._rescan:
            if complete:
                self._rescan = False    # every pending row is in flight now: new rows come by read_after
            elif handled:
                self._rescan_pos = rows[handled - 1].event_seq
        return sent > 0

    def _day_topic(self, time_ms: int) -> str:
        """``topic_for`` with the current day's bounds cached (it formats a date: 10 µs per row)."""
        start, end, topic = self._day
        if start <= time_ms < end:
            return topic
        start = day_start_ms(time_ms, self.tz)
        self._day = (start, next_midnight_ms(time_ms, self.tz), topic_for(self.prefix, time_ms, self.tz))
        return self._day[2]

    def _on_delivery_seq(self, seq: int, err, msg) -> None:
        """Delivery report of the row ``seq`` (bound per message with functools.partial)."""
        self._in_flight.discard(seq)
        if err is None:
            self._done.append(seq)
            return
        self._count("failed")
        self._rescan, self._rescan_pos = True, 0     # the row is still pending in the journal: send it again
        if err.code() in (KafkaError._MSG_TIMED_OUT, KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC):
            self._check_broker = True
        with self._lock:
            self._stats["last_error"] = f"event_seq {seq} to {msg.topic()}: {err.str()}"

    def _maybe_snapshot(self) -> None:
        """Produce the snapshot the worker has built, if any; ask for the next one when it is due (every
        ``snapshot_interval_s``, and at once on a new day's topic). Relay thread."""
        worker = self._snapshots
        if worker is None:
            return
        ready = worker.take()
        if ready is not None:
            try:
                if isinstance(ready, Exception):
                    raise ready
                self._produce_snapshot(*ready)
            except (TopicError, BufferError) as exc:
                self._snapshot_failed(exc)
            except Exception as exc:          # the provider failed (the journal unreadable): not the relay's end
                log.exception("kafka relay: snapshot not built")
                self._snapshot_failed(exc)
        now_ms = self.clock_ms()
        topic = topic_for(self.prefix, now_ms, self.tz)
        if (topic == self._snapshot_topic and time.monotonic() < self._next_snapshot) or worker.busy:
            return
        self._next_snapshot = time.monotonic() + self.snapshot_interval_s
        self._snapshot_topic = topic
        worker.request(now_ms)

    def _snapshot_failed(self, exc: Exception) -> None:
        self._count("snapshot_failures")
        self._next_snapshot = time.monotonic() + 1.0     # ask again in a second (the same day's topic)
        log.info("kafka relay: snapshot not published: %s", exc)

    def _chunks(self, event_seq: int, alarms: list, now_ms: int) -> list[bytes]:
        """A snapshot's chunk messages (the worker's thread: only the relay's constant settings are read)."""
        return build_chunks(event_seq, alarms, gateway_id=self.gateway_id, line=self.line, time_ms=now_ms,
                            tz=self.tz)

    def _produce_snapshot(self, now_ms: int, chunks: list[bytes]) -> int:
        """Produce one snapshot's chunks to the topic of ``now_ms``'s day; returns the chunk count. Relay thread."""
        topic = self.topics.ensure(topic_for(self.prefix, now_ms, self.tz))
        part = snapshot_partition(self.gateway_id, self.partitions)
        key = snapshot_key(self.gateway_id).encode()
        for value in chunks:
            self._producer.produce(topic, value, key, partition=part, on_delivery=self._on_snapshot_report)
        self._count("snapshots")
        return len(chunks)

    def _on_snapshot_report(self, err, msg) -> None:
        if err is not None:
            self._count("snapshot_failures")

    def _publish_stats(self, journal: Journal) -> None:
        now = time.monotonic()
        if now < getattr(self, "_stats_due", 0.0) and not self._stopping.is_set():
            return
        self._stats_due = now + 1.0
        pending = journal.undelivered()
        with self._lock:
            self._stats["in_flight"], self._stats["pending"] = len(self._in_flight), pending
