# cython: language_level=3
"""The compiled fast path of a device link (issue 14): decode, ICD checks and state apply in C.

What is here, and what each pure-Python original is (the reference: same names, same results,
proven by tests/test_fastpath_differential.py):

* :func:`crc32`, :func:`sha256`, :func:`hmac_sha256`: ``icd_hash.h`` (no OpenSSL, no zlib
  headers needed); zlib.crc32 and hmac/hashlib.
* :class:`SequenceWindow`: ``railcodecs.sequence.SequenceWindow`` with the three bitmaps as
  arrays of 64-bit words instead of Python ints.
* :class:`ObjectTable`: one of ``ObjectState``'s tables, ``(device, object) -> (value,
  applied_ms)``, as a compact hash table of C structs behind a small mapping interface, so
  that applying an unchanged value stores two C fields and allocates nothing.
* :class:`FastLink`: the steady path of one confirmed TCP link. Per call it walks the frames at
  the head of the link's byte source and handles every one that is a good HEARTBEAT or status
  list (sync, version, flags, length, CRC, session MAC, payload, destination, source, age,
  heartbeat counter, sequence window, apply) the way ``StreamDecoder`` + ``Receiver.check`` +
  ``ObjectState.apply`` would. It stops, without touching the frame, at the first frame it
  would judge differently from a plain accept (any error, a drop by age, a heartbeat gap, a
  type it does not handle); the Python path then
  decodes that one frame and the link calls :meth:`FastLink.run` again. So every error and
  every rare message has exactly one implementation, the Python one.
* ``CLock``, ``Sender`` (``_sender.pxi``): a mutex C takes without the GIL, and a device's or a
  train's ``SenderState`` with its counters in C fields.
* ``TrainTable``, ``TrainBatch`` (``_train_state.pxi``, ``_train_batch.pxi``, included at the
  end): ``ObjectState.trains``, and the trains' UDP endpoint's per-batch step:
  each datagram of a recvmmsg batch decoded, checked (sync .. MAC, destination, source, age,
  session reset, window) and applied in C, with what Python must see handed over once per batch
  (proven the same as the pure step by tests/test_udp_differential.py).

Threading: a FastLink belongs to its link's loop thread. A large run of buffered bytes (and a
busy link's bulk pass, ``_reader_api.pxi``) is taken without the GIL, so two IO loops decode in
parallel: the scan (framing, CRC, MAC, payload checks) with no lock, the receiver checks and the
apply of each batch under the sender's :class:`CLock` (the lock the Python receiver takes) and the
object tables' read locks. A table grows only under its write lock, with the GIL; readers in other
threads see whole values.
"""
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, int32_t, int16_t
from libc.stdlib cimport malloc, calloc, realloc, free
from libc.string cimport memset, memcpy, memmove
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.object cimport PyObject
from cpython.pycapsule cimport PyCapsule_New
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock, PyThread_free_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK, NOWAIT_LOCK,
                               PyLockStatus, PY_LOCK_ACQUIRED)

cdef extern from "pythread.h":
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock, long long microseconds, int intr_flag) nogil

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_rwlock_t:
        pass
    ctypedef struct pthread_rwlockattr_t:
        pass
    int pthread_rwlock_init(pthread_rwlock_t *, const pthread_rwlockattr_t *)
    int pthread_rwlock_destroy(pthread_rwlock_t *)
    int pthread_rwlock_rdlock(pthread_rwlock_t *)
    int pthread_rwlock_wrlock(pthread_rwlock_t *)
    int pthread_rwlock_trywrlock(pthread_rwlock_t *)
    int pthread_rwlock_unlock(pthread_rwlock_t *)
    int pthread_rwlockattr_init(pthread_rwlockattr_t *)
    int pthread_rwlockattr_destroy(pthread_rwlockattr_t *)
    int pthread_rwlockattr_setkind_np(pthread_rwlockattr_t *, int)
    enum:
        PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP

cdef extern from "icd_hash.h" nogil:
    ctypedef struct rg_sha256_ctx:
        pass
    ctypedef struct rg_hmac_key:
        pass
    uint32_t rg_crc32(uint32_t crc, const uint8_t *p, size_t n)
    void rg_sha256_init(rg_sha256_ctx *c)
    void rg_sha256_update(rg_sha256_ctx *c, const uint8_t *p, size_t n)
    void rg_sha256_final(rg_sha256_ctx *c, uint8_t *out)
    void rg_hmac_init(rg_hmac_key *k, const uint8_t *key, size_t keylen)
    void rg_hmac_sha256(const rg_hmac_key *k, const uint8_t *msg, size_t n, uint8_t *out)
    int rg_ct_equal(const uint8_t *a, const uint8_t *b, size_t n)


# --- hashes (wrappers for tests and tools) ---------------------------------------------------

def crc32(const uint8_t[::1] data, uint32_t crc=0):
    """zlib.crc32(data, crc)."""
    return rg_crc32(crc, &data[0] if data.shape[0] else NULL, data.shape[0])


