# cython: language_level=3
"""The reactor's timers in C: :class:`TimerQueue`, a compiled twin of ``timer_queue.TimerQueue``.

``gateway/net/timer_queue.py`` is the reference: this class has its API and its observable
behaviour, rule for rule (the ordering and fairness rules in that module's docstring), and keeps
using its :class:`~gateway.net.timer_queue.TimerHandle` and ``COMPACT_MIN`` (read once, at import).
What changes is the heap: a C array of ``{double when; unsigned long long seq; PyObject *handle}``
ordered by ``(when, seq)``, sifted in C, where the pure queue pushes and pops ``(when, seq, handle)``
tuples through ``heapq`` with tuple comparisons. The handles' fields (``when``, ``interval``,
``callback``, ``args``, ``cancelled``) are still read as Python attributes, so a handle behaves the
same in either queue.

Deadlines are kept as C doubles (``float(handle.when)``), as the pure queue's comparisons treat
them; a repeating timer's next beat uses ``_rearm``'s formula in doubles, and falls back to the
same formula on Python ints when the count of beats would not fit a double exactly.

Each heap entry holds a strong reference to its handle; the references are given back when the
entry is popped, when ``compact`` drops it and when the queue is freed. A handle refers back to
its queue (``_queue``), so the type takes part in the cyclic garbage collector: the heap's
references are visited (and cleared) with the ones Cython knows of.

Threading, as for the pure queue: one queue belongs to one event loop and is used only from that
loop's thread; ``TimerHandle.cancel`` is the one thing safe from anywhere (it does
``q._cancelled += 1``: ``_cancelled`` is a public attribute for that), and ``stats`` reads plain
counters from any thread.

``tests/test_timer_queue_differential.py`` runs both queues side by side on a seeded stream of
adds, cancels and passes and requires the same callbacks, results and counters after every step.
"""
cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF
from libc.math cimport floor
from libc.stdlib cimport free, malloc, realloc

import logging
import math

from gateway.net.timer_queue import COMPACT_MIN as _COMPACT_MIN, TimerHandle

#: the pure module's logger: a raising callback is logged under the same name by either queue
log = logging.getLogger("gateway.net.timer_queue")

cdef Py_ssize_t COMPACT_MIN = _COMPACT_MIN

#: beyond this many beats a double no longer counts them exactly: _rearm goes to Python ints
cdef double _EXACT_BEATS = 9007199254740992.0  # 2 ** 53

cdef Py_ssize_t _MIN_CAPACITY = 16


cdef extern from "Python.h":
    # Declared here with PyObject * (no reference counting while the collector runs).
    ctypedef int (*visitproc)(PyObject *, void *) noexcept
    ctypedef int (*traverseproc)(PyObject *, visitproc, void *) noexcept
    ctypedef int (*inquiry)(PyObject *) noexcept

    ctypedef struct _GcSlots "PyTypeObject":
        traverseproc tp_traverse
        inquiry tp_clear


cdef struct Entry:
    double when
    unsigned long long seq
    PyObject *handle  # a strong reference, owned by the heap


cdef inline bint _before(const Entry *a, const Entry *b) noexcept nogil:
    """The heap order: earlier deadline first, then insertion order (seqs are unique)."""
    return a.when < b.when or (a.when == b.when and a.seq < b.seq)


cdef void _sift_up(Entry *heap, Py_ssize_t pos) noexcept nogil:
    cdef Entry item = heap[pos]
    cdef Py_ssize_t parent
    while pos > 0:
        parent = (pos - 1) >> 1
        if not _before(&item, &heap[parent]):
            break
        heap[pos] = heap[parent]
        pos = parent
    heap[pos] = item


cdef void _sift_down(Entry *heap, Py_ssize_t n, Py_ssize_t pos) noexcept nogil:
    cdef Entry item = heap[pos]
    cdef Py_ssize_t child
    while True:
        child = 2 * pos + 1
        if child >= n:
            break
        if child + 1 < n and _before(&heap[child + 1], &heap[child]):
            child += 1
        if not _before(&heap[child], &item):
            break
        heap[pos] = heap[child]
        pos = child
    heap[pos] = item


