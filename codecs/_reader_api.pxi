# Included by _core.pyx (after FastLink).
#
# --- the compiled reader's calls (gateway/net/_reactor.pyx FastReader) ------------------------
#
# The reader is in gateway/net (the IO layer), the buffer and the link's fields here: it reaches
# them through these functions, handed over as a capsule (``READER_API``, the CPython C-API
# pattern of datetime's CAPI), so that a read is C calls only. Loop thread of the link only.
#
# Two ways through a read:
#
# * one ``recv`` with the GIL held (``slot``, then ``commit_run``: the FastLink's ``run``, which
#   goes GIL-free itself for a run of 2 KiB or more). A link that sends a frame now and then (line
#   load) is read this way: one event, one frame, and no GIL hand-over to pay for;
# * a **bulk pass** (``bulk_begin``, then ``bulk_slot`` / ``recv`` / ``bulk_take`` in a loop without
#   the GIL, then ``bulk_end``), for a link whose last read brought at least 2 KiB. The GIL is
#   released once for the pass, not once per run: the ``recv`` (the kernel's copy), the frames
#   and a read's trailing partial frame are handled without it, and what the pass did is published
#   to the Python fields once, at its end. With two IO loops, what one loop does with the GIL is
#   what the other waits for; a pass holds it for its start and its end only.

cdef inline bint _plain_partial(const uint8_t *p, Py_ssize_t n) noexcept nogil:
    """The ``n`` bytes at ``p`` (n > 0) are the start of a frame still to come: what
    ``StreamDecoder._step`` answers NEED_DATA for, with no garbage run open, no end of stream and no
    abandon request (bulk_begin's conditions). Anything else (garbage, a bad header, a whole frame
    the FastLink left) is the Python decoder's to judge."""
    cdef Py_ssize_t total
    cdef uint32_t flags, length
    if p[0] != 0xA5:
        return False
    if n == 1:
        return True
    if p[1] != 0x5A:
        return False
    if n < HEADER_LEN:
        return True
    flags = p[4]
    if p[2] != 1 or flags & ~1 or p[5]:  # check_header: version, flag bits, reserved byte
        return False
    length = be16(p + 22)
    if length > MAX_PAYLOAD:
        return False
    total = HEADER_LEN + length + (MAC_LEN if flags else 0) + CRC_LEN
    return n < total


cdef inline void _slot_policy(char *base, Py_ssize_t *r, Py_ssize_t *w, Py_ssize_t cap) noexcept nogil:
    """``RecvBuffer.writable_view``'s policy on a buffer's indexes ``r`` / ``w``: an empty buffer restarts
    at 0; a rest is slid to the front (``RecvBuffer.compact``) when less than half of the ``cap`` bytes
    are left behind it."""
    if r[0]:
        if r[0] == w[0]:
            r[0] = w[0] = 0
        elif cap - w[0] < cap >> 1:
            memmove(base, base + r[0], w[0] - r[0])
            w[0] -= r[0]
            r[0] = 0


cdef int _reader_alive(object fast) except -1:
    """The link's liveness flag (``LinkProtocol.alive``: UP). A FastLink built without its link
    (``link=None``: run from Python only) is never alive for the reader: the Python path reads it."""
    cdef LinkFields link = (<FastLink>fast).link
    return link is not None and link.alive


cdef Py_ssize_t _reader_slot(object fast, Py_ssize_t cap, char **ptr) except -1:
    """Where the next ``recv`` goes: ``ptr`` and the room there, after :func:`_slot_policy`.
    0: the buffer is full."""
    cdef ReadableFields rx = (<FastLink>fast).source
    cdef Py_ssize_t r = rx._read, w = rx._write
    cdef char *base
    if (<FastLink>fast).link is None:
        raise TypeError("the compiled reader needs a FastLink built with its link (speedups.fast_link(..., link))")
    base = PyByteArray_AS_STRING(rx._buf)
    _slot_policy(base, &r, &w, cap)
    rx._read, rx._write = r, w
    ptr[0] = base + w
    return cap - w


