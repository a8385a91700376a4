"""A single-producer single-consumer byte ring: a TCP link's input buffer.

Who calls it, and from which thread:

* the **producer** is the IO loop thread that owns the link: on readiness it
  ``recv_into``\\ s straight into :meth:`SpscRing.writable_view` and then
  :meth:`SpscRing.commit`\\ s what the kernel wrote;
* the **consumer** is the link's stream decoder (``railcodecs.StreamDecoder``
  with ``source=ring``): it parses frames in place through the byte-source
  protocol (``readable``, ``byte``, ``peek``, ``find``, ``consume``). Today it
  runs in the same loop thread; the contract below also allows a separate
  decoder thread without any lock.

Layout::

    0                     capacity             capacity + slack
    |<------- ring ------->|<---- slack ---->|
    | ..free.. |##readable##|..free..| wrapped copy for peek() |
               ^            ^
          _read % capacity  _write % capacity

    _write: total bytes ever committed   -- stored ONLY by the producer
    _read:  total bytes ever consumed    -- stored ONLY by the consumer
    readable = _write - _read            (0 <= readable <= capacity)
    free     = capacity - readable

Both indices only grow (Python ints do not overflow, so there is no ABA and no
"full vs empty" ambiguity: equal means empty, a difference of ``capacity``
means full). A position in the ring is ``index % capacity``; capacity need not
be a power of two.

The one-writer/one-reader contract ("lock-free style": there is no lock):

* the producer writes bytes only into the free region, and **publishes**
  ``_write`` with one attribute store only after the bytes are in place;
* the consumer reads bytes only inside the readable region, and publishes
  ``_read`` only after it is done with them (views it holds into consumed
  bytes are stale from then on);
* the slack area belongs to the consumer alone: ``peek`` copies the wrapped
  head of a straddling read there so a frame is always one contiguous view.

Why this is safe in CPython: an attribute store of an int is one bytecode, so
the other thread sees the old or the new index, never a torn one. Every
switch between threads goes through the GIL, and taking and dropping the GIL
are full memory barriers; ``recv_into`` fills the buffer before it returns
and re-takes the GIL, so any thread that reads the new ``_write`` also sees
the bytes it covers. The argument rests on the GIL: a free-threaded build
(PEP 703) would need explicit atomics here.

Backpressure: a full ring has an empty :meth:`writable_view`; the IO loop then
stops reading that socket and the kernel's receive window pushes back on the
peer. The ring never grows.
"""
from __future__ import annotations

#: the largest ICD frame: header 24 + payload 4096 + MAC 16 + CRC 4
MAX_FRAME = 4096 + 24 + 16 + 4
#: the stream decoder peeks one whole frame plus two bytes of look-ahead (the
#: next sync word, to judge a bad CRC); peek(n) always works for
#: n <= slack + 1, so the slack covers the frame and that look-ahead.
DEFAULT_SLACK = MAX_FRAME + 2


