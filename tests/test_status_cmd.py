"""`gateway status` against a real AdminServer serving a sample status dict."""
from __future__ import annotations

import copy
import json
import pathlib
import socket
import time

import pytest
import yaml

from gateway.adapters.admin_http import AdminServer
from gateway.app.admin_routes import AdminRoutes
from gateway.cli.status_cmd import CLEAR, main
from gateway.cli.status_watch import rates, render_watch
from test_admin_http import SAMPLE_STATUS

DEMO_CONFIG = pathlib.Path(__file__).parent.parent / "config" / "demo-line.yaml"


@pytest.fixture
def server():
    srv = AdminServer(routes=AdminRoutes(lambda: SAMPLE_STATUS).table())
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture
def url(server) -> str:
    return f"http://127.0.0.1:{server.port}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_text_view_shows_devices_links_trains_with_units(url, capsys):
    assert main(["--url", url]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "demo-gw" in lines[0] and "12.5 s" in lines[0]
    device_row = next(i for i, line in enumerate(lines) if line.split()[:2] == ["257", "CI-1"])
    assert "interlocking" in lines[device_row]
    # the device's links follow it, net A then net B
    assert lines[device_row + 1].split()[0] == "NET"
    assert lines[device_row + 2].split()[:3] == ["A", "yes", "up"] and "bad_crc=1" in lines[device_row + 2]
    assert lines[device_row + 3].split()[:3] == ["B", "NO", "closed"]
    for unit in ("LAST RX (ms)", "SPEED (cm/s)", "OFFSET (cm)", "(frames)", "(bytes)"):
        assert unit in out
    train_row = next(line for line in lines if line.split()[:1] == ["1025"])
    assert "1500" in train_row and "coupled (2)" in train_row and "master (1)" in train_row
    assert "io-0" in out and "5 in use of 4096" in out and "UDP: 5000 datagrams received, errors: bad_size=2" in out
    assert "LINK_DOWN" in out and "net B heartbeat timeout" in out and "LINK_REDUNDANCY_LOST" in out
    assert "2026-11-18T19:06:40.000+08:00" in out  # event times in the line's zone (from started_at)


def test_json_output_equals_the_status(url, capsys):
    assert main(["--url", url + "/", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == SAMPLE_STATUS


def test_config_gives_the_admin_address(server, tmp_path, capsys):
    doc = yaml.safe_load(DEMO_CONFIG.read_text())
    doc["gateway"]["admin"] = {"host": "127.0.0.1", "port": server.port}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert main(["-c", str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "demo-gw"


def test_unreachable_gateway_exits_1_saying_so(capsys):
    port = free_port()
    assert main(["--url", f"http://127.0.0.1:{port}"]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"gateway status: cannot reach http://127.0.0.1:{port}/status: ")
    assert err.rstrip().endswith("(is the gateway running?)")


def test_gateway_error_answer_exits_1():
    srv = AdminServer(routes=AdminRoutes(lambda: 1 / 0).table())
    srv.start()
    try:
        assert main(["--url", f"http://127.0.0.1:{srv.port}"]) == 1
    finally:
        srv.stop()


@pytest.mark.parametrize("argv", [["--interval", "0"], ["--interval", "soon"], ["--url", "u", "-c", "c"],
                                  ["--bogus"], ["-c", "/nonexistent/line.yaml"]])
def test_bad_usage_exits_2(argv, capsys):
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_watch_refreshes_until_watch_seconds(url, capsys, monkeypatch):
    monkeypatch.setenv("WATCH_SECONDS", "1")
    t0 = time.monotonic()
    assert main(["--url", url, "--watch", "--interval", "0.2"]) == 0
    elapsed = time.monotonic() - t0
    out = capsys.readouterr().out
    assert 0.9 < elapsed < 5
    assert out.count(CLEAR) >= 4 and out.count("CI-1") >= 4


def test_watch_json_prints_one_document_per_refresh(url, capsys, monkeypatch):
    monkeypatch.setenv("WATCH_SECONDS", "0.3")
    assert main(["--url", url, "--watch", "--json", "--interval", "0.1"]) == 0
    docs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(docs) >= 2 and all(d == SAMPLE_STATUS for d in docs)


# -- the live view (--watch) ---------------------------------------------------------------------
def _snapshots(devices: int = 1) -> tuple[dict, dict]:
    """Two answers 2.0 s apart on the gateway's clock: +200 frames applied, +400 received on a link and
    +10 datagrams, +4 errors (3 on the link, 1 UDP), +6 alarm events."""
    first = copy.deepcopy(SAMPLE_STATUS)
    first["devices"] = [dict(first["devices"][0], id=257 + i, name=f"CI-{i}") for i in range(devices)]
    first["timezone"] = "Asia/Shanghai"
    first["alarms"] = {"engine": {"event_seq": 40, "by_severity": {"critical": {"UNACK": 2},
                                                                   "minor": {"UNACK": 1, "ACKED": 2}}}}
    second = copy.deepcopy(first)
    second["uptime_s"] = first["uptime_s"] + 2.0
    second["devices"][0]["applied"] += 200
    second["devices"][0]["links"][0]["rx_frames"] += 400
    second["devices"][0]["links"][0]["errors"]["bad_crc"] += 3
    second["udp"] = {**first["udp"], "rx_datagrams": first["udp"]["rx_datagrams"] + 10,
                     "errors": {"bad_size": 3}}
    second["alarms"]["engine"]["event_seq"] = 46
    return first, second


def test_watch_rates_come_from_the_deltas_over_the_gateway_uptime():
    first, second = _snapshots()
    assert rates(first, second, elapsed_s=99.0) == {"applied": 100.0, "received": 205.0, "errors": 2.0,
                                                     "alarm_events": 3.0}
    text = render_watch(second, first, 99.0, size=(120, 40))
    assert "frames applied 620 (100.0/s)" in text and "received 5650 (205.0/s)" in text
    assert "frame errors 7 (2.0/s)" in text and "alarm events 46 (3.0/s)" in text
    assert "alarms active: 2 critical, 3 minor" in text
    assert "devices reachable 1/1  links up 1/2  trains reachable 1/1" in text


def test_watch_rates_without_uptime_use_the_client_interval_and_a_restart_gives_none():
    first, second = _snapshots()
    del first["uptime_s"]
    assert rates(first, second, elapsed_s=4.0)["applied"] == 50.0
    assert rates(None, second, None) == dict.fromkeys(("applied", "received", "errors", "alarm_events"))
    assert rates(second, first, 2.0)["applied"] is None  # counters went back: not a negative rate
    assert "frames applied 420 (-/s)" in render_watch(first, size=(120, 40))


def test_watch_fits_a_small_terminal_summary_first_tables_cut_with_a_count():
    first, second = _snapshots(devices=30)
    lines = render_watch(second, first, 1.0, size=(70, 20)).splitlines()
    assert len(lines) < 20 and all(len(line) < 70 for line in lines)
    assert lines[2].startswith("gateway 1 demo-gw") and lines[3].startswith("devices reachable 30/30")
    shown = [ln for ln in lines if ln.startswith("  2") and "CI-" in ln]
    more = [ln for ln in lines if "more devices" in ln]
    assert more == [f"  … and {30 - len(shown)} more devices"] and 0 < len(shown) < 30
    assert any(ln.startswith("Trains (1)") for ln in lines)
    tall = render_watch(second, first, 1.0, size=(200, 80))
    assert "more devices" not in tall and tall.count("interlocking") == 30


def test_watch_states_one_zone_once_and_shows_every_time_in_it():
    first, second = _snapshots()
    text = render_watch(second, first, 1.0, size=(120, 40))
    assert text.count("Asia/Shanghai") == 1 and "all times in Asia/Shanghai (UTC+08:00)" in text
    assert "+08:00" not in text.replace("(UTC+08:00)", "")  # no time repeats an offset
    assert "since 2026-11-22 10:00:00" in text          # started_at in the line's zone
    assert "2026-11-18 19:06:40.000" in text            # 1795000000000 ms, an event, in the line's zone
    del second["timezone"]
    assert "all times in UTC+08:00" in render_watch(second, size=(120, 40))  # started_at's offset
    del second["started_at"]
    assert "all times in UTC\n" in render_watch(second, size=(120, 40))
    assert "2026-11-18 11:06:40.000" in render_watch(second, size=(120, 40))
