"""Drive the sans-IO decoders from tests."""
from __future__ import annotations

from railcodecs import ALL_TYPES, NO_MAC, Frame, FrameError, StreamDecoder


def decode_chunks(chunks, *, types=ALL_TYPES, mac=NO_MAC, eof=True) -> list:
    """Feed chunks one at a time, draining events after each; return all events."""
    dec = StreamDecoder(types=types, mac=mac)
    out = []
    for c in chunks:
        dec.feed(c)
        out.extend(dec.events())
    if eof:
        dec.end_of_stream()
        out.extend(dec.events())
    return out


def summary(events) -> list:
    """Comparable view of events: (name, src, seq, fields) or (error, offset)."""
    res = []
    for ev in events:
        if isinstance(ev, FrameError):
            res.append(("error", ev.reason.value, ev.offset))
        else:
            assert isinstance(ev, Frame)
            res.append((ev.name, ev.src, ev.seq, ev.time_ms, ev.mac, ev.message))
    return res