class SpscRing:
    """Fixed-capacity byte ring with contiguous peeks across the wrap point."""

    __slots__ = ("capacity", "slack", "_buf", "_mv", "_write", "_read")

    def __init__(self, capacity: int, slack: int = DEFAULT_SLACK) -> None:
        """Create in any thread, before either side starts using the ring."""
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        if slack < 0:
            raise ValueError(f"slack must be >= 0, got {slack}")
        self.capacity = capacity
        self.slack = slack
        self._buf = bytearray(capacity + slack)
        # One long-lived export: slicing it is cheaper than memoryview(buf)
        # per call, and the bytearray never resizes anyway.
        self._mv = memoryview(self._buf)
        self._write = 0
        self._read = 0

    # -- producer side ----------------------------------------------------------------
    def writable_view(self) -> memoryview:
        """The largest contiguous free region (empty when full). Producer thread only.

        Fill it (``sock.recv_into(view)``) and then :meth:`commit` the count.
        """
        w = self._write
        free = self.capacity - (w - self._read)
        pos = w % self.capacity
        end = pos + min(free, self.capacity - pos)
        return self._mv[pos:end]

    def commit(self, n: int) -> None:
        """Publish ``n`` bytes written into the last writable view. Producer thread only."""
        w = self._write
        if n < 0 or n > self.capacity - (w - self._read):
            raise ValueError(f"commit({n}) with {self.capacity - (w - self._read)} bytes free")
        self._write = w + n  # the publish: one store, after the bytes are in place

    def free_space(self) -> int:
        """Bytes that may be written now (may grow concurrently). Producer thread only."""
        return self.capacity - (self._write - self._read)

    def write(self, data) -> int:
        """Copy as much of ``data`` as fits (both sides of the wrap); return the count.

        Producer thread only. For tests and tools; the IO path uses recv_into.
        """
        src = memoryview(data).cast("B")
        done = 0
        while done < len(src):
            view = self.writable_view()
            k = min(len(view), len(src) - done)
            if k == 0:
                break
            view[:k] = src[done:done + k]
            self.commit(k)
            done += k
        return done

    # -- consumer side ----------------------------------------------------------------
    def readable(self) -> int:
        """Bytes committed and not yet consumed (may grow concurrently). Consumer thread only."""
        return self._write - self._read

    def byte(self, i: int) -> int:
        """The ``i``-th readable byte. Consumer thread only."""
        r = self._read
        if not 0 <= i < self._write - r:
            raise IndexError(f"byte({i}) with {self._write - r} bytes readable")
        return self._buf[(r + i) % self.capacity]

    def first_segment(self) -> memoryview:
        """Readable bytes up to the wrap point, without copying. Consumer thread only."""
        r = self._read
        pos = r % self.capacity
        return self._mv[pos:pos + min(self._write - r, self.capacity - pos)]

    def peek(self, n: int) -> memoryview:
        """The next ``n`` readable bytes as ONE contiguous view. Consumer thread only.

        When they straddle the wrap point the wrapped part is copied into the
        slack area right after ``capacity`` (so at most ``slack`` bytes are
        copied). Raises ValueError when fewer than ``n`` bytes are readable or
        the wrapped part would not fit the slack (``n`` > slack + bytes before
        the wrap point). The view is valid until the next consume() or peek().
        """
        r = self._read
        avail = self._write - r
        if n < 0 or n > avail:
            raise ValueError(f"peek({n}) with {avail} bytes readable")
        cap = self.capacity
        pos = r % cap
        wrapped = pos + n - cap
        if wrapped > 0:
            if wrapped > self.slack:
                raise ValueError(f"peek({n}) needs {wrapped} bytes of slack, the ring has {self.slack}")
            # The producer never writes [0, wrapped): those bytes are readable, not free.
            self._mv[cap:cap + wrapped] = self._mv[:wrapped]
        return self._mv[pos:pos + n]

    def find(self, sub: bytes, limit: int) -> int:
        """Offset of ``sub`` among the next ``limit`` readable bytes, or -1. Consumer thread only."""
        r = self._read
        limit = min(limit, self._write - r)
        k = len(sub)
        if k == 0:
            return 0 if limit >= 0 else -1
        cap, buf = self.capacity, self._buf
        pos = r % cap
        end = pos + limit
        if end <= cap:
            i = buf.find(sub, pos, end)
            return i - pos if i >= 0 else -1
        i = buf.find(sub, pos, cap)
        if i >= 0:
            return i - pos
        if k > 1:
            # A match straddling the wrap point starts in the last k-1 bytes before it.
            tail = max(pos, cap - (k - 1))
            joined = bytes(buf[tail:cap]) + bytes(buf[:min(k - 1, end - cap)])
            j = joined.find(sub)
            if j >= 0:
                return tail + j - pos
        i = buf.find(sub, 0, end - cap)
        return cap - pos + i if i >= 0 else -1

    def consume(self, n: int) -> None:
        """Drop ``n`` readable bytes, handing their space back. Consumer thread only."""
        r = self._read
        if n < 0 or n > self._write - r:
            raise ValueError(f"consume({n}) with {self._write - r} bytes readable")
        self._read = r + n  # the publish: the producer may overwrite them from now on

    # -- either side, when both are idle -----------------------------------------------------
    def reset(self) -> None:
        """Empty the ring for reuse (the link pool calls it on release).

        Only while neither a producer nor a consumer is using the ring (the
        link is closed): it stores both indices.
        """
        self._write = 0
        self._read = 0

    def __repr__(self) -> str:
        return f"SpscRing(capacity={self.capacity}, slack={self.slack}, readable={self._write - self._read})"


#: the receive ring of a connection that has not confirmed its session: room for a few of the small frames
#: allowed then (the protocol closes a link holding more than 128 undecoded bytes before its confirmation)
PRE_SESSION_BYTES = 256


def pre_session_ring() -> SpscRing:
    """A connection's small ring until its session is confirmed (then its ``LinkBuffers`` ring takes over).
    The slack equals the capacity, so any peek of what it holds is contiguous. Any thread."""
    return SpscRing(PRE_SESSION_BYTES, slack=PRE_SESSION_BYTES)


class LinkBuffers:
    """The heavy, reusable part of a device link (its ring); pooled (``ObjectPool``), bounded by max_links.
    Taken at the session's confirmation (not at accept), given back when the link is closed."""

    def __init__(self, ring_bytes: int) -> None:
        self.ring = SpscRing(ring_bytes)

    def reset(self) -> None:
        self.ring.reset()
