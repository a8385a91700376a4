"""Atomic-style primitives for state shared between worker threads.

Used by the coupling engine (:mod:`gateway.coupling.engine`) for its claim flags and
counters; any thread may call any method here.

What the GIL does and does not give
-----------------------------------
On a GIL build (CPython 3.11, 3.12, the default 3.13) only one thread runs
bytecode at a time, and a switch happens *between* bytecodes (at the eval
breaker checks). One bytecode that calls into C without releasing the GIL is
therefore indivisible: ``d[k] = v``, ``lst.append(x)``, ``dict.setdefault``,
``next(itertools.count())``, reading or rebinding one attribute. A
read-modify-write written in Python is *several* bytecodes: ``self.n += 1`` is
LOAD_ATTR, BINARY_OP, STORE_ATTR, and another thread may run between the load
and the store, so two increments can land as one (a lost update; easy to
reproduce with 8 threads and a few switches per second). Compare-and-set has
the same problem: ``if self.v == e: self.v = n`` is a check and an act.

On a free-threaded build (3.13t, PEP 703) there is no GIL at all: threads run
bytecode truly in parallel. Built-in containers protect themselves with
per-object locks (so ``dict.setdefault`` stays atomic and a reference read is
never torn), but every multi-step Python sequence, and the memory ordering
between *different* objects, is up to the program. ``itertools.count`` is a
C object whose ``__next__`` is indivisible under the GIL; it is not a
documented atomic on free-threaded builds, and it cannot do compare-and-set
anyway, so it is not a building block here.

The choice: one tiny lock per primitive
---------------------------------------
Every operation below takes the primitive's own ``threading.Lock``. That is
correct on both builds for the same reason: a mutex makes the
read-modify-write one indivisible step, and lock release / acquire is a full
memory barrier (pthread mutex semantics), so whatever a thread wrote *before*
an operation on a primitive is visible to any thread that later operates on
the same primitive. The coupling engine relies on that edge for its
evaluation claim: ``last_bucket.compare_and_set(previous, b)`` succeeds for
exactly one caller, and only after the claim of the previous pair, so a
claimed evaluation never overlaps another of the same consist.

Cost: an uncontended acquire/release pair is well under a microsecond in
CPython, small next to the dictionary work of one evaluation; one lock per
primitive (not one global lock) keeps unrelated counters from contending.
Where a lock is still needed *around* these: any invariant spanning two
primitives (e.g. "state and since_ms change together") needs its own lock or
one :class:`AtomicRef` holding an immutable tuple of both.
"""
from __future__ import annotations

import threading
from typing import Any


class AtomicCounter:
    """An integer with indivisible increment and compare-and-set. Any thread."""

    __slots__ = ("_lock", "_value")

    def __init__(self, value: int = 0) -> None:
        self._lock = threading.Lock()
        self._value = value

    def increment(self) -> int:
        """Add one; return the new value. Any thread."""
        with self._lock:
            self._value += 1
            return self._value

    def add(self, delta: int) -> int:
        """Add ``delta``; return the new value. Any thread."""
        with self._lock:
            self._value += delta
            return self._value

    def get(self) -> int:
        """The current value (taken under the lock, so it is ordered after every completed write). Any thread."""
        with self._lock:
            return self._value

    def set(self, value: int) -> None:
        """Store ``value`` unconditionally. Any thread."""
        with self._lock:
            self._value = value

    def compare_and_set(self, expected: int, new: int) -> bool:
        """Store ``new`` only if the value is ``expected``; True if it was stored. Any thread."""
        with self._lock:
            if self._value != expected:
                return False
            self._value = new
            return True

    def compare_and_increment(self, expected: int) -> bool:
        """Add one only if the value is ``expected``; True if it did. Any thread.

        The building block of "exactly one thread moves the counter from k to
        k + 1": every other caller with the same ``expected`` gets False.
        """
        with self._lock:
            if self._value != expected:
                return False
            self._value = expected + 1
            return True

    def __repr__(self) -> str:
        return f"AtomicCounter({self._value})"


class AtomicRef:
    """A reference with indivisible swap and compare-and-set (by identity). Any thread.

    Store immutable values (tuples, frozen dataclasses) so that a reader never
    sees a half-updated object.
    """

    __slots__ = ("_lock", "_value")

    def __init__(self, value: Any = None) -> None:
        self._lock = threading.Lock()
        self._value = value

    def get(self) -> Any:
        """The current reference. Any thread."""
        with self._lock:
            return self._value

    def set(self, value: Any) -> None:
        """Store ``value`` unconditionally. Any thread."""
        with self._lock:
            self._value = value

    def get_and_set(self, value: Any) -> Any:
        """Store ``value``; return the previous reference. Any thread."""
        with self._lock:
            old, self._value = self._value, value
            return old

    def compare_and_set(self, expected: Any, new: Any) -> bool:
        """Store ``new`` only if the current reference *is* ``expected``; True if stored. Any thread.

        Identity, not equality: two equal tuples built by two threads are two
        different claims, and only the one whose ``expected`` is the object
        actually stored wins.
        """
        with self._lock:
            if self._value is not expected:
                return False
            self._value = new
            return True

    def __repr__(self) -> str:
        return f"AtomicRef({self._value!r})"
