"""AlarmService: concurrent submitters, group commit per drained batch, operator futures, restart."""
import threading
import time

import pytest

from alarms.engine import UnknownAlarm
from alarms.journal import Journal, JournalError
from alarms.lifecycle import IllegalTransition
from alarms.model import AlarmEvent, AlarmKey, ClearAlarm, OperatorAction, RaiseAlarm
from alarms.service import PEEK_EVERY, AlarmService
from alarms.sources import Sources
from gateway.line.events import EventLog

T0 = 1_795_425_974_859


def service(path, **kw):
    """Thousands of alarms in these tests: no area flood alarm (tests/test_alarm_floods.py has those)."""
    kw.setdefault("engine_options", {"flood_alarms": 1_000_000})
    return AlarmService(str(path), gateway_id=1, line="demo-line-1", tz="Asia/Shanghai", tick_s=0.05,
                        clock=lambda: T0, **kw)


def held_service(path, **kw):
    """A started service whose alarm thread is held in a wake callback (one event journaled) until
    ``gate`` is set: what is submitted meanwhile waits in the queue."""
    svc = service(path, **kw)
    svc.start()
    gate, in_wake = threading.Event(), threading.Event()

    def slow_wake():
        in_wake.set()
        gate.wait(10)

    svc.subscribe(slow_wake)
    svc.submit(RaiseAlarm(AlarmKey("CI-0", "X"), "minor", "t", T0))
    assert in_wake.wait(5)
    return svc, gate


def all_rows(path):
    j = Journal(str(path))
    try:
        return [AlarmEvent.decode(r.value) for r in j.read_after(0, limit=100_000)]
    finally:
        j.close()


def test_many_threads_exact_events(tmp_path):
    path = tmp_path / "j.db"
    svc = service(path)
    svc.start()
    wakes = threading.Semaphore(0)
    svc.subscribe(wakes.release)
    threads, per = 8, 250

    def worker(t):
        for i in range(per):
            k = AlarmKey(f"CI-{t}", "X", str(i))
            assert svc.submit(RaiseAlarm(k, "minor", "t", T0 + i))
            assert svc.submit(ClearAlarm(k, T0 + i + 1))

    ts = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    svc.stop()
    rows = all_rows(path)
    assert [r.event_seq for r in rows] == list(range(1, len(rows) + 1))
    assert len(rows) == threads * per * 2
    per_key = {}
    for r in rows:
        per_key.setdefault(r.key, []).append(r.transition)
    assert len(per_key) == threads * per and all(v == ["raise", "clear"] for v in per_key.values())
    assert svc.stats["appends"] < svc.stats["inputs"] / 10 and wakes.acquire(timeout=0)   # group commit
    assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X"), "minor", "t", T0)) is False   # stopped


def test_drained_batch_is_one_transaction(tmp_path):
    path = tmp_path / "j.db"
    svc, gate = held_service(path, slice_s=60)     # the pass ends long before a slice: one commit
    appends = svc.stats["appends"]
    ts = [threading.Thread(target=lambda t=t: [svc.submit(RaiseAlarm(AlarmKey(f"CI-{t}", "X", str(i)), "minor",
                                                                        "t", T0)) for i in range(100)])
          for t in range(1, 5)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    gate.set()
    svc.stop()
    assert svc.stats["appends"] == appends + 1     # 400 inputs queued meanwhile: one append, one fsync
    assert svc.stats["max_batch_events"] == 400
    assert len(all_rows(path)) == 401


def test_pending_counts_what_the_held_thread_has_not_taken(tmp_path):
    svc, gate = held_service(tmp_path / "j.db")
    for i in range(3):
        svc.submit(RaiseAlarm(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0))
    assert svc.pending() == 3
    gate.set()
    assert svc.call(lambda engine: None).result(5) is None and svc.pending() == 0
    svc.stop()


def test_priority_lane_overtakes_a_backlog_and_passes_are_bounded(tmp_path):
    """A device alarm queued behind 6,000 other inputs is journaled in the next pass, not after them."""
    path = tmp_path / "j.db"
    svc, gate = held_service(path, max_batch=2_000, slice_s=60)
    wakes: list = []   # the events journaled so far, at each wake of the relay (after each append)
    svc.subscribe(lambda: wakes.append(svc.stats["events"]))
    for i in range(6_000):
        assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0))
    assert svc.submit(RaiseAlarm(AlarmKey("CI-2", "DEVICE_ALARM_7", "3"), "major", "t", T0), priority=True)
    gate.set()
    svc.stop()
    rows = all_rows(path)
    assert len(rows) == 6_002 and [r.event_seq for r in rows] == list(range(1, 6_003))
    assert rows[1].key == "CI-2/DEVICE_ALARM_7/3"               # first in the pass after the held one
    assert [r.key for r in rows[2:]] == [f"CI-1/X/{i}" for i in range(6_000)]   # lane order kept
    assert svc.stats["max_batch_inputs"] == 2_000               # max_batch others; the priority one alone
    assert svc.stats["batches"] >= 5                            # 1 priority, then 6,000 others in three passes
    # the device alarm was journaled (and the relay woken) on its own, before the backlog's first pass
    assert wakes[:2] == [2, 2_002], wakes   # (the held pass woke before this callback was added)


