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
from railcodecs import UDP_TYPES, FrameError, Reason, decode_datagram

EV_READ = select.EPOLLIN | select.EPOLLET
MAX_DATAGRAM = 144  # 128-byte TRAIN_DIAG + 16-byte MAC: the largest ICD datagram
_HEADER_FAULTS = frozenset((Reason.BAD_SYNC, Reason.BAD_VERSION, Reason.BAD_FLAGS, Reason.OVERSIZE))


class UdpEndpoint:
    """One UDP socket for every train, served by one loop."""

    def __init__(self, ctx, loop, sock: socket.socket, slabs, checks) -> None:
        """``checks``: the receiver's counters for this endpoint (``receiver.new_link("udp")``)."""
        self.ctx, self.loop, self.sock, self.slabs = ctx, loop, sock, slabs
        self.fd = sock.fileno()
        self.checks = checks
        self._scratch = bytearray(65536)
        self.rx_datagrams = 0
        self.dropped_no_slab = 0
        self.oversize = 0

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
                # MSG_TRUNC: n is the datagram's real length, so one longer than any ICD type (cut
                # short by the slab) is counted bad_size instead of being decoded from its head
                n = sock.recv_into(view, 0, socket.MSG_TRUNC)
            except BlockingIOError:
                slabs.release(size_class, index)
                return
            except OSError:
                slabs.release(size_class, index)
                return
            try:
                self.rx_datagrams += 1
                if n > MAX_DATAGRAM:
                    # judged like any datagram of a wrong size: its header's faults first, else bad_size
                    self.oversize += 1
                    ev = decode_datagram(view, types=UDP_TYPES, mac=mac)
                    checks.count(ev.reason if isinstance(ev, FrameError) and ev.reason in _HEADER_FAULTS
                                 else Reason.BAD_SIZE)
                    continue
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
                "oversize": self.oversize, "errors": dict(self.checks.errors)}


def udp_socket(host: str, port: int) -> socket.socket:
    """The trains' UDP socket, bound, with a 4 MiB receive buffer (bursts of a whole line)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot bind UDP {host}:{port}: {exc.strerror}") from None
    return sock
