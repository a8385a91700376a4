"""Issue 15: nothing refused. The bound by eviction and grouping, exempt alarms, areas, chattering over a restart."""
import pytest

from alarms.engine import TABLE_FULL, AlarmEngine, UnknownAlarm
from alarms.model import AlarmKey

T0 = 1_795_425_974_859


def engine(**kw):
    return AlarmEngine(1, "demo-line-1", "Asia/Shanghai", **kw)


def keys_of(events, transition=None):
    return [str(e.alarm) for e in events if transition is None or e.transition == transition]


def invariant(e: AlarmEngine) -> None:
    """The table exceeds max_active only by exempt (critical, device) alarms."""
    st = e.status()
    assert st["over_bound"] <= st["exempt"], st


def test_a_full_table_evicts_the_oldest_returned_alarm_of_the_lowest_priority():
    e = engine(max_active=5)
    e.raise_("CI-1/A/1", "major", "t", T0)
    e.clear("CI-1/A/1", T0 + 1)                       # RTN_UNACK major, oldest
    e.raise_("CI-1/B/1", "warning", "t", T0 + 2)
    e.clear("CI-1/B/1", T0 + 3)                       # RTN_UNACK warning: lowest priority
    e.raise_("CI-1/B/2", "warning", "t", T0 + 4)
    e.clear("CI-1/B/2", T0 + 5)                       # RTN_UNACK warning, newer
    e.raise_("CI-1/C/1", "minor", "t", T0 + 6)
    e.raise_("CI-1/C/2", "minor", "t", T0 + 7)
    out = e.raise_("CI-1/D/1", "minor", "new", T0 + 8)
    [ev] = [x for x in out if x.transition == "evict"]
    assert (ev.previous_state, ev.state, ev.cause) == ("RTN_UNACK", "NORMAL", "table_full")
    assert str(ev.alarm) == "CI-1/B/1"
    assert keys_of(out, "raise") == [str(TABLE_FULL), "CI-1/D/1"]
    assert e.state_of("CI-1/D/1") == "UNACK" and e.state_of("CI-1/B/1") == "NORMAL"
    out = e.raise_("CI-1/D/2", "minor", "new", T0 + 9)
    assert keys_of(out, "evict") == ["CI-1/B/2"]      # then the next warning
    out = e.raise_("CI-1/D/3", "minor", "new", T0 + 10)
    assert keys_of(out, "evict") == ["CI-1/A/1"]      # then the major
    assert e.status()["evicted"] == 3 and e.status()["counted"] == 5
    invariant(e)


def test_with_only_active_alarms_the_lowest_priority_pair_with_most_alarms_is_grouped():
    e = engine(max_active=6)
    for i in range(2):
        e.raise_(f"IXL-1/SWITCH_POSITION_LOST/{i}", "major", "t", T0 + i)
    for i in range(3):
        e.raise_(f"IXL-1/TRACK_SECTION_FAULT/T{i}", "minor", "t", T0 + 10 + i)
    e.raise_("IXL-2/TRACK_SECTION_FAULT/T9", "minor", "t", T0 + 20)
    out = e.raise_("IXL-2/OTHER/-", "minor", "t", T0 + 30)
    group = [x for x in out if x.alarm == AlarmKey("IXL-1", "FLOOD_TRACK_SECTION_FAULT")]
    assert [(x.transition, x.state) for x in group] == [("raise", "UNACK")]
    assert group[0].group == {"key": "IXL-1/FLOOD_TRACK_SECTION_FAULT/-", "members": 3, "active": 3,
                              "first": "T0", "last": "T2"}
    assert "3 of 3 alarms active (first T0, last T2)" in group[0].text
    members = [x for x in out if x.transition == "group"]
    assert [str(x.alarm) for x in members] == [f"IXL-1/TRACK_SECTION_FAULT/T{i}" for i in range(3)]
    assert all((x.previous_state, x.state, x.active, x.cause, x.group) ==
               ("UNACK", "NORMAL", True, "table_full", {"key": "IXL-1/FLOOD_TRACK_SECTION_FAULT/-"})
               for x in members)
    snap = {x["alarm"]["key"] for x in e.snapshot()[1]}
    assert "IXL-1/TRACK_SECTION_FAULT/T0" not in snap and "IXL-1/FLOOD_TRACK_SECTION_FAULT/-" in snap
    assert "IXL-2/OTHER/-" in snap
    with pytest.raises(UnknownAlarm):
        e.ack("IXL-1/TRACK_SECTION_FAULT/T0", "op", T0 + 31)        # a member is not in the table
    invariant(e)


