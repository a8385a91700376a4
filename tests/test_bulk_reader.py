"""The compiled reader's bulk pass (``FastReader._bulk_pass``, ``codecs/_reader_api.pxi``), over real sockets.

A link whose last read brought 2 KiB or more is read in passes that release the GIL once: ``recv``
and the FastLink's GIL-free run, again and again, the records published at the end. So:

* a busy link's reads after the read budget (the queued read-more) stay on the compiled reader;
* the same bytes, cut into pieces that end anywhere (inside a header, inside a frame, between
  frames) and mixed with what a pass must leave to the Python path (garbage, a bad CRC, a new
  object, a sequence gap, a repeat, a stale and a future time, a heartbeat gap), end in the same
  state read by bulk passes only (``set_nogil_bytes(0)``) as read by the pure implementation.
"""
from __future__ import annotations

import random
import struct
import threading
import time
import zlib

import pytest

from gateway.net.connection import READ_BUDGET
from gateway_harness import Device, RunningGateway, line_config, wait_until
from railcodecs import Heartbeat, Signals, Switches, TrackSections, speedups

pytestmark = pytest.mark.skipif(not speedups.available(), reason="the compiled core is not built or RAILGATE_PURE=1")


def _up(gw):
    (link,) = wait_until(lambda: [lk for lk in gw.ctx.links if lk.alive] or None, what="link up")
    return link


def _settled(link) -> None:
    """Wait until the link's loop has finished the event it is in (a functor queued behind it ran)."""
    done = threading.Event()
    link.loop.run_in_loop(done.set)
    assert done.wait(5), "the link's loop did not come round"


def test_a_busy_links_reads_past_the_read_budget_stay_on_the_compiled_reader():
    """Several read budgets' worth of frames in one burst: the reads after the first budget (queued
    as a read-more) are the compiled reader's bulk passes, not the connection's Python read."""
    speedups.use("compiled")
    with RunningGateway(line_config(heartbeat_ms=3000)) as gw:
        dev = Device(gw.ports["A"], hb_ms=3000)
        dev.hello()
        link = _up(gw)
        p = link.protocol
        sender = gw.ctx.receiver.senders[258]
        dev.send(TrackSections(((111, 0),)), seq=1)  # the object exists: every later frame is the FastLink's
        wait_until(lambda: sender.applied == 1, what="the first frame")
        n = 12_000
        blob = b"".join(dev.encode(TrackSections(((111, seq % 2),)), seq=seq) for seq in range(2, n + 2))
        budget_frames = READ_BUDGET // (len(blob) // n)
        assert n > 4 * budget_frames
        dev.sock.sendall(blob)
        wait_until(lambda: sender.applied == n + 1, what="every frame applied")
        _settled(link)
        # at most the first budget's frames went another way (one budget's reads are one event)
        assert p.fast.frames_bulk >= n - 2 * budget_frames, (p.fast.frames_bulk, p.fast.frames, p.fast.frames_nogil, n, budget_frames)
        dev.close()


# --- the same stream, two readers ------------------------------------------------------------------

def _raw(dev: Device, type_code: int, payload: bytes, seq: int, time_ms: int, crc_fix: int = 0) -> bytes:
    head = struct.pack(">HBBBBHHIQH", 0xA55A, 1, type_code, 0, 0, dev.id, 1, seq, time_ms, len(payload))
    body = head + payload
    return body + struct.pack(">I", (zlib.crc32(body) + crc_fix) & 0xFFFFFFFF)


