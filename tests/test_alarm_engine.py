"""AlarmEngine: sequence numbers, lifecycle through the engine, chattering, flood, bound, shelving, restore."""
import pytest

from alarms.engine import TABLE_FULL, AlarmEngine, UnknownAlarm
from alarms.lifecycle import IllegalTransition
from alarms.model import AlarmKey, OperatorAction, RaiseAlarm

T0 = 1_795_425_974_859
K = AlarmKey("CI-1", "DEVICE_COMM_LOST")


def engine(**kw):
    return AlarmEngine(1, "demo-line-1", "Asia/Shanghai", **kw)


def test_raise_ack_clear_and_seq_continues_from_start():
    e = engine(start_seq=41)
    evs = e.raise_(K, "critical", "no link up", T0)
    evs += e.raise_(K, "critical", "again", T0 + 1)          # already active: no transition
    evs += e.ack(K, "alice", T0 + 2)
    evs += e.clear(K, T0 + 3)
    assert [(x.transition, x.previous_state, x.state) for x in evs] == [
        ("raise", "NORMAL", "UNACK"), ("ack", "UNACK", "ACKED"), ("clear", "ACKED", "NORMAL")]
    assert [x.event_seq for x in evs] == [42, 43, 44]
    assert evs[1].operator == "alice" and evs[0].operator is None
    assert evs[0].time == "2026-11-23T17:26:14.859+08:00"
    assert len({x.event_id for x in evs}) == 3
    assert e.snapshot() == (44, [])
    assert e.counters["ignored_inputs"] == 1


def test_seq_strictly_increasing_over_mixed_traffic():
    e = engine()
    seqs = []
    for i in range(200):
        k = AlarmKey("CI-1", "X", str(i % 17))
        seqs += [x.event_seq for x in e.raise_(k, "minor", "t", T0 + i)]
        seqs += [x.event_seq for x in e.clear(k, T0 + i)] if i % 3 == 0 else []
        seqs += [x.event_seq for x in e.info(AlarmKey("consist 9", "CONSIST_COUPLED"), "coupled", T0 + i)]
        seqs += [x.event_seq for x in e.tick(T0 + i)]
    assert seqs == list(range(1, len(seqs) + 1))


def test_operator_errors_change_nothing():
    e = engine()
    e.raise_(K, "critical", "x", T0)
    e.ack(K, "bob", T0)
    before = e.snapshot()
    with pytest.raises(ValueError, match="operator expected the operator's name, got ''"):
        e.ack(K, "", T0)
    with pytest.raises(ValueError, match="operator"):
        e.shelve(K, "   ", 5, T0)
    with pytest.raises(IllegalTransition, match="ack is not allowed in state ACKED"):
        e.ack(K, "bob", T0)
    with pytest.raises(UnknownAlarm, match="CI-2/DEVICE_COMM_LOST/-: not in the alarm table"):
        e.ack("CI-2/DEVICE_COMM_LOST/-", "bob", T0)
    with pytest.raises(ValueError, match="shelve minutes"):
        e.shelve(K, "bob", 0, T0)
    with pytest.raises(ValueError, match="severity expected one of"):
        e.raise_("CI-1/OTHER/-", "info", "x", T0)
    assert e.snapshot() == before
    # a NORMAL alarm (acked after it returned) is not in the table any more
    e.clear(K, T0 + 5)
    with pytest.raises(UnknownAlarm):
        e.ack(K, "bob", T0 + 6)


