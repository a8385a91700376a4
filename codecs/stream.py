"""Sans-IO decoder for a TCP link's byte stream (ICD v1 section 2).

``feed(data)`` appends bytes; ``next_event()`` returns a :class:`Frame`, a
:class:`FrameError`, or :data:`NEED_DATA`. Any chunking of the same bytes gives
the same events in the same order (tested byte by byte and in random pieces).

Resynchronisation, the part a reader most needs to trust:

* Garbage where a frame should start is skipped to the next ``A5 5A`` and
  reported as one ``bad_sync`` per run (a run is cut every
  ``MAX_FRAME_LEN`` bytes, so a peer sending nothing but noise still moves the
  counter, and the cut points do not depend on how the bytes arrived).
* A bad header (version, flag bits, reserved byte, length over 4096) is
  reported and scanning resumes one byte further on: its length cannot be trusted.
* A bad CRC is ambiguous: the payload or the length may be what broke. If the
  bytes right after the frame, by its length, start with a sync word, the
  length was right and the whole frame is skipped; otherwise scanning resumes
  one byte after the bad frame's start, so no good frame behind a corrupted
  length is lost. Bytes skipped while resynchronising after a reported error
  belong to that error (up to one maximum frame), not to a new ``bad_sync``.
* After a good CRC (MAC, type and payload errors) the framing is known to be
  right and exactly that frame is skipped.

At most one maximum frame (``MAX_FRAME_LEN`` = 4140 bytes) is ever waited
for as one incomplete frame. The bytes live in a byte source
(``byte_source.py``): the decoder's own buffer, or a gateway link's receive buffer,
where frames are parsed in place.

Threading: one decoder belongs to one link and is used from one thread.
"""
from __future__ import annotations

from collections import deque

from .byte_source import LinearBuffer
from .errors import FrameError, Reason
from .frame import (GATEWAY_RX_TYPES, HEADER_LEN, MAX_FRAME_LEN, NO_MAC, SYNC_BYTES, Frame, MacPolicy,
                    check_header, crc_ok, finish)
from .messages import Message
from .speedups import fields_base


#: one peek covers the largest frame and the two look-ahead bytes after it
_PEEK_MAX = MAX_FRAME_LEN + 2


class _NeedData:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = _NeedData()


