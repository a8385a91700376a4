"""Topics, snapshot chunks, partitioning and kcat against a real embedded broker (tansu); docs/hmi-developer.md's
examples (messages, partition table, kcat + jq) checked."""
from __future__ import annotations

import glob
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import time
import zlib

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from alarms.journal import Journal
from alarms.kafka.consumer import AlarmTable
from alarms.kafka.relay import KafkaRelay
from alarms.kafka.snapshots import SnapshotAssembler, build_chunks
from alarms.kafka.topics import TopicManager
from zoneinfo import ZoneInfo

from kafka_fixtures import TZ, EventSource, broker, schema_validator, wait_for  # noqa: F401 (fixture)

KCAT = shutil.which("kcat")
JQ = shutil.which("jq")
HMI_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "hmi-developer.md"


def test_topic_manager_creates_once_and_notices_a_lost_topic(broker):
    tm = TopicManager(broker.bootstrap, partitions=3)
    assert tm.ensure("tm.20261124") == "tm.20261124" and tm.created == 1
    assert tm.ensure("tm.20261124") and tm.created == 1                  # cached
    assert TopicManager(broker.bootstrap).ensure("tm.20261124")           # TOPIC_ALREADY_EXISTS is fine
    assert tm.partitions_of("tm.20261124") == 3 and tm.lost() == []


def test_snapshot_chunks_split_and_reassemble_in_any_order():
    alarms = [{"alarm": {"key": f"CI-1/X/o{i}"}, "event_seq": i + 1, "text": "t" * 300} for i in range(1234)]
    chunks = build_chunks(1234, alarms, gateway_id=1, line="l", time_ms=0, tz=ZoneInfo(TZ), max_bytes=100_000)
    msgs = [json.loads(c) for c in chunks]
    assert len(chunks) > 3 and all(len(c) <= 100_000 + 300 for c in chunks)
    assert {m["chunks"] for m in msgs} == {len(chunks)} and [m["chunk"] for m in msgs] == list(range(len(chunks)))
    asm = SnapshotAssembler()
    done = [asm.add(m) for m in reversed(msgs)]
    assert done[:-1] == [None] * (len(msgs) - 1) and done[-1]["alarms"] == alarms
    assert json.loads(build_chunks(0, [], gateway_id=1, line="l", time_ms=0, tz=ZoneInfo(TZ))[0])["alarms"] == []


def test_table_rules_give_the_same_table_in_any_arrival_order(tmp_path):
    src = EventSource(str(tmp_path / "j.db"), start_ms=1_795_000_000_000, keys=30, seed=5)
    evs = [e.to_json() for e in src.journal_events(300)]
    seq, entries = src.snapshot()
    snap = {"gateway_id": 1, "event_seq": seq, "alarms": entries}
    early = [e for e in evs if e["event_seq"] <= 150]
    src.journal_events(100)
    later = [e.to_json() for e in src.events[len(evs):]]
    for order in (early + [None] + later, [None] + later[::-1] + early, later + early[::-1] + [None] + evs):
        t = AlarmTable()
        for m in order:
            t.apply_snapshot(snap) if m is None else t.apply_event(m)
        assert t.entries == src.true_table()
    src.close()


@pytest.mark.skipif(KCAT is None, reason="kcat is not installed (apt install kcat)")
def test_kcat_reads_the_day_topic(broker, tmp_path):
    # Debian's kcat links librdkafka 2.0.2, which cannot parse tansu's ApiVersions v3 reply ("Read underflow");
    # run it on the newer librdkafka shipped in the confluent-kafka wheel.
    import confluent_kafka
    libs = glob.glob(os.path.join(os.path.dirname(confluent_kafka.__file__), "..", "confluent_kafka.libs",
                                  "librdkafka-*.so.1"))
    assert libs, "the confluent-kafka wheel ships librdkafka in confluent_kafka.libs/"
    os.symlink(os.path.realpath(libs[0]), tmp_path / "librdkafka.so.1")
    src = EventSource(str(tmp_path / "j.db"), start_ms=int(time.time() * 1000), seed=9)
    evs = src.journal_events(50)
    relay = KafkaRelay(str(tmp_path / "j.db"), broker.bootstrap, topic_prefix="kc", tz=TZ, gateway_id=1,
                       line="demo-line-1", clock_ms=lambda: src.now_ms).start()
    wait_for(lambda: relay.stats()["delivered"] == len(evs), 20, "50 deliveries")
    relay.stop()
    topic = relay.topics.known()[0]
    res = subprocess.run([KCAT, "-C", "-b", broker.bootstrap, "-t", topic, "-e", "-q", "-f", "%k %s\n"],
                         env={**os.environ, "LD_LIBRARY_PATH": str(tmp_path)}, capture_output=True, text=True,
                         timeout=30)
    assert res.returncode == 0, res.stderr
    lines = [line.split(" ", 1) for line in res.stdout.splitlines()]
    assert sorted((k, json.loads(v)["event_id"]) for k, v in lines) == sorted((e.key, e.event_id) for e in evs)
    src.close()


