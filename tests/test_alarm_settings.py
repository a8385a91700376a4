"""parse_pipeline: defaults, full sections, and every problem named by its key path."""
from alarms.settings import PipelineSettings, parse_pipeline


def test_defaults_when_absent():
    s, problems = parse_pipeline({"gateway": {}})
    assert problems == [] and s == PipelineSettings()
    assert s.alarms.max_active == 10_000 and s.alarms.chatter.cycles == 3 and s.alarms.flood.window_s == 600
    assert s.kafka.embedded and s.history.kind == "sqlite" and s.redis is None


def test_full_document():
    raw = {"alarms": {"topic_prefix": "rg.alarms", "partitions": 6, "replication_factor": 4, "snapshot_interval_s": 5,
                      "max_active": 500, "chatter": {"cycles": 4, "window_s": 30, "quiet_s": 90}, "flood": {"alarms": 20},
                      "switch_lost_s": 2.5, "areas": {"north": ["IXL-1", "ZC-1"], "south": ["IXL-2"]},
                      "journal_retention_days": 3, "threat_rates": {"window_s": 5, "masquerade": 2}},
           "kafka": {"bootstrap_servers": "k1:9092, k2:9092", "config": {"linger.ms": 5, "acks": "all"}},
           "history": {"mysql": {"host": "db", "user": "rg", "password": "pw", "database": "alarms"},
                       "retention_days": 30},
           "redis": {"url": "redis://127.0.0.1:6379/0"}}
    s, problems = parse_pipeline(raw)
    assert problems == []
    assert s.alarms.engine_options() == {"max_active": 500, "chatter_cycles": 4, "chatter_window_s": 30,
                                         "chatter_quiet_s": 90, "flood_alarms": 20, "flood_window_s": 600,
                                         "areas": {"IXL-1": "north", "ZC-1": "north", "IXL-2": "south"}}
    assert s.alarms.journal_retention_days == 3 and s.history.retention_days == 30
    assert s.alarms.threat_rates.masquerade == 2 and s.alarms.threat_rates.corruption == 5
    assert s.kafka.bootstrap_servers == ("k1:9092", "k2:9092") and not s.kafka.embedded
    assert s.history.mysql.port == 3306 and s.history.mysql.pool_size == 4
    assert s.redis.prefix == "railgate"


def test_every_problem_names_its_key_path():
    raw = {"alarms": {"topic_prefix": "bad topic", "partitions": 0, "max_actve": 5, "chatter": {"cycles": "3"},
                      "flood": [], "switch_lost_s": -1, "threat_rates": {"window_s": 0, "masquerade": 1.5}},
           "kafka": {"bootstrap_servers": "k1", "config": {"x": [1]}},
           "history": {"mysql": {"host": "db", "port": 70000, "password": 5}},
           "redis": {"url": "http://x"}}
    _, problems = parse_pipeline(raw)
    paths = [p.split(":")[0] for p in problems]
    assert paths == ["alarms.max_actve", "alarms.flood", "alarms.threat_rates.window_s",
                     "alarms.threat_rates.masquerade", "alarms.topic_prefix", "alarms.partitions",
                     "alarms.chatter.cycles", "alarms.switch_lost_s", "kafka.bootstrap_servers",
                     "kafka.config.x", "history.mysql.password", "history.mysql.port", "history.mysql.user",
                     "history.mysql.database", "redis.url"]
    assert "alarms.partitions: expected an integer 1..1000, got 0" in problems
    assert "alarms.max_actve: unknown key" in problems[0]
    assert "history.mysql.password: expected a string, got '<hidden>'" in problems
    assert "history.mysql.user: missing (expected a non-empty string)" in problems


def test_wrong_section_shapes():
    _, problems = parse_pipeline({"kafka": 3, "history": "postgres", "alarms": "on"})
    assert problems == ["alarms: expected a mapping, got 'on'",
                        "kafka: expected 'embedded' or a mapping with bootstrap_servers, got 3",
                        "history: expected 'sqlite' or a mapping {mysql: {...}, retention_days: N}, got 'postgres'"]
    assert parse_pipeline([])[1] == ["(top level): expected a mapping, got []"]


def test_areas_and_retentions_are_checked():
    raw = {"alarms": {"areas": {"north": ["IXL-1"], "south": ["IXL-1"], "bad name": ["X"], "empty": []},
                      "journal_retention_days": 0},
           "history": {"retention_days": "90"}}
    s, problems = parse_pipeline(raw)
    assert "alarms.areas.south: device 'IXL-1' is already in area 'north' (a device is in one area)" in problems
    assert any(p.startswith("alarms.areas: expected area names") and "'bad name'" in p for p in problems)
    assert "alarms.areas.empty: expected a non-empty list of device names, got []" in problems
    assert "alarms.journal_retention_days: expected a number of days > 0 (at most 36500), got 0" in problems
    assert "history.retention_days: expected a number of days > 0 (at most 36500), got '90'" in problems
    assert parse_pipeline({"history": {"retention_days": 14}})[0].history.retention_days == 14
