"""The compiled reactor of ``gateway/net``, when it is built and the compiled implementation runs.

``_reactor.pyx`` (epoll_wait + dispatch, a device link's read into its receive buffer and the FastLink) is
built by ``pip install`` with the codecs' core (setup.py). It is used when built and when
``railcodecs.speedups`` says the compiled implementation is in use (not ``RAILGATE_PURE=1``); the
Python code beside it is the reference and the fallback. Loops and connections choose at
construction. ``_timers.pyx`` (a loop's timer heap in C) is chosen the same way, and
``_udp_batch.pyx`` by ``udp_endpoint.batch_available``.

Threading: pure functions; any thread.
"""
from __future__ import annotations

from railcodecs import speedups

try:
    from gateway.net import _reactor
except ImportError:  # not built
    _reactor = None
try:
    from gateway.net import _timers
except ImportError:  # not built
    _timers = None


#: the fields of ``TcpConnection`` that the compiled reader reads and writes per read and its heartbeat
#: tick reads (``_reactor.ConnFields``)
CONN_FIELDS = ("_closed", "_read_queued", "rx_bytes", "tx_bytes", "_out", "_out_pos")


def conn_fields_base() -> type:
    """``TcpConnection``'s base: ``_reactor.ConnFields`` (C fields) when the reactor is built and the
    compiled core is not forced off, else a plain class with the same names as ``__slots__``
    (``railcodecs.speedups.fields_base`` explains why; chosen once, when the class is defined)."""
    if _reactor is not None and speedups.available():
        return _reactor.ConnFields
    return speedups.pure_twin("ConnFields", CONN_FIELDS, __name__)


def new_timer_queue():
    """A loop's timer queue: ``_timers.TimerQueue`` (the heap in C) when built and the compiled
    implementation is in use, else the pure ``timer_queue.TimerQueue`` (the reference)."""
    if _timers is not None and speedups.implementation() == "compiled":
        return _timers.TimerQueue()
    from gateway.net.timer_queue import TimerQueue
    return TimerQueue()


def reactor():
    """The compiled reactor module, or None (not built, or the pure implementation is in use)."""
    return _reactor if _reactor is not None and speedups.implementation() == "compiled" else None
