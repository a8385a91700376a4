# Included by _core.pyx (before FastLink): a sender's state in C, and the lock that guards it.
#
# * CLock: a mutex that C code takes without the GIL and Python uses like threading.Lock.
# * Sender: ``railcodecs.receiver.SenderState`` (device or train) with its counters in C fields.
# Both are the pure objects' stand-ins (same attributes): the pure receiver runs on them unchanged
# (tests/test_fastpath_differential.py, tests/test_udp_differential.py).

cdef extern from "<immintrin.h>" nogil:
    void _mm_pause()

cdef enum:
    SPIN_TRIES = 256   # CLock.c_acquire's tries before it sleeps (each after a pause: ~10 µs in all)


cdef class CLock:
    """A non-reentrant mutex with ``threading.Lock``'s Python face (``acquire``, ``release``,
    ``locked``, ``with``) that C code can also take without the GIL (:meth:`c_acquire`).

    Whoever waits for it from Python, or from C holding the GIL, waits with the GIL released, so a
    holder that runs without the GIL (FastLink's GIL-free run) and one that needs the GIL never
    deadlock. Any thread."""

    cdef PyThread_type_lock lock
    cdef bint held

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    cdef inline void c_acquire(self) noexcept nogil:
        """Take it, waiting (called without the GIL). Held by another C holder it is spun for first,
        up to ``SPIN_TRIES`` tries: that holder (a device's other net, on another loop) keeps it for
        one batch of frames, a few µs, less than what sleeping and being woken cost both threads."""
        cdef int i
        if PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            self.held = True
            return
        for i in range(SPIN_TRIES):
            _mm_pause()
            if PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
                self.held = True
                return
        PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.held = True

    cdef inline void c_release(self) noexcept nogil:
        self.held = False
        PyThread_release_lock(self.lock)

    cdef inline void acquire_gil(self) noexcept:
        """Take it from C holding the GIL: at once when free, else waiting with the GIL released."""
        if not PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        self.held = True

    def acquire(self, bint blocking=True, double timeout=-1):
        """As ``threading.Lock.acquire``: True when taken."""
        cdef long long us
        cdef bint ok
        if PyThread_acquire_lock(self.lock, NOWAIT_LOCK):
            self.held = True
            return True
        if not blocking:
            return False
        if timeout < 0:
            with nogil:
                PyThread_acquire_lock(self.lock, WAIT_LOCK)
        else:
            us = <long long>(timeout * 1e6)
            with nogil:
                ok = PyThread_acquire_lock_timed(self.lock, us, 0) == PY_LOCK_ACQUIRED
            if not ok:
                return False
        self.held = True
        return True

    def release(self):
        """As ``threading.Lock.release``: RuntimeError when it is not held."""
        if not self.held:
            raise RuntimeError("release unlocked lock")
        self.c_release()

    def locked(self):
        return self.held

    def __enter__(self):
        self.acquire()
        return True

    def __exit__(self, *exc):
        self.c_release()
        return False

    def __repr__(self):
        return f"<railcodecs._core.CLock {'locked' if self.held else 'unlocked'}>"


cdef class Sender:
    """``SenderState`` of one device or train, with its counters in C fields: the same attributes
    (``id``, ``kind``, ``window``, ``lock``, the counters, ``last_applied_ms``, ``counters()``), so
    the pure receiver runs on it unchanged, and :class:`FastLink` and :class:`TrainBatch` write it
    without a Python operation.

    Threading: the window, the counters and ``last_applied_ms`` change under ``lock`` (a
    :class:`CLock`: a device's net A and net B links may be on two IO loops, and FastLink's
    GIL-free run takes it without the GIL); a train's are written by the UDP loop thread only
    (trains have no TCP link: ``Receiver.hello`` refuses their kind). Any thread reads whole
    values."""

    cdef readonly int id
    cdef readonly int kind
    cdef readonly SequenceWindow window
    cdef readonly CLock lock
    cdef public int64_t applied, duplicates, dual_net_copies, stale, gap, sessions, open_links
    cdef int64_t last_ms
    cdef bint has_last

    def __init__(self, int id, int kind, SequenceWindow window):
        self.id, self.kind, self.window = id, kind, window
        self.lock = CLock()
        self.has_last = False

    @property
    def last_applied_ms(self):
        return self.last_ms if self.has_last else None

    @last_applied_ms.setter
    def last_applied_ms(self, value):
        if value is None:
            self.has_last = False
        else:
            self.last_ms, self.has_last = value, True

    def counters(self) -> dict:
        return {"applied": self.applied, "duplicates": self.duplicates, "dual_net_copies": self.dual_net_copies,
                "stale": self.stale, "gap": self.gap, "sessions": self.sessions}

    def __repr__(self):
        return f"Sender(id={self.id}, kind={self.kind}, {self.counters()}, last_applied_ms={self.last_applied_ms})"
