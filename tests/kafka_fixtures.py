"""Kafka test helpers: a real embedded tansu broker per test module, real journals and events, and an
HMI consumer in a supervised child process (:class:`SupervisedConsumer`).

Import explicitly (``from kafka_fixtures import broker, ...``); tests/conftest.py is not touched.
``python kafka_fixtures.py BOOTSTRAP PREFIX DAY_MS`` is that consumer child (see :func:`consumer_main`).
"""
from __future__ import annotations

import faulthandler
import json
import os
import pathlib
import random
import sys
import threading
import time

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from alarms.kafka.broker import EmbeddedBroker
from alarms.engine import AlarmEngine
from alarms.journal import Journal
from alarms.model import AlarmKey

HERE = pathlib.Path(__file__).resolve().parent
SCHEMA = HERE.parent / "docs" / "schema" / "alarm-message.schema.json"
TZ = "Asia/Shanghai"
LINE = "demo-line-1"


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A running EmbeddedBroker (memory-only) for the module; SIGKILLed at the end."""
    b = EmbeddedBroker(str(tmp_path_factory.mktemp("broker") / "tansu.log"))
    b.start()
    try:
        yield b
    finally:
        b.kill()
        assert not b.running


class EventSource:
    """Drives a real AlarmEngine with a seeded mix of raise/ack/clear/info and journals every event."""

    def __init__(self, journal_path: str, start_ms: int, *, keys: int = 200, seed: int = 1, step_ms: int = 7):
        self.engine = AlarmEngine(1, LINE, TZ, max_active=100_000, chatter_cycles=1_000_000,
                                  flood_alarms=1_000_000)
        self.journal = Journal(journal_path)
        self.now_ms, self.step_ms = start_ms, step_ms
        self.rng = random.Random(seed)
        self.keys = [AlarmKey("CI-1" if i % 2 else "ZC-1", "DEVICE_COMM_LOST" if i % 3 else "SIGNAL_LAMP_FAIL",
                              f"obj{i}") for i in range(keys)]
        self.events = []
        self.lock = threading.Lock()       # the engine is single-threaded; the relay asks for snapshots

    def snapshot(self) -> tuple[int, list]:
        """The relay's snapshot provider: engine.snapshot() under the lock (any thread)."""
        with self.lock:
            return self.engine.snapshot()

    def step(self) -> list:
        with self.lock:
            return self._step()

    def _step(self) -> list:
        self.now_ms += self.step_ms
        key = self.rng.choice(self.keys)
        state = self.engine.state_of(key)
        r = self.rng.random()
        if r < 0.05:
            evs = self.engine.info(key, "consist coupled", self.now_ms)
        elif state == "NORMAL":
            evs = self.engine.raise_(key, self.rng.choice(["critical", "major", "minor", "warning"]),
                                     "no link up", self.now_ms)
        elif state == "UNACK" and r < 0.5:
            evs = self.engine.ack(key, "op1", self.now_ms)
        else:
            evs = self.engine.clear(key, self.now_ms) or self.engine.ack(key, "op2", self.now_ms)
        return evs

    def journal_events(self, n: int, per_txn: int = 50) -> list:
        """Generate and journal at least ``n`` events (group commits of about ``per_txn``)."""
        out = []
        while len(out) < n:
            batch = []
            while len(batch) < per_txn and len(out) + len(batch) < n:
                batch.extend(self.step())
            self.journal.append(batch)
            out.extend(batch)
        self.events.extend(out)
        return out

    def true_table(self) -> dict:
        seq, entries = self.snapshot()
        return {e["alarm"]["key"]: e for e in entries}

    def close(self) -> None:
        self.journal.close()


