"""Differential harness: the same bytes through the compiled and the pure-Python link path.

A :class:`DualLine` is one line context with a dual-net device's two links (net A and net B)
and a signed device's link, built for one implementation (``railcodecs.speedups.use``). Both
implementations are handed the same events (which link, which bytes, in which pieces, at which
time) and must end every event in the same state: frames and errors counted, action bits, the
bytes the gateway wrote, the sequence window, the sender's counters, the object tables and the
listener calls in order (:meth:`DualLine.digest`).

:func:`scenario` makes a reproducible stream of events from a seed: good status lists and
heartbeats in sequence, the other net's copies, gaps, repeats, late frames, stale and future
times, wrong destination and source, out-of-range values, corrupted bytes (CRC fixed up or not),
garbage, a device alarm, and random chunking. ``tests/test_fastpath_differential.py`` runs a few
thousand frames in the suite; ``python -m tests.fuzz.differential --frames 1000000`` is the long run.
"""
from __future__ import annotations

import random
import struct
import zlib

from gateway.line.link_protocol import LinkProtocol
from gateway.line.link_state import LinkState
from gateway_harness import KEY_257, line_config
from railcodecs import (DEVICE_RX_TYPES, DeviceAlarm, Heartbeat, Hello, HelloAck, MacPolicy, SessionConfirm,
                        Signals, StreamDecoder, Switches, TrackSections, encode, session_key, speedups)
from railcodecs.byte_source import LinearBuffer, RecvBuffer
from test_link_protocol import RecordingContext

T0_MS = 1_700_000_000_000
DEVICE_NONCE = 0x0123456789ABCDEF
#: (link name, device id, net, link key): 258 is on both nets without a MAC, 257 signs (net A)
LINKS = (("A258", 258, "A", None), ("B258", 258, "B", None), ("A257", 257, "A", KEY_257))
STATUS = (TrackSections, Signals, Switches)
#: the receive buffer of fixed-buffer lines: a burst and a partial frame fit; it fills and compacts often
RECV_BYTES = 24 * 1024


class DualLine:
    """Three links of one gateway context in one implementation; plays their connections.

    ``fixed``: the links read from a gateway link's fixed RecvBuffer (small, so it fills, and slides
    partial frames to its front, often) instead of a growable LinearBuffer."""

    def __init__(self, implementation: str, fixed: bool = False, watch_only: bool = False) -> None:
        speedups.use(implementation)
        self.ctx = RecordingContext(line_config())
        self.changes: list = []
        if not watch_only:  # a listener of every change keeps the compiled path on its GIL side
            self.ctx.objects.subscribe(lambda *change: self.changes.append(change))
        # the alarm stage's kind of subscription: only into or out of one value, per kind
        self.watched: list = []
        self.ctx.objects.subscribe(lambda *change: self.watched.append(change),
                                   only={"TRACK_SECTIONS": 2, "SWITCHES": 3})
        self.now, self.now_ms = 1000.0, T0_MS
        self.links: dict = {}
        self.acts: dict = {}
        self.keys: dict = {}
        nonces = iter(range(0x1000, 0x2000))
        for name, dev, net, key in LINKS:
            source = RecvBuffer(RECV_BYTES) if fixed else LinearBuffer()
            p = LinkProtocol(self.ctx, net, source, name, nonce=lambda: next(nonces))
            self.links[name] = p
            self.acts[name] = p.connection_made(self.now)
            self._handshake(name, dev, key)

    def _handshake(self, name: str, dev: int, key: bytes | None) -> None:
        kind = 1 if dev < 513 else 3
        self.feed(name, [encode(Hello(kind, 0 if name[0] == "A" else 1, 100, "DIFF", DEVICE_NONCE),
                                src=dev, dst=1, seq=0, time_ms=self.now_ms, mac_key=key)])
        p = self.links[name]
        device = StreamDecoder(types=DEVICE_RX_TYPES, mac=MacPolicy(key=key))
        device.feed(bytes(p.outbox))
        p.outbox.clear()
        ack = next(ev for ev in device.events())
        assert ack.message.result == HelloAck.OK, ack
        k_s = session_key(key, DEVICE_NONCE, ack.message.session_nonce) if key is not None else None
        self.keys[name] = k_s
        self.feed(name, [encode(SessionConfirm(DEVICE_NONCE, ack.message.session_nonce), src=dev, dst=1, seq=0,
                                time_ms=self.now_ms, mac_key=k_s)])
        assert p.state is LinkState.UP, (name, p.state, p.why)
        assert (p.fast is not None) == (speedups.implementation() == "compiled")

    def feed(self, name: str, chunks, advance_ms: int = 0) -> None:
        self.now += advance_ms / 1000
        self.now_ms += advance_ms
        p = self.links[name]
        for chunk in chunks:
            if not isinstance(p.source, RecvBuffer):
                p.source.append(chunk)
                self.acts[name] |= p.data_received(self.now, self.now_ms)
                continue
            while chunk:  # as the connection reads: what fits, decode, the rest
                n = p.source.write(chunk)
                chunk = chunk[n:]
                self.acts[name] |= p.data_received(self.now, self.now_ms)
                if chunk and not p.source.free_space():
                    self.acts[name] |= p.decode_buffered(self.now, self.now_ms)
                    if not p.source.free_space():
                        break  # nothing decodable: the connection would stop reading too

    def digest(self) -> dict:
        out = {"counters": dict(self.ctx.counters), "calls": list(self.ctx.calls), "changes": list(self.changes), "watched": list(self.watched),
               "objects": [t.copy() for t in (self.ctx.objects.sections, self.ctx.objects.signals,
                                              self.ctx.objects.switches)]}
        for name, p in self.links.items():
            c = p.checks
            out[name] = (p.state, p.alive, p.why, self.acts[name], bytes(p.outbox), p.last_frame, p.last_rx,
                         p._partial_since, dict(c.errors), c.rx_frames, c.applied, c.copies, c.hb_last,
                         p.decoder.offset, p.decoder.buffered, p.decoder._silent_until, p.decoder._garbage_start)
        for sid in (257, 258):
            s = self.ctx.receiver.senders[sid]
            w = s.window
            out[sid] = (s.counters(), s.last_applied_ms, s.open_links, w.last, w.seen, w.on_b, w.copied)
        return out