def drained(svc, inputs: int) -> None:
    """Wait until the alarm thread has taken ``inputs`` inputs (a stopping service refuses submits)."""
    deadline = time.monotonic() + 10
    while svc.stats["inputs"] < inputs and time.monotonic() < deadline:
        time.sleep(0.01)


class _Submitting(Sources):
    """Sources whose ``feed`` of the item with object ``at`` submits ``urgent`` to the service (priority)."""

    def __init__(self, at: str, urgent) -> None:
        super().__init__()
        self.at, self.urgent, self.svc = at, urgent, None

    def feed(self, item):
        if getattr(item, "key", None) is not None and item.key.object == self.at:
            assert self.svc.submit(self.urgent, priority=True)
        return super().feed(item)


def test_priority_input_arriving_within_a_pass_is_taken_within_it(tmp_path):
    """A device alarm that arrives while a pass of 1,000 inputs runs is journaled a few inputs later,
    after a commit of the pass's events so far, not after the pass: seq order stays journal order."""
    path = tmp_path / "j.db"
    urgent = RaiseAlarm(AlarmKey("CI-2", "DEVICE_ALARM_7", "3"), "major", "t", T0)
    sources = _Submitting("100", urgent)
    svc, gate = held_service(path, sources=sources, slice_s=60)
    sources.svc = svc
    appends = svc.stats["appends"]
    for i in range(1_000):
        assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0))
    gate.set()
    drained(svc, 1 + 1_000 + 1)
    svc.stop()
    rows = all_rows(path)
    assert len(rows) == 1_002 and [r.event_seq for r in rows] == list(range(1, 1_003))
    at = [r.key for r in rows].index("CI-2/DEVICE_ALARM_7/3")
    assert at == 1 + 112, at                            # the next look at the lane: 101 applied, then to 112
    assert [r.key for r in rows[1:at] + rows[at + 1:]] == [f"CI-1/X/{i}" for i in range(1_000)]
    assert svc.stats["preempted"] == 1
    assert svc.stats["appends"] == appends + 3          # 112 inputs, the device alarm, the other 888


def test_a_pass_commits_every_slice(tmp_path):
    """slice_s bounds a transaction's work: with 0 a pass commits at every look (every PEEK_EVERY inputs)."""
    path = tmp_path / "j.db"
    svc, gate = held_service(path, slice_s=0)
    appends = svc.stats["appends"]
    for i in range(400):
        assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0))
    gate.set()
    svc.stop()
    assert svc.stats["appends"] == appends + 400 // PEEK_EVERY
    assert svc.stats["preempted"] == 0 and len(all_rows(path)) == 401


def test_priority_input_waiting_at_the_end_of_a_pass_goes_before_its_tick(tmp_path):
    """Arriving after the last look of a pass that also runs the tick: taken before the tick."""
    path = tmp_path / "j.db"
    urgent = RaiseAlarm(AlarmKey("CI-2", "DEVICE_ALARM_7", "3"), "major", "t", T0)
    sources = _Submitting("19", urgent)           # 20 inputs: the last look is before input 16
    svc, gate = held_service(path, sources=sources, slice_s=60)
    sources.svc = svc
    for i in range(20):
        assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0))
    time.sleep(0.2)                               # > tick_s: the held thread's next pass runs the tick
    gate.set()
    drained(svc, 1 + 20 + 1)
    svc.stop()
    assert svc.stats["preempted"] == 1
    assert [r.key for r in all_rows(path)][-1] == "CI-2/DEVICE_ALARM_7/3"


