"""The compiled heartbeat tick (``_reactor.FastReader.heartbeat``) against its reference.

One real link on one real loopback TCP connection, driven by hand in the test's thread: an
``EventLoop`` on a fake monotonic clock (timers fire when the test moves it), the gateway's
``TcpConnection`` + ``LinkProtocol`` on the accepted socket, and a device on the other end that
writes frames and whose raw received bytes are compared. Every scenario runs in three modes:

* ``compiled``: the compiled build, the heartbeat timer calling the compiled tick (as in the gateway);
* ``reference``: the compiled build, the timer calling ``TcpConnection._on_heartbeat_tick``;
* ``pure``: the pure-Python implementation (no compiled reader, no FastLink).

and must give the same bytes on the wire, counters and link outcome in all three. The steady tick
must take the compiled path (the reference is not called); every other case must go to the reference.
Heartbeat 125 ms and a clock starting at 1000.0 s: every time is exact in binary floating point, so
each boundary is met exactly as written.
"""
from __future__ import annotations

import random
import select
import socket
import struct
import time

import pytest

from gateway.base.link_actions import ARM_DEAD
from gateway.line.link_protocol import LinkProtocol
from gateway.net import compiled
from gateway.net.connection import TcpConnection
from gateway.net.event_loop import EventLoop
from gateway.net.link_buffers import LinkBuffers, pre_session_buffer
from gateway.net.object_pool import ObjectPool
from gateway_harness import KEY_257, line_config
from railcodecs import Close, Heartbeat, Hello, SessionConfirm, TrackSections, encode, session_key, speedups
from test_link_protocol import RecordingContext

HB_MS = 125
HB_S = HB_MS / 1000
T0 = 1000.0
T0_MS = 1_700_000_000_000
DEVICE_NONCE = 0x5EED_0000_0000_00AA
SESSION_NONCE = 0x0123_4567_89AB_CDEF
MODES = ("compiled", "reference", "pure")
#: the compiled reactor is built and in use (not RAILGATE_PURE=1): the compiled modes can run
BUILT = speedups.available() and compiled.reactor() is not None


def modes_to_run():
    return MODES if BUILT else ("pure",)


