# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""recvmmsg of train datagrams straight into the slab pool's largest size class (Linux).

Who calls it: :class:`gateway.net.udp_endpoint.UdpEndpoint`, in its IO loop
thread, when this module is built and ``RAILGATE_PURE`` is not ``1``. The
endpoint's per-datagram ``recv_into`` path is the reference and the fallback.

One :meth:`BatchReceiver.recv` is one non-blocking ``recvmmsg`` system call,
with the GIL held (it never waits: see docs/architecture.md, "The GIL"), filling up to ``batch`` slabs that the caller has acquired from the
pool (the pool's one-owner contract is the caller's: only the slabs it names
are written)::

    arena:   | slab 0 | slab 1 | slab 2 | slab 3 | ... | slab count-1 |
                 ^                 ^
    indices: [2, 0, ...]        slabs the caller holds, in the order to fill
    msgs:    [m0, m1, ...]      preallocated mmsghdr, m_j.iov -> slab indices[j]
    lengths: [61, 200, ...]     filled in place: datagram j's length

``lengths[j] > slab_size`` means datagram j did not fit its slab: the kernel
cut it short (``MSG_TRUNC`` in its ``msg_flags``). Because ``recvmmsg`` is
called with ``MSG_TRUNC`` in its flags, ``lengths[j]`` is then the datagram's
real length (UDP reports it); where a socket family does not, it is
``slab_size + 1``. Either way the slab holds its first ``slab_size`` bytes.

