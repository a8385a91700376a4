"""The HMI consumer's start-up across the line's local midnight (issue 15 item 6): today's table is rebuilt
from today's newest snapshot, or, before the relay's first snapshot of the day, from yesterday's; a consumer
that runs through midnight keeps its table. Real embedded broker (tansu), Asia/Shanghai (midnight is 16:00
UTC), an injected clock. The messages are the gateway's own: AlarmEngine events (``AlarmEvent.encode``) and
snapshot chunks (``build_chunks``), produced with the relay's producer settings, keys and partitions, to the
topic of each message's own time as the relay does."""
from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from confluent_kafka import Producer

from alarms.engine import AlarmEngine
from alarms.kafka.consumer import RDKAFKA_LOGGER, AlarmTableConsumer, previous_day_topic
from alarms.kafka.relay import PRODUCER_DEFAULTS
from alarms.kafka.snapshots import build_chunks
from alarms.kafka.topics import TopicManager, snapshot_key, snapshot_partition, topic_for

from kafka_fixtures import LINE, TZ, broker, wait_for  # noqa: F401 (fixture)

SH = ZoneInfo(TZ)
PARTITIONS = 3
A, B, C, D, E = (f"CI-1/DEVICE_COMM_LOST/obj{i}" for i in range(1, 6))


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).timestamp() * 1000)


class Gateway:
    """One gateway's side of the pipeline: a real engine, its events and snapshots published like the relay."""

    def __init__(self, bootstrap: str, prefix: str, *, start_seq: int = 0) -> None:
        self.prefix = prefix
        self.engine = AlarmEngine(1, LINE, TZ, start_seq=start_seq)
        # librdkafka's lines (reconnects once the module's broker is gone) to a logger, not stderr
        self.topics = TopicManager(bootstrap, PARTITIONS, timeout_s=5.0, admin_config={"logger": RDKAFKA_LOGGER})
        self.producer = Producer({"bootstrap.servers": bootstrap, **PRODUCER_DEFAULTS, "logger": RDKAFKA_LOGGER})
        self.errors: list = []

    def publish(self, events) -> None:
        """Each event to the topic of its own ``time_ms``, keyed by its alarm key (the relay's rule)."""
        for e in events:
            topic = self.topics.ensure(topic_for(self.prefix, e.time_ms, SH))
            self.producer.produce(topic, e.encode(), e.key.encode(), on_delivery=self._report)
        self._flush()

    def snapshot(self, time_ms: int, max_alarms: int = 500) -> list[str]:
        """The engine's table as snapshot chunks to the topic of ``time_ms``; returns the keys it lists."""
        seq, alarms = self.engine.snapshot()
        topic = self.topics.ensure(topic_for(self.prefix, time_ms, SH))
        for chunk in build_chunks(seq, alarms, gateway_id=1, line=LINE, time_ms=time_ms, tz=SH,
                                  max_alarms=max_alarms):
            self.producer.produce(topic, chunk, snapshot_key(1).encode(), partition=snapshot_partition(1, PARTITIONS),
                                  on_delivery=self._report)
        self._flush()
        return [a["alarm"]["key"] for a in alarms]

    def truth(self) -> dict:
        return {e["alarm"]["key"]: e for e in self.engine.snapshot()[1]}

    def _report(self, err, msg) -> None:
        if err is not None:
            self.errors.append(err)

    def _flush(self) -> None:
        assert self.producer.flush(10) == 0 and not self.errors, self.errors


def states(consumer: AlarmTableConsumer) -> dict:
    return {k: e["state"] for k, e in consumer.table.entries.items()}


def consume_until(consumer: AlarmTableConsumer, pred, what: str, timeout_s: float = 15) -> None:
    wait_for(pred, timeout_s, what, step=lambda: consumer.poll(0.1))


def test_previous_day_topic_goes_by_the_local_date_not_24_hours_back():
    assert previous_day_topic("p", ms("2026-11-24T00:00:05+08:00"), SH) == "p.20261123"   # UTC: still the 23rd
    assert previous_day_topic("p", ms("2026-11-24T23:59:59.999+08:00"), SH) == "p.20261123"
    ny = ZoneInfo("America/New_York")
    # after a 23-hour day (DST starts 2026-03-08) 24 hours back is two dates back
    assert previous_day_topic("p", ms("2026-03-09T00:30:00-04:00"), ny) == "p.20260308"
    # late on a 25-hour day (DST ends 2026-11-01) 24 hours back is the same date
    assert previous_day_topic("p", ms("2026-11-01T23:30:00-05:00"), ny) == "p.20261031"