def sha256(const uint8_t[::1] data):
    """hashlib.sha256(data).digest()."""
    cdef rg_sha256_ctx c
    cdef uint8_t out[32]
    rg_sha256_init(&c)
    rg_sha256_update(&c, &data[0] if data.shape[0] else NULL, data.shape[0])
    rg_sha256_final(&c, out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


def hmac_sha256(const uint8_t[::1] key, const uint8_t[::1] msg):
    """hmac.new(key, msg, hashlib.sha256).digest()."""
    cdef rg_hmac_key k
    cdef uint8_t out[32]
    rg_hmac_init(&k, &key[0] if key.shape[0] else NULL, key.shape[0])
    rg_hmac_sha256(&k, &msg[0] if msg.shape[0] else NULL, msg.shape[0], out)
    return PyBytes_FromStringAndSize(<char *>out, 32)


cdef extern from *:
    # GCC's and Clang's hint: start loading the line at ``p`` (a second argument 1: for writing). A
    # function whose only effect is this hint is deleted by GCC as free of side effects, so every
    # helper that issues it returns how many lines it asked for, and its caller counts them
    # (bench/results/prefetch-dropped-by-gcc-2026-11-30.txt)
    void __builtin_prefetch(const void *p, ...) nogil


# --- the sequence window -----------------------------------------------------------------------

cdef extern from *:
    """
    #define RG_SEQ_MOD 0xFFFFFFFFLL  /* numbers 1..2**32-1 on the circle */
    #define RG_HALF 0x7FFFFFFFLL     /* RG_SEQ_MOD // 2 */
    """
    const int64_t SEQ_MOD "RG_SEQ_MOD"
    const int64_t HALF "RG_HALF"

# verdicts: the same numbers as railcodecs.sequence
cdef enum:
    V_APPLY = 0
    V_DUPLICATE = 1
    V_STALE = 2
    V_COPY = 3


cdef class SequenceWindow:
    """``railcodecs.sequence.SequenceWindow`` in C: the same API and verdicts (see that module).

    ``seen``, ``on_b`` and ``copied`` read as Python ints (bit k: seq last - k), as there. Here they
    are one ring of ``R`` = 64 x ceil(window / 64) positions, the position of ``last`` at ``head``
    and seq ``last - k`` at ``head - k`` (mod R), so a newer seq moves ``head`` and clears the
    positions it passes instead of shifting three bitmaps of ``window`` bits (a frame's check touches
    one or two words). Each word of the three maps is stored beside the others (``_bits[3w + m]``, m:
    0 seen, 1 on net B, 2 copied), so a check reads one cache line. Positions ``window`` and more
    behind ``last`` (when R > window) are never read, and are cleared when ``head`` reaches them.
    Not thread-safe by itself: the receiver holds the sender's lock around :meth:`check`."""

    cdef public int64_t last
    cdef readonly int window
    cdef int nw
    cdef int64_t ring     # R, in bits
    cdef int64_t head     # the ring position of ``last``
    cdef uint64_t *_bits

    def __cinit__(self, int window=1024):
        if window < 1:
            raise ValueError(f"sequence window must be at least 1, got {window}")
        self.window = window
        self.nw = (window + 63) // 64
        self.ring = <int64_t>self.nw * 64
        self._bits = <uint64_t *>calloc(3 * self.nw, sizeof(uint64_t))
        if self._bits == NULL:
            raise MemoryError()
        self.last = 0
        self.head = 0

    def __dealloc__(self):
        free(self._bits)

    cdef object _as_int(self, int m):
        """Map ``m`` (0 seen, 1 on_b, 2 copied) as the pure window's int: bit k for seq last - k."""
        cdef int64_t k, pos
        cdef int i
        cdef uint64_t *line = <uint64_t *>calloc(self.nw, sizeof(uint64_t))  # the map unrolled from last back
        if line == NULL:
            raise MemoryError()
        for k in range(self.window):
            pos = self.head - k
            if pos < 0:
                pos += self.ring
            if (self._bits[3 * (pos >> 6) + m] >> (pos & 63)) & 1:
                line[k >> 6] |= (<uint64_t>1) << (k & 63)
        v = 0
        for i in range(self.nw - 1, -1, -1):
            v = (v << 64) | line[i]
        free(line)
        return v

    @property
    def seen(self):
        return self._as_int(0)

    @property
    def on_b(self):
        return self._as_int(1)

    @property
    def copied(self):
        return self._as_int(2)

    def reset(self):
        """Forget the sender's history (a new session)."""
        self.c_reset()

    cdef void c_reset(self) noexcept nogil:
        self.last = 0
        self.head = 0
        memset(self._bits, 0, 3 * self.nw * sizeof(uint64_t))

    def applies(self, seq):
        """Whether :meth:`check` of ``seq`` would now say APPLY, changing nothing; see sequence.py."""
        return self.c_applies(seq)

    def check(self, seq, net=None):
        """Classify ``seq`` arriving on ``net`` (0 A, 1 B, None: no dual net); see sequence.py."""
        cdef int64_t skipped = 0
        cdef int v = self.c_check(seq, -1 if net is None else (1 if net == 1 else 0), &skipped)
        return v, skipped

    cdef inline void _advance(self, int64_t d) noexcept nogil:
        """Move ``head`` ``d`` positions on (0 < d < window), clearing the positions it passes."""
        cdef int64_t pos = self.head + 1, left = d, n
        cdef int w, b
        cdef uint64_t keep
        if pos == self.ring:
            pos = 0
        while left:
            w = <int>(pos >> 6)
            b = <int>(pos & 63)
            n = 64 - b
            if n > left:
                n = left
            keep = ~(((<uint64_t>0xFFFFFFFFFFFFFFFF) >> (64 - n)) << b)
            self._bits[3 * w] &= keep
            self._bits[3 * w + 1] &= keep
            self._bits[3 * w + 2] &= keep
            pos += n
            if pos == self.ring:
                pos = 0
            left -= n
        pos = self.head + d
        self.head = pos - self.ring if pos >= self.ring else pos

    cdef inline bint c_applies(self, uint64_t seq) noexcept nogil:
        """Whether :meth:`c_check` of ``seq`` would now say APPLY (on either net), changing nothing:
        FastLink's GIL-free run looks up a frame's objects only for a frame that will be applied."""
        cdef int64_t d
        if seq == 0 or seq > SEQ_MOD:
            return False
        if self.last == 0:
            return True
        d = (<int64_t>seq - self.last) % SEQ_MOD
        if d < 0:
            d += SEQ_MOD
        return 0 < d <= HALF

    cdef int c_check(self, uint64_t seq, int net, int64_t *skipped) noexcept nogil:
        """``net``: -1 none, 0 A, 1 B. Returns the verdict; ``skipped`` for APPLY."""
        cdef uint64_t b = 1 if net == 1 else 0
        cdef int64_t d, back, pos
        cdef uint64_t bit
        cdef uint64_t *word
        skipped[0] = 0
        if seq == 0 or seq > SEQ_MOD:
            return V_STALE
        if self.last == 0:
            self.c_reset()
            self.last = <int64_t>seq
            self._bits[0] = 1
            self._bits[1] = b
            return V_APPLY
        d = (<int64_t>seq - self.last) % SEQ_MOD
        if d < 0:
            d += SEQ_MOD
        if d > HALF:
            d -= SEQ_MOD
        if d > 0:
            if d < self.window:
                self._advance(d)
            else:
                memset(self._bits, 0, 3 * self.nw * sizeof(uint64_t))
                self.head = 0
            word = &self._bits[3 * (self.head >> 6)]
            bit = (<uint64_t>1) << (self.head & 63)
            word[0] |= bit
            if b:
                word[1] |= bit
            self.last = <int64_t>seq
            skipped[0] = d - 1
            return V_APPLY
        back = -d
        if back >= self.window:
            return V_STALE
        pos = self.head - back
        if pos < 0:
            pos += self.ring
        word = &self._bits[3 * (pos >> 6)]
        bit = (<uint64_t>1) << (pos & 63)
        if word[0] & bit:
            if net >= 0 and not (word[2] & bit) and ((word[1] & bit) != 0) != (b != 0):
                word[2] |= bit
                return V_COPY
            return V_DUPLICATE
        word[0] |= bit
        if b:
            word[1] |= bit
        return V_STALE


# --- the object table ----------------------------------------------------------------------------

cdef struct Entry:
    uint32_t key
    uint8_t value
    int64_t ms


cdef inline Py_ssize_t home_slot(uint32_t key, Py_ssize_t mask) noexcept nogil:
    """Where ``key``'s probe starts (see :func:`slot_of`)."""
    cdef uint64_t h = <uint64_t>key * <uint64_t>0x9E3779B97F4A7C15
    return <Py_ssize_t>((h ^ (h >> 32)) & <uint64_t>mask)


cdef inline Py_ssize_t slot_of(const int32_t *index, const Entry *entries, Py_ssize_t mask,
                               uint32_t key) noexcept nogil:
    """An ObjectTable's index slot holding ``key``, or the empty slot where it would go (linear probing).

    The key is ``device << 16 | object``: the hash must spread both halves over the low bits the mask
    keeps. A 64-bit multiply by the golden ratio carries every key bit into the upper half of the
    product only, so the upper half is folded back onto the lower (``h ^ h >> 32``). (The earlier
    hash took bits 7.. of the product, which the device bits do not reach in a small table: every
    device's object 100 fell on one slot, 5.5 probes a lookup with 10 devices and 8-44 with 1,000;
    now 1.2: bench/results/object-table-hash-2026-11-29.txt.)"""
    cdef Py_ssize_t s = home_slot(key, mask)
    cdef int32_t e
    while True:
        e = index[s]
        if e < 0 or entries[e].key == key:
            return s
        s = (s + 1) & mask


cdef enum:
    PUT_NEW = 0x200   # ObjectTable.put: a new key (a change returns 1 + the old value, 1..256)
    WATCH_EVERY = -1  # a listener's watch (gateway/line/object_state.py EVERY): every change


cdef class ObjectTable:
    """``(device_id, object_id) -> (value, applied_ms)``, the compiled form of one ObjectState dict.

    Entries live in insertion order in one array of C structs (like CPython's compact dict) and a
    power-of-two index of int32 slots with linear probing finds them. Nothing is ever deleted.
    The mapping interface is what the gateway and its tests use: ``get``, ``[]``, ``in``,
    ``len``, iteration, ``items``, ``copy`` (a dict).

    Threading: the arrays change (a new key, which may grow them) only with the GIL held and
    ``rw`` held for writing; FastLink's GIL-free run holds ``rw`` for reading while it changes the
    value and time of keys that exist. So the arrays never move under a GIL-free run, nor under
    a reader holding the GIL; the value and time of one device's entry are written by one thread
    at a time (under the sender's lock), and a reader sees each field whole (one device's value
    and time may be one frame apart). ``rw`` prefers writers, and a GIL-free run takes the three
    tables' locks in one order after the sender's: no cycle."""

    cdef Entry *entries
    cdef int32_t *index
    cdef Py_ssize_t n, cap, mask
    cdef pthread_rwlock_t rw

    def __cinit__(self):
        cdef pthread_rwlockattr_t attr
        pthread_rwlockattr_init(&attr)
        pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP)
        rc = pthread_rwlock_init(&self.rw, &attr)
        pthread_rwlockattr_destroy(&attr)
        if rc:
            raise MemoryError()
        self.n = 0
        self.cap = 64
        self.mask = 127
        self.entries = <Entry *>malloc(self.cap * sizeof(Entry))
        self.index = <int32_t *>malloc((self.mask + 1) * sizeof(int32_t))
        if self.entries == NULL or self.index == NULL:
            raise MemoryError()
        memset(self.index, 0xFF, (self.mask + 1) * sizeof(int32_t))

    def __dealloc__(self):
        free(self.entries)
        free(self.index)
        pthread_rwlock_destroy(&self.rw)

    cdef inline Py_ssize_t _slot(self, uint32_t key) noexcept nogil:
        """Index slot holding ``key``, or the empty slot where it would go."""
        return slot_of(self.index, self.entries, self.mask, key)

    cdef int _grow(self) except -1:
        cdef Py_ssize_t i, s
        cdef Entry *ne
        cdef int32_t *ni
        if self.n == self.cap:
            ne = <Entry *>realloc(self.entries, 2 * self.cap * sizeof(Entry))
            if ne == NULL:
                raise MemoryError()
            self.entries = ne
            self.cap *= 2
        if 2 * (self.n + 1) > self.mask + 1:
            ni = <int32_t *>malloc(2 * (self.mask + 1) * sizeof(int32_t))
            if ni == NULL:
                raise MemoryError()
            free(self.index)
            self.index = ni
            self.mask = 2 * self.mask + 1
            memset(self.index, 0xFF, (self.mask + 1) * sizeof(int32_t))
            for i in range(self.n):
                s = self._slot(self.entries[i].key)
                self.index[s] = <int32_t>i
        return 0

    cdef int put(self, uint32_t key, uint8_t value, int64_t ms) except -1:
        """Store (the GIL held); returns 0 when only the time moved, ``PUT_NEW`` for a new key,
        else 1 + the old value (a change: the listeners' watch needs where it came from). A new key
        is stored holding ``rw`` for writing, waited for with the GIL released."""
        cdef int32_t e = self.index[self._slot(key)]
        if e >= 0:
            return self._update(e, value, ms)
        if pthread_rwlock_trywrlock(&self.rw) != 0:
            with nogil:
                pthread_rwlock_wrlock(&self.rw)
        try:
            return self._insert(key, value, ms)
        finally:
            pthread_rwlock_unlock(&self.rw)

    cdef Py_ssize_t prefetch(self, uint32_t dev_hi, const uint8_t *items, uint32_t nitems) noexcept:
        """Start loading what ``put`` of a status frame's items will touch: first every item's index
        slot, then the entries those name, so the frame's misses overlap instead of following one
        another (at line load a device's objects are cold: 10 items a frame, each a slot and an entry
        somewhere in tables of 10,000 objects). ``items``: the payload's 3-byte records (u16 object,
        u8 value) after its count, for the device ``dev_hi`` (its id << 16). The GIL held (no key is
        inserted meanwhile: the arrays do not move). Returns the lines asked for."""
        cdef uint32_t i
        cdef Py_ssize_t asked = nitems
        cdef int32_t e
        for i in range(nitems):
            __builtin_prefetch(&self.index[home_slot(dev_hi | be16(items + 3 * i), self.mask)])
        for i in range(nitems):
            e = self.index[home_slot(dev_hi | be16(items + 3 * i), self.mask)]
            if e >= 0:
                __builtin_prefetch(&self.entries[e])
                asked += 1
        return asked

    cdef inline int _update(self, int32_t e, uint8_t value, int64_t ms) noexcept:
        cdef Entry *ent = &self.entries[e]
        cdef int old = ent.value
        ent.ms = ms
        if old == value:
            return 0
        ent.value = value
        return 1 + old

    cdef int _insert(self, uint32_t key, uint8_t value, int64_t ms) except -1:
        """Store a key not found a moment ago (``rw`` held for writing): another thread may have
        stored it while this one waited for the lock without the GIL."""
        cdef Py_ssize_t s = self._slot(key)
        cdef Entry *ent
        if self.index[s] >= 0:
            return self._update(self.index[s], value, ms)
        if self.n == self.cap or 2 * (self.n + 1) > self.mask + 1:
            self._grow()
            s = self._slot(key)
        ent = &self.entries[self.n]
        ent.key, ent.value, ent.ms = key, value, ms
        self.index[s] = <int32_t>self.n
        self.n += 1
        return PUT_NEW

    cdef Entry *find(self, key) except? NULL:
        cdef uint32_t k
        cdef int32_t e
        if type(key) is not tuple or len(key) != 2:
            return NULL
        dev, obj = key
        if type(dev) is not int or type(obj) is not int or not (0 <= dev <= 0xFFFF and 0 <= obj <= 0xFFFF):
            return NULL
        k = (<uint32_t>dev << 16) | <uint32_t>obj
        e = self.index[self._slot(k)]
        return &self.entries[e] if e >= 0 else NULL

    def __getitem__(self, key):
        cdef Entry *ent = self.find(key)
        if ent == NULL:
            raise KeyError(key)
        return (ent.value, ent.ms)

    def get(self, key, default=None):
        cdef Entry *ent = self.find(key)
        return default if ent == NULL else (ent.value, ent.ms)

    def __setitem__(self, key, item):
        dev, obj = key
        value, ms = item
        if not (0 <= dev <= 0xFFFF and 0 <= obj <= 0xFFFF and 0 <= value <= 0xFF):
            raise ValueError(f"ObjectTable: ({dev}, {obj}) -> {value} out of range")
        self.put((<uint32_t>dev << 16) | <uint32_t>obj, value, ms)

    def __contains__(self, key):
        return self.find(key) != NULL

    def __len__(self):
        return self.n

    def copy(self):
        """A dict of the same items, in insertion order (what ``dict.copy`` gives for the pure table)."""
        cdef Py_ssize_t i
        cdef Entry *ent
        out = {}
        for i in range(self.n):
            ent = &self.entries[i]
            out[(ent.key >> 16, ent.key & 0xFFFF)] = (ent.value, ent.ms)
        return out

    def items(self):
        return self.copy().items()

    def keys(self):
        return self.copy().keys()

    def values(self):
        return self.copy().values()

    def __iter__(self):
        return iter(self.copy())

    def __eq__(self, other):
        if isinstance(other, ObjectTable):
            return self.copy() == other.copy()
        return self.copy() == other

    def __repr__(self):
        return f"ObjectTable({self.copy()!r})"


