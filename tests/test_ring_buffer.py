"""SpscRing: wrap, contiguous peeks across the wrap, backpressure, two threads, a model."""
from __future__ import annotations

import random
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.net.ring_buffer import DEFAULT_SLACK, MAX_FRAME, SpscRing


def fill(ring: SpscRing, data: bytes) -> None:
    assert ring.write(data) == len(data)


def test_default_slack_covers_a_max_frame_and_the_decoders_look_ahead():
    assert MAX_FRAME == 4140
    ring = SpscRing(8192)
    assert ring.slack == DEFAULT_SLACK >= MAX_FRAME + 2 - 1
    # the worst case: one byte before the wrap point, a whole frame plus 2 look-ahead bytes
    fill(ring, bytes(8191))
    ring.consume(8191)
    frame = bytes(range(256)) * 17
    fill(ring, frame[:MAX_FRAME + 2])
    assert bytes(ring.peek(MAX_FRAME + 2)) == frame[:MAX_FRAME + 2]


def test_empty_and_full():
    ring = SpscRing(8, slack=4)
    assert ring.readable() == 0 and ring.free_space() == 8
    assert len(ring.writable_view()) == 8
    assert len(ring.first_segment()) == 0
    fill(ring, b"abcdefgh")
    assert ring.readable() == 8 and ring.free_space() == 0
    assert len(ring.writable_view()) == 0  # backpressure: the loop stops reading
    assert ring.write(b"x") == 0
    with pytest.raises(ValueError):
        ring.commit(1)
    ring.consume(3)
    assert len(ring.writable_view()) == 3
    assert bytes(ring.first_segment()) == b"defgh"


def test_writable_view_is_contiguous_up_to_the_wrap_point():
    ring = SpscRing(10, slack=4)
    fill(ring, b"0123456")
    ring.consume(5)
    view = ring.writable_view()
    assert len(view) == 3  # positions 7..9; the 5 free bytes at the start come next
    view[:] = b"789"
    ring.commit(3)
    assert len(ring.writable_view()) == 5
    assert ring.free_space() == 5


def test_wrap_and_first_segment():
    ring = SpscRing(10, slack=4)
    fill(ring, b"abcdefgh")
    ring.consume(6)
    fill(ring, b"ijklmn")  # 2 before the wrap, 4 after
    assert ring.readable() == 8
    assert bytes(ring.first_segment()) == b"ghij"
    assert bytes(ring.peek(4)) == b"ghij"
    ring.consume(4)
    assert bytes(ring.first_segment()) == b"klmn"


def test_peek_across_the_wrap_copies_into_the_slack():
    ring = SpscRing(10, slack=4)
    fill(ring, b"aaaaaaaa")
    ring.consume(8)
    fill(ring, b"ABCDEF")  # 'AB' at 8..9, 'CDEF' at 0..3
    view = ring.peek(6)
    assert bytes(view) == b"ABCDEF"
    assert view.obj is ring._buf  # a view into the ring, not a copy handed out
    assert bytes(ring._buf[10:14]) == b"CDEF"
    view.release()
    ring.consume(2)
    assert bytes(ring.peek(4)) == b"CDEF"  # no longer straddling: straight from the start


def test_peek_limits():
    ring = SpscRing(10, slack=2)
    fill(ring, bytes(9))
    ring.consume(9)
    fill(ring, b"0123456")  # '0' before the wrap, 6 after
    assert bytes(ring.peek(3)) == b"012"  # 1 before the wrap + 2 of slack
    with pytest.raises(ValueError, match="slack"):
        ring.peek(4)
    with pytest.raises(ValueError):
        ring.peek(8)  # more than readable
    with pytest.raises(ValueError):
        ring.peek(-1)
    assert len(ring.peek(0)) == 0


def test_consume_and_commit_errors():
    ring = SpscRing(4, slack=0)
    with pytest.raises(ValueError):
        ring.consume(1)
    with pytest.raises(ValueError):
        ring.commit(-1)
    with pytest.raises(ValueError):
        ring.commit(5)
    with pytest.raises(ValueError):
        SpscRing(0)
    with pytest.raises(ValueError):
        SpscRing(4, slack=-1)
    fill(ring, b"ab")
    with pytest.raises(IndexError):
        ring.byte(2)
    assert ring.byte(1) == ord("b")


def test_find_and_byte_across_the_wrap():
    ring = SpscRing(8, slack=0)
    fill(ring, bytes(7))
    ring.consume(7)
    fill(ring, b"\x01\xa5\x5a\x02\x03\xa5")  # A5 at 0 (ring pos 0), 5A at 1
    assert [ring.byte(i) for i in range(6)] == [1, 0xA5, 0x5A, 2, 3, 0xA5]
    assert ring.find(b"\xa5\x5a", 6) == 1
    assert ring.find(b"\xa5\x5a", 2) == -1  # the match ends past the limit
    assert ring.find(b"\x02\x03", 6) == 3
    assert ring.find(b"\x01", 6) == 0
    assert ring.find(b"\x03\xa5", 100) == 4


