"""RecvBuffer and LinearBuffer (railcodecs.byte_source): contiguous frames, the compaction policy,
backpressure, a model, the decoder parsing in place, a session's hand-over."""
from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from railcodecs.byte_source import LinearBuffer, RecvBuffer

MAX_FRAME = 4096 + 24 + 16 + 4  # the ICD's largest frame: header, payload, MAC, CRC


def fill(rx: RecvBuffer, data: bytes) -> None:
    assert rx.write(data) == len(data)


def test_a_max_frame_and_the_look_ahead_are_one_view_wherever_the_bytes_start():
    rx = RecvBuffer(8192)  # the smallest ring_bytes the config allows
    frame = bytes(range(256)) * 17
    for start in (0, 1, 4000, 8191):
        rx.reset()
        fill(rx, bytes(start))
        rx.consume(start)
        fill(rx, frame[:MAX_FRAME + 2])
        view = rx.peek(MAX_FRAME + 2)
        assert bytes(view) == frame[:MAX_FRAME + 2] and view.obj is rx._buf  # in place, not a copy
        view.release()


def test_empty_and_full():
    rx = RecvBuffer(8)
    assert rx.readable() == 0 and rx.free_space() == 8
    assert len(rx.writable_view()) == 8
    assert len(rx.first_segment()) == 0
    fill(rx, b"abcdefgh")
    assert rx.readable() == 8 and rx.free_space() == 0
    assert len(rx.writable_view()) == 0  # backpressure: the loop stops reading
    assert rx.write(b"x") == 0
    with pytest.raises(ValueError):
        rx.commit(1)
    rx.consume(3)
    assert bytes(rx.first_segment()) == b"defgh"
    assert len(rx.writable_view()) == 3  # less than half was left behind the rest: slid to the front
    assert bytes(rx._buf[:5]) == b"defgh" and rx._read == 0


def test_an_emptied_buffer_restarts_at_zero_without_moving_bytes():
    rx = RecvBuffer(16)
    fill(rx, b"0123456789")
    rx.consume(10)
    rx._buf[0] = 0x77  # a marker: nothing may be copied over it
    assert len(rx.writable_view()) == 16 and rx._read == rx._write == 0
    assert rx._buf[0] == 0x77


def test_the_slide_threshold_is_half_the_capacity():
    rx = RecvBuffer(16)
    fill(rx, b"01234567")
    rx.consume(2)
    assert len(rx.writable_view()) == 8 and rx._read == 2  # 8 of 16 behind the rest: no move
    fill(rx, b"8")
    rx.consume(1)
    view = rx.writable_view()  # 7 behind the rest now: the rest (6 bytes) goes to the front
    assert (rx._read, rx._write, len(view)) == (0, 6, 10)
    assert bytes(rx.first_segment()) == b"345678"


def test_peek_limits_and_errors():
    rx = RecvBuffer(10)
    fill(rx, b"0123456")
    assert bytes(rx.peek(3)) == b"012" and len(rx.peek(0)) == 0
    for bad in (8, -1):
        with pytest.raises(ValueError, match="readable"):
            rx.peek(bad)
    with pytest.raises(ValueError):
        rx.consume(8)
    with pytest.raises(ValueError):
        rx.commit(-1)
    with pytest.raises(ValueError):
        RecvBuffer(0)
    with pytest.raises(IndexError):
        rx.byte(7)
    assert rx.byte(6) == ord("6")


def test_find():
    rx = RecvBuffer(16)
    fill(rx, b"xx\x01\xa5\x5a\x02\x03\xa5")
    rx.consume(2)
    assert [rx.byte(i) for i in range(6)] == [1, 0xA5, 0x5A, 2, 3, 0xA5]
    assert rx.find(b"\xa5\x5a", 6) == 1
    assert rx.find(b"\xa5\x5a", 2) == -1  # the match ends past the limit
    assert rx.find(b"\x01", 6) == 0
    assert rx.find(b"\x03\xa5", 100) == 4
    assert rx.find(b"x", 100) == -1  # consumed bytes are not searched


def test_reset():
    rx = RecvBuffer(8)
    fill(rx, b"abc")
    rx.reset()
    assert rx.readable() == 0 and rx.free_space() == 8