# --- a sender's state and its lock ------------------------------------------------------------------

include "_sender.pxi"


# --- the link's steady path ------------------------------------------------------------------------

cdef enum:
    HEADER_LEN = 24
    MAC_LEN = 16
    CRC_LEN = 4
    MAX_PAYLOAD = 4096
    T_HEARTBEAT = 0x02
    T_SECTIONS = 0x10
    T_SIGNALS = 0x11
    T_SWITCHES = 0x12
    # scan without the GIL only when this many bytes are buffered (a lone frame is not worth the switch)
    NOGIL_BYTES = 2048
    # frames scanned per GIL-free pass
    BATCH = 128


cdef inline uint32_t be16(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 8) | p[1]


cdef inline uint32_t be32(const uint8_t *p) noexcept nogil:
    return (<uint32_t>p[0] << 24) | (<uint32_t>p[1] << 16) | (<uint32_t>p[2] << 8) | p[3]


cdef inline uint64_t be64(const uint8_t *p) noexcept nogil:
    return (<uint64_t>be32(p) << 32) | be32(p + 4)


cdef Py_ssize_t scan_frame(const uint8_t *p, Py_ssize_t avail, const rg_hmac_key *key, bint mac_on,
                           int device_id, int gateway_id) noexcept nogil:
    """Length of the good frame at ``p`` that the fast path handles, else 0 (the Python path decides).

    Good: sync, version 1, flags 0 or MAC, reserved 0, length <= 4096, complete, CRC, the session
    MAC when ``mac_on`` (no MAC flag otherwise), a HEARTBEAT or status list whose payload parses
    with values in range, from ``device_id`` to ``gateway_id``."""
    cdef uint32_t length, flags, t, n, i, v, vmax
    cdef Py_ssize_t total, body
    cdef uint8_t mac[32]
    if avail < HEADER_LEN or p[0] != 0xA5 or p[1] != 0x5A or p[2] != 1 or p[5] != 0:
        return 0
    flags = p[4]
    if flags > 1 or <bint>flags != mac_on:
        return 0
    length = be16(p + 22)
    if length > MAX_PAYLOAD:
        return 0
    body = HEADER_LEN + length
    total = body + (MAC_LEN if flags else 0) + CRC_LEN
    if total > avail:
        return 0
    if be16(p + 6) != <uint32_t>device_id or be16(p + 8) != <uint32_t>gateway_id:
        return 0
    t = p[3]
    if t == T_HEARTBEAT:
        if length != 4:
            return 0
    elif T_SECTIONS <= t <= T_SWITCHES:
        if length < 2:
            return 0
        n = be16(p + HEADER_LEN)
        if length != 2 + 3 * n:
            return 0
        vmax = 6 if t == T_SIGNALS else 4
        for i in range(n):
            v = p[HEADER_LEN + 2 + 3 * i + 2]
            if v >= vmax:
                return 0
    else:
        return 0
    if rg_crc32(0, p, total - CRC_LEN) != be32(p + total - CRC_LEN):
        return 0
    if flags:
        rg_hmac_sha256(key, p, body, mac)
        if not rg_ct_equal(mac, p + body, MAC_LEN):
            return 0
    return total