def _stream(dev: Device, seed: int) -> bytes:
    """A device's stream: mostly good status lists and heartbeats, with what the Python path must judge."""
    rng = random.Random(seed)
    now = int(time.time() * 1000)
    out, seq, hb = [], 3, 0  # (seq 1..3: the first objects)
    kinds = (TrackSections, Signals, Switches)
    vmax = {TrackSections: 4, Signals: 6, Switches: 4}
    for k in range(3000):
        r = rng.random()
        if r < 0.08:
            hb += 1 if rng.random() < 0.97 else 3  # (now and then a heartbeat gap)
            out.append(dev.encode(Heartbeat(hb), time_ms=now))
            continue
        if r < 0.083:
            out.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 40))))  # garbage
            continue
        if r < 0.086:
            out.append(_raw(dev, 0x10, b"\x00\x01\x00\x05\x01", seq + 1, now, crc_fix=1))  # a bad CRC
            continue
        seq += 1 if rng.random() < 0.97 else rng.randrange(2, 6)  # (gaps)
        cls = rng.choice(kinds)
        # objects 1..12 from the start; a new one (13..40) now and then
        objs = rng.sample(range(1, 13), rng.randrange(1, 6))
        if rng.random() < 0.005:
            objs.append(rng.randrange(13, 41))
        items = tuple((o, rng.randrange(vmax[cls])) for o in objs)
        t = now
        if rng.random() < 0.003:
            t = now - 60_000  # stale
        elif rng.random() < 0.003:
            t = now + 60_000  # from the future
        frame = dev.encode(cls(items), seq=seq, time_ms=t)
        out.append(frame)
        if rng.random() < 0.02:
            out.append(frame)  # a repeat
    return b"".join(out)


def _pieces(data: bytes, seed: int) -> list:
    rng = random.Random(seed ^ 0xC0FFEE)
    out, i = [], 0
    while i < len(data):
        n = rng.choice((1, 7, 23, 24, 25, 60, 500, 3000, 9000))
        out.append(data[i:i + n])
        i += n
    return out


def _run(implementation: str, seed: int) -> dict:
    speedups.use(implementation)
    old = speedups._core.set_nogil_bytes(0)  # (the compiled reader: a bulk pass from the second read on)
    try:
        with RunningGateway(line_config(heartbeat_ms=3000)) as gw:
            dev = Device(gw.ports["A"], hb_ms=3000)
            dev.hello()
            link = _up(gw)
            p = link.protocol
            # the first objects, with the Python path's own frames (a new object is always Python's)
            for seq, cls in enumerate((TrackSections, Signals, Switches), 1):
                dev.send(cls(tuple((o, 0) for o in range(1, 13))), seq=seq)
            wait_until(lambda: gw.ctx.receiver.senders[258].applied == 3, what="the first objects")
            rx0 = link.rx_bytes
            data = _stream(dev, seed)
            rng = random.Random(seed)
            for piece in _pieces(data, seed):
                dev.sock.sendall(piece)
                if rng.random() < 0.3:
                    time.sleep(0.0005)  # (so that reads end where the pieces do)
            wait_until(lambda: link.rx_bytes - rx0 == len(data), what="every byte read")
            _settled(link)
            c, s = p.checks, gw.ctx.receiver.senders[258]
            state = {
                "link": (p.state.name, p.alive, dict(c.errors), c.rx_frames, c.applied, c.copies, c.hb_last,
                         p.decoder.offset, p.decoder.buffered, p.decoder._garbage_start),
                "sender": (s.counters(), s.window.last, s.window.seen),
                "objects": [sorted((k, v[0]) for k, v in t.items()) for t in
                            (gw.ctx.objects.sections, gw.ctx.objects.signals, gw.ctx.objects.switches)],
                "bulk": p.fast.frames_bulk if p.fast is not None else None,
                "took": (p.fast.frames, p.fast.frames_nogil) if p.fast is not None else None,
            }
            dev.close()
            return state
    finally:
        speedups._core.set_nogil_bytes(old)
        speedups.use("compiled")


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bulk_passes_end_in_the_pure_readers_state(seed):
    compiled, pure = _run("compiled", seed), _run("pure", seed)
    for key in ("link", "sender", "objects"):
        assert compiled[key] == pure[key], key
    assert pure["bulk"] is None
    assert compiled["bulk"] > 300, (compiled["bulk"], compiled["took"], compiled["link"][3])  # (the path under test ran)
