"""Issue 12, items 2-3: no input makes a decoder or the receiver raise (ICD section 3).

An enumerated field out of range in a frame with a good CRC is ``bad_payload``:
one error event, the frame skipped, the next frame decoded, in any chunking.
Every ``unpack`` raises PayloadError and nothing else; the hypothesis tests
throw random bytes, random payloads of every type and mutated valid frames
(CRC recomputed, so the mutation reaches the payload parser) at the stream
decoder, the datagram decoder and the receiver checks.
"""
from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec_helpers import decode_chunks
from conftest import chunkings
from fuzz.targets import (CI, GW, T0, ReceiverRun, datagram_target, decode_stream, fix_frames, pieces,
                          sample_frames, sample_messages)
from railcodecs import (ALL_TYPES, GATEWAY_RX_TYPES, UDP_TYPES, Close, Command, CommandResult, DeviceAlarm,
                        FieldError, Frame, FrameError, Hello, HelloAck, Message, PayloadError, Receiver,
                        Signals, Switches, TrackSections, TrainDiag, TrainStatus, decode_datagram, encode)

STATUS = dict(section_id=104, offset_cm=1, speed_cm_s=-3, direction=1, mode=0, consist_id=9, coupling=2,
              role=1, peer_train=1026, doors=0, fault_flags=0)


def wire(msg, seq=1) -> bytes:
    src = 1025 if msg.FIXED_PAYLOAD is not None else CI
    return encode(msg, src=src, dst=GW, seq=0 if msg.PER_LINK else seq, time_ms=T0)


def with_payload_byte(frame: bytes, at: int, value: int) -> bytes:
    """``frame`` with payload byte ``at`` set to ``value`` and its CRC made good again."""
    data = bytearray(frame)
    data[24 + at] = value
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    return bytes(data)


# (message, payload offset of the enumerated field, ICD name of the field, a value outside its range)
OUT_OF_RANGE = [
    (Close(0), 0, "reason", 9),
    (Close(3), 0, "reason", 4),
    (Hello(1, 0, 500, "CI-3.2.1", 0x0123456789ABCDEF), 0, "device_kind", 9),
    (Hello(1, 0, 500, "CI-3.2.1", 0x0123456789ABCDEF), 0, "device_kind", 0),
    (Hello(1, 0, 500, "CI-3.2.1", 0x0123456789ABCDEF), 1, "net", 7),
    (HelloAck(0, 500, T0, 0xFEDCBA9876543210), 0, "result", 9),
    (HelloAck(1, 500, T0, 0), 18, "session_nonce", 9),  # a refusal carries nonce 0 (ICD 1.1)
    (TrackSections(((101, 0), (102, 1))), 2 + 3 + 2, "state", 9),
    (Signals(((201, 0),)), 4, "aspect", 9),
    (Switches(((301, 0),)), 4, "position", 9),
    (DeviceAlarm(4101, 2, 1, 104, "TC-104"), 2, "severity", 0),
    (DeviceAlarm(4101, 2, 1, 104, "TC-104"), 2, "severity", 5),
    (DeviceAlarm(4101, 2, 1, 104, "TC-104"), 3, "action", 7),
    (Command(77, 2, 302, 0, 12), 4, "op", 0),
    (Command(77, 2, 302, 0, 12), 4, "op", 7),
    (CommandResult(77, 0, 0), 4, "result", 9),
    (TrainStatus(**STATUS), 8, "direction", 2),
    (TrainStatus(**STATUS), 9, "mode", 4),
    (TrainStatus(**STATUS), 12, "coupling", 4),
    (TrainStatus(**STATUS), 13, "role", 3),
    (TrainStatus(**STATUS), 16, "doors", 3),
    (TrainStatus(**STATUS), 16, "doors", 255),
    (TrainDiag(((7, 1, 1),)), 4, "severity", 0),
    (TrainDiag(((7, 1, 1),)), 5, "active", 2),
]
IDS = [f"{m.NAME}.{field}={value}" for m, _, field, value in OUT_OF_RANGE]


