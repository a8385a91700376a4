# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""recvmmsg of train datagrams into the UDP endpoint's fixed receive arena (Linux).

Who calls it: :class:`gateway.net.udp_endpoint.UdpEndpoint`, in its IO loop
thread, when this module is built and ``RAILGATE_PURE`` is not ``1``. The
endpoint's per-datagram ``recv_into`` path is the reference and the fallback.

One :meth:`BatchReceiver.recv` is one non-blocking ``recvmmsg`` system call,
with the GIL held (it never waits: see docs/architecture.md, "The GIL"),
filling up to ``batch`` slots of the arena. Datagram j of a call always lands
in slot j: the iovecs are pointed at the slots once, at construction::

    arena:   | slot 0 | slot 1 | slot 2 | ... | slot batch-1 |     slot j at j * slot_size
    msgs:    [m0, m1, m2, ...]   preallocated mmsghdr, m_j.iov -> slot j (set once)
    lengths: [61, 200, 44, ...]  filled in place: datagram j's length

The arena is the endpoint's and only its loop thread touches it: a call
overwrites the slots of the one before, so a batch is judged before the next
``recv`` (nothing holds a slot across calls: there is nothing to take or give
back).

``lengths[j] > slot_size`` means datagram j did not fit its slot: the kernel
cut it short (``MSG_TRUNC`` in its ``msg_flags``). Because ``recvmmsg`` is
called with ``MSG_TRUNC`` in its flags, ``lengths[j]`` is then the datagram's
real length (UDP reports it); where a socket family does not, it is
``slot_size + 1``. Either way the slot holds its first ``slot_size`` bytes.

