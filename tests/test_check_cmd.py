"""`gateway check` (validate, print the effective config with secrets masked) and the version everywhere."""
from __future__ import annotations

import copy
import json
import pathlib
import platform
import tomllib
from importlib import metadata

import pytest
import yaml

from gateway import cli
from railcodecs import speedups
from gateway.app import config
from gateway.app.metrics import render_metrics
from gateway.base import version as version_module
from gateway.cli.check_cmd import effective, main
from gateway.cli.status_cmd import render_text
from gateway_harness import RunningGateway, line_config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEMO_FILE = ROOT / "config" / "demo-line.yaml"
COMPOSE_FILE = ROOT / "config" / "compose-line.yaml"
DEMO = yaml.safe_load(DEMO_FILE.read_text())
KEY_HEX = DEMO["devices"][0]["mac_key"]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def write(tmp_path, doc: dict, name: str = "line.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return str(path)


def test_a_valid_file_prints_its_effective_config_with_defaults(capsys):
    assert main(["-c", str(DEMO_FILE)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"# {DEMO_FILE}: valid. Effective configuration: defaults filled in, secrets shown as ***.")
    doc = yaml.safe_load(out)
    gw = doc["gateway"]
    # defaults the file does not state, under the keys the file would use
    assert gw["dead_after_heartbeats"] == 3 and gw["hello_timeout_ms"] == 5000
    assert gw["output_high_water_bytes"] == 1 << 20
    assert gw["admin"]["host"] == "127.0.0.1" and gw["admin"]["port"] == 17080
    assert gw["log"]["level"] == "INFO" and gw["log"]["file"] is None
    assert gw["listen"]["udp"] == {"host": "127.0.0.1", "port": 17100}
    assert doc["line"] == {"name": "demo-line-1", "timezone": "Asia/Shanghai"}
    assert doc["alarms"]["max_active"] == 10_000 and doc["alarms"]["chatter"] == {"cycles": 3, "window_s": 60, "quiet_s": 60}
    assert doc["kafka"] == "embedded" and doc["history"] == {"retention_days": 90} and "redis" not in doc
    assert doc["coupling"]["workers"] == 1 and doc["trains"]["consists"][9] == [1025, 1026]
    assert [d["kind"] for d in doc["devices"]] == ["interlocking", "interlocking", "zone_controller", "platform_doors"]
    assert doc["devices"][0]["mac_key"] == "***" and doc["devices"][1]["mac_key"] is None
    assert KEY_HEX not in out and KEY_HEX[:16] not in out


def test_json_output_masks_the_same_secrets(capsys):
    assert main(["-c", str(COMPOSE_FILE), "--json"]) == 0
    out = capsys.readouterr().out
    answer = json.loads(out)
    assert answer["valid"] is True and answer["source"] == str(COMPOSE_FILE)
    cfg = answer["config"]
    assert cfg["devices"][0]["mac_key"] == "***" and cfg["history"]["mysql"]["password"] == "***"
    assert cfg["history"]["mysql"]["user"] == "railgate" and cfg["redis"]["url"] == "redis://redis:6379/0"
    assert cfg["kafka"]["bootstrap_servers"].startswith("kafka-1:9092,")
    assert KEY_HEX not in out and "railgate-change-me" not in out


def test_passwords_in_urls_and_librdkafka_secrets_are_masked(tmp_path, capsys):
    doc = copy.deepcopy(DEMO)
    doc["redis"] = {"url": "redis://alarms:pa55-in-url@redis:6379/0"}
    doc["kafka"] = {"bootstrap_servers": "k1:9092", "config": {"sasl.password": "kafka-pa55", "linger.ms": 5,
                                                               "sasl.oauthbearer.client.secret": "oauth-pa55"}}
    for args in (["-c", write(tmp_path, doc)], ["-c", write(tmp_path, doc), "--json"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "pa55" not in out and KEY_HEX not in out
        shown = json.loads(out)["config"] if "--json" in args else yaml.safe_load(out)
        assert shown["redis"]["url"] == "redis://alarms:***@redis:6379/0"
        assert shown["kafka"]["config"] == {"sasl.password": "***", "linger.ms": 5,
                                            "sasl.oauthbearer.client.secret": "***"}


@pytest.mark.parametrize("path", [DEMO_FILE, COMPOSE_FILE])
def test_the_effective_config_is_a_line_file_that_means_the_same(path):
    cfg = config.load(str(path))
    assert config.parse(effective(cfg, mask=False), str(path)) == cfg


def test_an_invalid_file_lists_every_problem_and_exits_2(tmp_path, capsys):
    doc = copy.deepcopy(DEMO)
    doc["line"]["timezon"] = "Europe/Paris"
    doc["devices"][2]["name"] = "CI-1"
    doc["devices"][3]["mac_key"] = KEY_HEX
    doc["trains"]["consists"][19] = [1025, 1027]
    doc["gateway"]["heartbeat_ms"] = 1
    path = write(tmp_path, doc)
    expected = ["gateway.heartbeat_ms: expected an integer 50..60000, got 1",
                "line.timezon: unknown key (did you mean 'timezone'?)",
                "devices[3].mac_key: given, but mac is 'off' (set mac: optional or required, or remove the key)",
                "trains.consists.19: train 1025 is already in consist 9 (a train belongs to one consist)",
                "devices[2].name: 'CI-1' is already the name of devices[0] (alarm keys would collide)"]
    assert main(["-c", path]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"gateway check: invalid configuration\n{path}: 5 problems\n")
    assert [line.strip() for line in err.splitlines()[2:]] == expected
    assert main(["-c", path, "--json"]) == 2
    out, err = capsys.readouterr()
    assert json.loads(out) == {"source": path, "valid": False, "problems": expected} and err == ""
    assert KEY_HEX not in out


def test_a_repeated_key_or_a_file_that_is_not_utf8_exits_2_naming_the_line(tmp_path, capsys):
    path = tmp_path / "line.yaml"
    path.write_text(DEMO_FILE.read_text().replace("  heartbeat_ms: 500\n",
                                                  "  heartbeat_ms: 500\n  heartbeat_ms: 600\n"))
    line = path.read_text().splitlines().index("  heartbeat_ms: 600") + 1
    assert main(["-c", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"  line {line}: key 'heartbeat_ms' appears twice in this mapping (first on line {line - 1})\n" in err
    path.write_bytes(b"gateway:\n  name: \xff\n")
    assert main(["-c", str(path), "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["problems"] == [
        "line 2: not UTF-8 text (byte 0xff at offset 17); save the file as UTF-8"]
    assert main(["-c", str(tmp_path / "missing.yaml")]) == 2
    assert "(file): cannot read: No such file or directory" in capsys.readouterr().err


def test_usage(capsys):
    assert main([]) == 2 and "-c/--config" in capsys.readouterr().err
    assert cli.main(["--help"]) == 0 and "check" in capsys.readouterr().out


# -- the version -------------------------------------------------------------------------------
@pytest.mark.parametrize("argv", [["--version"], ["check", "--version"], ["status", "--version"],
                                  ["run", "-c", "x.yaml", "--version"], ["simulate", "--version"]])
def test_version_from_the_command_line(argv, capsys):
    assert cli.main(argv) == 0
    assert capsys.readouterr().out == f"railgate {VERSION}\n"


def test_version_of_the_simulators_alone(capsys):
    from simulators.cli import main as simulate
    assert simulate(["--version"]) == 0
    assert capsys.readouterr().out == f"railgate {VERSION}\n"


def test_version_after_a_double_dash_is_an_argument(capsys):
    assert cli.main(["frobnicate", "--version"]) == 2 and "unknown command" in capsys.readouterr().err
    assert cli.main(["decode", "--", "--version"]) == 2  # decode's own complaint: not hex


def test_version_falls_back_to_pyproject_then_unknown(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module.metadata, "version", not_installed)
    version_module.version.cache_clear()
    try:
        assert version_module.version() == VERSION
        version_module.version.cache_clear()
        monkeypatch.setattr(version_module, "_PYPROJECT", tmp_path / "pyproject.toml")
        assert version_module.version() == "unknown"
        version_module.version.cache_clear()
        (tmp_path / "pyproject.toml").write_text('[project]\nname = "other"\nversion = "9.9.9"\n')
        assert version_module.version() == "unknown"
    finally:
        version_module.version.cache_clear()


def test_version_in_status_status_view_and_metrics():
    with RunningGateway(line_config()) as gw:
        status = gw.status()
    assert status["version"] == VERSION
    assert render_text(status).splitlines()[0].startswith(
        f"gateway 1 demo-gw  version {VERSION} ({speedups.implementation()})  up ")
    metrics = render_metrics(status)
    assert (f'railgate_build_info{{version="{VERSION}",python="{platform.python_version()}",'
            f'implementation="{speedups.implementation()}"}} 1') in metrics.splitlines()
    assert status["implementation"] == speedups.implementation()
    assert f'railgate_info{{gateway_id="1",name="demo-gw",version="{VERSION}"}} 1' in metrics.splitlines()
    assert "# TYPE railgate_build_info gauge" in metrics
    # a status without a version (an older gateway's) still gives this build's labels
    assert f'railgate_build_info{{version="{VERSION}",' in render_metrics({})