class Rig:
    """One UP link in ``mode`` (see the module doc), its device and a fake clock."""

    def __init__(self, mode: str, dev_id: int = 258, key: bytes | None = None, sndbuf: int | None = None) -> None:
        speedups.use("pure" if mode == "pure" else "compiled")
        self.mode, self.dev_id, self.key = mode, dev_id, key
        self.now, self.ms = T0, T0_MS
        self.ctx = RecordingContext(line_config(heartbeat_ms=HB_MS))
        self.loop = EventLoop(f"hb-{mode}", clock=lambda: self.now)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        self.dev = socket.create_connection(lsock.getsockname())
        gw_sock, _ = lsock.accept()
        lsock.close()
        if sndbuf is not None:
            gw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        self.dev.setblocking(False)
        rx = pre_session_buffer()
        self.p = LinkProtocol(self.ctx, "A", rx, "dev", nonce=lambda: SESSION_NONCE)
        self.conn = TcpConnection(self.loop, gw_sock, self.p, rx, clock_ms=lambda: self.ms, peer="dev",
                                  link_pool=ObjectPool(lambda: LinkBuffers(64 << 10), 2))
        self.conn.start()
        self.reader = self.loop._channels[self.conn.fd].handler
        # count the calls of the reference (the compiled tick looks it up on the connection); the
        # reference and pure modes' timer calls it (set before ARM_HEARTBEAT, which the HELLO asks for)
        self.reference_calls = 0
        reference = self.conn._on_heartbeat_tick

        def counted(*args):
            self.reference_calls += 1
            return reference(*args)
        self.conn._on_heartbeat_tick = counted
        if mode == "compiled":
            assert self.conn._heartbeat_tick == self.reader.heartbeat
        else:
            self.conn._heartbeat_tick = counted
        self.session_key = None
        self.hb = 0
        self.seq = 0
        self.rx = bytearray()  # what the device received, raw
        self._handshake()

    # -- the device
    def frame(self, message, seq: int = 0) -> bytes:
        k = self.key if self.session_key is None or isinstance(message, Hello) else self.session_key
        return encode(message, src=self.dev_id, dst=1, seq=seq, time_ms=self.ms, mac_key=k)

    def send(self, data: bytes) -> None:
        """Device -> gateway; the loop reads it (the clock does not move, so no timer fires)."""
        before = self.conn.rx_bytes
        self.dev.sendall(data)
        deadline = time.monotonic() + 5
        while self.conn.rx_bytes < before + len(data) and not self.conn._closed:
            assert time.monotonic() < deadline, "the loop did not read the device's bytes"
            self.loop.run_once(0.05)

    def heartbeat(self) -> None:
        self.hb += 1
        self.send(self.frame(Heartbeat(self.hb)))

    def read(self) -> bytes:
        """What the device received since the last read (raw bytes)."""
        start = len(self.rx)
        while True:
            try:
                data = self.dev.recv(1 << 20)
            except BlockingIOError:
                break
            if not data:
                break
            self.rx += data
        return bytes(self.rx[start:])

    def _handshake(self) -> None:
        kind = 1
        self.send(self.frame(Hello(kind, 0, HB_MS, "TEST-1", DEVICE_NONCE)))
        if self.key is not None:
            self.session_key = session_key(self.key, DEVICE_NONCE, SESSION_NONCE)
        self.send(self.frame(SessionConfirm(DEVICE_NONCE, SESSION_NONCE)))
        assert self.p.alive and self.p.state.value == "up"
        assert (self.p.fast is not None) == (self.mode != "pure")
        assert type(self.reader).__name__ == ("FastReader" if self.mode != "pure" else "method")
        self.ack_len = len(self.read())  # the HELLO_ACK
        self.rx.clear()

    # -- the clock
    def tick(self, dt: float = HB_S) -> bytes:
        """Move the clock by ``dt`` (a heartbeat), let the loop run what is due; what the device got."""
        self.now += dt
        self.ms += round(dt * 1000)
        self.loop.run_once(0)
        time.sleep(0.001)  # loopback delivers at once; a moment for safety
        return self.read()

    def expected(self, counter: int) -> bytes:
        return encode(Heartbeat(counter), src=1, dst=self.dev_id, seq=0, time_ms=self.ms, mac_key=self.p._tx_key)

    def outcome(self) -> dict:
        """Everything a tick may change, for comparing the modes."""
        c, p = self.conn, self.p
        st = c.stats()
        dead = c._dead_timer
        return {"rx": bytes(self.rx), "state": p.state.value, "alive": p.alive, "why": p.why,
                "close_reason": p.close_reason, "hb_counter": p._hb_counter, "p_tx_frames": p.tx_frames,
                "tx_frames": st["tx_frames"], "tx_bytes": c.tx_bytes, "rx_bytes": c.rx_bytes, "queued": c._queued,
                "out": bytes(c._out[c._out_pos:]), "closed": c._closed, "errors": dict(p.checks.errors),
                "dead_at": dead.when if dead is not None and not dead.cancelled else None,
                "counters": dict(self.ctx.counters), "calls": list(self.ctx.calls)}

    def close(self) -> None:
        if not self.conn._closed:
            self.conn._destroy()
        self.dev.close()
        self.loop.close()


def run(scenario, modes=None, **rig_args) -> dict:
    """``scenario(rig)`` in each mode; the outcomes by mode, checked equal."""
    outcomes, refs = {}, {}
    for mode in modes or modes_to_run():
        rig = Rig(mode, **rig_args)
        try:
            scenario(rig)
            outcomes[mode], refs[mode] = rig.outcome(), rig.reference_calls
        finally:
            rig.close()
    first = next(iter(outcomes.values()))
    for mode, got in outcomes.items():
        assert got == first, f"{mode} differs from {next(iter(outcomes))}"
    return {"outcome": first, "reference_calls": refs}


# -- the encoder ----------------------------------------------------------------------------------

@pytest.mark.skipif(not BUILT, reason="the compiled reactor is not built or not in use")
def test_the_c_encoder_is_encode_byte_for_byte():
    from gateway.net import _reactor
    rng = random.Random(7)
    keys = [None, b"", KEY_257, bytes(range(32)), b"k" * 64, b"x" * 100]  # (over 64 bytes: the key is hashed)
    for _ in range(2000):
        counter = rng.choice((0, 1, 2, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, rng.getrandbits(32)))
        src, dst = rng.getrandbits(16), rng.choice((0, 0xFFFF, rng.getrandbits(16)))
        ms = rng.choice((0, T0_MS, (1 << 64) - 1, rng.getrandbits(64)))
        key = rng.choice(keys)
        assert _reactor.encode_heartbeat(counter, src, dst, ms, key) == encode(
            Heartbeat(counter), src=src, dst=dst, seq=0, time_ms=ms, mac_key=key)


