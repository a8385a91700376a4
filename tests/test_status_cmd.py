"""`gateway status` against a real AdminServer serving a sample status dict."""
from __future__ import annotations

import json
import pathlib
import socket
import time

import pytest
import yaml

from gateway.adapters.admin_http import AdminServer
from gateway.app.admin_routes import AdminRoutes
from gateway.cli.status_cmd import CLEAR, main
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
    assert "io-0" in out and "1024 free" in out and "5 in use of 4096" in out
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