# -- partitioning: the Java client's murmur2 ------------------------------------------------------------------

def murmur2(data: bytes) -> int:
    """Kafka's ``Utils.murmur2`` (the Java client's), as a signed 32-bit int like Java's."""
    m, r, n = 0x5BD1E995, 24, len(data)
    h = (0x9747B28C ^ n) & 0xFFFFFFFF
    for i in range(0, n - n % 4, 4):
        k = (int.from_bytes(data[i:i + 4], "little") * m) & 0xFFFFFFFF
        k ^= k >> r                                   # Java's >>> on the unsigned value
        h = ((h * m) & 0xFFFFFFFF) ^ ((k * m) & 0xFFFFFFFF)
    tail, rest = n - n % 4, n % 4
    if rest == 3:                                     # the Java switch falls through
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h = ((h ^ data[tail]) * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def java_partition(key: str, partitions: int) -> int:
    """``Utils.toPositive(Utils.murmur2(keyBytes)) % numPartitions``: the Java client's keyed partition."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def test_murmur2_is_kafkas():
    # org.apache.kafka.common.utils.UtilsTest#testMurmur2
    cases = {b"21": -973932308, b"foobar": -790332482, b"a-little-bit-long-string": -985981536,
             b"a-little-bit-longer-string": -1486304829, b"abc": 479470107,
             b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971}
    assert {k: murmur2(k) for k in cases} == cases


def read_all_partitions(bootstrap: str, topic: str, partitions: int, timeout_s: float = 30) -> list:
    """Every message of ``topic`` as ``(partition, key, decoded value)``, read partition by partition to EOF."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "test-partitions", "enable.auto.commit": False,
                  "enable.partition.eof": True, "allow.auto.create.topics": False, "log_level": 3})
    out, eof = [], set()
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout_s
        while len(eof) < partitions:
            assert time.monotonic() < deadline, f"timed out reading {topic} (EOF on {sorted(eof)})"
            msg = c.poll(0.5)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    eof.add(msg.partition())
                continue
            out.append((msg.partition(), msg.key().decode(), json.loads(msg.value())))
    finally:
        c.close()
    return out


@pytest.mark.parametrize("partitions", [3, 5])
def test_relay_puts_each_key_where_the_java_client_would(broker, tmp_path, partitions):
    """The relay's default partitioner is murmur2_random: every event is in murmur2(key) % partitions as the
    broker reports it; the snapshot chunks in ``snapshot_partition``. With librdkafka's default (CRC-32) the
    same keys land elsewhere, so this check tells the two apart."""
    from alarms.kafka.topics import snapshot_partition
    src = EventSource(str(tmp_path / "j.db"), start_ms=1_795_000_000_000, keys=60, seed=11)
    evs = src.journal_events(300)
    results = {}
    for name, conf in (("default", None), ("librdkafka consistent", {"partitioner": "consistent"})):
        prefix, path = f"part{partitions}{name[:3]}", tmp_path / f"{name[:3]}.db"
        journal = Journal(str(path))             # the same events, undelivered, for each relay
        journal.append(evs)
        journal.close()
        relay = KafkaRelay(str(path), broker.bootstrap, topic_prefix=prefix, tz=TZ, gateway_id=1,
                           line="demo-line-1", partitions=partitions, producer_config=conf,
                           snapshot_provider=src.snapshot, clock_ms=lambda: src.now_ms).start()
        wait_for(lambda: relay.stats()["delivered"] == len(evs) and relay.stats()["snapshots"] >= 1, 20,
                 "every delivery and a snapshot")
        relay.stop()
        (topic,) = relay.topics.known()
        msgs = read_all_partitions(broker.bootstrap, topic, partitions)
        results[name] = {(k, v["event_id"]): p for p, k, v in msgs if v["kind"] == "event"}
        assert sorted(results[name]) == sorted((e.key, e.event_id) for e in evs)
        snaps = [p for p, k, v in msgs if v["kind"] == "snapshot"]
        assert snaps and set(snaps) == {snapshot_partition(1, partitions)}
    keys = {e.key for e in evs}
    assert len({java_partition(k, partitions) for k in keys}) == partitions     # the keys spread
    assert all(p == java_partition(k, partitions) for (k, _), p in results["default"].items())
    assert all(p == zlib.crc32(k.encode()) % partitions for (k, _), p in results["librdkafka consistent"].items())
    assert any(java_partition(k, partitions) != zlib.crc32(k.encode()) % partitions for k in keys)
    src.close()


