"""Link transition table, event log conditions, device reachability, object state."""
from __future__ import annotations

import threading

import pytest

from gateway.app import config
from gateway.line.devices import Registry
from gateway.line.events import EventLog
from gateway.line.link_state import TRANSITIONS, IllegalTransition, LinkEvent, LinkState, next_state
from gateway.line.object_state import ObjectState
from railcodecs import Frame, Signals, TrainStatus

S, E = LinkState, LinkEvent


def test_every_legal_move_and_every_illegal_one():
    for state in S:
        for event in E:
            if (state, event) in TRANSITIONS:
                new, reason = next_state(state, event)
                assert isinstance(new, LinkState)
            else:
                with pytest.raises(IllegalTransition, match=f"{state.value} cannot take event {event.value}"):
                    next_state(state, event)


def test_close_reasons_follow_the_icd():
    assert next_state(S.UP, E.HEARTBEAT_TIMEOUT) == (S.CLOSING, 1)
    assert next_state(S.AWAIT_HELLO, E.HELLO_TIMEOUT) == (S.CLOSING, 2)
    assert next_state(S.AWAIT_HELLO, E.PROTOCOL_ERROR) == (S.CLOSING, 2)
    assert next_state(S.UP, E.LOCAL_CLOSE) == (S.CLOSING, 0)
    assert next_state(S.UP, E.PEER_CLOSE) == (S.CLOSING, 0)
    assert next_state(S.UP, E.REPLACED) == (S.CLOSING, 3)
    assert next_state(S.UP, E.SLOW_PEER) == (S.CLOSED, None)
    assert not any(k[0] is S.CLOSED for k in TRANSITIONS)  # nothing leaves CLOSED


def test_a_session_is_up_only_once_confirmed():
    """ICD 1.1: HELLO_ACK leads to AWAIT_CONFIRM; only SESSION_CONFIRM leads to UP; an unconfirmed link is
    not registered, so nothing can replace it."""
    assert next_state(S.AWAIT_HELLO, E.HELLO_OK) == (S.AWAIT_CONFIRM, None)
    assert next_state(S.AWAIT_CONFIRM, E.CONFIRMED) == (S.UP, None)
    assert next_state(S.AWAIT_CONFIRM, E.CONFIRM_TIMEOUT) == (S.CLOSING, 2)
    assert next_state(S.AWAIT_CONFIRM, E.PROTOCOL_ERROR) == (S.CLOSING, 2)
    assert [k for k, (new, _) in TRANSITIONS.items() if new is S.UP] == [(S.AWAIT_CONFIRM, E.CONFIRMED)]
    for never in (E.REPLACED, E.HEARTBEAT_TIMEOUT):  # not registered; silence bounded by the confirm deadline
        with pytest.raises(IllegalTransition):
            next_state(S.AWAIT_CONFIRM, never)


def test_conditions_raise_once_and_clear_with_restored_events():
    log = EventLog()
    seen = []
    log.subscribe(seen.append)
    assert log.raise_condition("DEVICE_COMM_LOST", "CI-1", 1)
    assert not log.raise_condition("DEVICE_COMM_LOST", "CI-1", 2)
    assert log.clear_condition("DEVICE_COMM_LOST", "CI-1", 3)
    assert not log.clear_condition("DEVICE_COMM_LOST", "CI-1", 4)
    assert [(e.name, e.active) for e in seen] == [("DEVICE_COMM_LOST", True), ("DEVICE_COMM_RESTORED", False)]
    assert log.snapshot()["conditions"] == []


def test_conditions_from_many_threads_raise_exactly_once():
    log = EventLog()
    barrier = threading.Barrier(8)
    wins = []

    def worker():
        barrier.wait()
        wins.append(log.raise_condition("LINK_REDUNDANCY_LOST", "CI-1", 1))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1 and log.counts["LINK_REDUNDANCY_LOST"] == 1


def demo_registry():
    cfg = config.load("config/demo-line.yaml")
    log = EventLog()
    return Registry(cfg.devices, cfg.trains.ids, cfg.trains.heartbeat_ms, log), log


def active(log):
    return sorted((c["name"], c["source"]) for c in log.snapshot()["conditions"])


def test_redundancy_lost_then_comm_lost_then_restored():
    reg, log = demo_registry()
    a, b = object(), object()
    reg.link_up(257, "A", a, 1)
    reg.link_up(257, "B", b, 2)
    assert active(log) == []
    reg.link_down(257, "B", b, 3, "heartbeat timeout")
    assert active(log) == [("LINK_REDUNDANCY_LOST", "CI-1")]
    reg.link_down(257, "A", a, 4, "heartbeat timeout")
    assert active(log) == [("DEVICE_COMM_LOST", "CI-1"), ("LINK_REDUNDANCY_LOST", "CI-1")]
    reg.link_up(257, "A", a, 5)
    assert active(log) == [("LINK_REDUNDANCY_LOST", "CI-1")]
    reg.link_up(257, "B", b, 6)
    assert active(log) == []


