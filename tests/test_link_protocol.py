"""The sans-IO link protocol driven with bytes and timestamps only: no socket, no loop, no clock.

A small driver plays the connection's part: it appends bytes to the byte
source, calls the protocol, decodes what the protocol put in its outbox (as the
device would read it) and gathers the returned action bits. Every test that
feeds bytes runs with them whole and byte by byte.
"""
from __future__ import annotations

import threading
from collections import Counter

import pytest

from gateway.base.link_actions import (ARM_CONFIRM, ARM_DEAD, ARM_HEARTBEAT, ARM_HELLO, BEGIN_CLOSE, DESTROY,
                                       READ_FIRST, SHUTDOWN_WRITE)
from gateway.line.link_protocol import PRE_SESSION_MAX_FRAME, LinkProtocol
from gateway.line.link_state import LinkEvent, LinkState
from gateway.line.object_state import ObjectState
from gateway_harness import KEY_257, line_config
from railcodecs import (DEVICE_RX_TYPES, Close, DeviceAlarm, FrameError, Heartbeat, Hello, HelloAck, MacPolicy,
                        Reason, Receiver, SessionConfirm, StreamDecoder, TrackSections, encode, session_key)
from railcodecs.byte_source import LinearBuffer

T0_MS = 1_700_000_000_000
HB_S = 0.1  # line_config's heartbeat; the test devices offer the same
DEVICE_NONCE = 0x0123456789ABCDEF
#: the session nonces the protocol under test draws, in turn (injected: no randomness in these tests)
SESSION_NONCES = (0xFEDCBA9876543210, 0x1111222233334444)


class RecordingContext:
    """The part of the link context a protocol calls, recording the callbacks."""

    def __init__(self, cfg) -> None:
        g = cfg.gateway
        self.cfg, self.settings = cfg, g
        self.receiver = Receiver(g.id, cfg.senders(), max_age_ms=g.max_age_ms,
                                 train_reset_ms=3 * cfg.trains.heartbeat_ms)
        self.mac_policy = MacPolicy(
            keys={d.id: d.mac_key for d in cfg.devices if d.mac_key is not None and d.mac != "off"},
            required_srcs=frozenset(d.id for d in cfg.devices if d.mac == "required"))
        self.objects = ObjectState()
        self.apply = self.objects.apply
        self.counters: Counter = Counter()
        self.calls: list = []

    def link_started(self, link):
        self.calls.append("started")

    def link_up(self, link, now_ms):
        self.calls.append("up")

    def link_left_up(self, link, why):
        self.calls.append(("left_up", why))

    def link_closed(self, link):
        self.calls.append("closed")

    def device_message(self, link, frame, now_ms):
        self.calls.append(("device_message", frame.message.NAME))

    def link_fault(self, link, why):
        self.calls.append(("fault", why))

    def link_stalled(self, link, why):
        self.calls.append(("stalled", why))


