"""The command audit trail: the journal (durable, all-or-nothing batches, delivery watermark) and its relay to
``<prefix>.commands.<YYYYMMDD>`` on a real embedded broker (tansu), dated in the line's zone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from alarms.kafka.broker import free_port
from gateway.commands.audit import AuditError, AuditJournal, AuditRelay
from gateway.commands.engine import Audit
from gateway.commands.model import CommandEvent
from kafka_fixtures import broker, connections_to, read_topic, wait_for  # noqa: F401
from test_command_engine import NOW, TZ, Rig
from railcodecs import Switches

HERE = os.path.dirname(os.path.abspath(__file__))


def command_events(rig: AuditRig, n_commands: int = 1) -> list[CommandEvent]:
    """The events of ``n_commands`` switch-5 commands run to DONE, one after the other (5 each)."""
    out = []
    for _ in range(n_commands):
        acquire = rig.select()
        out += rig.last_select_events
        acts = rig.grant(acquire)
        acts += rig.engine.operate("r-op", acquire.selection_id, "alice", rig.now)
        cmd = next(a.command for a in acts if hasattr(a, "command"))
        acts += rig.result(cmd, 0)
        acts += rig.engine.on_status("switch", 5, Switches.REVERSE, rig.now)
        rig.line.values[("switch", 5)] = Switches.NORMAL
        out += [a.event for a in acts if isinstance(a, Audit)]
    return out


class AuditRig(Rig):
    """A Rig that keeps the select's audit events (``last_select_events``)."""

    def select(self, *a, **kw):
        selecting = super().select(*a, **kw)
        self.last_select_events = [x.event for x in selecting.actions if isinstance(x, Audit)]
        return selecting


def test_append_reads_back_every_field_in_order(tmp_path):
    evs = command_events(AuditRig(), 2)
    j = AuditJournal(str(tmp_path / "commands.db"))
    j.append(evs[:3])
    j.append(evs[3:])
    assert [e.transition for e in evs[:5]] == ["select", "lock_granted", "operate", "result_done", "feedback"]
    assert j.last_seq() == len(evs) == 10
    first = evs[0].command_id
    assert j.events_of(first) == evs[:5] and j.last_command_id() == evs[-1].command_id == first + 256
    rows = j.pending(100)
    assert [r.seq for r in rows] == list(range(1, 11))
    assert rows[0].key == "switch/5" and rows[0].command_id == first and rows[0].value == evs[0].encode()
    assert j.open_commands() == []
    j.close()


def test_a_batch_is_all_or_nothing(tmp_path):
    evs = command_events(AuditRig())
    j = AuditJournal(str(tmp_path / "commands.db"))
    j.append(evs[:2])
    with pytest.raises(AuditError, match=r"append of seqs 3\.\.2 refused: .* \(seq already journaled\)"):
        j.append(evs[2:] + evs[1:2])         # seq 2 again, last: the rows before it are not written either
    assert j.last_seq() == 2 and j.counts()["events"] == 2
    j.append(evs[2:])
    assert j.last_seq() == 5


def test_open_commands_are_the_last_events_not_terminal(tmp_path):
    rig = AuditRig()
    done = command_events(rig)
    acquire = rig.select(kind="switch", obj=7, value="normal")
    open_one = rig.last_select_events + [a.event for a in rig.grant(acquire) if isinstance(a, Audit)]
    j = AuditJournal(str(tmp_path / "commands.db"))
    j.append(done + open_one)
    assert j.open_commands() == [open_one[-1]] and open_one[-1].state == "SELECTED"


def test_appended_events_survive_a_kill_right_after_append(tmp_path):
    """A child appends (one transaction per batch) and SIGKILLs itself the moment append returns: no close, no
    checkpoint. Every row it reported is in the file afterwards."""
    path = str(tmp_path / "commands.db")
    child = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {HERE!r})
        from test_command_audit import AuditRig, command_events
        from gateway.commands.audit import AuditJournal
        evs = command_events(AuditRig(), 20)
        j = AuditJournal({path!r})
        for i in range(0, len(evs), 7):
            j.append(evs[i:i + 7])
        print(len(evs), evs[-1].event_id, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(HERE))
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    n, last_id = proc.stdout.split()
    j = AuditJournal(path)
    assert j.last_seq() == int(n) == 100
    assert json.loads(j.read_after(99)[0].value)["event_id"] == last_id
    assert j.undelivered() == 100


def test_delivery_is_a_watermark_with_the_few_delivered_ahead(tmp_path):
    evs = command_events(AuditRig(), 2)
    path = str(tmp_path / "commands.db")
    j = AuditJournal(path)
    j.append(evs)
    j.mark_delivered([2, 3, 7])
    assert j.delivered_through() == 0
    assert [r.seq for r in j.pending(100)] == [1, 4, 5, 6, 8, 9, 10] and j.undelivered() == 7
    j.mark_delivered([1, 99])                 # the hole filled; an unknown seq ignored
    assert j.delivered_through() == 3 and [r.seq for r in j.pending(100)] == [4, 5, 6, 8, 9, 10]
    j.mark_delivered([4, 5, 6])
    assert j.delivered_through() == 7 and [r.seq for r in j.pending(100, after=8)] == [9, 10]
    j.close()
    again = AuditJournal(path)                # the marks are in the file
    assert again.delivered_through() == 7 and again.counts() == {"events": 10, "undelivered": 3}


def test_the_journal_names_its_file_when_it_cannot_open(tmp_path):
    with pytest.raises(AuditError, match=f"{tmp_path}/missing/commands.db: cannot open the command audit journal"):
        AuditJournal(str(tmp_path / "missing" / "commands.db"))


