"""Hypothesis: every message round-trips; corruption is never applied; resync finds the next frame."""
from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec_helpers import decode_chunks, summary
from railcodecs import (Close, Command, CommandResult, DeviceAlarm, Frame, FrameError, Heartbeat, Hello, HelloAck,
                        SessionConfirm,
                        MacPolicy, Signals, Switches, TrackSections, TrainDiag, TrainHeartbeat, TrainStatus,
                        decode_datagram, encode)

u8, u16, u32, u64 = (st.integers(0, 2**b - 1) for b in (8, 16, 32, 64))


def items(values):
    return st.lists(st.tuples(u16, values), max_size=60).map(tuple)


tcp_messages = st.one_of(
    st.builds(Hello, st.integers(1, 4), st.integers(0, 1), u16,
              st.text(st.characters(min_codepoint=1, max_codepoint=127), max_size=16), u64),
    st.builds(HelloAck, st.just(0), u16, u64, u64),
    st.builds(HelloAck, st.integers(1, 3), u16, u64, st.just(0)),
    st.builds(SessionConfirm, u64, u64),
    st.builds(Heartbeat, u32),
    st.builds(TrackSections, items(st.integers(0, 3))),
    st.builds(Signals, items(st.integers(0, 5))),
    st.builds(Switches, items(st.integers(0, 3))),
    st.builds(DeviceAlarm, u16, st.integers(1, 4), st.integers(0, 1), u16, st.text(max_size=60).filter(
        lambda t: len(t.encode()) <= 255)),
    st.builds(Command, u32, st.integers(1, 6), u16, u16, u64),
    st.builds(CommandResult, u32, st.integers(0, 3), u16),
    st.builds(Close, st.integers(0, 3)),
)
udp_messages = st.one_of(
    st.builds(TrainHeartbeat, u32),
    st.builds(TrainStatus, u16, u32, st.integers(-32768, 32767), st.integers(0, 1), st.integers(0, 3), u16,
              st.integers(0, 3), st.integers(0, 2), u16, st.integers(0, 2), u8),
    st.builds(TrainDiag, st.lists(st.tuples(u16, st.integers(1, 4), st.integers(0, 1)), max_size=24).map(tuple)),
)
headers = st.fixed_dictionaries({"src": u16, "dst": u16, "seq": u32, "time_ms": u64})
keys = st.one_of(st.none(), st.binary(min_size=1, max_size=32))


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(msgs=st.lists(st.tuples(tcp_messages, headers, keys), min_size=1, max_size=5), data=st.data())
def test_tcp_round_trip_in_any_chunking(msgs, data):
    wire = b""
    for msg, hdr, key in msgs:
        wire += encode(msg, mac_key=key, **hdr)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    chunks = [wire[a:b] for a, b in zip([0] + cuts, cuts + [len(wire)])]
    events = decode_chunks(chunks, mac=MacPolicy(accept_unverified=True))
    assert [type(e) for e in events] == [Frame] * len(msgs)
    for ev, (msg, hdr, key) in zip(events, msgs):
        assert ev.message == msg
        assert (ev.src, ev.dst, ev.seq, ev.time_ms, ev.mac) == (hdr["src"], hdr["dst"], hdr["seq"], hdr["time_ms"],
                                                             key is not None)


@settings(max_examples=200)
@given(msg=udp_messages, hdr=headers, key=keys)
def test_udp_round_trip_and_fixed_size(msg, hdr, key):
    wire = encode(msg, mac_key=key, **hdr)
    assert len(wire) == {0x51: 32, 0x50: 64, 0x52: 128}[msg.TYPE] + (16 if key else 0)
    ev = decode_datagram(wire, mac=MacPolicy(key=key))
    assert isinstance(ev, Frame) and ev.message == msg and ev.mac == (key is not None)
    short = decode_datagram(wire[:-1] + b"", mac=MacPolicy(key=key))
    assert isinstance(short, FrameError) and short.reason.value == "bad_size"


@settings(max_examples=300)
@given(msg=tcp_messages, hdr=headers, pos=st.integers(0, 10_000), flip=st.integers(1, 255))
def test_one_corrupted_byte_is_never_applied(msg, hdr, pos, flip):
    """CRC-32 catches every single-byte error: no frame may come out of a damaged one."""
    wire = bytearray(encode(msg, **hdr))
    wire[pos % len(wire)] ^= flip
    events = decode_chunks([bytes(wire)])
    assert events and all(isinstance(e, FrameError) for e in events)


@settings(max_examples=200)
@given(before=tcp_messages, after=tcp_messages, hdr=headers, pos=st.integers(0, 10_000), flip=st.integers(1, 255),
       noise=st.binary(max_size=50).filter(lambda b: b"\xa5\x5a" not in b and not b.endswith(b"\xa5")))
def test_good_frame_after_damage_or_noise_is_still_found(before, after, hdr, pos, flip, noise):
    bad = bytearray(encode(before, **hdr))
    bad[pos % len(bad)] ^= flip
    good = encode(after, **hdr)
    events = decode_chunks([bytes(bad) + noise + good])
    frames = [e for e in events if isinstance(e, Frame)]
    assert frames and frames[-1].message == after
    # whatever the damage, the same bytes fed one at a time give the same events
    assert summary(decode_chunks([bytes([b]) for b in bytes(bad) + noise + good])) == summary(events)
