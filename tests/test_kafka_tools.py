"""Topics, snapshot chunks and kcat against a real embedded broker (tansu)."""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import time

import pytest

from alarms.kafka.consumer import AlarmTable
from alarms.kafka.relay import KafkaRelay
from alarms.kafka.snapshots import SnapshotAssembler, build_chunks
from alarms.kafka.topics import TopicManager
from zoneinfo import ZoneInfo

from kafka_fixtures import TZ, EventSource, broker, wait_for  # noqa: F401 (fixture)

KCAT = shutil.which("kcat")


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
