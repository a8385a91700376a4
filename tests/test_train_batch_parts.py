"""The compiled UDP step's parts one by one: Sender, TrainTable, TrainBatch.run's arguments,
Registry.trains_seen, CouplingWorkers.submit_batch, and when railcodecs.speedups builds a TrainBatch.

The whole step is compared with the pure one in tests/test_udp_differential.py; these pin the
interfaces the rest of the gateway reads (status, the pure receiver and ObjectState.apply on the
compiled objects, the coupling workers' counters)."""
from __future__ import annotations

import os

import pytest

from gateway.coupling.engine import CouplingEngine
from gateway.coupling.workers import RECORD, CouplingWorkers
from gateway.line.devices import Registry
from gateway.line.events import EventLog
from gateway.line.object_state import TrainState
from railcodecs import MacPolicy, Receiver, TrainHeartbeat, TrainStatus, encode, speedups

compiled_only = pytest.mark.skipif(not speedups.available() or os.environ.get("RAILGATE_PURE") == "1",
                                   reason="the compiled core is not available")


def state(speed=5, ms=100):
    return TrainState(104, 1000, speed, 1, 2, 9, 2, 1, 1026, 0, 3, ms)


@compiled_only
def test_train_table_reads_as_the_dict_it_replaces():
    from railcodecs import _core
    table, ref = _core.TrainTable(TrainState), {}
    for tid, st in ((1025, state()), (1026, state(-7, 200)), (1025, state(9, 300)), (65535, state())):
        table[tid] = st
        ref[tid] = st
    assert table == ref and table.copy() == ref and list(table) == list(ref) and len(table) == 3
    assert table[1025] == state(9, 300) and table.get(1027) is None and table.get("x", 1) == 1
    assert 1026 in table and 1027 not in table and -1 not in table
    assert dict(table.items()) == ref and list(table.keys()) == list(ref)
    with pytest.raises(KeyError):
        table[1027]
    with pytest.raises(KeyError):
        table[70000] = state()
    for k in range(200):  # grows past its first capacity
        table[2000 + k] = state(k)
    assert len(table) == 203 and table[2199].speed_cm_s == 199


@compiled_only
def test_the_compiled_sender_has_sender_state_s_attributes():
    from railcodecs.receiver import SenderState
    rx = Receiver(1, {1025: 4, 258: 1})
    train, device = rx.senders[1025], rx.senders[258]
    assert type(train).__name__ == type(device).__name__ == "Sender"
    assert train.counters() == SenderState(1, 4, None).counters() and train.last_applied_ms is None
    train.applied += 2
    train.last_applied_ms = 123
    assert train.counters()["applied"] == 2 and train.last_applied_ms == 123
    train.last_applied_ms = None
    assert train.last_applied_ms is None
    with train.lock:
        assert train.lock.locked() and not train.lock.acquire(blocking=False)
        train.window.reset()
    assert not train.lock.locked()
    with pytest.raises(RuntimeError, match="unlocked"):
        train.lock.release()
    assert train.lock.acquire(timeout=0.01) and not train.lock.acquire(timeout=0.01)
    train.lock.release()


def test_pure_receiver_keeps_the_dataclass(implementation):
    speedups.use("pure")
    try:
        assert type(Receiver(1, {1025: 4}).senders[1025]).__name__ == "SenderState"
        assert speedups.new_train_table(TrainState) == {} and speedups.sender_type() is None
    finally:
        speedups.use(implementation)


@compiled_only
def test_train_batch_is_built_only_on_compiled_parts():
    rx, checks = Receiver(1, {1025: 4}), Receiver(1, {}).new_link("udp")
    table = speedups.new_train_table(TrainState)
    args = (bytearray(144 * 4), 144, 144, rx, checks)
    assert speedups.train_batch(*args, MacPolicy(), table, print, None, None) is not None
    assert speedups.train_batch(*args, MacPolicy(), {}, print, None, None) is None             # a pure table
    assert speedups.train_batch(*args, MacPolicy().with_session(b"k" * 32), table, print, None, None) is None
    speedups.use("pure")
    try:
        pure_rx = Receiver(1, {1025: 4})
    finally:
        speedups.use("compiled")
    assert speedups.train_batch(bytearray(144), 144, 144, pure_rx, checks, MacPolicy(), table, print, None,
                                None) is None


