"""Every message the engine produces validates against docs/schema/alarm-message.schema.json; bad ones do not."""
import json
import pathlib
import uuid

import jsonschema
import pytest

from alarms.engine import AlarmEngine
from alarms.model import AlarmEvent, AlarmKey, iso_time

SCHEMA = json.loads((pathlib.Path(__file__).parents[1] / "docs/schema/alarm-message.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
T0 = 1_795_425_974_859


def snapshot_chunks(engine, per_chunk=3):
    """How a relay builds chunks from engine.snapshot() (the doc's snapshot message)."""
    seq, entries = engine.snapshot()
    parts = [entries[i:i + per_chunk] for i in range(0, len(entries), per_chunk)] or [[]]
    sid = uuid.uuid4().hex
    return [{"schema_version": 1, "kind": "snapshot", "snapshot_id": sid, "gateway_id": engine.gateway_id,
             "line": engine.line, "event_seq": seq, "chunk": i, "chunks": len(parts), "time_ms": T0,
             "time": iso_time(T0, engine.tz), "alarms": part} for i, part in enumerate(parts)]


def every_kind_of_event():
    e = AlarmEngine(7, "demo-line-1", "Asia/Shanghai", max_active=6, chatter_cycles=2, chatter_window_s=10)
    out = []
    keys = [AlarmKey("CI-1", "DEVICE_COMM_LOST"), AlarmKey("train 1025", "TRAIN_COMM_LOST"),
            AlarmKey("CI-1", "DEVICE_ALARM_17", "203"), AlarmKey("net_a:127.0.0.1:5000", "CORRUPTION", "x y")]
    for i, k in enumerate(keys):
        out += e.raise_(k, ("critical", "major", "minor", "warning")[i], f"text {i} ✓", T0)
    out += e.ack(keys[0], "alice", T0 + 1)
    out += e.shelve(keys[1], "bob", 5, T0 + 2)
    out += e.remove_from_service(keys[2], "carol", T0 + 3)
    out += e.clear(keys[3], T0 + 4)
    chunks = snapshot_chunks(e)
    out += e.unshelve(keys[1], "bob", T0 + 5)
    out += e.return_to_service(keys[2], "carol", T0 + 6)
    out += e.shelve(keys[3], "dan", 1, T0 + 7)
    out += e.tick(T0 + 7 + 60_000)
    out += e.info(AlarmKey("consist 9", "CONSIST_COUPLED"), "trains 1025+1026", T0 + 8)
    for i in range(2):
        out += e.raise_("CI-9/CHAT/-", "minor", "c", T0 + 100 + i)
        out += e.clear("CI-9/CHAT/-", T0 + 100 + i)
    out += e.raise_("CI-3/Y/-", "warning", "returns", T0 + 150)
    out += e.clear("CI-3/Y/-", T0 + 151)                    # RTN_UNACK: the first to be evicted
    for i in range(9):                                      # full: evict, then group CI-2/X
        out += e.raise_(f"CI-2/X/{i}", "minor", "fill", T0 + 202)
    out += e.clear("CI-2/X/6", T0 + 203)                    # a grouped member clears
    out += e.tick(T0 + 100 + 60_000)                        # CI-9/CHAT quiet: auto_unshelve
    chunks += snapshot_chunks(e)
    return out, chunks


def test_engine_messages_validate():
    events, chunks = every_kind_of_event()
    transitions = {ev.transition for ev in events}
    assert transitions == {"raise", "clear", "ack", "shelve", "unshelve", "shelve_expired", "remove_from_service",
                           "return_to_service", "evict", "group", "auto_shelve", "auto_unshelve", "info"}
    assert any(ev.group is not None and "members" in ev.group for ev in events)
    assert any(ev.chattering for ev in events)
    assert any(ev.alarm.code == "ALARM_TABLE_FULL" for ev in events)
    for ev in events:
        VALIDATOR.validate(json.loads(ev.encode()))
        assert AlarmEvent.decode(ev.encode()) == ev
    assert len(chunks) >= 3
    for c in chunks:
        VALIDATOR.validate(c)


def test_wire_bytes_are_the_stdlib_compact_json():
    """encode() uses orjson for speed; HMI consumers see exactly the bytes json.dumps would write."""
    events, _ = every_kind_of_event()
    e = AlarmEngine(1, "demo-line-1", "Asia/Shanghai")
    events += e.raise_("PSD-3/DOOR_FAULT/7", "major", "站台门 7 故障 \u2014 \"quoted\" \\ tab\t", T0)
    for ev in events:
        assert ev.encode() == json.dumps(ev.to_json(), ensure_ascii=False, separators=(",", ":")).encode("utf-8")


@pytest.mark.parametrize("field,value", [("event_id", "XYZ"), ("severity", "fatal"), ("state", "OPEN"),
                                         ("extra", 1), ("event_seq", 0), ("time", "yesterday")])
def test_bad_event_refused(field, value):
    events, _ = every_kind_of_event()
    msg = events[0].to_json()
    msg[field] = value
    assert not VALIDATOR.is_valid(msg)


def test_operator_required_and_key_pattern():
    events, _ = every_kind_of_event()
    ack = next(e for e in events if e.transition == "ack").to_json()
    assert not VALIDATOR.is_valid({**ack, "operator": None})
    assert not VALIDATOR.is_valid({**ack, "alarm": {**ack["alarm"], "key": "a/b"}})
    assert not VALIDATOR.is_valid({**ack, "alarm": {**ack["alarm"], "bogus": 1}})


def test_a_snapshot_from_the_journals_bytes_is_the_one_from_its_decoded_events(tmp_path):
    """journal_snapshot reads the journaled messages as they are (no AlarmEvent per row: 90 ms of the relay
    thread for 2,500 alarms); its entries are those of the decoded, validated events, and the chunks' bytes
    are json.dumps' compact bytes (build_chunks encodes with orjson)."""
    from zoneinfo import ZoneInfo

    from alarms.journal import Journal
    from alarms.kafka.snapshots import build_chunks
    from alarms.live.live_table import entry_of, journal_snapshot
    events, _ = every_kind_of_event()
    e = AlarmEngine(1, "demo-line-1", "Asia/Shanghai", start_seq=events[-1].event_seq)
    events += e.raise_("PSD-3/DOOR_FAULT/7", "major", "站台门 7 故障 \u2014 \"quoted\" \\ tab\t", T0)
    j = Journal(str(tmp_path / "j.db"), writer=True)
    try:
        j.append(events)
        seq, entries = journal_snapshot(j)
        assert seq == events[-1].event_seq and len(entries) >= 5
        assert entries == [entry_of(ev.to_json()) for ev in j.latest_states()]
    finally:
        j.close()
    for chunk in build_chunks(seq, entries, gateway_id=7, line="demo-line-1", time_ms=T0,
                              tz=ZoneInfo("Asia/Shanghai"), max_alarms=2):
        msg = json.loads(chunk)
        VALIDATOR.validate(msg)
        assert chunk == json.dumps(msg, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
