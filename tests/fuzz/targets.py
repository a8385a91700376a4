"""Fuzz targets for the codecs: bytes in, one decoder path driven, invariants checked.

Shared by the atheris harness (``fuzz_codecs.py``), the corpus replay
(``tests/test_fuzz_regressions.py``) and the seeded mutation run
(``tests/test_fuzz_mutation.py``). No atheris here: pytest runs without it.

A target must never see an exception from the codecs, whatever the bytes. On
top of that it checks what "sane output" means for a receiver:

* every event is a Frame or a FrameError with a decoder reason;
* an accepted frame re-encodes to exactly the bytes it was decoded from (so
  nothing damaged, padded or out of range is ever accepted, and no frame with
  a bad CRC or MAC);
* the stream decoder gives the same events for every chunking, and consumes
  every byte once the stream has ended;
* the receiver answers None or a Reason, and never applies a sequenced frame
  that is not newer than the last one it applied from that sender's session.

A violated invariant raises AssertionError, which the fuzzer reports as a crash.
"""
from __future__ import annotations

import random
import struct
import zlib

from railcodecs import (ALL_TYPES, HEADER_LEN, MAC_LEN, MAX_PAYLOAD, Close, Command, CommandResult,
                        DeviceAlarm, Frame, FrameError, Heartbeat, Hello, HelloAck, MacPolicy, Reason, Receiver,
                        SessionConfirm,
                        Signals, StreamDecoder, Switches, TrackSections, TrainDiag, TrainHeartbeat, TrainStatus,
                        compute_mac, decode_datagram, encode, seq_distance)
from railcodecs.errors import DECODE_REASONS

GW, CI, ZC, PSD, TRAIN = 1, 257, 513, 769, 1025
#: the receiver's configured senders: node id -> kind (1 CI, 2 ZC, 3 PSD, 4 train)
SENDERS = {CI: 1, 258: 1, ZC: 2, PSD: 3, TRAIN: 4, 1026: 4}
KEY = bytes(range(32))
T0 = 1_795_000_000_000
#: frames signed with KEY verify; a ZC frame must carry a MAC (so missing_mac is reachable)
POLICY = MacPolicy(key=KEY, required_srcs=frozenset({ZC}))
SYNC = b"\xa5\x5a"
_CRC = struct.Struct(">I")
_DECODE_REASONS = frozenset(DECODE_REASONS)
#: how the stream target cuts its input, by the selector byte's low 3 bits (0: whole, 1: bytewise)
_MAX_PIECE = (0, 1, 2, 3, 7, 24, 200, 4200)


# --- seeds -----------------------------------------------------------------------
def sample_messages() -> list:
    """At least one valid message of every ICD type, edge values included."""
    status = dict(section_id=104, offset_cm=12_345, speed_cm_s=-300, direction=1, mode=2, consist_id=9,
                  coupling=2, role=1, peer_train=1026, doors=0, fault_flags=0x81)
    return [
        Hello(1, 0, 500, "CI-3.2.1", 0x0123456789ABCDEF), Hello(2, 1, 65535, "", 0xFFFF_FFFF_FFFF_FFFF),
        HelloAck(0, 500, T0, 0xFEDCBA9876543210), HelloAck(3, 0, 0, 0),
        SessionConfirm(0x0123456789ABCDEF, 0xFEDCBA9876543210), SessionConfirm(0, 0),
        Heartbeat(7), Heartbeat(0xFFFF_FFFF),
        TrackSections(((101, 0), (102, 1), (103, 2), (104, 3))), TrackSections(()),
        Signals(((201, 0), (202, 2), (203, 5))), Switches(((301, 0), (302, 1), (303, 3))),
        DeviceAlarm(4101, 2, 1, 104, "轨道电路故障 TC-104"), DeviceAlarm(1, 4, 0, 0, ""),
        Command(77, 2, 302, 0, 12), CommandResult(77, 0, 0), CommandResult(78, 3, 65535),
        Close(0), Close(3),
        TrainHeartbeat(42), TrainStatus(**status), TrainStatus(**{**status, "speed_cm_s": 32767, "doors": 2}),
        TrainDiag(((7, 1, 1), (8, 4, 0))), TrainDiag(()),
    ]


def frame_for(msg, seq: int, *, signed: bool = False, src: int | None = None) -> bytes:
    """``msg`` as its usual sender sends it to the gateway (HELLO_ACK, COMMAND: the other way)."""
    if src is None:
        src = TRAIN if msg.FIXED_PAYLOAD is not None else CI
    dst = GW
    if isinstance(msg, (HelloAck, Command)):
        src, dst = GW, CI
    return encode(msg, src=src, dst=dst, seq=0 if msg.PER_LINK else seq, time_ms=T0,
                  mac_key=KEY if signed else None)


