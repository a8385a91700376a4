"""pytest-benchmark microbenchmarks of the hot-path pieces (run by ``make bench`` through micro_bench.py).

* the stream decoder, per frame: 1,000 status frames decoded from a link's fixed
  receive buffer (the gateway's path) and from the decoder's own buffer;
* the receive buffer: recv-style write + peek + consume of one 60-byte frame.

Run alone: ``.venv/bin/python -m pytest bench/test_micro.py --benchmark-enable``.
"""
from __future__ import annotations

import pytest

from railcodecs import GATEWAY_RX_TYPES, Signals, StreamDecoder, Switches, TrackSections, encode
from railcodecs.byte_source import RecvBuffer

N = 1000


def _frames() -> bytes:
    out = []
    for seq in range(1, N + 1):
        k = seq % 3
        msg = (TrackSections(tuple((100 + i, (seq + i) % 4) for i in range(10))) if k == 0 else
               Signals(tuple((200 + i, (seq + i) % 6) for i in range(6))) if k == 1 else
               Switches(tuple((300 + i, (seq + i) % 4) for i in range(3))))
        out.append(encode(msg, src=1000, dst=1, seq=seq, time_ms=1_700_000_000_000))
    return b"".join(out)


DATA = _frames()


@pytest.mark.parametrize("source", ["recv", "feed"])
def test_decoder_1000_frames(benchmark, source):
    """StreamDecoder per call 1,000 frames: from a RecvBuffer (a link's path) or its own buffer (feed)."""
    if source == "recv":
        rx = RecvBuffer(len(DATA) + 8192)
        dec = StreamDecoder(types=GATEWAY_RX_TYPES, source=rx)
        put = rx.write
    else:
        dec = StreamDecoder(types=GATEWAY_RX_TYPES)
        put = dec.feed

    def go():
        put(DATA)
        n = sum(1 for _ in dec.events())
        assert n == N
    benchmark.extra_info["frames_per_call"] = N
    benchmark(go)


def test_recv_buffer_write_peek_consume(benchmark):
    rx = RecvBuffer(64 << 10)
    frame = DATA[:60]

    def go():
        rx.write(frame)
        rx.peek(60).release()
        rx.consume(60)
    benchmark(go)
