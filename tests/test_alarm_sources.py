"""Alarm sources: EventLog conditions, threat rates, DEVICE_ALARM frames, object state."""
from alarms.model import AlarmKey, ClearAlarm, InfoEvent, RaiseAlarm
from alarms.observations import DeviceAlarmFrame, ObjectChange, ThreatSample
from alarms.sources import GatewayEventSource, ObjectStateSource, Sources, ThreatLimits, ThreatMonitor
from gateway.line.events import EventLog
from railcodecs.messages import DeviceAlarm

T0 = 1_795_425_974_859


def test_event_log_conditions_and_info():
    src, got = GatewayEventSource(), []
    log = EventLog()
    log.subscribe(lambda ev: got.extend(src.on_event(ev)))
    log.raise_condition("DEVICE_COMM_LOST", "CI-1", T0, "no link up")
    log.raise_condition("COUPLING_TIMEOUT", "consist 9", T0 + 1)
    log.emit("LINK_UP", "CI-1", T0 + 2)
    log.clear_condition("DEVICE_COMM_LOST", "CI-1", T0 + 3)
    log.clear_condition("COUPLING_TIMEOUT", "consist 9", T0 + 4)
    log.emit("CONSIST_COUPLED", "consist 9", T0 + 5, "1025+1026")
    assert got == [RaiseAlarm(AlarmKey("CI-1", "DEVICE_COMM_LOST"), "critical", "no link up", T0),
                   RaiseAlarm(AlarmKey("consist 9", "COUPLING_TIMEOUT"), "minor", "COUPLING_TIMEOUT", T0 + 1),
                   ClearAlarm(AlarmKey("CI-1", "DEVICE_COMM_LOST"), T0 + 3),
                   ClearAlarm(AlarmKey("consist 9", "COUPLING_TIMEOUT"), T0 + 4),
                   InfoEvent(AlarmKey("consist 9", "CONSIST_COUPLED"), "1025+1026", T0 + 5)]


def test_threat_rates_raise_and_clear_with_window():
    m = ThreatMonitor(ThreatLimits(window_s=10, corruption=5, masquerade=1))
    assert m.sample("net_a:1", {"bad_crc": 0}, T0) == []
    assert m.sample("net_a:1", {"bad_crc": 4}, T0 + 1000) == []
    [r] = m.sample("net_a:1", {"bad_crc": 3, "bad_payload": 2, "bad_mac": 0}, T0 + 2000)
    assert r.key == AlarmKey("net_a:1", "CORRUPTION", "net_a:1") and r.severity == "major"
    assert m.sample("net_a:1", {"bad_crc": 3, "bad_payload": 2}, T0 + 9000) == []       # still 5 in window
    [c] = m.sample("net_a:1", {"bad_crc": 3, "bad_payload": 2}, T0 + 12_500)             # window is clean
    assert c == ClearAlarm(r.key, T0 + 12_500)
    [mq] = m.sample("net_a:1", {"bad_crc": 3, "bad_payload": 2, "unknown_source": 1}, T0 + 13_000)
    assert mq.key.code == "MASQUERADE_SUSPECTED" and mq.severity == "critical"
    assert m.active_keys() == {mq.key}
    assert m.tick(T0 + 22_999) == []                                    # sampled 9,999 ms ago: not quiet yet
    assert m.tick(T0 + 23_000) == [ClearAlarm(mq.key, T0 + 23_000)]   # a whole window without a sample
    assert m.active_keys() == set() and m.tick(T0 + 30_000) == []


def test_reconcile_clears_only_owned_codes_that_nothing_holds():
    src = Sources({257: "CI-1"}, limits=ThreatLimits(window_s=10, masquerade=1))
    src.feed(ObjectChange("TRACK_SECTIONS", 257, 101, 2, T0))               # section 101 in fault: held
    src.feed(ThreatSample("net A", {"unknown_source": 0}, T0, "CI-1"))
    src.feed(ThreatSample("net A", {"unknown_source": 1}, T0 + 1000, "CI-1"))  # masquerade: held
    comm, redundancy = AlarmKey("CI-1", "DEVICE_COMM_LOST"), AlarmKey("CI-2", "LINK_REDUNDANCY_LOST")
    raised = [comm, redundancy, AlarmKey("CI-1", "TRACK_SECTION_FAULT", "101"),
              AlarmKey("CI-1", "TRACK_SECTION_FAULT", "102"), AlarmKey("CI-1", "MASQUERADE_SUSPECTED", "net A"),
              AlarmKey("CI-1", "CORRUPTION", "net A"), AlarmKey("CI-1", "DEVICE_ALARM_7", "3")]
    cleared = src.reconcile(raised, {comm}, T0 + 2000)
    assert [c.key for c in cleared] == [redundancy, AlarmKey("CI-1", "TRACK_SECTION_FAULT", "102"),
                                        AlarmKey("CI-1", "CORRUPTION", "net A")]
    assert all(isinstance(c, ClearAlarm) and c.time_ms == T0 + 2000 for c in cleared)