@pytest.mark.parametrize("msg, at, field, value", OUT_OF_RANGE, ids=IDS)
def test_out_of_range_field_is_one_bad_payload_and_the_next_frame_decodes(msg, at, field, value):
    good = wire(msg, seq=2)
    bad = with_payload_byte(wire(msg, seq=1), at, value)
    after = wire(msg, seq=3)
    for label, chunks in chunkings(bad + after, seed=value):
        events = decode_chunks(chunks)  # every type accepted: COMMAND, HELLO_ACK and train types too
        assert len(events) == 2, (label, events)
        error, frame = events
        assert isinstance(error, FrameError) and error.reason.value == "bad_payload" and error.offset == 0, label
        assert msg.NAME in error.detail and field in error.detail, error.detail
        assert isinstance(frame, Frame) and frame.message == msg and frame.seq == (0 if msg.PER_LINK else 3)
    # as a datagram: the same verdict, and the decoder is as good as new for the next one
    for types in (ALL_TYPES, UDP_TYPES) if msg.FIXED_PAYLOAD is not None else (ALL_TYPES,):
        ev = decode_datagram(bad, types=types)
        assert isinstance(ev, FrameError) and ev.reason.value == "bad_payload" and field in ev.detail
        assert isinstance(decode_datagram(good, types=types), Frame)


@pytest.mark.parametrize("msg, at, field, value", OUT_OF_RANGE, ids=IDS)
def test_unpack_raises_payload_error_never_field_error(msg, at, field, value):
    payload = bytearray(msg.pack())
    payload[at] = value
    with pytest.raises(PayloadError, match=field) as info:
        type(msg).unpack(bytes(payload))
    assert not isinstance(info.value, FieldError)
    assert type(msg).unpack(memoryview(msg.pack())) == msg


# The revision 1.1 reference vectors of out-of-range fields (ICD vectors file, verbatim).
ICD_11_OUT_OF_RANGE = {
    "close_reason_out_of_range": "a55a017e00000101000100000000000001a1ee565e00000109ca7329ab",
    "hello_ack_result_out_of_range": "a55a018100000001010100000000000001a1ee565e0000130901f4000001a1ee565e00000000"
                                     "00000000003846be5b",
    "hello_net_out_of_range": "a55a010100000101000100000000000001a1ee565e00001c010501f443490000000000000000000000"
                              "0000000000000000000001dfec0d20",
    "signals_aspect_out_of_range": "a55a011100000101000100000008000001a1ee565e000005000100c9090b3eb00a",
}


@pytest.mark.parametrize("name", sorted(ICD_11_OUT_OF_RANGE))
def test_icd_out_of_range_vectors_are_bad_payload(name):
    data = bytes.fromhex(ICD_11_OUT_OF_RANGE[name])
    nxt = wire(Close(0))
    for label, chunks in chunkings(data + nxt, seed=len(data)):
        events = decode_chunks(chunks)
        assert [e.reason.value if isinstance(e, FrameError) else e.name for e in events] == \
            ["bad_payload", "CLOSE"], label
    ev = decode_datagram(data, types=ALL_TYPES)
    assert isinstance(ev, FrameError) and ev.reason.value == "bad_payload"


# --- one mechanism for every type ----------------------------------------------------
def test_every_message_type_parses_through_the_one_mapping():
    for cls in ALL_TYPES.values():
        assert cls.unpack.__func__ is Message.unpack.__func__, cls.NAME
        assert cls._parse.__func__ is not Message._parse.__func__, cls.NAME  # each type has its own parser


def test_a_message_type_cannot_bypass_the_mapping():
    with pytest.raises(TypeError, match="override _parse"):
        class Sneaky(Message):  # noqa: F841
            @classmethod
            def unpack(cls, payload):
                return cls()


@pytest.mark.parametrize("exc", [
    FieldError("X.f: expected one of 0..3, got 9"), struct.error("unpack requires a buffer of 4 bytes"),
    UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), IndexError("index out of range"),
    ValueError("bad"), PayloadError("X: too short"),
])
def test_whatever_a_payload_can_provoke_becomes_payload_error(exc):
    class Faulty(Message):
        TYPE, NAME = 0x7F, "FAULTY"

        @classmethod
        def _parse(cls, payload):
            raise exc

    with pytest.raises(PayloadError) as info:
        Faulty.unpack(b"")
    assert info.value.__class__ is PayloadError
    assert str(exc) in str(info.value)


def test_a_bug_is_not_disguised_as_bad_payload():
    """TypeError or AttributeError come from our code, not the peer's bytes: they stay loud."""
    class Buggy(Message):
        TYPE, NAME = 0x7F, "BUGGY"

        @classmethod
        def _parse(cls, payload):
            return payload.no_such_attribute

    with pytest.raises(AttributeError):
        Buggy.unpack(b"")


