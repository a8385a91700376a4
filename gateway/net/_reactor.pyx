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
* :meth:`FastReader.heartbeat`: the same link's heartbeat timer callback (``TcpConnection._perform``
  arms it for ARM_HEARTBEAT when the reader is this compiled one). In the steady case (an UP link
  with its FastLink, not silent, no dead deadline before the next tick, no partial frame, nothing
  queued for output) it does what ``TcpConnection._on_heartbeat_tick`` -> ``LinkProtocol.heartbeat_tick``
  would: the link's heartbeat counter + 1, the HEARTBEAT frame encoded in C byte for byte as
  ``railcodecs.encode`` makes it (CRC-32 and the session MAC from ``codecs/include/icd_hash.h``, the
  key's HMAC state kept between ticks) and ``send``\\ t from C. A send that does not take the whole
  frame, or fails, hands it to the connection's Python output path (``_tick_send_incomplete``: what
  ``_write`` does from there). Every other tick runs the Python reference, ``_on_heartbeat_tick``,
  with the times already read. :func:`encode_heartbeat` is the encoder alone (tests compare it with
  ``railcodecs.encode``).

A busy link (its last read brought 2 KiB or more) is read in **bulk passes**
(:meth:`FastReader._bulk_pass`, ``codecs/_reader_api.pxi``): ``recv`` and the FastLink's GIL-free
run, again and again, with the GIL released once for the pass and what it did published at its end.

