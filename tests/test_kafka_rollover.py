"""Day topics across the line's local midnight (Asia/Shanghai, injected clock), real embedded broker."""
from __future__ import annotations

import io
import json
import threading
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from alarms.kafka.consumer import AlarmTableConsumer
from alarms.kafka.relay import KafkaRelay
from alarms.kafka.topics import next_midnight_ms, topic_for
from gateway.cli import alarms_cmd

from kafka_fixtures import TZ, EventSource, broker, wait_for  # noqa: F401 (fixture)
from test_kafka_relay import read_topic

SH = ZoneInfo(TZ)


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


def test_topic_for_uses_the_local_date_not_utc():
    # 23:59:59.999 in Shanghai is 15:59:59.999 UTC: same local day; one ms later is the next local day
    assert topic_for("p", ms("2026-11-23T23:59:59.999+08:00"), SH) == "p.20261123"
    assert topic_for("p", ms("2026-11-24T00:00:00.000+08:00"), SH) == "p.20261124"
    assert topic_for("p", ms("2026-11-23T16:30:00+00:00"), SH) == "p.20261124"       # UTC still the 23rd
    assert next_midnight_ms(ms("2026-11-23T12:00:00+08:00"), SH) == ms("2026-11-24T00:00:00+08:00")
    assert next_midnight_ms(ms("2026-11-24T00:00:00+08:00"), SH) == ms("2026-11-25T00:00:00+08:00")
    ny = ZoneInfo("America/New_York")      # a 23-hour day (DST starts 2026-03-08)
    assert next_midnight_ms(ms("2026-03-08T01:00:00-05:00"), ny) - ms("2026-03-08T00:00:00-05:00") == 23 * 3600_000


def test_relay_consumer_and_tail_follow_the_next_days_topic(broker, tmp_path):
    jpath = str(tmp_path / "journal.db")
    src = EventSource(jpath, start_ms=ms("2026-11-23T23:59:57.000+08:00"), keys=20, step_ms=100)
    clock = lambda: src.now_ms  # noqa: E731
    prefix = "roll"
    relay = KafkaRelay(jpath, broker.bootstrap, topic_prefix=prefix, tz=TZ, gateway_id=1, line="demo-line-1",
                       snapshot_provider=src.snapshot, clock_ms=clock, snapshot_interval_s=3600).start()
    out, stop = io.StringIO(), threading.Event()
    tail = threading.Thread(target=alarms_cmd.tail_main, args=(["--bootstrap", broker.bootstrap, "--prefix", prefix,
                                                                "--tz", TZ, "--json"],),
                            kwargs={"clock_ms": clock, "stop": stop.is_set, "out": out})
    got: dict[str, dict] = {}
    consumer = AlarmTableConsumer(broker.bootstrap, prefix, TZ, clock_ms=clock, replay=True,
                                  on_change=lambda c: c.kind == "event" and got.setdefault(c.event["event_id"], c.event))
    try:
        before = src.journal_events(20, per_txn=5)        # 2 s of events: still the 23rd
        relay.wake()
        assert consumer.wait_loaded(20)
        tail.start()
        wait_for(lambda: '"kind": "table"' in out.getvalue(), 20, "tail's table")
        after = src.journal_events(20, per_txn=5)         # crosses local midnight
        relay.wake()
        ids = {e.event_id for e in before + after}
        wait_for(lambda: ids <= set(got), 30, "events on both days", step=lambda: consumer.poll(0.1))
        seen = set(got)
        wait_for(lambda: all(e.event_id in out.getvalue() for e in after), 20, "tail printing the new day")
    finally:
        stop.set()
        relay.stop()
        tail.join(10)
        consumer.close()
    assert ids <= seen
    day1, day2 = f"{prefix}.20261123", f"{prefix}.20261124"
    assert consumer.topic == day2
    for topic, expect_date in ((day1, "2026-11-23"), (day2, "2026-11-24")):
        values = [json.loads(m.value()) for m in read_topic(broker.bootstrap, topic)]
        events = [v for v in values if v["kind"] == "event"]
        assert events and all(v["time"].startswith(expect_date) for v in events)
    assert {e.event_id for e in before if e.time_ms < ms("2026-11-24T00:00:00+08:00")} <= \
        {json.loads(m.value()).get("event_id") for m in read_topic(broker.bootstrap, day1)}
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert any(x.get("kind") == "rollover" and x["topic"] == day2 for x in lines)
    assert consumer.table.entries == src.true_table()
    src.close()


def test_tail_bad_usage_exits_2(capsys):
    assert alarms_cmd.tail_main(["--prefix", "x"]) == 2
    assert "missing --bootstrap, --tz" in capsys.readouterr().err
    assert alarms_cmd.tail_main(["--bootstrap", "127.0.0.1:1", "--tz", "Mars/Olympus"]) == 2
    assert "not an IANA time zone" in capsys.readouterr().err
    assert alarms_cmd.main(["nope"]) == 2
    assert "unknown subcommand 'nope'" in capsys.readouterr().err
