"""The compiled IO pieces of ``gateway/net``, when they are built and the compiled implementation runs.

``_reactor.pyx`` (epoll_wait + dispatch, a device link's read into its ring and the FastLink) and
``_udp_batch.pyx`` (recvmmsg into the slab pool) are built by ``pip install`` with the codecs'
core (setup.py). They are used when built and when ``railcodecs.speedups`` says the compiled
implementation is in use (not ``RAILGATE_PURE=1``); the Python code beside them is the reference
and the fallback. Objects choose at construction (a loop, a connection, the UDP endpoint).

Threading: pure functions; any thread.
"""
from __future__ import annotations

from railcodecs import speedups

try:
    from gateway.net import _reactor
except ImportError:  # not built
    _reactor = None
try:
    from gateway.net import _udp_batch
except ImportError:  # not built
    _udp_batch = None


def reactor():
    """The compiled reactor module, or None (not built, or the pure implementation is in use)."""
    return _reactor if _reactor is not None and speedups.implementation() == "compiled" else None


def udp_batch():
    """The recvmmsg module, or None (not built, or the pure implementation is in use)."""
    return _udp_batch if _udp_batch is not None and speedups.implementation() == "compiled" else None