# -- the steady tick ------------------------------------------------------------------------------

@pytest.mark.skipif(not BUILT, reason="the compiled reactor is not built or not in use")
@pytest.mark.parametrize("dev_id, key", [(258, None), (257, KEY_257)], ids=["no-mac", "session-key"])
def test_the_compiled_tick_sends_what_encode_makes_including_the_counter_wrap(dev_id, key):
    rig = Rig("compiled", dev_id=dev_id, key=key)
    try:
        assert (rig.p._tx_key is not None) == (key is not None)
        sent = []
        for start in (None, None, 0x7FFFFFFE, 0xFFFFFFFD, None, None):  # ..., 0xFFFFFFFF, then 0 (the wrap)
            if start is not None:
                rig.p._hb_counter = start
            rig.heartbeat()
            got = rig.tick()
            assert got == rig.expected(rig.p._hb_counter)
            sent.append(rig.p._hb_counter)
        assert sent == [1, 2, 0x7FFFFFFF, 0xFFFFFFFE, 0xFFFFFFFF, 0]
        assert len(got) == (48 if key else 32)
        assert rig.reference_calls == 0  # every one of them was the compiled tick's
    finally:
        rig.close()


@pytest.mark.parametrize("dev_id, key", [(258, None), (257, KEY_257)], ids=["no-mac", "session-key"])
def test_steady_ticks_send_one_heartbeat_per_period_counted_as_the_python_path_does(dev_id, key):
    periods = 6

    def scenario(rig):
        for _ in range(periods):
            rig.heartbeat()
            rig.tick()
        rig.send(rig.frame(TrackSections(((111, 1),)), seq=1))
        rig.tick()
        assert rig.conn.tx_bytes == rig.ack_len + len(rig.rx)

    res = run(scenario, dev_id=dev_id, key=key)
    out = res["outcome"]
    size = 48 if key else 32
    frames = [out["rx"][i:i + size] for i in range(0, len(out["rx"]), size)]
    assert len(out["rx"]) == size * (periods + 1)
    assert [int.from_bytes(f[24:28], "big") for f in frames] == list(range(1, periods + 2))
    assert [int.from_bytes(f[14:22], "big") for f in frames] == [T0_MS + HB_MS * k for k in range(1, periods + 2)]
    assert out["p_tx_frames"] == periods + 1 + 1  # and the HELLO_ACK
    assert out["queued"] == 0 and out["out"] == b"" and out["state"] == "up" and out["errors"] == {}
    assert out["hb_counter"] == periods + 1
    if BUILT:
        assert res["reference_calls"]["compiled"] == 0
        assert res["reference_calls"]["reference"] == periods + 1


# -- every other tick is the reference's ------------------------------------------------------------

def test_a_silent_link_is_closed_by_the_reference_as_on_the_pure_path():
    def scenario(rig):
        rig.heartbeat()
        rig.tick()               # steady
        rig.tick(4 * HB_S)       # a late loop: 5 heartbeats without a frame, over dead_after (3)
        assert rig.p.state.value == "closing"
        rig.tick()               # closing (waiting for the device's CLOSE): no heartbeat

    res = run(scenario)
    out = res["outcome"]
    assert out["state"] == "closing" and not out["alive"]
    assert out["rx"][32:] == encode(Close(Close.HEARTBEAT_TIMEOUT), src=1, dst=258, seq=0, time_ms=T0_MS + 5 * HB_MS)
    assert out["counters"] == {"heartbeat_timeouts": 1}
    assert ("left_up", out["why"]) in out["calls"] and out["why"].startswith("nothing received for 625 ms")
    assert out["close_reason"] == Close.HEARTBEAT_TIMEOUT
    assert out["hb_counter"] == 1  # the silent tick sends no heartbeat
    if BUILT:
        assert res["reference_calls"] == {"compiled": 2, "reference": 3, "pure": 3}