cdef enum:
    GATE_STOP = 0       # a time or heartbeat counter the Python path must judge
    GATE_HEARTBEAT = 1  # a good heartbeat, taken (``hb_last`` moved)
    GATE_STATUS = 2     # a status frame in time: on to the window


cdef inline int frame_gate(const uint8_t *p, int64_t now_ms, int64_t offset_ms, int64_t max_age,
                           int64_t *hb_last) noexcept nogil:
    """A scanned frame's time and heartbeat checks, shared by FastLink's two ways through a run."""
    cdef uint64_t time_ms = be64(p + 14)
    cdef int64_t age
    cdef uint32_t counter
    if time_ms >= (<uint64_t>1 << 62):
        return GATE_STOP
    age = now_ms - (<int64_t>time_ms - offset_ms)
    if age > max_age or -age > max_age:
        return GATE_STOP
    if p[3] != T_HEARTBEAT:
        return GATE_STATUS
    counter = be32(p + HEADER_LEN)
    if hb_last[0] >= 0 and <uint32_t>(counter - <uint32_t>hb_last[0]) != 1:
        return GATE_STOP
    hb_last[0] = counter
    return GATE_HEARTBEAT


cdef struct TableView:
    # one ObjectTable's arrays seen from a GIL-free run: the addresses of the table's own fields
    # (they change only under its rw lock held for writing, with the GIL)
    Entry **entries
    int32_t **index
    Py_ssize_t *mask
    pthread_rwlock_t *rw


