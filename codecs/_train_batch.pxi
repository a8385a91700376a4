# Included by _core.pyx (as uvloop includes its handles): the trains' datagram step in C.
#
# The pure-Python original is the reference: same results, proven by tests/test_udp_differential.py.
#
# TrainBatch: for each datagram of one recvmmsg batch, what ``decode_datagram`` +
# ``Receiver.check_datagram`` + ``ObjectState.apply`` + ``Context.train_applied`` do, in C, with no
# Python object made for a datagram on the steady path, writing the Sender and TrainTable of
# _train_state.pxi. What Python must see is handed over once per batch (see TrainBatch.run).

cdef extern from *:
    """
    #define RG_TIME_LIMIT (((unsigned long long)1) << 62)
    """
    const uint64_t TIME_LIMIT "RG_TIME_LIMIT"

cdef enum:
    T_TRAIN_STATUS = 0x50
    T_TRAIN_HEARTBEAT = 0x51
    T_TRAIN_DIAG = 0x52
    STATUS_PAYLOAD = 36
    HEARTBEAT_PAYLOAD = 4
    DIAG_PAYLOAD = 100
    DIAG_SLOTS = 24
    # a coupling record: u16 train, u64 sender time_ms, the 36-byte TRAIN_STATUS payload
    COUPLING_RECORD = 46
    # slot marks of TrainBatch.src_slot (>= 0: a configured train's slot)
    SRC_OTHER = -1        # no key, not required: judged here (unknown_source in the end)
    SRC_PYTHON = -2       # the MAC policy holds a key or a requirement for it: the Python step judges
    # verdict of _judge besides a reason index
    ACCEPTED = -1
    TO_PYTHON = -2

# reason indices: counted in C, written into LinkChecks.errors under these names once per batch
cdef enum:
    R_BAD_SYNC, R_BAD_VERSION, R_BAD_FLAGS, R_OVERSIZE, R_BAD_CRC, R_BAD_MAC, R_MISSING_MAC, \
        R_UNKNOWN_TYPE, R_BAD_PAYLOAD, R_BAD_SIZE, R_UNKNOWN_SOURCE, R_WRONG_DESTINATION, R_DUPLICATE, \
        R_STALE, R_GAP, N_REASONS

_REASON_NAMES = ("bad_sync", "bad_version", "bad_flags", "oversize", "bad_crc", "bad_mac", "missing_mac",
                 "unknown_type", "bad_payload", "bad_size", "unknown_source", "wrong_destination", "duplicate",
                 "stale", "gap")


cdef struct TrainSlot:
    uint16_t id
    bint has_key          # a MAC flag is checked with ``key``
    bint required         # a datagram without the MAC flag is missing_mac
    bint member           # in a configured consist: its TRAIN_STATUS goes to coupling
    int worker            # its coupling worker (id % workers)
    uint64_t seen_mark    # the batch that last listed it as seen
    rg_hmac_key key


cdef inline int _payload_ok(int t, const uint8_t *q) noexcept nogil:
    """The checks ``unpack`` makes of a UDP payload whose size is already right (1: it parses)."""
    cdef int i, n, used
    if t == T_TRAIN_STATUS:
        if q[8] > 1 or q[9] > 3 or q[12] > 3 or q[13] > 2 or q[16] > 2:
            return 0
        for i in range(18, STATUS_PAYLOAD):
            if q[i]:
                return 0
        return 1
    if t == T_TRAIN_DIAG:
        n = <int>be16(q)
        if n > DIAG_SLOTS:
            return 0
        used = 2 + 4 * n
        for i in range(used, DIAG_PAYLOAD):
            if q[i]:
                return 0
        for i in range(n):
            if not 1 <= q[2 + 4 * i + 2] <= 4 or q[2 + 4 * i + 3] > 1:
                return 0
        return 1
    return 1  # TRAIN_HEARTBEAT: any u32 counter