Threading: all of it runs in the loop thread that owns the epoll and the connection. The GIL is
released around ``epoll_wait``, which can wait, and for a bulk pass, which touches only the link's
own buffer and C fields and, under their locks, the sender and the object tables (see
``FastLink``). A one-recv read keeps it for its non-blocking ``recv``, and a heartbeat tick for its
``send``, so a tick is atomic for the other threads, as ``send()``'s callers see it; other threads
read a link's counters and times as of the last pass's end.
"""
from libc.errno cimport errno, EAGAIN, EINTR
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from libc.string cimport strerror, memcpy
from libc.math cimport ceil
from cpython.bytearray cimport PyByteArray_AS_STRING
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.exc cimport PyErr_CheckSignals
from cpython.pycapsule cimport PyCapsule_GetPointer
from cpython.ref cimport PyObject, Py_XINCREF, Py_XDECREF
from libc.stdlib cimport realloc, free
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC, CLOCK_REALTIME

import logging
import time

from gateway.base.clock import wall_clock_ms
from railcodecs import _core

# the buffer and link calls of a read (codecs/_core.pyx, "the compiled reader's calls"): the same
# layout as there, checked by the capsule's name
# (the bulk pass's nogil calls take the FastLink as a borrowed pointer: ``void *`` here)
ctypedef struct HbTick:
    uint32_t counter
    uint16_t src, dst
    PyObject *tx_key

ctypedef struct ReaderApi:
    int (*alive)(object) except -1
    Py_ssize_t (*slot)(object, Py_ssize_t, char **) except -1
    int (*commit_run)(object, Py_ssize_t, double, int64_t) except -1
    int (*bulk_begin)(object, Py_ssize_t) except -1
    Py_ssize_t (*bulk_slot)(void *, char **) noexcept nogil
    int (*bulk_take)(void *, Py_ssize_t, double, int64_t) noexcept nogil
    int (*bulk_end)(object) except -1
    int (*hb_tick)(object, double, HbTick *) except -1
    int (*prefetch)(PyObject *, int) noexcept
    Py_ssize_t *nogil_bytes

cdef ReaderApi *api = <ReaderApi *>PyCapsule_GetPointer(_core.READER_API, b"railcodecs._core.READER_API.v4")

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

cdef extern from *:
    # GCC's and Clang's hint: start loading the line at ``p``
    void __builtin_prefetch(const void *p) nogil

cdef extern from "<sys/socket.h>" nogil:
    ssize_t recv(int sockfd, void *buf, size_t len, int flags)
    ssize_t send(int sockfd, const void *buf, size_t len, int flags)
    enum:
        MSG_DONTWAIT
        MSG_NOSIGNAL

cdef extern from "icd_hash.h" nogil:
    ctypedef struct rg_hmac_key:
        pass
    uint32_t rg_crc32(uint32_t crc, const uint8_t *p, size_t n)
    void rg_hmac_init(rg_hmac_key *k, const uint8_t *key, size_t keylen)
    void rg_hmac_sha256(const rg_hmac_key *k, const uint8_t *msg, size_t n, uint8_t *out)

log = logging.getLogger("railgate.net")

cdef enum:
    MAX_EVENTS = 512
    #: Poller._prefetch's stages: event i + 6 gets its slot loaded, ..., event i + 1 its deepest objects
    PREFETCH_STAGES = 6
    # what a bulk pass (FastReader._bulk_pass) tells the read loop
    PASS_DONE = 0       # the event is handled
    PASS_AGAIN = 1      # go on reading (the budget is checked first)
    PASS_NO = 2         # no pass: read the one-recv way
    # why a pass stopped
    STOP_AGAIN = 0
    STOP_SHORT = 1
    STOP_BUDGET = 2
    STOP_EINTR = 3
    STOP_FULL = 4
    STOP_EOF = 5
    STOP_ERROR = 6
    STOP_PYTHON = 7
    # a HEARTBEAT frame (ICD section 2 and 4; codecs/frame.py): the 24-byte header, the u32 counter,
    # the 16-byte MAC when signed, the CRC-32
    HB_TYPE = 0x02
    HB_BODY = 24 + 4
    HB_MAX = 24 + 4 + 16 + 4


cdef inline void _be(uint8_t *p, uint64_t v, int n) noexcept nogil:
    """``v`` as ``n`` big-endian bytes at ``p``."""
    cdef int i
    for i in range(n - 1, -1, -1):
        p[i] = <uint8_t>(v & 0xFF)
        v >>= 8


cdef Py_ssize_t _heartbeat_frame(uint8_t *out, uint32_t counter, uint16_t src, uint16_t dst, uint64_t time_ms,
                                 const rg_hmac_key *key) noexcept nogil:
    """``encode(Heartbeat(counter), src=src, dst=dst, seq=0, time_ms=time_ms, mac_key=K)`` into ``out``
    (``HB_MAX`` bytes): ``key`` is K's HMAC state, NULL for no MAC. Returns the frame's length (32 or 48).

    As ``frame.encode``: header (sync 0xA55A, version 1, type, flags = 1 with a MAC, reserved 0, src,
    dst, seq, time_ms, payload length 4), the payload (the counter), then with a key the first 16 bytes
    of HMAC-SHA256(K, header + payload) (``compute_mac``), then the CRC-32 of everything before it."""
    cdef uint8_t mac[32]
    cdef Py_ssize_t n = HB_BODY
    out[0] = 0xA5
    out[1] = 0x5A
    out[2] = 1
    out[3] = HB_TYPE
    out[4] = 1 if key != NULL else 0
    out[5] = 0
    _be(out + 6, src, 2)
    _be(out + 8, dst, 2)
    _be(out + 10, 0, 4)
    _be(out + 14, time_ms, 8)
    _be(out + 22, 4, 2)
    _be(out + 24, counter, 4)
    if key != NULL:
        rg_hmac_sha256(key, out, HB_BODY, mac)
        memcpy(out + HB_BODY, mac, 16)
        n += 16
    _be(out + n, rg_crc32(0, out, n), 4)
    return n + 4


def encode_heartbeat(uint32_t counter, uint16_t src, uint16_t dst, uint64_t time_ms, bytes key=None):
    """The HEARTBEAT frame :meth:`FastReader.heartbeat` sends, as bytes (for tests: it must equal
    ``railcodecs.encode(Heartbeat(counter), src=src, dst=dst, seq=0, time_ms=time_ms, mac_key=key)``)."""
    cdef uint8_t out[HB_MAX]
    cdef rg_hmac_key k
    cdef Py_ssize_t n
    if key is None:
        n = _heartbeat_frame(out, counter, src, dst, time_ms, NULL)
    else:
        rg_hmac_init(&k, <const uint8_t *>PyBytes_AS_STRING(key), PyBytes_GET_SIZE(key))
        n = _heartbeat_frame(out, counter, src, dst, time_ms, &k)
    return PyBytes_FromStringAndSize(<char *>out, n)


cdef struct Slot:
    # one registered fd: its handler (a strong reference; NULL: none), the poll count when it was
    # registered, and whether the handler is a FastReader
    PyObject *handler
    long long epoch
    bint fast


cdef class Poller:
    """``epoll_wait`` + dispatch for one :class:`EventLoop` (its thread only).

    The loop's registrations are mirrored here, in a C array indexed by fd (:meth:`add`,
    :meth:`remove`, called by ``EventLoop.register`` / ``unregister`` / ``close``): at line load
    the dispatch's ``dict.get`` of the fd and the reads of the ``Channel``'s attributes, each a
    cache miss on one of 2,000 cold objects, were 5 % of the gateway's CPU."""

    cdef int epfd
    cdef int n
    cdef epoll_event evs[MAX_EVENTS]
    cdef Slot *slots
    cdef int cap
    #: cache lines :meth:`dispatch` asked to be loaded ahead of their events (see _prefetch)
    cdef readonly long long prefetches

    def __cinit__(self, int epfd):
        self.epfd = epfd
        self.n = 0
        self.slots = NULL
        self.cap = 0

    def __dealloc__(self):
        self._clear_all()
        free(self.slots)

    cdef void _clear_all(self) noexcept:
        cdef int i
        for i in range(self.cap):
            Py_XDECREF(self.slots[i].handler)
            self.slots[i].handler = NULL

    def add(self, int fd, handler, long long epoch):
        """Mirror a registration (``handler`` for ``fd``, registered at poll count ``epoch``)."""
        cdef int new_cap, i
        cdef Slot *grown
        if fd < 0:
            raise ValueError(f"bad fd {fd}")
        if fd >= self.cap:
            new_cap = max(64, self.cap)
            while new_cap <= fd:
                new_cap *= 2
            grown = <Slot *>realloc(self.slots, new_cap * sizeof(Slot))
            if grown == NULL:
                raise MemoryError()
            for i in range(self.cap, new_cap):
                grown[i].handler = NULL
            self.slots, self.cap = grown, new_cap
        Py_XINCREF(<PyObject *>handler)
        Py_XDECREF(self.slots[fd].handler)
        self.slots[fd].handler = <PyObject *>handler
        self.slots[fd].epoch = epoch
        self.slots[fd].fast = type(handler) is FastReader

    def remove(self, int fd):
        """Forget ``fd``'s registration (none: nothing to do)."""
        cdef PyObject *h
        if 0 <= fd < self.cap:
            h = self.slots[fd].handler
            self.slots[fd].handler = NULL
            Py_XDECREF(h)

    def clear(self):
        """Forget every registration (the loop closes)."""
        self._clear_all()

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

    cdef inline int _prefetch(self, int i, int stage) noexcept:
        """Start loading into the cache what event ``i``'s handler touches first, one level of
        pointers per ``stage``: 0 the registration's slot; 1 the handler; 2 for a FastReader, its
        connection, protocol, FastLink and buffer; 3 to 5 the FastLink's objects, what they point
        to, and the bytes the ``recv`` writes (``READER_API.prefetch`` depths 1 to 3). Each stage
        reads the pointers the stage before loaded, so :meth:`dispatch` runs them an event apart.
        It reads the slot and the reader's pointers as they are now (the loop thread's own, the GIL
        held), takes no reference and writes nothing: a prefetch of an object a handler frees before
        event ``i`` runs is harmless. Returns how many lines it asked for: :meth:`dispatch` adds them
        to ``prefetches``. That use matters: GCC 12 at -O2 finds a void function whose only effect
        is ``__builtin_prefetch`` free of side effects and deletes its calls, which is what happened
        to this function's first version (bench/results/prefetch-dropped-by-gcc-2026-11-30.txt)."""
        cdef int fd
        cdef PyObject *h
        cdef PyObject *fast
        if i >= self.n:
            return 0
        fd = self.evs[i].data.fd
        if fd < 0 or fd >= self.cap:
            return 0
        if stage == 0:
            __builtin_prefetch(&self.slots[fd])
            return 1
        h = self.slots[fd].handler
        if h == NULL:
            return 0
        if stage == 1:
            __builtin_prefetch(h)
            __builtin_prefetch(<char *>h + 64)
            return 2
        if not self.slots[fd].fast:
            return 0
        fast = <PyObject *>(<FastReader>h).fast
        if stage == 2:
            __builtin_prefetch(<PyObject *>(<FastReader>h).conn)
            __builtin_prefetch(<PyObject *>(<FastReader>h).p)
            __builtin_prefetch(<PyObject *>(<FastReader>h).rx)
            if fast == <PyObject *>None:
                return 3
            __builtin_prefetch(fast)
            __builtin_prefetch(<char *>fast + 64)
            return 5
        if fast == <PyObject *>None:
            return 0
        return api.prefetch(fast, stage - 2)

    def dispatch(self, loop):
        """Hand the events of the last poll to their handlers (``EventLoop._dispatch``, with the
        registrations read from the C array)."""
        cdef int i, fd, k
        cdef uint32_t mask
        cdef long long epoch = loop._polls
        cdef int wakeup_fd = loop._wakeup_fd
        cdef Slot *slot
        cdef long long issued = 0
        for i in range(self.n):
            # at line load each event is a different link, cold in the cache (touched once per 100 ms):
            # while this one is handled, the events ahead are loaded one level of pointers each, the
            # furthest its slot, the next its deepest objects (see _prefetch)
            for k in range(PREFETCH_STAGES):
                issued += self._prefetch(i + PREFETCH_STAGES - k, k)
            fd = self.evs[i].data.fd
            mask = self.evs[i].events
            if fd == wakeup_fd:
                loop._on_wakeup()
                continue
            # gone (unregistered by an earlier handler of this batch), or a new registration of a
            # reused number after the batch was collected
            if fd >= self.cap:
                continue
            slot = &self.slots[fd]  # (re-read per event: a handler may add, and the array move)
            if slot.handler == NULL or slot.epoch == epoch:
                continue
            handler = <object>slot.handler  # a reference of our own while it runs
            try:
                if slot.fast:
                    (<FastReader>handler).on_events(mask)
                else:
                    handler(mask)
            except Exception:
                loop.callback_errors += 1
                log.exception("loop %s: handler for fd %d raised", loop.name, fd)
        self.n = 0
        self.prefetches += issued