def test_a_closing_link_that_is_not_silent_gets_no_heartbeat():
    def scenario(rig):
        rig.heartbeat()
        rig.tick()               # steady
        rig.conn.close()         # a local close: CLOSING, our CLOSE queued (the device does not answer)
        rig.loop.run_once(0)
        rig.tick()               # 1 hb after the last frame: not silent, but not UP: no heartbeat

    res = run(scenario)
    out = res["outcome"]
    assert out["state"] == "closing" and out["hb_counter"] == 1 and out["why"] == "closed by the gateway"
    assert out["rx"][32:] == encode(Close(Close.NORMAL), src=1, dst=258, seq=0, time_ms=T0_MS + HB_MS)
    if BUILT:
        assert res["reference_calls"] == {"compiled": 1, "reference": 2, "pure": 2}


def test_a_dead_deadline_before_the_next_tick_is_armed_by_the_reference():
    def scenario(rig):
        rig.heartbeat()          # last frame at T0
        rig.tick()               # T0 + 1 hb: deadline T0 + 3 hb >= T0 + 2 hb: steady
        rig.tick()               # T0 + 2 hb: deadline T0 + 3 hb < T0 + 3 hb? no: steady
        rig.tick()               # T0 + 3 hb: deadline < T0 + 4 hb: ARM_DEAD

    res = run(scenario)
    out = res["outcome"]
    assert out["dead_at"] == T0 + 3 * HB_S + 0.0005 and out["state"] == "up"
    assert out["hb_counter"] == 3 and len(out["rx"]) == 3 * 32
    if BUILT:
        assert res["reference_calls"] == {"compiled": 1, "reference": 3, "pure": 3}


def test_a_partial_frame_older_than_a_heartbeat_is_abandoned_by_the_reference():
    def scenario(rig):
        rig.hb += 1
        rig.send(rig.frame(Heartbeat(rig.hb)) + rig.frame(TrackSections(((111, 1),)), seq=1)[:10])  # at T0
        assert rig.p._partial_since == T0
        rig.tick()               # a partial frame 1 hb old: watched, not overdue
        rig.tick()               # 2 hb: overdue: read first, then abandoned (truncated)
        rig.heartbeat()
        rig.tick()               # steady again

    res = run(scenario)
    out = res["outcome"]
    assert out["errors"] == {"truncated": 1} and out["state"] == "up"
    assert out["hb_counter"] == 3
    if BUILT:
        assert res["reference_calls"] == {"compiled": 2, "reference": 3, "pure": 3}


@pytest.mark.parametrize("pending", ["outbox", "action-bits"])
def test_output_or_action_bits_pending_in_the_protocol_go_to_the_reference_before_the_heartbeat(pending):
    """A frame waiting in the protocol's outbox, or action bits gathered and not yet performed, at a
    tick: the compiled tick leaves the tick to the reference, which writes the outbox before the
    HEARTBEAT and performs the bits (here ARM_DEAD: the dead-deadline timer at ``dead_at``)."""
    waiting = encode(Close(0), src=1, dst=258, seq=0, time_ms=T0_MS)

    def scenario(rig):
        rig.heartbeat()
        if pending == "outbox":
            rig.p.outbox += waiting
        else:
            rig.p._acts, rig.p.dead_at = ARM_DEAD, rig.now + 7 * HB_S
        got = rig.tick()
        assert got == (waiting if pending == "outbox" else b"") + rig.expected(1)
        rig.heartbeat()
        assert rig.tick() == rig.expected(2)  # steady again

    res = run(scenario)
    out = res["outcome"]
    assert out["hb_counter"] == 2 and out["state"] == "up" and out["queued"] == 0
    assert out["dead_at"] == (None if pending == "outbox" else T0 + 7 * HB_S)
    if BUILT:
        assert res["reference_calls"] == {"compiled": 1, "reference": 2, "pure": 2}


def pending_output(rig, through_connection: bool) -> bytes:
    """Fill the gateway's socket buffer (the device reads nothing): through the connection's output
    (``send``: the rest waits in ``_out`` behind EPOLLOUT) or straight on the socket (nothing waits in
    ``_out``: the tick's own send meets EAGAIN). Returns the filler."""
    blob = bytes(range(256)) * 2048  # 512 KiB: over what the socket buffers hold, under the high-water mark
    if through_connection:
        assert rig.conn.send(blob)
        assert rig.conn._out_pos < len(rig.conn._out)
        return blob
    sent = bytearray()
    while True:
        try:
            n = rig.conn.sock.send(blob[len(sent):len(sent) + 4096])
        except BlockingIOError:
            return bytes(sent)
        sent += blob[len(sent):len(sent) + n]


