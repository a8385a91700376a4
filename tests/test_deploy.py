"""deploy/: the systemd unit (sandbox exposure, Type=notify), the gateway's sd_notify messages, the
image's health check, the logrotate snippet and the Grafana dashboard; the Dockerfile's shape.

systemd-analyze and logrotate run for real when they are installed (skipped with the reason
otherwise); sd_notify is checked against real AF_UNIX datagram sockets, a path and an abstract
name, with the gateway in a thread and as `gateway run`."""
from __future__ import annotations

import http.server
import importlib.util
import json
import logging
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import pytest
import yaml

from gateway.app.metrics import render_metrics
from gateway.base import sd_notify
from gateway_harness import RunningGateway, line_config
from test_admin_http import SAMPLE_STATUS

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "railgate.service"
MAX_EXPOSURE = 2.5


# -- sd_notify ---------------------------------------------------------------------------------
@pytest.fixture
def short_dir():
    """A directory with a short path (AF_UNIX paths are limited to 107 bytes)."""
    d = tempfile.mkdtemp(prefix="rg-sd-")
    yield pathlib.Path(d)
    shutil.rmtree(d, ignore_errors=True)


class Receiver:
    """A bound AF_UNIX datagram socket: what systemd listens on for ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.messages: list[str] = []

    def recv(self, timeout: float = 5.0) -> str:
        self.sock.settimeout(timeout)
        msg = self.sock.recv(4096).decode()
        self.messages.append(msg)
        return msg

    def drain(self, seconds: float) -> list[str]:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                self.recv(left)
            except (socket.timeout, TimeoutError):
                break
        return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def path_socket(short_dir, monkeypatch):
    path = str(short_dir / "notify")
    rx = Receiver(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    yield rx
    rx.close()


@pytest.fixture(autouse=True)
def _fresh_failure_flag(monkeypatch):
    monkeypatch.setattr(sd_notify, "_failed_logged", False)


def test_notify_without_notify_socket_does_nothing(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sd_notify.notify("READY=1") is False


def test_notify_sends_each_state_to_a_path_socket(path_socket):
    for state in ("READY=1", "WATCHDOG=1", "STOPPING=1", "STATUS=up\nREADY=1"):
        assert sd_notify.notify(state) is True
        assert path_socket.recv() == state


def test_notify_reaches_an_abstract_socket(monkeypatch):
    name = f"railgate-test-{uuid.uuid4().hex}"
    rx = Receiver("\0" + name)
    try:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sd_notify.notify("READY=1") is True
        assert rx.recv() == "READY=1"
        assert sd_notify.notify("WATCHDOG=1") and rx.recv() == "WATCHDOG=1"
    finally:
        rx.close()


@pytest.mark.parametrize("target", ["/nonexistent/railgate/notify", "relative/notify", "@"])
def test_a_failure_never_raises_and_is_logged_once(monkeypatch, caplog, target):
    monkeypatch.setenv("NOTIFY_SOCKET", target)
    with caplog.at_level(logging.WARNING, logger="railgate.sd_notify"):
        assert sd_notify.notify("READY=1") is False
        assert sd_notify.notify("WATCHDOG=1") is False
        assert sd_notify.notify("STOPPING=1") is False
    warnings = [r for r in caplog.records if r.name == "railgate.sd_notify"]
    assert len(warnings) == 1 and "READY=1" in warnings[0].getMessage()


@pytest.mark.parametrize("usec, pid, expected", [
    (None, None, None), ("30000000", None, 15.0), ("200000", "self", 0.1), ("200000", "other", None),
    ("0", None, None), ("-5", None, None), ("soon", None, None), ("200000", "nope", None),
])
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(monkeypatch, usec, pid, expected):
    for name, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    assert sd_notify.watchdog_interval_s() == expected


def test_gateway_sends_ready_when_up_then_watchdog_pings_then_stopping(path_socket, monkeypatch):
    monkeypatch.setenv("WATCHDOG_USEC", "200000")  # a ping every 0.1 s
    with RunningGateway(line_config()) as gw:
        assert path_socket.recv() == "READY=1"
        # READY means the listeners are up: a device can connect on both nets at once
        for net in ("A", "B"):
            socket.create_connection(("127.0.0.1", gw.ports[net]), timeout=2).close()
        assert path_socket.drain(0.55).count("WATCHDOG=1") >= 3
    msgs = path_socket.drain(1.0)
    assert msgs.count("READY=1") == 1
    assert "STOPPING=1" in msgs
    stop_at = msgs.index("STOPPING=1")
    assert all(m == "WATCHDOG=1" for m in msgs[1:stop_at])


def test_gateway_sends_no_watchdog_pings_without_watchdog_usec(path_socket):
    with RunningGateway(line_config()):
        assert path_socket.recv() == "READY=1"
        assert path_socket.drain(0.4) == ["READY=1"]
    assert path_socket.drain(1.0)[1:] == ["STOPPING=1"]


def test_gateway_run_notifies_systemd(short_dir, tmp_path):
    """The real command under a Type=notify-like environment: READY=1 once up, WATCHDOG=1 pings,
    STOPPING=1 on SIGTERM, then a clean exit."""
    cfg = yaml.safe_load((ROOT / "config" / "demo-line.yaml").read_text())
    cfg["gateway"]["listen"] = {net: {"host": "127.0.0.1", "port": 0} for net in ("net_a", "net_b", "udp")}
    cfg["gateway"]["admin"] = {"host": "127.0.0.1", "port": 0}
    cfg["gateway"]["state_dir"] = str(tmp_path / "state")
    line = tmp_path / "line.yaml"
    line.write_text(yaml.safe_dump(cfg))
    rx = Receiver(str(short_dir / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": str(short_dir / "notify"), "WATCHDOG_USEC": "200000"}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "gateway", "run", "-c", str(line)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert rx.recv(60) == "READY=1"
        assert rx.drain(0.55).count("WATCHDOG=1") >= 3
        proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in rx.drain(5.0)
        assert proc.wait(30) == 0, proc.stderr.read().decode()[-2000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
        rx.close()


# -- the systemd unit --------------------------------------------------------------------------
def unit_directives(path: pathlib.Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values in order]}}: systemd keeps repeated keys (SystemCallFilter=...)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        assert current is not None, f"{raw!r} before any section"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def _systemd_analyze() -> str:
    exe = shutil.which("systemd-analyze")
    if exe is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd provides it)")
    return exe


def measured_exposure() -> float:
    out = subprocess.run([_systemd_analyze(), "security", "--offline=yes", "--no-pager", str(UNIT)],
                         capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out.stdout + out.stderr)
    assert m, f"no overall exposure in systemd-analyze's output:\n{out.stdout}\n{out.stderr}"
    return float(m.group(1))


def test_unit_exposure_is_at_most_2_5_and_the_comment_says_what_was_measured():
    exposure = measured_exposure()
    assert exposure <= MAX_EXPOSURE, f"systemd-analyze security: exposure {exposure} > {MAX_EXPOSURE}"
    stated = re.search(r"\(systemd (\d+)\):\s*#\s*overall exposure (\d+\.\d+)", UNIT.read_text())
    assert stated, "the unit's comment says which exposure was measured, with which systemd"
    version = subprocess.run([_systemd_analyze(), "--version"], capture_output=True, text=True).stdout.split()[1]
    if version == stated.group(1):  # another systemd scores other checks: only the bound holds there
        assert float(stated.group(2)) == exposure, "update the measured exposure in the unit's comment"


def test_unit_verifies_except_for_the_venv_not_installed_here():
    out = subprocess.run([_systemd_analyze(), "verify", "--no-pager", str(UNIT)], capture_output=True, text=True,
                         timeout=60)
    problems = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()
                and not re.search(r"Command /opt/railgate/\.venv/bin/gateway is not executable", line)]
    assert problems == []


def test_unit_is_type_notify_with_watchdog_and_systemd_managed_directories():
    svc = unit_directives()["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s?", one["WatchdogSec"]) and int(one["WatchdogSec"].rstrip("s")) >= 10
    assert one["Restart"] in ("on-failure", "always")   # both restart after a missed watchdog ping
    assert (one["StateDirectory"], one["StateDirectoryMode"]) == ("railgate", "0700")
    assert one["LogsDirectory"] == "railgate" and one["RuntimeDirectory"] == "railgate"
    assert one["UMask"] == "0077"
    assert one["User"] == "railgate" and "DynamicUser" not in svc
    exec_start = one["ExecStart"].split()
    assert exec_start[1:3] == ["run", "-c"] and "--daemon" not in exec_start  # Type=notify: the main process
    assert exec_start[exec_start.index("--log") + 1].startswith("/var/log/railgate/")
    assert exec_start[exec_start.index("--pidfile") + 1].startswith("/run/railgate/")
    assert one["KillMode"] == "mixed"  # SIGTERM to the gateway only: it stops its relay child itself


def test_unit_sandboxing():
    svc = unit_directives()["Service"]
    one = {k: v[-1] for k, v in svc.items()}
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictNamespaces", "RestrictRealtime", "RestrictSUIDSGID", "LockPersonality",
                "MemoryDenyWriteExecute", "RemoveIPC", "PrivateMounts"):
        assert one.get(key) == "yes", key
    assert one["ProtectSystem"] == "strict" and one["ProtectProc"] == "invisible" and one["ProcSubset"] == "pid"
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert svc["SystemCallFilter"][0] == "@system-service"
    assert one["SystemCallArchitectures"] == "native" and one["DevicePolicy"] == "closed"
    assert "IPAddressDeny" not in svc  # field devices and services are anywhere on the LANs


def test_unit_install_steps_are_complete():
    text = UNIT.read_text()
    header = text[:text.index("[Unit]")]
    for step in ("useradd --system", "python3.11 -m venv /opt/railgate/.venv", "/etc/railgate/line.yaml",
                 "state_dir: /var/lib/railgate", "deploy/railgate.logrotate", "systemctl daemon-reload",
                 "systemctl enable --now railgate", "systemctl reload railgate"):
        assert step in header, step
    assert "/opt/railgate/.venv/bin/gateway run -c /etc/railgate/line.yaml" in text


# -- the image's health check ------------------------------------------------------------------
def _healthcheck_module():
    spec = importlib.util.spec_from_file_location("railgate_healthcheck", DEPLOY / "healthcheck.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _Status(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        code = 200 if self.path == "/status" else 503
        self.send_response(code)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def test_healthcheck_http(capsys):
    hc = _healthcheck_module()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Status)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        assert hc.main([f"{base}/status"]) == 0
        assert hc.main([f"{base}/other"]) == 1 and "HTTP 503" in capsys.readouterr().out
    finally:
        server.shutdown()
        server.server_close()
    assert hc.main([f"{base}/status", "--timeout", "1"]) == 1  # nobody listening any more
    assert "Connection refused" in capsys.readouterr().out


def test_healthcheck_tcp_peer():
    hc = _healthcheck_module()
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        assert hc.main(["--tcp-peer", str(port)]) == 1
        with socket.create_connection(("127.0.0.1", port)):
            conn, _ = srv.accept()
            with conn:
                assert hc.established_to(port) == 1
                assert hc.main(["--tcp-peer", str(port)]) == 0


def test_the_gateway_answers_the_image_health_check():
    hc = _healthcheck_module()
    with RunningGateway(line_config(), admin=True) as gw:
        assert hc.main([f"http://127.0.0.1:{gw.ports['admin']}/status"]) == 0


# -- logrotate ---------------------------------------------------------------------------------
def test_logrotate_snippet_rotates_by_copy_and_truncate(tmp_path):
    exe = shutil.which("logrotate") or next((p for p in ("/usr/sbin/logrotate", "/sbin/logrotate")
                                             if os.path.exists(p)), None)
    if exe is None:
        pytest.skip("logrotate is not installed")
    text = (DEPLOY / "railgate.logrotate").read_text()
    assert "copytruncate" in text and "su railgate railgate" in text
    logs, state = tmp_path / "log", tmp_path / "lib"
    logs.mkdir()
    state.mkdir()
    conf = (text.replace("/var/log/railgate", str(logs)).replace("/var/lib/railgate", str(state))
            .replace("su railgate railgate", ""))
    (tmp_path / "railgate.conf").write_text(conf)
    gateway_log, relay_log = logs / "gateway.log", state / "kafka-relay.log"
    with open(gateway_log, "ab") as held:  # held open for appending, as the gateway does
        held.write(b"before rotation\n")
        held.flush()
        relay_log.write_bytes(b"relay\n")
        subprocess.run([exe, "--force", "--state", str(tmp_path / "status"), str(tmp_path / "railgate.conf")],
                       check=True, capture_output=True, timeout=60)
        held.write(b"after rotation\n")
    rotated = sorted(p.name for p in logs.iterdir())
    assert len(rotated) == 2, rotated
    old = next(p for p in logs.iterdir() if p.name != "gateway.log")
    assert old.read_bytes() == b"before rotation\n"
    assert gateway_log.read_bytes() == b"after rotation\n"  # truncated in place, writes at its new end
    assert len(list(state.iterdir())) == 2


# -- the Grafana dashboard ---------------------------------------------------------------------
DASHBOARD = json.loads((DEPLOY / "grafana-railgate.json").read_text())
METRIC = re.compile(r"\b(?:railgate|process)_[a-z0-9_]+")


def _queries(dashboard: dict) -> list[str]:
    out = []
    for panel in dashboard["panels"]:
        out += [t["expr"] for t in panel.get("targets", ())]
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            out.append(var["query"]["query"] if isinstance(var["query"], dict) else var["query"])
    return out


def _emitted_families() -> set[str]:
    """Every family /metrics renders: for the admin tests' sample status and for a live gateway."""
    with RunningGateway(line_config()) as gw:
        live = gw.status()
    text = render_metrics(SAMPLE_STATUS) + render_metrics(live)
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_dashboard_queries_name_only_metrics_the_gateway_exports():
    families = _emitted_families()
    named = {name for q in _queries(DASHBOARD) for name in METRIC.findall(q)}
    assert named, "no railgate metric in the dashboard"
    assert named - families == set(), f"not exported by gateway/app/metrics.py: {sorted(named - families)}"


