# Included by _core.pyx (before FastLink).
#
# The hot fields of a link as C fields (issue 14, line load). The steady path of a link reads and
# writes a few attributes of five Python objects per read: the receive buffer's indexes, the
# decoder's offsets, the LinkChecks counters, the protocol's times. As instance attributes each is
# a dictionary or descriptor lookup, and at line load (2,000 links, each touched once per 100 ms,
# so every object is cold in the cache) they were a fifth of the gateway's CPU
# (bench/results/profile-line-load-a62e63a.txt). So the compiled implementation gives those
# classes a base class whose fields are C struct members: Python code reads and writes them as
# before (the same names, through member descriptors), FastLink and the compiled reader read and
# write them directly.
#
# Each base has a pure-Python twin, a class with the same names as ``__slots__``
# (``railcodecs.speedups.fields_base``; ``speedups.FIELDS`` names them, and
# tests/test_hot_fields.py checks that the two agree): the pure implementation runs with those. The types are
# the values' own: C integers for counters and indexes, double for the monotonic times, ``object``
# where None is a value. Threading: as the classes they are the bases of (each field is read and
# written with the GIL held, so other threads see whole values).


cdef class ReadableFields:
    """``railcodecs.byte_source._Readable``'s fields: the bytes ``_buf[_read:_write]``."""
    cdef public bytearray _buf
    cdef public Py_ssize_t _read, _write


cdef class DecoderFields:
    """``railcodecs.stream.StreamDecoder``'s fields that the steady path reads or moves."""
    cdef public Py_ssize_t _offset, _silent_until
    cdef public object _garbage_start, _events
    cdef public bint _abandon


cdef class ChecksFields:
    """``railcodecs.receiver.LinkChecks``' fields that the steady path reads or counts."""
    cdef public object offset_ms, hb_last
    cdef public Py_ssize_t rx_frames, applied, copies


cdef class LinkFields:
    """``gateway.line.link_protocol.LinkProtocol``'s liveness fields, written per read: the
    liveness flag (``alive``, read by other threads), the compiled steady path (``fast``), the
    monotonic times of the last bytes and of the last accepted frame, and since when a partial
    frame has waited (None: none). Then what the steady heartbeat tick reads and counts
    (``_reader_hb_tick``; 4,000 ticks a second at line load, each on a link cold in the cache): the
    link context, the peer, the agreed heartbeat, the pending output and action bits, the signing
    key and the two counters. These are ``object`` fields: whatever Python stores there, the C
    field holds, so the two implementations take the same values (the tick checks their types)."""
    cdef public bint alive
    cdef public object fast, _partial_since
    cdef public double last_rx, last_frame
    cdef public object ctx, device_id, heartbeat_ms, outbox, _acts, _tx_key, _hb_counter, tx_frames