class Driver:
    """A protocol on a byte source, with a fake clock; plays the connection."""

    def __init__(self, split: str, net: str = "A", dev_id: int = 258, key: bytes | None = None, ctx=None,
                 **overrides):
        """``ctx``: another driver's context (the device's other net: one receiver, one sender window)."""
        self.split, self.dev_id, self.key, self.net = split, dev_id, key, net
        self.ctx = ctx if ctx is not None else RecordingContext(line_config(**overrides))
        self.source = LinearBuffer()
        nonces = iter(SESSION_NONCES)
        self.p = LinkProtocol(self.ctx, net, self.source, "127.0.0.1:4242", nonce=lambda: next(nonces))
        self.now, self.now_ms = 1000.0, T0_MS
        self.kernel = b""    # bytes "arrived but not yet read": delivered only on READ_FIRST
        self.device = StreamDecoder(types=DEVICE_RX_TYPES, mac=MacPolicy(key=key))  # what the device reads
        self.received: list = []
        self.seq = 0
        self.hb = 0
        self.session_nonce: int | None = None
        self.session_key: bytes | None = None  # the device's K_s once it has read the HELLO_ACK
        self.device_ahead_ms = 0  # the device's clock minus the gateway's
        self.acts = self.p.connection_made(self.now)

    # -- the device side
    def frame(self, message, seq: int = 0, src: int | None = None, key: bytes | None = None) -> bytes:
        if key is None:
            key = self.key if self.session_key is None or isinstance(message, Hello) else self.session_key
        return encode(message, src=self.dev_id if src is None else src, dst=1, seq=seq,
                      time_ms=self.now_ms + self.device_ahead_ms, mac_key=key)

    def hello(self, kind: int | None = None, hb_ms: int = 100) -> bytes:
        return self.frame(Hello(kind or (1 if self.dev_id < 513 else 3), "AB".index(self.net), hb_ms, "TEST-1",
                                DEVICE_NONCE))

    def confirm(self, device_nonce: int = DEVICE_NONCE, session_nonce: int | None = None) -> bytes:
        return self.frame(SessionConfirm(device_nonce, self.session_nonce if session_nonce is None
                                         else session_nonce))

    def status(self, message) -> bytes:
        self.seq += 1
        return self.frame(message, seq=self.seq)

    def heartbeat(self) -> bytes:
        self.hb += 1
        return self.frame(Heartbeat(self.hb))

    # -- the connection side
    def feed(self, data: bytes) -> int:
        """Deliver bytes as one read or one read per byte; returns the OR of the action bits."""
        chunks = [data] if self.split == "whole" else [data[i:i + 1] for i in range(len(data))]
        acts = 0
        for chunk in chunks:
            self.source.append(chunk)
            acts |= self.p.data_received(self.now, self.now_ms)
            self._drain()
        self.acts |= acts
        return acts

    def _drain(self) -> None:
        if self.p.outbox:
            self.device.feed(bytes(self.p.outbox))
            self.p.outbox.clear()
            for ev in self.device.events():  # one at a time: the HELLO_ACK switches the key for the next
                self.received.append(ev)
                if getattr(ev, "name", None) == "HELLO_ACK" and ev.message.result == HelloAck.OK:
                    self.session_nonce = ev.message.session_nonce
                    if self.key is not None:
                        self.session_key = session_key(self.key, DEVICE_NONCE, self.session_nonce)
                        self.device.set_session_key(self.session_key)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.now_ms += round(seconds * 1000)

    def timer(self, method) -> int:
        """A liveness timer: on READ_FIRST, read what the kernel holds and ask again."""
        acts = method(self.now, self.now_ms, False)
        if acts & READ_FIRST:
            if self.kernel:
                data, self.kernel = self.kernel, b""
                self.feed(data)
            acts = method(self.now, self.now_ms, True)
        self._drain()
        return acts

    def call(self, acts: int) -> int:
        self._drain()
        return acts

    def names(self) -> list:
        return [ev.name if not isinstance(ev, FrameError) else ev.reason.value for ev in self.received]

    def up(self) -> None:
        acts = self.feed(self.hello())
        assert acts == ARM_HEARTBEAT | ARM_CONFIRM and self.p.state is LinkState.AWAIT_CONFIRM, self.names()
        assert self.feed(self.confirm()) == 0 and self.p.state is LinkState.UP, self.names()
        self.received.clear()


@pytest.fixture(params=["whole", "bytewise"])
def split(request):
    return request.param


def test_hello_ok_acks_with_a_session_nonce_and_registers_only_at_confirm(split):
    d = Driver(split)
    assert d.acts == ARM_HELLO and d.p.hello_timeout_s == 1.0 and d.ctx.calls == ["started"]
    acts = d.feed(d.hello())
    assert acts == ARM_HEARTBEAT | ARM_CONFIRM and d.p.heartbeat_s == HB_S and d.p.confirm_timeout_s == 1.0
    assert d.p.state is LinkState.AWAIT_CONFIRM and not d.p.alive and d.p.device_id == 258
    assert d.ctx.calls == ["started"]  # not registered: it replaces nothing yet (rule 7)
    (ack,) = d.received
    assert ack.name == "HELLO_ACK" and ack.message.result == HelloAck.OK and ack.message.heartbeat_ms == 100
    assert ack.message.session_nonce == SESSION_NONCES[0] and d.p.checks.session_nonce == SESSION_NONCES[0]
    assert ack.src == 1 and ack.dst == 258 and d.p.tx_frames == 1
    assert d.feed(d.confirm()) == 0
    assert d.p.state is LinkState.UP and d.p.alive and d.ctx.calls == ["started", "up"]
    assert d.p.checks.confirmed and not d.p.checks.errors and d.received == [ack]  # confirm is not answered