def sample_frames() -> list[bytes]:
    """Every sample message as a frame, unsigned and signed, plus a ZC frame without its required MAC."""
    out, seq = [], 1
    for signed in (False, True):
        for msg in sample_messages():
            out.append(frame_for(msg, seq, signed=signed))
            seq += 1
    out.append(frame_for(TrackSections(((5, 1),)), seq, src=ZC))
    return out


def hello_frame(net: int = 0) -> bytes:
    return frame_for(Hello(1, net, 500, "fuzz", 99), 0)


# --- the CRC-fixing step ---------------------------------------------------------------
def fix_frames(buf: bytearray, key: bytes | None = None) -> bytearray:
    """Recompute, in place, the trailing CRC-32 of every frame candidate in ``buf``.

    A candidate starts at a sync word and is as long as its header says; with
    ``key`` its MAC (when the flag is set) is recomputed first. So a mutation
    gets past the CRC (and MAC) and reaches the header checks and the payload
    parsers. Candidates cut off by the end of ``buf`` are left alone.
    """
    n = len(buf)
    pos = buf.find(SYNC)
    while 0 <= pos and pos + HEADER_LEN <= n:
        length = (buf[pos + 22] << 8) | buf[pos + 23]
        signed = buf[pos + 4] & 1
        total = HEADER_LEN + length + (MAC_LEN if signed else 0) + 4
        if length > MAX_PAYLOAD or pos + total > n:
            pos = buf.find(SYNC, pos + 1)
            continue
        body_end = pos + HEADER_LEN + length
        if signed and key is not None:
            buf[body_end:body_end + MAC_LEN] = compute_mac(key, bytes(buf[pos:body_end]))
        end = pos + total - 4
        buf[end:end + 4] = _CRC.pack(zlib.crc32(buf[pos:end]))
        pos = buf.find(SYNC, pos + total)
    return buf


# --- invariants --------------------------------------------------------------------
def check_frame_bytes(frame: Frame, wire) -> None:
    """An accepted frame must be exactly the bytes it came from, re-encoded."""
    again = encode(frame.message, src=frame.src, dst=frame.dst, seq=frame.seq, time_ms=frame.time_ms,
                   mac_key=KEY if frame.mac else None)
    assert again == bytes(wire), f"accepted {frame!r} from {bytes(wire).hex()} re-encodes as {again.hex()}"


def check_error(ev, n: int) -> None:
    assert isinstance(ev, FrameError), f"not an event: {ev!r}"
    assert ev.reason in _DECODE_REASONS, ev
    assert 0 <= ev.offset <= n and ev.length >= 0, ev


def pieces(data: bytes, selector: int) -> list[bytes]:
    """Cut ``data`` as the selector says: whole, byte by byte, or seeded random pieces."""
    most = _MAX_PIECE[selector & 7]
    if most == 0:
        return [data]
    if most == 1:
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(selector)
    out, i = [], 0
    while i < len(data):
        k = rng.randint(1, most)
        out.append(data[i:i + k])
        i += k
    return out


def decode_stream(data: bytes, chunks, *, types=ALL_TYPES, mac: MacPolicy = POLICY) -> list:
    """Decode a whole stream; returns ``(event, stream offset after it)`` pairs, invariants checked."""
    dec = StreamDecoder(types=types, mac=mac)
    out = []
    for c in chunks:
        dec.feed(c)
        for ev in dec.events():
            out.append((ev, dec.offset))
    dec.end_of_stream()
    for ev in dec.events():
        out.append((ev, dec.offset))
    assert dec.buffered == 0 and dec.offset == len(data), (dec.buffered, dec.offset, len(data))
    last = 0
    for ev, end in out:
        if isinstance(ev, Frame):
            size = HEADER_LEN + len(ev.message.pack()) + (MAC_LEN if ev.mac else 0) + 4
            check_frame_bytes(ev, data[end - size:end])
            last = end - size
        else:
            check_error(ev, len(data))
            assert ev.offset >= last, f"events out of order: {ev!r} after offset {last}"
            last = ev.offset
    return out


# --- the three targets ----------------------------------------------------------------
def stream_target(data: bytes) -> list:
    """Byte 0 chooses the chunking; the rest is a TCP stream, fed whole and in those chunks."""
    if not data:
        return []
    body = bytes(data[1:])
    whole = decode_stream(body, [body])
    if data[0] & 7:
        chunked = decode_stream(body, pieces(body, data[0]))
        assert chunked == whole, "the chunking changed the events"
    return whole


def datagram_target(data: bytes):
    """The input is one datagram: decoded as UDP (train types) and with every type accepted."""
    results = []
    for types in (None, ALL_TYPES):
        ev = decode_datagram(data, mac=POLICY) if types is None else decode_datagram(data, types=types, mac=POLICY)
        if isinstance(ev, Frame):
            check_frame_bytes(ev, data)
        else:
            check_error(ev, len(data))
            assert ev.offset == 0, ev
        results.append(ev)
    again = decode_datagram(memoryview(bytearray(data)), mac=POLICY)  # any buffer type, same answer
    assert again == results[0], (again, results[0])
    return results