def test_dashboard_has_the_main_panels():
    panels = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
    by_metric = {name: [p["title"] for p in panels if any(name in t["expr"] for t in p["targets"])]
                 for name in ("railgate_link_rx_frames_total", "railgate_link_errors_total", "railgate_link_up",
                              "railgate_condition_active", "railgate_device_reachable", "railgate_pool_links")}
    assert all(by_metric.values()), by_metric
    assert any("by (reason)" in t["expr"] for p in panels for t in p["targets"])
    assert any("by (instance, device)" in t["expr"] for p in panels for t in p["targets"])


def test_dashboard_is_well_formed():
    d = DASHBOARD
    assert d["uid"] and d["title"] and d["schemaVersion"] >= 36
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    names = {v["name"] for v in d["templating"]["list"]}
    assert {"datasource", "instance"} <= names
    cells = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${datasource}" and p["targets"]
        for t in p["targets"]:
            expr = t["expr"]
            assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}")
            for selector in re.findall(r"railgate_[a-z0-9_]+(\{[^}]*\})?", expr):
                assert 'instance=~"$instance"' in selector, f"{p['title']}: {expr}"


# -- the Dockerfile ----------------------------------------------------------------------------
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _stages() -> dict[str, str]:
    parts = re.split(r"^FROM\s+", DOCKERFILE, flags=re.M)[1:]
    return {re.search(r"\bAS\s+(\S+)", p.splitlines()[0], re.I).group(1): p for p in parts}