# -- the relay, on the embedded broker ---------------------------------------------------------

def local_ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(TZ)).timestamp() * 1000)


@pytest.mark.slow
def test_the_relay_publishes_each_event_to_its_local_day_topic_keyed_by_object(broker, tmp_path):  # noqa: F811
    """Commands either side of Shanghai's midnight (16:00 UTC): the topic follows the line's date, not UTC's."""
    rig = AuditRig()
    rig.now = local_ms("2025-11-29T23:59:59.000")
    evs = command_events(rig)                                     # 23:59:59 local
    rig.now = local_ms("2025-11-30T00:00:00.000")
    evs += command_events(rig)                                    # 00:00 local = 16:00 UTC of the 29th
    rig.now = local_ms("2025-11-30T00:00:01.000")
    acquire = rig.select(kind="switch", obj=7, value="normal")
    evs += rig.last_select_events
    assert datetime.fromtimestamp(evs[-1].time_ms / 1000, ZoneInfo("UTC")).day == 29
    path = str(tmp_path / "commands.db")
    j = AuditJournal(path)
    j.append(evs)
    relay = AuditRelay(path, broker.bootstrap, topic_prefix="audit1", tz=TZ).start()
    try:
        wait_for(lambda: j.undelivered() == 0, 30, "every audit row delivered")
    finally:
        relay.stop()
    # nothing left connected: an open client held the embedded broker's graceful stop 5 s
    assert connections_to(int(broker.bootstrap.rsplit(":", 1)[1])) == 0
    assert relay.topic_of(evs[0].time_ms) == "audit1.commands.20251129"
    day1 = read_topic(broker.bootstrap, "audit1.commands.20251129")
    day2 = read_topic(broker.bootstrap, "audit1.commands.20251130")
    by_id = {e.event_id: e for e in evs}
    got1 = [json.loads(msg.value()) for msg in day1]
    got2 = [json.loads(msg.value()) for msg in day2]
    assert sorted(g["event_id"] for g in got1) == sorted(e.event_id for e in evs[:5])
    assert sorted(g["event_id"] for g in got2) == sorted(e.event_id for e in evs[5:])
    for msg in day1 + day2:
        ev = by_id[json.loads(msg.value())["event_id"]]
        assert msg.key() == ev.object_key.encode() and CommandEvent.decode(msg.value()) == ev
    assert {msg.key() for msg in day2} == {b"switch/5", b"switch/7"}
    # one object's events keep their order on its partition
    seqs = [json.loads(msg.value())["seq"] for msg in day2 if msg.key() == b"switch/5"]
    assert seqs == sorted(seqs) and len(seqs) == 5
    st = relay.stats()
    assert st["produced"] == st["delivered"] == len(evs) == 11 and st["failed"] == 0
    assert acquire.selection_id


@pytest.mark.slow
def test_a_new_relay_sends_only_what_was_pending(broker, tmp_path):  # noqa: F811
    rig = AuditRig()
    path = str(tmp_path / "commands.db")
    j = AuditJournal(path)
    first = command_events(rig, 2)
    j.append(first)
    relay = AuditRelay(path, broker.bootstrap, topic_prefix="audit2", tz=TZ).start()
    wait_for(lambda: j.undelivered() == 0, 30, "the first commands delivered")
    second = command_events(rig, 1)
    j.append(second)
    relay.wake()
    wait_for(lambda: j.undelivered() == 0, 30, "the woken relay delivers the new rows")
    relay.stop()
    third = command_events(rig, 1)
    j.append(third)                                   # journaled while no relay runs
    relay2 = AuditRelay(path, broker.bootstrap, topic_prefix="audit2", tz=TZ).start()
    wait_for(lambda: j.undelivered() == 0, 30, "the pending rows delivered by a new relay")
    relay2.stop()
    assert relay2.stats()["produced"] == len(third) == 5
    msgs = read_topic(broker.bootstrap, relay2.topic_of(NOW))
    ids = [json.loads(msg.value())["event_id"] for msg in msgs]
    assert sorted(ids) == sorted(e.event_id for e in first + second + third)     # each exactly once


@pytest.mark.slow
def test_a_row_is_marked_delivered_only_on_its_delivery_report(broker, tmp_path):  # noqa: F811
    """The producer of the first relay talks to a port where nothing listens (its topics are created on the
    real broker): every message times out, nothing is marked, and a relay that reaches the broker sends it all."""
    rig = AuditRig()
    path = str(tmp_path / "commands.db")
    j = AuditJournal(path)
    evs = command_events(rig, 2)
    j.append(evs)
    dead = f"127.0.0.1:{free_port()}"
    relay = AuditRelay(path, broker.bootstrap, topic_prefix="audit3", tz=TZ,
                       producer_config={"bootstrap.servers": dead, "message.timeout.ms": 300, "log_level": 2}).start()
    try:
        wait_for(lambda: relay.stats()["failed"] >= len(evs), 30, "the timed-out deliveries reported")
    finally:
        relay.stop()
    assert j.undelivered() == len(evs) == 10 and relay.stats()["delivered"] == 0
    assert relay.stats()["last_error"] and "Local: Message timed out" in relay.stats()["last_error"]
    relay2 = AuditRelay(path, broker.bootstrap, topic_prefix="audit3", tz=TZ).start()
    try:
        wait_for(lambda: j.undelivered() == 0, 30, "the rows delivered by a relay that reaches the broker")
    finally:
        relay2.stop()
    ids = [json.loads(msg.value())["event_id"] for msg in read_topic(broker.bootstrap, relay2.topic_of(NOW))]
    assert sorted(ids) == sorted(e.event_id for e in evs)