Steady state allocates nothing: the ``mmsghdr``/``iovec`` arrays are
malloc'd once, the lengths array is made once and written through a pointer,
and ``recv`` returns a count (a small int).
"""
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdlib cimport malloc, free
from libc.string cimport memset, strerror
from posix.time cimport timespec
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
    """Receives up to ``batch`` datagrams per system call into slabs of one arena.

    ``arena``: the writable buffer of the pool's largest size class
    (``count * slab_size`` bytes, slab i at ``i * slab_size``). It is held
    (through a buffer export, so a bytearray cannot be resized under us) for
    the receiver's lifetime.

    Threading: one thread at a time (the UDP endpoint's IO loop thread); the
    message arrays and ``lengths`` are reused by every call. ``lengths`` may
    be read from that thread between calls.
    """

    cdef unsigned char[::1] _arena_view
    cdef unsigned char *_base
    cdef Py_ssize_t _slab_size
    cdef Py_ssize_t _count
    cdef unsigned int _batch
    cdef mmsghdr *_msgs
    cdef iovec *_iovs
    cdef int *_lens
    cdef int[::1] _lens_view  # keeps `lengths` exported: it cannot be resized while we write into it
    cdef readonly object arena
    cdef readonly array.array lengths

    def __cinit__(self, arena, Py_ssize_t slab_size, Py_ssize_t batch=64):
        """Create in any thread before use. ValueError for a bad slab size or batch."""
        cdef unsigned int j
        self._msgs = NULL
        self._iovs = NULL
        if slab_size <= 0:
            raise ValueError(f"slab size {slab_size}: must be > 0")
        if not 1 <= batch <= _UIO_MAXIOV:
            raise ValueError(f"batch {batch}: must be 1..{_UIO_MAXIOV} (the kernel's recvmmsg cap)")
        self._arena_view = arena
        self.arena = arena
        self._slab_size = slab_size
        self._count = self._arena_view.shape[0] // slab_size
        self._base = &self._arena_view[0] if self._count else NULL
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
        for j in range(self._batch):
            # no address (the frame's src names the sender), no control data: only the iovec changes
            self._iovs[j].iov_len = <size_t>slab_size
            self._msgs[j].msg_hdr.msg_iov = &self._iovs[j]
            self._msgs[j].msg_hdr.msg_iovlen = 1

    def __dealloc__(self):
        free(self._msgs)
        free(self._iovs)

    @property
    def batch(self):
        """Most datagrams per :meth:`recv`."""
        return self._batch

    @property
    def slab_size(self):
        """Bytes per slab: the most copied of one datagram."""
        return self._slab_size

    @property
    def slab_count(self):
        """Slabs in the arena."""
        return self._count

    def recv(self, int fd, list indices, Py_ssize_t count=-1):
        """One ``recvmmsg``: up to ``count`` datagrams into slabs ``indices[:count]``; how many came.

        ``count`` defaults to ``len(indices)`` and is capped at ``batch``.
        Datagram j lands in slab ``indices[j]`` and its length in
        ``lengths[j]`` (over ``slab_size``: it was cut short, see the module
        docstring). 0 when nothing is waiting (EAGAIN); EINTR is retried;
        any other error raises OSError. Non-blocking whatever the socket's
        mode (``MSG_DONTWAIT``); the GIL is held (the call never waits).
        Caller's thread only (see the class docstring).
        """
        cdef Py_ssize_t j, idx
        cdef int got, err = 0
        cdef unsigned int vlen
        cdef int truncated = MSG_TRUNC
        cdef int would_block = EWOULDBLOCK  # a variable: Cython would make a switch with two equal cases
        if count < 0 or count > len(indices):
            count = len(indices)
        if count > self._batch:
            count = self._batch
        if count == 0:
            return 0
        for j in range(count):
            idx = indices[j]
            if idx < 0 or idx >= self._count:
                raise ValueError(f"slab index {idx} not in 0..{self._count - 1}")
            self._iovs[j].iov_base = self._base + idx * self._slab_size
        vlen = <unsigned int>count
        while True:  # EINTR is retried
            # MSG_TRUNC in flags: msg_len is a datagram's real length even when cut short (UDP)
            got = recvmmsg(fd, self._msgs, vlen, MSG_DONTWAIT | MSG_TRUNC, NULL)
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
            if (self._msgs[j].msg_hdr.msg_flags & truncated) and self._msgs[j].msg_len <= <unsigned int>self._slab_size:
                self._lens[j] = <int>self._slab_size + 1   # cut short, real length not reported
            else:
                self._lens[j] = <int>self._msgs[j].msg_len
        return got


# --- the slab pool's batch moves, in C ----------------------------------------------------------
# SlabPool.acquire_many_for_recv and release_many call these when this module is built: the same
# loops over the size class's free stack (a list) and held marks (a bytearray), without a Python
# frame per slab (a batch of 64 slabs is taken and given back per recvmmsg, however few came).

def take_slabs(list free, bytearray mark, list out, Py_ssize_t want):
    """Pop up to ``want`` slab indices from ``free`` into ``out[:k]``, marking each held; returns k.

    The caller's thread (the pool's loop thread); the GIL is held throughout."""
    cdef Py_ssize_t k = 0, i, n = len(mark)
    if want > len(out):
        want = len(out)
    while k < want and len(free):
        idx = free.pop()
        i = idx
        if i < 0 or i >= n:
            free.append(idx)
            raise ValueError(f"slab index {i} not in 0..{n - 1}")
        mark[i] = 1
        out[k] = idx
        k += 1
    return k


def give_back(list free, bytearray mark, list indices, Py_ssize_t count, size_class=None):
    """Push ``indices[:count]`` back on ``free``, clearing each mark; ValueError (naming the slab as
    ``size_class/index``) at the first one not held: the ones before it are back. Any thread (the
    slabs' one owner); the GIL is held."""
    cdef Py_ssize_t k, i, n = len(mark)
    if count > len(indices):
        count = len(indices)
    for k in range(count):
        idx = indices[k]
        i = idx
        if i < 0 or i >= n or not mark[i]:
            raise ValueError(f"slab {size_class}/{i} released but not acquired")
        mark[i] = 0
        free.append(idx)


# --- the endpoint's drain, in C ----------------------------------------------------------------------

cdef class BatchDrain:
    """The UDP endpoint's epoll handler when its batches are judged in C (``datagram_step`` compiled).

    One call drains the socket to EAGAIN as ``UdpEndpoint._drain_batches`` does (which stays the
    reference, and runs when the batch step is Python), without a Python frame per batch: take up
    to ``batch`` free slabs of the pool's largest class (:func:`take_slabs`, the pool's high water
    and exhausted counts kept), one ``recvmmsg``, ``step(indices, lengths, got, clock())`` (the
    compiled ``TrainBatch.run``: it returns the oversize count), every slab given back, filled or
    not; again until a batch comes back short. With no free slab, ``drop_one()`` (the endpoint's:
    a read into its scratch buffer, counted) until it says EAGAIN. The endpoint's ``rx_datagrams``,
    ``rx_batches`` and ``oversize`` are added to once per batch.

    Threading: the endpoint's loop thread only (the pool's one acquiring thread)."""

    cdef BatchReceiver rx
    cdef object endpoint, size_class, step, clock, drop_one
    cdef list free, indices
    cdef bytearray mark
    cdef int fd
    cdef Py_ssize_t count

    def __init__(self, BatchReceiver rx, int fd, endpoint, size_class, list indices, step, clock, drop_one):
        """``size_class``: the pool's largest class (its ``free``, ``out``, ``count``, ``high_water``,
        ``exhausted``: the one-owner contract of gateway/net/slab_pool.py)."""
        self.rx, self.fd, self.endpoint, self.size_class = rx, fd, endpoint, size_class
        self.free, self.mark, self.count = size_class.free, size_class.out, size_class.count
        self.indices, self.step, self.clock, self.drop_one = indices, step, clock, drop_one

    def __call__(self, mask):
        cdef Py_ssize_t k, got, in_use
        cdef list free = self.free, indices = self.indices
        cdef bytearray mark = self.mark
        c, ep = self.size_class, self.endpoint
        while True:
            k = take_slabs(free, mark, indices, len(indices))
            if k == 0:
                c.exhausted += 1
                if self.drop_one():
                    continue
                return
            in_use = self.count - len(free)
            if in_use > c.high_water:
                c.high_water = in_use
            try:
                got = self.rx.recv(self.fd, indices, k)  # 0 at EAGAIN
            except OSError:  # as recv_into: the socket failed
                give_back(free, mark, indices, k, self.rx._slab_size)
                return
            try:
                if got:
                    ep.rx_batches += 1
                    ep.rx_datagrams += got
                    oversize = self.step(indices, self.rx.lengths, got, self.clock())
                    if oversize:
                        ep.oversize += oversize
            finally:
                give_back(free, mark, indices, k, self.rx._slab_size)  # filled or not
            if got < k:
                return  # recvmmsg stopped short: the kernel queue was empty (EAGAIN)