def test_a_grouped_members_inputs_are_journaled_and_the_group_follows_them():
    e = engine(max_active=3)
    for i in range(3):
        e.raise_(f"IXL-1/F/{i}", "minor", "t", T0 + i)
    out = e.raise_("IXL-1/F/3", "minor", "t", T0 + 5)       # full: groups IXL-1/F, the new one joins
    assert keys_of(out, "group")[-1] == "IXL-1/F/3"
    gkey = "IXL-1/FLOOD_F/-"
    out = e.raise_("IXL-1/F/4", "minor", "t", T0 + 6)        # a group exists: joins at once
    assert [(str(x.alarm), x.transition, x.active) for x in out] == [("IXL-1/F/4", "group", True)]
    out = []
    for i in range(5):
        out += e.clear(f"IXL-1/F/{i}", T0 + 10 + i)
    assert [(x.transition, x.active) for x in out if str(x.alarm) != gkey] == [("group", False)] * 5
    [gclear] = [x for x in out if str(x.alarm) == gkey]
    assert (gclear.transition, gclear.state) == ("clear", "RTN_UNACK")
    e.ack(gkey, "op", T0 + 20)                               # the group leaves: its members are released
    st = e.status()
    assert st["counted"] == 0 and st["groups"] == 0 and st["grouped_members"] == 0
    out = e.raise_("IXL-1/F/0", "minor", "t", T0 + 30)      # an alarm of its own again
    assert [(str(x.alarm), x.transition) for x in out] == [("IXL-1/F/0", "raise")]


def test_critical_and_device_alarms_are_never_evicted_or_grouped_and_never_refused():
    e = engine(max_active=4)
    for i in range(4):
        e.raise_(f"IXL-1/DEVICE_COMM_LOST/{i}", "critical", "t", T0 + i)
        e.clear(f"IXL-1/DEVICE_COMM_LOST/{i}", T0 + i)      # RTN_UNACK, but critical: not evictable
    out = e.raise_("IXL-1/DEVICE_COMM_LOST/9", "critical", "t", T0 + 10)
    assert keys_of(out, "raise") == [str(TABLE_FULL), "IXL-1/DEVICE_COMM_LOST/9"]
    assert keys_of(out, "evict") == [] and keys_of(out, "group") == []
    for i in range(3):                                       # device alarms: exempt whatever their severity
        out = e.raise_(f"IXL-1/DEVICE_ALARM_7/{i}", "warning", "t", T0 + 20 + i)
        assert keys_of(out, "raise") == [f"IXL-1/DEVICE_ALARM_7/{i}"]
    st = e.status()
    assert st["counted"] == 8 and st["over_bound"] == 4 and st["exempt"] == 8
    out = e.raise_("IXL-1/MINOR/1", "minor", "t", T0 + 30)  # nothing can make room: in, over the bound
    assert keys_of(out, "raise") == ["IXL-1/MINOR/1"]
    assert e.status()["over_bound_inserts"] == 1
    invariant(e)


def test_a_critical_alarm_into_a_full_table_of_critical_alarms_is_published():
    e = engine(max_active=10)
    for i in range(10):
        e.raise_(f"ZC-{i}/DEVICE_COMM_LOST/-", "critical", "t", T0 + i)
    out = e.raise_("ZC-99/DEVICE_COMM_LOST/-", "critical", "lost", T0 + 100)
    [ev] = [x for x in out if str(x.alarm) == "ZC-99/DEVICE_COMM_LOST/-"]
    assert (ev.transition, ev.state, ev.severity) == ("raise", "UNACK", "critical")
    assert [x.transition for x in out if x.alarm == TABLE_FULL] == ["raise"]
    assert "nothing is refused" in next(x.text for x in out if x.alarm == TABLE_FULL)
    invariant(e)


def test_table_full_clears_at_ninety_percent():
    e = engine(max_active=10)
    for i in range(9):
        e.raise_(f"A-{i}/X/-", "major", "t", T0)
        e.clear(f"A-{i}/X/-", T0)
    e.raise_("B/X/1", "major", "t", T0)
    out = e.raise_("B/X/2", "major", "t", T0 + 1)              # evicts A-0
    assert keys_of(out, "evict") == ["A-0/X/-"] and e.state_of(TABLE_FULL) == "UNACK"
    out = e.ack("A-1/X/-", "op", T0 + 2)                        # 9 of 10 counted: 90 %
    assert [(str(x.alarm), x.transition) for x in out][-1] == (str(TABLE_FULL), "clear")