@pytest.mark.parametrize("through_connection", [True, False], ids=["queued-output", "full-socket-buffer"])
def test_pending_output_or_a_full_socket_buffer_queue_the_heartbeat_behind_it_in_order(through_connection):
    def scenario(rig):
        rig.heartbeat()
        filler = pending_output(rig, through_connection)
        rig.tick()
        assert rig.conn._out_pos < len(rig.conn._out)  # the heartbeat waits behind the filler
        assert rig.conn._out.endswith(rig.expected(1))
        rig.queued_then = rig.conn._queued
        deadline = time.monotonic() + 10
        while len(rig.rx) < len(filler) + 32:  # the device reads; EPOLLOUT flushes
            assert time.monotonic() < deadline
            rig.read()
            rig.loop.run_once(0.01)
        assert bytes(rig.rx) == filler + rig.expected(1)
        rig.rx.clear()
        rig.heartbeat()
        assert rig.tick() == rig.expected(2)  # steady again

    res = run(scenario, sndbuf=4096)
    out = res["outcome"]
    assert out["queued"] == 0 and out["out"] == b"" and out["hb_counter"] == 2 and out["state"] == "up"
    if BUILT:
        # queued output: the reference's; a full buffer: the compiled tick's own send, then _write's path
        assert res["reference_calls"] == {"compiled": 0 if not through_connection else 1, "reference": 2, "pure": 2}


def test_a_send_error_in_the_tick_goes_to_io_error_as_on_the_python_path():
    def scenario(rig):
        rig.heartbeat()
        rig.dev.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        rig.dev.close()          # RST
        time.sleep(0.05)
        rig.now += HB_S          # the tick, before the loop reads the reset
        rig.ms += HB_MS
        rig.conn._heartbeat_tick()
        rig.dev = socket.socket()  # (closed by Rig.close)

    res = run(scenario)
    out = res["outcome"]
    assert out["why"] == "send: Connection reset by peer" and out["closed"] and out["state"] == "closed"
    assert out["queued"] == 32  # counted, never sent (as _write leaves it)
    assert out["hb_counter"] == 1 and out["calls"][-2:] == [("left_up", out["why"]), "closed"]
    if BUILT:
        assert res["reference_calls"] == {"compiled": 0, "reference": 1, "pure": 1}


class ShortSend:
    """Stands in for the connection's socket in ``_write``: sends only the first ``n`` bytes for real."""

    def __init__(self, sock: socket.socket, n: int) -> None:
        self.sock, self.n = sock, n

    def send(self, data) -> int:
        return self.sock.send(bytes(data[:self.n]))


@pytest.mark.skipif(not BUILT, reason="the compiled reactor is not built or not in use")
def test_a_short_send_of_the_tick_goes_on_as_writes_own_short_send():
    """The compiled tick hands a short send (``send`` took ``n`` of the frame's bytes) to
    ``_tick_send_incomplete(data, n, None)``: the connection must then be where ``_write`` leaves it
    after the same short send (a short send cannot be forced on a real socket, so it is played here)."""
    states = []
    for way in ("write", "tick"):
        rig = Rig("compiled")
        try:
            frame = rig.expected(1)
            real = rig.conn.sock
            if way == "write":
                rig.conn.sock = ShortSend(real, 10)
                rig.conn._write(frame)
                rig.conn.sock = real
            else:
                assert real.send(frame[:10]) == 10
                rig.conn._tick_send_incomplete(frame, 10, None)
            c = rig.conn
            states.append((bytes(c._out[c._out_pos:]), c.tx_bytes, c._queued, rig.loop._channels[c.fd].events))
            rig.loop.run_once(0.05)  # EPOLLOUT: the rest goes out
            time.sleep(0.01)
            assert rig.read() == frame and c._queued == 0 and c._out == bytearray()
        finally:
            rig.close()
    assert states[0] == states[1]
    out, tx_bytes, queued, events = states[0]
    assert out == frame[10:] and queued == len(frame) - 10 and events & select.EPOLLOUT
