"""The gateway's log as an operator reads and rotates it (issue 13, item 8): `gateway run` writes one
line per record with an ISO-8601 time and the line's UTC offset, as text or JSON (`gateway.log.format`),
reopens its file on SIGUSR1 (logrotate renames, then signals), and logs its start, config reloads and
operator actions. Real processes, real signals, loopback ports."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from datetime import datetime

import yaml
from gateway_harness import wait_until
from test_gateway_process import GATEWAY, _try, fetch_status, write_config

from gateway.cli import alarms_action_cmd

ISO = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}"
SHANGHAI = ISO + r"\+08:00"       # the demo line's line.timezone


def _start(path, d, *extra):
    proc = subprocess.Popen([GATEWAY, "run", "-c", str(path), *extra], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    wait_until(lambda: _try(lambda: fetch_status(d["gateway"]["admin"]["port"])), timeout=30,
               what="admin API up")
    return proc


def _stop(proc) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return err


def _up_line(d, stamp: str) -> str:
    ports = d["gateway"]["listen"]
    return (rf"{stamp} INFO MainThread railgate\.gateway: gateway demo-gw up: net A {ports['net_a']['port']}, "
            rf"net B {ports['net_b']['port']}, udp {ports['udp']['port']}, admin {d['gateway']['admin']['port']}, "
            rf"1 IO threads")


def test_log_file_lines_reload_operator_action_and_sigusr1_reopen(tmp_path):
    path, d = write_config(tmp_path, heartbeat_ms=10_000)
    log = tmp_path / "gw.log"
    proc = _start(path, d, "--log", str(log))
    try:
        wait_until(lambda: "gateway demo-gw up: " in log.read_text(), what="the start line")
        lines = log.read_text().splitlines()
        assert any(re.fullmatch(_up_line(d, SHANGHAI), line) for line in lines), lines
        assert all(re.match(SHANGHAI + " ", line) for line in lines), lines

        # a reload refused: the config error's several lines are one log line
        path.write_text("gateway: [broken")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config not reloaded" in log.read_text(), what="the refused reload logged")
        refused = [line for line in log.read_text().splitlines() if "config not reloaded" in line]
        assert len(refused) == 1 and "1 problem\\n  line 1" in refused[0], refused

        # an operator action, through the admin API (refused: no such alarm; the request is logged)
        url = f"http://127.0.0.1:{d['gateway']['admin']['port']}"
        token = str(tmp_path / "state" / "admin.token")
        assert alarms_action_cmd.ack_main(["--url", url, "CI-2/NO_SUCH/-", "--operator", "alice",
                                           "--token-file", token]) == 1
        wait_until(lambda: "operator action requested: ack CI-2/NO_SUCH/- by alice from 127.0.0.1"
                   in log.read_text(), what="the operator action logged")

        # logrotate: rename the file, then SIGUSR1; the gateway writes on in a new file at the old path
        os.rename(log, tmp_path / "gw.log.1")
        proc.send_signal(signal.SIGUSR1)
        wait_until(lambda: log.exists() and "log file reopened" in log.read_text(), what="the log reopened")
        path.write_text(yaml.safe_dump(d))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: applied" in log.read_text(), what="a reload logged in the new file")
        assert "SIGHUP: applied" not in (tmp_path / "gw.log.1").read_text()
        assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    finally:
        err = _stop(proc)
    assert "gateway stopped" in log.read_text()
    for text in (err, log.read_text(), (tmp_path / "gw.log.1").read_text()):
        assert "Logging error" not in text and "Traceback" not in text


def test_json_format_one_object_per_line_in_the_host_zone_without_line_timezone(tmp_path):
    path, d = write_config(tmp_path, heartbeat_ms=10_000, log={"format": "json"})
    del d["line"]["timezone"]                     # no line zone: the host's offset
    path.write_text(yaml.safe_dump(d))
    log = tmp_path / "gw.log"
    proc = _start(path, d, "--log", str(log))
    try:
        wait_until(lambda: "gateway demo-gw up: " in log.read_text(), what="the start line")
    finally:
        _stop(proc)
    offset = datetime.now().astimezone().isoformat()[-6:]
    docs = [json.loads(line) for line in log.read_text().splitlines()]
    assert docs and all({"time", "level", "logger", "message"} <= set(doc) for doc in docs)
    assert all(re.fullmatch(ISO + re.escape(offset), doc["time"]) for doc in docs)
    up = [doc for doc in docs if doc["logger"] == "railgate.gateway" and " up: " in doc["message"]]
    assert len(up) == 1 and up[0]["level"] == "INFO" and up[0]["message"].startswith("gateway demo-gw up: net A ")
    assert docs[-1]["message"] == "gateway stopped"


def test_foreground_start_on_stderr_has_the_up_line_and_no_logging_error(tmp_path):
    path, d = write_config(tmp_path, heartbeat_ms=10_000)
    proc = _start(path, d)
    err = _stop(proc)
    assert "Logging error" not in err and "Traceback" not in err
    lines = err.splitlines()
    assert any(re.fullmatch(_up_line(d, SHANGHAI), line) for line in lines), lines
    assert all(re.match(SHANGHAI + " ", line) for line in lines), lines