def test_agreed_heartbeat_is_the_devices_within_range(split):
    d = Driver(split)
    d.feed(d.hello(hb_ms=250))
    assert d.p.heartbeat_ms == 250 and d.received[0].message.heartbeat_ms == 250


def test_frames_after_hello_are_checked_and_applied(split):
    d = Driver(split)
    d.up()
    assert d.feed(d.status(TrackSections(((111, 1),))) + d.heartbeat()
                  + d.status(DeviceAlarm(7, 2, 1, 111, "x"))) == 0
    assert d.ctx.objects.sections[(258, 111)][0] == 1
    assert ("device_message", "DEVICE_ALARM") in d.ctx.calls
    assert d.p.checks.rx_frames == 5 and not d.p.checks.errors and not d.p.outbox  # HELLO, SESSION_CONFIRM, 3


class _GatedContext(RecordingContext):
    """Holds the first device message's hand-over until ``gate`` is set (its loop thread is preempted there)."""

    def __init__(self, cfg) -> None:
        super().__init__(cfg)
        self.entered, self.gate, self.seqs = threading.Event(), threading.Event(), []

    def device_message(self, link, frame, now_ms):
        if not self.entered.is_set():
            self.entered.set()
            self.gate.wait(5)
        self.seqs.append((frame.seq, frame.message.action))


def test_a_devices_messages_reach_the_ctx_in_sequence_order_from_two_loops():
    """Net A and net B of one device on two loop threads: A accepts the raise (seq 1) and is held before it
    hands it over; B accepts the clear (seq 2) meanwhile. The clear reaches the ctx after the raise (the
    hand-over is under the sender's lock): handed over after the lock, it overtook the raise, and the alarm
    engine ignored it (a clear of an alarm not raised)."""
    a = Driver("whole", net="A")
    a.ctx = ctx = _GatedContext(a.ctx.cfg)
    a.p = LinkProtocol(ctx, "A", a.source, "127.0.0.1:4242", nonce=lambda: SESSION_NONCES[0])
    b = Driver("whole", net="B", ctx=ctx)
    a.up()
    b.up()
    raise_, clear = DeviceAlarm(7, 2, DeviceAlarm.RAISE, 111, "x"), DeviceAlarm(7, 2, DeviceAlarm.CLEAR, 111, "")
    ta = threading.Thread(target=a.feed, args=(a.frame(raise_, seq=1),))
    ta.start()
    assert ctx.entered.wait(5)
    tb = threading.Thread(target=b.feed, args=(b.frame(clear, seq=2),))
    tb.start()
    tb.join(0.3)                # B is done by now unless it waits for A's hand-over
    ctx.gate.set()
    ta.join(5)
    tb.join(5)
    assert ctx.seqs == [(1, DeviceAlarm.RAISE), (2, DeviceAlarm.CLEAR)]


@pytest.mark.parametrize("case", ["unknown device", "wrong net", "wrong kind"])
def test_hello_refused_says_why_then_closes_with_reason_2(split, case):
    dev_id, net, kind = {"unknown device": (999, "A", 1), "wrong net": (769, "B", 3),
                         "wrong kind": (258, "A", 2)}[case]
    d = Driver(split, net=net, dev_id=dev_id)
    acts = d.feed(d.hello(kind=kind))
    assert acts == BEGIN_CLOSE
    (ack,) = d.received
    assert ack.message.result == HelloAck.UNKNOWN_DEVICE and ack.dst == dev_id and ack.message.session_nonce == 0
    assert d.p.state is LinkState.CLOSING and not d.p.alive and d.p.device_id is None
    assert d.ctx.calls == ["started"]  # never up, so never left up
    assert d.call(d.p.send_close(d.now_ms)) == SHUTDOWN_WRITE
    assert d.received[-1].name == "CLOSE" and d.received[-1].message.reason == Close.PROTOCOL_ERROR