def test_linear_buffer_drops_consumed_bytes_lazily():
    buf = LinearBuffer()
    block = bytes(40_000)
    buf.append(block)
    buf.append(block)
    buf.consume(70_000)
    buf.append(b"abc")  # 70,000 consumed >= 64 KiB and >= half: dropped before appending
    assert buf.allocated == 10_003 and buf.readable() == 10_003
    assert bytes(buf.peek(buf.readable())[-3:]) == b"abc"


# -- a model: every operation sequence matches a plain bytes queue ---------------------------
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.binary(min_size=0, max_size=40)),
    st.tuples(st.just("recv"), st.binary(min_size=0, max_size=40)),
    st.tuples(st.just("peek"), st.integers(-1, 50)),
    st.tuples(st.just("consume"), st.integers(-1, 50)),
    st.tuples(st.just("first"), st.none()),
    st.tuples(st.just("find"), st.tuples(st.binary(min_size=1, max_size=3), st.integers(0, 50))),
    st.tuples(st.just("byte"), st.integers(0, 50)),
), max_size=60)


@settings(max_examples=300, deadline=None)
@given(capacity=st.integers(1, 32), ops=ops)
def test_matches_a_bytes_model(capacity, ops):
    rx = RecvBuffer(capacity)
    model = bytearray()
    for op, arg in ops:
        if op == "write":
            n = rx.write(arg)
            assert n == min(len(arg), capacity - len(model))  # all the free space, moved or not
            model += arg[:n]
        elif op == "recv":  # the IO path: the writable view, partially filled
            view = rx.writable_view()
            assert capacity - len(model) >= len(view) >= (capacity - len(model)) - capacity // 2
            k = min(len(view), len(arg))
            view[:k] = arg[:k]
            view.release()
            rx.commit(k)
            model += arg[:k]
        elif op == "peek":
            if 0 <= arg <= len(model):
                assert bytes(rx.peek(arg)) == bytes(model[:arg])
            else:
                with pytest.raises(ValueError):
                    rx.peek(arg)
        elif op == "consume":
            if 0 <= arg <= len(model):
                rx.consume(arg)
                del model[:arg]
            else:
                with pytest.raises(ValueError):
                    rx.consume(arg)
        elif op == "first":
            assert bytes(rx.first_segment()) == bytes(model)  # never wrapped: every readable byte
        elif op == "find":
            sub, limit = arg
            assert rx.find(sub, limit) == bytes(model[:limit]).find(sub)
        elif op == "byte":
            if arg < len(model):
                assert rx.byte(arg) == model[arg]
            else:
                with pytest.raises(IndexError):
                    rx.byte(arg)
        assert rx.readable() == len(model)
        assert rx.free_space() == capacity - len(model)


def test_stream_decoder_parses_in_place_from_a_receive_buffer():
    """The byte-source protocol end to end: big frames, garbage, the rest slid at every offset."""
    from railcodecs import ALL_TYPES, StreamDecoder, TrackSections, encode

    from codec_helpers import decode_chunks, summary

    rng = random.Random(7)
    frames = [encode(TrackSections(tuple((i, rng.randint(0, 3)) for i in range(n))), src=3, dst=1, seq=s,
                     time_ms=1000 + s) for s, n in enumerate((1364, 1, 700, 1364, 0, 1364))]
    stream = b"".join(f + (b"\x00\xa5junk" if i % 2 else b"") for i, f in enumerate(frames)) * 3
    expected = summary(decode_chunks([stream], types=ALL_TYPES, eof=False))
    assert sum(1 for e in expected if e[0] == "TRACK_SECTIONS") == 18
    rx = RecvBuffer(9000)  # about two max frames: partial frames are slid to the front often
    slides = 0
    for start in (0, 1, 2, 4000, 8999):
        rx.reset()
        fill(rx, bytes(start))
        rx.consume(start)
        dec = StreamDecoder(types=ALL_TYPES, source=rx)
        events, off = [], 0
        while off < len(stream):
            before = rx._read
            view = rx.writable_view()  # as the connection: recv into the view, commit, decode
            slides += rx._read < before and rx._read == 0 and rx._write > 0
            k = min(len(view), rng.randint(1, 5000), len(stream) - off)
            view[:k] = stream[off:off + k]
            view.release()
            rx.commit(k)
            off += k
            events.extend(dec.events())
        assert summary(events) == expected
    assert slides > 10