def test_operator_futures_and_restart(tmp_path):
    path = tmp_path / "j.db"
    svc = service(path)
    svc.start()
    log = EventLog()
    log.subscribe(svc.submit)                      # GatewayEvents go through the sources in the alarm thread
    log.raise_condition("DEVICE_COMM_LOST", "CI-1", T0, "no link up")
    key = "CI-1/DEVICE_COMM_LOST/-"
    with pytest.raises(ValueError, match="operator"):
        svc.operate(OperatorAction("ack", key, " ", T0 + 1)).result(5)
    with pytest.raises(UnknownAlarm):
        svc.operate(OperatorAction("ack", "CI-9/DEVICE_COMM_LOST/-", "op", T0 + 1)).result(5)
    [ack] = svc.operate(OperatorAction("ack", key, "alice", T0 + 2)).result(5)
    assert (ack.state, ack.operator) == ("ACKED", "alice")
    with pytest.raises(IllegalTransition):
        svc.operate(OperatorAction("ack", key, "alice", T0 + 3)).result(5)
    seq, entries = svc.snapshot().result(5)
    svc.stop()
    assert seq == 2 and [e["state"] for e in entries] == ["ACKED"]

    again = service(path)
    again.start()
    assert again.snapshot().result(5) == (seq, entries)
    log2 = EventLog()
    log2.subscribe(again.submit)
    log2.raise_condition("DEVICE_COMM_LOST", "CI-1", T0 + 10)   # the journal's state: still active, no event
    log2.clear_condition("DEVICE_COMM_LOST", "CI-1", T0 + 11)
    again.stop()
    rows = all_rows(path)
    assert [(r.event_seq, r.transition, r.state) for r in rows] == [
        (1, "raise", "UNACK"), (2, "ack", "ACKED"), (3, "clear", "NORMAL")]


def test_start_reports_journal_error(tmp_path):
    svc = service("/no/such/dir/j.db")
    with pytest.raises(JournalError, match="/no/such/dir/j.db"):
        svc.start()
    assert svc.submit(RaiseAlarm(AlarmKey("CI-1", "X"), "minor", "t", T0)) is False


def test_a_coalesced_threat_sample_keeps_the_baseline_of_the_one_it_replaced(tmp_path):
    """Threat samples of one link coalesce while the alarm thread is busy (the newest counters win),
    but a replaced sample's baseline (a link's start, a settled link's last counters) is a point the
    newer one does not carry: it is kept, so a lone masquerade behind it still raises its alarm."""
    from alarms.observations import ThreatSample
    path = tmp_path / "j.db"
    svc, gate = held_service(path)
    assert svc.submit(ThreatSample("net A", {"bad_crc": 1}, T0, "CI-1", baseline={"bad_crc": 1}))
    assert svc.submit(ThreatSample("net A", {"bad_crc": 1, "unknown_source": 1}, T0 + 1000, "CI-1"))
    assert svc.stats["sampled_away"]["threat_sample"] == 1
    gate.set()
    svc.stop()
    keys = [r.key for r in all_rows(path)]
    assert "CI-1/MASQUERADE_SUSPECTED/net A" in keys, keys


def test_a_priority_input_arriving_within_a_priority_pass_waits_for_its_lane(tmp_path):
    """The priority lane keeps its order: a clear that arrives while a pass of 40 priority raises runs goes
    after them all, even though that pass looks at the lane every PEEK_EVERY inputs. Taken there (before the
    pass's rest), the clear of the last raise came before its raise: ignored, and the alarm stayed raised
    (2 of 200 DEVICE_ALARM clears lost in bench/alarm_bench.py's storm at 2d7b173)."""
    path = tmp_path / "j.db"
    last = AlarmKey("CI-2", "DEVICE_ALARM_7", "39")
    sources = _Submitting("0", ClearAlarm(last, T0 + 1))
    svc, gate = held_service(path, sources=sources, slice_s=60)
    sources.svc = svc
    for i in range(40):
        assert svc.submit(RaiseAlarm(AlarmKey("CI-2", "DEVICE_ALARM_7", str(i)), "major", "t", T0),
                          priority=True)
    gate.set()
    drained(svc, 1 + 40 + 1)
    svc.stop()
    rows = [(r.key, r.transition) for r in all_rows(path)]
    assert rows[1:] == [(f"CI-2/DEVICE_ALARM_7/{i}", "raise") for i in range(40)] + [(str(last), "clear")], rows
    assert svc.stats["preempted"] == 0
    assert svc.engine.status()["ignored_inputs"] == 0
