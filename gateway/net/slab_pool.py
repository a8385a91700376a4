"""Preallocated buffers: fixed-size slabs for datagrams, a bounded pool for link objects.

Who calls it, and from which thread:

* :class:`SlabPool`: the UDP endpoint's IO loop thread acquires a slab per
  datagram (:meth:`SlabPool.acquire_for_recv`), or a batch of them for one
  ``recvmmsg`` (:meth:`SlabPool.acquire_many_for_recv`), and releases them
  once the datagrams are decoded, checked and applied; the admin thread reads
  :meth:`SlabPool.stats`. ``release`` may also come from another thread (a
  slab handed on to a worker): the free lists are safe for that.
* :class:`ObjectPool`: the base loop's acceptor acquires a link's buffers,
  the link's IO loop releases them when the socket is closed; so acquire and
  release run in different threads, and this pool takes a lock (once per
  connection, not per packet).

Layout of one size class (``size`` bytes x ``count`` slabs, one bytearray)::

    arena: | slab 0 | slab 1 | slab 2 | ... | slab count-1 |
             ^ views[i] = memoryview(arena)[i*size:(i+1)*size], made once
    free:  [7, 3, 0, ...]   a stack of slab indices; pop() hands one out,
                            append() takes one back

The one-owner contract: a slab index is on the free stack or held by exactly
one owner, never both. ``list.pop()`` and ``list.append()`` are each one C
call under the GIL, so two threads can never pop the same index, and a
release racing an acquire is fine. The statistics (``exhausted``,
``high_water``) are plain ints updated by the acquiring thread: exact with
one acquiring thread (the gateway's case), best effort with several.

Steady state allocates nothing: the arena, the views and the tuples returned
by ``acquire`` are all built at construction; acquire/release only move an
existing int between the free stack and the caller.
"""
from __future__ import annotations

import threading

try:  # the batch moves in C (gateway/net/_udp_batch.pyx); the loops below when it is not built
    from gateway.net._udp_batch import give_back as _give_back, take_slabs as _take_slabs
except ImportError:
    _give_back = _take_slabs = None


class _SizeClass:
    __slots__ = ("size", "count", "arena", "views", "pairs", "triples", "free", "out", "high_water",
                 "exhausted")

    def __init__(self, size: int, count: int) -> None:
        self.size = size
        self.count = count
        self.arena = bytearray(size * count)
        mv = memoryview(self.arena)
        self.views = [mv[i * size:(i + 1) * size] for i in range(count)]
        self.pairs = [(i, self.views[i]) for i in range(count)]
        self.triples = [(size, i, self.views[i]) for i in range(count)]
        # reversed so that slab 0 is handed out first (nicer to read in a debugger)
        self.free = list(range(count - 1, -1, -1))
        self.out = bytearray(count)  # 1 while held: catches a double release without allocating
        self.high_water = 0
        self.exhausted = 0

    def stats(self) -> dict:
        free = len(self.free)
        return {"size": self.size, "count": self.count, "in_use": self.count - free, "free": free,
                "high_water": self.high_water, "exhausted": self.exhausted}


