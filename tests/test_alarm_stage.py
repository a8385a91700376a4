"""The alarm stage inside a running gateway, end to end against real services: a DEVICE_ALARM
frame over TCP becomes an alarm in the admin API, on the embedded Kafka broker, in the
SQLite history and in the real Redis live table; an operator acknowledges it through the CLI;
the device clears it. Every Kafka message read back validates against the JSON Schema."""
from __future__ import annotations

import json
import pathlib
import uuid

import jsonschema
import pytest
import redis
import yaml
from gateway_harness import Device, QuietRelay, RunningGateway, line_config, read_alarm_events, wait_until

from alarms.history.store import SqliteHistory
from alarms.live.live_table import read_active
from gateway.app import config
from gateway.cli import alarms_action_cmd, alarms_cmd
from gateway.cli.status_cmd import render_text
from railcodecs import DeviceAlarm

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCHEMA = json.loads((ROOT / "docs" / "schema" / "alarm-message.schema.json").read_text())
KEY = "CI-2/DEVICE_ALARM_17/301"


@pytest.fixture
def redis_prefix():
    prefix = f"rgtest-stage-{uuid.uuid4().hex[:8]}"
    yield prefix
    client = redis.Redis(host="127.0.0.1", port=6379)
    for k in client.scan_iter(f"{prefix}:*"):
        client.delete(k)


def _line(tmp_path, redis_prefix):
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["alarms"] = {"snapshot_interval_s": 1}
    raw["redis"] = {"url": "redis://127.0.0.1:6379/0", "prefix": redis_prefix}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load(str(path)), str(path)


def _active(url: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"{url}/alarms", timeout=5) as r:
        return {e["alarm"]["key"]: e for e in json.loads(r.read())["alarms"]}


def test_device_alarm_to_kafka_history_redis_and_operator_ack(tmp_path, redis_prefix, capsys):
    cfg, cfg_path = _line(tmp_path, redis_prefix)
    client = redis.Redis(host="127.0.0.1", port=6379)
    with RunningGateway(cfg, admin=True, alarms=True) as gw:  # the relay in its supervised child process
        url = f"http://127.0.0.1:{gw.ports['admin']}"
        dev = Device(gw.ports["A"], dev_id=258, hb_ms=10_000)
        dev.hello()
        dev.send(DeviceAlarm(17, 2, DeviceAlarm.RAISE, 301, "point machine motor current high"), seq=1)
        wait_until(lambda: KEY in _active(url), what="alarm in the admin API")
        assert _active(url)[KEY]["state"] == "UNACK" and _active(url)[KEY]["severity"] == "major"
        wait_until(lambda: KEY in read_active(client, redis_prefix), what="alarm in the Redis live table")

        # operator actions through the CLI, with the token the gateway created in its state dir:
        # without it refused (401), an unknown key refused, the real one acknowledged
        assert alarms_action_cmd.ack_main(["--url", url, KEY, "--operator", "alice"]) == 1
        assert "refused (401)" in capsys.readouterr().err
        token = ["--token-file", str(pathlib.Path(cfg.gateway.state_dir) / "admin.token")]
        assert alarms_action_cmd.ack_main(["--url", url, "CI-2/NO_SUCH/-", "--operator", "alice", *token]) == 1
        assert "refused (404)" in capsys.readouterr().err
        assert alarms_action_cmd.ack_main(["--url", url, KEY, "--operator", "alice", *token]) == 0
        assert "UNACK -> ACKED by alice" in capsys.readouterr().out
        assert alarms_action_cmd.ack_main(["--url", url, KEY, "--operator", "alice", *token]) == 1  # already acked
        assert "refused (409)" in capsys.readouterr().err

        dev.send(DeviceAlarm(17, 2, DeviceAlarm.CLEAR, 301, ""), seq=2)
        wait_until(lambda: KEY not in _active(url), what="acked alarm cleared to NORMAL")
        wait_until(lambda: KEY not in read_active(client, redis_prefix), what="alarm gone from Redis")

        # Kafka: the day's topic has raise, ack, clear for the key, in order, each valid
        seen = read_alarm_events(cfg, lambda e: e["alarm"]["key"] == KEY, lambda evs: len(evs) >= 3,
                                 what="the three events on Kafka")
        bootstrap = (pathlib.Path(cfg.gateway.state_dir) / "kafka.bootstrap").read_text().strip()
        assert [e["transition"] for e in seen] == ["raise", "ack", "clear"]
        assert seen[1]["operator"] == "alice" and seen[2]["state"] == "NORMAL"
        for e in seen:
            jsonschema.validate(e, SCHEMA)
        assert [e["event_seq"] for e in seen] == sorted(e["event_seq"] for e in seen)

        # the CLI finds the embedded broker through the state dir
        assert alarms_cmd._settings(alarms_cmd.build_tail_parser().parse_args(["-c", cfg_path]))[0] == bootstrap
        # the relay child reports its figures every 0.5 s: wait for the report that covers the three
        def reported():
            st = gw.status()
            done = st["alarms"]["relay"]["delivered"] >= 3 and st["alarms"]["writers"]["history"]["written"] >= 3
            return st if done else None
        status = wait_until(reported, timeout=10, what="relay and history figures")
        json.dumps(status)
        text = render_text(status)
        assert "Alarms: " in text and "Kafka relay: " in text and "live writer: " in text

    # after a graceful stop everything journaled is in the history
    store = SqliteHistory(str(pathlib.Path(cfg.gateway.state_dir) / "history.db"))
    rows = store.query(source="CI-2")
    assert [r.transition for r in sorted(rows, key=lambda r: r.event_seq) if r.alarm_key == KEY] == \
        ["raise", "ack", "clear"]