def test_hello_without_the_required_mac_is_answered_mac_required(split):
    d = Driver(split, dev_id=257)  # CI-1 must sign; this HELLO is not signed
    assert d.feed(d.hello()) == BEGIN_CLOSE
    (ack,) = d.received
    assert ack.message.result == HelloAck.MAC_REQUIRED and ack.dst == 0  # its src cannot be trusted
    assert ack.message.session_nonce == 0
    assert d.p.checks.errors == {"missing_mac": 1} and d.p.state is LinkState.CLOSING


def test_signed_hello_is_acked_signed(split):
    d = Driver(split, dev_id=257, key=KEY_257)
    d.up()
    d.advance(HB_S)
    d.feed(d.heartbeat())
    d.timer(d.p.heartbeat_tick)
    assert d.names() == ["HEARTBEAT"] and d.received[0].mac  # verified with the session key


def test_frame_before_hello_closes_with_reason_2(split):
    d = Driver(split)
    assert d.feed(d.status(TrackSections(((111, 1),)))) == BEGIN_CLOSE
    assert d.received == [] and d.p.close_reason == Close.PROTOCOL_ERROR
    assert d.p.checks.errors == {"unknown_source": 1} and d.p.why == "TRACK_SECTIONS before HELLO"
    assert (258, 111) not in d.ctx.objects.sections


def test_second_hello_on_a_link_is_a_protocol_error(split):
    d = Driver(split)
    d.up()
    assert d.feed(d.hello()) == BEGIN_CLOSE
    assert d.p.close_reason == Close.PROTOCOL_ERROR and not d.p.alive
    assert d.ctx.calls[-1] == ("left_up", "second HELLO on a link")


def test_close_from_peer_is_answered_close_0_and_frames_after_it_are_not_applied(split):
    d = Driver(split)
    d.up()
    assert d.feed(d.frame(Close(Close.NORMAL)) + d.status(TrackSections(((111, 1),)))) == BEGIN_CLOSE
    assert d.p.state is LinkState.CLOSING and (258, 111) not in d.ctx.objects.sections
    assert d.ctx.calls[-1] == ("left_up", "peer sent CLOSE reason 0")
    assert d.call(d.p.send_close(d.now_ms)) == SHUTDOWN_WRITE
    assert d.names() == ["CLOSE"] and d.received[0].message.reason == Close.NORMAL
    assert d.call(d.p.linger_timeout()) == DESTROY and d.p.state is LinkState.CLOSED
    d.p.connection_lost()
    assert d.ctx.calls[-1] == "closed" and d.p.checks.closed


def test_eof_decodes_what_is_left_then_destroys(split):
    d = Driver(split)
    d.up()
    d.source.append(d.status(TrackSections(((111, 1),))))
    assert d.call(d.p.eof_received(d.now, d.now_ms)) == DESTROY
    assert d.ctx.objects.sections[(258, 111)][0] == 1
    assert d.ctx.calls[-1] == ("left_up", "peer closed the connection")


def test_heartbeat_tick_sends_counted_heartbeats(split):
    d = Driver(split)
    d.up()
    for _ in range(3):
        d.advance(HB_S)
        d.feed(d.heartbeat())
        assert d.timer(d.p.heartbeat_tick) == 0  # the peer is chatty: no dead-deadline timer
    assert [ev.message.counter for ev in d.received] == [1, 2, 3]
    assert all(ev.name == "HEARTBEAT" and ev.seq == 0 and ev.dst == 258 for ev in d.received)