def _frame(rng: random.Random, message, src: int, seq: int, time_ms: int, key, dst: int = 1) -> bytes:
    return encode(message, src=src, dst=dst, seq=seq, time_ms=time_ms, mac_key=key)


def _status(rng: random.Random, out_of_range: bool = False):
    cls = rng.choice(STATUS)
    top = len(cls.VALUES)
    items = tuple((rng.randrange(1, 40), rng.randrange(top)) for _ in range(rng.randrange(0, 6)))
    msg = cls(items)
    if out_of_range and items:
        payload = bytearray(msg.pack())
        payload[4] = top + rng.randrange(0, 250 - top)  # the first entry's value: not defined
        return cls, bytes(payload)
    return msg


def _raw_frame(type_code: int, payload: bytes, src: int, seq: int, time_ms: int, key) -> bytes:
    """A frame around a payload the message classes would refuse to build."""
    from railcodecs.frame import HEADER, compute_mac
    head = HEADER.pack(0xA55A, 1, type_code, 1 if key else 0, 0, src, 1, seq, time_ms, len(payload))
    body = head + payload
    if key:
        body += compute_mac(key, body)
    return body + struct.pack(">I", zlib.crc32(body))


def _mutate(rng: random.Random, data: bytes, fix_crc: bool) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(b))
        b[i] = rng.randrange(256)
    if fix_crc and len(b) >= 28:
        b[-4:] = struct.pack(">I", zlib.crc32(bytes(b[:-4])))
    return bytes(b)


def scenario(seed: int, frames: int):
    """``frames`` events ``(link name, device id, what to send)`` from ``seed``: what is a
    ``(message, seq, time skew)``, ``("burst", [...])`` or None (noise, made by the feeder)."""
    rng = random.Random(seed)
    seq = {257: 0, 258: 0}
    hb = {name: 0 for name, *_ in LINKS}
    sent: dict = {257: [], 258: []}  # recent (seq, frame bytes per net) for repeats and copies
    for _ in range(frames):
        name, dev, _net, _key = rng.choice(LINKS)
        roll = rng.random()
        t_skew = 0
        if rng.random() < 0.03:
            t_skew = rng.choice((-1, 1)) * rng.randrange(1900, 5000)  # around max_age (2000 ms)
        k = rng.random()
        if roll < 0.45:  # a status list, in sequence (sometimes after a gap)
            seq[dev] = (seq[dev] + (1 if rng.random() < 0.9 else rng.randrange(2, 2000))) % 0xFFFF_FFFF or 1
            msg = _status(rng, out_of_range=k < 0.03)
            data = (msg, seq[dev], t_skew)
            sent[dev].append(data)
            sent[dev] = sent[dev][-64:]
        elif roll < 0.60 and sent[dev]:  # a copy or a repeat of a recent frame (the other net, or this one)
            data = rng.choice(sent[dev][-8:] if rng.random() < 0.8 else sent[dev])
        elif roll < 0.80:  # a heartbeat (sometimes repeated, back in time, or skipping)
            step = 1 if k < 0.9 else rng.choice((0, -1, 2, 7))
            hb[name] = (hb[name] + step) & 0xFFFF_FFFF
            data = (Heartbeat(hb[name]), 0, t_skew)
        elif roll < 0.85:  # a burst: a run of good frames big enough for the GIL-free scan
            burst = []
            for _ in range(rng.randrange(40, 160)):
                seq[dev] = seq[dev] % 0xFFFF_FFFF + 1
                burst.append((_status(rng), seq[dev], 0))
            sent[dev].extend(burst[-8:])
            data = ("burst", burst)
        elif roll < 0.87:
            data = (DeviceAlarm(rng.randrange(1, 90), rng.randrange(1, 4), rng.randrange(0, 2), 7, "diff"),
                    0, t_skew)
        else:
            data = None
        yield name, dev, data


