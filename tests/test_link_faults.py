"""Issue 12 item 2, the link part: nothing unexpected leaves a link half alive, and a link that applies
nothing while bytes keep arriving is dead (ICD 7.3 counts accepted frames, docs/icd-decisions.md).
Over real TCP, with the test devices of gateway_harness.py."""
from __future__ import annotations

import logging
import struct
import time
import zlib

import pytest

from alarms.model import ClearAlarm, RaiseAlarm
from alarms.sources import GatewayEventSource
from gateway_harness import Device, RunningGateway, line_config, wait_until
from railcodecs import Close, Hello, Switches, TrackSections


def up_link(gw, device_id=258):
    return wait_until(lambda: next((lk for lk in gw.ctx.links_snapshot() if lk.alive and lk.device_id == device_id),
                                   None), what="link up")


def events_named(gw, name):
    return [e for e in gw.line.events.snapshot(200)["events"] if e["name"] == name]


def with_payload_byte(frame: bytes, at: int, value: int) -> bytes:
    """``frame`` (unsigned) with payload byte ``at`` set to ``value`` and its CRC made good again."""
    data = bytearray(frame)
    data[24 + at] = value
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    return bytes(data)


def test_an_apply_that_raises_closes_the_link_with_reason_2_counted_logged_once_and_alarmed(caplog):
    caplog.set_level(logging.ERROR, logger="railgate")
    with RunningGateway(line_config()) as gw:
        seen = []
        gw.line.events.subscribe(seen.append)
        real_apply = gw.ctx.apply

        def apply(frame, now_ms):
            if any(sid == 113 for sid, _ in frame.message.items):
                raise RuntimeError("injected fault")
            real_apply(frame, now_ms)

        gw.ctx.apply = apply
        dev = Device(gw.ports["A"])
        dev.hello()
        link = up_link(gw)
        dev.send(TrackSections(((111, 1),)), seq=1)
        wait_until(lambda: gw.line.objects.sections.get((258, 111), (None,))[0] == 1, what="applied")
        dev.send(TrackSections(((113, 1),)), seq=2)
        assert dev.wait_for("CLOSE", 2).message.reason == Close.PROTOCOL_ERROR
        wait_until(lambda: link.state.value in ("closing", "closed"), what="link closing")
        assert not link.alive and link.checks.errors["internal_error"] == 1
        assert gw.ctx.counters["internal_errors"] == 1
        records = [r for r in caplog.records if "unexpected RuntimeError" in r.getMessage()]
        assert len(records) == 1 and records[0].exc_info and "injected fault" in str(records[0].exc_info[1])
        # the event the alarm pipeline turns into an alarm, and the link loss that follows as for any loss
        assert gw.line.events.is_active("LINK_FAULT", "CI-2")
        assert gw.line.events.is_active("DEVICE_COMM_LOST", "CI-2")
        fault = next(e for e in seen if e.name == "LINK_FAULT")
        (raised,) = GatewayEventSource().on_event(fault)
        assert isinstance(raised, RaiseAlarm) and raised.severity == "major" and "injected fault" in raised.text
        assert all(lp.callback_errors == 0 for lp in gw.pool.all_loops())  # caught by the link, not the loop
        dev.close()
        # the device comes back: its next confirmed session clears the fault
        dev = Device(gw.ports["A"])
        dev.hello()
        up_link(gw)
        wait_until(lambda: not gw.line.events.is_active("LINK_FAULT", "CI-2"), what="LINK_FAULT cleared")
        cleared = next(e for e in seen if e.name == "LINK_FAULT_CLEARED")
        assert isinstance(GatewayEventSource().on_event(cleared)[0], ClearAlarm)
        dev.send(TrackSections(((112, 1),)), seq=3)  # new session or not (the old link may linger)
        wait_until(lambda: gw.line.objects.sections.get((258, 112), (None,))[0] == 1, what="applied again")
        dev.close()


@pytest.mark.parametrize("noise", ["garbage", "bad_crc"])
def test_a_link_receiving_only_noise_after_confirming_is_closed_as_stalled(noise):
    hb_ms = 100
    with RunningGateway(line_config(heartbeat_ms=hb_ms)) as gw:
        dev = Device(gw.ports["A"], hb_ms=hb_ms)
        dev.hello()
        link = up_link(gw)
        dev.heartbeat()
        last_good = time.monotonic()
        bad = bytearray(dev.encode(TrackSections(((111, 1),)), seq=5))
        bad[26] ^= 0xFF
        chunk = b"\x00\x11\x22" * 40 if noise == "garbage" else bytes(bad) + dev.encode(TrackSections(((111, 1),)))[:2]
        closed_at = None
        while time.monotonic() - last_good < 2.0:
            dev.sock.sendall(chunk)  # bytes every 25 ms: the link is never silent, but nothing is accepted
            if not link.alive:
                closed_at = time.monotonic()
                break
            time.sleep(0.025)
        assert closed_at is not None, "still alive"
        dead_s = 3 * hb_ms / 1000
        assert closed_at - last_good < dead_s + 0.25, closed_at - last_good
        assert dev.wait_for("CLOSE", 2).message.reason == Close.HEARTBEAT_TIMEOUT
        assert gw.ctx.counters["closed_stalled"] == 1 and gw.ctx.counters["heartbeat_timeouts"] == 0
        assert gw.ctx.counters["closed_error_rate"] == 0  # under the error rate: the stall rule closed it
        (stalled,) = events_named(gw, "LINK_STALLED")
        assert stalled["source"] == "CI-2" and "no frame accepted" in stalled["detail"]
        assert gw.line.events.is_active("LINK_REDUNDANCY_LOST", "CI-2")
        assert gw.line.events.is_active("DEVICE_COMM_LOST", "CI-2")
        if noise == "bad_crc":
            assert link.checks.errors["bad_crc"] >= 5
        assert link.stats()["rx_bytes"] > 5 * len(chunk)  # (garbage: one bad_sync per 4,140 bytes, later)
        dev.close()


def test_a_quiet_link_is_still_a_heartbeat_timeout_not_a_stall():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        up_link(gw)
        assert dev.wait_for("CLOSE", 2).message.reason == Close.HEARTBEAT_TIMEOUT
        assert gw.ctx.counters["heartbeat_timeouts"] == 1 and gw.ctx.counters["closed_stalled"] == 0
        dev.close()


def test_out_of_range_fields_on_a_live_link_are_bad_payload_and_the_next_frame_applies():
    with RunningGateway(line_config()) as gw:
        dev = Device(gw.ports["A"])
        dev.hello()
        link = up_link(gw)
        bad = [with_payload_byte(dev.encode(Close(0)), 0, 9),                                    # CLOSE reason 9
               with_payload_byte(dev.encode(Hello(1, 0, 100, "TEST-1", 7)), 0, 9),              # HELLO kind 9
               with_payload_byte(dev.encode(Switches(((304, 0),)), seq=1), 4, 9),               # position 9
               with_payload_byte(dev.encode(TrackSections(((111, 0),)), seq=2), 2 + 2, 9)]      # state 9
        for frame in bad:
            dev.sock.sendall(frame)
            dev.heartbeat()
        dev.send(TrackSections(((114, 1),)), seq=3)
        wait_until(lambda: gw.line.objects.sections.get((258, 114), (None,))[0] == 1, what="next frame applied")
        assert link.alive and link.state.value == "up"
        assert link.checks.errors == {"bad_payload": 4}
        assert (258, 304) not in gw.line.objects.switches
        dev.close()
