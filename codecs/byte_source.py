"""Where a stream decoder reads its bytes from: the byte-source protocol.

The decoder never owns the memory it parses. It asks a source for:

* ``readable()``: bytes available; ``byte(i)``: the i-th of them;
* ``peek(n)``: the next ``n`` bytes as one contiguous memoryview (n is at most
  one maximum frame plus two bytes of look-ahead);
* ``find(sub, limit)``: offset of ``sub`` among the next ``limit`` readable
  bytes, or -1;
* ``consume(n)``: drop ``n`` bytes;
* ``first_segment()``: the readable bytes up to the source's wrap point (if any), without
  copying (the compiled fast path scans frames there).

Two sources implement it: :class:`LinearBuffer` here (a growable bytearray, for
``StreamDecoder.feed``) and the gateway's SPSC ring (``gateway/net/ring_buffer.py``),
into which the IO loop receives straight from the socket. So the same decoder,
with the same resynchronisation rules, parses frames in place in either.

A view returned by ``peek`` is valid until the next ``consume`` or write.

Threading: a source has one reader (the decoder's thread); see each source.
"""
from __future__ import annotations

_COMPACT_AT = 64 * 1024


class LinearBuffer:
    """A bytearray with a read offset; consumed bytes are compacted lazily.

    ::

        0            _pos                       len(_buf)
        | consumed   | readable ................ |  <- append() adds here

    Single-threaded: the thread that appends is the thread that decodes.
    """

    __slots__ = ("_buf", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0

    def append(self, data) -> None:
        if self._pos >= _COMPACT_AT and self._pos * 2 >= len(self._buf):
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def readable(self) -> int:
        return len(self._buf) - self._pos

    def peek(self, n: int) -> memoryview:
        if n > len(self._buf) - self._pos:
            raise ValueError(f"peek({n}) with only {len(self._buf) - self._pos} bytes readable")
        return memoryview(self._buf)[self._pos:self._pos + n]

    def first_segment(self) -> memoryview:
        """Every readable byte, as one view (the buffer never wraps)."""
        return memoryview(self._buf)[self._pos:]

    def find(self, sub: bytes, limit: int) -> int:
        idx = self._buf.find(sub, self._pos, self._pos + limit)
        return idx - self._pos if idx >= 0 else -1

    def byte(self, i: int) -> int:
        return self._buf[self._pos + i]

    def consume(self, n: int) -> None:
        self._pos += n

    @property
    def allocated(self) -> int:
        """Bytes held, consumed ones included (for tests of the compaction)."""
        return len(self._buf)