def test_only_changes_into_or_out_of_an_alarming_value_are_queued(tmp_path):
    """Through the stage's own subscription to the line's object state (the apply filters)."""
    from alarms.observations import ObjectChange
    from alarms.sources import lane_of
    from gateway.app.alarm_stage import AlarmStage
    from gateway.line.line import Line
    from railcodecs import Frame, Signals, Switches, TrackSections
    cfg = config.parse(line_config(state_dir=str(tmp_path / "state")).raw, "t")
    line = Line(cfg)
    stage = AlarmStage(cfg, line)
    queued: list = []
    stage.service.submit = lambda item, priority=False: queued.append((item, lane_of(item))) or True
    stage.attach()
    changes = [Signals(((201, 0),)), TrackSections(((101, 1),)), TrackSections(((101, 2),)),
               TrackSections(((101, 0),)), TrackSections(((101, 1),)), Switches(((301, 2),)),
               Switches(((301, 3),)), Switches(((301, 0),)), Switches(((301, 1),))]
    for seq, msg in enumerate(changes, 1):
        line.objects.apply(Frame(257, 1, seq, 0, msg), 1000 + seq)
    assert [(c.kind, c.object_id, c.value) for c, _ in queued] == \
        [("TRACK_SECTIONS", 101, 2), ("TRACK_SECTIONS", 101, 0), ("SWITCHES", 301, 3), ("SWITCHES", 301, 0)]
    assert all(isinstance(c, ObjectChange) and lane == "essential" for c, lane in queued)



