"""The compiled reactor of ``gateway/net``, when it is built and the compiled implementation runs.

``_reactor.pyx`` (epoll_wait + dispatch, a device link's read into its receive buffer and the FastLink) is
built by ``pip install`` with the codecs' core (setup.py). It is used when built and when
``railcodecs.speedups`` says the compiled implementation is in use (not ``RAILGATE_PURE=1``); the
Python code beside it is the reference and the fallback. Loops and connections choose at
construction. (``_udp_batch.pyx`` is chosen the same way by ``udp_endpoint.batch_available``.)

Threading: pure functions; any thread.
"""
from __future__ import annotations

from railcodecs import speedups

try:
    from gateway.net import _reactor
except ImportError:  # not built
    _reactor = None


def reactor():
    """The compiled reactor module, or None (not built, or the pure implementation is in use)."""
    return _reactor if _reactor is not None and speedups.implementation() == "compiled" else None