def test_shelve_expiry_lands_by_condition_underneath():
    e = engine()
    e.raise_(K, "critical", "x", T0)
    [sh] = e.shelve(K, "carol", 2, T0 + 1000)
    assert sh.state == "SHELVED" and sh.shelved_until_ms == T0 + 1000 + 120_000
    e.clear(K, T0 + 2000)                                     # tracked while shelved
    e.raise_(K, "critical", "x", T0 + 3000)
    assert e.tick(T0 + 120_999) == []
    [ex] = e.tick(T0 + 121_000)
    assert (ex.transition, ex.state, ex.active, ex.operator) == ("shelve_expired", "UNACK", True, None)
    # shelved while inactive -> NORMAL on unshelve, and the alarm leaves the table
    e.clear(K, T0 + 122_000)
    e.shelve(K, "carol", 1, T0 + 123_000)
    [un] = e.unshelve(K, "carol", T0 + 124_000)
    assert (un.state, un.active) == ("NORMAL", False)
    assert e.snapshot()[1] == []
    assert e.tick(T0 + 999_999) == []                         # the old shelf entry is lazily dropped


def test_reshelve_extends_and_out_of_service_tracks():
    e = engine()
    e.raise_(K, "critical", "x", T0)
    e.shelve(K, "d", 1, T0)
    e.shelve(K, "d", 10, T0 + 1)
    assert e.tick(T0 + 61_000) == []                          # first shelf superseded
    [oos] = e.remove_from_service(K, "d", T0 + 62_000)
    assert oos.state == "OUT_OF_SERVICE" and oos.shelved_until_ms is None
    e.clear(K, T0 + 63_000)
    [back] = e.return_to_service(K, "d", T0 + 64_000)
    assert (back.state, back.active) == ("NORMAL", False)


def test_chattering_shelves_by_rule_suppresses_and_unshelves_after_quiet():
    e = engine(chatter_cycles=3, chatter_window_s=60)
    out = []
    for i in range(3):                                        # 3 raise/clear cycles in 30 s
        out += e.raise_(K, "critical", "x", T0 + i * 10_000)
        out += e.clear(K, T0 + i * 10_000 + 5_000)
    clear, shelve = out[-2:]
    assert clear.transition == "clear" and clear.chattering is True
    assert (shelve.transition, shelve.previous_state, shelve.state, shelve.cause, shelve.operator,
            shelve.shelved_until_ms) == ("auto_shelve", "RTN_UNACK", "SHELVED", "chattering", None, None)
    assert [x.chattering for x in out[:-2]] == [False] * 5
    assert e.snapshot()[1][0]["state"] == "SHELVED" and e.snapshot()[1][0]["cause"] == "chattering"
    assert e.raise_(K, "critical", "x", T0 + 40_000) == []   # suppressed
    assert e.clear(K, T0 + 41_000) == []
    assert e.raise_(K, "critical", "x", T0 + 42_000) == []
    assert e.counters["suppressed_chatter"] == 3 and e.counters["auto_shelved"] == 1
    assert e.status()["chattering"] == 1
    assert e.tick(T0 + 42_000 + 59_999) == []                 # not quiet for the whole period yet
    [back] = e.tick(T0 + 42_000 + 60_000)
    assert (back.transition, back.previous_state, back.state, back.active, back.chattering, back.cause) == (
        "auto_unshelve", "SHELVED", "UNACK", True, False, "chattering")
    assert back.raised_ms == T0 + 42_000
    assert e.status()["chattering"] == 0


def test_quiet_period_is_its_own_setting():
    e = engine(chatter_cycles=2, chatter_window_s=60, chatter_quiet_s=5)
    for i in range(2):
        e.raise_(K, "major", "x", T0 + i * 1000)
        e.clear(K, T0 + i * 1000 + 500)
    assert e.state_of(K) == "SHELVED"
    assert e.tick(T0 + 1500 + 4_999) == []
    [back] = e.tick(T0 + 1500 + 5_000)
    assert (back.transition, back.state) == ("auto_unshelve", "NORMAL")


def test_operator_shelve_is_not_replaced_by_the_rule():
    e = engine(chatter_cycles=2, chatter_window_s=60)
    e.raise_(K, "major", "x", T0)
    e.shelve(K, "op", 30, T0 + 1)
    out = []
    for i in range(2):
        out += e.clear(K, T0 + 10 + i * 10)
        out += e.raise_(K, "major", "x", T0 + 15 + i * 10)
    assert "auto_shelve" not in [x.transition for x in out]
    assert e.status()["chattering"] == 1 and e.state_of(K) == "SHELVED"