cdef struct RunCounts:
    # what one GIL-free run did, handed back to the GIL side
    int64_t took, rx, applied, copies, accepted, hb_last
    int64_t gap, stale, duplicates   # LinkChecks.count(...) afterwards


cdef struct BulkPass:
    # one bulk pass of the reader over a link's RecvBuffer (FastLink.bulk; see _reader_api.pxi). The buffer's
    # indexes live here during the pass and go back to the RecvBuffer at its end.
    char *base                # the buffer's bytes (a RecvBuffer's bytearray never resizes)
    Py_ssize_t r, w, cap      # read and write index, capacity
    Py_ssize_t consumed       # bytes of the frames taken
    int64_t offset_ms, max_age
    double last_rx            # the last recv's time (-1: no bytes yet)
    double last_frame         # the time of the last read that accepted a frame (-1: none)
    double partial_since      # LinkProtocol._partial_since (-1: None)
    RunCounts c


#: bytes buffered from which FastLink.run works without the GIL (set_nogil_bytes: tests)
cdef Py_ssize_t nogil_bytes = NOGIL_BYTES


def set_nogil_bytes(Py_ssize_t n):
    """From how many buffered bytes FastLink works without the GIL (default 2,048); returns the old
    value. Tests set 0 so every run takes the GIL-free path. Any thread, before links run."""
    global nogil_bytes
    old, nogil_bytes = nogil_bytes, n
    return old


include "_fields.pxi"


