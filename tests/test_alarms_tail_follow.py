"""`gateway alarms tail` follows the gateway (issue 13 item 6): across a gateway restart onto a new embedded
broker port, with one stderr line per outage instead of librdkafka's reconnect spam; `--date` replays today
from the topic and a past day from the history store. A real gateway (in-process harness, alarms on, real
embedded broker and relay child); the tail as the operator runs it, a `gateway alarms tail` subprocess."""
from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

import yaml
from gateway_harness import Device, QuietRelay, RunningGateway, line_config, wait_until

from gateway.app import config
from gateway.cli import alarms_cmd
from railcodecs import DeviceAlarm

GATEWAY = os.path.join(os.path.dirname(sys.executable), "gateway")
BEFORE = "CI-2/DEVICE_ALARM_17/301"
AFTER = "CI-2/DEVICE_ALARM_18/302"


def _line(tmp_path) -> tuple[config.Config, str]:
    raw = line_config(state_dir=str(tmp_path / "state")).raw
    raw["alarms"] = {"snapshot_interval_s": 1}
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(raw))
    return config.load(str(path)), str(path)


def _raise(gw, code: int, obj: int, seq: int = 1) -> Device:
    dev = Device(gw.ports["A"], dev_id=258, hb_ms=10_000)
    dev.hello()
    dev.send(DeviceAlarm(code, 2, DeviceAlarm.RAISE, obj, "point machine motor current high"), seq=seq)
    return dev


def _bootstrap(cfg) -> str:
    return (pathlib.Path(cfg.gateway.state_dir) / "kafka.bootstrap").read_text().strip()


class _Tail:
    """`gateway alarms tail -c CONFIG` in a subprocess; its stdout lines collected by a thread."""

    def __init__(self, cfg_path: str, err_path: pathlib.Path) -> None:
        self.err_path = err_path
        self._err = open(err_path, "w")
        self.proc = subprocess.Popen([GATEWAY, "alarms", "tail", "-c", cfg_path], stdout=subprocess.PIPE,
                                     stderr=self._err, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def shows(self, text: str) -> bool:
        return any(text in line for line in list(self.lines))

    def stop(self) -> list[str]:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._err.close()
        return self.err_path.read_text().splitlines()


def test_tail_follows_the_gateway_across_a_restart_on_a_new_broker_port(tmp_path):
    cfg, path = _line(tmp_path)
    tail = None
    try:
        with RunningGateway(cfg, alarms=True) as gw:
            first = _bootstrap(cfg)
            dev = _raise(gw, 17, 301)
            tail = _Tail(path, tmp_path / "tail.err")
            wait_until(lambda: tail.shows(BEFORE), timeout=60, what="the first alarm in the tail")
            dev.close()
        time.sleep(3)                 # the broker is gone: librdkafka would retry ~40 times a second
        with RunningGateway(cfg, alarms=True) as gw:
            second = _bootstrap(cfg)
            assert second != first
            dev = _raise(gw, 18, 302)
            try:
                wait_until(lambda: tail.shows(AFTER), timeout=120, what="an alarm raised after the restart in the tail")
            except AssertionError as exc:   # say what the tail did instead
                raise AssertionError(f"{exc}; bootstrap {first} -> {second}; tail stdout {tail.lines[-15:]}; "
                                     f"stderr {tail.err_path.read_text()[-2000:]!r}") from None
            assert tail.shows(f"=== the gateway's broker moved to {second}")
            dev.close()
    finally:
        err = tail.stop() if tail is not None else []
    assert tail.proc.returncode is not None
    # the outage and the move, one line each; never librdkafka's reconnect lines
    assert len(err) <= 4, err
    assert not any("Connection refused" in line or "rdkafka" in line for line in err), err
    assert any("moved from" in line for line in err), err


def test_date_today_replays_the_topic_and_exits(tmp_path):
    cfg, path = _line(tmp_path)
    today = datetime.now(ZoneInfo(cfg.timezone)).strftime("%Y%m%d")
    with RunningGateway(cfg, alarms=True) as gw:
        dev = _raise(gw, 17, 301)
        out = io.StringIO()

        def replayed():
            out.seek(0)
            out.truncate()
            code = alarms_cmd.tail_main(["-c", path, "--date", today], out=out)
            # until the relay has created the day's topic the history answers (with the alarm, too)
            return code == 0 and BEFORE in out.getvalue() and out.getvalue().startswith("=== source: topic")
        wait_until(replayed, timeout=60, what="the day's alarm in the --date replay from the topic")
        text = out.getvalue().splitlines()
        assert text[0].startswith(f"=== source: topic {cfg.pipeline.alarms.topic_prefix}.{today} on ")
        assert any(line.startswith(f"=== end of {cfg.pipeline.alarms.topic_prefix}.{today}: ") for line in text)
        assert any(BEFORE in line and "raise" in line for line in text)
        dev.close()


def test_date_of_a_past_day_comes_from_the_history_store(tmp_path):
    cfg, path = _line(tmp_path)
    tz = ZoneInfo(cfg.timezone)
    past = (datetime.now(tz) - timedelta(days=3)).replace(hour=10, minute=0, second=0, microsecond=0)
    offset_ms = int(past.timestamp() * 1000) - time.time_ns() // 1_000_000
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay,
                        clock_ms=lambda: time.time_ns() // 1_000_000 + offset_ms) as gw:
        dev = _raise(gw, 17, 301)
        wait_until(lambda: gw.alarms.status(engine={})["writers"]["history"]["written"] >= 1, timeout=20,
                   what="the alarm in the history")
        dev.close()
    out = io.StringIO()
    assert alarms_cmd.tail_main(["-c", path, "--date", past.strftime("%Y%m%d")], out=out) == 0
    text = out.getvalue().splitlines()
    topic = f"{cfg.pipeline.alarms.topic_prefix}.{past.strftime('%Y%m%d')}"
    assert text[0].startswith("=== source: history ") and f"no topic {topic}" in text[0]
    assert any(BEFORE in line and "raise" in line for line in text)
    assert any(line.startswith(f"=== end of {topic} (history): ") for line in text)
    # a day nobody wrote: nothing, still from the history
    out = io.StringIO()
    assert alarms_cmd.tail_main(["-c", path, "--date", (past - timedelta(days=30)).strftime("%Y%m%d")], out=out) == 0
    assert "0 alarms active" in out.getvalue() and BEFORE not in out.getvalue()
    assert alarms_cmd.tail_main(["-c", path, "--date", "2026-11-01"]) == 2
