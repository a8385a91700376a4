"""A bounded pool of reusable objects: a device link's buffers (``LinkBuffers``, its receive buffer).

Who calls it, and from which thread: the base loop's acceptor (through the
link context) acquires a link's buffers when its session is confirmed, and the
link's IO loop releases them when the socket is closed; so acquire and release
run in different threads, and this pool takes a lock (once per connection, not
per packet). The admin thread reads :meth:`ObjectPool.stats`.

The bound is the point: ``max_items`` sets of buffers at most, made lazily and
reused, so a flood of connections is refused (counted) instead of growing
memory.
"""
from __future__ import annotations

import threading


class ObjectPool:
    """A bounded pool of reusable objects (a link's receive buffers).

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
