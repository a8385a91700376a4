"""Line files: the demo validates; every problem is reported with its key path; live vs restart."""
from __future__ import annotations

import copy
import logging
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


def test_a_retired_key_loads_with_a_warning_naming_it(tmp_path, caplog):
    """gateway.udp_slabs sized the UDP slab pool, replaced by a fixed arena: an old file still loads, its
    value unread (not even checked), and the operator is told to remove it."""
    old = copy.deepcopy(DEMO)
    old["gateway"]["udp_slabs"] = 1024
    path = tmp_path / "old-line.yaml"
    path.write_text(yaml.safe_dump(old))
    with caplog.at_level(logging.WARNING, logger="railgate.config"):
        cfg = config.load(str(path))
    assert cfg.gateway.id and not hasattr(cfg.gateway, "udp_slabs")
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("railgate.config", "WARNING", "gateway.udp_slabs is no longer used: the UDP endpoint receives into a "
                                       "fixed arena of 64 x 144 B; remove it")]
    caplog.clear()
    old["gateway"]["udp_slabs"] = "lots"
    with caplog.at_level(logging.WARNING, logger="railgate.config"):
        assert config.parse(old, "old-line.yaml").gateway == cfg.gateway
        config.parse(DEMO, "demo-line.yaml")
    assert len(caplog.records) == 1  # the "lots" file; the demo line has no retired key


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
    ({"gateway__udp_coalesce_ms": -1}, "gateway.udp_coalesce_ms: expected an integer 0..100, got -1"),
    ({"gateway__loop_coalesce_ms": 101}, "gateway.loop_coalesce_ms: expected an integer 0..100, got 101"),
    ({"gateway__link_placement": "random"}, "gateway.link_placement: expected one of device, round_robin"),
    ({"gateway__listen__net_b": {"host": "127.0.0.1", "port": 17001}}, "gateway.listen.net_b: same address"),
])
def test_problems_name_the_key_path(edits, message):
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(**edits), "line.yaml")
    assert any(message in p for p in info.value.problems), info.value.problems
    assert str(info.value).startswith("line.yaml: 1 problem")


def test_udp_coalesce_ms_defaults_to_1():
    assert config.parse(broken(), "line.yaml").gateway.udp_coalesce_ms == 1
    assert config.parse(broken(gateway__udp_coalesce_ms=0), "line.yaml").gateway.udp_coalesce_ms == 0


def test_loop_coalesce_ms_defaults_to_1():
    assert config.parse(broken(), "line.yaml").gateway.loop_coalesce_ms == 1
    assert config.parse(broken(gateway__loop_coalesce_ms=0), "line.yaml").gateway.loop_coalesce_ms == 0


def test_link_placement_defaults_to_device():
    assert config.parse(broken(), "line.yaml").gateway.link_placement == "device"
    assert config.parse(broken(gateway__link_placement="round_robin"), "line.yaml").gateway.link_placement == \
        "round_robin"


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


# -- strict files: unknown keys, repeated keys, cross-checks, unreadable text ----------------------
def with_key(path: str, key: str, value=1):
    """The demo document with ``key: value`` added in the mapping at ``path`` (dots; ``devices.1``)."""
    d = copy.deepcopy(DEMO)
    node = d
    for part in filter(None, path.split(".")):
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    node[key] = value
    return d