@compiled_only
def test_train_batch_reads_datagram_j_from_slot_j():
    """run(lengths, count, now_ms): datagram j is lengths[j] bytes at j * slot_size; a count the lengths
    or the arena cannot hold is refused."""
    import array
    rx, checks = Receiver(1, {1025: 4}), Receiver(1, {}).new_link("udp")
    table, seen = speedups.new_train_table(TrainState), []
    arena = bytearray(144 * 3)
    step = speedups.train_batch(arena, 144, 144, rx, checks, MacPolicy(), table,
                                lambda ids, now: seen.append((ids, now)), None, None)
    good = encode(TrainHeartbeat(7), src=1025, dst=1, seq=1, time_ms=5000)
    arena[144:144 + len(good)] = good                       # slot 1; slot 0 holds the head of a long one
    lengths = array.array("i", [200, len(good), 0])
    assert step.run(lengths, 2, 5000) == 1                  # one oversize: slot 0 (zeros: bad_sync)
    assert checks.errors == {"bad_sync": 1} and seen == [((1025,), 5000)] and rx.senders[1025].applied == 1
    assert step.run(lengths, 0, 5000) == 0
    with pytest.raises(ValueError):
        step.run(array.array("i", [0] * 4), 4, 5000)        # 4 datagrams, 3 slots
    with pytest.raises(ValueError):
        step.run(array.array("i", [0] * 2), 3, 5000)        # 3 datagrams, 2 lengths


def test_trains_seen_is_train_seen_for_each():
    events = EventLog()
    reg = Registry([], [7, 8, 9], 100, events)
    reg.check_trains(1000, 0)  # all three lost
    reg.trains_seen((9, 7), 1001)
    assert reg.train_last_rx(9) == reg.train_last_rx(7) == 1001 and reg.train_last_rx(8) is None
    assert reg.train_reachable(9) and reg.train_reachable(7) and not reg.train_reachable(8)
    assert events.counts["TRAIN_COMM_RESTORED"] == 2


def test_submit_batch_queues_members_and_counts_the_others():
    engine = CouplingEngine({9: (1025, 1026)}, EventLog())
    workers = CouplingWorkers(engine, 2)
    report = TrainStatus(104, 0, 0, 0, 0, 9, 2, 1, 1026, 0, 0).pack()
    records = RECORD.pack(1025, 5000, report) + RECORD.pack(1026, 5001, report)
    workers.submit_batch(records, [1, 1, 3, 0], 6000)  # 1025 -> worker 1, 1026 -> worker 0; 3 others on 0
    assert engine.paired_trains() == {1025, 1026} and workers.worker_count == 2
    assert engine.totals()["unconfigured_reports"] == 3
    workers.stop()
    for w in workers._workers:  # never started: run what was queued, here
        workers._run(w)
    assert [s["reports"] for s in workers.stats()] == [4, 1]
    assert engine.snapshot()[0]["counters"]["reports"] == [1, 1]


def test_pending_counts_queued_reports_until_ingested():
    engine = CouplingEngine({9: (1025, 1026)}, EventLog())
    workers = CouplingWorkers(engine, 2)
    report = TrainStatus(104, 0, 0, 0, 0, 9, 2, 1, 1026, 0, 0).pack()
    workers.submit_batch(RECORD.pack(1025, 5000, report) + RECORD.pack(1026, 5001, report), [1, 1, 3, 0], 6000)
    workers.submit(1025, TrainStatus.unpack(report), 5200, 6200)
    assert workers.pending() == 3  # the members' two records and the report; the 3 others are only counted
    workers.stop()
    for w in workers._workers:  # never started: run what was queued, here
        workers._run(w)
    assert workers.pending() == 0
