"""A seeded mutation run in the normal suite: 200,000 mutated frames of every type, never an exception.

``random.Random(SEED)`` mutates valid frames of every ICD type (bit flips, bytes,
enumerated fields out of range, length, type, version, flags, header fields,
MAC flag, insertions, deletions, truncation, replays, garbage between frames)
and recomputes the CRC of half of them, so those mutations reach the MAC,
type and payload checks. Every item goes through the stream decoder (a stream
of items, cut in random chunks, with the link timer's ``abandon_partial`` now
and then), ``decode_datagram`` and the Receiver. Checked:

* no exception;
* no wrongly accepted frame: an accepted frame re-encodes to exactly the bytes
  it came from, never straddles two items, and a corrupted item whose CRC was
  not recomputed yields nothing but its intact original; a datagram with a bad
  CRC is never accepted;
* every error reason of the decoders and the receiver checks turns up, and
  ``bad_payload`` turns up for every message type.

Deterministic: the same seed gives the same counts on every run.
"""
from __future__ import annotations

import bisect
import random
import struct
import time
import zlib
from collections import Counter

from fuzz.targets import KEY, POLICY, ReceiverRun, check_frame_bytes, fix_frames, hello_frame, sample_frames
from railcodecs import ALL_TYPES, Frame, FrameError, Reason, StreamDecoder, decode_datagram

SEED = 12_2025
FRAMES = 200_000
PER_STREAM = 500
_CRC = struct.Struct(">I")
_SEQ = struct.Struct(">I")
NAMES = sorted(cls.NAME for cls in ALL_TYPES.values())

# payload offsets of each type's enumerated fields (ICD sections 4, 5): mutated to a value out of range
ENUMS = {0x01: (0, 1), 0x81: (0,), 0x10: (4,), 0x11: (4,), 0x12: (4,), 0x20: (2, 3), 0x30: (4,), 0x31: (4,),
         0x7E: (0,), 0x50: (8, 9, 12, 13, 16), 0x52: (4, 5)}
OUT_OF_RANGE = (0, 4, 5, 6, 7, 9, 0x80, 0xFF)  # each is out of range for some field


