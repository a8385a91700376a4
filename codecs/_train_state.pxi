# Included by _core.pyx (before _train_batch.pxi): a train's state in C, what the batch step writes.
#
# * TrainSender: ``railcodecs.receiver.SenderState`` of a train, its counters as C fields.
# * TrainTable: ``ObjectState.trains`` (train id -> TrainState) as C records; a TrainState object is
#   made only when someone reads one.
# Both are the pure objects' stand-ins (same attributes, same mapping interface): the pure receiver
# and ObjectState.apply run on them unchanged (tests/test_udp_differential.py).

import threading as _threading

cdef class TrainSender:
    """``SenderState`` of one train (kind 4), with its counters in C fields: the same attributes
    (``id``, ``kind``, ``window``, ``lock``, the counters, ``last_applied_ms``, ``counters()``), so the
    pure receiver runs on it unchanged, and :class:`TrainBatch` writes it without a Python operation.

    Threading: written by the UDP loop thread only (trains have no TCP link: ``Receiver.hello``
    refuses their kind), with the GIL held; any thread reads whole values."""

    cdef readonly int id
    cdef readonly int kind
    cdef readonly SequenceWindow window
    cdef readonly object lock
    cdef public int64_t applied, duplicates, dual_net_copies, stale, gap, sessions, open_links
    cdef int64_t last_ms
    cdef bint has_last

    def __init__(self, int id, int kind, SequenceWindow window):
        self.id, self.kind, self.window = id, kind, window
        self.lock = _threading.Lock()
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
        return f"TrainSender(id={self.id}, {self.counters()}, last_applied_ms={self.last_applied_ms})"


cdef struct TrainRec:
    uint16_t section_id
    uint32_t offset_cm
    int16_t speed_cm_s
    uint8_t direction, mode, coupling, role, doors, fault_flags
    uint16_t consist_id, peer_train
    int64_t applied_ms


cdef class TrainTable:
    """``train id -> TrainState``, the compiled form of ``ObjectState.trains``: records in insertion
    order, found through a 65,536-slot index (train ids are u16). The mapping interface is a dict's
    (``get``, ``[]``, ``in``, ``len``, iteration, ``items``, ``copy``, ``==``); ``state_type`` (the
    gateway's ``TrainState``) builds the value read. Changed with the GIL held by the UDP loop thread
    (``ObjectState.apply`` or :class:`TrainBatch`); any thread reads whole records."""

    cdef TrainRec *recs
    cdef uint16_t *ids
    cdef int32_t *index
    cdef Py_ssize_t n, cap
    cdef readonly object state_type

    def __cinit__(self, state_type):
        self.state_type = state_type
        self.n, self.cap = 0, 64
        self.recs = <TrainRec *>malloc(self.cap * sizeof(TrainRec))
        self.ids = <uint16_t *>malloc(self.cap * sizeof(uint16_t))
        self.index = <int32_t *>malloc(65536 * sizeof(int32_t))
        if self.recs == NULL or self.ids == NULL or self.index == NULL:
            raise MemoryError()
        memset(self.index, 0xFF, 65536 * sizeof(int32_t))

    def __dealloc__(self):
        free(self.recs)
        free(self.ids)
        free(self.index)

    cdef TrainRec *slot(self, uint16_t tid) except NULL:
        """The record of ``tid``, made (zeroed) when new."""
        cdef int32_t e = self.index[tid]
        cdef TrainRec *nr
        cdef uint16_t *ni
        if e >= 0:
            return &self.recs[e]
        if self.n == self.cap:
            nr = <TrainRec *>realloc(self.recs, 2 * self.cap * sizeof(TrainRec))
            if nr == NULL:
                raise MemoryError()
            self.recs = nr
            ni = <uint16_t *>realloc(self.ids, 2 * self.cap * sizeof(uint16_t))
            if ni == NULL:
                raise MemoryError()
            self.ids = ni
            self.cap *= 2
        e = <int32_t>self.n
        memset(&self.recs[e], 0, sizeof(TrainRec))
        self.ids[e] = tid
        self.index[tid] = e
        self.n += 1
        return &self.recs[e]

    cdef int put_payload(self, uint16_t tid, const uint8_t *q, int64_t ms) except -1:
        """Store a checked TRAIN_STATUS payload (36 bytes at ``q``) applied at ``ms``."""
        cdef TrainRec *r = self.slot(tid)
        r.section_id = <uint16_t>be16(q)
        r.offset_cm = be32(q + 2)
        r.speed_cm_s = <int16_t>be16(q + 6)
        r.direction, r.mode = q[8], q[9]
        r.consist_id = <uint16_t>be16(q + 10)
        r.coupling, r.role = q[12], q[13]
        r.peer_train = <uint16_t>be16(q + 14)
        r.doors, r.fault_flags = q[16], q[17]
        r.applied_ms = ms
        return 0

    cdef object _state(self, Py_ssize_t e):
        cdef TrainRec *r = &self.recs[e]
        return self.state_type(r.section_id, r.offset_cm, r.speed_cm_s, r.direction, r.mode, r.consist_id,
                               r.coupling, r.role, r.peer_train, r.doors, r.fault_flags, r.applied_ms)

    cdef Py_ssize_t _find(self, key):
        if type(key) is not int or not 0 <= key <= 0xFFFF:
            return -1
        return self.index[<uint16_t>key]

    def __setitem__(self, key, state):
        if type(key) is not int or not 0 <= key <= 0xFFFF:
            raise KeyError(key)
        cdef TrainRec *r = self.slot(<uint16_t>key)
        r.section_id, r.offset_cm, r.speed_cm_s = state.section_id, state.offset_cm, state.speed_cm_s
        r.direction, r.mode, r.consist_id = state.direction, state.mode, state.consist_id
        r.coupling, r.role, r.peer_train = state.coupling, state.role, state.peer_train
        r.doors, r.fault_flags, r.applied_ms = state.doors, state.fault_flags, state.applied_ms

    def __getitem__(self, key):
        cdef Py_ssize_t e = self._find(key)
        if e < 0:
            raise KeyError(key)
        return self._state(e)

    def get(self, key, default=None):
        cdef Py_ssize_t e = self._find(key)
        return default if e < 0 else self._state(e)

    def __contains__(self, key):
        return self._find(key) >= 0

    def __len__(self):
        return self.n

    def copy(self):
        """A dict of the same items in insertion order (what ``dict.copy`` gives for the pure table)."""
        cdef Py_ssize_t e
        return {self.ids[e]: self._state(e) for e in range(self.n)}

    def items(self):
        return self.copy().items()

    def keys(self):
        return self.copy().keys()

    def values(self):
        return self.copy().values()

    def __iter__(self):
        return iter(self.copy())

    def __eq__(self, other):
        return self.copy() == (other.copy() if isinstance(other, TrainTable) else other)

    def __repr__(self):
        return f"TrainTable({self.copy()!r})"
