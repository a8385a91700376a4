"""The link's steady path alone, compiled against pure Python, and its memory per unchanged status frame.

A confirmed link (the demo line's interlocking 258, net A, on a 64 KiB RecvBuffer) is fed status
frames whose values never change, 1,000 per read, through ``LinkProtocol.data_received``: the
decode, the ICD checks, the sequence window and the apply, without sockets or a loop. Rows:

* CPU-µs per frame with the compiled core and with the pure-Python implementation (built in this
  process with ``railcodecs.speedups.use``), and their ratio;
* retained allocations (tracemalloc, net blocks still allocated) after 200,000 unchanged status
  frames on the compiled path, after a warm-up: target 0 ("zero allocations per unchanged status
  frame", issue 14).
"""
from __future__ import annotations

import gc
import time
import tracemalloc
from collections import Counter

from bench.common import ROOT, row
from gateway.app import config
from gateway.line.link_protocol import LinkProtocol
from gateway.line.link_state import LinkState
from gateway.line.object_state import ObjectState
from railcodecs import (DEVICE_RX_TYPES, Hello, MacPolicy, Receiver, SessionConfirm, Signals, StreamDecoder,
                        TrackSections, encode, speedups)
from railcodecs.byte_source import RecvBuffer

DEV, PER_READ = 258, 1000
FRAMES, ALLOC_FRAMES = 200_000, 200_000


class _Ctx:
    """What a link protocol calls back into, with the real receiver and object state."""

    def __init__(self) -> None:
        cfg = config.load(str(ROOT / "config" / "demo-line.yaml"))
        self.cfg, self.settings = cfg, cfg.gateway
        self.receiver = Receiver(cfg.gateway.id, cfg.senders(), max_age_ms=600_000)
        self.mac_policy = MacPolicy()
        self.objects = ObjectState()
        self.objects.subscribe(lambda *change: None)  # the alarm stage's place: called on changes only
        self.apply = self.objects.apply
        self.counters: Counter = Counter()

    def __getattr__(self, name):  # link_started, link_up, ...: nothing to do here
        return lambda *a, **k: None


def _link(implementation: str):
    speedups.use(implementation)
    ctx = _Ctx()
    rx = RecvBuffer(64 * 1024)
    p = LinkProtocol(ctx, "A", rx, "bench", nonce=lambda: 0x1234)
    now_ms = int(time.time() * 1000)
    p.connection_made(0.0)
    rx.write(encode(Hello(1, 0, 500, "BENCH", 7), src=DEV, dst=1, seq=0, time_ms=now_ms))
    p.data_received(0.0, now_ms)
    dev = StreamDecoder(types=DEVICE_RX_TYPES)
    dev.feed(bytes(p.outbox))
    p.outbox.clear()
    ack = next(iter(dev.events()))
    rx.write(encode(SessionConfirm(7, ack.message.session_nonce), src=DEV, dst=1, seq=0, time_ms=now_ms))
    p.data_received(0.0, now_ms)
    assert p.state is LinkState.UP, p.why
    return p, rx, now_ms


def _reads(start_seq: int, n_reads: int, now_ms: int) -> list[bytes]:
    """``n_reads`` chunks of PER_READ status frames, seq from ``start_seq``, values always the same."""
    out, seq = [], start_seq
    sections, signals = TrackSections(((101, 0), (102, 1), (103, 0))), Signals(((201, 2), (202, 0)))
    for _ in range(n_reads):
        frames = []
        for i in range(PER_READ):
            frames.append(encode(sections if i % 2 else signals, src=DEV, dst=1, seq=seq, time_ms=now_ms))
            seq += 1
        out.append(b"".join(frames))
    return out


def _feed(p, rx, chunks, now_ms) -> None:
    for chunk in chunks:
        rx.write(chunk)
        p.data_received(1.0, now_ms)


def _cpu_per_frame(implementation: str, frames: int) -> float:
    p, rx, now_ms = _link(implementation)
    chunks = _reads(1, frames // PER_READ, now_ms)
    _feed(p, rx, chunks[:5], now_ms)  # warm-up
    t0 = time.process_time()
    _feed(p, rx, chunks[5:], now_ms)
    cpu = time.process_time() - t0
    assert p.checks.applied == frames and not p.checks.errors, (p.checks.applied, p.checks.errors)
    return cpu / (frames - 5 * PER_READ) * 1e6


def _retained(frames: int) -> tuple[int, str]:
    p, rx, now_ms = _link("compiled")
    chunks = _reads(1, frames // PER_READ + 40, now_ms)
    _feed(p, rx, chunks[:20], now_ms)  # warm-up: the table holds the objects, counters are large ints
    tracemalloc.start()
    # a second warm-up under tracing: values replaced on every read (the link's counters, its
    # decoder's offset, the sender's figures) are then traced in both snapshots, not counted as new
    _feed(p, rx, chunks[20:40], now_ms)
    gc.collect()
    before = tracemalloc.take_snapshot()
    _feed(p, rx, chunks[40:], now_ms)
    gc.collect()
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    flt = [tracemalloc.Filter(False, tracemalloc.__file__)]
    stats = after.filter_traces(flt).compare_to(before.filter_traces(flt), "lineno")
    net = sum(s.count_diff for s in stats)
    top = "; ".join(f"{s.traceback[0].filename.rsplit('/', 1)[-1]}:{s.traceback[0].lineno} {s.count_diff:+d}"
                    for s in stats[:3] if s.count_diff)
    assert p.checks.applied == frames + 40 * PER_READ and not p.checks.errors
    return net, top


def run(smoke: bool = False) -> list[dict]:
    default = speedups.implementation()
    frames = 20_000 if smoke else FRAMES
    if not speedups.available():  # (RAILGATE_PURE=1, or not built): only the reference can be measured
        pure = _cpu_per_frame("pure", frames)
        return [row("Link steady path, pure Python", round(pure, 3), "CPU-µs/frame",
                    note=f"the compiled core is not available here ({speedups.UNAVAILABLE})")]
    try:
        compiled = _cpu_per_frame("compiled", frames)
        pure = _cpu_per_frame("pure", frames)
        net, top = _retained(10_000 if smoke else ALLOC_FRAMES)
    finally:
        speedups.use(default)
    n = 10_000 if smoke else ALLOC_FRAMES
    return [
        row("Link steady path, compiled", round(compiled, 3), "CPU-µs/frame",
            note=f"unchanged status frames, {PER_READ} per read, {frames:,} frames; no socket, no loop"),
        row("Link steady path, pure Python", round(pure, 3), "CPU-µs/frame"),
        row("Link steady path ratio pure / compiled", round(pure / compiled, 1), "x"),
        row("Link steady path retained allocations, unchanged status frames", net, "net blocks", "0", net == 0,
            note=f"tracemalloc: net blocks still allocated after {n:,} frames on the compiled path"
                 + (f"; most: {top}" if top else "")),
    ]


if __name__ == "__main__":
    import json
    print(json.dumps(run(smoke=True), indent=1))