def test_silent_peer_gets_an_exact_dead_deadline_then_close_reason_1(split):
    d = Driver(split)
    d.up()
    last_rx = d.now
    d.advance(HB_S)
    assert d.timer(d.p.heartbeat_tick) == 0       # deadline (3 hb) is not before the next tick
    d.advance(HB_S)
    assert d.timer(d.p.heartbeat_tick) == ARM_DEAD  # it is now: one timer at the deadline itself
    assert d.p.dead_at == pytest.approx(last_rx + 3 * HB_S + 0.0005)
    d.now = d.p.dead_at
    acts = d.timer(d.p.dead_deadline)
    assert acts == BEGIN_CLOSE and not d.p.alive and d.p.close_reason == Close.HEARTBEAT_TIMEOUT
    assert d.ctx.counters["heartbeat_timeouts"] == 1 and d.ctx.calls[-1][0] == "left_up"
    d.call(d.p.send_close(d.now_ms))
    assert d.names()[-1] == "CLOSE" and d.received[-1].message.reason == Close.HEARTBEAT_TIMEOUT


def test_bytes_waiting_in_the_kernel_are_read_before_the_peer_is_called_silent(split):
    d = Driver(split)
    d.up()
    d.advance(3 * HB_S + 0.01)
    d.kernel = d.heartbeat()  # arrived, but the busy loop has not read it yet
    assert d.p.heartbeat_tick(d.now, d.now_ms, False) == READ_FIRST  # asks, decides nothing yet
    assert d.timer(d.p.heartbeat_tick) == 0 and d.p.state is LinkState.UP and d.p.alive
    assert d.p.checks.hb_last == 1


def test_stalled_partial_frame_is_abandoned_after_one_heartbeat(split):
    d = Driver(split)
    d.up()
    good = d.status(TrackSections(((111, 1),)))
    stuck = bytearray(d.frame(Heartbeat(1)))
    stuck[22:24] = (200).to_bytes(2, "big")  # a corrupted length: waits for 200 bytes that never come
    d.feed(bytes(stuck) + good)
    assert (258, 111) not in d.ctx.objects.sections  # held behind the partial frame
    d.advance(HB_S / 2)
    d.feed(d.heartbeat()[:10])   # bytes arrive (the peer is not silent) but no frame completes
    assert d.timer(d.p.heartbeat_tick) == 0 and not d.p.checks.errors.get("truncated")
    d.advance(HB_S / 2 + 0.01)  # one heartbeat without progress since the partial was first buffered
    d.timer(d.p.heartbeat_tick)
    assert d.p.checks.errors.get("truncated") == 1
    assert d.ctx.objects.sections[(258, 111)][0] == 1  # the good frame behind it is found


def test_a_busy_stream_ending_mid_frame_is_not_abandoned(split):
    d = Driver(split)
    d.up()
    frames = b"".join(d.status(TrackSections(((111, i % 2),))) for i in range(40))
    step = len(frames) // 20 + 3  # every read ends inside a frame, but each completes one
    for i in range(0, len(frames), step):
        d.advance(HB_S / 2)
        d.feed(frames[i:i + step])
        d.timer(d.p.heartbeat_tick)
    assert not d.p.checks.errors and d.p.state is LinkState.UP


def corrupted(d: Driver) -> bytes:
    frame = bytearray(d.frame(TrackSections(((111, 1),)), seq=0))
    frame[26] ^= 0xFF
    return bytes(frame)


def test_errors_over_the_rate_limit_close_with_reason_2(split):
    d = Driver(split, error_rate_limit=5)
    d.up()
    # (a bad CRC is decided by the two bytes after the frame: a heartbeat follows each burst)
    assert d.feed(corrupted(d) * 5 + d.heartbeat()) == 0 and d.p.alive  # at the limit: survivable noise
    assert d.feed(corrupted(d) + d.heartbeat()) == BEGIN_CLOSE
    assert d.ctx.counters["closed_error_rate"] == 1 and d.p.close_reason == Close.PROTOCOL_ERROR
    assert d.p.checks.errors["bad_crc"] == 6 and d.p.why == "more than 5 errors/s"


