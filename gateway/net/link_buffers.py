"""A device link's receive buffers: the small one before its session, the pooled one after.

A connection receives into a :class:`railcodecs.byte_source.RecvBuffer` (muduo's ``Buffer``: one
bytearray, a read and a write index, compacted, never wrapped) that its IO loop thread both fills
(``recv_into``) and decodes from (the stream decoder, in place). Until the session is confirmed it
is a small one of its own (:func:`pre_session_buffer`); at the confirmation the connection takes
the link's :class:`LinkBuffers` from the bounded pool (``gateway/net/object_pool.py``, at most
``max_links``) and moves the bytes not yet decoded there; they go back when the socket is closed.

Why one thread and not a ring between two: under the GIL a second thread would decode nothing in
parallel and only add a hand-off per read (docs/architecture.md, "Receive buffers").
"""
from __future__ import annotations

from railcodecs.byte_source import RecvBuffer

#: the receive buffer of a connection that has not confirmed its session: room for a few of the small
#: frames allowed then (the protocol closes a link holding more than 128 undecoded bytes before its
#: confirmation)
PRE_SESSION_BYTES = 256


def pre_session_buffer() -> RecvBuffer:
    """A connection's small receive buffer until its session is confirmed. Any thread."""
    return RecvBuffer(PRE_SESSION_BYTES)


class LinkBuffers:
    """The heavy, reusable part of a device link (its receive buffer, ``ring_bytes`` long); pooled
    (``ObjectPool``), bounded by max_links. Taken at the session's confirmation (not at accept),
    given back when the link is closed."""

    def __init__(self, ring_bytes: int) -> None:
        self.rx = RecvBuffer(ring_bytes)

    def reset(self) -> None:
        self.rx.reset()