def wait_for(pred, timeout_s: float, what: str, step=None) -> None:
    deadline = time.monotonic() + timeout_s
    while not pred():
        if step is not None:
            step()
        else:
            time.sleep(0.02)
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def read_topic(bootstrap: str, topic: str, partitions: int = 3, timeout_s: float = 20) -> list:
    """Every message of ``topic`` (assign, no group) until EOF on every partition."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "t", "enable.partition.eof": True,
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    out, eof = [], set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(eof) < partitions and time.monotonic() < deadline:
            for m in c.consume(1000, 0.2):
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        eof.add(m.partition())
                    continue
                out.append(m)
    finally:
        c.close()
    assert len(eof) == partitions, f"{topic}: no EOF on every partition within {timeout_s} s"
    return out


def connections_to(port: int) -> int:
    """This process's established TCP connections to 127.0.0.1:``port`` (from /proc: the sockets whose
    inodes are among our file descriptors), e.g. a Kafka client left open on the broker."""
    ours = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            ours.add(target[8:-1])
    n = 0
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as f:
            next(f)
            for line in f:
                cols = line.split()
                remote, state, inode = cols[2], cols[3], cols[9]
                if state == "01" and int(remote.rsplit(":", 1)[1], 16) == port and inode in ours:
                    n += 1
    return n


def delivered(journal: Journal) -> int:
    """Events the relay has marked delivered."""
    c = journal.counts()
    return c["events"] - c["undelivered"]


def wait_all_consumed(src: EventSource, journal: Journal, consumer: "SupervisedConsumer", timeout_s: float) -> set:
    """Wait until every journaled event is delivered and seen by the consumer and its table is the engine's;
    returns the event_ids."""
    ids = {e.event_id for e in src.events}
    wait_for(lambda: journal.counts()["undelivered"] == 0 and consumer.seen() >= ids, timeout_s,
             "every event delivered and consumed")
    wait_for(lambda: consumer.current_table() == src.true_table(), 30, "the consumer's table = the engine's")
    return ids


def schema_validator():
    """A jsonschema validator for docs/schema/alarm-message.schema.json, or None while it does not exist."""
    if not SCHEMA.exists():
        return None
    import jsonschema
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


class SupervisedConsumer:
    """An AlarmTableConsumer (replay=True, every partition from offset 0) in a child process kept alive by
    :class:`~alarms.kafka.relay_process.ChildSupervisor`: librdkafka may crash in a consumer as well around a
    broker restart, and an HMI restarting its consumer is legitimate. A restarted child reads the day's
    topic from offset 0 again, so the guarantee it checks is at least once + dedupe by ``event_id``.

    ``ids[gen]``: event_ids in the order child ``gen`` reported them; ``table``/``counters``: the last
    table dump of the newest child (it dumps after a quiet poll that followed changes).
    """

    def __init__(self, bootstrap: str, prefix: str, day_ms: int, log_path: str) -> None:
        from alarms.kafka.relay_process import ChildSupervisor
        self.ids: dict[int, list[str]] = {}
        self.table: dict | None = None
        self.counters: dict[int, dict] = {}
        self._lock = threading.Lock()
        env = {"PYTHONPATH": os.pathsep.join([str(HERE.parent), str(HERE)])}
        self.child = ChildSupervisor("test consumer", [sys.executable, str(HERE / "kafka_fixtures.py"), bootstrap,
                                                       prefix, str(day_ms), str(os.getpid())],
                                     log_path=log_path, on_line=self._on_line, env=env, backoff_s=(0.2, 1.0))

    def start(self) -> "SupervisedConsumer":
        self.child.start()
        return self

    def stop(self) -> None:
        self.child.stop(5.0)

    def _on_line(self, gen: int, line: str) -> None:
        kind, _, rest = line.partition(" ")
        with self._lock:
            if kind == "E":
                self.ids.setdefault(gen, []).append(rest)
            elif kind == "T" and gen == self.child.generation:
                dump = json.loads(rest)
                self.table, self.counters[gen] = dump["table"], dump["counters"]

    def seen(self) -> set[str]:
        """Every event_id any child reported (the dedupe an HMI does across its consumer's restarts)."""
        with self._lock:
            return {i for ids in self.ids.values() for i in ids}

    def current_table(self) -> dict | None:
        with self._lock:
            return self.table


def consumer_main(argv: list[str]) -> int:
    """The consumer child: ``E <event_id>`` per new event, ``T <json>`` table dumps, on stdout."""
    bootstrap, prefix, day_ms, parent = argv[0], argv[1], int(argv[2]), int(argv[3])
    from alarms.kafka.broker import _die_with_parent
    _die_with_parent()
    if os.getppid() != parent:
        return 2
    faulthandler.enable()
    from alarms.kafka.consumer import AlarmTableConsumer
    out = sys.stdout
    consumer = AlarmTableConsumer(bootstrap, prefix, TZ, replay=True, clock_ms=lambda: day_ms)
    dirty, dumped = False, 0.0
    while True:
        changes = consumer.poll(0.1)
        for c in changes:
            if c.kind == "event":
                out.write(f"E {c.event['event_id']}\n")
        dirty = dirty or bool(changes)
        if dirty and not changes and time.monotonic() - dumped > 0.3:
            out.write("T " + json.dumps({"table": consumer.table.entries, "counters": consumer.counters}) + "\n")
            dirty, dumped = False, time.monotonic()
        out.flush()


if __name__ == "__main__":
    sys.exit(consumer_main(sys.argv[1:]))
