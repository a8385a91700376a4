"""The HMI side: rebuild the active alarm table from a day topic and follow it live.

``AlarmTableConsumer`` assigns every partition of today's topic (no consumer
group: tansu's JoinGroup stalls, and the table is rebuilt from snapshots
anyway, so there are no committed offsets). The rules of
docs/alarm-pipeline.md, applied in whatever order messages arrive:

* an event is applied once (``event_id`` dedupe), only if its ``event_seq`` is
  greater than the last applied for its key and than the newest snapshot's of
  its gateway; ``NORMAL`` removes the key, ``info`` never enters the table;
* a complete snapshot (every chunk of one ``snapshot_id``) wins for every key
  whose last applied seq is not newer, and removes the gateway's keys it does
  not list whose last seq is not newer. Because of this, snapshot and events
  give the same table in any arrival order.

At start, with a ``gateway_id`` (and not ``replay``), the snapshot partition
of today's topic is scanned first and reading it starts at the newest complete
snapshot of that gateway; the other partitions are read from the beginning
(tansu answers ListOffsets with wrong high watermarks, so there is no
offset-by-time shortcut). A day topic starts empty, and alarms raised on an
earlier day and still active are only in snapshots: when today's topic has no
complete snapshot of the gateway yet (started just after midnight, before the
relay's first snapshot of the day, or before it created the topic) yesterday's
topic (the previous *local* date: DST days are 23 or 25 hours) is read the same
way, from its newest complete snapshot, and today's from the beginning; the
rules above give the right table, and today's first snapshot wins when it
comes. Yesterday's topic then stays assigned as after a midnight (below):
until ``grace_s`` after midnight, and at least until loaded. ``rebuilt_from``
says which it was: ``"today"``, ``"yesterday"`` (counted in
``counters["yesterday_loads"]``) or ``"none"`` (neither topic has such a
snapshot: today's is read from the beginning once it exists). ``loaded``: every
partition assigned at start read to its end. ``replay=True`` reads every
partition of today's topic from the beginning and also reports every event read
while loading.

At the line's local midnight (``clock_ms``, injectable) the next day's topic
is assigned as soon as it exists; the old one stays assigned for ``grace_s``
for late events. A broker restart (librdkafka reports all brokers down, or a
partition error) makes it read every partition again from offset 0 once the
broker answers: a memory broker may have lost its data and been refilled, so
old positions would skip messages (dedupe drops the repeats; the relay
republishes the day).

librdkafka's own log lines (a "Connect to ... failed: Connection refused" per
client per reconnect attempt: about 40 a second against a broker that is gone)
go to the ``alarms.kafka.rdkafka`` logger at DEBUG, never to stderr; the
consumer says the same once: ``reachable`` turns False when every broker is
down or the metadata request fails, True when the broker answers again
(``gateway alarms tail`` prints one line per change).

Threading: one consumer per thread; every method runs in the caller's thread.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient

from alarms.kafka.snapshots import SnapshotAssembler
from alarms.kafka.topics import RDKAFKA_LOGGER, day_start_ms, snapshot_partition, topic_for

log = logging.getLogger("alarms.kafka.consumer")
#: librdkafka's default is 500 ms. A Kafka broker answers a fetch as soon as data arrives, so this only
#: bounds how long the embedded broker (tansu), which answers a waiting fetch only when the wait ends,
#: delays an alarm (bench/alarm_bench.py measures the latency).
#: Not lower: every consumer then costs the embedded broker a fetch per FETCH_WAIT_MS while idle.
FETCH_WAIT_MS = 50
ENTRY_FIELDS = ("severity", "text", "state", "active", "chattering", "operator", "shelved_until_ms", "raised_ms")




def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


def previous_day_topic(prefix: str, time_ms: int, tz: ZoneInfo) -> str:
    """The topic of the local day before that of ``time_ms``: by the local date, not ``time_ms - 24 h``
    (00:30 after a 23-hour day is 23:30 two dates back, 24 hours earlier)."""
    day = datetime.fromtimestamp(time_ms / 1000, tz).date() - timedelta(days=1)
    return f"{prefix}.{day:%Y%m%d}"


@dataclass
class Change:
    """``kind``: loaded | event | snapshot | rollover | reset. ``event``: the decoded message (event kind);
    ``applied``: it changed the table; ``keys``: keys a snapshot changed; ``topic``: where it came from."""

    kind: str
    topic: str
    event: dict | None = None
    applied: bool = False
    keys: list[str] = field(default_factory=list)


def entry_from_event(ev: dict) -> dict:
    """The table entry (snapshot ``alarms[]`` format) an event leaves behind."""
    return {"alarm": ev["alarm"], **{k: ev[k] for k in ENTRY_FIELDS}, "updated_ms": ev["time_ms"],
            "event_seq": ev["event_seq"]}


class AlarmTable:
    """The rules above as a plain object (no Kafka): feed decoded messages, read ``entries``."""

    def __init__(self) -> None:
        self.entries: dict[str, dict] = {}
        self._last: dict[str, int] = {}        # key -> last applied event_seq
        self._gw: dict[str, int] = {}          # key -> gateway id
        self._base: dict[int, int] = {}        # gateway -> newest snapshot's event_seq
        self._seen: set[str] = set()
        self.duplicates = 0

    def apply_event(self, ev: dict) -> tuple[bool, bool]:
        """``(new, applied)``: first time this event_id was seen; it changed the table."""
        if ev["event_id"] in self._seen:
            self.duplicates += 1
            return False, False
        self._seen.add(ev["event_id"])
        key, seq, gw = ev["alarm"]["key"], ev["event_seq"], ev["gateway_id"]
        if ev["transition"] == "info" or seq <= self._base.get(gw, 0) or seq <= self._last.get(key, 0):
            return True, False
        self._last[key], self._gw[key] = seq, gw
        if ev["state"] == "NORMAL":
            self.entries.pop(key, None)
        else:
            self.entries[key] = entry_from_event(ev)
        return True, True

    def apply_snapshot(self, snap: dict) -> list[str]:
        """Merge a complete snapshot; returns the keys it changed."""
        gw, seq = snap["gateway_id"], snap["event_seq"]
        if seq <= self._base.get(gw, 0):
            return []
        self._base[gw] = seq
        changed, listed = [], set()
        for entry in snap["alarms"]:
            key = entry["alarm"]["key"]
            listed.add(key)
            if entry["event_seq"] > self._last.get(key, 0):
                self._last[key], self._gw[key] = entry["event_seq"], gw
                if self.entries.get(key) != entry:
                    changed.append(key)
                self.entries[key] = entry
        for key in [k for k in self.entries if k not in listed and self._gw.get(k) == gw]:
            if self._last.get(key, 0) <= seq:
                del self.entries[key]
                changed.append(key)
        return changed

    @property
    def seen(self) -> int:
        return len(self._seen)


class AlarmTableConsumer:
    """Follows ``<prefix>.<YYYYMMDD>`` of the line's local date (see the module doc)."""

    def __init__(self, bootstrap: str, prefix: str, tz: ZoneInfo | str, *, gateway_id: int | None = None,
                 replay: bool = False, clock_ms: Callable[[], int] = _wall_ms, grace_s: float = 60.0,
                 consumer_config: dict | None = None, on_change: Callable[[Change], None] | None = None) -> None:
        self.bootstrap, self.prefix = bootstrap, prefix
        self.tz = ZoneInfo(tz) if isinstance(tz, str) else tz
        self.gateway_id, self.replay, self.clock_ms, self.grace_s = gateway_id, replay, clock_ms, grace_s
        self.on_change = on_change
        conf = {"bootstrap.servers": bootstrap, "group.id": "railgate-hmi-unused", "enable.auto.commit": False,
                "enable.partition.eof": True, "auto.offset.reset": "earliest", "log_level": 3,
                "allow.auto.create.topics": False, "reconnect.backoff.max.ms": 1000,
                "fetch.wait.max.ms": FETCH_WAIT_MS, "error_cb": self._on_error, "logger": RDKAFKA_LOGGER,
                **(consumer_config or {})}
        self._conf = conf
        self._consumer = Consumer(conf)
        self._admin_conf = {"bootstrap.servers": bootstrap, "log_level": 3, "allow.auto.create.topics": False,
                            "reconnect.backoff.max.ms": 1000, "logger": RDKAFKA_LOGGER}
        self._admin = AdminClient(self._admin_conf)
        self.table = AlarmTable()
        self._chunks = SnapshotAssembler()
        self.topic = topic_for(prefix, clock_ms(), self.tz)
        self._parts: dict[str, int] = {}                # assigned topic -> partition count
        self._old: tuple[str, float] | None = None      # previous day's topic, drop at monotonic time
        self._eof: set[tuple[str, int]] = set()
        self._loading: set[str] = set()                 # topics to read to their end before ``loaded``
        self._started = gateway_id is None or replay    # the start-up choice of snapshot is made
        self.rebuilt_from: str | None = None            # "today" | "yesterday" | "none" (module doc)
        self.loaded = False
        self._suspect = False
        self.reachable = True        # False: every broker down / metadata failing (see the module doc)
        self._next_check = 0.0
        self.counters = {"messages": 0, "bad_messages": 0, "resets": 0, "rollovers": 0, "yesterday_loads": 0}

    # -- public, caller's thread ------------------------------------------------------------------
    def poll(self, timeout_s: float = 0.2) -> list[Change]:
        """One pass: assign/roll over/recover as needed, read what is there. Returns the changes."""
        out: list[Change] = []
        self._housekeeping(out)
        if not self._parts:
            time.sleep(min(timeout_s, 0.2))
            return self._emit(out)
        # poll() returns at the first message; consume(n, t) would wait out t unless n messages came
        first = self._consumer.poll(timeout_s)
        if first is not None:
            for msg in [first, *self._consumer.consume(1000, 0)]:
                self._handle(msg, out)
        if not self.loaded and self._loading and all((t, p) in self._eof for t in self._loading
                                                     for p in range(self._parts.get(t, 0))):
            self.loaded = True
            out.append(Change("loaded", self.topic))
        return self._emit(out)

    def changes(self, stop: Callable[[], bool] = lambda: False) -> Iterator[Change]:
        """Iterate over changes until ``stop()`` is true."""
        while not stop():
            yield from self.poll()

    def wait_loaded(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.loaded and time.monotonic() < deadline:
            self.poll(0.1)
        return self.loaded

    @property
    def assigned(self) -> list[str]:
        """The topics assigned now (today's, and the previous day's during its grace period)."""
        return list(self._parts)

    def close(self) -> None:
        self._consumer.close()

    # -- internals --------------------------------------------------------------------------------
    def _emit(self, out: list[Change]) -> list[Change]:
        if self.on_change is not None:
            for c in out:
                self.on_change(c)
        return out

    def _on_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._suspect = True
            self.reachable = False

    def _partitions(self, topic: str) -> int:
        """Partition count of ``topic`` (0: it does not exist); raises KafkaException if unreachable."""
        md = self._admin.list_topics(topic, timeout=2).topics.get(topic)
        return 0 if md is None or md.error is not None else len(md.partitions)

    def _housekeeping(self, out: list[Change]) -> None:
        now = time.monotonic()
        if self._old and now >= self._old[1] and self.loaded:
            self._drop(self._old[0])
            self._old = None
        due_day = topic_for(self.prefix, self.clock_ms(), self.tz)
        if due_day != self.topic:
            if self.topic in self._parts:
                self._old = (self.topic, now + self.grace_s)
            self.topic = due_day
            self.counters["rollovers"] += 1
            out.append(Change("rollover", due_day))
        if (self.topic in self._parts and not self._suspect) or now < self._next_check:
            return
        self._next_check = now + 0.5
        try:
            parts = self._partitions(self.topic)
        except Exception:
            self._admin = AdminClient(self._admin_conf)   # a fresh client reconnects at once (see topics.py)
            self.reachable = False
            return                                   # broker unreachable: look again shortly
        self.reachable = True
        if self._suspect and self._parts:
            # all brokers were down, or a partition vanished: a memory broker may have lost everything
            # and been refilled since, so positions mean nothing now: read again from offset 0
            self._reset(out)
        self._suspect = False
        if not self._started:
            self._start(parts)
        elif parts and self.topic not in self._parts:
            self._assign(self.topic, parts, self._scan(self.topic, parts))

    def _start(self, parts: int) -> None:
        """The start-up choice (module doc): today's newest snapshot of our gateway, else yesterday's."""
        today = self._scan(self.topic, parts) if parts else None
        if today is not None:
            self._assign(self.topic, parts, today)
            self._started, self.rebuilt_from = True, "today"
            return
        now_ms = self.clock_ms()
        old = previous_day_topic(self.prefix, now_ms, self.tz)
        try:
            old_parts = self._partitions(old)
        except Exception:
            self._admin = AdminClient(self._admin_conf)
            return                                   # unreachable again: decide at the next answer
        snap = self._scan(old, old_parts) if old_parts else None
        if snap is not None:
            self._assign(old, old_parts, snap)
            grace_left_s = (day_start_ms(now_ms, self.tz) - now_ms) / 1000 + self.grace_s
            self._old = (old, time.monotonic() + max(0.0, grace_left_s))
            self.counters["yesterday_loads"] += 1
        if parts:
            self._assign(self.topic, parts, None)   # scanned above: no snapshot of ours, read it all
        self._started, self.rebuilt_from = True, "yesterday" if snap is not None else "none"

    def _scan(self, topic: str, partitions: int) -> int | None:
        """With a gateway_id and not replay: the offset of its newest complete snapshot in its snapshot
        partition of ``topic`` (None: there is none). Otherwise None."""
        if self.gateway_id is None or self.replay:
            return None
        return self._newest_snapshot_offset(topic, snapshot_partition(self.gateway_id, partitions))

    def _assign(self, topic: str, partitions: int, snapshot_offset: int | None) -> None:
        """Assign every partition from the beginning; our snapshot partition from ``snapshot_offset``."""
        start = {p: OFFSET_BEGINNING for p in range(partitions)}
        if snapshot_offset is not None:
            start[snapshot_partition(self.gateway_id, partitions)] = snapshot_offset
        self._consumer.incremental_assign([TopicPartition(topic, p, o) for p, o in start.items()])
        self._parts[topic] = partitions
        if not self.loaded:
            self._loading.add(topic)

    def _newest_snapshot_offset(self, topic: str, partition: int) -> int | None:
        """Offset of the first chunk of the newest complete snapshot of our gateway in ``partition``
        (None when there is none). Reads the partition once with a separate consumer."""
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "railgate-hmi-scan", "log_level": 3,
                      "enable.auto.commit": False, "enable.partition.eof": True, "logger": RDKAFKA_LOGGER})
        best, first_chunk, asm = None, {}, SnapshotAssembler()
        try:
            c.assign([TopicPartition(topic, partition, OFFSET_BEGINNING)])
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                msg = c.poll(0.5)
                if msg is None:
                    continue
                if msg.error():
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        break
                    continue
                d = self._decode(msg)
                if d is None or d.get("kind") != "snapshot" or d.get("gateway_id") != self.gateway_id:
                    continue
                first_chunk.setdefault(d["snapshot_id"], msg.offset())
                if asm.add(d) is not None:
                    best = first_chunk[d["snapshot_id"]]
        finally:
            c.close()
        return best

    def _drop(self, topic: str) -> None:
        parts = self._parts.pop(topic, 0)
        if parts:
            self._consumer.incremental_unassign([TopicPartition(topic, p) for p in range(parts)])
        self._eof = {e for e in self._eof if e[0] != topic}

    def _reset(self, out: list[Change]) -> None:
        # a fresh client: the old one's metadata cache still holds the lost topics
        self._consumer.close()
        self._consumer = Consumer(self._conf)
        self._parts.clear()
        self._eof.clear()
        self._old = None
        self._loading.clear()
        if not self.loaded and self.gateway_id is not None and not self.replay:
            self._started = False        # interrupted start-up: choose the snapshot again
        self.counters["resets"] += 1
        out.append(Change("reset", self.topic))

    def _decode(self, msg) -> dict | None:
        try:
            d = json.loads(msg.value())
        except (TypeError, ValueError):
            d = None
        if not isinstance(d, dict):            # not JSON, or JSON that is not one of our messages
            self.counters["bad_messages"] += 1
            return None
        return d

    def _handle(self, msg, out: list[Change]) -> None:
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                self._eof.add((msg.topic(), msg.partition()))
            elif err.code() in (KafkaError.OFFSET_OUT_OF_RANGE, KafkaError.UNKNOWN_TOPIC_OR_PART,
                                KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC):
                self._suspect = True
            return
        self.counters["messages"] += 1
        d = self._decode(msg)
        if d is None:
            return
        try:
            if d.get("kind") == "event":
                new, applied = self.table.apply_event(d)
                if new and (self.loaded or self.replay):
                    out.append(Change("event", msg.topic(), d, applied))
            elif d.get("kind") == "snapshot":
                snap = self._chunks.add(d)
                keys = self.table.apply_snapshot(snap) if snap is not None else []
                if keys and self.loaded:
                    out.append(Change("snapshot", msg.topic(), None, True, keys))
            else:
                self.counters["bad_messages"] += 1
        except (KeyError, TypeError):
            self.counters["bad_messages"] += 1    # not our message format: counted, not fatal