cdef int _reader_commit_run(object fast, Py_ssize_t n, double now, int64_t now_ms) except -1:
    """``n`` bytes were received at the last slot at ``now`` (monotonic s) / ``now_ms``: commit them,
    record the link's ``last_rx``, run the FastLink. Returns 1 when it took every byte (then the
    link's ``last_frame`` is ``now`` if a frame was accepted, and no partial frame waits: what
    ``LinkProtocol._decode`` records), 0 when the Python path must decode the rest. A listener's
    exception propagates (the bytes committed and ``last_rx`` recorded, as from the Python path)."""
    cdef FastLink f = <FastLink>fast
    cdef LinkFields link = f.link
    f.source._write += n
    link.last_rx = now
    if not f.run(now_ms):
        return 0
    if f.accepted:
        link.last_frame = now
    # drained: nothing waits. Else this read took frames and left bytes: a partial frame's wait starts
    # again now (``_decode``: progress, then a rest), which the Python decode of the rest cannot know
    link._partial_since = None
    return 1 if f.drained else 0


cdef int _reader_bulk_begin(object fast, Py_ssize_t cap) except -1:
    """Start a bulk pass over the link's buffer (``cap`` bytes: the reader's RecvBuffer). 1: started;
    0: the link is not in the state a pass handles (not alive, a decoder with something open: a
    garbage run, events, an abandon request; a listener of every change), so the reader goes the
    one-recv way. The listeners' watch is taken now: one subscribing during the pass is served from
    the next read on (as for a GIL-free run)."""
    cdef FastLink f = <FastLink>fast
    cdef LinkFields link = f.link
    cdef DecoderFields dec = f.decoder
    cdef ReadableFields src = f.source
    cdef ChecksFields checks = f.checks
    cdef BulkPass *b = &f.bulk
    if link is None or not link.alive or dec._garbage_start is not None or dec._events or dec._abandon:
        return 0
    if PyByteArray_GET_SIZE(src._buf) != cap:
        return 0  # (not the reader's RecvBuffer)
    listeners = f.objects._listeners
    if listeners is not f.watch_src:
        f._watch(listeners)
    if f.watch_any_every:
        return 0
    memset(b, 0, sizeof(BulkPass))
    b.base = PyByteArray_AS_STRING(src._buf)
    b.r, b.w, b.cap = src._read, src._write, cap
    b.offset_ms = checks.offset_ms
    b.max_age = f.receiver.max_age_ms
    hb = checks.hb_last
    b.c.hb_last = -1 if hb is None else <int64_t>hb
    ps = link._partial_since
    b.partial_since = -1.0 if ps is None else <double>ps
    b.last_rx = b.last_frame = -1.0
    return 1


cdef Py_ssize_t _reader_bulk_slot(FastLink f, char **ptr) noexcept nogil:
    """Where the pass's next ``recv`` goes, and the room there (``_slot_policy`` on the pass's
    indexes). 0: the buffer is full."""
    cdef BulkPass *b = &f.bulk
    _slot_policy(b.base, &b.r, &b.w, b.cap)
    ptr[0] = b.base + b.w
    return b.cap - b.w


cdef int _reader_bulk_take(FastLink f, Py_ssize_t n, double now, int64_t now_ms) noexcept nogil:
    """``n`` bytes were received at the pass's slot at ``now`` / ``now_ms``: take the frames
    (``FastLink._run_nogil``) and keep the link's records as ``LinkProtocol._decode`` would (the last
    bytes, the last accepted frame, a partial frame's wait). 1: every byte is taken, or what is left
    is a frame still to come; 0: the bytes left need the Python path (the pass ends; the bytes are
    committed)."""
    cdef BulkPass *b = &f.bulk
    cdef Py_ssize_t pos = 0
    cdef int64_t took = b.c.took, accepted = b.c.accepted
    b.w += n
    b.last_rx = now
    if b.w - b.r >= HEADER_LEN:
        f._run_nogil(<const uint8_t *>b.base + b.r, b.w - b.r, &pos, now_ms, b.offset_ms, b.max_age, &b.c)
        b.r += pos
        b.consumed += pos
    if b.c.accepted != accepted:
        b.last_frame = now
    if b.r == b.w:
        b.partial_since = -1.0
        return 1
    if b.c.took != took:
        b.partial_since = -1.0  # progress, then a rest: its wait starts now (see _reader_commit_run)
    if not _plain_partial(<const uint8_t *>b.base + b.r, b.w - b.r):
        return 0
    if b.partial_since < 0:
        b.partial_since = now
    return 1


