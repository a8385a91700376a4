"""The gateway as an operator runs it: `gateway run`, daemon mode, `gateway stop`, SIGHUP reload, and the
operator's errors (busy port, bad file, bad state dir): one line each, no traceback, the README's exit code."""
from __future__ import annotations

import copy
import json
import os
import pathlib
import re
import signal
import socket
import stat
import subprocess
import sys
import threading

import pytest
import yaml

from gateway.cli import run_cmd
from gateway_harness import DEMO, Device, free_port, wait_until
from railcodecs import Close

GATEWAY = os.path.join(os.path.dirname(sys.executable), "gateway")



def write_config(tmp_path, **gateway):
    d = copy.deepcopy(DEMO)
    d["gateway"]["listen"] = {"net_a": {"host": "127.0.0.1", "port": free_port()},
                              "net_b": {"host": "127.0.0.1", "port": free_port()},
                              "udp": {"host": "127.0.0.1", "port": free_port()}}
    d["gateway"]["admin"] = {"host": "127.0.0.1", "port": free_port()}
    d["gateway"]["state_dir"] = str(tmp_path / "state")
    d["gateway"].update(gateway)
    path = tmp_path / "line.yaml"
    path.write_text(yaml.safe_dump(d))
    return path, d


def fetch_status(port: int) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/status", timeout=2) as r:
        return json.loads(r.read())