def test_error_rate_is_per_second(split):
    d = Driver(split, error_rate_limit=5)
    d.up()
    for _ in range(4):
        d.feed(corrupted(d) * 5 + d.heartbeat())
        d.advance(1.0)
    assert d.p.alive and d.p.checks.errors["bad_crc"] == 20


def test_hello_timeout_only_before_hello():
    d = Driver("whole")
    assert d.call(d.p.hello_timeout()) == BEGIN_CLOSE and d.p.why == "no HELLO in time"
    up = Driver("whole")
    up.up()
    assert up.call(up.p.hello_timeout()) == 0 and up.p.alive


def test_local_close_replaced_io_error_and_slow_peer():
    d = Driver("whole")
    d.up()
    assert d.call(d.p.close(LinkEvent.REPLACED, "replaced by a newer link")) == BEGIN_CLOSE
    assert d.p.close_reason == Close.REPLACED and d.call(d.p.close()) == 0  # CLOSING stays CLOSING
    assert d.call(d.p.io_error("send: broken pipe")) == DESTROY and d.p.why == "replaced by a newer link"
    slow = Driver("whole")
    slow.up()
    assert slow.call(slow.p.slow_peer()) == DESTROY and slow.ctx.counters["closed_slow"] == 1
    assert slow.call(slow.p.slow_peer()) == 0 and slow.ctx.counters["closed_slow"] == 1


def test_garbage_is_resynced_and_counted_once_per_run(split):
    d = Driver(split)
    d.up()
    assert d.feed(b"\x00" * 100 + d.status(TrackSections(((111, 1),)))) == 0
    assert d.p.checks.errors == {Reason.BAD_SYNC.value: 1} and d.ctx.objects.sections[(258, 111)][0] == 1


# --- the session (ICD 1.1) -------------------------------------------------------------------
def awaiting(split, **kw) -> Driver:
    """A link that has answered HELLO_ACK and waits for the SESSION_CONFIRM."""
    d = Driver(split, **kw)
    d.feed(d.hello())
    assert d.p.state is LinkState.AWAIT_CONFIRM
    return d


def test_frames_before_session_confirm_are_no_session_and_not_applied(split):
    d = awaiting(split)
    assert d.feed(d.status(TrackSections(((111, 1),))) + d.heartbeat() + d.status(DeviceAlarm(7, 2, 1, 111, "x"))) == 0
    assert d.p.checks.errors == {"no_session": 2} and d.p.state is LinkState.AWAIT_CONFIRM and not d.p.alive
    assert (258, 111) not in d.ctx.objects.sections and d.ctx.calls == ["started"]  # no device message either
    assert d.p.checks.hb_last == 1  # a HEARTBEAT passes: heartbeats run from the HELLO_ACK on
    d.feed(d.confirm())
    d.feed(d.status(TrackSections(((111, 1),))))
    assert d.ctx.objects.sections[(258, 111)][0] == 1  # seq 3: nothing before counted as applied


def test_session_confirm_with_wrong_nonces_is_bad_session_and_closes_with_reason_2(split):
    for wrong in ({"device_nonce": DEVICE_NONCE ^ 1}, {"session_nonce": SESSION_NONCES[1]}):
        d = awaiting(split)
        assert d.feed(d.confirm(**wrong)) == BEGIN_CLOSE
        assert d.p.checks.errors == {"bad_session": 1} and not d.p.alive and d.ctx.calls == ["started"]
        assert d.p.close_reason == Close.PROTOCOL_ERROR and d.p.why.startswith("SESSION_CONFIRM with nonces")
        d.call(d.p.send_close(d.now_ms))
        assert d.names()[-1] == "CLOSE" and d.received[-1].message.reason == Close.PROTOCOL_ERROR


def test_a_repeated_session_confirm_on_an_up_link_is_counted_and_changes_nothing(split):
    d = Driver(split)
    d.up()
    assert d.feed(d.confirm() + d.confirm(session_nonce=5)) == 0
    assert d.p.checks.errors == {"duplicate": 1, "bad_session": 1} and d.p.alive and d.ctx.calls == ["started", "up"]