def test_storm_of_chattering_alarms_never_refuses_a_device_alarm():
    """The bench's storm in small: every object chatters, the table fills with shelved-by-rule alarms,
    which are grouped; every DEVICE_ALARM raise and clear still comes out as its own event."""
    e = engine(max_active=50, chatter_cycles=3, chatter_window_s=60)
    device_events = []
    t = T0
    for rnd in range(12):
        for obj in range(40):
            for dev in ("IXL-1", "IXL-2"):
                t += 1
                e.raise_(f"{dev}/TRACK_SECTION_FAULT/T{obj}", "minor", "fault", t)
                e.clear(f"{dev}/TRACK_SECTION_FAULT/T{obj}", t)
        out = e.raise_(f"IXL-9/DEVICE_ALARM_2/{rnd}", "major", "dev", t)
        out += e.clear(f"IXL-9/DEVICE_ALARM_2/{rnd}", t + 1)
        device_events += [x for x in out if x.alarm.code == "DEVICE_ALARM_2"]
        invariant(e)
        assert e.status()["alarms"] <= 50 + 1 + e.status()["exempt"] + 2
    assert [(x.transition, x.alarm.object) for x in device_events] == [
        (tr, str(r)) for r in range(12) for tr in ("raise", "clear")]
    st = e.status()
    assert st["groups"] >= 1 and st["auto_shelved"] > 0 and st["over_bound_inserts"] == 0


def test_areas_flood_on_their_own_and_status_counts_per_area():
    e = engine(flood_alarms=3, flood_window_s=600, areas={"IXL-N": "north", "IXL-S": "south"})
    out = []
    for i in range(4):
        out += e.raise_(f"IXL-N/X/{i}", "minor", "t", T0 + i)
    for i in range(3):
        out += e.raise_(f"IXL-S/X/{i}", "minor", "t", T0 + 10 + i)
    floods = [(str(x.alarm), x.transition) for x in out if x.alarm.code == "ALARM_FLOOD"]
    assert floods == [("gateway/ALARM_FLOOD/north", "raise")]
    areas = e.status()["areas"]
    assert areas["north"]["flood"] and areas["north"]["new_alarms_in_window"] == 4
    assert not areas["south"]["flood"] and areas["south"]["alarms"] == 3
    for i in range(2):                                        # chatter in the south: shelved by rule
        e.raise_("IXL-S/C/-", "minor", "t", T0 + 100 + i)
        e.clear("IXL-S/C/-", T0 + 100 + i)
    e2 = engine(flood_alarms=3, chatter_cycles=2, areas={"IXL-N": "north", "IXL-S": "south"})
    for i in range(2):
        e2.raise_("IXL-S/C/-", "minor", "t", T0 + i)
        e2.clear("IXL-S/C/-", T0 + i)
    assert e2.status()["areas"]["south"] == {"flood": False, "new_alarms_in_window": 2, "alarms": 1,
                                             "chattering": 1, "shelved": 1}


def test_chattering_survives_a_restart():
    a = engine(chatter_cycles=3, chatter_window_s=60)
    journal = []
    for i in range(3):
        journal += a.raise_("IXL-1/C/-", "major", "x", T0 + i * 1000)
        journal += a.clear("IXL-1/C/-", T0 + i * 1000 + 500)
    for i in range(2):                                        # two cycles of another: one short of chattering
        journal += a.raise_("IXL-1/D/-", "major", "x", T0 + i * 1000)
        journal += a.clear("IXL-1/D/-", T0 + i * 1000 + 500)
    latest = {}
    for ev in journal:
        latest[ev.key] = ev
    now = T0 + 5_000
    b = engine(chatter_cycles=3, chatter_window_s=60, start_seq=journal[-1].event_seq)
    b.restore([v for v in latest.values() if v.state != "NORMAL"], journal, now_ms=now)
    assert b.state_of("IXL-1/C/-") == "SHELVED" and b.status()["chattering"] == 1
    assert b.raise_("IXL-1/C/-", "major", "x", now + 1) == []            # still suppressed after the restart
    out = b.raise_("IXL-1/D/-", "major", "x", now + 2) + b.clear("IXL-1/D/-", now + 3)
    assert [x.transition for x in out] == ["raise", "clear", "auto_shelve"]   # its history came back too
    assert all(str(x.alarm) != "IXL-1/C/-" for x in b.tick(now + 1 + 59_999))
    [back] = [x for x in b.tick(now + 1 + 60_000) if str(x.alarm) == "IXL-1/C/-"]
    assert (back.transition, back.state, back.active) == ("auto_unshelve", "UNACK", True)