cdef int _reader_bulk_end(object fast) except -1:
    """End the pass: publish what it did to the Python fields (the buffer's indexes, the decoder's
    offset, the link's counters and times, the errors counted), as ``FastLink.run`` and
    ``_reader_commit_run`` do for their reads."""
    cdef FastLink f = <FastLink>fast
    cdef BulkPass *b = &f.bulk
    cdef LinkFields link = f.link
    f.source._read, f.source._write = b.r, b.w
    if b.c.took:
        f._publish(b.c.rx, b.c.applied, b.c.copies, b.c.hb_last, b.consumed)
        f.frames += b.c.took
        f.frames_nogil += b.c.took
        f.frames_bulk += b.c.took
    if b.last_rx >= 0:
        link.last_rx = b.last_rx
        link._partial_since = None if b.partial_since < 0 else b.partial_since
    if b.last_frame >= 0:
        link.last_frame = b.last_frame
    f._count_errors(&b.c)
    return 0


cdef struct HbTick:
    # what _reader_hb_tick hands the compiled heartbeat tick (gateway/net/_reactor.pyx declares the same)
    uint32_t counter       # the link's heartbeat counter after this tick
    uint16_t src, dst      # the gateway's id, the device's (0 before the HELLO)
    PyObject *tx_key       # borrowed: the protocol's ``_tx_key`` (None, or bytes)


cdef int _reader_hb_tick(object p, double now, HbTick *t) except -1:
    """The steady heartbeat tick's protocol side (``_reactor.FastReader.heartbeat`` says when a tick is
    steady), on the C fields of ``LinkFields``: 1 when the link's part of it holds, with the counter
    moved on (``_hb_counter`` + 1 mod 2**32), the frame counted (``tx_frames`` + 1) and ``t`` filled;
    0 when it does not (nothing changed: the reference tick runs). It checks, in the order and with
    the formulas of the Python path: the compiled steady path on, the link alive, no partial frame,
    no pending output nor action bits; fields ``encode`` takes (exactly ``int``, in range; the
    key None or bytes); not silent and no dead deadline before the next tick. An exception (a
    value out of a C type's range) means the same as 0 to the caller, which catches it."""
    cdef LinkFields link = <LinkFields?>p
    cdef double last, hb_s
    cdef long hb_ms, dead_after
    if link.fast is None or not link.alive or link._partial_since is not None or link.outbox or link._acts:
        return 0
    settings = link.ctx.settings
    hb_ms_o, dead_after_o, src_o, dst_o = link.heartbeat_ms, settings.dead_after, settings.id, link.device_id or 0
    tx_key, hb = link._tx_key, link._hb_counter
    # what encode() takes without a FieldError (check_uint: exactly int, in range)
    if not (type(hb_ms_o) is int and type(dead_after_o) is int and type(src_o) is int and type(dst_o) is int
            and type(hb) is int and 0 <= src_o <= 0xFFFF and 0 <= dst_o <= 0xFFFF
            and (tx_key is None or type(tx_key) is bytes)):
        return 0
    hb_ms, dead_after, last = hb_ms_o, dead_after_o, link.last_frame  # (OverflowError: out of range)
    hb_s = hb_ms / 1000.0
    # not silent (_judge_silence: READ_FIRST, then a close) and no dead deadline before the next tick
    # (heartbeat_tick: ARM_DEAD), in the same floating-point operations as the Python path
    if (now - last) * 1000.0 > dead_after * <double>hb_ms or last + dead_after * hb_s < now + hb_s:
        return 0
    t.counter = <uint32_t>((<uint64_t>hb + 1) & 0xFFFFFFFF)  # (OverflowError: a counter under 0 or over 64 bits)
    t.src, t.dst = <uint16_t>src_o, <uint16_t>dst_o
    t.tx_key = <PyObject *>tx_key
    link.tx_frames += 1  # first: if it raises, nothing has changed (and the reference meets it too)
    link._hb_counter = t.counter
    return 1