def test_repetition_counts_the_links_duplicate_errors():
    m = ThreatMonitor(ThreatLimits(window_s=10, repetition=50))
    assert m.sample("a", {"duplicate": 7}, T0, device="CI-1") == []          # the first sample is the baseline
    assert m.sample("a", {"duplicate": 56}, T0 + 1000, device="CI-1") == []   # 49 in the window
    [r] = m.sample("a", {"duplicate": 57}, T0 + 2000, device="CI-1")
    assert r.key == AlarmKey("CI-1", "REPETITION", "a") and "50 in 10 s" in r.text


def test_dual_net_copies_are_not_duplicate_errors_and_raise_no_repetition():
    """Through the real receiver: every frame on net A and net B (the normal dual-net copy) leaves the
    links' duplicate errors at 0; repeats on one net are duplicates, and 50 of them raise REPETITION."""
    from railcodecs import Frame, Receiver, Signals
    rx = Receiver(1, {258: 1})
    links = {}
    for net in (0, 1):
        link = links[net] = rx.new_link(f"net {'AB'[net]}", net)
        link.device_id, link.kind, link.confirmed = 258, 1, True
    m = ThreatMonitor(ThreatLimits(window_s=10, repetition=50))
    for net in (0, 1):
        m.sample(links[net].name, links[net].errors, T0, device="CI-2")
    for seq in range(1, 1001):
        frame = Frame(258, 1, seq, T0, Signals(((201, Signals.GREEN),)))
        for net in ((0, 1) if seq % 2 else (1, 0)):       # either net may win the race
            rx.check(links[net], frame, T0)
    assert rx.senders[258].applied == 1000 and rx.senders[258].dual_net_copies == 1000
    assert all(links[n].errors.get("duplicate", 0) == 0 and links[n].copies == 500 for n in (0, 1))
    assert [m.sample(links[n].name, links[n].errors, T0 + 5000, device="CI-2") for n in (0, 1)] == [[], []]
    for _ in range(50):                                    # a third copy of seq 1000 on net A, 50 times
        rx.check(links[0], Frame(258, 1, 1000, T0, Signals(((201, Signals.GREEN),))), T0)
    assert links[0].errors["duplicate"] == 50
    [r] = m.sample(links[0].name, links[0].errors, T0 + 6000, device="CI-2")
    assert r.key == AlarmKey("CI-2", "REPETITION", "net A")


def test_device_alarm_frames_and_object_state():
    srcs = Sources({7: "CI-1"}, switch_lost_s=5)
    [r] = srcs.feed(DeviceAlarmFrame("CI-1", DeviceAlarm(17, 2, DeviceAlarm.RAISE, 203, "point heater"), T0))
    assert r == RaiseAlarm(AlarmKey("CI-1", "DEVICE_ALARM_17", "203"), "major", "point heater", T0)
    [c] = srcs.feed(DeviceAlarmFrame("CI-1", DeviceAlarm(17, 2, DeviceAlarm.CLEAR, 203, ""), T0 + 1))
    assert c == ClearAlarm(r.key, T0 + 1)
    [f] = srcs.feed(ObjectChange("TRACK_SECTIONS", 7, 12, 2, T0))
    assert f.key == AlarmKey("CI-1", "TRACK_SECTION_FAULT", "12")
    assert srcs.feed(ObjectChange("TRACK_SECTIONS", 7, 12, 1, T0 + 1)) == [ClearAlarm(f.key, T0 + 1)]
    assert srcs.feed(ObjectChange("SWITCHES", 7, 3, 3, T0)) == []            # lost: not yet
    assert srcs.tick(T0 + 5000) == []
    [lost] = srcs.tick(T0 + 5001)
    assert lost.key == AlarmKey("CI-1", "SWITCH_POSITION_LOST", "3")
    assert srcs.tick(T0 + 9000) == []
    assert srcs.feed(ObjectChange("SWITCHES", 7, 3, 0, T0 + 9100)) == [ClearAlarm(lost.key, T0 + 9100)]
    # lost briefly then back: never alarmed, nothing to clear
    o = ObjectStateSource({}, switch_lost_s=5)
    assert o.on_change("SWITCHES", 8, 1, 3, T0) == [] and o.on_change("SWITCHES", 8, 1, 1, T0 + 100) == []
    assert o.tick(T0 + 60_000) == [] and srcs.feed("not an observation") is None