def test_no_session_confirm_in_time_closes_with_reason_2(split):
    d = awaiting(split)
    d.advance(0.99)
    d.feed(d.heartbeat())  # heartbeats alone do not confirm
    d.advance(0.02)
    assert d.call(d.p.confirm_timeout()) == BEGIN_CLOSE
    assert d.p.close_reason == Close.PROTOCOL_ERROR and d.p.why == "no valid SESSION_CONFIRM in time"
    assert d.ctx.counters["confirm_timeouts"] == 1 and d.ctx.calls == ["started"]  # never up, never left up
    d.call(d.p.send_close(d.now_ms))
    assert d.received[-1].name == "CLOSE" and d.received[-1].message.reason == Close.PROTOCOL_ERROR
    up = Driver(split)
    up.up()
    assert up.call(up.p.confirm_timeout()) == 0 and up.p.alive  # the timer of a confirmed link does nothing


def test_heartbeats_run_from_the_hello_ack_on_and_silence_ends_at_the_confirm_deadline(split):
    d = awaiting(split, dev_id=257, key=KEY_257)
    d.received.clear()
    for _ in range(9):  # a silent peer, for 9 heartbeats (3 would kill an UP link)
        d.advance(HB_S)
        assert d.timer(d.p.heartbeat_tick) == 0 and d.p.state is LinkState.AWAIT_CONFIRM
    assert d.names() == ["HEARTBEAT"] * 9 and all(ev.mac for ev in d.received)  # signed with K_s: verified
    assert d.call(d.p.dead_deadline(d.now, d.now_ms, True)) == 0
    assert d.call(d.p.confirm_timeout()) == BEGIN_CLOSE and d.p.close_reason == Close.PROTOCOL_ERROR
    assert d.ctx.counters["heartbeat_timeouts"] == 0 and d.ctx.calls == ["started"]


def test_keyed_link_uses_the_session_key_both_ways_from_the_hello_ack(split):
    d = awaiting(split, dev_id=257, key=KEY_257)
    (ack,) = d.received
    assert ack.mac  # HELLO_ACK: the link key (the device's decoder had no session key yet)
    k_s = session_key(KEY_257, DEVICE_NONCE, SESSION_NONCES[0])
    assert d.session_key == k_s
    # the link key no longer signs anything but HELLO: a SESSION_CONFIRM signed with it is bad_mac
    d.feed(d.frame(SessionConfirm(DEVICE_NONCE, SESSION_NONCES[0]), key=KEY_257))
    assert d.p.checks.errors == {"bad_mac": 1} and d.p.state is LinkState.AWAIT_CONFIRM
    # a recording of another session's confirm and status frame (its own K_s) fails the MAC check
    other = session_key(KEY_257, DEVICE_NONCE, SESSION_NONCES[1])
    d.feed(d.frame(SessionConfirm(DEVICE_NONCE, SESSION_NONCES[1]), key=other)
           + d.frame(TrackSections(((111, 1),)), seq=9, key=other))
    assert d.p.checks.errors == {"bad_mac": 3} and (257, 111) not in d.ctx.objects.sections
    d.feed(d.confirm() + d.status(TrackSections(((111, 1),))))
    assert d.p.state is LinkState.UP and d.ctx.objects.sections[(257, 111)][0] == 1


def test_the_hellos_clock_offset_takes_effect_at_confirmation(split):
    d = Driver(split)
    d.device_ahead_ms = 30_000
    d.feed(d.hello())
    assert d.p.checks.offset_ms == 0 and d.p.checks.pending_offset_ms == 30_000
    d.feed(d.confirm())
    assert d.p.checks.offset_ms == 30_000
    d.feed(d.status(TrackSections(((111, 1),))))
    assert d.ctx.objects.sections[(258, 111)][0] == 1 and not d.p.checks.errors


