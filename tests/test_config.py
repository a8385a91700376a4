"""Line files: the demo validates; every problem is reported with its key path; live vs restart."""
from __future__ import annotations

import copy
import pathlib
import threading

import pytest
import yaml

from gateway.app import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO = yaml.safe_load((ROOT / "config" / "demo-line.yaml").read_text())


def test_every_shipped_config_validates():
    files = sorted((ROOT / "config").glob("*.yaml"))
    assert files
    for path in files:
        cfg = config.load(str(path))
        assert cfg.gateway.id and cfg.devices


def test_demo_line_contents():
    cfg = config.load(str(ROOT / "config" / "demo-line.yaml"))
    assert cfg.timezone == "Asia/Shanghai" and len(cfg.trains.ids) == 20
    assert cfg.device(257).mac == "required" and len(cfg.device(257).mac_key) == 32
    assert cfg.senders()[1025] == 4 and cfg.senders()[513] == 2
    assert cfg.gateway.io_threads == 1 and cfg.gateway.heartbeat_ms == 500


def broken(**edits):
    d = copy.deepcopy(DEMO)
    for path, value in edits.items():
        node = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return d


@pytest.mark.parametrize("edits, message", [
    ({"gateway__listen__net_a__port": "abc"}, "gateway.listen.net_a.port: expected an integer 0..65535, got 'abc'"),
    ({"gateway__heartbeat_ms": 10}, "gateway.heartbeat_ms: expected an integer 50..60000, got 10"),
    ({"devices__1__kind": "foo"}, "devices[1].kind: expected one of interlocking, zone_controller, platform_doors"),
    ({"devices__0__mac_key": "zz"}, "devices[0].mac_key: character 1 of 2 is not a hex digit (value not shown)"),
    ({"devices__1__nets": ["C"]}, "devices[1].nets: expected [A], [B] or [A, B]"),
    ({"devices__1__id": 257}, "devices[1].id: 257 is already used by devices[0]"),
    ({"line__timezone": "Mars/Base"}, "line.timezone: expected an IANA time zone"),
    ({"trains__consists": {9: [1025, 1025]}}, "trains.consists.9: expected two different train ids"),
    ({"gateway__log": {"level": "LOUD"}}, "gateway.log.level: expected one of DEBUG, INFO, WARNING, ERROR"),
    ({"gateway__listen__net_b": {"host": "127.0.0.1", "port": 17001}}, "gateway.listen.net_b: same address"),
])
def test_problems_name_the_key_path(edits, message):
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(**edits), "line.yaml")
    assert any(message in p for p in info.value.problems), info.value.problems
    assert str(info.value).startswith("line.yaml: 1 problem")


def test_all_problems_at_once():
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(gateway__id=0, devices__0__kind="x", trains__ids="many"), "f")
    assert len(info.value.problems) >= 3


def test_unreadable_and_invalid_yaml(tmp_path):
    with pytest.raises(config.ConfigError, match="cannot read"):
        config.load(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("gateway: {id: 1\n  name: [\n")
    with pytest.raises(config.ConfigError, match=r"line \d+, column \d+: not valid YAML"):
        config.load(str(bad))
    with pytest.raises(config.ConfigError, match="expected a mapping"):
        config.parse([1, 2], "list.yaml")


def test_diff_separates_live_from_restart():
    old = config.parse(DEMO, "a")
    new = config.parse(broken(gateway__heartbeat_ms=300, gateway__io_threads=4, gateway__max_age_ms=1500), "b")
    live, restart = config.diff(old, new)
    assert live == ["gateway.heartbeat_ms", "gateway.max_age_ms"] and restart == ["gateway.io_threads"]


def test_singleton_accessor_is_thread_safe():
    cfgs = [config.parse(broken(gateway__heartbeat_ms=100 + i), str(i)) for i in range(4)]
    seen = set()

    def reader():
        for _ in range(2000):
            seen.add(config.current().gateway.heartbeat_ms)

    config.install(cfgs[0])
    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    for c in cfgs[1:]:
        config.install(c)
    for t in threads:
        t.join()
    assert seen <= {100, 101, 102, 103} and config.current() is cfgs[-1]


def test_pipeline_and_coupling_sections_are_validated_with_the_rest():
    raw = yaml.safe_load((ROOT / "config" / "demo-line.yaml").read_text())
    raw["alarms"] = {"partitions": 0}
    raw["coupling"] = {"workers": "many"}
    raw["gateway"]["listen"]["net_a"]["port"] = "abc"
    with pytest.raises(config.ConfigError) as err:
        config.parse(raw, "x.yaml")
    text = str(err.value)
    assert "alarms.partitions" in text and "coupling.workers" in text and "gateway.listen.net_a.port" in text
    assert "3 problems" in text
    cfg = config.load(str(ROOT / "config" / "demo-line.yaml"))
    assert cfg.pipeline.kafka.embedded and cfg.pipeline.history.kind == "sqlite"
    assert cfg.coupling.workers >= 1


@pytest.mark.parametrize("key, shape", [
    ("ab" * 31 + "c", "63 hex digits, need an even number and at least 32"),
    ("ab" * 8, "16 hex digits, need an even number and at least 32"),
    ("ab" * 20 + "xy", "character 41 of 42 is not a hex digit"),
    (1234567890123456789, "expected hex text, got a int"),
])
def test_a_rejected_mac_key_is_described_never_echoed(key, shape):
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(devices__0__mac_key=key), "line.yaml")
    text = str(info.value)
    assert f"devices[0].mac_key: {shape}" in text and "(value not shown)" in text
    assert str(key) not in text and str(key)[:12] not in text


def test_a_device_repr_never_shows_its_key():
    cfg = config.parse(copy.deepcopy(DEMO), "demo")
    dev = next(d for d in cfg.devices if d.mac_key is not None)
    assert dev.mac_key.hex() not in repr(dev) and "mac_key" not in repr(dev)
    assert dev.mac_key.hex() not in repr(cfg)