class SlabPool:
    """Fixed-size slabs per size class, all preallocated; never grows."""

    def __init__(self, classes: dict[int, int]) -> None:
        """``classes``: {slab size in bytes: slab count}. Create in any thread before use."""
        if not classes:
            raise ValueError("a slab pool needs at least one size class")
        for size, count in classes.items():
            if size <= 0 or count < 0:
                raise ValueError(f"size class {size} x {count}: size must be > 0 and count >= 0")
        self._classes = {size: _SizeClass(size, count) for size, count in sorted(classes.items())}
        self.largest = max(self._classes)
        self._largest = self._classes[self.largest]

    @property
    def size_classes(self) -> tuple[int, ...]:
        """The slab sizes, ascending. Safe to call from any thread."""
        return tuple(self._classes)

    def acquire(self, size_class: int) -> tuple[int, memoryview] | None:
        """A free slab of ``size_class``: ``(index, view)``, or None when all are out.

        Loop thread only (the pool's owner; exact statistics need one
        acquiring thread). KeyError for a size class the pool does not have.
        """
        c = self._classes[size_class]
        try:
            i = c.free.pop()
        except IndexError:
            c.exhausted += 1
            return None
        c.out[i] = 1
        in_use = c.count - len(c.free)
        if in_use > c.high_water:
            c.high_water = in_use
        return c.pairs[i]

    def acquire_for_recv(self) -> tuple[int, int, memoryview] | None:
        """A slab of the LARGEST class: ``(size_class, index, view)``, or None. Loop thread only.

        For ``recv_into``/``recvfrom_into``: a datagram's size is not known
        before it is read, and a datagram longer than the buffer is cut short
        without a word (the rest is discarded by the kernel). Receiving into
        the largest class (the largest valid ICD datagram) means a valid
        datagram always fits, and a read that fills the slab exactly is the
        only case worth a second look. The cost is a few bytes of slack per
        small datagram, while the slab is held only for one decode.
        """
        c = self._largest
        try:
            i = c.free.pop()
        except IndexError:
            c.exhausted += 1
            return None
        c.out[i] = 1
        in_use = c.count - len(c.free)
        if in_use > c.high_water:
            c.high_water = in_use
        return c.triples[i]

    def recv_layout(self) -> tuple[int, bytearray, list[memoryview]]:
        """The LARGEST class's ``(slab size, arena, views)``, for a batch receiver. Any thread.

        A compiled receiver (``recvmmsg``) writes into slabs by index: slab i
        is ``arena[i*size:(i+1)*size]``, also ``views[i]``. The one-owner
        contract still holds: it writes only into slabs acquired with
        :meth:`acquire_many_for_recv` (or :meth:`acquire_for_recv`). The list
        is the pool's own; do not modify it.
        """
        c = self._largest
        return c.size, c.arena, c.views

    @property
    def recv_class(self) -> _SizeClass:
        """The LARGEST class itself, for a compiled drain (``gateway.net._udp_batch.BatchDrain``) that
        takes and gives back its slabs as :meth:`acquire_many_for_recv` and :meth:`release_many` do
        (its ``free`` stack, ``out`` marks, ``high_water`` and ``exhausted``), from the loop thread."""
        return self._largest

    def acquire_many_for_recv(self, out: list) -> int:
        """Up to ``len(out)`` slabs of the LARGEST class: their indices in ``out[:k]``; returns k.

        Loop thread only. ``out`` is the caller's preallocated list, written in
        place (no list is built per call). k == 0 when none is free: counted
        once in ``exhausted``, as a refused :meth:`acquire_for_recv`. Every
        slab handed out counts in ``in_use`` and ``high_water`` until
        released, filled or not.
        """
        c = self._largest
        free, mark = c.free, c.out
        want = len(out)
        if _take_slabs is not None:
            k = _take_slabs(free, mark, out, want)
        else:
            k = 0
            while k < want and free:
                i = free.pop()
                mark[i] = 1
                out[k] = i
                k += 1
        if k == 0:
            if want:
                c.exhausted += 1
            return 0
        in_use = c.count - len(free)
        if in_use > c.high_water:
            c.high_water = in_use
        return k

    def release(self, size_class: int, index: int) -> None:
        """Give a slab back. Safe to call from any thread (by the slab's one owner).

        ValueError when the slab is not out (a double release would let two
        owners share one buffer).
        """
        c = self._classes[size_class]
        if not c.out[index]:
            raise ValueError(f"slab {size_class}/{index} released but not acquired")
        c.out[index] = 0  # before the append: once on the stack, another thread may take it
        c.free.append(index)

    def release_many(self, size_class: int, indices: list, count: int) -> None:
        """Give back slabs ``indices[:count]``, as :meth:`release` each. Any thread (their one owner).

        ValueError at the first slab that is not out (the ones before it are back).
        """
        c = self._classes[size_class]
        free, mark = c.free, c.out
        if _give_back is not None:
            _give_back(free, mark, indices, count, size_class)
            return
        for k in range(count):
            i = indices[k]
            if not mark[i]:
                raise ValueError(f"slab {size_class}/{i} released but not acquired")
            mark[i] = 0
            free.append(i)

    def stats(self) -> dict:
        """``{"classes": {size: {...}}, "total": {...}}`` with in_use, free, high_water, exhausted.

        Safe to call from any thread: a snapshot of plain ints, each read
        whole, not all at one instant. The total's high_water is the sum of
        the classes' high waters (an upper bound on the peak actually held).
        """
        classes = {size: c.stats() for size, c in self._classes.items()}
        total = {k: sum(s[k] for s in classes.values())
                 for k in ("count", "in_use", "free", "high_water", "exhausted")}
        total["bytes"] = sum(c.size * c.count for c in self._classes.values())
        return {"classes": classes, "total": total}


class ObjectPool:
    """A bounded pool of reusable objects (a link's ring buffers).

    Objects are made lazily by ``factory`` up to ``max_items`` and reused after
    ``release``, which calls their ``reset()``. Over the bound, ``acquire``
    refuses (returns None, counts it): the caller refuses the connection
    instead of growing memory.
    """

    def __init__(self, factory, max_items: int, *, prealloc: int = 0) -> None:
        """Create in any thread. ``prealloc`` objects are made now rather than on first use."""
        if max_items < 0 or not 0 <= prealloc <= max_items:
            raise ValueError(f"max_items {max_items}, prealloc {prealloc}: need 0 <= prealloc <= max_items")
        self._factory = factory
        self.max_items = max_items
        self._lock = threading.Lock()
        self._free: list = [factory() for _ in range(prealloc)]
        self._out: set[int] = set()  # id() of the objects handed out
        self.created = prealloc
        self.high_water = 0
        self.refused = 0
        self.discarded = 0

    def acquire(self):
        """An object, or None when ``max_items`` are out (counted). Safe to call from any thread."""
        with self._lock:
            if self._free:
                obj = self._free.pop()
            elif self.created - self.discarded < self.max_items:
                obj = None
                self.created += 1
            else:
                self.refused += 1
                return None
        if obj is None:
            try:
                obj = self._factory()  # outside the lock: it may allocate a lot
            except BaseException:
                with self._lock:
                    self.created -= 1
                raise
        with self._lock:
            self._out.add(id(obj))
            if len(self._out) > self.high_water:
                self.high_water = len(self._out)
        return obj

    def release(self, obj) -> None:
        """Reset ``obj`` and take it back. Safe to call from any thread.

        ValueError for an object that is not out. If ``reset()`` raises, the
        object is dropped (its slot may be refilled by the factory) and the
        exception propagates: a half-reset buffer must not be handed out.
        """
        with self._lock:
            if id(obj) not in self._out:
                raise ValueError(f"{obj!r} released but not acquired from this pool")
            self._out.discard(id(obj))
        try:
            obj.reset()
        except BaseException:
            with self._lock:
                self.discarded += 1
            raise
        with self._lock:
            self._free.append(obj)

    def stats(self) -> dict:
        """in_use, free, created, high_water, refused, max_items. Safe to call from any thread."""
        with self._lock:
            return {"in_use": len(self._out), "free": len(self._free), "created": self.created - self.discarded,
                    "high_water": self.high_water, "refused": self.refused, "max_items": self.max_items}