@pytest.mark.parametrize("path, key, message", [
    ("", "gatway", "gatway: unknown key (did you mean 'gateway'?)"),
    ("", "colour", "colour: unknown key (expected one of gateway, line, devices, trains, coupling, alarms, "
                   "kafka, history, redis, track, control)"),
    ("gateway", "heartbeat", "gateway.heartbeat: unknown key (did you mean 'heartbeat_ms'?)"),
    ("gateway.listen", "upd", "gateway.listen.upd: unknown key (did you mean 'udp'?)"),
    ("gateway.listen.net_a", "prot", "gateway.listen.net_a.prot: unknown key (did you mean 'port'?)"),
    ("gateway.admin", "prot", "gateway.admin.prot: unknown key (did you mean 'port'?)"),
    ("gateway.log", "levl", "gateway.log.levl: unknown key (did you mean 'level'?)"),
    ("line", "timezon", "line.timezon: unknown key (did you mean 'timezone'?)"),
    ("line", "colour", "line.colour: unknown key (expected one of name, timezone)"),
    ("devices.1", "mac_kye", "devices[1].mac_kye: unknown key (did you mean 'mac_key'?)"),
    ("devices.3", "signal", "devices[3].signal: unknown key (did you mean 'signals'?)"),
    ("trains", "consits", "trains.consits: unknown key (did you mean 'consists'?)"),
    ("alarms", "max_actve", "alarms.max_actve: unknown key (did you mean 'max_active'?)"),
    ("alarms.chatter", "cycle", "alarms.chatter.cycle: unknown key (did you mean 'cycles'?)"),
    ("alarms.threat_rates", "masqerade", "alarms.threat_rates.masqerade: unknown key (did you mean 'masquerade'?)"),
    ("redis", "prefx", "redis.prefx: unknown key (did you mean 'prefix'?)"),
    ("coupling", "wokers", "coupling.wokers: unknown key (did you mean 'workers'?)"),
])
def test_an_unknown_key_is_a_problem_naming_the_closest_known_one(path, key, message):
    d = with_key(path, key)
    if path == "redis":
        d["redis"]["url"] = "redis://127.0.0.1:6379/0"
    with pytest.raises(config.ConfigError) as info:
        config.parse(d, "line.yaml")
    assert info.value.problems == [message]


def test_unknown_keys_of_the_external_pipeline_sections():
    d = copy.deepcopy(DEMO)
    d["kafka"] = {"bootstrap_servers": "k1:9092", "confg": {}}
    d["history"] = {"mysql": {"host": "db", "user": "rg", "database": "a", "pasword": "x"}}
    with pytest.raises(config.ConfigError) as info:
        config.parse(d, "line.yaml")
    assert info.value.problems == ["kafka.confg: unknown key (did you mean 'config'?)",
                                   "history.mysql.pasword: unknown key (did you mean 'password'?)"]
    d["history"] = {"mysq": {"host": "db"}}
    with pytest.raises(config.ConfigError) as info:
        config.parse(d, "line.yaml")
    assert "history.mysq: unknown key (did you mean 'mysql'?)" in info.value.problems


def test_a_misspelt_timezone_no_longer_moves_the_topics_to_utc():
    d = copy.deepcopy(DEMO)
    d["line"] = {"name": "l", "timezon": "Asia/Shanghai"}
    with pytest.raises(config.ConfigError, match=r"line\.timezon: unknown key \(did you mean 'timezone'\?\)"):
        config.parse(d, "line.yaml")


def write(tmp_path, text: str | bytes, name: str = "line.yaml") -> str:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return str(path)


def test_a_key_given_twice_is_a_problem_with_its_line(tmp_path):
    text = (ROOT / "config" / "demo-line.yaml").read_text()
    lines = text.splitlines()
    port = next(i for i, line in enumerate(lines) if "net_b:" in line)
    lines.insert(port + 1, "    net_b: {host: 127.0.0.1, port: 17003}")
    name = next(i for i, line in enumerate(lines) if line.startswith("  name: demo-line-1"))
    lines.insert(name + 1, "  name: other")
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, "\n".join(lines)))
    assert info.value.problems == [
        f"line {port + 2}: key 'net_b' appears twice in this mapping (first on line {port + 1})",
        f"line {name + 2}: key 'name' appears twice in this mapping (first on line {name + 1})"]
    assert str(info.value).startswith(f"{tmp_path / 'line.yaml'}: 2 problems")
    flow = text.replace("udp: {host: 127.0.0.1, port: 17100}", "udp: {host: 127.0.0.1, port: 17100, port: 17101}")
    udp = flow.splitlines().index("    udp: {host: 127.0.0.1, port: 17100, port: 17101}") + 1
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, flow))
    assert info.value.problems == [f"line {udp}: key 'port' appears twice in this mapping (first on line {udp})"]