def test_cycles_spread_wider_than_window_do_not_chatter():
    e = engine(chatter_cycles=3, chatter_window_s=60)
    for i in range(6):
        e.raise_(K, "critical", "x", T0 + i * 40_000)
        evs = e.clear(K, T0 + i * 40_000 + 1000)
        assert evs and not evs[0].chattering


def test_an_acked_alarm_that_chatters_back_to_normal_is_shelved_then_leaves():
    e = engine(chatter_cycles=2, chatter_window_s=10)
    for i in range(2):
        e.raise_(K, "critical", "x", T0 + i * 1000)
        e.ack(K, "op", T0 + i * 1000 + 100)
        out = e.clear(K, T0 + i * 1000 + 500)
    assert [(x.transition, x.state) for x in out] == [("clear", "NORMAL"), ("auto_shelve", "SHELVED")]
    assert e.status()["alarms"] == 1 and e.snapshot()[1][0]["state"] == "SHELVED"
    [back] = e.tick(T0 + 20_000)
    assert (back.transition, back.state, back.active) == ("auto_unshelve", "NORMAL", False)
    assert e.status()["alarms"] == 0


def test_flood_raises_the_area_alarm_with_the_rate_and_clears_at_half():
    e = engine(flood_alarms=10, flood_window_s=600)
    for i in range(10):
        assert all(x.alarm.code != "ALARM_FLOOD" for x in e.raise_(AlarmKey("CI-1", "X", str(i)), "minor", "t", T0 + i))
    assert e.status()["flood"] is False
    out = e.raise_(AlarmKey("CI-1", "X", "10"), "minor", "t", T0 + 10)
    flood = [x for x in out if x.alarm.code == "ALARM_FLOOD"]
    assert [(str(x.alarm), x.transition, x.severity) for x in flood] == [("gateway/ALARM_FLOOD/line", "raise", "major")]
    assert "11 new alarms in 10 min (1.1/min" in flood[0].text
    assert e.status()["flood"] is True and e.counters["floods"] == 1
    assert e.status()["areas"]["line"]["flood"] is True
    [clear] = e.tick(T0 + 600_000 + 5)
    assert (str(clear.alarm), clear.transition) == ("gateway/ALARM_FLOOD/line", "clear")
    assert e.status()["flood"] is False


def test_apply_dispatches_inputs():
    e = engine()
    [r] = e.apply(RaiseAlarm(K, "major", "t", T0))
    [s] = e.apply(OperatorAction("shelve", str(K), "op", T0 + 1, minutes=5))
    assert (r.state, s.state, s.shelved_until_ms) == ("UNACK", "SHELVED", T0 + 1 + 300_000)
    with pytest.raises(TypeError, match="got str"):
        e.apply("raise")


def test_restore_after_restart():
    a = engine()
    journal = []
    journal += a.raise_(K, "critical", "x", T0)
    journal += a.raise_("CI-1/OTHER/7", "minor", "y", T0)
    journal += a.ack("CI-1/OTHER/7", "op", T0 + 1)
    journal += a.raise_("CI-1/SH/-", "major", "z", T0)
    journal += a.shelve("CI-1/SH/-", "op", 1, T0 + 2)
    journal += a.raise_("CI-1/GONE/-", "major", "z", T0)
    journal += a.ack("CI-1/GONE/-", "op", T0 + 3)
    journal += a.clear("CI-1/GONE/-", T0 + 4)
    latest = {}
    for ev in journal:
        latest[ev.key] = ev
    b = engine(start_seq=journal[-1].event_seq)
    b.restore([v for v in latest.values() if v.state != "NORMAL"])
    assert b.snapshot() == a.snapshot()
    [ex] = b.tick(T0 + 2 + 60_000)
    assert ex.event_seq == journal[-1].event_seq + 1 and ex.state == "UNACK"
    assert b.ack(K, "op", T0 + 70_000)[0].state == "ACKED"