class StreamDecoder(fields_base("DecoderFields")):
    """Decode a stream of ICD frames from arbitrary chunks.

    ``types``: the message types accepted on this stream (others are
    ``unknown_type``); ``mac``: the link's :class:`MacPolicy`; ``source``: where
    the bytes are (default: an internal :class:`LinearBuffer` filled by
    :meth:`feed`; the gateway passes a link's RecvBuffer, filled by the IO loop).
    """

    def __init__(self, *, types: dict[int, type[Message]] = GATEWAY_RX_TYPES, mac: MacPolicy = NO_MAC,
                 source=None) -> None:
        self.types = types
        self.mac = mac
        self._own = source is None
        self._src = LinearBuffer() if source is None else source
        self._offset = 0         # stream offset of the next unread byte
        self._silent_until = 0   # stream offset up to which skipped bytes belong to the last error
        self._garbage_start: int | None = None
        self._events: deque = deque()
        self._eof = False
        self._abandon = False

    # -- input --------------------------------------------------------------
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes (own buffer only). Called by the link's owning thread."""
        if self._eof:
            raise RuntimeError("feed() after end_of_stream()")
        if not self._own:
            raise RuntimeError("feed() on a decoder that reads an external source: write to the source")
        self._src.append(data)

    def abandon_partial(self) -> None:
        """Give up on the incomplete frame now buffered (the link's timer says it is overdue).

        A corrupted length field can make the decoder wait for up to 4 KiB that
        never belong to that frame, holding good frames behind it. The link
        calls this when a partial frame has waited too long (a time the
        decoder does not know): it is reported ``truncated`` and scanning
        resumes one byte after its start, as after a bad header.
        """
        if self._src.readable():
            self._abandon = True

    def set_session_key(self, key: bytes | None) -> None:
        """From the next frame on, verify MACs with this link's session key (ICD 1.1: every frame but
        HELLO and HELLO_ACK, once the HELLO_ACK is on the wire); None goes back to the link keys.
        Events already returned are not re-checked, so call it right after the HELLO / HELLO_ACK event."""
        self.mac = self.mac.with_session(key)

    def end_of_stream(self) -> None:
        """The peer closed: what is left becomes ``bad_sync`` / ``truncated`` events."""
        self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes received but not yet decoded."""
        return self._src.readable()

    @property
    def offset(self) -> int:
        """Stream offset of the next byte to decode."""
        return self._offset

    # -- output -------------------------------------------------------------
    def next_event(self) -> Frame | FrameError | _NeedData:
        """Return the next frame or error event, or NEED_DATA."""
        while True:
            if self._events:
                return self._events.popleft()
            result = self._step()
            if result is NEED_DATA:
                self._abandon = False  # it applies to what is buffered now, not to later bytes
            if result is not None:
                return result

    def events(self):
        """Yield every event available now (stops at NEED_DATA).

        The same sequence as calling :meth:`next_event` until NEED_DATA, with
        its loop inlined: this generator is the gateway's per-frame path.
        """
        pending, step = self._events, self._step
        while True:
            if pending:
                yield pending.popleft()
                continue
            result = step()
            if result is NEED_DATA:
                self._abandon = False
                return
            if result is not None:
                yield result

    # -- the state machine --------------------------------------------------
    def _consume(self, n: int) -> None:
        self._src.consume(n)
        self._offset += n

    def _step(self):
        """One decoding step: returns an event, NEED_DATA, or None to go again."""
        src = self._src
        avail = src.readable()
        if avail >= HEADER_LEN and self._garbage_start is None:
            # The common case, a whole header at a sync word with no garbage run open, with one
            # peek for header, body and look-ahead (a frame is at most MAX_FRAME_LEN bytes). The
            # decisions are exactly the general path's below, in the same order.
            with src.peek(avail if avail < _PEEK_MAX else _PEEK_MAX) as view:
                if view[0] == 0xA5 and view[1] == 0x5A:
                    reason, total = check_header(view, 0)
                    if reason is not None:
                        return self._fail(reason, skip=1)
                    if avail < total:
                        return self._need_more()
                    if crc_ok(view, 0, total):
                        result = finish(view, 0, total, self.mac, self.types)
                        if result.__class__ is Frame:
                            src.consume(total)
                            self._offset += total
                            self._silent_until = 0  # a good frame ends the resync after an error
                            return result
                        return self._fail(result[0], skip=total, detail=result[1])
                    return self._bad_crc(view, avail, total)
        if avail == 0:
            return self._flush_garbage() if self._eof and self._garbage_start is not None else NEED_DATA
        if src.byte(0) != 0xA5 or (avail >= 2 and src.byte(1) != 0x5A) or (avail == 1 and self._eof):
            self._skip_to_sync(avail)
            return None
        if avail < 2:
            return NEED_DATA
        if self._garbage_start is not None:
            return self._flush_garbage()  # the run of garbage ends at this sync word
        if avail < HEADER_LEN:
            return self._need_more()
        with src.peek(HEADER_LEN) as head:
            reason, total = check_header(head, 0)
        if reason is not None:
            return self._fail(reason, skip=1)
        if avail < total:
            return self._need_more()
        with src.peek(min(avail, total + 2)) as view:
            if not crc_ok(view, 0, total):
                return self._bad_crc(view, avail, total)
            result = finish(view, 0, total, self.mac, self.types)
        if isinstance(result, Frame):
            self._consume(total)
            self._silent_until = 0  # a good frame ends the resync after an error
            return result
        return self._fail(result[0], skip=total, detail=result[1])

    def _bad_crc(self, view, avail: int, total: int):
        """A bad CRC: skip the whole frame if a sync word follows it by its length, else one byte."""
        if avail >= total + 2:
            whole = view[total] == 0xA5 and view[total + 1] == 0x5A
        elif self._eof or self._abandon:
            whole = avail == total
        else:
            return NEED_DATA  # two more bytes decide whether the length was right
        return self._fail(Reason.BAD_CRC, skip=total if whole else 1)

    def _need_more(self):
        if not (self._eof or self._abandon):
            return NEED_DATA
        if self._garbage_start is not None:
            return self._flush_garbage()
        self._abandon = False
        # The header may have lied about the length: look for frames inside
        # what we were waiting on instead of dropping it all.
        return self._fail(Reason.TRUNCATED, skip=1,
                          detail="stream ended inside a frame" if self._eof else "frame not completed in time")

    def _fail(self, reason: Reason, *, skip: int, detail: str = "") -> FrameError:
        offset = self._offset
        self._consume(skip)
        # after a one-byte skip the frame's real end is unknown: what is skipped
        # up to the next sync (within one max frame) belongs to this error
        self._silent_until = offset + MAX_FRAME_LEN if skip == 1 else self._offset
        return FrameError(reason, offset, 0, detail)

    def _skip_to_sync(self, avail: int) -> None:
        idx = self._src.find(SYNC_BYTES, avail)
        if idx < 0:
            stop = avail
            if self._src.byte(avail - 1) == 0xA5 and not self._eof:
                stop -= 1  # may be the first half of a sync word
        else:
            stop = idx
        start_abs = self._offset
        stop_abs = start_abs + stop
        counted_from = max(start_abs, self._silent_until)
        if counted_from < stop_abs:
            if self._garbage_start is None:
                self._garbage_start = counted_from
            # cut runs at fixed stream offsets so the chunking cannot change the events
            while stop_abs - self._garbage_start >= MAX_FRAME_LEN:
                self._events.append(FrameError(Reason.BAD_SYNC, self._garbage_start, MAX_FRAME_LEN,
                                               "no sync word"))
                self._garbage_start += MAX_FRAME_LEN
            if self._garbage_start == stop_abs:
                self._garbage_start = None
        self._consume(stop)

    def _flush_garbage(self) -> FrameError:
        start = self._garbage_start
        self._garbage_start = None
        return FrameError(Reason.BAD_SYNC, start, self._offset - start, "no sync word")
