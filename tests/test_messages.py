"""Constructors reject out-of-range fields, naming the message, field and range; datagram checks."""
from __future__ import annotations

import re

import pytest

from railcodecs import (Close, Command, DeviceAlarm, FieldError, Frame, FrameError, Hello, HelloAck, MacPolicy,
                        SessionConfirm, Signals, TrackSections, TrainDiag, TrainHeartbeat, TrainStatus, decode_datagram,
                        encode)

HDR = dict(src=1025, dst=1, seq=5, time_ms=1_795_000_000_000)
GOOD_STATUS = dict(section_id=104, offset_cm=1, speed_cm_s=-3, direction=1, mode=0, consist_id=9, coupling=2,
                   role=1, peer_train=1026, doors=0, fault_flags=0)


@pytest.mark.parametrize("build, text", [
    (lambda: Hello(5, 0, 500, "x", 1), "HELLO.device_kind: expected one of 1..4, got 5"),
    (lambda: Hello(1, 2, 500, "x", 1), "HELLO.net"),
    (lambda: Hello(1, 0, 70000, "x", 1), "HELLO.heartbeat_ms: expected an integer 0..65535"),
    (lambda: Hello(1, 0, 500, "x" * 17, 1), "HELLO.version"),
    (lambda: Hello(1, 0, 500, "é", 1), "HELLO.version"),
    (lambda: Hello(1, 0, 500, "x", 1 << 64), "HELLO.device_nonce: expected an integer 0..18446744073709551615"),
    (lambda: HelloAck(4, 500, 0, 0), "HELLO_ACK.result"),
    (lambda: HelloAck(0, 500, 0, -1), "HELLO_ACK.session_nonce"),
    (lambda: HelloAck(1, 500, 0, 5), "HELLO_ACK.session_nonce: must be 0 when result is 1"),
    (lambda: SessionConfirm(1, 1 << 64), "SESSION_CONFIRM.session_nonce"),
    (lambda: Close(9), "CLOSE.reason: expected one of 0..3, got 9"),
    (lambda: TrackSections(((1, 4),)), "TRACK_SECTIONS.items[].state"),
    (lambda: Signals(((70000, 1),)), "SIGNALS.items[].id"),
    (lambda: Signals(((1,),)), "each entry is (id, aspect)"),
    (lambda: DeviceAlarm(1, 0, 1, 1, "x"), "DEVICE_ALARM.severity"),
    (lambda: DeviceAlarm(1, 1, 1, 1, "字" * 86), "at most 255 UTF-8 bytes"),
    (lambda: Command(1, 7, 1, 1, 1), "COMMAND.op: expected one of 1..6"),
    (lambda: TrainStatus(**{**GOOD_STATUS, "speed_cm_s": 40000}), "TRAIN_STATUS.speed_cm_s"),
    (lambda: TrainStatus(**{**GOOD_STATUS, "role": 3}), "TRAIN_STATUS.role"),
    (lambda: TrainDiag(((1, 1, 1),) * 25), "at most 24 entries"),
    (lambda: TrainHeartbeat(-1), "TRAIN_HEARTBEAT.counter"),
    (lambda: TrainHeartbeat(True), "TRAIN_HEARTBEAT.counter"),
    (lambda: Frame(70000, 1, 1, 1, TrainHeartbeat(1)), "frame.src"),
    (lambda: encode(TrainHeartbeat(1), src=1, dst=1, seq=2**32, time_ms=0), "frame.seq"),
])
def test_out_of_range_fields_are_refused_with_a_clear_message(build, text):
    with pytest.raises(FieldError, match=re.escape(text)):
        build()


def test_lists_are_normalised_to_tuples_and_frozen():
    msg = TrackSections([[1, 0], [2, 1]])
    assert msg.items == ((1, 0), (2, 1))
    with pytest.raises(AttributeError):
        msg.items = ()


def reason(ev):
    assert isinstance(ev, FrameError), ev
    return ev.reason.value


def test_datagram_sizes_with_and_without_mac():
    key = b"k" * 32
    st = TrainStatus(**GOOD_STATUS)
    plain, signed = encode(st, **HDR), encode(st, mac_key=key, **HDR)
    assert (len(plain), len(signed)) == (64, 80)
    assert decode_datagram(signed, mac=MacPolicy(key=key)).mac is True
    assert reason(decode_datagram(plain, mac=MacPolicy(key=key, required=True))) == "missing_mac"
    assert reason(decode_datagram(signed, mac=MacPolicy(key=b"x" * 32))) == "bad_mac"
    assert reason(decode_datagram(signed)) == "bad_mac"  # a MAC we cannot check is not trusted
    assert reason(decode_datagram(plain + b"\0")) == "bad_size"
    assert reason(decode_datagram(plain[:20])) == "bad_size"
    assert reason(decode_datagram(b"\x00" + plain[1:])) == "bad_sync"


def test_datagram_corrupted_type_byte_reads_as_bad_crc():
    data = bytearray(encode(TrainHeartbeat(3), **HDR))
    data[3] = 0x6F
    assert reason(decode_datagram(bytes(data))) == "bad_crc"


def test_nonzero_padding_is_bad_payload():
    import struct
    import zlib
    data = bytearray(encode(TrainStatus(**GOOD_STATUS), **HDR))
    data[24 + 30] = 1  # inside the 18 padding bytes
    data[-4:] = struct.pack(">I", zlib.crc32(bytes(data[:-4])))
    assert reason(decode_datagram(bytes(data))) == "bad_payload"
    diag = bytearray(encode(TrainDiag(((5, 1, 1),)), **HDR))
    diag[24 + 2 + 4] = 9  # an entry past n
    diag[-4:] = struct.pack(">I", zlib.crc32(bytes(diag[:-4])))
    assert reason(decode_datagram(bytes(diag))) == "bad_payload"