cdef class TrainBatch:
    """The compiled per-batch step of the trains' UDP endpoint (see the include's head).

    Built by the endpoint (``railcodecs.speedups.train_batch``) over the receive arena its recvmmsg
    fills: ``arena`` (datagram j of a batch in slot j, at ``j * slot_size``), ``max_datagram``
    (longer: oversize), the
    ``receiver`` (gateway id, live ``max_age_ms``, ``train_reset_ms``, its train senders, which must
    be :class:`Sender`), the endpoint's ``checks`` (LinkChecks), the MAC ``policy``, the
    ``trains`` table (:class:`TrainTable`), ``seen(train_ids, now_ms)`` (the registry), and the
    coupling hand-off: ``coupling_submit(records, counts, now_ms)`` (None: no coupling),
    ``coupling_members`` (trains in a configured consist) and ``coupling_workers``. ``python_step(j,
    now_ms)`` judges datagram j of the batch in Python: called for the rare datagram whose source
    is not a train but has a key in the MAC policy (the policy's per-source rules stay in one place).

    Threading: the UDP loop thread only (one batch at a time, the GIL held throughout)."""

    cdef const uint8_t[::1] arena
    cdef const uint8_t *base
    cdef Py_ssize_t slot_size, max_datagram
    cdef object receiver, checks, seen, coupling_submit, python_step
    cdef TrainTable trains
    cdef list senders           # Sender by slot
    cdef list id_objs           # the trains' ids as Python ints, by slot (listed without allocating)
    cdef int32_t *src_slot
    cdef TrainSlot *slots
    cdef Py_ssize_t nslots
    cdef int gateway_id, net, nworkers
    cdef bint accept_unverified, other_required
    cdef uint64_t batches
    cdef int64_t errs[N_REASONS]
    cdef uint8_t *records
    cdef Py_ssize_t records_cap
    cdef int32_t *seen_slots
    cdef readonly object coupling_counts   # array('q'): per worker, members' reports then unconfigured ones
    cdef long long[::1] counts

    def __init__(self, arena, Py_ssize_t slot_size, Py_ssize_t max_datagram, receiver, checks, policy,
                 TrainTable trains, seen, coupling_submit=None, coupling_members=frozenset(),
                 int coupling_workers=1, python_step=None):
        cdef Py_ssize_t i
        cdef TrainSlot *s
        import array
        if slot_size < max_datagram or max_datagram < HEADER_LEN + CRC_LEN:
            raise ValueError(f"slot size {slot_size} below the longest datagram {max_datagram}")
        if coupling_workers < 1:
            raise ValueError(f"coupling workers: at least 1, got {coupling_workers}")
        self.arena = arena
        self.base = &self.arena[0]
        self.slot_size, self.max_datagram = slot_size, max_datagram
        self.receiver, self.checks, self.trains, self.seen = receiver, checks, trains, seen
        self.coupling_submit, self.python_step = coupling_submit, python_step
        self.gateway_id = receiver.gateway_id
        self.net = -1 if checks.net is None else (1 if checks.net == 1 else 0)
        self.nworkers = coupling_workers
        self.coupling_counts = array.array("q", bytes(16 * coupling_workers))
        self.counts = self.coupling_counts
        self.accept_unverified = policy.accept_unverified
        self.other_required = policy.required
        trains_in = sorted((sid, sender) for sid, sender in receiver.senders.items() if sender.kind == 4)
        self.senders = [<Sender?>sender for _, sender in trains_in]
        self.id_objs = [sid for sid, _ in trains_in]
        self.nslots = len(trains_in)
        self.slots = <TrainSlot *>calloc(self.nslots + 1, sizeof(TrainSlot))
        self.src_slot = <int32_t *>malloc(65536 * sizeof(int32_t))
        self.seen_slots = <int32_t *>malloc((self.nslots + 1) * sizeof(int32_t))
        if self.slots == NULL or self.src_slot == NULL or self.seen_slots == NULL:
            raise MemoryError()
        # a source that is not a train is judged here unless the policy has a key or a rule of its own
        # for it (then the Python step judges it: MacPolicy.key_for and requires stay the one source)
        if policy.session_key is not None:
            raise ValueError("a session-keyed MAC policy is a TCP link's: datagrams have no session")
        if policy.keys is None and policy.key is not None:
            for i in range(65536):
                self.src_slot[i] = SRC_PYTHON
        else:
            for i in range(65536):
                self.src_slot[i] = SRC_OTHER
            for sid in list(policy.keys or ()) + list(policy.required_srcs):
                if 0 <= sid <= 0xFFFF:
                    self.src_slot[sid] = SRC_PYTHON
        for i in range(self.nslots):
            sid = self.id_objs[i]
            s = &self.slots[i]
            s.id = <uint16_t>sid
            key = policy.key_for(sid, T_TRAIN_STATUS)   # no UDP type is a link-key type: one key per train
            s.has_key = key is not None
            if key is not None:
                rg_hmac_init(&s.key, <const uint8_t *><char *>key, len(key))
            s.required = policy.requires(sid)
            s.member = sid in coupling_members
            s.worker = sid % coupling_workers
            s.seen_mark = 0
            self.src_slot[<uint16_t>sid] = <int32_t>i
        self.batches = 0
        memset(self.errs, 0, sizeof(self.errs))
        self.records, self.records_cap = NULL, 0

    def __dealloc__(self):
        free(self.slots)
        free(self.src_slot)
        free(self.seen_slots)
        free(self.records)

    def run(self, const int[::1] lengths, Py_ssize_t count, int64_t now_ms):
        """Judge and apply datagrams 0..count-1 of one batch, all received by ``now_ms``; returns how
        many were oversize (longer than ``max_datagram``). Datagram j is ``lengths[j]`` bytes (its real
        length) at the head of slot j (``arena[j * slot_size:]``).

        In C per datagram: the decode checks, destination, source, age, session reset, sequence
        window, the sender's counters, the train table. Once per batch, in Python: the endpoint's
        counters and errors (LinkChecks), ``seen`` with the tuple of trains accepted, and, when a
        TRAIN_STATUS was accepted, ``coupling_submit`` with the records of consist members (bytes of
        46-byte records: u16 train, u64 time_ms, payload) and the per-worker counts."""
        cdef Py_ssize_t j, nseen = 0, nrec = 0, oversize = 0, w
        cdef int64_t rx = 0, applied = 0, copies = 0
        cdef int64_t max_age = self.receiver.max_age_ms
        cdef int64_t reset_ms = self.receiver.train_reset_ms
        cdef int verdict, slot
        cdef Py_ssize_t n
        cdef const uint8_t *p
        cdef bint any_status = False
        if count > lengths.shape[0] or count * self.slot_size > self.arena.shape[0]:
            raise ValueError(f"count {count} over the batch's "
                             f"{min(lengths.shape[0], self.arena.shape[0] // self.slot_size)} datagrams")
        if count <= 0:
            return 0
        self.batches += 1
        if self.records_cap < count:
            free(self.records)
            self.records = <uint8_t *>malloc(count * COUPLING_RECORD)
            if self.records == NULL:
                self.records_cap = 0
                raise MemoryError()
            self.records_cap = count
        for w in range(2 * self.nworkers):
            self.counts[w] = 0
        try:
            for j in range(count):
                p = self.base + j * self.slot_size
                n = lengths[j]
                if n > self.max_datagram:
                    oversize += 1
                    self.errs[_oversize_reason(p)] += 1
                    continue
                verdict = self._judge(p, n, now_ms, max_age, reset_ms, &rx, &slot)
                if verdict >= 0:
                    self.errs[verdict] += 1
                elif verdict == TO_PYTHON:
                    if self.python_step is not None:
                        self.python_step(j, now_ms)
                elif slot >= 0:  # accepted and applied (a dual-net copy is verdict ACCEPTED, slot -1)
                    applied += 1
                    if self.slots[slot].seen_mark != self.batches:
                        self.slots[slot].seen_mark = self.batches
                        self.seen_slots[nseen] = slot
                        nseen += 1
                    if p[3] == T_TRAIN_STATUS:
                        any_status = True
                        w = self.slots[slot].worker
                        if self.slots[slot].member:
                            _record(self.records + nrec * COUPLING_RECORD, p)
                            nrec += 1
                            self.counts[w] += 1
                        else:
                            self.counts[self.nworkers + w] += 1
                else:
                    copies += 1
        finally:
            self._flush(rx, applied, copies)
        if nseen:
            self.seen(self._seen_tuple(nseen), now_ms)
        if any_status and self.coupling_submit is not None:
            self.coupling_submit(PyBytes_FromStringAndSize(<char *>self.records, nrec * COUPLING_RECORD),
                                 self.coupling_counts, now_ms)
        return oversize

    cdef int _judge(self, const uint8_t *p, Py_ssize_t n, int64_t now_ms, int64_t max_age, int64_t reset_ms,
                    int64_t *rx, int *slot_out) except? -3:
        """One datagram of ``n`` <= max_datagram bytes: a reason index (dropped, to count), ACCEPTED
        (``slot_out``: the train's slot when applied, -1 for a dual-net copy) or TO_PYTHON. The order
        of the checks is decode_datagram's, then check_datagram's."""
        cdef uint32_t flags, length, src, t
        cdef Py_ssize_t total, body, fixed
        cdef int32_t slot
        cdef TrainSlot *s
        cdef Sender sender
        cdef uint64_t time_ms
        cdef int64_t age, skipped
        cdef int verdict
        cdef uint8_t mac[32]
        slot_out[0] = -1
        if n < 2 or p[0] != 0xA5 or p[1] != 0x5A:
            return R_BAD_SYNC
        if n < HEADER_LEN + CRC_LEN:
            return R_BAD_SIZE
        if p[2] != 1:
            return R_BAD_VERSION
        flags = p[4]
        if flags & 0xFE or p[5]:
            return R_BAD_FLAGS
        length = be16(p + 22)
        if length > MAX_PAYLOAD:
            return R_OVERSIZE
        body = HEADER_LEN + length
        total = body + (MAC_LEN if flags else 0) + CRC_LEN
        if total != n:
            return R_BAD_SIZE
        if rg_crc32(0, p, total - CRC_LEN) != be32(p + total - CRC_LEN):
            return R_BAD_CRC
        t = p[3]
        fixed = STATUS_PAYLOAD if t == T_TRAIN_STATUS else (HEARTBEAT_PAYLOAD if t == T_TRAIN_HEARTBEAT else (
            DIAG_PAYLOAD if t == T_TRAIN_DIAG else -1))
        if fixed >= 0 and length != fixed:
            return R_BAD_SIZE
        src = be16(p + 6)
        slot = self.src_slot[src]
        if slot == SRC_PYTHON:
            return TO_PYTHON
        s = &self.slots[slot] if slot >= 0 else NULL
        if flags:
            if s != NULL and s.has_key:
                rg_hmac_sha256(&s.key, p, body, mac)
                if not rg_ct_equal(mac, p + body, MAC_LEN):
                    return R_BAD_MAC
            elif not self.accept_unverified:
                return R_BAD_MAC
        elif (s.required if s != NULL else self.other_required):
            return R_MISSING_MAC
        if fixed < 0:
            return R_UNKNOWN_TYPE
        if not _payload_ok(t, p + HEADER_LEN):
            return R_BAD_PAYLOAD
        # decoded: Receiver.check_datagram from here
        rx[0] += 1
        if be16(p + 8) != <uint32_t>self.gateway_id:
            return R_WRONG_DESTINATION
        if s == NULL:
            return R_UNKNOWN_SOURCE
        sender = <Sender>self.senders[slot]
        time_ms = be64(p + 14)
        if time_ms >= TIME_LIMIT:   # from far in the future (now_ms + max_age is far below 2**62)
            sender.stale += 1
            return R_STALE
        age = now_ms - <int64_t>time_ms
        if age > max_age or -age > max_age:
            sender.stale += 1
            return R_STALE
        if not sender.has_last or now_ms - sender.last_ms > reset_ms:
            sender.window.c_reset()
            sender.sessions += 1
        verdict = sender.window.c_check(be32(p + 10), self.net, &skipped)
        if verdict == V_APPLY:
            sender.applied += 1
            sender.gap += skipped
            sender.last_ms, sender.has_last = now_ms, True
            if t == T_TRAIN_STATUS:
                self.trains.put_payload(<uint16_t>src, p + HEADER_LEN, now_ms)
            if skipped:
                self.errs[R_GAP] += skipped
            slot_out[0] = slot
            return ACCEPTED
        if verdict == V_STALE:
            sender.stale += 1
            return R_STALE
        sender.duplicates += 1
        if verdict == V_COPY:
            sender.dual_net_copies += 1
            return ACCEPTED   # the other net's expected copy: counted apart, not an error
        return R_DUPLICATE

    cdef object _seen_tuple(self, Py_ssize_t nseen):
        cdef Py_ssize_t i
        cdef list ids = self.id_objs
        return tuple([ids[self.seen_slots[i]] for i in range(nseen)])

    cdef int _flush(self, int64_t rx, int64_t applied, int64_t copies) except -1:
        """The batch's counts into the endpoint's LinkChecks (what the pure step counts one by one)."""
        cdef int i
        checks = self.checks
        if rx:
            checks.rx_frames += rx
        if applied:
            checks.applied += applied
        if copies:
            checks.copies += copies
        for i in range(N_REASONS):
            if self.errs[i]:
                checks.errors[_REASON_NAMES[i]] += self.errs[i]
                self.errs[i] = 0
        return 0


cdef inline int _oversize_reason(const uint8_t *p) noexcept nogil:
    """A datagram longer than any ICD type: its header's faults first, else bad_size (the slot holds
    at least its 24-byte header)."""
    if p[0] != 0xA5 or p[1] != 0x5A:
        return R_BAD_SYNC
    if p[2] != 1:
        return R_BAD_VERSION
    if p[4] & 0xFE or p[5]:
        return R_BAD_FLAGS
    if be16(p + 22) > MAX_PAYLOAD:
        return R_OVERSIZE
    return R_BAD_SIZE


cdef inline void _record(uint8_t *out, const uint8_t *p) noexcept nogil:
    """A coupling record from an accepted TRAIN_STATUS datagram: src, time_ms, payload."""
    memcpy(out, p + 6, 2)
    memcpy(out + 2, p + 14, 8)
    memcpy(out + 10, p + HEADER_LEN, STATUS_PAYLOAD)