def yesterday_with_a_snapshot(gw: Gateway) -> list:
    """Yesterday's topic (2026-11-23): events, a snapshot of 3 active alarms (2 chunks), events after it.
    Returns an event stamped 23:59:59.9 that is not published (the caller publishes it, late or not)."""
    eng = gw.engine
    # A was raised the day before yesterday (that topic is gone): only yesterday's snapshot has it
    eng.raise_(A, "major", "no link up", ms("2026-11-22T21:00:00+08:00"))
    gw.publish(eng.raise_(B, "minor", "no link up", ms("2026-11-23T23:50:00+08:00")) +
               eng.raise_(C, "critical", "no link up", ms("2026-11-23T23:50:01+08:00")) +
               eng.ack(B, "op1", ms("2026-11-23T23:51:00+08:00")))
    assert sorted(gw.snapshot(ms("2026-11-23T23:55:00+08:00"), max_alarms=2)) == [A, B, C]
    gw.publish(eng.ack(A, "op1", ms("2026-11-23T23:58:00+08:00")) +
               eng.raise_(D, "warning", "no link up", ms("2026-11-23T23:58:30+08:00")))
    return eng.ack(D, "op2", ms("2026-11-23T23:59:59.900+08:00"))


def test_started_before_todays_first_snapshot_it_rebuilds_from_yesterdays(broker):
    gw = Gateway(broker.bootstrap, "mid-y")
    gw.publish(yesterday_with_a_snapshot(gw))
    gw.publish(gw.engine.raise_(E, "major", "no link up", ms("2026-11-24T00:00:02+08:00")))   # today: no snapshot
    now = ms("2026-11-24T00:00:05+08:00")
    # a 2 s grace period has passed at 00:00:05: yesterday's topic is still read to its end, then dropped
    consumer = AlarmTableConsumer(broker.bootstrap, "mid-y", TZ, gateway_id=1, clock_ms=lambda: now, grace_s=2)
    try:
        assert consumer.wait_loaded(15)
        assert states(consumer) == {A: "ACKED", B: "ACKED", C: "UNACK", D: "ACKED", E: "UNACK"}
        assert consumer.table.entries == gw.truth()
        assert consumer.rebuilt_from == "yesterday" and consumer.counters["yesterday_loads"] == 1
        consume_until(consumer, lambda: consumer.assigned == ["mid-y.20261124"], "yesterday's topic dropped")
        assert consumer.table.entries == gw.truth()
    finally:
        consumer.close()


def test_started_before_the_day_topic_exists_it_shows_yesterdays_table_then_follows_today(broker):
    gw = Gateway(broker.bootstrap, "mid-e")
    late = yesterday_with_a_snapshot(gw)
    eng = gw.engine
    yesterday, today = "mid-e.20261123", "mid-e.20261124"
    now = ms("2026-11-24T00:00:05+08:00")
    consumer = AlarmTableConsumer(broker.bootstrap, "mid-e", TZ, gateway_id=1, clock_ms=lambda: now)
    try:
        assert consumer.wait_loaded(15)
        assert states(consumer) == {A: "ACKED", B: "ACKED", C: "UNACK", D: "UNACK"}
        assert consumer.rebuilt_from == "yesterday" and consumer.assigned == [yesterday]
        gw.publish(eng.clear(B, ms("2026-11-24T00:00:06+08:00")) +       # creates today's topic
                   eng.raise_(E, "major", "no link up", ms("2026-11-24T00:00:07+08:00")))
        expect = {A: "ACKED", C: "UNACK", D: "UNACK", E: "UNACK"}                      # B cleared today
        consume_until(consumer, lambda: states(consumer) == expect, "today's events")
        # within the grace period of the midnight: an event stamped 23:59:59.9, produced now, still counts
        assert sorted(consumer.assigned) == [yesterday, today]
        gw.publish(late)
        consume_until(consumer, lambda: states(consumer)[D] == "ACKED", "the late event of yesterday")
        assert consumer.table.entries == gw.truth()
    finally:
        consumer.close()