@cython.auto_pickle(False)
@cython.final
cdef class TimerQueue:
    """Min-heap of timers in a C array, run by the owning loop with the clock passed in.

    The compiled twin of :class:`gateway.net.timer_queue.TimerQueue`, which is the reference:
    same methods, same results, same counters, same order of callbacks (deadline, then insertion),
    the same lazy cancel and compaction, the same skipping of a repeating timer's missed beats.

    Threading: the owning loop's thread only (create it there or before the loop runs), except
    ``TimerHandle.cancel``, safe from any thread, and ``stats``, a snapshot of plain counters.
    """

    cdef Entry *_heap
    cdef Py_ssize_t _n            # entries in use
    cdef Py_ssize_t _capacity     # entries allocated
    cdef unsigned long long _seq  # insertion counter: ties run in the order they were added
    cdef unsigned long long _mods  # bumped by every change of the heap (a guard for compact)
    cdef object _log              # the logger (an object field: it also makes the type a GC type)
    cdef public Py_ssize_t _cancelled  # cancelled entries still in the heap (TimerHandle.cancel adds)
    cdef public unsigned long long fired        # callbacks run
    cdef public unsigned long long missed       # repeat beats skipped because the loop was late
    cdef public unsigned long long errors       # callbacks that raised
    cdef public unsigned long long compactions

    def __init__(self):
        """Create in the loop thread (or before the loop runs)."""
        self._log = log

    def __dealloc__(self):
        self._release_all()

    cdef void _release_all(self) noexcept:
        # Detach first: a handle's last reference may run arbitrary code (its callback's __del__).
        cdef Entry *heap = self._heap
        cdef Py_ssize_t i, n = self._n
        self._heap = NULL
        self._n = 0
        self._capacity = 0
        self._mods += 1
        if heap == NULL:
            return
        for i in range(n):
            Py_DECREF(<object>heap[i].handle)
        free(heap)

    # -- scheduling --------------------------------------------------------------------------
    def add(self, when, callback, interval=None, args=()):
        """Run ``callback(*args)`` at ``when`` (then every ``interval`` s if given). Loop thread only."""
        return self.add_handle(TimerHandle(when, callback, args, interval))

    def add_handle(self, handle):
        """Schedule a handle made elsewhere (``loop.call_at`` from another thread). Loop thread only.

        A handle cancelled before it got here is not scheduled.
        """
        queue = handle._queue
        if queue is not None and queue is not self:
            raise ValueError("a timer handle belongs to one queue")
        handle._queue = self
        if not handle.cancelled:
            self._push(handle)
        return handle

    cdef int _push(self, handle) except -1:
        cdef unsigned long long seq = self._seq
        cdef Py_ssize_t capacity
        cdef Entry *grown
        self._seq = seq + 1
        handle._in_heap = True
        cdef double when = handle.when
        if self._n == self._capacity:
            capacity = self._capacity * 2 if self._capacity else _MIN_CAPACITY
            grown = <Entry *>realloc(self._heap, capacity * sizeof(Entry))
            if grown == NULL:
                raise MemoryError()
            self._heap = grown
            self._capacity = capacity
        Py_INCREF(handle)
        self._heap[self._n].when = when
        self._heap[self._n].seq = seq
        self._heap[self._n].handle = <PyObject *>handle
        self._n += 1
        self._mods += 1
        _sift_up(self._heap, self._n - 1)
        self._maybe_compact()
        return 0

    cdef object _pop(self):
        """Remove the top entry (there is one) and return its handle, the heap's reference with it."""
        cdef PyObject *top = self._heap[0].handle
        self._n -= 1
        self._mods += 1
        if self._n > 0:
            self._heap[0] = self._heap[self._n]
            _sift_down(self._heap, self._n, 0)
        handle = <object>top  # one more reference: the variable's
        Py_DECREF(handle)     # the heap's, given to the variable
        return handle

    # -- reading -------------------------------------------------------------------------------
    def next_timeout(self, now):
        """Seconds from ``now`` until the earliest live timer (0 if due), None if none. Loop thread only."""
        cdef double left
        self._maybe_compact()
        while self._n and (<object>self._heap[0].handle).cancelled:
            self._drop_top()
        if not self._n:
            return None
        left = self._heap[0].when - <double>now
        return left if left > 0.0 else 0.0

    def __len__(self):
        """Live (not cancelled) timers. Loop thread only."""
        return self._n - self._cancelled

    @property
    def heap_size(self):
        """Heap entries, cancelled ones included. Loop thread only."""
        return self._n

    # -- running -------------------------------------------------------------------------------
    def run_due(self, now):
        """Run the timers due at ``now``; return how many ran. Loop thread only.

        Exceptions from callbacks are logged and counted; the remaining
        timers still run, and a repeating timer stays armed.
        """
        cdef double t
        cdef Py_ssize_t ran = 0
        cdef list due
        if not self._n:
            return 0
        t = now
        if self._heap[0].when > t:
            return 0
        # Pop everything due first: what callbacks add from here on waits for
        # the next pass, whatever its deadline.
        due = []
        while self._n and self._heap[0].when <= t:
            handle = self._pop()
            handle._in_heap = False
            if handle.cancelled:
                self._uncount()
            else:
                due.append(handle)
        for handle in due:
            if handle.cancelled:  # cancelled by an earlier callback of this pass
                continue
            ran += 1
            try:
                handle.callback(*handle.args)
            except Exception:
                self.errors += 1
                self._log.exception("timer callback %r raised", handle)
            if handle.interval is not None and not handle.cancelled:
                self._rearm(handle, t)
        self.fired += ran
        return ran

    cdef int _rearm(self, handle, double now) except -1:
        cdef double when = handle.when
        cdef double interval = handle.interval
        cdef double beats
        cdef long long k
        cdef double nxt
        # The first beat strictly after now: a loop late by several intervals
        # skips the beats it missed instead of running them back to back.
        if now >= when:
            beats = floor((now - when) / interval)
            if not beats < _EXACT_BEATS:  # too many to count in a double (or not a number)
                return self._rearm_py(handle, now, when, interval)
            k = <long long>beats + 1
        else:
            k = 1
        nxt = when + <double>k * interval
        while nxt <= now:  # float rounding at an exact multiple
            k += 1
            nxt = when + <double>k * interval
        self.missed += <unsigned long long>(k - 1)
        handle.when = nxt
        return self._push(handle)

    cdef int _rearm_py(self, handle, double now, double when, double interval) except -1:
        # _rearm's formula on Python ints, as the pure queue computes it (math.floor raises
        # OverflowError for an infinite count, as there).
        k = math.floor((now - when) / interval) + 1
        nxt = when + k * interval
        while nxt <= now:
            k += 1
            nxt = when + k * interval
        self.missed += k - 1
        handle.when = nxt
        return self._push(handle)

    # -- lazy deletion -----------------------------------------------------------------------
    cdef int _drop_top(self) except -1:
        handle = self._pop()
        handle._in_heap = False
        self._uncount()
        return 0

    cdef inline void _uncount(self) noexcept:
        # A cancel from another thread racing the push may have gone
        # uncounted; never let the estimate go below zero.
        if self._cancelled > 0:
            self._cancelled -= 1

    cdef inline int _maybe_compact(self) except -1:
        # The floor keeps tiny heaps from being rebuilt over and over; popping
        # a few dead entries off the top costs less than a rebuild.
        if self._cancelled * 2 > self._n > COMPACT_MIN:
            self.compact()
        return 0

    def compact(self):
        """Rebuild the heap without cancelled entries. Loop thread only."""
        cdef Py_ssize_t i, j, n = self._n
        cdef unsigned long long mods = self._mods
        cdef PyObject **dropped = NULL
        cdef Entry *heap
        cdef Entry *shrunk
        if n:
            dropped = <PyObject **>malloc(n * sizeof(PyObject *))
            if dropped == NULL:
                raise MemoryError()
        try:
            # 1. which entries are cancelled (Python attribute reads: the heap must not change meanwhile)
            for i in range(n):
                handle = <object>self._heap[i].handle
                if handle.cancelled:
                    handle._in_heap = False
                    dropped[i] = self._heap[i].handle
                else:
                    dropped[i] = NULL
                if self._mods != mods:
                    raise RuntimeError("the timer queue changed while it was compacted")
            handle = None
            # 2. keep the live entries and heapify them, in C
            heap = self._heap
            j = 0
            for i in range(n):
                if dropped[i] == NULL:
                    heap[j] = heap[i]
                    j += 1
            self._n = j
            self._mods += 1
            if j > 1:
                i = (j - 2) >> 1
                while i >= 0:
                    _sift_down(heap, j, i)
                    i -= 1
            if self._capacity > 4 * _MIN_CAPACITY and j < self._capacity // 4:
                shrunk = <Entry *>realloc(heap, max(2 * j, _MIN_CAPACITY) * sizeof(Entry))
                if shrunk != NULL:
                    self._heap = shrunk
                    self._capacity = max(2 * j, _MIN_CAPACITY)
            self._cancelled = 0
            self.compactions += 1
            # 3. give back the dropped entries' references, the heap whole again (a last
            # reference may run arbitrary code)
            for i in range(n):
                if dropped[i] != NULL:
                    Py_DECREF(<object>dropped[i])
        finally:
            free(dropped)

    def stats(self):
        """Counters. Safe to call from any thread (a snapshot of plain ints)."""
        return {"timers": self._n - self._cancelled, "heap_size": self._n, "fired": self.fired,
                "missed": self.missed, "errors": self.errors, "compactions": self.compactions}


# -- the cyclic garbage collector: the heap's references are the queue's too ---------------------
# A handle refers to its queue (``_queue``) and the queue's heap to the handle: without these,
# a dropped loop's queue and its pending timers (and whatever their callbacks hold) would never
# be freed. Cython's own slots (for ``_log``) run after ours.

cdef traverseproc _cython_traverse = (<_GcSlots *><PyObject *>TimerQueue).tp_traverse
cdef inquiry _cython_clear = (<_GcSlots *><PyObject *>TimerQueue).tp_clear


cdef int _traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef Entry *heap = (<TimerQueue>o)._heap
    cdef Py_ssize_t i, n = (<TimerQueue>o)._n
    cdef int r
    for i in range(n):
        r = visit(heap[i].handle, arg)
        if r:
            return r
    return _cython_traverse(o, visit, arg) if _cython_traverse != NULL else 0


cdef int _clear(PyObject *o) noexcept:
    (<TimerQueue>o)._release_all()
    return _cython_clear(o) if _cython_clear != NULL else 0


(<_GcSlots *><PyObject *>TimerQueue).tp_traverse = _traverse
(<_GcSlots *><PyObject *>TimerQueue).tp_clear = _clear