#: the session nonce the receiver target's links answer every HELLO with
SESSION_NONCE = 0xFEDCBA9876543210


class ReceiverRun:
    """A receiver with a TCP link per net and a UDP endpoint, recording what it applies."""

    def __init__(self, now_ms: int = T0, confirm_nets=(0, 1)) -> None:
        """``confirm_nets``: the links whose valid HELLO is followed by a good SESSION_CONFIRM at once
        (the others stay unconfirmed unless a matching SESSION_CONFIRM comes in the stream)."""
        self.rx = Receiver(GW, SENDERS)
        self.confirm_nets = confirm_nets
        self.now = now_ms
        self.links = [self.rx.new_link("net-a", 0), self.rx.new_link("net-b", 1)]
        self.udp = self.rx.new_link("udp")
        self.applied = 0
        self._last: dict = {}  # sender id -> (session, last applied seq)

    def _apply(self, frame: Frame, now_ms: int) -> None:
        sender = self.rx.senders[frame.src]
        prev = self._last.get(frame.src)
        if prev is not None and prev[0] == sender.sessions:
            assert seq_distance(frame.seq, prev[1]) > 0, f"seq {frame.seq} applied after {prev[1]}"
        self._last[frame.src] = (sender.sessions, frame.seq)
        self.applied += 1

    def event(self, ev, link: int = 0):
        """One decoded event from TCP link ``link``; returns what the receiver said."""
        checks = self.links[link]
        if isinstance(ev, FrameError):
            checks.count(ev.reason)
            return ev.reason
        if isinstance(ev.message, Hello):
            result = self.rx.hello(checks, ev, self.now)
            assert result in (HelloAck.OK, HelloAck.UNKNOWN_DEVICE), result
            if result == HelloAck.OK and not checks.confirmed and link in self.confirm_nets:
                # the gateway's HELLO_ACK and the device's SESSION_CONFIRM, so that frames reach the window
                checks.session_nonce = SESSION_NONCE
                confirm = Frame(ev.src, GW, 0, ev.time_ms, SessionConfirm(ev.message.device_nonce, SESSION_NONCE))
                assert self.rx.confirm(checks, confirm, self.now) is None
            return result
        if isinstance(ev.message, SessionConfirm):
            verdict = self.rx.confirm(checks, ev, self.now)
            assert verdict is None or isinstance(verdict, Reason), verdict
            return verdict
        if ev.message.FIXED_PAYLOAD is not None:
            return self.datagram(ev)
        verdict = self.rx.check(checks, ev, self.now, self._apply)
        assert verdict is None or isinstance(verdict, Reason), verdict
        return verdict

    def datagram(self, ev):
        if isinstance(ev, FrameError):
            self.udp.count(ev.reason)
            return ev.reason
        verdict = self.rx.check_datagram(self.udp, ev, self.now, self._apply)
        assert verdict is None or isinstance(verdict, Reason), verdict
        return verdict

    def check_counters(self) -> None:
        for checks in (*self.links, self.udp):
            assert checks.applied <= checks.rx_frames and all(v > 0 for v in checks.errors.values())
        assert sum(s.applied for s in self.rx.senders.values()) == self.applied


def receiver_target(data: bytes) -> ReceiverRun:
    """Byte 0: bit 0 greets net A with a valid HELLO first, bit 1 also feeds every frame on net B
    (after its own HELLO), bits 2-3 move the gateway clock. The rest is a TCP stream whose frames
    go through the receiver (train types through the UDP checks), then close the links."""
    run = ReceiverRun(T0 + ((data[0] >> 2) & 3) * 1500 if data else T0)
    if not data:
        return run
    sel, body = data[0], bytes(data[1:])
    nets = (0, 1) if sel & 2 else (0,)
    for net in nets:
        if sel & 1:
            for ev, _ in decode_stream(hello_frame(net), [hello_frame(net)]):
                assert run.event(ev, net) == HelloAck.OK
    for ev, _ in decode_stream(body, [body]):
        for net in nets:
            run.event(ev, net)
        if isinstance(ev, Frame):
            run.datagram(ev)  # the same frame as a datagram: every type through the UDP checks
    for checks in run.links:
        run.rx.link_closed(checks)
        run.rx.link_closed(checks)  # twice: idempotent
    run.check_counters()
    return run


TARGETS = {"stream": stream_target, "datagram": datagram_target, "receiver": receiver_target}


def seed_inputs(target: str, vector_frames: list[bytes]) -> list[bytes]:
    """Seed inputs for ``target``: the ICD vectors and the sample frames, alone and as streams."""
    frames = vector_frames + sample_frames()
    if target == "datagram":
        return frames
    seeds = [bytes([(1 + 7 * i) % 256]) + f for i, f in enumerate(frames)]  # every chunking mode, in turn
    seeds.append(b"\x00" + b"".join(sample_frames()[:12]))
    seeds.append(b"\x03" + b"".join(vector_frames))
    return seeds
