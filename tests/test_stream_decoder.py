"""Stream decoder: resynchronisation, error attribution, buffering cap, EOF and stalls."""
from __future__ import annotations

import pytest

from codec_helpers import decode_chunks, summary
from conftest import chunkings
from railcodecs import (MAX_FRAME_LEN, NEED_DATA, Frame, FrameError, Heartbeat, Signals, StreamDecoder,
                        TrackSections, encode)

HDR = dict(src=257, dst=1, time_ms=1_795_000_000_000)


def frame(seq=1, n=3):
    return encode(TrackSections(tuple((100 + i, i % 4) for i in range(n))), seq=seq, **HDR)


def reasons(events):
    return [e.reason.value if isinstance(e, FrameError) else e.name for e in events]


def test_events_identical_for_every_chunking():
    data = b"noise" + frame(1) + b"\x00\xa5" + frame(2) + b"\xa5\x5a\x07" + frame(3) + b"junk"
    ref = None
    for label, chunks in chunkings(data, seed=3, randoms=10):
        got = summary(decode_chunks(chunks))
        ref = ref or got
        assert got == ref, label
    assert [r[0] if r[0] != "error" else r[1] for r in ref] == [
        "bad_sync", "TRACK_SECTIONS", "bad_sync", "TRACK_SECTIONS", "bad_version", "TRACK_SECTIONS", "bad_sync"]


def test_bad_sync_offsets_and_lengths():
    data = b"xyz" + frame(1) + b"abcd"
    events = decode_chunks([data])
    assert events[0] == FrameError(events[0].reason, 0, 3, "no sync word")
    assert isinstance(events[1], Frame)
    assert (events[2].reason.value, events[2].offset, events[2].length) == ("bad_sync", 3 + len(frame(1)), 4)


def test_endless_garbage_is_counted_in_fixed_runs_and_never_buffered():
    dec = StreamDecoder()
    total = 0
    for _ in range(50):
        dec.feed(b"\x00" * 1000)
        total += sum(1 for _ in dec.events())
        assert dec.buffered <= 1
    assert total == 50_000 // MAX_FRAME_LEN


def test_bad_crc_with_good_length_skips_exactly_the_frame():
    bad = bytearray(frame(1, n=20))
    bad[30] ^= 0xA5  # inside the payload; length untouched
    events = decode_chunks([bytes(bad) + frame(2)])
    assert reasons(events) == ["bad_crc", "TRACK_SECTIONS"]
    assert events[1].seq == 2


def test_bad_crc_with_corrupted_length_loses_no_following_frame():
    bad = bytearray(frame(1, n=2))
    bad[23] -= 3  # shorter length: the real frame end is past what the header says
    events = decode_chunks([bytes(bad) + frame(2) + frame(3)])
    assert [e.seq for e in events if isinstance(e, Frame)] == [2, 3]
    assert reasons(events)[0] == "bad_crc"


def test_inflated_length_holds_frames_until_abandoned():
    bad = bytearray(frame(1, n=2))
    bad[22] = 0x0F  # length 0x0F.. : waits for ~3.8 KiB that will never come
    dec = StreamDecoder()
    dec.feed(bytes(bad) + frame(2))
    assert list(dec.events()) == []
    dec.abandon_partial()  # the link's timer: this partial frame is overdue
    events = list(dec.events())
    assert reasons(events) == ["truncated", "TRACK_SECTIONS"] and events[1].seq == 2
    # the flag does not leak to the next, healthy partial frame
    dec.feed(frame(3)[:10])
    assert dec.next_event() is NEED_DATA
    dec.feed(frame(3)[10:])
    assert reasons(dec.events()) == ["TRACK_SECTIONS"]


def test_buffered_bytes_never_exceed_one_max_frame_plus_a_chunk():
    big = encode(Signals(tuple((i, 0) for i in range(1364))), seq=1, **HDR)
    assert len(big) == 24 + 2 + 3 * 1364 + 4
    dec = StreamDecoder()
    worst = 0
    for i in range(0, len(big), 100):
        dec.feed(big[i:i + 100])
        list(dec.events())
        worst = max(worst, dec.buffered)
    assert worst <= MAX_FRAME_LEN


def test_oversize_is_reported_from_the_header_alone():
    head = bytearray(frame(1)[:24])
    head[22:24] = (4097).to_bytes(2, "big")
    dec = StreamDecoder()
    dec.feed(bytes(head))
    assert reasons([dec.next_event()]) == ["oversize"]


def test_truncated_at_end_of_stream():
    events = decode_chunks([frame(1) + frame(2)[:-3]])
    assert reasons(events) == ["TRACK_SECTIONS", "truncated"]
    assert events[1].offset == len(frame(1))


def test_reserved_byte_is_bad_flags():
    data = bytearray(encode(Heartbeat(1), seq=0, **HDR))
    data[5] = 1
    assert reasons(decode_chunks([bytes(data)])) == ["bad_flags"]


def test_feed_after_end_of_stream_is_refused():
    dec = StreamDecoder()
    dec.end_of_stream()
    with pytest.raises(RuntimeError, match="after end_of_stream"):
        dec.feed(b"x")


def test_long_stream_compacts_its_buffer():
    dec = StreamDecoder()
    one = frame(1)
    for _ in range(5000):
        dec.feed(one)
        assert reasons([dec.next_event()]) == ["TRACK_SECTIONS"]
    assert dec._src.allocated < 140_000 and dec.offset == 5000 * len(one)