def test_find_straddling_match():
    ring = SpscRing(8, slack=0)
    fill(ring, bytes(7))
    ring.consume(7)
    fill(ring, b"\xa5\x5a\x00")  # A5 is the last byte before the wrap
    assert ring.find(b"\xa5\x5a", 3) == 0
    assert ring.find(b"\xa5\x5a", 1) == -1


def test_reset():
    ring = SpscRing(8, slack=0)
    fill(ring, b"abc")
    ring.reset()
    assert ring.readable() == 0 and ring.free_space() == 8


def test_two_threads_deliver_5_mb_byte_exact_through_a_small_ring():
    total = 5_000_000
    data = random.Random(1234).randbytes(total)
    ring = SpscRing(1000, slack=300)
    errors: list = []

    def producer():
        rng = random.Random(1)
        off = 0
        src = memoryview(data)
        while off < total:
            view = ring.writable_view()
            if not len(view):
                time.sleep(0)  # full: give the GIL to the consumer
                continue
            k = min(len(view), rng.randint(1, 700), total - off)
            view[:k] = src[off:off + k]
            ring.commit(k)
            off += k

    def consumer():
        rng = random.Random(2)
        off = 0
        try:
            while off < total:
                avail = ring.readable()
                if avail == 0:
                    time.sleep(0)
                    continue
                before_wrap = len(ring.first_segment())
                n = rng.randint(1, min(avail, before_wrap + ring.slack))
                if rng.random() < 0.2:
                    seg = ring.first_segment()
                    n = len(seg)
                    got = bytes(seg)
                else:
                    got = bytes(ring.peek(n))
                if got != data[off:off + n]:
                    errors.append(f"mismatch at {off} (+{n})")
                    return
                ring.consume(n)
                off += n
        except Exception as exc:  # surfaced below: a thread's exception would be lost
            errors.append(repr(exc))

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert ring.readable() == 0 and ring._read == total  # the wrap point was crossed ~5000 times


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
@given(capacity=st.integers(1, 32), slack=st.integers(0, 12), ops=ops)
def test_matches_a_bytes_model(capacity, slack, ops):
    ring = SpscRing(capacity, slack=slack)
    model = bytearray()
    for op, arg in ops:
        if op == "write":
            n = ring.write(arg)
            assert n == min(len(arg), capacity - len(model))
            model += arg[:n]
        elif op == "recv":  # the IO path: one contiguous view, partially filled
            view = ring.writable_view()
            free_to_wrap = capacity - ring._write % capacity
            assert len(view) == min(capacity - len(model), free_to_wrap)
            k = min(len(view), len(arg))
            view[:k] = arg[:k]
            ring.commit(k)
            model += arg[:k]
        elif op == "peek":
            before_wrap = capacity - ring._read % capacity
            if arg < 0 or arg > len(model) or arg - before_wrap > slack:
                with pytest.raises(ValueError):
                    ring.peek(arg)
            else:
                assert bytes(ring.peek(arg)) == bytes(model[:arg])
        elif op == "consume":
            if 0 <= arg <= len(model):
                ring.consume(arg)
                del model[:arg]
            else:
                with pytest.raises(ValueError):
                    ring.consume(arg)
        elif op == "first":
            seg = bytes(ring.first_segment())
            assert model.startswith(seg)
            assert len(seg) == min(len(model), capacity - ring._read % capacity)
        elif op == "find":
            sub, limit = arg
            assert ring.find(sub, limit) == bytes(model[:limit]).find(sub)
        elif op == "byte":
            if arg < len(model):
                assert ring.byte(arg) == model[arg]
            else:
                with pytest.raises(IndexError):
                    ring.byte(arg)
        assert ring.readable() == len(model)
        assert ring.free_space() == capacity - len(model)


def test_stream_decoder_parses_in_place_from_the_ring():
    """The byte-source protocol end to end: big frames, garbage, every wrap offset."""
    from railcodecs import ALL_TYPES, StreamDecoder, TrackSections, encode

    from codec_helpers import decode_chunks, summary

    rng = random.Random(7)
    frames = [encode(TrackSections(tuple((i, rng.randint(0, 3)) for i in range(n))), src=3, dst=1, seq=s,
                     time_ms=1000 + s) for s, n in enumerate((1364, 1, 700, 1364, 0, 1364))]
    stream = b"".join(f + (b"\x00\xa5junk" if i % 2 else b"") for i, f in enumerate(frames)) * 3
    expected = summary(decode_chunks([stream], types=ALL_TYPES, eof=False))
    assert sum(1 for e in expected if e[0] == "TRACK_SECTIONS") == 18
    ring = SpscRing(9000)  # about two max frames: the wrap point moves through the frames
    for start in (0, 1, 2, 4000, 8999):
        ring.reset()
        fill(ring, bytes(start))
        ring.consume(start)
        dec = StreamDecoder(types=ALL_TYPES, source=ring)
        events, off = [], 0
        while off < len(stream):
            k = min(ring.free_space(), rng.randint(1, 5000), len(stream) - off)
            fill(ring, stream[off:off + k])
            off += k
            events.extend(dec.events())
        assert summary(events) == expected