Steady state allocates nothing: the ``mmsghdr``/``iovec`` arrays are
malloc'd once, the lengths array is made once and written through a pointer,
and ``recv`` returns a count (a small int).
"""
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport malloc, free
from libc.string cimport memset, strerror
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC
from posix.uio cimport iovec
from cpython cimport array

import array as _array


cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t

    cdef struct msghdr:
        void *msg_name
        socklen_t msg_namelen
        iovec *msg_iov
        size_t msg_iovlen
        void *msg_control
        size_t msg_controllen
        int msg_flags

    cdef struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len

    int recvmmsg(int sockfd, mmsghdr *msgvec, unsigned int vlen, int flags, timespec *timeout)

    enum: MSG_TRUNC
    enum: MSG_DONTWAIT


cdef extern from "<errno.h>" nogil:
    enum: EWOULDBLOCK  # POSIX; equal to EAGAIN on Linux, but not promised to be


cdef enum:
    _UIO_MAXIOV = 1024  # the kernel's cap on recvmmsg's vlen (it silently clamps above it)


cdef class BatchReceiver:
    """Receives up to ``batch`` datagrams per system call, datagram j into slot j of one arena.

    ``arena``: a writable buffer of at least ``batch * slot_size`` bytes (slot j
    at ``j * slot_size``). It is held (through a buffer export, so a bytearray
    cannot be resized under us) for the receiver's lifetime.

    Threading: one thread at a time (the UDP endpoint's IO loop thread); the
    message arrays, the arena's slots and ``lengths`` are reused by every
    call. ``lengths`` and the slots may be read from that thread between calls.
    """

    cdef unsigned char[::1] _arena_view
    cdef Py_ssize_t _slot_size
    cdef unsigned int _batch
    cdef mmsghdr *_msgs
    cdef iovec *_iovs
    cdef int *_lens
    cdef int[::1] _lens_view  # keeps `lengths` exported: it cannot be resized while we write into it
    cdef readonly object arena
    cdef readonly array.array lengths

    def __cinit__(self, arena, Py_ssize_t slot_size, Py_ssize_t batch=64):
        """Create in any thread before use. ValueError for a bad slot size or batch, or an arena
        shorter than ``batch * slot_size``."""
        cdef unsigned int j
        cdef unsigned char *base
        self._msgs = NULL
        self._iovs = NULL
        if slot_size <= 0:
            raise ValueError(f"slot size {slot_size}: must be > 0")
        if not 1 <= batch <= _UIO_MAXIOV:
            raise ValueError(f"batch {batch}: must be 1..{_UIO_MAXIOV} (the kernel's recvmmsg cap)")
        self._arena_view = arena
        if self._arena_view.shape[0] < batch * slot_size:
            raise ValueError(f"arena of {self._arena_view.shape[0]} bytes: {batch} slots of {slot_size} need "
                             f"{batch * slot_size}")
        self.arena = arena
        self._slot_size = slot_size
        self._batch = <unsigned int>batch
        self.lengths = _array.array("i", bytes(batch * sizeof(int)))
        self._lens_view = self.lengths
        self._lens = &self._lens_view[0]
        self._msgs = <mmsghdr *>malloc(batch * sizeof(mmsghdr))
        self._iovs = <iovec *>malloc(batch * sizeof(iovec))
        if self._msgs == NULL or self._iovs == NULL:
            raise MemoryError()
        memset(self._msgs, 0, batch * sizeof(mmsghdr))
        memset(self._iovs, 0, batch * sizeof(iovec))
        base = &self._arena_view[0]
        for j in range(self._batch):
            # slot j, for good; no address (the frame's src names the sender), no control data
            self._iovs[j].iov_base = base + j * slot_size
            self._iovs[j].iov_len = <size_t>slot_size
            self._msgs[j].msg_hdr.msg_iov = &self._iovs[j]
            self._msgs[j].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self._msgs)
        free(self._iovs)

    @property
    def batch(self):
        """Most datagrams per :meth:`recv`: the arena's slots."""
        return self._batch

    @property
    def slot_size(self):
        """Bytes per slot: the most kept of one datagram."""
        return self._slot_size

    def recv(self, int fd):
        """One ``recvmmsg``: up to ``batch`` datagrams, datagram j into slot j; how many came.

        Datagram j's length is in ``lengths[j]`` (over ``slot_size``: it was
        cut short, see the module docstring). 0 when nothing is waiting
        (EAGAIN); EINTR is retried; any other error raises OSError. Fewer than
        ``batch``: the kernel queue was empty. Non-blocking whatever the
        socket's mode (``MSG_DONTWAIT``); the GIL is held (the call never
        waits). Caller's thread only (see the class docstring).
        """
        return self._recv(fd)

    cdef Py_ssize_t _recv(self, int fd) except -1:
        cdef Py_ssize_t j
        cdef int got, err = 0
        cdef int truncated = MSG_TRUNC
        cdef int would_block = EWOULDBLOCK  # a variable: Cython would make a switch with two equal cases
        while True:  # EINTR is retried
            # MSG_TRUNC in flags: msg_len is a datagram's real length even when cut short (UDP)
            got = recvmmsg(fd, self._msgs, self._batch, MSG_DONTWAIT | MSG_TRUNC, NULL)
            if got >= 0:
                break
            err = errno
            if err != EINTR:
                break
        if got < 0:
            if err == EAGAIN or err == would_block:
                return 0
            raise OSError(err, strerror(err).decode("utf-8", "replace"))
        for j in range(got):
            if (self._msgs[j].msg_hdr.msg_flags & truncated) and self._msgs[j].msg_len <= <unsigned int>self._slot_size:
                self._lens[j] = <int>self._slot_size + 1   # cut short, real length not reported
            else:
                self._lens[j] = <int>self._msgs[j].msg_len
        return got


# --- the endpoint's drain, in C ----------------------------------------------------------------------

cdef class BatchDrain:
    """The UDP endpoint's epoll handler when its batches are judged in C (``datagram_step`` compiled).

    One call drains the socket to EAGAIN as ``UdpEndpoint._drain_batches`` does (which stays the
    reference, and runs when the batch step is Python), without a Python frame per batch: one
    ``recvmmsg`` into the arena's slots, ``step(lengths, got, clock())`` (the compiled
    ``TrainBatch.run``: it returns the oversize count), again until a batch comes back short. The
    endpoint's ``rx_datagrams``, ``rx_batches`` and ``oversize`` are added to once per batch.

    Coalescing (``UdpEndpoint``'s module doc, "Wake-ups"): with ``coalesce(interval_s, on_busy)``
    set, a wake-up whose drain finds datagrams less than ``interval_s`` after the previous such
    wake-up calls ``on_busy()`` (the endpoint then stops the per-arrival wake-ups and drains on a
    timer); the same test as ``UdpEndpoint._on_events``, on the same clock (CLOCK_MONOTONIC, which
    is ``time.monotonic``'s), in C so that a wake-up still runs no Python frame.

    Threading: the endpoint's loop thread only (the arena's one user)."""

    cdef BatchReceiver rx
    cdef object endpoint, step, clock, lengths, on_busy
    cdef int fd
    cdef double interval_s, last_s

    def __init__(self, BatchReceiver rx, int fd, endpoint, step, clock):
        self.rx, self.fd, self.endpoint, self.step, self.clock = rx, fd, endpoint, step, clock
        self.lengths = rx.lengths
        self.interval_s = 0.0
        self.last_s = -1e300
        self.on_busy = None

    def coalesce(self, double interval_s, on_busy):
        """Call ``on_busy()`` when two wake-ups with datagrams come less than ``interval_s`` apart (0: never)."""
        self.interval_s = interval_s
        self.on_busy = on_busy

    def __call__(self, mask):
        cdef timespec ts
        cdef double now
        if self.drain() and self.interval_s > 0:
            clock_gettime(CLOCK_MONOTONIC, &ts)
            now = ts.tv_sec + ts.tv_nsec * 1e-9
            if now - self.last_s < self.interval_s:
                self.on_busy()
            self.last_s = now

    cpdef Py_ssize_t drain(self) except -1:
        """Drain the socket to EAGAIN; the datagrams received (the endpoint's poll timer calls it too)."""
        cdef Py_ssize_t got, total = 0
        cdef Py_ssize_t batch = self.rx._batch
        ep = self.endpoint
        while True:
            try:
                got = self.rx._recv(self.fd)  # 0 at EAGAIN
            except OSError:  # as recv_into: the socket failed
                return total
            if got:
                total += got
                ep.rx_batches += 1
                ep.rx_datagrams += got
                oversize = self.step(self.lengths, got, self.clock())
                if oversize:
                    ep.oversize += oversize
            if got < batch:
                return total  # recvmmsg stopped short: the kernel queue was empty (EAGAIN)
