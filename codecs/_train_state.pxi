# Included by _core.pyx (before _train_batch.pxi): a train's state in C, what the batch step writes
# (a train's SenderState is a ``Sender``, _sender.pxi).
#
# * TrainTable: ``ObjectState.trains`` (train id -> TrainState) as C records; a TrainState object is
#   made only when someone reads one.
# It is the pure object's stand-in (same mapping interface): ObjectState.apply runs on it unchanged
# (tests/test_udp_differential.py).

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