def test_dockerfile_builds_a_wheel_in_a_build_stage_and_installs_only_that():
    stages = _stages()
    assert list(stages) == ["build", "runtime"]
    assert "build-essential" in stages["build"] and "pip wheel" in stages["build"]
    # the compiled fast path is built there, and its absence fails the build (no silent pure fallback)
    assert re.search(r"^COPY .*\bsetup\.py\b", stages["build"], re.M)
    assert "RAILGATE_REQUIRE_EXT=1 pip wheel" in stages["build"] and "railcodecs/_core" in stages["build"]
    runtime = stages["runtime"]
    assert "build-essential" not in runtime and "gcc" not in runtime
    assert re.search(r"from=build\b", runtime) and "--no-index" in runtime
    assert not re.search(r"^COPY\s+(?!--chmod=\S+\s+deploy/healthcheck\.py)", runtime, re.M), \
        "the runtime stage copies nothing but the health check (the code comes as the wheel)"


def test_dockerfile_runs_as_a_non_root_user_with_a_health_check_and_a_state_volume():
    runtime = _stages()["runtime"]
    users = re.findall(r"^USER\s+(\S+)", runtime, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK\s.*\n?.*CMD", runtime, re.M)
    assert re.search(r'^VOLUME\s+\["/var/lib/railgate"\]', runtime, re.M)
    assert re.search(r"install -d -m 0700 -o railgate -g railgate /var/lib/railgate", runtime)


def test_dockerfile_bakes_in_no_configuration_or_secret():
    for line in DOCKERFILE.splitlines():
        if line.startswith(("COPY", "ADD")):
            assert "config" not in line and "secret" not in line, line
        assert not re.search(r"(?i)(mac_key|password|token)\s*[=:]", line), line
    cmd = json.loads(re.search(r"^CMD\s+(\[.*\])", DOCKERFILE, re.M).group(1))
    assert cmd[:3] == ["gateway", "run", "-c"] and cmd[3].startswith("/run/secrets/")
    for src in re.findall(r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", DOCKERFILE, re.M):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY {path}: no such file in the repository"
