"""RelaySupervisor: the Kafka relay in a child process, against a real embedded broker (tansu). No mocks.

The child is killed the way librdkafka kills it (SIGSEGV) and the way an OOM killer would (SIGKILL) in the
middle of a flood; it must come back and nothing may be lost. And it must not outlive the gateway.
"""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import threading
import time

import pytest

from alarms.journal import Journal
from alarms.kafka.relay_process import RelaySupervisor

from kafka_fixtures import (HERE, LINE, TZ, EventSource, SupervisedConsumer, broker, delivered,  # noqa: F401
                            wait_all_consumed, wait_for)

pytestmark = pytest.mark.slow


def supervisor(jpath, b, prefix, **kw) -> RelaySupervisor:
    return RelaySupervisor(jpath, b.bootstrap, topic_prefix=prefix, tz=TZ, gateway_id=1, line=LINE, **kw)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie (an orphan may wait a moment for init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def test_wake_reaches_the_child_and_stop_is_graceful(broker, tmp_path):
    jpath = str(tmp_path / "journal.db")
    src, journal = EventSource(jpath, start_ms=int(time.time() * 1000), seed=4), Journal(jpath)
    relay = supervisor(jpath, broker, "wake", poll_interval_s=60.0).start()   # without a wake it sleeps 60 s
    try:
        wait_for(lambda: relay.stats().get("generation") == 1, 20, "the child's first stats line")
        first = src.journal_events(100)
        relay.wake()
        wait_for(lambda: delivered(journal) == len(first), 10, "100 deliveries after a wake")
        time.sleep(0.3)                          # the relay is back in its 60 s wait
        second = src.journal_events(100)
        time.sleep(1.5)
        assert journal.counts()["undelivered"] == len(second)      # no wake, no delivery: the wake did it
        relay.wake()
        wait_for(lambda: journal.counts()["undelivered"] == 0, 10, "100 more after a second wake")
        pid = relay.pid
        assert relay.stats()["pdeathsig"] == signal.SIGKILL
    finally:
        relay.stop(10)
    st = relay.stats()
    assert st["last_exit"] == "exit 0" and st["restarts"] == 0 and st["pid"] is None and not alive(pid)
    assert st["delivered"] == 200 and st["pending"] == 0                 # the final line, after the flush
    with open(relay.log_path) as f:
        assert f"kafka relay child {pid}: stopping: SIGTERM" in f.read()
    src.close()
    journal.close()


def test_relay_child_killed_mid_flood_is_restarted_and_nothing_is_lost(broker, tmp_path, caplog):
    jpath = str(tmp_path / "journal.db")
    src, journal = EventSource(jpath, start_ms=int(time.time() * 1000), keys=300, seed=5), Journal(jpath)
    prefix = "killed"
    relay = supervisor(jpath, broker, prefix, backoff_s=(0.1, 1.0)).start()
    consumer = SupervisedConsumer(broker.bootstrap, prefix, src.now_ms, str(tmp_path / "consumer.log")).start()
    stop_flood = threading.Event()

    def flood():                                 # the alarm thread: group commits of 50, a wake after each
        while not stop_flood.is_set() and len(src.events) < 50_000:
            src.journal_events(50)
            relay.wake()
            time.sleep(0.002)

    flooder = threading.Thread(target=flood)
    try:
        try:
            pid = relay.wait_running(20)
            flooder.start()
            for sig, after in ((signal.SIGSEGV, 2000), (signal.SIGKILL, 6000)):
                wait_for(lambda: delivered(journal) >= after, 60, f"{after} deliveries")
                assert flooder.is_alive()        # mid-flood: events are still being journaled
                os.kill(pid, sig)
                wait_for(lambda: relay.pid not in (None, pid), 20, "a new relay child")
                assert not alive(pid)
                pid = relay.pid
            n = len(src.events)
            wait_for(lambda: len(src.events) >= n + 1000, 20, "1,000 more events for the third child")
        finally:
            stop_flood.set()
            if flooder.is_alive():
                flooder.join(60)
        ids = wait_all_consumed(src, journal, consumer, 60)
        st = relay.stats()
    finally:
        consumer.stop()
        relay.stop()
    assert len(ids) >= 7000 and consumer.seen() == ids            # nothing lost, nothing invented
    assert st["restarts"] == 2 and st["last_exit"] == "SIGKILL" and st["generation"] == 3, st
    assert st["republished"] > 0                                   # a restarted relay republishes the day
    assert "kafka relay died of SIGSEGV, restart 1" in caplog.text
    assert "kafka relay died of SIGKILL, restart 2" in caplog.text
    with open(relay.log_path) as f:
        assert "Fatal Python error: Segmentation fault" in f.read()   # faulthandler's stacks are in the log
    src.close()
    journal.close()


SUPERVISOR_PROCESS = """
import json, subprocess, sys, time
from alarms.kafka.relay_process import RelaySupervisor
sup = RelaySupervisor(sys.argv[1], sys.argv[2], topic_prefix="pdeath", tz="Asia/Shanghai", gateway_id=1,
                      line="l").start()
# another process holds the wake pipe open, so the child cannot see EOF on it: only PR_SET_PDEATHSIG is left
holder = subprocess.Popen(["sleep", "120"], pass_fds=[sup._wake_w])
pid = sup.wait_running(20)
while "pdeathsig" not in sup.stats():
    time.sleep(0.05)
print(json.dumps({"relay": pid, "holder": holder.pid, "pdeathsig": sup.stats()["pdeathsig"]}), flush=True)
time.sleep(120)
"""


def test_relay_child_dies_with_the_gateway_process(broker, tmp_path):
    jpath = str(tmp_path / "journal.db")
    Journal(jpath).close()
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    gw = subprocess.Popen([sys.executable, "-c", SUPERVISOR_PROCESS, jpath, broker.bootstrap],
                          stdout=subprocess.PIPE, env=env)
    pids = {}
    try:
        ready, _, _ = select.select([gw.stdout], [], [], 30)
        assert ready, "the supervisor process printed no pids within 30 s"
        pids = json.loads(gw.stdout.readline())
        assert pids["pdeathsig"] == signal.SIGKILL and alive(pids["relay"])
        gw.kill()                                   # the gateway dies without running any cleanup
        gw.wait()
        wait_for(lambda: not alive(pids["relay"]), 5, "the relay child to die with its parent")
    finally:
        for pid in (pids.get("holder"), pids.get("relay")):
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)
        if gw.poll() is None:
            gw.kill()
            gw.wait()
        gw.stdout.close()