# -- docs/hmi-developer.md ------------------------------------------------------------------------------------

def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", HMI_DOC.read_text(encoding="utf-8"), re.S | re.M)


def test_hmi_doc_messages_follow_the_schema():
    blocks = [json.loads(b) for b in doc_blocks("json")]
    assert [b["kind"] for b in blocks] == ["event", "event", "snapshot"]
    validator = schema_validator()
    for b in blocks:
        validator.validate(b)
    assert blocks[0]["alarm"]["key"] == blocks[2]["alarms"][0]["alarm"]["key"]


def test_hmi_doc_partition_table_is_murmur2():
    rows = re.findall(r"^\| `([^`]+)` \| (-?\d+) \| (\d+) \|$", HMI_DOC.read_text(encoding="utf-8"), re.M)
    assert len(rows) >= 4
    for key, hashed, part in rows:
        assert (murmur2(key.encode()), java_partition(key, 3)) == (int(hashed), int(part)), key
    from alarms.kafka.topics import snapshot_partition
    assert "for gateway 1 and 3\npartitions: 0" in HMI_DOC.read_text(encoding="utf-8")
    assert snapshot_partition(1, 3) == 0


@pytest.mark.skipif(KCAT is None or JQ is None, reason="kcat or jq is not installed (apt install kcat jq)")
def test_hmi_doc_kcat_jq_rebuilds_the_table(broker, tmp_path):
    """The doc's kcat + jq pipeline, run as written with a state dir of its own, gives the engine's table from a
    snapshot and the events after it."""
    (script,) = [b for b in doc_blocks("sh") if "jq" in b]
    state = tmp_path / "hmi state"
    state.mkdir()
    (state / "kafka.bootstrap").write_text(broker.bootstrap)
    # the first events are yesterday's (yesterday's topic): today's topic has them only in its snapshot
    src = EventSource(str(tmp_path / "j.db"), start_ms=int(time.time() * 1000) - 86_400_000, keys=40, seed=21)
    first = src.journal_events(150)
    src.now_ms = int(time.time() * 1000)
    relay = KafkaRelay(str(tmp_path / "j.db"), broker.bootstrap, topic_prefix="railgate.alarms", tz=TZ,
                       gateway_id=1, line="demo-line-1", snapshot_provider=src.snapshot, snapshot_interval_s=3600,
                       clock_ms=lambda: src.now_ms).start()
    wait_for(lambda: relay.stats()["delivered"] == len(first) and relay.stats()["snapshots"] == 1, 20,
             "the first events and a snapshot")
    later = src.journal_events(40)
    relay.wake()
    wait_for(lambda: relay.stats()["delivered"] == len(first) + len(later), 20, "the later events")
    relay.stop()
    env = {**os.environ, "STATE_DIR": str(state), "TZ": "UTC",
           "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ.get('PATH', '')}"}
    res = subprocess.run(["bash", "-o", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    want = {k: e["state"] for k, e in src.true_table().items()}
    assert want and json.loads(res.stdout) == want
    src.close()