def test_with_a_snapshot_today_yesterday_is_not_read(broker):
    # yesterday's seqs are higher than today's (as after a gateway whose journal was replaced), so that the
    # table rules would keep yesterday's alarm X if yesterday's topic were read at all
    stale = Gateway(broker.bootstrap, "mid-t", start_seq=1000)
    x = "ZC-1/SIGNAL_LAMP_FAIL/objX"
    stale.publish(stale.engine.raise_(x, "critical", "lamp out", ms("2026-11-23T23:40:00+08:00")))
    assert stale.snapshot(ms("2026-11-23T23:50:00+08:00")) == [x]
    gw = Gateway(broker.bootstrap, "mid-t")
    eng = gw.engine
    gw.publish(eng.raise_(A, "major", "no link up", ms("2026-11-24T00:00:00.500+08:00")) +
               eng.raise_(B, "minor", "no link up", ms("2026-11-24T00:00:01+08:00")))
    assert sorted(gw.snapshot(ms("2026-11-24T00:00:02+08:00"))) == [A, B]
    gw.publish(eng.ack(A, "op1", ms("2026-11-24T00:00:03+08:00")))
    now = ms("2026-11-24T00:00:05+08:00")
    consumer = AlarmTableConsumer(broker.bootstrap, "mid-t", TZ, gateway_id=1, clock_ms=lambda: now)
    try:
        assert consumer.wait_loaded(15)
        assert states(consumer) == {A: "ACKED", B: "UNACK"}
        assert consumer.table.entries == gw.truth()
        assert consumer.rebuilt_from == "today" and consumer.counters["yesterday_loads"] == 0
        assert consumer.assigned == ["mid-t.20261124"]
    finally:
        consumer.close()


def test_a_consumer_running_through_midnight_keeps_its_table_and_follows_the_new_topic(broker):
    gw = Gateway(broker.bootstrap, "mid-r")
    eng = gw.engine
    gw.publish(eng.raise_(A, "major", "no link up", ms("2026-11-23T23:59:50+08:00")) +
               eng.raise_(B, "minor", "no link up", ms("2026-11-23T23:59:51+08:00")))
    gw.snapshot(ms("2026-11-23T23:59:52+08:00"))
    gw.publish(eng.raise_(C, "warning", "no link up", ms("2026-11-23T23:59:53+08:00")))
    clock = [ms("2026-11-23T23:59:58+08:00")]
    consumer = AlarmTableConsumer(broker.bootstrap, "mid-r", TZ, gateway_id=1, clock_ms=lambda: clock[0])
    try:
        assert consumer.wait_loaded(15)
        assert consumer.rebuilt_from == "today" and set(states(consumer)) == {A, B, C}
        clock[0] = ms("2026-11-24T00:00:02+08:00")
        gw.publish(eng.ack(B, "op1", ms("2026-11-24T00:00:01+08:00")) +      # the new day's topic, no snapshot
                   eng.raise_(D, "major", "no link up", ms("2026-11-24T00:00:02+08:00")))
        expect = {A: "UNACK", B: "ACKED", C: "UNACK", D: "UNACK"}
        consume_until(consumer, lambda: states(consumer) == expect, "the new day's events")
        assert consumer.topic == "mid-r.20261124" and consumer.counters["rollovers"] == 1
        assert sorted(consumer.assigned) == ["mid-r.20261123", "mid-r.20261124"]   # old one: grace period
        gw.snapshot(ms("2026-11-24T00:00:03+08:00"))                            # the day's first snapshot
        gw.publish(eng.clear(B, ms("2026-11-24T00:00:04+08:00")))
        consume_until(consumer, lambda: B not in consumer.table.entries, "the event after the snapshot")
        assert consumer.table.entries == gw.truth()
    finally:
        consumer.close()


def test_no_topics_at_all_is_an_empty_table_until_the_day_topic_comes(broker):
    now = ms("2026-11-24T00:00:05+08:00")
    consumer = AlarmTableConsumer(broker.bootstrap, "mid-n", TZ, gateway_id=1, clock_ms=lambda: now)
    try:
        for _ in range(8):
            assert consumer.poll(0.1) == []
        assert consumer.table.entries == {} and not consumer.loaded and consumer.assigned == []
        assert consumer.rebuilt_from == "none" and consumer.counters["yesterday_loads"] == 0
        gw = Gateway(broker.bootstrap, "mid-n")        # the relay's first snapshot of the day creates the topic
        gw.publish(gw.engine.raise_(A, "major", "no link up", ms("2026-11-24T00:00:06+08:00")))
        gw.snapshot(ms("2026-11-24T00:00:07+08:00"))
        assert consumer.wait_loaded(15)
        assert consumer.table.entries == gw.truth() and set(consumer.table.entries) == {A}
    finally:
        consumer.close()