cdef class FastLink:
    """The compiled steady path of one confirmed link (see the module doc).

    Built by the link protocol at the session's confirmation, from the link's decoder (its byte
    source and session key), its ``LinkChecks``, the device's :class:`Sender` (the compiled
    ``SenderState``), the receiver (gateway id, live max age) and the ``ObjectState`` (whose tables
    must be :class:`ObjectTable`). Loop thread of the link only.

    Two ways through a run of buffered frames, with the same results:

    * **without the GIL** (:meth:`_run_nogil`, when at least 2 KiB are buffered and no listener
      wants every change): framing, CRC, MAC, payload, age, heartbeat counter, the sender's window
      and counters under its :class:`CLock`, and the values stored under the tables' read locks. It
      stops before the first frame that needs Python: one that would store a new object (the
      table may grow) or make a change a listener watches (``ObjectState.subscribe(only=...)``),
      or any frame the GIL path would stop at;
    * **with the GIL**, batch by batch: the same checks, the listeners called, new objects stored.
    """

    # (in the order a run touches them: at line load every FastLink is cold in the cache when its
    # link is read, so what a read needs sits in the first few cache lines and the MAC key and the
    # batch offsets, large and not always used, come last)
    cdef DecoderFields decoder
    cdef ReadableFields source
    cdef ChecksFields checks
    cdef LinkFields link
    cdef object receiver, objects
    cdef Sender sender
    cdef CLock lock
    cdef SequenceWindow window
    cdef ObjectTable sections, signals, switches
    cdef readonly Py_ssize_t accepted
    cdef readonly Py_ssize_t frames
    #: frames taken by the GIL-free path (a part of ``frames``)
    cdef readonly Py_ssize_t frames_nogil
    #: frames taken by the compiled reader's bulk passes (a part of ``frames_nogil``)
    cdef readonly Py_ssize_t frames_bulk
    cdef readonly bint drained
    #: cache lines asked for ahead of the apply (ObjectTable.prefetch)
    cdef readonly Py_ssize_t prefetches
    cdef int device_id, gateway_id, net
    cdef bint mac_on
    # the listeners' watch, rebuilt when ObjectState's list changes: per kind, every change, and a
    # bitmap of watched values (a change into or out of one needs Python)
    cdef object watch_src
    cdef bint watch_every[3]
    cdef bint watch_any_every
    cdef uint64_t watch_vals[3][4]
    cdef TableView views[3]
    cdef object names
    cdef BulkPass bulk
    cdef Py_ssize_t offs[BATCH]
    cdef rg_hmac_key key

    def __init__(self, decoder, checks, sender, receiver, objects, bytes session_key=None, link=None):
        self.decoder, self.checks = <DecoderFields?>decoder, <ChecksFields?>checks
        self.receiver, self.objects = receiver, objects
        if link is not None:  # (None: a FastLink run from Python only; READER_API needs it)
            self.link = <LinkFields?>link
        # the source (a railcodecs.byte_source buffer: LinearBuffer or the link's RecvBuffer) is read
        # through its bytearray and two indices, ``_buf[_read:_write]``, not its methods; it is the
        # link thread's own, so nothing moves under a run
        from railcodecs.byte_source import _Readable
        if not isinstance(decoder._src, _Readable):
            raise TypeError(f"FastLink reads a railcodecs.byte_source buffer, not {type(decoder._src).__name__}")
        self.source = <ReadableFields?>decoder._src
        self.sender = <Sender?>sender
        self.lock = self.sender.lock
        self.window = self.sender.window
        self.sections = <ObjectTable?>objects.sections
        self.signals = <ObjectTable?>objects.signals
        self.switches = <ObjectTable?>objects.switches
        for ti, table in enumerate((self.sections, self.signals, self.switches)):
            self._view(ti, table)
        from railcodecs.messages import Signals, Switches, TrackSections
        self.names = (TrackSections.NAME, Signals.NAME, Switches.NAME)
        self.device_id, self.gateway_id = checks.device_id, receiver.gateway_id
        self.net = -1 if checks.net is None else (1 if checks.net == 1 else 0)
        self.mac_on = session_key is not None
        if session_key is not None:
            rg_hmac_init(&self.key, <const uint8_t *><char *>session_key, len(session_key))
        self.frames = self.frames_nogil = self.frames_bulk = 0
        self.accepted = 0
        self.watch_src = None

    cdef void _view(self, int ti, ObjectTable table) noexcept:
        self.views[ti].entries = &table.entries
        self.views[ti].index = &table.index
        self.views[ti].mask = &table.mask
        self.views[ti].rw = &table.rw

    cdef int _watch(self, list listeners) except -1:
        """Rebuild the watch from ObjectState's listener list ``(fn, watch)``."""
        cdef int ti, w
        memset(self.watch_vals, 0, sizeof(self.watch_vals))
        self.watch_any_every = False
        for ti in range(3):
            self.watch_every[ti] = False
        for entry in listeners:
            for ti in range(3):
                w = (<tuple>(<tuple>entry)[1])[ti]
                if w == WATCH_EVERY:
                    self.watch_every[ti] = True
                    self.watch_any_every = True
                elif 0 <= w <= 255:
                    self.watch_vals[ti][w >> 6] |= (<uint64_t>1) << (w & 63)
        self.watch_src = listeners
        return 0

    cpdef Py_ssize_t run(self, int64_t now_ms) except -1:
        """Handle the good HEARTBEAT and status frames at the head of the byte source.

        Returns how many frames it took (consumed from the source, counted on the link);
        ``accepted`` is how many of them were accepted (applied, a heartbeat, or the other net's
        expected copy: what makes the link alive); ``drained``: it took every byte the source
        held (the Python decoder has nothing to say until more bytes come). Stops at the first frame the Python path must
        judge. A listener's exception propagates, with the frame counted and consumed, as it does
        from the Python path."""
        cdef const uint8_t *base
        cdef bytearray buf
        cdef Py_ssize_t avail, pos = 0, took = 0, scanned = 0, k, nscan, i, r
        cdef int64_t offset_ms, max_age, hb_last, skipped
        cdef int64_t rx = 0, applied = 0, copies = 0, accepted = 0
        cdef int64_t s_applied, s_gap, s_stale, s_dups, s_copies
        cdef bint locked
        cdef uint32_t nitems, dev_hi
        cdef int verdict, ti, change, gate
        cdef bint stop = False
        cdef const uint8_t *p
        cdef ObjectTable table
        cdef Sender sender = self.sender
        cdef RunCounts c
        cdef DecoderFields dec = self.decoder
        cdef ReadableFields src = self.source
        cdef ChecksFields checks = self.checks
        self.accepted = 0
        self.drained = False
        if dec._garbage_start is not None or dec._events:
            return 0
        r = src._read
        avail = src._write - r
        if avail < HEADER_LEN:
            return 0
        buf = src._buf  # (a LinearBuffer's may have been reallocated by an append since the last run)
        base = <const uint8_t *>PyByteArray_AS_STRING(buf) + r
        offset_ms = checks.offset_ms
        max_age = self.receiver.max_age_ms
        hb = checks.hb_last
        hb_last = -1 if hb is None else <int64_t>hb
        dev_hi = <uint32_t>self.device_id << 16
        listeners = self.objects._listeners
        if listeners is not self.watch_src:
            self._watch(listeners)
        try:
            while not stop:
                # 1. without the GIL, as far as it goes (see the class doc)
                if avail - pos >= nogil_bytes and not self.watch_any_every:
                    memset(&c, 0, sizeof(c))
                    c.hb_last = hb_last
                    with nogil:
                        self._run_nogil(base, avail, &pos, now_ms, offset_ms, max_age, &c)
                    took += c.took
                    scanned += c.took
                    rx += c.rx
                    applied += c.applied
                    copies += c.copies
                    accepted += c.accepted
                    hb_last = c.hb_last
                    self.frames_nogil += c.took
                    self._count_errors(&c)
                    if pos == avail:
                        break
                # 2. a batch of good frames, scanned with the GIL
                nscan = self._scan(base, avail, &pos)
                scanned += nscan
                if nscan < BATCH:
                    stop = True
                # 3. the receiver's checks and the apply, frame by frame, with the GIL; the sender's
                # lock is taken at the batch's first status frame and held to its end
                s_applied = s_gap = s_stale = s_dups = s_copies = 0
                locked = False
                try:
                    for k in range(nscan):
                        p = base + self.offs[k]
                        gate = frame_gate(p, now_ms, offset_ms, max_age, &hb_last)
                        if gate == GATE_STOP:
                            stop = True
                            break
                        took += 1
                        rx += 1
                        if gate == GATE_HEARTBEAT:
                            accepted += 1
                            continue
                        ti = p[3] - T_SECTIONS
                        if not locked:
                            self.lock.acquire_gil()
                            locked = True
                        verdict = self.window.c_check(be32(p + 10), self.net, &skipped)
                        if verdict == V_APPLY:
                            s_applied += 1
                            s_gap += skipped
                            table = self.sections if ti == 0 else (self.signals if ti == 1 else self.switches)
                            nitems = be16(p + HEADER_LEN)
                            self.prefetches += table.prefetch(dev_hi, p + HEADER_LEN + 2, nitems)
                            for i in range(nitems):
                                change = table.put(dev_hi | be16(p + HEADER_LEN + 2 + 3 * i),
                                                   p[HEADER_LEN + 4 + 3 * i], now_ms)
                                if change and listeners:
                                    self._notify(listeners, ti, change, be16(p + HEADER_LEN + 2 + 3 * i),
                                                 p[HEADER_LEN + 4 + 3 * i], now_ms)
                            applied += 1  # (not when a listener raised: as from the Python path)
                            accepted += 1
                            if skipped:
                                checks.count(_reason("gap"), skipped)
                        elif verdict == V_STALE:
                            s_stale += 1
                            checks.count(_reason("stale"))
                        else:
                            s_dups += 1
                            if verdict == V_COPY:
                                s_copies += 1
                                copies += 1
                                accepted += 1
                            else:
                                checks.count(_reason("duplicate"))
                finally:
                    if locked:
                        if s_applied:
                            sender.applied += s_applied
                            sender.gap += s_gap
                            sender.last_ms, sender.has_last = now_ms, True
                        sender.stale += s_stale
                        sender.duplicates += s_dups
                        sender.dual_net_copies += s_copies
                        self.lock.c_release()
                # the frames of a stopped batch not yet judged are left for the Python path
        finally:
            self._write_back(base, took, rx, applied, copies, hb_last, r)
        self.accepted = accepted
        self.frames += took
        if took and took == scanned and pos == avail:
            # nothing left: what the Python decoder would now say is NEED_DATA (which also ends an
            # abandon request, as there)
            self.drained = True
            dec._abandon = False
        return took

    cdef void _run_nogil(self, const uint8_t *base, Py_ssize_t avail, Py_ssize_t *pos, int64_t now_ms,
                         int64_t offset_ms, int64_t max_age, RunCounts *c) noexcept nogil:
        """Take frames from ``pos`` (advanced past them) without the GIL until one needs Python: not
        a good frame here, a time or heartbeat the GIL path stops at, or a status frame that would
        store a new object or make a watched change. What it did goes into ``c``.

        Batch by batch (``BATCH`` frames): the framing, CRC, MAC and payload checks with no lock held
        (:meth:`_scan`: the link's own bytes), then the batch's times, windows and values under the
        sender's lock and the three tables' read locks (see ObjectTable). So the lock a device's two
        links share is held for the part that needs it, a batch at a time: the other net's loop
        waits at most one batch's apply, not a whole run's CRCs."""
        cdef Py_ssize_t n, k, end
        cdef const uint8_t *p
        cdef int64_t skipped
        cdef uint32_t nitems, i, dev_hi = <uint32_t>self.device_id << 16
        cdef int ti, verdict, old, v, gate
        cdef int32_t e
        cdef uint64_t seq
        cdef TableView *tv
        cdef Entry *ents
        cdef int32_t *idx
        cdef Py_ssize_t mask
        cdef bint stop = False
        while not stop:
            end = pos[0]
            n = self._scan(base, avail, &end)
            if n == 0:
                return
            # the sender's lock, then the three tables' for reading, in this order (see ObjectTable)
            self.lock.c_acquire()
            for ti in range(3):
                pthread_rwlock_rdlock(self.views[ti].rw)
            for k in range(n):
                p = base + self.offs[k]
                gate = frame_gate(p, now_ms, offset_ms, max_age, &c.hb_last)
                if gate == GATE_STOP:
                    stop = True
                    break
                if gate == GATE_STATUS:
                    ti = p[3] - T_SECTIONS
                    tv = &self.views[ti]
                    nitems = be16(p + HEADER_LEN)
                    ents, idx, mask = tv.entries[0], tv.index[0], tv.mask[0]
                    seq = be32(p + 10)
                    # a frame to apply: every item an existing object, and no change a listener watches,
                    # else Python's. A copy, duplicate or stale frame touches no object (as on the GIL
                    # path, which judges first): its objects are not even read, so the net that comes
                    # second, on another loop, leaves the lines the first one wrote where they are
                    if self.window.c_applies(seq):
                        e = 0
                        for i in range(nitems):
                            e = idx[slot_of(idx, ents, mask, dev_hi | be16(p + HEADER_LEN + 2 + 3 * i))]
                            if e < 0:
                                break
                            old = ents[e].value
                            v = p[HEADER_LEN + 4 + 3 * i]
                            if old != v and (self.watch_every[ti] or (self.watch_vals[ti][v >> 6] >> (v & 63)) & 1
                                             or (self.watch_vals[ti][old >> 6] >> (old & 63)) & 1):
                                e = -1
                                break
                        if e < 0:
                            stop = True
                            break
                    verdict = self.window.c_check(seq, self.net, &skipped)
                    if verdict == V_APPLY:
                        for i in range(nitems):
                            e = idx[slot_of(idx, ents, mask, dev_hi | be16(p + HEADER_LEN + 2 + 3 * i))]
                            ents[e].value = p[HEADER_LEN + 4 + 3 * i]
                            ents[e].ms = now_ms
                        self.sender.applied += 1
                        self.sender.gap += skipped
                        self.sender.last_ms = now_ms
                        self.sender.has_last = True
                        c.applied += 1
                        c.accepted += 1
                        c.gap += skipped
                    else:
                        if verdict == V_STALE:
                            self.sender.stale += 1
                            c.stale += 1
                        else:
                            self.sender.duplicates += 1
                            if verdict == V_COPY:
                                self.sender.dual_net_copies += 1
                                c.copies += 1
                                c.accepted += 1
                            else:
                                c.duplicates += 1
                else:  # GATE_HEARTBEAT
                    c.accepted += 1
                c.took += 1
                c.rx += 1
                pos[0] = self.offs[k + 1] if k + 1 < n else end
            for ti in range(3):
                pthread_rwlock_unlock(self.views[ti].rw)
            self.lock.c_release()
            if n < BATCH:
                return

    cdef int _notify(self, list listeners, int ti, int change, int obj, int value, int64_t now_ms) except -1:
        """Call the listeners that watch this change (``ObjectState.apply``'s filter: every change, or
        only one into or out of the watched value; a new object comes out of nothing)."""
        cdef int w, before = -1 if change == PUT_NEW else change - 1
        for entry in listeners:
            w = (<tuple>(<tuple>entry)[1])[ti]
            if w == WATCH_EVERY or (w >= 0 and (w == value or w == before)):
                (<tuple>entry)[0](self.names[ti], self.device_id, obj, value, now_ms)
        return 0

    cdef Py_ssize_t _scan(self, const uint8_t *base, Py_ssize_t avail, Py_ssize_t *pos) noexcept nogil:
        """Scan up to BATCH good frames from ``pos`` (advanced past them) into ``offs``; their count."""
        cdef Py_ssize_t n = 0, total
        while n < BATCH:
            total = scan_frame(base + pos[0], avail - pos[0], &self.key, self.mac_on, self.device_id,
                               self.gateway_id)
            if total == 0:
                break
            self.offs[n] = pos[0]
            n += 1
            pos[0] += total
        return n

    cdef void _write_back(self, const uint8_t *base, Py_ssize_t took, int64_t rx, int64_t applied,
                          int64_t copies, int64_t hb_last, Py_ssize_t r) except *:
        """Publish what the run did: counters on the link, the decoder's offset, the bytes consumed."""
        cdef Py_ssize_t consumed
        if not took:
            return
        # the frames taken are the first ``took`` frames from the segment's start, back to back
        consumed = _run_length(base, took)
        self._publish(rx, applied, copies, hb_last, consumed)
        self.source._read = r + consumed

    cdef int _publish(self, int64_t rx, int64_t applied, int64_t copies, int64_t hb_last,
                      Py_ssize_t consumed) except -1:
        """Frames were taken (``consumed`` bytes): the link's counters, its heartbeat counter and the
        decoder's offset, as the Python path leaves them (a run's and a bulk pass's end)."""
        cdef ChecksFields checks = self.checks
        cdef DecoderFields dec = self.decoder
        checks.rx_frames += rx
        checks.applied += applied
        checks.copies += copies
        checks.hb_last = None if hb_last < 0 else hb_last
        dec._offset += consumed
        dec._silent_until = 0
        return 0

    cdef int _count_errors(self, const RunCounts *c) except -1:
        """What a GIL-free run judged that the Python path counts as link errors."""
        if c.gap:
            self.checks.count(_reason("gap"), c.gap)
        if c.stale:
            self.checks.count(_reason("stale"), c.stale)
        if c.duplicates:
            self.checks.count(_reason("duplicate"), c.duplicates)
        return 0


cdef Py_ssize_t _run_length(const uint8_t *base, Py_ssize_t frames) noexcept nogil:
    """Bytes of the first ``frames`` frames at ``base`` (already validated, back to back)."""
    cdef Py_ssize_t pos = 0, i
    cdef uint32_t length
    for i in range(frames):
        length = be16(base + pos + 22)
        pos += HEADER_LEN + length + (MAC_LEN if base[pos + 4] else 0) + CRC_LEN
    return pos


include "_reader_api.pxi"


_REASONS = {}


cdef object _reason(str value):
    r = _REASONS.get(value)
    if r is None:
        from railcodecs.errors import Reason
        r = _REASONS[value] = Reason(value)
    return r


# --- the trains' datagrams: TrainSender, TrainTable, TrainBatch ---------------------------------

include "_train_state.pxi"
include "_train_batch.pxi"