def test_invalid_config_exits_2_naming_the_key(tmp_path):
    path, d = write_config(tmp_path, heartbeat_ms="fast")
    res = subprocess.run([GATEWAY, "run", "-c", str(path)], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "gateway.heartbeat_ms: expected an integer 50..60000, got 'fast'" in res.stderr


def test_daemon_run_status_and_graceful_stop(tmp_path):
    # a long heartbeat: the test device stays silent while the CLI runs (liveness is tested elsewhere)
    path, d = write_config(tmp_path, heartbeat_ms=10_000)
    pidfile = tmp_path / "gw.pid"
    res = subprocess.run([GATEWAY, "run", "-c", str(path), "--daemon", "--pidfile", str(pidfile)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    # the command returned once the daemon said "up": its pid file and admin API are there already
    pid = int(pidfile.read_text())
    try:
        assert fetch_status(d["gateway"]["admin"]["port"])["gateway_id"] == 1
        _run_and_stop(d, path, pidfile, pid, tmp_path)
    finally:  # never leave a daemon behind when an assertion fails
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _run_and_stop(d, path, pidfile, pid, tmp_path):
    admin = d["gateway"]["admin"]["port"]
    wait_until(lambda: _try(lambda: fetch_status(admin)), what="admin API up")
    dev = Device(d["gateway"]["listen"]["net_a"]["port"], hb_ms=10_000)
    dev.hello()
    # SESSION_CONFIRM is not answered: the device is reachable once the gateway has read it
    wait_until(lambda: next(x for x in fetch_status(admin)["devices"] if x["id"] == 258)["reachable"],
               what="device 258 reachable after its session is confirmed")
    st = fetch_status(admin)
    assert st["gateway_id"] == 1
    # the state dir and everything the gateway wrote in it are its user's only (umask 077 at start)
    state = pathlib.Path(d["gateway"]["state_dir"])
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    written = [f for f in state.iterdir() if f.is_file()]
    assert {"journal.db", "gateway.log"} <= {f.name for f in written}
    assert {f.name: oct(stat.S_IMODE(f.stat().st_mode)) for f in written} == {f.name: "0o600" for f in written}
    # a second daemon on the same pid file is refused
    again = subprocess.run([GATEWAY, "run", "-c", str(path), "--daemon", "--pidfile", str(pidfile)],
                           capture_output=True, text=True, timeout=30)
    assert again.returncode == 1 and "names a running process" in again.stderr
    stop = subprocess.Popen([GATEWAY, "stop", "--pidfile", str(pidfile)])
    assert dev.wait_for("CLOSE").message.reason == Close.NORMAL  # graceful: CLOSE 0 to every device
    dev.close()
    assert stop.wait(15) == 0
    assert not pidfile.exists()
    log = (tmp_path / "state" / "gateway.log").read_text()
    assert "gateway stopped" in log  # the async log was flushed at exit
    assert "gateway demo-gw up: net A " in log and "Logging error" not in log
    try:
        os.kill(pid, 0)
        raise AssertionError("daemon still running")
    except ProcessLookupError:
        pass


def test_pidfile_is_renamed_into_place_whole(tmp_path, monkeypatch):
    """The new pid goes to a temporary file in the same directory and is renamed over the old one:
    up to the rename the old file is intact, after it the new one is complete; nothing is left over."""
    path = tmp_path / "gw.pid"
    path.write_text("111\n")                         # a stale one from a previous run
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(src, dst):
        calls.append(("replace", os.path.dirname(src), os.fspath(dst), open(src).read(), path.read_text()))
        real_replace(src, dst)

    def fsync(fd):
        calls.append(("fsync",))
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    run_cmd.write_pidfile(str(path), 4242)
    # the data is on disk before the rename; the directory after it
    assert calls == [("fsync",), ("replace", str(tmp_path), str(path), "4242\n", "111\n"), ("fsync",)]
    assert path.read_text() == "4242\n" and os.listdir(tmp_path) == ["gw.pid"]


def test_a_reader_polling_the_pidfile_never_sees_it_empty_or_partial(tmp_path):
    """What `gateway stop` racing a starting daemon would see: no file, or a whole pid."""
    path = str(tmp_path / "gw.pid")
    bad, reads, stop = [], [0], threading.Event()

    def poll():
        while not stop.is_set():
            try:
                with open(path) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            reads[0] += 1
            if not re.fullmatch(r"\d+\n", text):
                bad.append(text)

    reader = threading.Thread(target=poll)
    reader.start()
    try:
        for pid in range(100_000, 100_100):
            run_cmd.write_pidfile(path, pid)
    finally:
        stop.set()
        reader.join()
    assert reads[0] > 0 and bad == []
    assert run_cmd.read_pidfile(path) == 100_099


@pytest.mark.parametrize("content, problem", [
    (None, "no pid file"), ("", "is empty"), ("\n", "is empty"), ("12ab\n", "does not hold a process id: '12ab'"),
    ("-1\n", "does not hold a process id"), ("0\n", "does not hold a process id"),
])
def test_stop_names_what_is_wrong_with_the_pidfile(tmp_path, capsys, content, problem):
    path = tmp_path / "gw.pid"
    if content is not None:
        path.write_text(content)
    with pytest.raises(run_cmd.PidfileError, match=re.escape(problem)):
        run_cmd.read_pidfile(str(path))
    assert run_cmd.stop_main(["--pidfile", str(path), "--timeout", "0.1"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("gateway stop: ") and problem in err and str(path) in err


def test_sighup_applies_live_settings_and_names_the_rest(tmp_path):
    path, d = write_config(tmp_path)
    log = tmp_path / "gw.log"
    proc = subprocess.Popen([GATEWAY, "run", "-c", str(path), "--log", str(log)])
    try:
        admin = d["gateway"]["admin"]["port"]
        wait_until(lambda: _try(lambda: fetch_status(admin)), what="admin API up")
        d["gateway"]["max_age_ms"] = 1500
        d["gateway"]["io_threads"] = 4
        path.write_text(yaml.safe_dump(d))
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: applied" in log.read_text(), what="reload logged")
        text = log.read_text()
        assert "applied gateway.max_age_ms; need a restart: gateway.io_threads" in text
        st = fetch_status(admin)
        assert st["counters"].get("reloads") == 1
        path.write_text("gateway: [broken")
        proc.send_signal(signal.SIGHUP)
        wait_until(lambda: "config not reloaded" in log.read_text(), what="bad reload refused")
        assert fetch_status(admin)["counters"].get("reload_errors") == 1  # and it keeps running
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def _try(fn):
    try:
        return fn()
    except OSError:
        return None


def _busy(port: int) -> socket.socket:
    """Another process's listener on ``port`` (as a second gateway, or anything else, would hold it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", port))
    s.listen()
    return s


@pytest.mark.parametrize("where", ["net_a", "admin"])
def test_daemon_start_failure_exits_1_naming_the_port(tmp_path, where):
    """net A is bound before the fork, the admin API in the daemon's start: the command reports either
    one with exit 1, and nothing is left running (no pid file)."""
    path, d = write_config(tmp_path)
    port = (d["gateway"]["listen"]["net_a"] if where == "net_a" else d["gateway"]["admin"])["port"]
    pidfile = tmp_path / "gw.pid"
    holder = _busy(port)
    try:
        res = subprocess.run([GATEWAY, "run", "-c", str(path), "--daemon", "--pidfile", str(pidfile)],
                             capture_output=True, text=True, timeout=60)
    finally:
        holder.close()
    assert res.returncode == 1
    assert res.stderr.splitlines() == [res.stderr.strip()] and "Traceback" not in res.stderr
    prefix = "gateway run: " if where == "net_a" else "gateway run: admin API "
    assert res.stderr.startswith(f"{prefix}cannot listen on 127.0.0.1:{port}: Address already in use")
    assert not pidfile.exists()
    if where == "admin":   # the daemon got as far as its log, which says the same
        assert f"start failed: admin API cannot listen on 127.0.0.1:{port}" in \
            (tmp_path / "state" / "gateway.log").read_text()


def _operator_error(tmp_path, case: str) -> tuple[list[str], str, int]:
    """(command, what stderr must say, exit code) for one operator error."""
    path, d = write_config(tmp_path)
    cmd = [GATEWAY, "run", "-c", str(path)]
    if case == "busy_port":
        port = d["gateway"]["listen"]["net_b"]["port"]
        return cmd, f"gateway run: cannot listen on 127.0.0.1:{port}: Address already in use", 1
    if case == "not_utf8":
        path.write_bytes(path.read_bytes().replace(b"demo-gw", "d\u00e9mo".encode("latin-1")))
        return cmd, "not UTF-8 text (byte 0xe9", 2
    if case == "state_dir_under_a_file":
        (tmp_path / "plain").write_text("a file, not a directory\n")
        state = tmp_path / "plain" / "state"
        path.write_text(yaml.safe_dump({**d, "gateway": {**d["gateway"], "state_dir": str(state)}}))
        return cmd, f"gateway run: cannot create the state dir {state} (gateway.state_dir): Not a directory", 1
    if case == "log_file_dir_missing":
        log = tmp_path / "no-such-dir" / "gw.log"
        return cmd + ["--log", str(log)], f"gateway run: cannot open the log file {log}: No such file or directory", 1
    if case == "daemon_pidfile_dir_missing":
        pid = tmp_path / "no-such-dir" / "gw.pid"
        return (cmd + ["--daemon", "--pidfile", str(pid)],
                f"gateway run: cannot write the pid file {pid}: No such file or directory", 1)
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["busy_port", "not_utf8", "state_dir_under_a_file", "log_file_dir_missing",
                                  "daemon_pidfile_dir_missing"])
def test_operator_errors_are_one_line_without_traceback(tmp_path, case):
    cmd, says, code = _operator_error(tmp_path, case)
    holder = _busy(yaml.safe_load(open(cmd[3]))["gateway"]["listen"]["net_b"]["port"]) if case == "busy_port" else None
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    finally:
        if holder is not None:
            holder.close()
    assert res.returncode == code, res.stderr
    assert says in res.stderr and "Traceback" not in res.stderr and "Logging error" not in res.stderr
    if code == 1:   # one line; an invalid config (2) lists its problems under one heading, as ever
        assert res.stderr.splitlines() == [says], res.stderr


def test_gateway_run_freezes_its_long_lived_objects_after_the_start_up_grace(tmp_path):
    """`gateway run` owns its process: after the start-up grace what lives is frozen out of the collector's
    scans (a full collection at line load paused every Python thread 30-70 ms); /status and /metrics show
    it. A gateway embedded in another program (this test process) leaves that program's collector alone."""
    import gc
    import urllib.request

    from gateway_harness import RunningGateway, line_config
    path, d = write_config(tmp_path, heartbeat_ms=100, hello_timeout_ms=500)
    admin = d["gateway"]["admin"]["port"]
    proc = subprocess.Popen([GATEWAY, "run", "-c", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _try(lambda: fetch_status(admin)), what="admin API up")
        wait_until(lambda: fetch_status(admin)["process"]["gc"]["frozen"] > 1000, timeout=15,
                   what="objects frozen after the start-up grace")
        gcs = fetch_status(admin)["process"]["gc"]
        assert len(gcs["collections"]) == 3 and gcs["collections"][2] >= 1   # the freeze's own collection
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=2) as r:
            metrics = r.read().decode()
        frozen = re.search(r"^railgate_gc_frozen_objects (\d+)$", metrics, re.M)
        assert frozen and int(frozen.group(1)) > 1000, metrics[-2000:]
        assert re.search(r'^python_gc_collections_total\{generation="2"\} [1-9]', metrics, re.M)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    before = gc.get_freeze_count()
    with RunningGateway(line_config(heartbeat_ms=100, hello_timeout_ms=500)) as gw:
        wait_until(lambda: any(name == "DEVICE_COMM_LOST" for name, _ in gw.line.events.active_conditions()),
                   timeout=10, what="the start-up grace (the devices that did not connect are lost)")
        assert gw.status()["process"]["gc"]["frozen"] == before == gc.get_freeze_count()
