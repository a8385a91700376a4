"""The trains' UDP endpoint: datagrams from a slab pool, checked, applied.

Each readiness event drains the socket (edge-triggered: until EAGAIN). A
datagram is received with ``recv_into`` straight into a free slab of the
largest size class (its size is unknown before reading); the slab goes back
to the pool as soon as the datagram is decoded, checked and applied. With no
free slab the datagram is still read, into one scratch buffer, so the
edge-triggered socket is drained, and dropped and counted: the pool never
grows. ``recv_into`` and not ``recvfrom_into``: the sender is named by the
frame's ``src`` and checked against the configuration, and not building an
address tuple per datagram keeps the hot path free of allocations that
outlive it.

Threading: runs in one IO loop thread; ``stats`` from any thread.
"""
from __future__ import annotations

import select
import socket
from collections import Counter

from railcodecs import UDP_TYPES, FrameError, decode_datagram

EV_READ = select.EPOLLIN | select.EPOLLET
MAX_DATAGRAM = 144  # 128-byte TRAIN_DIAG + 16-byte MAC: the largest ICD datagram


class UdpEndpoint:
    """One UDP socket for every train, served by one loop."""

    def __init__(self, ctx, loop, sock: socket.socket, slabs) -> None:
        self.ctx, self.loop, self.sock, self.slabs = ctx, loop, sock, slabs
        self.fd = sock.fileno()
        self.checks = ctx.receiver.new_link("udp")
        self._scratch = bytearray(65536)
        self.rx_datagrams = 0
        self.dropped_no_slab = 0
        self.oversize = 0
        self.applied_by_type: Counter = Counter()

    def start(self) -> None:
        """Loop thread: register for reads."""
        self.sock.setblocking(False)
        self.loop.register(self.fd, EV_READ, self._on_events)

    def stop(self) -> None:
        """Loop thread: unregister and close."""
        try:
            self.loop.unregister(self.fd)
        except (KeyError, OSError, ValueError):
            pass
        self.sock.close()

    def _on_events(self, mask: int) -> None:
        sock, slabs, ctx = self.sock, self.slabs, self.ctx
        receiver, checks, mac = ctx.receiver, self.checks, ctx.mac_policy
        while True:
            slab = slabs.acquire_for_recv()
            if slab is None:
                try:
                    sock.recv_into(self._scratch)
                except BlockingIOError:
                    return
                self.dropped_no_slab += 1
                continue
            size_class, index, view = slab
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                slabs.release(size_class, index)
                return
            except OSError:
                slabs.release(size_class, index)
                return
            try:
                self.rx_datagrams += 1
                now_ms = ctx.now_ms()
                ev = decode_datagram(view[:n], types=UDP_TYPES, mac=mac)
                if isinstance(ev, FrameError):
                    checks.count(ev.reason)
                elif receiver.check_datagram(checks, ev, now_ms, apply=ctx.apply) is None:
                    ctx.train_applied(ev, now_ms)
            finally:
                slabs.release(size_class, index)

    def stats(self) -> dict:
        return {"rx_datagrams": self.rx_datagrams, "dropped_no_slab": self.dropped_no_slab,
                "errors": dict(self.checks.errors)}