def test_a_restored_group_takes_its_members_back_or_is_settled():
    a = engine(max_active=2)
    journal = []
    for i in range(3):
        journal += a.raise_(f"IXL-1/F/{i}", "minor", "t", T0 + i)
    latest = {}
    for ev in journal:
        latest[ev.key] = ev
    restored = [v for v in latest.values() if v.state != "NORMAL"]
    b = engine(max_active=2, start_seq=journal[-1].event_seq)
    b.restore(restored, journal, now_ms=T0 + 10)
    out = b.raise_("IXL-1/F/1", "minor", "t", T0 + 11)                  # the member's condition comes back
    assert [(str(x.alarm), x.transition) for x in out] == [("IXL-1/F/1", "group")]
    assert b.settle_groups(T0 + 12) == []                                # a member joined: stays
    c = engine(max_active=2, start_seq=journal[-1].event_seq)
    c.restore(restored, journal, now_ms=T0 + 10)
    [cl] = c.settle_groups(T0 + 12)                                      # nobody came back: cleared
    assert (str(cl.alarm), cl.transition, cl.state) == ("IXL-1/FLOOD_F/-", "clear", "RTN_UNACK")


def test_gateway_status_text_shows_the_bound_sampling_and_areas():
    from gateway.cli.status_cmd import render_text
    e = engine(max_active=3, flood_alarms=2, areas={"IXL-N": "north"})
    for i in range(4):
        e.raise_(f"IXL-N/F/{i}", "minor", "t", T0 + i)
    eng = {**e.status(), "service": {"sampled_away": {"threat_sample": 9, "info_event": 2}}}
    text = render_text({"alarms": {"engine": eng, "retention": {"journal_bytes": 3 * 1048576,
                                                                 "history_bytes": 1048576 // 2,
                                                                 "retention_days": 7, "history_retention_days": 90,
                                                                 "deleted": 5, "history_deleted": 0}}})
    assert "disk: journal 3.0 MiB, history 0.5 MiB; retention 7 d journal, 90 d history; pruned 5 journal and 0 " \
           "history rows" in text
    assert "bound: 0 evicted, 3 grouped into 1 flood groups, 0 shelved by rule, 0 over the bound (exempt 0); " \
           "sampled away under load: 2 info_event, 9 threat_sample" in text
    assert "areas: line ok (0 new in window, 0 chattering, 0 shelved); north FLOOD (4 new in window" in text


def test_areas_from_the_config_reach_gateway_status(tmp_path):
    """Configured operator areas: section faults of a device of area ``north`` flood that area, and
    the status document (``/status``, ``gateway status``) shows it per area."""
    from gateway_harness import QuietRelay, RunningGateway, line_config, wait_until

    from gateway.app import config
    from railcodecs import Frame, TrackSections
    raw = line_config(state_dir=str(tmp_path / "state"), hello_timeout_ms=60_000).raw
    raw["kafka"] = {"bootstrap_servers": "127.0.0.1:9"}
    raw["alarms"] = {"flood": {"alarms": 2, "window_s": 600}, "areas": {"north": ["CI-2"]}}
    cfg = config.parse(raw, "t")
    with RunningGateway(cfg, alarms=True, relay_factory=QuietRelay) as gw:
        now = gw.ctx.now_ms()
        gw.ctx.objects.apply(Frame(258, 1, 1, now, TrackSections(tuple((s, TrackSections.FAULT)
                                                                        for s in (111, 112, 113)))), now)

        def north():
            st = gw.status()["alarms"]["engine"]
            return st if st.get("areas", {}).get("north", {}).get("flood") else None
        st = wait_until(north, timeout=10, what="area north in flood")
        assert st["areas"]["north"]["new_alarms_in_window"] == 3
        assert "gateway/ALARM_FLOOD/north" in {e["alarm"]["key"] for e in gw.alarms.service.snapshot().result(5)[1]}