def test_replaced_link_going_down_does_not_count():
    reg, log = demo_registry()
    old, new = object(), object()
    reg.link_up(257, "A", old, 1)
    assert reg.link_up(257, "A", new, 2) is old
    reg.link_down(257, "A", old, 3, "replaced")
    assert reg.devices[257].reachable


def test_startup_check_and_single_net_device():
    reg, log = demo_registry()
    reg.link_up(257, "A", object(), 1)
    reg.check_startup(10)
    got = active(log)
    assert ("LINK_REDUNDANCY_LOST", "CI-1") in got and ("DEVICE_COMM_LOST", "CI-2") in got
    assert ("DEVICE_COMM_LOST", "PSD-1") in got and ("LINK_REDUNDANCY_LOST", "PSD-1") not in got


def test_trains_lost_and_restored():
    reg, log = demo_registry()
    reg.train_seen(1025, 1000)
    reg.check_trains(1000 + 3000, started_ms=0)  # exactly 3 x 1000 ms: still alive
    assert ("TRAIN_COMM_LOST", "train 1025") not in active(log)
    reg.check_trains(1000 + 3001, started_ms=0)
    assert ("TRAIN_COMM_LOST", "train 1025") in active(log)
    reg.train_seen(1025, 5000)
    assert ("TRAIN_COMM_LOST", "train 1025") not in active(log) and reg.train_reachable(1025)


def test_object_state_latest_wins_with_time():
    st = ObjectState()
    changes = []
    st.subscribe(lambda *a: changes.append(a))
    st.apply(Frame(257, 1, 1, 0, Signals(((201, 0), (202, 2)))), 100)
    st.apply(Frame(257, 1, 2, 0, Signals(((201, 0), (202, 1)))), 200)
    assert st.signals[(257, 201)] == (0, 200) and st.signals[(257, 202)] == (1, 200)
    assert [c[2:4] for c in changes] == [(201, 0), (202, 2), (202, 1)]
    ts = TrainStatus(104, 5, 100, 0, 0, 9, 2, 1, 1026, 0, 0)
    st.apply(Frame(1025, 1, 3, 0, ts), 300)
    assert st.trains[1025].consist_id == 9 and st.trains[1025].applied_ms == 300
    assert st.device_snapshot(257)["signals"]["202"] == {"value": "yellow", "applied_ms": 200}


def test_a_watching_listener_hears_only_changes_into_or_out_of_its_value():
    """``subscribe(only=...)``: the filter the alarm stage relies on, done by the apply itself."""
    from railcodecs import Switches, TrackSections
    st = ObjectState()
    every, watched = [], []
    st.subscribe(lambda *a: every.append(a[:4]))
    st.subscribe(lambda *a: watched.append(a[:4]), only={"TRACK_SECTIONS": 2, "SWITCHES": 3})
    frames = [TrackSections(((101, 1), (102, 2))),   # 101 new and not FAULT: no; 102 new and FAULT: yes
              TrackSections(((101, 2), (102, 2))),   # 101 into FAULT: yes; 102 unchanged: nobody
              Signals(((201, 2),)),                  # a kind it does not watch: never
              TrackSections(((101, 0), (102, 3))),   # both out of FAULT: yes
              TrackSections(((101, 3),)),            # 0 -> 3: neither side is FAULT
              Switches(((301, 3), (302, 0))), Switches(((301, 2), (302, 1)))]
    for seq, msg in enumerate(frames, 1):
        st.apply(Frame(257, 1, seq, 0, msg), 100 + seq)
    assert watched == [("TRACK_SECTIONS", 257, 102, 2), ("TRACK_SECTIONS", 257, 101, 2),
                       ("TRACK_SECTIONS", 257, 101, 0), ("TRACK_SECTIONS", 257, 102, 3),
                       ("SWITCHES", 257, 301, 3), ("SWITCHES", 257, 301, 2)]
    assert len(every) == 11
    with pytest.raises(ValueError, match="unknown kind"):
        st.subscribe(print, only={"SECTIONS": 2})
    with pytest.raises(ValueError, match="0..255"):
        st.subscribe(print, only={"SWITCHES": 256})
    st.unsubscribe(every.append)  # not subscribed: nothing changes
    assert len(st._listeners) == 2


def test_device_snapshots_group_every_table_by_device_in_one_walk():
    from railcodecs import Switches, TrackSections
    st = ObjectState()
    st.apply(Frame(257, 1, 1, 0, Signals(((201, 0),))), 100)
    st.apply(Frame(258, 1, 1, 0, TrackSections(((111, 1), (112, 3)))), 110)
    st.apply(Frame(258, 1, 2, 0, Switches(((304, 1),))), 120)
    snaps = st.device_snapshots()
    assert snaps == {257: {"sections": {}, "signals": {"201": {"value": "red", "applied_ms": 100}}, "switches": {}},
                     258: {"sections": {"111": {"value": "occupied", "applied_ms": 110},
                                        "112": {"value": "locked", "applied_ms": 110}},
                           "signals": {}, "switches": {"304": {"value": "reverse", "applied_ms": 120}}}}
    assert st.device_snapshot(258) == snaps[258] and st.device_snapshot(999) == {"sections": {}, "signals": {},
                                                                              "switches": {}}
