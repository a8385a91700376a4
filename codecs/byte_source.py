"""Where a stream decoder reads its bytes from: the byte-source protocol.

The decoder never owns the memory it parses. It asks a source for:

* ``readable()``: bytes available; ``byte(i)``: the i-th of them;
* ``peek(n)``: the next ``n`` bytes as one contiguous memoryview;
* ``find(sub, limit)``: offset of ``sub`` among the next ``limit`` readable
  bytes, or -1;
* ``consume(n)``: drop ``n`` bytes;
* ``first_segment()``: every readable byte as one view, without copying.

Two sources implement it, both muduo's ``Buffer`` (one bytearray, a read index
and a write index, never wrapped, so every frame is one contiguous view):

* :class:`LinearBuffer`, growable, filled by ``append`` (``StreamDecoder.feed``);
* :class:`RecvBuffer`, fixed, filled by ``recv_into(writable_view())`` +
  ``commit(n)``: a gateway link's receive buffer (``gateway/net/connection.py``),
  which the compiled fast path (``_core.FastLink``, ``gateway.net._reactor``)
  reads and fills through the same three fields.

So the same decoder, with the same resynchronisation rules, parses frames in
place in either. Layout of both::

    0            _read                 _write                len(_buf)
    | consumed   | readable ........... | writable (RecvBuffer) |

A view returned by ``peek`` or ``first_segment`` is valid until the next
``consume`` or write.

Threading: a source has one thread, which both fills it and decodes from it
(for a link: its IO loop). Nothing here takes a lock.
"""
from __future__ import annotations

from .speedups import fields_base

_COMPACT_AT = 64 * 1024


class _Readable(fields_base("ReadableFields")):
    """The reading side both buffers share: bytes ``_buf[_read:_write]`` (the three fields are
    the base's: C fields in the compiled implementation, codecs/_fields.pxi)."""

    __slots__ = ()

    def readable(self) -> int:
        return self._write - self._read

    def byte(self, i: int) -> int:
        r = self._read
        if not 0 <= i < self._write - r:
            raise IndexError(f"byte({i}) with {self._write - r} bytes readable")
        return self._buf[r + i]

    def peek(self, n: int) -> memoryview:
        r = self._read
        if not 0 <= n <= self._write - r:
            raise ValueError(f"peek({n}) with {self._write - r} bytes readable")
        return memoryview(self._buf)[r:r + n]

    def first_segment(self) -> memoryview:
        """Every readable byte, as one view (the buffer never wraps)."""
        return memoryview(self._buf)[self._read:self._write]

    def find(self, sub: bytes, limit: int) -> int:
        r = self._read
        idx = self._buf.find(sub, r, r + max(0, min(limit, self._write - r)))
        return idx - r if idx >= 0 else -1

    def consume(self, n: int) -> None:
        r = self._read
        if not 0 <= n <= self._write - r:
            raise ValueError(f"consume({n}) with {self._write - r} bytes readable")
        self._read = r + n


class LinearBuffer(_Readable):
    """A growable byte source: ``append`` adds at the end; consumed bytes are dropped lazily
    (once at least 64 KiB and half of the buffer are consumed)."""

    __slots__ = ()

    def __init__(self) -> None:
        self._buf = bytearray()
        self._read = self._write = 0

    def append(self, data) -> None:
        if self._read >= _COMPACT_AT and self._read * 2 >= self._write:
            del self._buf[:self._read]
            self._read = 0
        self._buf += data
        self._write = len(self._buf)

    @property
    def allocated(self) -> int:
        """Bytes held, consumed ones included (for tests of the compaction)."""
        return len(self._buf)


class RecvBuffer(_Readable):
    """A fixed-capacity receive buffer: ``recv_into(writable_view())`` then ``commit(n)``.

    It never grows: full (``capacity`` bytes readable) it offers an empty writable view, the loop
    stops reading that socket and the kernel's receive window pushes back on the peer. Bytes move
    only when the readable rest (at most one partial frame, once the decoder has run) is slid to
    the front because less than half the capacity is left behind it: at most once per half
    capacity received, and an empty buffer restarts at 0 without moving anything.
    """

    __slots__ = ("capacity", "_mv")

    def __init__(self, capacity: int) -> None:
        if capacity <= 0:
            raise ValueError(f"capacity must be positive, got {capacity}")
        self.capacity = capacity
        self._buf = bytearray(capacity)
        self._mv = memoryview(self._buf)  # one long-lived export; the bytearray never resizes
        self._read = self._write = 0

    def peek(self, n: int) -> memoryview:
        r = self._read
        if not 0 <= n <= self._write - r:
            raise ValueError(f"peek({n}) with {self._write - r} bytes readable")
        return self._mv[r:r + n]

    def writable_view(self) -> memoryview:
        """The free space after the readable bytes (empty when full), made as large as the policy
        above allows. Fill it (``sock.recv_into(view)``), then :meth:`commit` the count."""
        r = self._read
        if r:
            if r == self._write:
                self._read = self._write = 0
            elif self.capacity - self._write < self.capacity >> 1:
                self.compact()
        return self._mv[self._write:]

    def compact(self) -> None:
        """Slide the readable bytes to the front (the compiled reader calls it under the same policy)."""
        r, w = self._read, self._write
        self._mv[:w - r] = self._buf[r:w]  # the right side is a copy: the overlap is safe
        self._read, self._write = 0, w - r

    def commit(self, n: int) -> None:
        """``n`` bytes were written into the last writable view."""
        if not 0 <= n <= self.capacity - self._write:
            raise ValueError(f"commit({n}) with {self.capacity - self._write} bytes writable")
        self._write += n

    def free_space(self) -> int:
        """Bytes that can be received before the buffer is full (after a compaction if needed)."""
        return self.capacity - (self._write - self._read)

    def write(self, data) -> int:
        """Copy as much of ``data`` as fits; return the count (tests, tools, a session's hand-over)."""
        src = memoryview(data).cast("B")
        view = self.writable_view()
        if len(view) < len(src) and self._read:
            self.compact()
            view = self._mv[self._write:]
        k = min(len(view), len(src))
        view[:k] = src[:k]
        self._write += k
        return k

    def reset(self) -> None:
        """Empty the buffer for reuse (the link pool calls it on release)."""
        self._read = self._write = 0

    def __repr__(self) -> str:
        return f"RecvBuffer(capacity={self.capacity}, readable={self._write - self._read})"