cdef int _reader_prefetch(PyObject *fp, int depth) noexcept:
    """Start loading into the cache what a read of the FastLink ``fp`` touches, one level of pointers
    at a time (``Poller.dispatch`` calls it for the events ahead of the one it handles: at line load
    each is a link cold in the cache). ``depth`` 1: the FastLink's own later lines and the objects it
    points to (its decoder, checks, sender and its lock and window); 2: what those
    point to (the buffer's bytearray, the decoder's event queue, the checks' two numbers, the lock's
    semaphore, the window's bits); 3: the bytes where the next ``recv`` writes. Each depth reads the
    pointers the one before loaded, so the caller runs them an event apart. It reads pointers only:
    no reference is taken and nothing is written. Returns how many lines it asked for (the caller
    counts them: a call whose result is used is not dropped by the compiler, see
    ``Poller._prefetch``). Loop thread, GIL held."""
    cdef FastLink f = <FastLink>fp  # (a borrowed pointer cast: the caller's slot holds the reader, the reader the FastLink)
    cdef ReadableFields src
    cdef char *c = <char *>fp
    if depth == 1:
        # (the buffer and the protocol, ``source`` and ``link``, are the reader's: Poller._prefetch
        # asked for them a step before)
        __builtin_prefetch(c + 128)
        __builtin_prefetch(c + 192)
        __builtin_prefetch(<PyObject *>f.decoder)
        __builtin_prefetch(<PyObject *>f.checks)
        __builtin_prefetch(<PyObject *>f.sender)
        __builtin_prefetch(<PyObject *>f.lock)
        __builtin_prefetch(<PyObject *>f.window)
        __builtin_prefetch(&f.offs[0])
        return 8
    if depth == 2:
        __builtin_prefetch(<PyObject *>f.source._buf)
        __builtin_prefetch(<PyObject *>f.decoder._events)
        __builtin_prefetch(<PyObject *>f.checks.offset_ms)
        __builtin_prefetch(<PyObject *>f.checks.hb_last)
        __builtin_prefetch(<void *>f.lock.lock)
        __builtin_prefetch(<void *>f.window._bits)
        return 6
    src = f.source
    __builtin_prefetch(PyByteArray_AS_STRING(src._buf) + src._write, 1)
    return 1


ctypedef struct ReaderApi:
    int (*alive)(object) except -1
    Py_ssize_t (*slot)(object, Py_ssize_t, char **) except -1
    int (*commit_run)(object, Py_ssize_t, double, int64_t) except -1
    int (*bulk_begin)(object, Py_ssize_t) except -1
    Py_ssize_t (*bulk_slot)(FastLink, char **) noexcept nogil
    int (*bulk_take)(FastLink, Py_ssize_t, double, int64_t) noexcept nogil
    int (*bulk_end)(object) except -1
    int (*hb_tick)(object, double, HbTick *) except -1
    int (*prefetch)(PyObject *, int) noexcept
    Py_ssize_t *nogil_bytes

cdef ReaderApi _reader_api
_reader_api.alive = _reader_alive
_reader_api.slot = _reader_slot
_reader_api.commit_run = _reader_commit_run
_reader_api.bulk_begin = _reader_bulk_begin
_reader_api.bulk_slot = _reader_bulk_slot
_reader_api.bulk_take = _reader_bulk_take
_reader_api.bulk_end = _reader_bulk_end
_reader_api.hb_tick = _reader_hb_tick
_reader_api.prefetch = _reader_prefetch
_reader_api.nogil_bytes = &nogil_bytes
#: the capsule of ``ReaderApi`` (its name says the layout; gateway/net/_reactor.pyx declares the same)
READER_API = PyCapsule_New(<void *>&_reader_api, b"railcodecs._core.READER_API.v4", NULL)