def test_areas_must_name_configured_devices():
    from gateway_harness import line_config

    from gateway.app import config
    raw = line_config().raw
    raw["alarms"] = {"areas": {"north": ["CI-2", "CI-22"]}}
    with pytest.raises(config.ConfigError) as err:
        config.parse(raw, "t")
    assert "alarms.areas.north: 'CI-22' is not a configured device (did you mean 'CI-2'?)" in str(err.value)


def test_the_example_of_docs_alarm_pipeline():
    """docs/alarm-pipeline.md "Floods, chattering and the bound": the example, step by step."""
    e = engine(max_active=4)
    e.raise_("IXL-1/TRACK_SECTION_FAULT/T1", "minor", "t", T0)
    e.raise_("IXL-1/TRACK_SECTION_FAULT/T2", "minor", "t", T0)
    e.raise_("ZC-1/DEVICE_COMM_LOST/-", "critical", "t", T0)
    e.raise_("IXL-1/SWITCH_POSITION_LOST/W3", "major", "t", T0)
    e.clear("IXL-1/SWITCH_POSITION_LOST/W3", T0)
    out = e.raise_("IXL-1/TRACK_SECTION_FAULT/T3", "minor", "t", T0 + 1)
    assert [(str(x.alarm), x.transition) for x in out] == [
        ("gateway/ALARM_TABLE_FULL/-", "raise"), ("IXL-1/SWITCH_POSITION_LOST/W3", "evict"),
        ("IXL-1/TRACK_SECTION_FAULT/T3", "raise")]
    out = e.raise_("IXL-1/TRACK_SECTION_FAULT/T4", "minor", "t", T0 + 2)
    assert [(str(x.alarm), x.transition) for x in out] == [
        ("IXL-1/FLOOD_TRACK_SECTION_FAULT/-", "raise")] + [
        (f"IXL-1/TRACK_SECTION_FAULT/T{i}", "group") for i in (1, 2, 3, 4)]
    assert out[0].group == {"key": "IXL-1/FLOOD_TRACK_SECTION_FAULT/-", "members": 3, "active": 3,
                            "first": "T1", "last": "T3"}
    assert out[-1].active is True
    assert {x["alarm"]["key"] for x in e.snapshot()[1]} == {
        "IXL-1/FLOOD_TRACK_SECTION_FAULT/-", "ZC-1/DEVICE_COMM_LOST/-", "gateway/ALARM_TABLE_FULL/-"}


def test_chattering_survives_a_restart_of_the_service_through_the_journal(tmp_path):
    """The real journal: a shelved-by-rule alarm is still shelved and still chattering after a restart,
    and an alarm one cycle short of chattering needs only one more cycle."""
    from alarms.model import ClearAlarm, RaiseAlarm
    from alarms.service import AlarmService
    clock = [T0]

    def service():
        return AlarmService(str(tmp_path / "j.db"), gateway_id=1, line="l", tz="UTC", tick_s=0.05,
                            clock=lambda: clock[0], engine_options={"chatter_cycles": 2, "chatter_window_s": 60})
    svc = service()
    svc.start()
    c, d = AlarmKey("IXL-1", "C"), AlarmKey("IXL-1", "D")
    for i in range(2):
        svc.submit(RaiseAlarm(c, "major", "x", T0 + i * 10))
        svc.submit(ClearAlarm(c, T0 + i * 10 + 5))
    svc.submit(RaiseAlarm(d, "major", "x", T0))
    svc.submit(ClearAlarm(d, T0 + 5))
    svc.stop()                          # drains the queue into the journal
    assert svc.engine.state_of(c) == "SHELVED"
    clock[0] = T0 + 30_000
    svc = service()
    svc.start()
    try:
        st = svc.status().result(5)
        assert st["chattering"] == 1 and st["by_state"] == {"SHELVED": 1, "RTN_UNACK": 1}   # C, D
        svc.submit(RaiseAlarm(c, "major", "x", T0 + 30_001))                  # still suppressed
        svc.submit(RaiseAlarm(d, "major", "x", T0 + 30_002))
        svc.submit(ClearAlarm(d, T0 + 30_003))                                # the second cycle in 60 s
    finally:
        svc.stop()
    assert (svc.engine.state_of(c), svc.engine.state_of(d)) == ("SHELVED", "SHELVED")
    assert svc.engine.counters["suppressed_chatter"] == 1