def resequence(base: bytes, seq: int) -> bytes:
    """``base`` with a new seq (sequenced types), its MAC and CRC made good again."""
    data = bytearray(base)
    if data[10:14] != b"\0\0\0\0":
        _SEQ.pack_into(data, 10, seq)
        fix_frames(data, key=KEY)
    return bytes(data)


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    n = len(data)
    op = rng.randrange(16)
    if op == 0:
        data[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif op == 1:
        data[rng.randrange(n)] = rng.randrange(256)
    elif op in (2, 3):  # an enumerated field out of range (twice as often: the point of issue 12)
        at = ENUMS.get(data[3])
        if at and n > 24 + max(at):
            data[24 + rng.choice(at)] = rng.choice(OUT_OF_RANGE)
        else:
            data[rng.randrange(24, n) if n > 24 else 0] ^= 0x40
    elif op == 4:
        struct.pack_into(">H", data, 22, rng.choice((rng.randrange(65536), rng.randrange(4097, 4200))))
    elif op == 5:
        struct.pack_into(">H", data, 22, max(0, (data[22] << 8 | data[23]) + rng.randint(-3, 3)))
    elif op == 6:
        at = rng.randrange(n + 1)
        data[at:at] = rng.randbytes(rng.randint(1, 8))
    elif op == 7:
        at = rng.randrange(n)
        del data[at:at + rng.randint(1, 8)]
    elif op == 8:
        del data[rng.randrange(1, n):]
    elif op == 9:
        data[3] = rng.randrange(256)
    elif op == 10:
        data[2] = rng.choice((0, 2, 0x81, 0xFF))
    elif op == 11:
        data[rng.choice((4, 5))] |= 1 << rng.randrange(1, 8)
    elif op == 12:  # header fields the receiver judges: src, dst, seq, time
        at, size = rng.choice(((6, 2), (8, 2), (10, 4), (14, 8)))
        data[at:at + size] = rng.randbytes(size)
    elif op == 13:
        data[4] ^= 1  # MAC flag without a MAC, or a MAC the length no longer covers
    elif op == 14:
        data[24:n - 4] = rng.randbytes(max(0, n - 28))
    # op 15: left as it is (a valid frame among the damaged ones)
    return bytes(data)


def crc_good(data: bytes) -> bool:
    return len(data) >= 4 and zlib.crc32(data[:-4]) == _CRC.unpack_from(data, len(data) - 4)[0]


class Tally:
    def __init__(self) -> None:
        self.reasons: Counter = Counter()
        self.payload_types: set = set()
        self.accepted = 0
        self.valid_items = 0
        self.valid_found = 0

    def error(self, ev: FrameError) -> None:
        self.reasons[ev.reason.value] += 1
        if ev.reason is Reason.BAD_PAYLOAD:
            self.payload_types.add(ev.detail.split(".")[0].split(":")[0].split(" ")[0])


def run_stream(rng, items, originals, checked, tally: Tally, run: ReceiverRun) -> None:
    """One stream of items in random chunks; every accepted frame checked against the item it came from."""
    data = b"".join(items)
    starts = []
    pos = 0
    for item in items:
        starts.append(pos)
        pos += len(item)
    dec = StreamDecoder(types=ALL_TYPES, mac=POLICY)
    found = set()
    i = 0
    events = []
    while i < len(data):
        k = rng.choice((1, 3, 24, 100, 600, 5000))
        dec.feed(data[i:i + k])
        i += k
        if rng.random() < 0.01:
            dec.abandon_partial()  # the link's timer gave up on a partial frame
        events.extend((ev, dec.offset) for ev in dec.events())
    dec.end_of_stream()
    events.extend((ev, dec.offset) for ev in dec.events())
    assert dec.buffered == 0 and dec.offset == len(data)
    for ev, end in events:
        if isinstance(ev, FrameError):
            tally.error(ev)
            run.event(ev)
            continue
        size = 24 + len(ev.message.pack()) + (16 if ev.mac else 0) + 4
        start = end - size
        check_frame_bytes(ev, data[start:end])
        k = bisect.bisect_right(starts, start) - 1
        # straddling is allowed only when it rebuilds item k's original exactly: e.g. its last CRC byte
        # was cut off and the next item happens to begin with that very byte
        assert end <= starts[k] + len(items[k]) or data[start:end] == originals[k], \
            f"accepted frame straddles items {k} and {k + 1}"
        if not checked[k]:  # corrupted, CRC not recomputed: only its intact original may come out
            assert data[start:end] == originals[k], f"corrupted item {k} accepted: {items[k].hex()}"
        if start == starts[k]:
            found.add(k)
        tally.accepted += 1
        run.event(ev)
        if ev.message.FIXED_PAYLOAD is None:
            applied = run.applied
            run.event(ev, 1)
            assert run.applied == applied, f"applied on an unconfirmed link: {ev!r}"
    for k, item in enumerate(items):
        if isinstance(decode_datagram(item, types=ALL_TYPES, mac=POLICY), Frame):
            tally.valid_items += 1
            tally.valid_found += k in found


def test_200k_mutated_frames_never_raise_and_are_never_wrongly_accepted():
    began = time.perf_counter()
    rng = random.Random(SEED)
    bases = sample_frames()
    tally = Tally()
    run = ReceiverRun(confirm_nets=(0,))
    # a HELLO (and its session confirmed) names net A's device first, so that frames reach the sequence
    # checks; net B's link says HELLO but never confirms: what reaches it is never applied (no_session)
    assert run.event(decode_datagram(hello_frame(0), types=ALL_TYPES)) == 0
    assert run.event(decode_datagram(hello_frame(1), types=ALL_TYPES), 1) == 0
    seq, done = 1, 0
    while done < FRAMES:
        items, originals, checked = [], [], []
        for _ in range(min(PER_STREAM, FRAMES - done)):
            if rng.random() < 0.02:  # garbage between frames
                items.append(rng.randbytes(rng.randint(1, 40)))
                originals.append(b"")
                checked.append(False)
            seq += rng.choice((1, 1, 1, 1, 2))  # now and then a frame is lost: gap
            original = resequence(rng.choice(bases), seq)
            if rng.random() < 0.05 and originals and originals[-1]:
                original = originals[-1]  # replayed: duplicate
            item = mutate(rng, original)
            fixed = rng.random() < 0.5
            if fixed:
                item = bytes(fix_frames(bytearray(item), key=KEY if rng.random() < 0.3 else None))
            items.append(item)
            originals.append(original)
            checked.append(fixed or item == original)
            done += 1
            ev = decode_datagram(item, types=ALL_TYPES, mac=POLICY)
            if isinstance(ev, Frame):
                assert crc_good(item), f"bad CRC accepted as a datagram: {item.hex()}"
                assert fixed or item == original, f"corrupted datagram accepted: {item.hex()}"
                check_frame_bytes(ev, item)
                run.datagram(ev)
            else:
                assert ev.offset == 0
                tally.error(ev)
        run_stream(rng, items, originals, checked, tally, run)
    run.check_counters()
    for checks in (*run.links, run.udp):
        tally.reasons.update(checks.errors)
    elapsed = time.perf_counter() - began
    print(f"\n{FRAMES} mutated frames in {elapsed:.1f} s; accepted {tally.accepted}, applied {run.applied}; "
          f"valid items found by the stream {tally.valid_found}/{tally.valid_items}; {dict(tally.reasons)}")
    expected = {r.value for r in Reason}
    assert expected <= set(tally.reasons), f"never seen: {expected - set(tally.reasons)}"
    assert set(NAMES) <= tally.payload_types, f"bad_payload never reached: {set(NAMES) - tally.payload_types}"
    assert run.applied > 1000 and tally.accepted > 10_000
    # resynchronisation: a valid item is lost only when a corrupted length ahead of it ends on a sync word
    assert tally.valid_found >= 0.99 * tally.valid_items
    assert elapsed < 30