class Feeder:
    """Turns scenario events into bytes for one line (the session keys differ per implementation
    only in the nonces, which are the same sequence: so the bytes are the same)."""

    def __init__(self, line: DualLine, seed: int) -> None:
        self.line, self.rng = line, random.Random(seed ^ 0x5EED)

    def event(self, name, dev, data, advance_ms: int) -> None:
        rng, line = self.rng, self.line
        key = line.keys[name]
        now_ms = line.now_ms + advance_ms
        if data is None:  # noise: garbage, a mutated frame, a wrong dst/src or a truncated frame
            base = _frame(rng, Heartbeat(1), dev, 0, now_ms, key)
            kind = rng.randrange(5)
            if kind == 0:
                payload = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 60)))
            elif kind == 1:
                payload = _mutate(rng, base, fix_crc=rng.random() < 0.5)
            elif kind == 2:
                payload = _frame(rng, TrackSections(((1, 1),)), dev, 1, now_ms, key, dst=rng.choice((0, 2, 9)))
            elif kind == 3:
                payload = _frame(rng, Signals(((3, 2),)), rng.choice((259, 513, 999)), 1, now_ms, key)
            else:
                payload = base[:rng.randrange(1, len(base))]
        elif data[0] == "burst":
            payload = b"".join(_frame(rng, msg, dev, seq, now_ms, key) for msg, seq, _ in data[1])
        else:
            msg, seq, skew = data
            if isinstance(msg, tuple):  # (class, raw payload with a value out of range)
                cls, raw = msg
                payload = _raw_frame(cls.TYPE, raw, dev, seq, now_ms + skew, key)
            else:
                payload = _frame(rng, msg, dev, seq, now_ms + skew, key)
            if rng.random() < 0.02:
                payload = _mutate(rng, payload, fix_crc=rng.random() < 0.5)
        chunks = self.chunk(payload if rng.random() < 0.9 else payload * rng.randint(2, 4))
        line.feed(name, chunks, advance_ms)

    def chunk(self, data: bytes) -> list:
        rng = self.rng
        mode = rng.random()
        if mode < 0.6:
            return [data]
        if mode < 0.7:
            return [data[i:i + 1] for i in range(len(data))]
        chunks, i = [], 0
        while i < len(data):
            n = rng.randint(1, 40)
            chunks.append(data[i:i + n])
            i += n
        return chunks


def compare(seed: int, frames: int, fixed: bool | None = None, gil_free: bool = False) -> int:
    """Run ``frames`` events through both implementations; raise AssertionError at the first event
    after which their states differ. Returns the frames fed (bursts count their frames). ``fixed``:
    the links' byte source (default: a RecvBuffer for odd seeds, a LinearBuffer for even ones)."""
    fixed = bool(seed % 2) if fixed is None else fixed  # odd seeds read from a link's fixed RecvBuffer
    lines = {impl: DualLine(impl, fixed, watch_only=gil_free) for impl in ("compiled", "pure")}
    # gil_free: only a watching listener, and the compiled links take every run GIL-free (FastLink's
    # _run_nogil) as far as it goes, whatever is buffered
    old_bytes = speedups._core.set_nogil_bytes(0 if gil_free else 2048)
    feeders = {impl: Feeder(line, seed) for impl, line in lines.items()}
    try:
        assert lines["compiled"].digest() == lines["pure"].digest()
        step_rng = random.Random(seed)
        fed = 0
        for n, (name, dev, data) in enumerate(scenario(seed, frames)):
            advance = step_rng.choice((0, 0, 1, 5, 40))
            for impl in ("compiled", "pure"):
                feeders[impl].event(name, dev, data, advance)
            fed += len(data[1]) if data is not None and data[0] == "burst" else 1
            a, b = lines["compiled"].digest(), lines["pure"].digest()
            if a != b:
                diff = {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
                raise AssertionError(f"seed {seed}, event {n} on {name}: the implementations differ: {diff}")
        if gil_free:  # the path under test really ran
            assert sum(p.fast.frames_nogil for p in lines["compiled"].links.values() if p.fast) > 0
        return fed
    finally:
        speedups._core.set_nogil_bytes(old_bytes)
        speedups.use("compiled" if speedups.available() else "pure")
