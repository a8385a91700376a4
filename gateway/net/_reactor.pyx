# cython: language_level=3
"""The compiled part of the reactor (issue 14): epoll_wait and dispatch, and a device link's read.

* :class:`Poller`: ``epoll_wait`` on the loop's epoll descriptor into a C array, the GIL released
  while it waits, then dispatch to the registered channels exactly as
  ``EventLoop._dispatch`` does (wake-up fd, unknown fd, a registration newer than the batch, a
  handler's exception logged and counted) without building a Python list of tuples per pass.
  Registration stays in Python (``select.epoll.register`` on the same descriptor).
* :class:`FastReader`: the epoll handler of one TCP connection. While its link is UP with the
  compiled steady path (``protocol.fast``, a ``railcodecs._core.FastLink``) and the event is a
  plain read, it ``recv``\\ s straight into the link's receive buffer (a
  ``railcodecs.byte_source.RecvBuffer``, with its ``writable_view`` policy done in C; non-blocking,
  with the GIL held: docs/architecture.md, "The GIL"), commits the bytes (``_write``), runs the
  FastLink and, when the FastLink took every byte, records on the protocol what
  ``LinkProtocol.data_received`` would have (``last_rx``, ``last_frame``, ``_partial_since``):
  no Python frame runs for that read. Anything
  else (a frame the FastLink leaves, EOF, an error, a full buffer, the read budget, a link not UP,
  EPOLLOUT/HUP) goes to the connection's Python methods, which stay the reference
  (``TcpConnection._read``). So the compiled reader changes no outcome, only the cost.

Threading: both run in the loop thread that owns the epoll and the connection (the GIL is
released only around ``epoll_wait``, which can wait; a non-blocking ``recv`` keeps it).
"""
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint32_t, int64_t
from libc.string cimport strerror
from libc.math cimport ceil
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC, CLOCK_REALTIME

import logging
import time

from gateway.base.clock import wall_clock_ms

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void *ptr
        int fd
        uint32_t u32
        unsigned long long u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_wait(int epfd, epoll_event *events, int maxevents, int timeout)
    enum:
        EPOLLIN

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    enum:
        MSG_DONTWAIT

log = logging.getLogger("railgate.net")

cdef enum:
    MAX_EVENTS = 512


cdef class Poller:
    """``epoll_wait`` + dispatch for one :class:`EventLoop` (its thread only)."""

    cdef int epfd
    cdef int n
    cdef epoll_event evs[MAX_EVENTS]

    def __init__(self, int epfd):
        self.epfd = epfd
        self.n = 0

    def poll(self, double timeout):
        """Wait up to ``timeout`` s (rounded up to ms, as ``select.epoll.poll``); the number of events.
        A signal interrupts the wait with 0 events, after its Python handler ran (a handler's
        exception propagates)."""
        cdef int ms = <int>ceil(timeout * 1000.0) if timeout > 0 else 0
        cdef int n
        with nogil:
            n = epoll_wait(self.epfd, self.evs, MAX_EVENTS, ms)
        if n < 0:
            if errno == EINTR:
                PyErr_CheckSignals()
                n = 0
            else:
                raise OSError(errno, strerror(errno).decode())
        self.n = n
        return n

    def dispatch(self, loop):
        """Hand the events of the last poll to their channels' handlers (``EventLoop._dispatch``)."""
        cdef int i, fd
        cdef uint32_t mask
        channels, epoch, wakeup_fd = loop._channels, loop._polls, loop._wakeup_fd
        for i in range(self.n):
            fd = self.evs[i].data.fd
            mask = self.evs[i].events
            if fd == wakeup_fd:
                loop._on_wakeup()
                continue
            ch = channels.get(fd)
            # gone (unregistered by an earlier handler of this batch), or a new registration of a
            # reused number after the batch was collected
            if ch is None or ch.epoch == epoch:
                continue
            handler = ch.handler
            try:
                if type(handler) is FastReader:
                    (<FastReader>handler).on_events(mask)
                else:
                    handler(mask)
            except Exception:
                loop.callback_errors += 1
                log.exception("loop %s: handler for fd %d raised", loop.name, fd)
        self.n = 0