def test_journal_recent_reads_back_the_window_in_seq_order(tmp_path):
    from alarms.journal import Journal
    e = engine()
    events = []
    for i in range(10):
        events += e.raise_(f"X/C/{i}", "minor", "t", T0 + i * 10_000)
    j = Journal(str(tmp_path / "j.db"))
    try:
        j.append(events)
        got = j.recent(T0 + 50_000, slack_ms=0)
        assert [x.alarm.object for x in got] == ["5", "6", "7", "8", "9"]
        assert [x.alarm.object for x in j.recent(T0 + 50_000, limit=3, slack_ms=0)] == ["7", "8", "9"]
    finally:
        j.close()


def test_one_alarm_per_device_is_grouped_by_area_and_code():
    """No device has two alarms of one code (say LINK_REDUNDANCY_LOST of many devices): the area's
    alarms of the code are grouped into ``area <area>/FLOOD_<code>/-``; the bound holds."""
    e = engine(max_active=4, areas={"D1": "north", "D2": "north", "D3": "north", "D4": "north"})
    for i in range(1, 5):
        e.raise_(f"D{i}/LINK_REDUNDANCY_LOST/-", "major", "t", T0 + i)
    out = e.raise_("D9/LINK_REDUNDANCY_LOST/-", "major", "t", T0 + 10)     # D9 is in area line
    assert "area north/FLOOD_LINK_REDUNDANCY_LOST/-" in keys_of(out, "raise")
    assert keys_of(out, "group") == [f"D{i}/LINK_REDUNDANCY_LOST/-" for i in range(1, 5)]
    assert keys_of(out, "raise")[-1] == "D9/LINK_REDUNDANCY_LOST/-"
    out = e.raise_("D2/LINK_REDUNDANCY_LOST/y", "major", "t", T0 + 12)     # joins the area group
    assert [(str(x.alarm), x.transition) for x in out] == [("D2/LINK_REDUNDANCY_LOST/y", "group")]
    st = e.status()
    assert st["over_bound_inserts"] == 0 and st["counted"] == 2
    assert e.status()["areas"]["north"]["alarms"] == 1


def test_device_groups_merge_into_an_area_group_and_the_bound_holds():
    e = engine(max_active=3)
    for i in range(4):
        e.raise_(f"IXL-1/F/{i}", "minor", "t", T0 + i)                    # IXL-1/FLOOD_F/-
    e.raise_("IXL-2/F/0", "minor", "t", T0 + 10)
    e.raise_("IXL-2/F/1", "minor", "t", T0 + 11)
    e.raise_("IXL-3/F/0", "minor", "t", T0 + 12)                            # groups IXL-2
    assert {x["alarm"]["key"] for x in e.snapshot()[1]} >= {"IXL-1/FLOOD_F/-", "IXL-2/FLOOD_F/-"}
    out = e.raise_("IXL-4/F/0", "minor", "t", T0 + 13)                     # area level: merges both groups
    [area] = [x for x in out if str(x.alarm) == "area line/FLOOD_F/-" and x.transition == "raise"]
    assert area.group["members"] == 4 + 2 + 1
    merged = [(str(x.alarm), x.state, x.group) for x in out if x.transition == "group"]
    assert ("IXL-1/FLOOD_F/-", "NORMAL", {"key": "area line/FLOOD_F/-"}) in merged
    assert ("IXL-2/FLOOD_F/-", "NORMAL", {"key": "area line/FLOOD_F/-"}) in merged
    assert [k for k, _, _ in merged][-1] == "IXL-4/F/0"
    st = e.status()
    assert st["counted"] == 1 and st["grouped_members"] == 8 and st["over_bound_inserts"] == 0
    out = []
    for obj in ["IXL-1/F/0", "IXL-1/F/1", "IXL-1/F/2", "IXL-1/F/3", "IXL-2/F/0", "IXL-2/F/1", "IXL-3/F/0",
                "IXL-4/F/0"]:
        out += e.clear(obj, T0 + 20)
    assert [(str(x.alarm), x.transition) for x in out if x.alarm.source == "area line"] == [
        ("area line/FLOOD_F/-", "clear")]
    e.ack("area line/FLOOD_F/-", "op", T0 + 21)
    assert e.status()["grouped_members"] == 0 and e.status()["counted"] == 0