def test_under_load_only_samples_are_sampled_away_never_conditions_or_device_alarms(tmp_path):
    """Through the gateway's own wiring (EventLog and ObjectState subscriptions, ``ctx.alarm_sink``):
    with the alarm thread held, threat samples of one link coalesce (counted as sampled away), info
    events beyond the queue's bound are dropped (counted), and a condition, a section fault and a
    DEVICE_ALARM frame are still taken; the device alarm goes first once the thread runs again."""
    import threading

    from alarms.journal import Journal
    from alarms.model import AlarmEvent
    from alarms.observations import GatewayEvent, ThreatSample
    from railcodecs import Frame, TrackSections

    raw = line_config(state_dir=str(tmp_path / "state"), hello_timeout_ms=60_000).raw  # no start-up check
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}   # not embedded: no broker; the relay is quiet
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        ctx, svc = gw.ctx, gw.alarms.service
        svc.max_pending = 5
        held, hold = threading.Event(), threading.Event()
        svc.call(lambda engine: held.set() or hold.wait(10))    # keeps the alarm thread busy meanwhile
        try:
            assert held.wait(5)
            assert all(svc.submit(ThreatSample("net A", {"bad_crc": i}, 1000 + i, "CI-1")) for i in range(10))
            assert svc.stats["sampled_away"]["threat_sample"] == 9            # the newest one stays queued
            for i in range(8):
                assert svc.submit(GatewayEvent(1000 + i, "CONSIST_COUPLED", "consist 9", "x"))
            assert svc.stats["sampled_away"]["info_event"] == 3 and svc.stats["dropped_queue_full"] == 3

            now = ctx.now_ms()
            assert ctx.events.raise_condition("DEVICE_COMM_LOST", "CI-1", now, "no link up")
            ctx.objects.apply(Frame(258, 1, 1, now, TrackSections(((111, TrackSections.FAULT),))), now)
            ctx.device_message(None, Frame(258, 1, 2, now, DeviceAlarm(17, 2, DeviceAlarm.RAISE, 301, "motor")),
                               now)
        finally:
            hold.set()
        keys = {"CI-1/DEVICE_COMM_LOST/-", "CI-2/TRACK_SECTION_FAULT/111", KEY}
        active: set = set()

        def all_active() -> bool:
            active.update(e["alarm"]["key"] for e in svc.snapshot().result(5)[1])
            return keys <= active
        try:
            wait_until(all_active, what="the condition, the section fault and the device alarm in the engine")
        except AssertionError:
            assert sorted(keys - active) == [], "refused for a full queue"
    journal = Journal(str(tmp_path / "state" / "journal.db"))
    try:
        raised = [AlarmEvent.decode(r.value).key for r in journal.read_after(0, limit=1000)]
    finally:
        journal.close()
    # the critical condition and the device alarm ride the priority lane (in their order), the section
    # fault, submitted before the device alarm, comes after them
    assert [k for k in raised if k in keys] == ["CI-1/DEVICE_COMM_LOST/-", KEY, "CI-2/TRACK_SECTION_FAULT/111"]


def stage_with_one_link(tmp_path):
    """An AlarmStage on the test line with one registered link of its first device on net A, a clock
    the test moves (``clock[0]``, epoch ms) and the stage's submissions collected in ``sent``:
    ``(cfg, clock, stage, sent, link, line)``; ``link.checks`` may be replaced (a reconnect)."""
    from gateway.app.alarm_stage import AlarmStage
    from gateway.line.line import Line
    cfg = config.parse(line_config(state_dir=str(tmp_path / "state")).raw, "t")
    clock = [1_000_000]
    line = Line(cfg, clock_ms=lambda: clock[0])
    stage = AlarmStage(cfg, line)
    sent: list = []
    stage.service.submit = lambda item, priority=False: sent.append(item) or True

    class Link:  # what the registry and sample_threats read of a link
        def __init__(self):
            self.checks = line.receiver.new_link("t", 0)

    link = Link()
    line.registry.link_up(next(iter(line.registry.devices)), "A", link, clock[0])
    return cfg, clock, stage, sent, link, line