# --- issue 12: buffers at confirmation, stalls, internal errors, the pre-session bound ------------------
def test_the_confirmation_moves_decoding_to_the_session_source_with_the_bytes_after_the_confirm(split):
    d = awaiting(split)
    moved = []

    def session_source():
        old, rx = d.source, LinearBuffer()
        rx.append(old.peek(old.readable()))  # what the connection does: the undecoded bytes move
        old.consume(old.readable())
        moved.append(old)
        d.source = rx  # and it receives into the link's buffer from now on
        return rx

    d.p.session_source = session_source
    d.feed(d.confirm() + d.status(TrackSections(((111, 1),))))  # whole: both in one read
    assert d.p.state is LinkState.UP and len(moved) == 1 and d.p.source is d.source
    assert d.ctx.objects.sections[(258, 111)][0] == 1
    d.feed(d.status(TrackSections(((112, 1),))))
    assert d.ctx.objects.sections[(258, 112)][0] == 1 and not d.p.checks.errors and moved[0].readable() == 0


def test_no_link_buffers_at_the_confirmation_refuses_with_reason_2():
    d = awaiting("whole")
    d.p.session_source = lambda: None
    assert d.feed(d.confirm()) == BEGIN_CLOSE
    assert d.p.state is LinkState.CLOSING and not d.p.alive and d.p.close_reason == Close.PROTOCOL_ERROR
    assert d.ctx.counters["links_refused"] == 1 and "up" not in d.ctx.calls


def test_a_frame_over_the_pre_session_bound_is_a_protocol_error(split):
    d = awaiting(split)
    big = d.status(TrackSections(tuple((111 + i % 10, 1) for i in range(60))))
    assert len(big) > PRE_SESSION_MAX_FRAME
    assert d.feed(big) & BEGIN_CLOSE and d.p.close_reason == Close.PROTOCOL_ERROR
    assert d.ctx.counters["pre_session_oversize"] == 1


def test_bytes_without_an_accepted_frame_are_a_stall_not_life(split):
    d = Driver(split)
    d.up()
    for _ in range(4):
        d.advance(HB_S)
        d.feed(corrupted(d) + d.heartbeat()[:2])  # bytes arrive, no frame is accepted
        acts = d.timer(d.p.heartbeat_tick)
        if acts & BEGIN_CLOSE:
            break
        if acts & ARM_DEAD:
            d.now = d.p.dead_at
            acts = d.timer(d.p.dead_deadline)
            break
    assert acts == BEGIN_CLOSE and d.p.close_reason == Close.HEARTBEAT_TIMEOUT and not d.p.alive
    assert d.ctx.counters["closed_stalled"] == 1 and d.ctx.counters["heartbeat_timeouts"] == 0
    assert [c[0] for c in d.ctx.calls if isinstance(c, tuple)][:2] == ["stalled", "left_up"]


def test_internal_error_closes_with_reason_2_and_keeps_the_bits_of_the_failed_call():
    d = Driver("whole")
    d.up()
    assert d.call(d.p.internal_error("RuntimeError: boom")) == BEGIN_CLOSE
    assert d.p.close_reason == Close.PROTOCOL_ERROR and d.p.checks.errors["internal_error"] == 1
    assert d.ctx.counters["internal_errors"] == 1 and ("fault", "RuntimeError: boom") in d.ctx.calls
    assert d.call(d.p.internal_error("again")) == 0 and d.p.state is LinkState.CLOSING  # closing stays closing


def test_evict_aborts_only_an_unconfirmed_link():
    d = Driver("whole")
    assert d.call(d.p.evict("room")) == DESTROY and d.p.state is LinkState.CLOSED
    up = Driver("whole")
    up.up()
    assert up.call(up.p.evict("room")) == 0 and up.p.alive


def test_a_callback_raising_inside_a_move_leaves_the_close_decided():
    """The connection catches the exception and calls internal_error: the failed call's close still happens."""
    d = Driver("whole")
    d.up()

    def boom(link, why):
        raise RuntimeError("registry")

    d.ctx.link_left_up = boom
    with pytest.raises(RuntimeError):
        d.p.close()
    assert d.call(d.p.internal_error("RuntimeError: registry")) == BEGIN_CLOSE
    assert d.p.state is LinkState.CLOSING and d.p.close_reason == Close.NORMAL and not d.p.alive