# --- the receiver -----------------------------------------------------------------------
def test_receiver_hello_with_another_message_counts_instead_of_raising():
    rx = Receiver(GW, {CI: 1})
    link = rx.new_link("a", 0)
    frame = decode_datagram(wire(Close(0)), types=ALL_TYPES)
    assert rx.hello(link, frame, T0) == HelloAck.UNKNOWN_DEVICE
    assert dict(link.errors) == {"unknown_type": 1} and link.device_id is None


def test_receiver_check_after_the_sender_left_the_config_drops_instead_of_raising():
    rx = Receiver(GW, {CI: 1})
    link = rx.new_link("a", 0)
    assert rx.hello(link, decode_datagram(wire(Hello(1, 0, 500, "x", 7)), types=ALL_TYPES), T0) == HelloAck.OK
    del rx.senders[CI]  # e.g. a config reload removed the device while its link was open
    frame = decode_datagram(wire(TrackSections(((1, 1),))), types=ALL_TYPES)
    assert rx.check(link, frame, T0).value == "unknown_source"


# --- hypothesis: nothing raises, whatever the bytes ----------------------------------------
def drive(data: bytes, cuts: list[int], types=ALL_TYPES) -> list:
    """Stream in these chunks, the same bytes as one datagram, every frame through the receiver."""
    bounds = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *bounds], [*bounds, len(data)])]
    events = decode_stream(data, chunks, types=types)
    datagram_target(data)
    run = ReceiverRun()
    for ev, _ in events:
        run.event(ev, 0)
        if isinstance(ev, Frame):
            run.datagram(ev)
    run.check_counters()
    return events


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=10))
def test_random_bytes_never_raise(data, cuts):
    drive(data, cuts)
    drive(b"\xa5\x5a\x01" + data, cuts, types=GATEWAY_RX_TYPES)


#: payload sizes that parse for each type (those of the sample messages)
SIZES = {t: sorted({len(m.pack()) for m in sample_messages() if m.TYPE == t}) for t in ALL_TYPES}


@SETTINGS
@given(mtype=st.sampled_from(sorted(ALL_TYPES)), data=st.data(), flags=st.sampled_from([0, 1]),
       cuts=st.lists(st.integers(0, 300), max_size=6))
def test_random_payload_of_every_type_with_a_good_crc_never_raises(mtype, data, flags, cuts):
    """A well-framed frame (good header, length and CRC) around random bytes: straight into each parser,
    most often at a size that parses, so that the field checks are what decides."""
    size = data.draw(st.one_of(st.sampled_from(SIZES[mtype]), st.integers(0, 140)))
    payload = data.draw(st.binary(min_size=size, max_size=size))
    head = struct.pack(">HBBBBHHIQH", 0xA55A, 1, mtype, flags, 0, CI, GW, 1, T0, len(payload))
    body = head + payload + (bytes(16) if flags else b"")
    frame = bytes(fix_frames(bytearray(body + bytes(4)), key=bytes(range(32))))
    events = drive(frame + wire(Close(2)), cuts)
    assert [e.name for e, _ in events if isinstance(e, Frame)][-1] == "CLOSE"


@SETTINGS
@given(index=st.integers(0, 10_000),
       edits=st.lists(st.tuples(st.one_of(st.integers(24, 30), st.integers(0, 10_000)), st.integers(0, 255)),
                      min_size=1, max_size=4),  # the first payload bytes (most enumerated fields) half the time
       cut=st.integers(0, 4095), resign=st.booleans(), chunk_selector=st.integers(0, 255))
def test_mutated_valid_frames_with_the_crc_recomputed_never_raise(index, edits, cut, resign, chunk_selector):
    frames = sample_frames()
    data = bytearray(frames[index % len(frames)])
    for pos, value in edits:
        data[pos % len(data)] = value
    if cut % 7 == 0:
        del data[cut % len(data):]  # truncated too, now and then
    data = bytes(fix_frames(data, key=bytes(range(32)) if resign else None))
    whole = decode_stream(data, [data])
    assert decode_stream(data, pieces(data, chunk_selector)) == whole
    drive(data, [cut, cut * 7, cut * 13])