cdef inline double _seconds(int clock) noexcept nogil:
    """``clock``'s reading as CPython's ``time.monotonic()`` / ``time.time()`` make it (the same
    nanoseconds, the same double conversion: ``_PyTime_AsSecondsDouble``)."""
    cdef timespec ts
    clock_gettime(clock, &ts)
    cdef int64_t ns = <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
    if ns % 1000000000 == 0:
        return <double>(ns // 1000000000)
    return <double>ns / 1e9


cdef class ConnFields:
    """``TcpConnection``'s fields that its compiled reader reads and writes per read, as C fields
    (the other hot-field bases are in codecs/_fields.pxi; ``gateway.net.compiled.conn_fields_base``
    gives the pure twin). Threading: as ``TcpConnection`` (its loop thread writes them)."""
    cdef public bint _closed, _read_queued
    cdef public Py_ssize_t rx_bytes, tx_bytes
    # the output not yet taken by the kernel (``_out[_out_pos:]``): the heartbeat tick reads them
    cdef public bytearray _out
    cdef public Py_ssize_t _out_pos


cdef class FastReader:
    """The epoll handler of one :class:`TcpConnection`, and its heartbeat timer's callback
    (:meth:`heartbeat`; see the module doc). Loop thread only.

    What a read touches is kept here, in C fields, once the link is UP with its FastLink (``_arm``,
    at the first such read): the protocol (a connection's for its life), the FastLink and its bound
    ``run``, the receive buffer, its bytearray and capacity (a link's ``RecvBuffer`` is fixed from the
    session's confirmation on: the FastLink is made after the switch to it, and the bytearray never
    resizes). The clocks are read in C when the connection's are the real ones (the loop's
    ``time.monotonic`` and ``gateway.base.clock.wall_clock_ms``), with the values those give; a test's
    clocks are called. Per read, Python attributes are touched only for what other code reads or
    may change: ``alive`` and ``_closed`` (the reference path's conditions), the buffer's indexes, the
    counters and times the protocol and status read."""

    cdef ConnFields conn
    cdef object p, fast, rx
    cdef int fd
    cdef Py_ssize_t budget, cap
    cdef bint real_mono, real_wall
    # read in bulk passes: set by a one-recv read of nogil_bytes or more, cleared by a pass that read less
    cdef bint bulk
    cdef object hmac_for     # the key object whose HMAC state is in hmac (the protocol's _tx_key)
    cdef rg_hmac_key hmac

    def __init__(self, conn, Py_ssize_t read_budget):
        self.conn = <ConnFields?>conn
        self.p = conn.protocol
        self.fd = conn.fd
        self.budget = read_budget
        self.fast = None
        self.real_mono = conn._mono is time.monotonic
        self.real_wall = conn._clock_ms is wall_clock_ms
        self.bulk = False
        self.hmac_for = None

    def __call__(self, mask):
        self.on_events(mask)

    def read_more(self):
        """Go on reading after the read budget was spent (``TcpConnection._read_more``, queued in the
        loop): as for a readable event, so a busy link's continued reads stay on the compiled path."""
        self.on_events(EPOLLIN)

    cdef _arm(self, fast):
        rx = self.conn._rx
        self.rx, self.cap = rx, rx.capacity
        self.fast = fast

    def heartbeat(self):
        """The link's heartbeat timer callback: the steady tick in C, anything else the Python reference.

        The steady tick is the one where ``TcpConnection._on_heartbeat_tick`` would, through
        ``LinkProtocol.heartbeat_tick``, only send a HEARTBEAT: the connection open, the compiled steady
        path on (``protocol.fast``), the link alive (so UP: the protocol sets ``alive`` only while UP),
        no partial frame (``_partial_since is None``), not silent (``(now - last_frame) * 1000 <=
        dead_after * heartbeat_ms``, ``_judge_silence``'s formula), no dead deadline before the next tick
        (``last_frame + dead_after * hb_s >= now + hb_s``), nothing pending in the protocol (outbox,
        action bits) nor queued for output, and fields ``encode`` would take (``type(x) is int`` in range).
        Then: ``_hb_counter`` + 1 (mod 2**32), the frame (:func:`_heartbeat_frame`, the session key's
        HMAC state computed once per key object), ``protocol.tx_frames`` + 1, ``send`` (MSG_DONTWAIT |
        MSG_NOSIGNAL) and ``tx_bytes`` + the bytes sent. A whole send leaves ``_queued`` as ``_write``
        does (+n, then -n: the tick holds the GIL throughout, so no other thread can tell the
        difference); a short send, EAGAIN or an error goes to ``conn._tick_send_incomplete``, which
        counts the frame in ``_queued`` and goes on as ``_write``: the rest queued behind EPOLLOUT, or
        ``protocol.io_error``.

        Anything else (silence, a dead deadline to arm, a partial frame to watch, pending output, a
        link not UP or without its FastLink, an unexpected value) calls ``conn._on_heartbeat_tick``
        with the times read here, so it has exactly one implementation: the Python one. ``now`` and
        ``now_ms`` are read once, as ``_judge`` reads them (``conn._mono()``, then ``conn._clock_ms()``; in
        C when those are the real clocks, as a read's). The protocol's conditions and counters are read
        and moved by ``_reader_hb_tick`` (codecs/_reader_api.pxi) on ``LinkFields``' C fields, the output
        queue on ``ConnFields``': no attribute lookup on a link's objects per tick.
        Loop thread only (a timer of the connection's loop)."""
        conn = self.conn
        if conn._closed:
            conn._on_heartbeat_tick()
            return
        now = _seconds(CLOCK_MONOTONIC) if self.real_mono else conn._mono()
        now_ms = <int64_t>(_seconds(CLOCK_REALTIME) * 1000) if self.real_wall else conn._clock_ms()
        cdef HbTick tick
        cdef const rg_hmac_key *key = NULL
        cdef uint8_t frame[HB_MAX]
        cdef Py_ssize_t size
        cdef ssize_t n
        cdef int err
        cdef uint64_t ms = 0
        cdef bint steady = False
        if conn._out_pos == len(conn._out) and type(now_ms) is int:  # nothing queued for output
            try:
                ms = now_ms  # (OverflowError: under 0 or over 64 bits)
                # the protocol's side, on its C fields (codecs/_reader_api.pxi): it counts the frame when steady
                steady = api.hb_tick(self.p, now, &tick)
            except Exception:  # whatever it is, the reference meets it too and deals with it
                steady = False
        if not steady:
            conn._on_heartbeat_tick(now, now_ms)
            return
        tx_key = <object>tick.tx_key
        if tx_key is not None:
            if tx_key is not self.hmac_for:
                rg_hmac_init(&self.hmac, <const uint8_t *>PyBytes_AS_STRING(tx_key), PyBytes_GET_SIZE(tx_key))
                self.hmac_for = tx_key
            key = &self.hmac
        size = _heartbeat_frame(frame, tick.counter, tick.src, tick.dst, ms, key)
        while True:
            n = send(self.fd, frame, size, MSG_DONTWAIT | MSG_NOSIGNAL)  # never waits; no SIGPIPE
            err = errno
            if n >= 0 or err != EINTR:
                break
            PyErr_CheckSignals()  # as socket.send does (PEP 475): a handler's exception propagates
        if n == size:
            conn.tx_bytes += n
            return
        data = PyBytes_FromStringAndSize(<char *>frame, size)
        if n >= 0:
            conn._tick_send_incomplete(data, n, None)
        elif err == EAGAIN:  # (EWOULDBLOCK is EAGAIN on Linux)
            conn._tick_send_incomplete(data, 0, None)
        else:
            conn._tick_send_incomplete(data, 0, OSError(err, strerror(err).decode()))

    cdef on_events(self, uint32_t mask):
        cdef ConnFields conn = self.conn
        p, fast = self.p, self.fast
        if fast is None:
            fast = p.fast
            if fast is None or mask != EPOLLIN or not api.alive(fast) or conn._closed:
                conn._on_events(mask)
                return
            self._arm(fast)
        elif mask != EPOLLIN or not api.alive(fast) or conn._closed:
            conn._on_events(mask)
            return
        cdef Py_ssize_t budget = self.budget, cap = self.cap, want
        cdef ssize_t n
        cdef char *buf
        cdef int err
        cdef double now
        cdef int64_t now_ms
        cdef int drained
        cdef int passed
        conn._read_queued = False
        while True:
            if budget <= 0:
                conn._queue_read_more()
                return
            if self.bulk:
                passed = self._bulk_pass(fast, &budget)
                if passed == PASS_DONE:
                    return
                if passed == PASS_AGAIN:
                    continue
                # PASS_NO: this read goes the one-recv way
            want = api.slot(fast, cap, &buf)  # RecvBuffer.writable_view's policy, in C
            if want <= 0:
                conn._read()  # a full buffer: the Python path decodes to make room
                return
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
            budget -= n
            conn.rx_bytes += n
            if n >= api.nogil_bytes[0] and self.real_mono and self.real_wall:
                self.bulk = True  # a busy link: its next reads are bulk passes
            now = _seconds(CLOCK_MONOTONIC) if self.real_mono else conn._mono()
            now_ms = <int64_t>(_seconds(CLOCK_REALTIME) * 1000) if self.real_wall else conn._clock_ms()
            try:
                # commit, last_rx, the FastLink; when it took every byte, last_frame and _partial_since
                drained = api.commit_run(fast, n, now, now_ms)
            except Exception as exc:  # a listener's: the link closes as from the Python path
                conn._fault(exc)
                return
            if not drained:
                rx = self.rx
                conn._decode_rest(now, now_ms)  # what the FastLink left: the Python path
                if conn._closed or not p.alive or p.fast is not fast or conn._rx is not rx:
                    if n == want:
                        conn._read()
                    return
            if n < want:
                return  # short read: the kernel buffer is drained

    cdef int _bulk_pass(self, fast, Py_ssize_t *budget) except -1:
        """A bulk pass (codecs/_reader_api.pxi): ``recv`` and take, ``recv`` and take, with the GIL
        released once for all of it, until the kernel's buffer is drained (a short read or EAGAIN),
        ``budget`` is spent, or the bytes left need the Python path; then what the pass did is
        published and what ended it is handled as the one-recv way handles it. PASS_NO: the link is
        not in a state a pass handles (nothing read)."""
        cdef ConnFields conn = self.conn
        cdef void *f = <void *>fast
        cdef char *buf
        cdef Py_ssize_t want = 0, total = 0, left = budget[0]
        cdef ssize_t n = 0
        cdef int err = 0, stop
        cdef double now = 0
        cdef int64_t now_ms = 0
        if not api.bulk_begin(fast, self.cap):
            return PASS_NO
        with nogil:
            while True:
                if left <= 0:
                    stop = STOP_BUDGET
                    break
                want = api.bulk_slot(f, &buf)
                if want <= 0:
                    stop = STOP_FULL
                    break
                n = recv(self.fd, buf, want, MSG_DONTWAIT)  # never waits, whatever the socket's mode
                if n < 0:
                    err = errno
                    stop = STOP_AGAIN if err == EAGAIN else (STOP_EINTR if err == EINTR else STOP_ERROR)
                    break
                if n == 0:
                    stop = STOP_EOF
                    break
                left -= n
                total += n
                now = _seconds(CLOCK_MONOTONIC)
                now_ms = <int64_t>(_seconds(CLOCK_REALTIME) * 1000)
                if not api.bulk_take(f, n, now, now_ms):
                    stop = STOP_PYTHON
                    break
                if n < want:
                    stop = STOP_SHORT  # the kernel buffer is drained
                    break
        api.bulk_end(fast)
        budget[0] = left
        conn.rx_bytes += total
        if 0 < total < api.nogil_bytes[0]:
            self.bulk = False  # a trickle again (the whole pass read less): the next read goes the one-recv way
        if stop == STOP_AGAIN or stop == STOP_SHORT:
            return PASS_DONE
        if stop == STOP_BUDGET or stop == STOP_EINTR:
            return PASS_AGAIN
        if stop == STOP_FULL or stop == STOP_EOF:
            conn._read()  # the Python path: it decodes to make room, or reads the EOF again and ends the link
            return PASS_DONE
        if stop == STOP_ERROR:
            conn._recv_failed(OSError(err, strerror(err).decode()))
            return PASS_DONE
        # STOP_PYTHON: the Python path decodes what the pass left (as after a one-recv read)
        p, rx = self.p, self.rx
        conn._decode_rest(now, now_ms)
        if conn._closed or not p.alive or p.fast is not fast or conn._rx is not rx:
            if n == want:
                conn._read()
            return PASS_DONE
        return PASS_DONE if n < want else PASS_AGAIN