cdef inline double _seconds(int clock) noexcept nogil:
    """``clock``'s reading as CPython's ``time.monotonic()`` / ``time.time()`` make it (the same
    nanoseconds, the same double conversion: ``_PyTime_AsSecondsDouble``)."""
    cdef timespec ts
    clock_gettime(clock, &ts)
    cdef int64_t ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
    if ns % 1000000000 == 0:
        return <double>(ns // 1000000000)
    return <double>ns / 1e9


cdef class FastReader:
    """The epoll handler of one :class:`TcpConnection` (see the module doc). Loop thread only.

    What a read touches is kept here, in C fields, once the link is UP with its FastLink (``_arm``,
    at the first such read): the protocol (a connection's for its life), the FastLink and its bound
    ``run``, the receive buffer, its bytearray and capacity (a link's ``RecvBuffer`` is fixed from the
    session's confirmation on: the FastLink is made after the switch to it, and the bytearray never
    resizes). The clocks are read in C when the connection's are the real ones (the loop's
    ``time.monotonic`` and ``gateway.base.clock.wall_clock_ms``), with the values those give; a test's
    clocks are called. Per read, Python attributes are touched only for what other code reads or
    may change: ``alive`` and ``_closed`` (the reference path's conditions), the buffer's indexes, the
    counters and times the protocol and status read."""

    cdef object conn, p, fast, run, rx, buf
    cdef int fd
    cdef Py_ssize_t budget, cap
    cdef bint real_mono, real_wall

    def __init__(self, conn, Py_ssize_t read_budget):
        self.conn = conn
        self.p = conn.protocol
        self.fd = conn.fd
        self.budget = read_budget
        self.fast = None
        self.real_mono = conn._mono is time.monotonic
        self.real_wall = conn._clock_ms is wall_clock_ms

    def __call__(self, mask):
        self.on_events(mask)

    cdef _arm(self, fast):
        rx = self.conn._rx
        self.rx, self.buf, self.cap = rx, rx._buf, rx.capacity
        self.fast, self.run = fast, fast.run

    cdef on_events(self, uint32_t mask):
        conn, p, fast = self.conn, self.p, self.fast
        if fast is None:
            fast = p.fast
            if fast is None or mask != EPOLLIN or not p.alive or conn._closed:
                conn._on_events(mask)
                return
            self._arm(fast)
        elif mask != EPOLLIN or not p.alive or conn._closed:
            conn._on_events(mask)
            return
        rx, run = self.rx, self.run
        cdef Py_ssize_t budget = self.budget, cap = self.cap, want, w, r
        cdef ssize_t n
        cdef char *buf
        cdef int err
        conn._read_queued = False
        while True:
            if budget <= 0:
                conn._queue_read_more()
                return
            w, r = rx._write, rx._read
            if r:  # RecvBuffer.writable_view's policy: restart an empty buffer, slide a short rest
                if r == w:
                    rx._read = rx._write = 0
                    w = 0
                elif cap - w < cap >> 1:
                    rx.compact()
                    w = rx._write
            want = cap - w
            if want <= 0:
                conn._read()  # a full buffer: the Python path decodes to make room
                return
            buf = PyByteArray_AS_STRING(self.buf) + w
            n = recv(self.fd, buf, want, MSG_DONTWAIT)  # never waits, whatever the socket's mode
            err = errno
            if n < 0:
                if err == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
                    return
                if err == EINTR:
                    continue
                conn._recv_failed(OSError(err, strerror(err).decode()))
                return
            if n == 0:
                conn._read()  # EOF: the Python path reads it again (0 again) and ends the link
                return
            rx._write = w + n
            budget -= n
            conn.rx_bytes += n
            now = _seconds(CLOCK_MONOTONIC) if self.real_mono else conn._mono()
            now_ms = <int64_t>(_seconds(CLOCK_REALTIME) * 1000) if self.real_wall else conn._clock_ms()
            p.last_rx = now
            try:
                run(now_ms)
            except Exception as exc:  # a listener's: the link closes as from the Python path
                conn._fault(exc)
                return
            if fast.drained:
                if fast.accepted:
                    p.last_frame = now
                p._partial_since = None
            else:
                conn._decode_rest(now, now_ms)  # what the FastLink left: the Python path
                if conn._closed or not p.alive or p.fast is not fast or conn._rx is not rx:
                    if n == want:
                        conn._read()
                    return
            if n < want:
                return  # short read: the kernel buffer is drained