def test_a_key_beside_a_merge_overrides_it_and_is_no_repeat(tmp_path):
    text = (ROOT / "config" / "demo-line.yaml").read_text().replace(
        "  listen:\n", "  listen:\n    base: &loop {host: 127.0.0.1, port: 1}\n", 1).replace(
        "    net_a: {host: 127.0.0.1, port: 17001}", "    net_a: {<<: *loop, port: 17001}")
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text))
    # the anchor's holder is an unknown key; the merged-and-overridden port is not a repeat
    assert info.value.problems == ["gateway.listen.base: unknown key (expected one of net_a, net_b, udp)"]


def test_a_file_that_is_not_utf8_is_one_problem_naming_the_line(tmp_path):
    text = (ROOT / "config" / "demo-line.yaml").read_bytes().replace(b"name: demo-gw", b"name: d\xe9mo-gw")
    offset = text.index(b"\xe9")
    line = text[:offset].count(b"\n") + 1
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text))
    assert info.value.problems == [f"line {line}: not UTF-8 text (byte 0xe9 at offset {offset}); "
                                   "save the file as UTF-8"]
    assert str(info.value).startswith(f"{tmp_path / 'line.yaml'}: 1 problem")


@pytest.mark.parametrize("text, problem", [
    ("gateway: {id: 1\n  name: [\n", "line 2, column 7: not valid YAML: expected ',' or '}', but got ':' "
                                     "(while parsing a flow mapping)"),
    ("gateway:\n  id: \x01\n", "line 2: not valid YAML: character #x0001: special characters are not allowed"),
    ("a: 1\n---\nb: 2\n", "line 2, column 1: not valid YAML: but found another document "
                          "(expected a single document in the stream)"),
    ("", "(top level): the file is empty (expected a mapping with gateway:, line:, devices:, trains:)"),
])
def test_a_file_that_is_not_one_yaml_mapping_is_one_line(tmp_path, text, problem):
    with pytest.raises(config.ConfigError) as info:
        config.load(write(tmp_path, text))
    assert info.value.problems == [problem]


def test_two_devices_with_one_name_would_share_alarm_keys():
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(devices__2__name="CI-1"), "line.yaml")
    assert info.value.problems == ["devices[2].name: 'CI-1' is already the name of devices[0] "
                                   "(alarm keys would collide)"]
    with pytest.raises(config.ConfigError) as info:  # '/' cannot be in an alarm key: CI/1 becomes CI_1
        config.parse(broken(devices__0__name="CI_1", devices__3__name="CI/1"), "line.yaml")
    assert info.value.problems == ["devices[3].name: 'CI/1' gives the same alarm key as 'CI_1' of devices[0] "
                                   "(alarm keys would collide)"]


def test_a_train_belongs_to_one_consist():
    consists = dict(DEMO["trains"]["consists"])
    consists[19] = [1044, 1025]
    with pytest.raises(config.ConfigError) as info:
        config.parse(broken(trains__consists=consists), "line.yaml")
    assert info.value.problems == ["trains.consists.19: train 1044 is already in consist 18 "
                                   "(a train belongs to one consist)"]
    with pytest.raises(config.ConfigError) as info:  # 10 and "10" are one consist
        config.parse(broken(trains__consists={10: [1025, 1026], "10": [1027, 1028]}), "line.yaml")
    assert info.value.problems == ["trains.consists.10: consist 10 is listed twice (as 10 and as '10')"]


@pytest.mark.parametrize("mac", ["off", None])
def test_a_mac_key_on_a_device_without_mac_is_a_problem(mac):
    d = copy.deepcopy(DEMO)
    d["devices"][1]["mac_key"] = "ab" * 16
    if mac is None:
        d["devices"][1].pop("mac")  # off by default
    else:
        d["devices"][1]["mac"] = mac
    with pytest.raises(config.ConfigError) as info:
        config.parse(d, "line.yaml")
    assert info.value.problems == ["devices[1].mac_key: given, but mac is 'off' (set mac: optional or required, "
                                   "or remove the key)"]
    assert "ab" * 16 not in str(info.value)