def test_threat_samples_skip_a_settled_link_and_the_monitor_decides_the_same(tmp_path):
    """sample_threats sends a link's counters every second while they moved within a threat window
    (and once more after it), then nothing until they move: fed to the real ThreatMonitor, those
    samples raise and clear exactly what a sample every second does, at the same times."""
    from alarms.observations import ThreatSample
    from railcodecs import Reason

    cfg, clock, stage, sent, link, line = stage_with_one_link(tmp_path)
    every: list = []
    script = {15: 6, 16: 1, 40: 2}  # second -> bad CRCs counted then
    for second in range(60):
        clock[0] = 1_000_000 + 1000 * second
        if second in script:
            link.checks.count(Reason.BAD_CRC, script[second])
        if second == 50:  # a new link object (a reconnect): sampled at once
            link.checks = line.receiver.new_link("t", 0)
        every.append(ThreatSample("net A", dict(link.checks.errors), clock[0], "x"))
        stage.sample_threats()
    times = [s.time_ms // 1000 - 1000 for s in sent]
    # no error counted from 0: the sample at 0 alone; errors at 15 and 16: 15..26, settled at 27 (27 s
    # > 16 s + the 10 s window); errors at 40: 40..49; the new link at 50, no error: the sample at 50
    assert times == [0] + list(range(15, 28)) + list(range(40, 51))

    got, want = threat_decisions(cfg, sent), threat_decisions(cfg, every)
    assert got == want and [d[1] for d in want] == ["RaiseAlarm", "ClearAlarm"]


def threat_decisions(cfg, samples):
    """What the real ThreatMonitor raises and clears for ``samples``, ticked every second as the alarm
    service ticks its sources (``Sources.tick``: a link without a sample for a window is forgotten)."""
    from alarms.sources import ThreatMonitor
    mon, out = ThreatMonitor(cfg.pipeline.alarms.threat_rates), []
    by_second: dict = {}
    for s in samples:
        by_second.setdefault(s.time_ms, []).append(s)
    first, last = min(by_second), max(by_second)
    for t in range(first, last + 1000, 1000):
        for s in by_second.get(t, []):
            out += [(s.time_ms, type(i).__name__, str(i.key))
                    for i in mon.sample(s.link_name, s.errors, s.time_ms, "x", s.baseline)]
        out += [(t, type(i).__name__, str(i.key)) for i in mon.tick(t)]
    return out


@pytest.mark.parametrize("reason, count, code", [("UNKNOWN_SOURCE", 1, "MASQUERADE_SUSPECTED"),
                                                 ("BAD_CRC", 5, "CORRUPTION")])
def test_errors_after_a_long_settled_spell_raise_as_with_a_sample_every_second(tmp_path, reason, count, code):
    """A link quiet for long enough that the monitor forgot it (tick), then errors at its limit in one
    second: the sample that carries them also carries the settled counters as its baseline, so the
    alarm is raised as a sample every second would raise it (without it the errors were the new
    baseline and a lone masquerade never raised anything)."""
    from alarms.observations import ThreatSample
    from railcodecs import Reason

    cfg, clock, stage, sent, link, line = stage_with_one_link(tmp_path)
    every: list = []
    for second in range(70):
        clock[0] = 1_000_000 + 1000 * second
        if second == 2:
            link.checks.count(Reason.BAD_CRC, 1)   # some counters to settle at
        if second == 50:                            # 37 s after settling: forgotten by the monitor
            link.checks.count(Reason[reason], count)
        every.append(ThreatSample("net A", dict(link.checks.errors), clock[0], "x"))
        stage.sample_threats()
    # a baseline: the first sample (0), the first after the no-error spell settled at once (2), and 50
    assert [s.time_ms // 1000 - 1000 for s in sent if s.baseline is not None] == [0, 2, 50]
    got, want = threat_decisions(cfg, sent), threat_decisions(cfg, every)
    assert got == want
    assert [(d[0] // 1000 - 1000, d[1], code in d[2]) for d in want] == [(50, "RaiseAlarm", True),
                                                                         (60, "ClearAlarm", True)]


def test_a_new_links_errors_in_its_first_second_count(tmp_path):
    """A link's first sample carries zeros as its baseline (its counters start at 0): a masquerade in the
    first second of a reconnected link raises its alarm, where the first sample used to be the
    baseline itself and hid it."""
    from railcodecs import Reason

    cfg, clock, stage, sent, link, line = stage_with_one_link(tmp_path)
    link.checks.count(Reason.BAD_CRC, 3)
    for second in range(12):
        clock[0] = 1_000_000 + 1000 * second
        if second == 5:                      # a reconnect whose first second brought a masquerade
            link.checks = line.receiver.new_link("t", 0)
            link.checks.count(Reason.UNKNOWN_SOURCE, 1)
        stage.sample_threats()
    got = threat_decisions(cfg, sent)
    assert [(d[0] // 1000 - 1000, d[1], d[2].split("/")[1]) for d in got] == [
        (5, "RaiseAlarm", "MASQUERADE_SUSPECTED")]
